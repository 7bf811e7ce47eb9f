"""Refuse the document updates that pycrdt would integrate differently from Yjs, that cannot
integrate now, or that would nest shared types too deep for yrs (spec §5.3,
spec/notes/unicode.md, spec/notes/crdt-input.md).

Yjs counts text in UTF-16 units: an emoji is two units, and an item's clock advances by two.
Yjs may split a string between those two units (delete half an emoji, insert inside one); it then
replaces both halves with U+FFFD. yrs (pycrdt 0.14) keeps text as Rust strings and cannot hold
half a character: splitting there keeps the whole character on the left, the items' lengths stop
matching their text, later clocks land on the wrong characters (deleting "b" instead of half of
"😎") and the snapshot written from that state reads back differently from the live document.
pycrdt's own byte-offset API has a sibling bug: an insert at a byte offset inside a multi-byte
character creates an item whose right origin is the item itself, which never integrates anywhere
(the server acked it, nobody sees it).

yrs deletes a shared type by recursing into the types inside it: a type nested ~35,000 deep
overflows its stack and kills the process. One update can build such a chain, or many small
ones each adding a level; only the document knows how deep an item already is.

`UpdateCheck` keeps, per client, how far its clocks reach, the clocks that fall between the two
halves of a live (not deleted) character outside the BMP, and the nesting depth of every item,
and refuses before anything is applied:
- an update whose delete ranges, origins or right origins would cut such a character;
- an update with a struct that cannot integrate now (a gap in its client's clocks, or an origin,
  right origin or parent that the document does not have and the update does not bring, or
  structs of the update that wait for each other), or that deletes clocks neither has: pycrdt
  would keep either pending and retry it on every later update;
- an update with a shared type nested deeper than `MAX_TYPE_DEPTH`.

It reads no bytes itself: `plait.protocol.read_update` decodes them (and refuses malformed or
oversized ones first), and the check works on what it returns.
"""

from __future__ import annotations

import logging
import re
from array import array
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import Final

from plait.protocol import GC_STRUCT, SKIP_STRUCT, TYPE_CONTENT, DecodedUpdate, ProtocolError, Struct, YId, read_update

logger = logging.getLogger("plait.engine")

MAX_TYPE_DEPTH: Final = 256
"""Deepest nesting of shared types a peer may build: a type item inside 255 others below its
root type (spec §5.3). Real editors nest about 20 deep (a table in a list in a blockquote).
yrs's recursive delete overflows an 8 MiB stack at ~35,000 levels, a 128 KiB one (musl's
default for threads) between 400 and 500."""

_ASTRAL: Final = re.compile("[\U00010000-\U0010ffff]")
_UNRESOLVED, _VISITING = -1, -2


