"""The HTTP session's transport (engine/transports/_http.py) and the SSE wire
(engine/sessions/_wire.py), without sockets, under Trio's MockClock."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from plait.engine.sessions._wire import RESERVED_EVENT_TYPES, SSE, sse_type
from plait.engine.transports import HttpTransport, InboundFull
from plait.protocol import Ack, Error, ErrorCode, Event, Joined, Publish, TransportClosed, decode_json


def transport(**kw: float) -> HttpTransport:
    settings = {"grace": 10.0, "resume_window": 30.0, "resume_bytes": 1000, "unsent_bytes": 100}
    settings.update(kw)
    return HttpTransport("/v1/sessions", "k" * 22, **settings)  # type: ignore[arg-type]


async def test_positions_count_what_was_sent_and_a_consumer_takes_what_is_after_its_own(autojump_clock: trio.testing.MockClock) -> None:
    t = transport()
    for i in range(3):
        t.send_message_nowait(b"m%d" % i)
    consumer = t.attach()
    assert await t.take(consumer, 0, 1) == [(1, b"m0"), (2, b"m1"), (3, b"m2")]
    assert await t.take(consumer, 2, 1) == [(3, b"m2")]  # a resume from 2 gets 3 again
    assert await t.take(consumer, 3, 1) == []  # nothing new within the timeout
    assert t.retains(0) and t.retains(3) and not t.retains(4)


async def test_what_was_taken_is_kept_for_the_resume_window_then_forgotten(autojump_clock: trio.testing.MockClock) -> None:
    t = transport(resume_window=5)
    t.send_message_nowait(b"old")
    consumer = t.attach()
    await t.take(consumer, 0, 1)
    await trio.sleep(6)
    t.send_message_nowait(b"new")
    assert await t.take(consumer, 1, 1) == [(2, b"new")]
    assert not t.retains(0) and t.retains(1)  # "old" is gone: a resume from 0 is not complete


async def test_what_was_taken_is_kept_up_to_resume_bytes() -> None:
    t = transport(resume_bytes=10, unsent_bytes=1000)
    consumer = t.attach()
    for i in range(5):
        t.send_message_nowait(b"x" * 4)
        await t.take(consumer, i, 1)
    assert t.earliest == 4 and not t.retains(2) and t.retains(3)


async def test_nothing_untaken_is_ever_dropped_and_the_sender_waits_past_unsent_bytes(autojump_clock: trio.testing.MockClock) -> None:
    t = transport(unsent_bytes=10, resume_bytes=0)
    assert t.send_message_nowait(b"x" * 8)
    assert not t.send_message_nowait(b"y" * 8)  # 16 bytes wait for a consumer
    flushed = False

    async def flush() -> None:
        nonlocal flushed
        await t.flush()
        flushed = True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flush)
        await trio.sleep(1)
        assert not flushed and t.retains(0)
        consumer = t.attach()
        assert [p for p, _ in await t.take(consumer, 0, 1)] == [1, 2]
    assert flushed


async def test_a_new_consumer_replaces_the_one_before() -> None:
    t = transport()
    first = t.attach()
    second = t.attach()
    assert await t.take(first, 0, 1) is None
    t.send_message_nowait(b"m")
    assert await t.take(second, 0, 1) == [(1, b"m")]


async def test_without_a_consumer_for_the_grace_the_transport_ends_with_heartbeat_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    t = transport(grace=3)
    consumer = t.attach()
    with trio.move_on_after(20):  # a consumer keeps it alive however long
        await t.receive_message()
    t.detach(consumer)
    start = trio.current_time()
    with pytest.raises(TransportClosed) as closed:
        await t.receive_message()
    assert closed.value.code == 4005 and trio.current_time() - start == pytest.approx(3)
    with pytest.raises(TransportClosed):
        t.put(b"late")


async def test_messages_put_are_received_in_order() -> None:
    t = transport()
    t.put(b"a")
    t.put("b")
    assert [await t.receive_message(), await t.receive_message()] == [b"a", "b"]


async def test_answers_come_back_for_the_refs_asked_and_nothing_else(autojump_clock: trio.testing.MockClock) -> None:
    t = transport()
    waiting = t.expect([(1, True), (2, False)])
    t.answered(Ack(7, None), join=False)  # not asked by this request: ignored
    t.answered(Ack(2, 5), join=False)
    t.answered(Joined(1, 1, 2, 0, None, "e"), join=True)
    assert await t.answers(waiting, 1) == [Joined(1, 1, 2, 0, None, "e"), Ack(2, 5)]
    waiting = t.expect([(3, False)])
    start = trio.current_time()
    assert await t.answers(waiting, 2) == []  # none came within the timeout
    assert trio.current_time() - start == pytest.approx(2)


async def test_a_ref_reused_by_waiting_requests_is_answered_to_them_in_the_order_they_were_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    t = transport()
    first, second, both = t.expect([(7, False)]), t.expect([(7, False)]), t.expect([(8, False), (8, False)])
    for answer in (Ack(7, 1), Ack(8, 3), Ack(7, 2), Ack(8, 4)):
        t.answered(answer, join=False)
    assert await t.answers(first, 1) == [Ack(7, 1)]
    assert await t.answers(second, 1) == [Ack(7, 2)]
    assert await t.answers(both, 1) == [Ack(8, 3), Ack(8, 4)]
    assert trio.current_time() == 0  # none waited


async def test_a_join_and_another_request_sharing_a_ref_each_get_their_own_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A join that waits is answered after later requests (spec §4.1): its answer must still
    go to it, not to a later request that reused its ref (spec §14.3)."""
    t = transport()
    join, presence = t.expect([(7, True)]), t.expect([(7, False)])
    t.answered(Ack(7, None), join=False)  # the presence's, answered first
    t.answered(Error(7, None, ErrorCode.FORBIDDEN, "no"), join=True)
    assert await t.answers(presence, 1) == [Ack(7, None)]
    assert await t.answers(join, 1) == [Error(7, None, ErrorCode.FORBIDDEN, "no")]


