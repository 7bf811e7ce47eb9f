"""client/_changes.py is pure bookkeeping: whatever the server answers, in whatever order, every
local change is in exactly one place (waiting, in flight, acknowledged or refused), and
`oldest_unacked` is the lowest change not acknowledged."""

from __future__ import annotations

import pycrdt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plait.client._changes import LocalChanges

Step = st.one_of(
    st.just(("edit",)),
    st.just(("offline_edit",)),
    st.just(("send",)),
    st.tuples(st.sampled_from(["ack", "retry", "refuse"]), st.integers(0, 5)),
    st.just(("lost",)),
    st.just(("sync",)),
)


def _covered(changes: LocalChanges) -> set[int]:
    pieces = list(changes.unsent) + [p for ps in changes.in_flight.values() for p in ps]
    return {n for p in pieces for n in range(p.first, p.last + 1)}


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(st.lists(Step, max_size=40))
def test_every_change_is_in_one_place(steps: list[tuple[object, ...]]) -> None:
    changes = LocalChanges()
    doc = pycrdt.Doc()
    text = doc.get("text", type=pycrdt.Text)
    done: set[int] = set()  # acknowledged or refused
    refs = 0
    for step in steps:
        match step:
            case ("edit",) | ("offline_edit",):
                update: list[bytes] = []
                sub = doc.observe(lambda event: update.append(event.update))
                text.insert(len(text), "x")
                doc.unobserve(sub)
                changes.record(update[0] if step[0] == "edit" else None)
            case ("send",):
                outgoing = changes.take()
                if outgoing is not None:
                    refs += 1
                    changes.sent(refs, outgoing)
            case (answer, index):
                assert isinstance(index, int)
                in_flight = sorted(changes.in_flight)
                if not in_flight:
                    continue
                ref = in_flight[index % len(in_flight)]
                pieces = changes.in_flight[ref]
                if answer == "retry":
                    assert changes.retry(ref)
                else:
                    done |= {n for p in pieces for n in range(p.first, p.last + 1)}
                    assert changes.acked(ref) if answer == "ack" else changes.refuse(ref) is not None
            case ("lost",):
                changes.lost_connection()
                assert not changes.in_flight
            case ("sync",):
                if not changes.in_flight:
                    changes.absorb_into_sync(doc.get_update())
        waiting = _covered(changes)
        everything = set(range(1, changes.count + 1))
        assert waiting | done >= everything  # nothing lost
        unacked = everything - done
        assert changes.oldest_unacked() == (min(unacked) if unacked else None)
