"""GroupCommit (storage/_group.py): what arrives during a commit goes into the next one; a
failure reaches every caller of its batch and no other. MockClock."""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock

from plait.storage import StorageError
from plait.storage._group import GroupCommit


class Writer:
    def __init__(self, fail: dict[int, Exception] | None = None) -> None:
        self.batches: list[list[int]] = []
        self.commits = 0
        self.fail = fail or {}
        """Commit number (from 0) -> what it raises."""

    async def commit(self, rows: list[int]) -> None:
        await trio.sleep(1)  # a commit takes time: rows pile up meanwhile
        self.commits += 1
        if self.commits - 1 in self.fail:
            raise self.fail[self.commits - 1]
        self.batches.append(rows)


async def test_rows_that_arrive_during_a_commit_share_the_next_one(autojump_clock: MockClock) -> None:
    writer = Writer()
    group = GroupCommit(writer.commit)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(group.submit, [1])
        await trio.sleep(0.1)
        for i in range(2, 6):
            nursery.start_soon(group.submit, [i, i * 10])
    assert writer.batches[0] == [1]
    assert sorted(writer.batches[1]) == [2, 3, 4, 5, 20, 30, 40, 50] and len(writer.batches) == 2


@pytest.mark.parametrize("error", [StorageError("disk full"), RuntimeError("a driver bug")])
async def test_a_failed_commit_fails_every_caller_of_its_batch_and_no_other(autojump_clock: MockClock, error: Exception) -> None:
    writer = Writer(fail={1: error})  # the second batch (2 and 3) fails
    group = GroupCommit(writer.commit)
    outcomes: dict[int, str] = {}

    async def submit(i: int) -> None:
        try:
            await group.submit([i])
            outcomes[i] = "ok"
        except Exception as exc:
            outcomes[i] = type(exc).__name__

    async with trio.open_nursery() as nursery:
        nursery.start_soon(submit, 1)
        await trio.sleep(0.1)
        nursery.start_soon(submit, 2)
        nursery.start_soon(submit, 3)
        await trio.sleep(1.5)
        nursery.start_soon(submit, 4)
    assert outcomes == {1: "ok", 2: type(error).__name__, 3: type(error).__name__, 4: "ok"}
    assert writer.batches == [[1], [4]]


async def test_a_cancelled_caller_does_not_abandon_the_commit(autojump_clock: MockClock) -> None:
    writer = Writer()
    group = GroupCommit(writer.commit)
    with trio.move_on_after(0.5):
        await group.submit([1])
    await trio.sleep(2)
    assert writer.batches == [[1]]
