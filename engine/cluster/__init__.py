"""Several processes share every room (architecture: Scale-out): the Replication, sequence
authority and compaction lease seams on Redis, with PostgreSQL as the shared store.

- _redis: RedisCluster, one process's member of a cluster: its heartbeat, the streams it
  follows, the pub/sub it listens to, the peers it watches.
"""

from __future__ import annotations

from ._redis import RedisCluster as RedisCluster
