"""`changes_nothing` (engine/room/_doc.py), which decides whether a read-only member's update
is acked or refused FORBIDDEN (spec §5.3), against the definition: every deleted clock of the
update is already deleted in the document, and it inserts nothing."""

from __future__ import annotations

from array import array

import pycrdt
from hypothesis import given, settings
from hypothesis import strategies as st

from plait.engine.room._doc import changes_nothing
from plait.protocol._ycrdt import DecodedUpdate


def ranges_of(clocks: set[int]) -> array[int]:
    """Sorted, disjoint `clock, length` pairs covering `clocks`, runs split at random points
    as yrs may keep them (adjacent ranges)."""
    pairs = array("I")
    for clock in sorted(clocks):
        if pairs and pairs[-2] + pairs[-1] == clock and clock % 3:
            pairs[-1] += 1
        else:
            pairs += array("I", [clock, 1])
    return pairs


def doc_with_deleted(clocks: set[int], length: int) -> pycrdt.Doc:
    doc = pycrdt.Doc(client_id=5)
    text = doc.get("text", type=pycrdt.Text)
    text.insert(0, "x" * length)
    for clock in sorted(clocks, reverse=True):  # one character each: its clock is its index
        del text[clock : clock + 1]
    return doc


@settings(max_examples=60, deadline=None)
@given(st.sets(st.integers(0, 39)), st.sets(st.integers(0, 39)))
def test_an_update_changes_nothing_exactly_when_it_deletes_only_what_is_deleted(ours: set[int], theirs: set[int]) -> None:
    doc = doc_with_deleted(ours, 40)
    update = DecodedUpdate([], {5: ranges_of(theirs)} if theirs else {})
    assert changes_nothing(doc, update) == (theirs <= ours)