class UpdateCheck:
    """What one document holds that an update must not cut, how far its clocks reach, and how
    deep its items are nested.

    Keep it in step with the document: `reset(doc.get_update())` after loading, peers' updates
    through `apply(update, read_update(update), apply_update)`, and every other change through
    `learn(event.update)` from the document's observer (which `apply` makes a no-op while it
    runs: it learns from the update it has already read).
    """

    __slots__ = ("_applying", "_depths", "_off", "_pairs", "_reach")

    def __init__(self) -> None:
        self._reach: dict[int, int] = {}
        """Per client: the end of its known clocks (the document's state vector)."""
        self._pairs: dict[int, set[int]] = {}
        """Per client: the clocks between the two halves of its live non-BMP characters."""
        self._depths: dict[int, tuple[array[int], array[int]]] = {}
        """Per client: runs of its clocks by depth, `(starts, depths)`: the items from
        `starts[i]` on are `depths[i]` deep (1: in a root type; 0: collected, no parent)."""
        self._off = False
        self._applying = False

    def reset(self, update: bytes) -> None:
        """Start over from a document's whole state as one update (`doc.get_update()`)."""
        self._pairs.clear()
        self._reach.clear()
        self._depths.clear()
        self._off = False
        self.learn(update)

    def apply(self, update: bytes, decoded: DecodedUpdate, apply: Callable[[bytes], object]) -> None:
        """`apply(update)` unless it cuts a character in two, cannot integrate now, deletes
        clocks the document does not have or nests types deeper than MAX_TYPE_DEPTH (spec
        §5.3). `decoded` is `read_update(update)`.

        Raises:
            ValueError: refused (nothing applied), saying why; or whatever `apply` raised.
        """
        if self._off:
            apply(update)  # the observer's learn() is off too
            return
        depths = self._scan(decoded, strict=True)
        self._applying = True
        try:
            apply(update)
        finally:
            self._applying = False
        self._take(decoded, depths)

    def learn(self, update: bytes) -> None:
        """Take in an update the document has integrated (its clocks, text, depths, deletions).

        pycrdt wrote it, so it always reads; if it ever does not, that is a bug here, and the
        check turns itself off (updates apply unchecked but for their bytes) rather than fail
        the document's transaction."""
        if self._off or self._applying:
            return
        try:
            decoded = read_update(update, trusted=True)
        except ProtocolError:
            logger.exception("update check off: cannot read the document's own update")
            self._off = True
            return
        self._take(decoded, self._scan(decoded, strict=False))

    def holds(self, decoded: DecodedUpdate) -> bool:
        """Whether the document has every clock the update brings, once applied: False when
        part of it waits for a struct the document lacks (pycrdt keeps that part pending, and
        nothing shows it). True when the check is off (it cannot tell)."""
        if self._off:
            return True
        reach = self._reach
        for client, clock, length, info, *_ in decoded.structs:
            if length and info != SKIP_STRUCT and clock + length > reach.get(client, 0):
                return False
        return True

    # -- checking ---------------------------------------------------------------------------

    def _scan(self, decoded: DecodedUpdate, strict: bool) -> list[int]:
        """The depth of each struct of the update (0 where nothing new nests: GC, skips,
        structs the document has). `strict`: ValueError if the update is refused; otherwise
        (an update the document took) nothing is refused and what cannot be known counts 0.

        One pass settles the references to what the document has and to structs before them
        in the update (a keystroke's; a whole document's, mostly), the rest comes after."""
        structs = decoded.structs
        known, known_depths = self._reach, self._depths
        reach: dict[int, int] = {}  # how far each client named reaches with the update so far
        cuts: list[YId] = []  # the update splits the document just before these...
        after: list[YId] = []  # ...and just after these (its origins)
        depths: list[int] = []
        later: list[YId] = []  # references to sections further on
        runs: dict[int, tuple[list[int], list[int]]] | None = None  # depths so far, made when needed
        texts = False
        other: int  # a reference's id, once it is known not to be a root type's name
        at: int
        entry: tuple[Sequence[int], Sequence[int]] | None  # runs of depth, the document's or the update's
        for client, clock, length, info, origin, right, parent, text in structs:
            if info == SKIP_STRUCT:
                depths.append(0)
                continue
            fresh = False  # it holds clocks the document does not have: its depth counts
            if length:
                end = reach.get(client)
                if end is None:
                    end = known.get(client, 0)
                if clock > end and strict:
                    raise ValueError(f"update skips clocks {end}..{clock} of client {client}")
                last = clock + length
                if clock < end < last:
                    cuts.append((client, end))  # the part already known is cut off
                fresh = last > end
                reach[client] = last if fresh else end
            if info == GC_STRUCT:
                depths.append(0)
            else:
                if text is not None:
                    texts = True
                depth = 0
                for ref in (origin, right) if parent is None else (parent,):
                    if ref is None or ref.__class__ is str:
                        continue
                    other, at = ref  # type: ignore[assignment, str-unpack]  # not a str: skipped above
                    if other == client and at >= clock:
                        if strict:
                            raise ValueError(f"update refers to {other}:{at}, which the document does not have")
                        continue
                    if at < known.get(other, 0):  # in the document
                        entry = known_depths.get(other)
                        if entry is None:
                            found = 0
                        elif len(entry[0]) == 1:
                            found = entry[1][0]
                        else:
                            k = bisect_right(entry[0], at) - 1
                            found = entry[1][k] if k >= 0 else 0
                    elif at < reach.get(other, 0):  # in a struct before this one in the update
                        if runs is None:
                            runs = _runs(structs, depths)
                        entry = runs[other]
                        if len(entry[0]) == 1:
                            found = entry[1][0]
                        else:
                            k = bisect_right(entry[0], at) - 1
                            found = entry[1][k] if k >= 0 else 0
                    else:
                        later.append(ref)  # type: ignore[arg-type]
                        found = _UNRESOLVED
                    if found == _UNRESOLVED or depth == _UNRESOLVED:
                        depth = _UNRESOLVED
                    elif found > depth:
                        depth = found
                if parent is None:
                    if origin is not None:
                        after.append(origin)
                    if right is not None:
                        cuts.append(right)
                elif parent.__class__ is str:
                    depth = 1
                elif depth != _UNRESOLVED:
                    depth += 1
                if not fresh:
                    depth = 0
                elif strict and depth > MAX_TYPE_DEPTH and info & 0x1F == TYPE_CONTENT:
                    raise ValueError(f"update nests shared types deeper than {MAX_TYPE_DEPTH}")
                depths.append(depth)
            if runs is not None:
                entry = runs.get(client)
                if entry is None:
                    runs[client] = ([clock], [depths[-1]])
                elif entry[1][-1] != depths[-1]:
                    entry[0].append(clock)
                    entry[1].append(depths[-1])
        if later:
            for other, at in later:
                if at >= reach.get(other, known.get(other, 0)) and strict:
                    raise ValueError(f"update refers to {other}:{at}, which the document does not have")
            self._resolve(structs, depths, strict)
        if strict:
            for client, ranges in decoded.deletes.items():
                end = reach.get(client)
                if end is None:
                    end = known.get(client, 0)
                if ranges and ranges[-2] + ranges[-1] > end:  # yrs would keep it pending, retried on every update
                    raise ValueError(f"update deletes {client}:{ranges[-2]}..{ranges[-2] + ranges[-1]}, which the document does not have")
        if strict and (self._pairs or texts):
            for client, ranges in decoded.deletes.items():
                for i in range(0, len(ranges), 2):
                    cuts.append((client, ranges[i]))
                    cuts.append((client, ranges[i] + ranges[i + 1]))
            cuts.extend((client, clock + 1) for client, clock in after)
            self._check_cuts(cuts, structs if texts else [])
        return depths

    def _check_cuts(self, cuts: list[YId], structs: list[Struct]) -> None:
        own: dict[int, set[int]] = {}
        for client, clock, _, _, _, _, _, text in structs:
            if text is not None:
                own.setdefault(client, set()).update(_pair_clocks(clock, text))
        held = self._pairs
        for client, clock in cuts:
            pairs = held.get(client)
            mine = own.get(client)
            if (pairs and clock in pairs) or (mine and clock in mine):
                raise ValueError(
                    f"update splits a UTF-16 surrogate pair at {client}:{clock} "
                    "(half of a character outside the BMP, such as an emoji)"
                )

    def _resolve(self, structs: list[Struct], depths: list[int], strict: bool) -> None:
        """Fill in each `_UNRESOLVED` depth: from the struct's parent (a root: 1; a type item:
        one more than it) or its origins (the deeper of theirs: a neighbour that is collected
        counts 0, and yrs collects the item too), resolving references into the update first,
        without recursion. `strict`: ValueError for a type nested deeper than MAX_TYPE_DEPTH
        and for structs that wait for each other (they can never integrate); otherwise those
        count as they come and 0."""
        known = self._reach
        index: dict[int, tuple[list[int], list[int]]] | None = None
        other: int  # a reference's id, once it is known not to be a root type's name
        at: int
        for first in range(len(structs)):
            if depths[first] != _UNRESOLVED:
                continue
            stack = [first]
            while stack:
                i = stack[-1]
                depths[i] = _VISITING
                _, _, _, info, origin, right, parent, _ = structs[i]
                depth, waits = 0, -1
                for ref in (origin, right) if parent is None else (parent,):
                    if ref is None or ref.__class__ is str:
                        continue
                    other, at = ref  # type: ignore[assignment, str-unpack]  # not a str: skipped above
                    if at < known.get(other, 0):
                        found = self._depth_at(other, at)
                    else:
                        if index is None:
                            index = _index(structs)
                        j = _find(index, structs, other, at)
                        found = 0 if j < 0 else depths[j]
                        if found == _UNRESOLVED:
                            waits = j
                            break
                        if found == _VISITING:
                            if strict:
                                raise ValueError("update holds structs that wait for each other")
                            found = 0
                    if found > depth:
                        depth = found
                if waits >= 0:
                    stack.append(waits)
                    continue
                if parent is not None:
                    depth = 1 if parent.__class__ is str else depth + 1
                if strict and depth > MAX_TYPE_DEPTH and info & 0x1F == TYPE_CONTENT:
                    raise ValueError(f"update nests shared types deeper than {MAX_TYPE_DEPTH}")
                depths[i] = depth
                stack.pop()

    def _depth_at(self, client: int, clock: int) -> int:
        runs = self._depths.get(client)
        if runs is None:
            return 0
        starts, depths = runs
        i = bisect_right(starts, clock) - 1
        return depths[i] if i >= 0 else 0

    # -- learning ---------------------------------------------------------------------------

    def _take(self, decoded: DecodedUpdate, depths: list[int]) -> None:
        reach, runs_of = self._reach, self._depths
        for (client, clock, length, info, _, _, _, text), depth in zip(decoded.structs, depths, strict=True):
            if info == SKIP_STRUCT or not length:
                continue
            end = clock + length
            known = reach.get(client, 0)
            if end <= known:
                continue
            start = clock if clock > known else known
            runs = runs_of.get(client)
            if runs is None:
                runs_of[client] = (array("L", (start,)), array("L", (depth,)))
            elif runs[1][-1] != depth:
                runs[0].append(start)
                runs[1].append(depth)
            if text is not None:
                new = [p for p in _pair_clocks(clock, text) if p > start]
                if new:
                    self._pairs.setdefault(client, set()).update(new)
            reach[client] = end
        # A character deleted whole loses its text (the document collects it), so nothing is
        # left to cut; an accepted update never deletes half of one.
        for client, ranges in decoded.deletes.items() if self._pairs else ():
            pairs = self._pairs.get(client)
            if not pairs:
                continue
            for i in range(0, len(ranges), 2):
                clock, length = ranges[i], ranges[i + 1]
                if length < len(pairs):
                    pairs.difference_update(range(clock + 1, clock + length))
                else:
                    pairs.difference_update([p for p in pairs if clock < p < clock + length])


