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
from collections.abc import Callable

logger = logging.getLogger("plait.engine")

_HAS_ORIGIN, _HAS_RIGHT_ORIGIN, _HAS_PARENT_SUB = 0x80, 0x40, 0x20
_GC, _DELETED, _JSON, _BINARY, _STRING, _EMBED, _FORMAT, _TYPE, _ANY, _DOC, _SKIP = range(11)
_XML_ELEMENT, _XML_HOOK = 3, 5
_KNOWN_TYPES = frozenset({0, 1, 2, 3, 4, 5, 6, 9, 15})  # 7 (yrs weak links) is not Yjs
_MAX_ANY_DEPTH = 64


def _uint(data: bytes, pos: int) -> tuple[int, int]:
    """A lib0 varuint at `pos`: (value, next position). IndexError past the end."""
    byte = data[pos]
    if byte < 0x80:  # most numbers in an update take one byte
        return byte, pos + 1
    value, shift = byte & 0x7F, 7
    while True:
        pos += 1
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos + 1
        shift += 7
        if shift > 63:
            raise ValueError("update number out of range")


def _skip_bytes(data: bytes, pos: int) -> int:
    """Skip a lib0 varbytes/varstring at `pos`."""
    length, pos = _uint(data, pos)
    pos += length
    if pos > len(data):
        raise IndexError
    return pos


def _skip_any(data: bytes, pos: int, depth: int = 0) -> int:
    """Skip a lib0 "any" value at `pos`."""
    if depth > _MAX_ANY_DEPTH:
        raise ValueError("update value nests too deeply")
    tag = data[pos]
    pos += 1
    if tag in (127, 126, 121, 120):  # undefined, null, false, true
        return pos
    if tag == 125:  # signed varint
        while data[pos] & 0x80:
            pos += 1
        return pos + 1
    if tag == 124:
        pos += 4
    elif tag in (123, 122):
        pos += 8
    elif tag in (119, 116):  # string, bytes
        return _skip_bytes(data, pos)
    elif tag == 118:  # object
        count, pos = _uint(data, pos)
        for _ in range(count):
            pos = _skip_any(data, _skip_bytes(data, pos), depth + 1)
        return pos
    elif tag == 117:  # array
        count, pos = _uint(data, pos)
        for _ in range(count):
            pos = _skip_any(data, pos, depth + 1)
        return pos
    else:
        raise ValueError(f"update holds an unknown value tag {tag}")
    if pos > len(data):
        raise IndexError
    return pos


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


class _Parsed:
    __slots__ = ("cuts", "deletes", "needs", "pairs", "runs")

    def __init__(self) -> None:
        # per client: (first clock, end clock) of its non-skip structs, merged where they touch
        self.runs: dict[int, list[list[int]]] = {}
        # (client, clock) a struct needs before it integrates, then the struct's own id
        self.needs: list[tuple[int, int, int, int]] = []
        # (client, clock): the update cuts the document just before this clock
        self.cuts: list[tuple[int, int]] = []
        # per client: the clocks between the halves of the update's own characters outside the BMP
        self.pairs: dict[int, list[int]] = {}
        self.deletes: list[tuple[int, int, int]] = []


def _parse(data: bytes) -> _Parsed:
    """Read a Yjs v1 update as far as lengths and references. ValueError if it does not read."""
    try:
        return _read(data)
    except IndexError:
        raise ValueError("update ends early") from None
    except RecursionError:
        raise ValueError("update value nests too deeply") from None


def _read(data: bytes) -> _Parsed:
    out = _Parsed()
    needs, cuts = out.needs, out.cuts
    clients, pos = _uint(data, 0)
    for _ in range(clients):
        count, pos = _uint(data, pos)
        client, pos = _uint(data, pos)
        clock, pos = _uint(data, pos)
        runs = out.runs.setdefault(client, [])
        for _ in range(count):
            info = data[pos]
            pos += 1
            # Read as yrs reads it (a different reading would let an update past the check):
            # the whole byte names a skip or a GC, and its low four bits an item's content.
            if info == _SKIP:
                length, pos = _uint(data, pos)
                clock += length
                continue
            if info == _GC:
                length, pos = _uint(data, pos)
            else:
                ref = info & 0x0F
                if info & _HAS_ORIGIN:
                    other, pos = _uint(data, pos)
                    at, pos = _uint(data, pos)
                    needs.append((other, at, client, clock))
                    cuts.append((other, at + 1))
                if info & _HAS_RIGHT_ORIGIN:
                    other, pos = _uint(data, pos)
                    at, pos = _uint(data, pos)
                    needs.append((other, at, client, clock))
                    cuts.append((other, at))
                if not info & (_HAS_ORIGIN | _HAS_RIGHT_ORIGIN):
                    named, pos = _uint(data, pos)
                    if named == 1:
                        pos = _skip_bytes(data, pos)  # a root type's name
                    else:
                        other, pos = _uint(data, pos)
                        at, pos = _uint(data, pos)
                        needs.append((other, at, client, clock))
                    if info & _HAS_PARENT_SUB:
                        pos = _skip_bytes(data, pos)
                length, pos = _content(data, pos, ref, client, clock, out)
            if length:
                if runs and runs[-1][1] == clock:
                    runs[-1][1] = clock + length
                else:
                    runs.append([clock, clock + length])
                clock += length
    clients, pos = _uint(data, pos)
    for _ in range(clients):
        client, pos = _uint(data, pos)
        ranges, pos = _uint(data, pos)
        for _ in range(ranges):
            clock, pos = _uint(data, pos)
            length, pos = _uint(data, pos)
            out.deletes.append((client, clock, length))
            cuts.append((client, clock))
            cuts.append((client, clock + length))
    return out