async def test_a_closed_transport_gives_its_consumer_what_is_left_then_none() -> None:
    t = transport()
    t.send_message_nowait(b"last words")
    await t.aclose(4006, "too slow")
    consumer = t.attach()
    assert await t.take(consumer, 0, 1) == [(1, b"last words")]
    assert await t.take(consumer, 1, 1) is None
    assert t.closed is not None and t.closed.code == 4006


@pytest.mark.parametrize(
    ("name", "expected"),
    [("chat", "chat"), ("poll.vote", "poll.vote"), ("error", "event"), ("message", "event"), ("welcome", "event"),
     ("a\nb", "event"), ("a\rb", "event"), ("x\0", "event"), ("a\u2028b", "event")],
)
def test_an_events_sse_type_is_its_name_unless_that_would_mislead_a_browser(name: str, expected: str) -> None:
    assert sse_type(Event(1, 1, name, None, None, None)) == expected
    assert "open" in RESERVED_EVENT_TYPES and "resumed" in RESERVED_EVENT_TYPES


def test_the_sse_wire_puts_one_frame_on_one_data_line() -> None:
    frame = Publish(1, 2, "chat", {"text": "two\nlines\r\n"}, None)
    message = SSE.frame(frame)
    assert message.count(b"\n") == 2 and message.startswith(b"event: publish\ndata: {")
    assert SSE.decode(message) == [frame]
    assert decode_json(message.split(b"data: ", 1)[1]) == [frame]


def test_the_sse_wire_leaves_no_line_break_a_line_reader_would_split_at() -> None:
    frame = Publish(1, 2, "chat", {"text": "a\u2028b\u2029c\x85d"}, None)
    message = SSE.frame(frame)
    assert message.decode().splitlines() == ["event: publish", message.decode().splitlines()[1]]
    assert SSE.decode(message) == [frame]


class StallingSink:
    """A sink whose socket takes nothing at first (a slow client), then everything."""

    def __init__(self) -> None:
        self.stalled = True
        self.written: list[int] = []

    def write_nowait(self, entries: list[tuple[int, bytes]]) -> bool:
        self.written += [pos for pos, _ in entries]  # kept by the sink, in order
        return not self.stalled

    def wake(self) -> None:
        pass


async def test_a_sender_waiting_on_a_stalled_stream_goes_on_once_the_stream_drains(autojump_clock: trio.testing.MockClock) -> None:
    t = transport(unsent_bytes=10)
    sink = StallingSink()
    assert t.push_to(t.attach(), sink)
    t.send_message_nowait(b"a" * 8)  # handed to the sink, which kept it: no more until it drains
    for _ in range(3):
        t.send_message_nowait(b"b" * 8)
    flushed_at = None

    async def flush() -> None:
        nonlocal flushed_at
        await t.flush()
        flushed_at = trio.current_time()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flush)
        await trio.sleep(5)
        assert flushed_at is None  # 24 bytes wait for the stream
        sink.stalled = False
        t.sink_drained()
    assert flushed_at == pytest.approx(5) and sink.written == [1, 2, 3, 4]


async def test_a_poll_waits_its_timeout_once_however_often_the_output_changes(autojump_clock: trio.testing.MockClock) -> None:
    t = transport()
    consumer = t.attach()
    t.send_message_nowait(b"m")
    await t.take(consumer, 0, 1)

    async def other_output() -> None:
        for _ in range(10):  # wakes the poll without anything after its position changing
            await trio.sleep(0.5)
            t.confirm(1)
            t._wake_output()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other_output)
        start = trio.current_time()
        assert await t.take(consumer, 1, 2) == []
        assert trio.current_time() - start == pytest.approx(2)


async def test_what_the_session_has_not_read_is_bounded(autojump_clock: trio.testing.MockClock) -> None:
    """The reader held up (a frame waiting for a join, spec §4.1): POSTed bodies are refused
    past `inbound_bytes` rather than kept; one is always taken."""
    t = transport(inbound_bytes=1000)
    t.put(b"x" * 5000)  # over the limit, but nothing else waits: taken
    with pytest.raises(InboundFull):
        t.put(b"y")
    assert await t.receive_message() == b"x" * 5000
    t.put(b"a" * 600)
    with pytest.raises(InboundFull):
        t.put(b"b" * 600)
    t.put(b"c" * 400)
    assert [await t.receive_message() for _ in range(2)] == [b"a" * 600, b"c" * 400]