def _pair_clocks(clock: int, text: str) -> list[int]:
    """Clocks between the two UTF-16 halves of each character of `text` outside the BMP, for
    text whose first unit is at `clock`."""
    return [clock + match.start() + n + 1 for n, match in enumerate(_ASTRAL.finditer(text))]


def _runs(structs: list[Struct], depths: list[int]) -> dict[int, tuple[list[int], list[int]]]:
    """Per client: the update's structs so far (as many as `depths`) as runs of depth,
    `(starts, depths)`: from `starts[i]` on, the structs are `depths[i]` deep."""
    runs: dict[int, tuple[list[int], list[int]]] = {}
    for struct, depth in zip(structs, depths, strict=False):  # depths: the structs so far
        if struct[3] != SKIP_STRUCT:
            _add_run(runs, struct[0], struct[1], depth)
    return runs


def _add_run(runs: dict[int, tuple[list[int], list[int]]], client: int, clock: int, depth: int) -> None:
    entry = runs.get(client)
    if entry is None:
        runs[client] = ([clock], [depth])
    elif entry[1][-1] != depth:
        entry[0].append(clock)
        entry[1].append(depth)


def _index(structs: list[Struct], stop: int | None = None) -> dict[int, tuple[list[int], list[int]]]:
    """Per client: the first clocks of its structs in the update (up to `stop`), and their
    positions."""
    index: dict[int, tuple[list[int], list[int]]] = {}
    for i, struct in enumerate(structs[:stop]):
        if struct[3] != SKIP_STRUCT:
            starts, positions = index.setdefault(struct[0], ([], []))
            starts.append(struct[1])
            positions.append(i)
    return index


def _find(index: dict[int, tuple[list[int], list[int]]], structs: list[Struct], client: int, clock: int) -> int:
    """The position of the update's struct holding `client:clock`, or -1."""
    entry = index.get(client)
    if entry is None:
        return -1
    starts, positions = entry
    i = bisect_right(starts, clock) - 1
    if i < 0:
        return -1
    struct = structs[positions[i]]
    return positions[i] if clock < struct[1] + struct[2] else -1
