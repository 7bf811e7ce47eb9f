"""The outbox's batching rules, directly (they decide what each WebSocket message holds)."""

from __future__ import annotations

from plait.engine.sessions._outbox import Outbox


def test_frames_are_batched_up_to_the_limits_and_a_large_frame_goes_alone() -> None:
    woken = []
    box = Outbox(max_bytes=10_000, lag_frames=64, solo_bytes=1000, ready=lambda: woken.append(1))
    for data in (b"a" * 10, b"b" * 10, b"L" * 2000, b"c" * 10, b"d" * 10):
        assert box.put(data)
    assert woken == [1]  # one wake-up: from empty to something
    assert box.take(max_frames=100, max_bytes=5000) == [b"a" * 10, b"b" * 10]
    assert box.take(max_frames=100, max_bytes=5000) == [b"L" * 2000]  # never copied into a batch
    assert box.take(max_frames=1, max_bytes=5000) == [b"c" * 10]
    assert box.take(max_frames=100, max_bytes=5000) == [b"d" * 10]
    assert box.take(max_frames=100, max_bytes=5000) == [] and box.queued_bytes == 0
    assert box.put(b"e")
    assert woken == [1, 1]


def test_past_its_byte_budget_the_outbox_overflows_instead_of_growing() -> None:
    box = Outbox(max_bytes=100, lag_frames=64)
    assert box.put(b"x" * 60)
    assert not box.put(b"y" * 60)
    assert box.overflowed and box.queued_bytes == 60


def test_a_lagging_outbox_replaces_ephemeral_frames_with_one_refresh() -> None:
    box = Outbox(max_bytes=10_000, lag_frames=3)
    for i in range(3):
        box.put(b"%d" % i)
    refreshes = []

    def refresh() -> list[bytes]:
        refreshes.append(1)
        return [b"full state"]

    for _ in range(5):
        assert box.put_ephemeral(b"diff", 1, refresh)
    assert box.take(max_frames=2, max_bytes=10_000) == [b"0", b"1"]
    assert box.take(max_frames=10, max_bytes=10_000) == [b"2", b"full state"]
    assert refreshes == [1]
