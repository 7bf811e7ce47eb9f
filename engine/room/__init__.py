"""A room: one document, presence, cursors, typing and events, split by concern.

- _lifecycle: Room: loading -> live -> draining -> closed, membership, holds, idle grace
- _member: what the parts share: RoomState, Member
- _doc: the pycrdt document: sync, members' updates, the fan-out of every change
- _ephemeral: presence, cursors, typing (ticker, sweeper) and Yjs awareness
  (_presence: PresenceBook, _awareness: Awareness, both pure data), and what it shares with
  peer processes serving the same room (_peerstate: the body they exchange, pure)
- _events: the event log, epochs, publishing; the SequenceAuthority seam (LocalSequence)
- _persist: group commit, acks in request order once durable, compaction; the
  CompactionLease seam (LocalLease)
- _replica: the Replication seam, how a room's copies in other processes meet
  (LocalReplication: none), and what a room does with their changes
- _fanout: the Fanout seam, how a room's frames reach its members (LocalFanout: in-process)
"""

from __future__ import annotations

from ._doc import merge_updates as merge_updates
from ._ephemeral import presence_size as presence_size
from ._events import LocalSequence as LocalSequence
from ._events import SequenceAuthority as SequenceAuthority
from ._events import new_epoch as new_epoch
from ._fanout import ContainedFanout as ContainedFanout
from ._fanout import Fanout as Fanout
from ._fanout import LocalFanout as LocalFanout
from ._lifecycle import LOCAL_FANOUT as LOCAL_FANOUT
from ._lifecycle import LOCAL_LEASE as LOCAL_LEASE
from ._lifecycle import LOCAL_SEQUENCE as LOCAL_SEQUENCE
from ._lifecycle import Room as Room
from ._lifecycle import RoomRegistry as RoomRegistry
from ._member import Member as Member
from ._member import MemberRoom as MemberRoom
from ._member import MemberSession as MemberSession
from ._member import Refresh as Refresh
from ._member import RoomState as RoomState
from ._persist import CompactionLease as CompactionLease
from ._persist import LocalLease as LocalLease
from ._replica import LOCAL_REPLICATION as LOCAL_REPLICATION
from ._replica import LocalReplication as LocalReplication
from ._replica import Replica as Replica
from ._replica import Replication as Replication
