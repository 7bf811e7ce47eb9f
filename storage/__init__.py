"""Plait storage: the Store interface and its backends. Imports nothing else of Plait's."""

from __future__ import annotations

from ._errors import SnapshotCorrupt as SnapshotCorrupt
from ._errors import StorageError as StorageError
from ._errors import StorageUnavailable as StorageUnavailable
from ._errors import StoreLocked as StoreLocked
from ._files import FileStore as FileStore
from ._memory import MemoryStore as MemoryStore
from ._postgres import PostgreSQLStore as PostgreSQLStore
from ._sqlite import SQLiteStore as SQLiteStore
from ._store import RoomData as RoomData
from ._store import Store as Store
from ._store import StoredEvent as StoredEvent
