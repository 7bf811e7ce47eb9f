"""Refuse the document updates that pycrdt would integrate differently from Yjs (spec §5.3,
spec/notes/unicode.md).

Yjs counts text in UTF-16 units: an emoji is two units, and an item's clock advances by two.
Yjs may split a string between those two units (delete half an emoji, insert inside one); it then
replaces both halves with U+FFFD. yrs (pycrdt 0.14) keeps text as Rust strings and cannot hold
half a character: splitting there keeps the whole character on the left, the items' lengths stop
matching their text, later clocks land on the wrong characters (deleting "b" instead of half of
"😎") and the snapshot written from that state reads back differently from the live document.
pycrdt's own byte-offset API has a sibling bug: an insert at a byte offset inside a multi-byte
character creates an item whose right origin is the item itself, which never integrates anywhere
(the server acked it, nobody sees it).

`UpdateCheck` keeps, per client, the clocks that fall between the two halves of a live
(not deleted) character outside the BMP, and how far each client's clocks reach, and refuses
before anything is applied:
- an update whose delete ranges, origins or right origins would cut such a character;
- an update with a struct that cannot integrate now (a gap in its client's clocks, or an origin,
  right origin or parent that the document does not have and the update does not bring).

It reads Yjs v1 updates itself (pycrdt exposes no decoder), only as far as lengths and references.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

logger = logging.getLogger("plait.engine")

_HAS_ORIGIN, _HAS_RIGHT_ORIGIN, _HAS_PARENT_SUB = 0x80, 0x40, 0x20
_GC, _DELETED, _JSON, _BINARY, _STRING, _EMBED, _FORMAT, _TYPE, _ANY, _DOC, _SKIP = range(11)
_XML_ELEMENT, _XML_HOOK = 3, 5
_KNOWN_TYPES = frozenset({0, 1, 2, 3, 4, 5, 6, 9, 15})  # 7 (yrs weak links) is not Yjs
_MAX_ANY_DEPTH = 64


class _Truncated(ValueError):
    pass


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise _Truncated("update ends early")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def varuint(self) -> int:
        data, pos, value, shift = self.data, self.pos, 0, 0
        while True:
            if pos >= len(data):
                raise _Truncated("update ends inside a number")
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                self.pos = pos
                return value
            shift += 7
            if shift > 63:
                raise ValueError("update number out of range")

    def skip(self, length: int) -> bytes:
        end = self.pos + length
        if end > len(self.data):
            raise _Truncated("update ends inside a byte string")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def varbytes(self) -> bytes:
        return self.skip(self.varuint())

    def varstring(self) -> str:
        try:
            return self.varbytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError("update string is not UTF-8") from exc

    def any(self, depth: int = 0) -> None:
        if depth > _MAX_ANY_DEPTH:
            raise ValueError("update value nests too deeply")
        tag = self.byte()
        if tag in (127, 126, 121, 120):  # undefined, null, false, true
            return
        if tag == 125:  # signed varint
            while self.byte() & 0x80:
                pass
        elif tag == 124:
            self.skip(4)
        elif tag in (123, 122):
            self.skip(8)
        elif tag in (119, 116):  # string, bytes
            self.varbytes()
        elif tag == 118:  # object
            for _ in range(self.varuint()):
                self.varbytes()
                self.any(depth + 1)
        elif tag == 117:  # array
            for _ in range(self.varuint()):
                self.any(depth + 1)
        else:
            raise ValueError(f"update holds an unknown value tag {tag}")


def _pair_clocks(clock: int, text: str) -> list[int]:
    """Clocks between the two UTF-16 halves of each character of `text` outside the BMP."""
    out, unit = [], clock
    for char in text:
        if char > "\uffff":
            out.append(unit + 1)
            unit += 2
        else:
            unit += 1
    return out


@dataclass(slots=True)
class _Parsed:
    # per client: (first clock, end clock) of its non-skip structs, in order
    runs: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    # (client, clock) a struct needs to exist before it integrates, and the struct's own id
    needs: list[tuple[int, int, int, int]] = field(default_factory=list)
    # (client, clock) positions the update cuts the document at
    cuts: list[tuple[int, int]] = field(default_factory=list)
    # per client: pair clocks in the update's own text
    pairs: dict[int, list[int]] = field(default_factory=dict)
    deletes: list[tuple[int, int, int]] = field(default_factory=list)


def _parse(update: bytes) -> _Parsed:
    r, out = _Reader(update), _Parsed()
    for _ in range(r.varuint()):
        count, client, clock = r.varuint(), r.varuint(), r.varuint()
        runs = out.runs.setdefault(client, [])
        for _ in range(count):
            info = r.byte()
            ref = info & 0x1F
            if ref == _SKIP:
                clock += r.varuint()
                continue
            if ref == _GC:
                length = r.varuint()
            else:
                length = _item(r, info, ref, client, clock, out)
            if length:
                if runs and runs[-1][1] == clock:
                    runs[-1] = (runs[-1][0], clock + length)
                else:
                    runs.append((clock, clock + length))
            clock += length
    for _ in range(r.varuint()):
        client = r.varuint()
        for _ in range(r.varuint()):
            clock, length = r.varuint(), r.varuint()
            out.deletes.append((client, clock, length))
            out.cuts.append((client, clock))
            out.cuts.append((client, clock + length))
    return out


def _item(r: _Reader, info: int, ref: int, client: int, clock: int, out: _Parsed) -> int:
    """Read one item after its info byte; return its length in clock units."""
    has_parent = not info & (_HAS_ORIGIN | _HAS_RIGHT_ORIGIN)
    if info & _HAS_ORIGIN:
        oc, ok = r.varuint(), r.varuint()
        out.needs.append((oc, ok, client, clock))
        out.cuts.append((oc, ok + 1))
    if info & _HAS_RIGHT_ORIGIN:
        rc, rk = r.varuint(), r.varuint()
        out.needs.append((rc, rk, client, clock))
        out.cuts.append((rc, rk))
    if has_parent:
        if r.varuint() == 1:
            r.varbytes()  # a root type's name
        else:
            pc, pk = r.varuint(), r.varuint()
            out.needs.append((pc, pk, client, clock))
        if info & _HAS_PARENT_SUB:
            r.varbytes()
    if ref == _STRING:
        text = r.varstring()
        if text.isascii():
            return len(text)
        pairs = _pair_clocks(clock, text)
        if pairs:
            out.pairs.setdefault(client, []).extend(pairs)
        return len(text) + len(pairs)
    if ref == _DELETED:
        return r.varuint()
    if ref == _JSON:  # obsolete; read as yrs reads it (n + 1 strings; Yjs reads n)
        n = r.varuint() + 1
        for _ in range(n):
            r.varbytes()
        return n
    if ref == _ANY:
        n = r.varuint()
        for _ in range(n):
            r.any()
        return n
    if ref in (_BINARY, _EMBED):
        r.varbytes()
    elif ref == _FORMAT:
        r.varbytes()
        r.varbytes()
    elif ref == _TYPE:
        kind = r.varuint()
        if kind not in _KNOWN_TYPES:
            raise ValueError(f"update holds an unknown type {kind}")
        if kind in (_XML_ELEMENT, _XML_HOOK):
            r.varbytes()
    elif ref == _DOC:
        r.varbytes()
        r.any()
    else:
        raise ValueError(f"update holds an unknown content kind {ref}")
    return 1


class UpdateCheck:
    """What one document holds that an update must not cut, and how far its clocks reach.

    Keep it in step with the document: `reset(doc.get_state(), doc.get_update())` after loading,
    `learn(update)` with every transaction's update (the document observer's `event.update`).
    `check(update)` before applying a peer's update raises ValueError, leaving both untouched.
    """

    __slots__ = ("_off", "_pairs", "_reach")

    def __init__(self) -> None:
        self._pairs: dict[int, set[int]] = {}
        self._reach: dict[int, int] = {}
        self._off = False

    def reset(self, state_vector: bytes, update: bytes) -> None:
        """Start over from a document's state vector and its whole state as one update."""
        self._pairs.clear()
        self._reach.clear()
        self._off = False
        r = _Reader(state_vector)
        for _ in range(r.varuint()):
            client = r.varuint()
            self._reach[client] = r.varuint()
        self.learn(update)

    def learn(self, update: bytes) -> None:
        """Take in an update the document has integrated (its text, its deletions).

        pycrdt wrote it, so it always reads; if it ever does not, that is a bug here, and the
        check turns itself off (updates apply unchecked, as without it) rather than fail the
        document's transaction."""
        if self._off:
            return
        try:
            parsed = _parse(update)
        except ValueError:
            logger.error("update check off: cannot read the document's own update", exc_info=True)
            self._off = True
            return
        reach = self._reach
        for client, runs in parsed.runs.items():
            end = runs[-1][1]
            if end > reach.get(client, 0):
                reach[client] = end
        for client, clocks in parsed.pairs.items():
            self._pairs.setdefault(client, set()).update(clocks)
        # A character deleted whole loses its text (the document collects it), so nothing is
        # left to cut; an accepted update never deletes half of one.
        for client, clock, length in parsed.deletes:
            pairs = self._pairs.get(client)
            if pairs:
                if length < len(pairs):
                    pairs.difference_update(range(clock + 1, clock + length))
                else:
                    pairs.difference_update([p for p in pairs if clock < p < clock + length])

    def check(self, update: bytes) -> None:
        """Raise ValueError if the update cuts a character in two or cannot integrate now."""
        if self._off:
            return
        try:
            parsed = _parse(update)
        except ValueError:
            return  # pycrdt is the judge of what decodes, and says why in its own words
        reach = dict(self._reach)
        for client, runs in parsed.runs.items():
            end = reach.get(client, 0)
            for first, last in runs:
                if first > end:
                    raise ValueError(f"update skips clocks {end}..{first} of client {client}")
                if first < end < last:
                    parsed.cuts.append((client, end))  # the part already known is cut off
                end = max(end, last)
            reach[client] = end
        for client, clock, own_client, own_clock in parsed.needs:
            if clock >= reach.get(client, 0) or (client == own_client and clock >= own_clock):
                raise ValueError(
                    f"update refers to {client}:{clock}, which the document does not have"
                )
        for client, clock in parsed.cuts:
            held = self._pairs.get(client)
            own = parsed.pairs.get(client)
            if (held and clock in held) or (own and clock in own):
                raise ValueError(
                    f"update splits a UTF-16 surrogate pair at {client}:{clock} "
                    "(half of a character outside the BMP, such as an emoji)"
                )

