"""client/_changes.py is pure bookkeeping: whatever the server answers, in whatever order, every
local change is in exactly one place (waiting, in flight, acknowledged or refused), and
`oldest_unacked` is the lowest change not acknowledged. Updates larger than a frame allows go
in parts; their changes are acknowledged once every part is."""

from __future__ import annotations

import pycrdt
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from plait.client._changes import LocalChanges, Outgoing
from plait.protocol import MIN_SPLIT_BYTES

MAX = MIN_SPLIT_BYTES

Step = st.one_of(
    st.just(("edit",)),
    st.just(("big_edit",)),
    st.just(("offline_edit",)),
    st.just(("send",)),
    st.tuples(st.sampled_from(["ack", "retry", "refuse"]), st.integers(0, 5)),
    st.just(("lost",)),
    st.just(("sync",)),
)


def _covered(changes: LocalChanges) -> set[int]:
    outgoing = list(changes.in_flight.values()) + ([changes.sending] if changes.sending else [])
    pieces = list(changes.unsent) + [p for o in outgoing for p in o.pieces]
    return {n for p in pieces for n in range(p.first, p.last + 1)}


def _numbers(outgoing: Outgoing) -> set[int]:
    return {n for p in outgoing.pieces for n in range(p.first, p.last + 1)}


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(st.lists(Step, max_size=40))
@example([("sync",), ("send",), ("edit",), ("send",), ("ack", 1), ("lost",), ("sync",)])  # found in CI
def test_every_change_is_in_one_place(steps: list[tuple[object, ...]]) -> None:
    changes = LocalChanges()
    doc = pycrdt.Doc()
    text = doc.get("text", type=pycrdt.Text)
    done: set[int] = set()  # acknowledged or refused
    refs = 0
    for step in steps:
        match step:
            case ("edit",) | ("offline_edit",) | ("big_edit",):
                update: list[bytes] = []
                sub = doc.observe(lambda event: update.append(event.update))  # noqa: B023 (unobserved below)
                text.insert(len(text), "x" * (3 * MAX if step[0] == "big_edit" else 1))
                doc.unobserve(sub)
                changes.record(None if step[0] == "offline_edit" else update[0])
            case ("send",):
                frame = changes.take(MAX)
                if frame is not None:
                    assert len(frame.update) <= MAX
                    refs += 1
                    changes.sent(refs, frame)
            case (answer, index):
                assert isinstance(index, int)
                in_flight = sorted(changes.in_flight)
                if not in_flight:
                    continue
                ref = in_flight[index % len(in_flight)]
                outgoing = changes.in_flight[ref]
                if answer == "retry":
                    assert changes.retry(ref)
                elif answer == "refuse":
                    assert changes.refuse(ref) == outgoing.pieces
                    done |= _numbers(outgoing)
                else:
                    assert changes.acked(ref)
                    if outgoing not in changes.in_flight.values() and changes.sending is not outgoing:
                        done |= _numbers(outgoing)  # its last part answered
            case ("lost",):
                changes.lost_connection()
                assert not changes.busy
            case ("sync",):
                if not changes.busy:
                    changes.absorb_into_sync(doc.get_update())
        waiting = _covered(changes)
        everything = set(range(1, changes.count + 1))
        assert waiting | done >= everything  # nothing lost
        unacked = everything - done
        assert changes.oldest_unacked() == (min(unacked) if unacked else None)