def _content(data: bytes, pos: int, ref: int, client: int, clock: int, out: _Parsed) -> tuple[int, int]:
    """Read an item's content: (its length in clock units, next position)."""
    if ref == _STRING:
        size, pos = _uint(data, pos)
        raw = data[pos : pos + size]
        if len(raw) != size:
            raise IndexError
        pos += size
        if raw.isascii():
            return size, pos
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError("update string is not UTF-8") from exc
        pairs = _pair_clocks(clock, text)
        if pairs:
            out.pairs.setdefault(client, []).extend(pairs)
        return len(text) + len(pairs), pos
    if ref == _DELETED:
        return _uint(data, pos)
    if ref == _JSON:  # obsolete; read as yrs reads it (n + 1 strings; Yjs reads n)
        count, pos = _uint(data, pos)
        for _ in range(count + 1):
            pos = _skip_bytes(data, pos)
        return count + 1, pos
    if ref == _ANY:
        count, pos = _uint(data, pos)
        for _ in range(count):
            pos = _skip_any(data, pos)
        return count, pos
    if ref in (_BINARY, _EMBED):
        pos = _skip_bytes(data, pos)
    elif ref == _FORMAT:
        pos = _skip_bytes(data, _skip_bytes(data, pos))
    elif ref == _TYPE:
        kind, pos = _uint(data, pos)
        if kind not in _KNOWN_TYPES:
            raise ValueError(f"update holds an unknown type {kind}")
        if kind in (_XML_ELEMENT, _XML_HOOK):
            pos = _skip_bytes(data, pos)
    elif ref == _DOC:
        pos = _skip_any(data, _skip_bytes(data, pos))
    else:
        raise ValueError(f"update holds an unknown content kind {ref}")
    return 1, pos


class UpdateCheck:
    """What one document holds that an update must not cut, and how far its clocks reach.

    Keep it in step with the document: `reset(doc.get_state(), doc.get_update())` after loading,
    peers' updates through `apply(update, apply_update)`, and every other change through
    `learn(event.update)` from the document's observer (which `apply` makes a no-op while it
    runs: it learns from the update it has already read).
    """

    __slots__ = ("_applying", "_off", "_pairs", "_reach")

    def __init__(self) -> None:
        self._pairs: dict[int, set[int]] = {}
        self._reach: dict[int, int] = {}
        self._off = False
        self._applying = False

    def reset(self, state_vector: bytes, update: bytes) -> None:
        """Start over from a document's state vector and its whole state as one update."""
        self._pairs.clear()
        self._reach.clear()
        self._off = False
        count, pos = _uint(state_vector, 0)
        for _ in range(count):
            client, pos = _uint(state_vector, pos)
            self._reach[client], pos = _uint(state_vector, pos)
        self.learn(update)

    def apply(self, update: bytes, apply: Callable[[bytes], object]) -> None:
        """`apply(update)` unless the update cuts a character in two or cannot integrate now.

        Raises:
            ValueError: refused (nothing applied), or whatever `apply` raised.
        """
        parsed = self._check(update)
        if parsed is None:
            apply(update)  # the observer's learn() takes it in
            if not self._off:
                logger.warning("update check skipped: pycrdt applied an update this check cannot read")
            return
        self._applying = True
        try:
            apply(update)
        finally:
            self._applying = False
        self._take(parsed)

    def learn(self, update: bytes) -> None:
        """Take in an update the document has integrated (its text, its deletions).

        pycrdt wrote it, so it always reads; if it ever does not, that is a bug here, and the
        check turns itself off (updates apply unchecked, as without it) rather than fail the
        document's transaction."""
        if self._off or self._applying:
            return
        try:
            parsed = _parse(update)
        except ValueError:
            logger.error("update check off: cannot read the document's own update", exc_info=True)
            self._off = True
            return
        self._take(parsed)

    def _take(self, parsed: _Parsed) -> None:
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

    def _check(self, update: bytes) -> _Parsed | None:
        """The update, read; ValueError if it cuts a character in two or cannot integrate now;
        None if the check is off or the update does not read (pycrdt then says why, in its own
        words)."""
        if self._off:
            return None
        try:
            parsed = _parse(update)
        except ValueError:
            return None
        known, reach = self._reach, {}
        for client, runs in parsed.runs.items():
            end = known.get(client, 0)
            for first, last in runs:
                if first > end:
                    raise ValueError(f"update skips clocks {end}..{first} of client {client}")
                if first < end < last:
                    parsed.cuts.append((client, end))  # the part already known is cut off
                end = max(end, last)
            reach[client] = end
        for client, clock, own_client, own_clock in parsed.needs:
            if clock >= reach.get(client, known.get(client, 0)) or (client == own_client and clock >= own_clock):
                raise ValueError(f"update refers to {client}:{clock}, which the document does not have")
        pairs = parsed.pairs
        for client, clock in parsed.cuts:
            held = self._pairs.get(client)
            own = pairs.get(client)
            if (held and clock in held) or (own and clock in own):
                raise ValueError(
                    f"update splits a UTF-16 surrogate pair at {client}:{clock} "
                    "(half of a character outside the BMP, such as an emoji)"
                )
        return parsed
