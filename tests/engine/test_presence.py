"""PresenceBook, pure data: time is an argument (style §1)."""

from __future__ import annotations

from plait.engine.room._presence import PresenceBook


def test_diff_reports_each_change_once() -> None:
    book = PresenceBook()
    book.join("a", {"id": "u1"})
    book.set("a", {"n": 1}, 4)
    joined, updated, left = book.take_diff()
    assert [e.session for e in joined] == ["a"] and joined[0].state == {"n": 1} and not updated and not left
    book.set("a", book.patched("a", {"n": None, "x": 2}), 4)
    assert book.take_diff()[1][0].state == {"x": 2}
    assert not book.dirty


def test_a_join_and_leave_within_one_tick_is_still_reported_as_left() -> None:
    # Someone who joined in between saw the session in its snapshot; it must hear it left.
    book = PresenceBook()
    book.join("a", {"id": "u1"})
    assert [e.session for e in book.snapshot()] == ["a"]
    book.leave("a")
    assert book.take_diff() == ((), (), ("a",))


def test_linger_expire_and_quick_reconnect() -> None:
    book = PresenceBook()
    book.join("old", {"id": "bob"})
    book.take_diff()
    book.linger("old", until=13.0)
    assert book.next_expiry() == 13.0 and book.expire(12.9) == []
    book.join("new", {"id": "bob"})  # same identity back within the grace
    joined, _, left = book.take_diff()
    assert left == ("old",) and [e.session for e in joined] == ["new"]
    book.linger("new", until=20.0)
    assert book.expire(20.0) == ["new"] and len(book) == 0
