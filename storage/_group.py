"""Group commit across rooms, for a store with one writer (SQLite now; PostgreSQL next).

Two levels batch writes, and they do different things: a room's persister
(engine/room/_persist.py) gathers one room's updates over a turn and acknowledges them in
request order once durable; `GroupCommit` gathers what every room hands the store while a
commit runs into the next commit, so a busy server pays one commit (one fsync) per batch, not
one per room.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class GroupCommit(Generic[T]):
    """Batches rows for `commit`, which writes a list of rows in one transaction.

    Args:
        commit: writes the rows it is given durably, or raises (a StorageError) for all of
            them.
    """

    def __init__(self, commit: Callable[[list[T]], Awaitable[None]]) -> None:
        self._commit = commit
        self._waiting: list[tuple[list[T], trio.Event, list[BaseException]]] = []
        self._committing = False

    async def submit(self, rows: list[T]) -> None:
        """Return once `rows` are committed, with the rows that arrived while the commit before
        ran. Raises what `commit` raised for their batch. A cancelled caller's rows are still
        committed (a commit in progress is never abandoned halfway)."""
        done, failure = trio.Event(), list[BaseException]()
        self._waiting.append((rows, done, failure))
        if not self._committing:
            self._committing = True
            try:
                with trio.CancelScope(shield=True):  # every waiter's commit completes
                    while self._waiting:
                        batch, self._waiting = self._waiting, []
                        await self._commit_batch(batch)
            finally:
                self._committing = False
        await done.wait()
        if failure:
            raise failure[0]

    async def _commit_batch(self, batch: list[tuple[list[T], trio.Event, list[BaseException]]]) -> None:
        try:
            await self._commit([row for rows, _, _ in batch for row in rows])
        except Exception as exc:
            for _, _, failure in batch:
                failure.append(exc)
        finally:
            for _, done, _ in batch:
                done.set()
