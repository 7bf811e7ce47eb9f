"""Splitting a Yjs v1 update into pieces that each fit in a message (spec/protocol.md §3.2, §5.3).

A document can be larger than the largest message a peer takes, so its state (a join's
`sync_step2`, the answer to a `sync_step1`, a large edit) travels as several updates. Cutting
the bytes anywhere would not do: each piece must be a Yjs v1 update of its own that integrates
completely on top of the pieces before it, or the receiver would keep it pending (and a Plait
server refuses a struct that cannot integrate now, §5.3). So:

- Pieces follow causal order. A struct goes after everything it refers to that the update also
  carries: the struct before it in its client's clocks, its origin, its right origin and its
  parent item. Structs are visited depth first in the update's order, so that order is kept
  where it already is causal (an update lists clients by id, not by causality).
- A struct too large for a piece is split inside its content, as Yjs itself splits items
  (`splitItem`): the right part's id is (client, clock + k), its origin (client, clock + k - 1),
  its right origin the original's, and it carries no parent (the receiver takes it from the
  left part). Strings split between two characters (a UTF-16 boundary never inside a surrogate
  pair: the clock counts UTF-16 units), `Any` arrays and legacy JSON between two values.
  Deleted content, GC and skip structs are a few bytes whatever their length and are never
  split; an embed, format, binary, type or sub-document is one indivisible unit.
- The delete set goes last, in the last piece or pieces of its own. Yjs and yrs apply an
  update's delete set after its structs, so applying it after every piece is the same.

Applying the pieces in order to a document gives the document that applying the update gives
(the same content, state vector and delete set), for every update whose structs are causally
ordered, which is every update a Yjs or yrs document produces. The bytes need not be trusted
to be well formed: anything that is not a Yjs v1 update raises SplitError, never anything else.
"""

from __future__ import annotations

import codecs
from bisect import bisect_right
from typing import Final

from ._ycrdt import MAX_CLIENT_ID, MAX_CLOCK, _Bad, _skip_anys, _skip_bytes, _skip_string, _uint

MIN_SPLIT_BYTES: Final = 256
"""The smallest `max_bytes` split_update takes. Every piece then has room for the framing of
a piece (PIECE_OVERHEAD) and a short struct."""
PIECE_OVERHEAD: Final = 64
"""Bytes of a piece that are not the struct or delete range it carries, at most: the piece's
counts, a client section's header, and a split part's re-written info and origins. A struct
header (origins, a parent's name, a map key) plus one indivisible unit (one character, one
array element, one embed...) fits in a piece when it is at most `max_bytes - PIECE_OVERHEAD`."""


FRAME_OVERHEAD: Final = 32
"""Bytes an `update` or `sync_step2` frame adds around its update, with room to spare (at most
17: array header, kind, channel, ref and bin header; spec §4): a piece of
`max_message_bytes - FRAME_OVERHEAD` bytes fits in a message with its frame."""


class SplitError(ValueError):
    """split_update could not split the update: it is not a well-formed Yjs v1 update, or one of
    its indivisible parts does not fit in a piece. `args[0]` says which."""


# Struct info byte (yrs block.rs, Yjs encoding.js): low 5 bits are the content kind.
_HAS_ORIGIN: Final = 0x80
_HAS_RIGHT_ORIGIN: Final = 0x40
_HAS_PARENT_SUB: Final = 0x20
_GC, _DELETED, _JSON, _BINARY, _STRING, _EMBED, _FORMAT, _TYPE, _ANY, _DOC, _SKIP = range(11)
_NAMED_TYPE_REFS: Final = frozenset({3, 5})  # XmlElement and XmlHook carry a name
_MAX_TYPE_REF: Final = 6
_SECTION_HEADER: Final = 5 + 8 + 5  # struct count, client id, first clock: varuints, at most
_PIECE_HEADER: Final = 5 + 5  # client count and delete-set client count, at most
_WINDOW: Final = 1 << 20


def split_update(update: bytes, max_bytes: int) -> list[bytes]:
    """Split a Yjs v1 update into updates of at most `max_bytes` bytes each.

    Applying the pieces in order (each in a transaction of its own, or all at once) to a
    document gives what applying `update` gives; each piece integrates completely on top of
    the document the update was made for plus the pieces before it. An update that fits is
    returned as it is, `[update]`, at no cost. Otherwise the work is linear in its size,
    and memory is the pieces plus small bookkeeping per struct.

    Args:
        update: a Yjs v1 update (pycrdt `get_update`, a transaction's update, a merge).
        max_bytes: the largest piece, in bytes; at least MIN_SPLIT_BYTES.

    Returns:
        The pieces, in the order they must be applied; never empty.

    Raises:
        SplitError: `max_bytes` is below MIN_SPLIT_BYTES; `update` is not a well-formed Yjs v1
            update; or one indivisible part of it (a struct's header with one character, one
            array element or one JSON value; a whole embed, format, binary, type or
            sub-document; a delete range) does not fit in `max_bytes - PIECE_OVERHEAD`.
            Anything else is a bug.
    """
    if len(update) <= max_bytes:
        return [update]
    if max_bytes < MIN_SPLIT_BYTES:
        raise SplitError(f"pieces of {max_bytes} bytes are too small (at least {MIN_SPLIT_BYTES})")
    try:
        structs, deletes = _read(update)
    except (_Bad, IndexError) as exc:
        reason = exc.args[0] if isinstance(exc, _Bad) else "ends early"
        raise SplitError(f"not a Yjs v1 update: {reason}") from None
    packer = _Packer(update, max_bytes)
    for struct in _causal_order(structs):
        packer.add(struct)
    for client, ranges in deletes:
        packer.add_deletes(client, ranges)
    return packer.finish()


# -- reading ---------------------------------------------------------------------------------


class _Struct:
    """One struct of the update: its id and clock length, where its bytes are, and the ids it
    refers to (origin, right origin, parent item)."""

    __slots__ = ("client", "clock", "length", "start", "content", "end", "info", "origin", "right", "parent", "prev")

    def __init__(self, client: int, clock: int, length: int, start: int, content: int, end: int, info: int,
                 origin: tuple[int, int] | None, right: tuple[int, int] | None,
                 parent: tuple[int, int] | None, prev: int | None) -> None:
        self.client, self.clock, self.length = client, clock, length
        self.start, self.content, self.end, self.info = start, content, end, info
        self.origin, self.right, self.parent, self.prev = origin, right, parent, prev


def _read(data: bytes) -> tuple[list[_Struct], list[tuple[int, list[tuple[int, int]]]]]:
    """Every struct and the delete set (client, [(clock, length)]) of a v1 update, as
    yrs update.rs `Update::decode` reads them. Raises _Bad or IndexError."""
    structs: list[_Struct] = []
    seen: set[int] = set()
    clients, pos = _uint(data, 0, MAX_CLOCK)
    for _ in range(clients):
        count, pos = _uint(data, pos, MAX_CLOCK)
        client, pos = _uint(data, pos, MAX_CLIENT_ID)
        if client in seen:
            raise _Bad("a client has two sections")
        seen.add(client)
        clock, pos = _uint(data, pos, MAX_CLOCK)
        prev: int | None = None
        for _ in range(count):
            start = pos
            info = data[pos]
            pos += 1
            kind = info & 0x1F
            origin = right = parent = None
            if kind == _GC or kind == _SKIP:
                if info != kind:
                    raise _Bad(f"struct info {info:#x}")
                content = pos
                length, pos = _uint(data, pos, MAX_CLOCK)
            else:
                if info & _HAS_ORIGIN:
                    origin, pos = _read_id(data, pos)
                if info & _HAS_RIGHT_ORIGIN:
                    right, pos = _read_id(data, pos)
                if not info & (_HAS_ORIGIN | _HAS_RIGHT_ORIGIN):
                    named = data[pos]
                    if named == 1:
                        pos = _skip_string(data, pos + 1)
                    elif named == 0:
                        parent, pos = _read_id(data, pos + 1)
                    else:
                        raise _Bad(f"parent info {named}")
                    if info & _HAS_PARENT_SUB:
                        pos = _skip_string(data, pos)
                content = pos
                length, pos = _read_content(data, pos, kind)
            if clock + length > MAX_CLOCK:
                raise _Bad(f"a client's clock passes {MAX_CLOCK}")
            structs.append(_Struct(client, clock, length, start, content, pos, info, origin, right, parent, prev))
            prev = len(structs) - 1
            clock += length
    deletes: list[tuple[int, list[tuple[int, int]]]] = []
    clients, pos = _uint(data, pos, MAX_CLOCK)
    for _ in range(clients):
        client, pos = _uint(data, pos, MAX_CLIENT_ID)
        count, pos = _uint(data, pos, MAX_CLOCK)
        if count > len(data) - pos:
            raise _Bad(f"claims {count} deleted ranges, more than its bytes can hold")
        ranges = []
        for _ in range(count):
            start, pos = _uint(data, pos, MAX_CLOCK)
            length, pos = _uint(data, pos, MAX_CLOCK)
            ranges.append((start, length))
        deletes.append((client, ranges))
    if pos != len(data):
        raise _Bad("bytes after the end")
    return structs, deletes


def _read_id(data: bytes, pos: int) -> tuple[tuple[int, int], int]:
    client, pos = _uint(data, pos, MAX_CLIENT_ID)
    clock, pos = _uint(data, pos, MAX_CLOCK)
    return (client, clock), pos


def _read_content(data: bytes, pos: int, kind: int) -> tuple[int, int]:
    """yrs block.rs `ItemContent::decode`: (clock length, end)."""
    if kind == _STRING:
        size, pos = _uint(data, pos, MAX_CLOCK)
        end = pos + size
        if end > len(data):
            raise IndexError
        return _utf16_length(data, pos, end, check=True), end
    if kind == _DELETED:
        return _uint(data, pos, MAX_CLOCK)
    if kind == _ANY:
        count, pos = _uint(data, pos, MAX_CLOCK)
        return count, _skip_anys(data, pos, count)
    if kind == _JSON:
        count, pos = _uint(data, pos, MAX_CLOCK)
        if count > len(data) - pos:
            raise _Bad(f"claims {count} values, more than its bytes can hold")
        for _ in range(count):
            pos = _skip_string(data, pos)
        return count, pos
    if kind == _BINARY:
        return 1, _skip_bytes(data, pos)
    if kind == _EMBED:
        return 1, _skip_string(data, pos)
    if kind == _FORMAT:
        return 1, _skip_string(data, _skip_string(data, pos))
    if kind == _TYPE:
        ref = data[pos]
        if ref > _MAX_TYPE_REF:
            raise _Bad(f"type ref {ref}")
        return 1, _skip_string(data, pos + 1) if ref in _NAMED_TYPE_REFS else pos + 1
    if kind == _DOC:
        return 1, _skip_anys(data, _skip_string(data, pos), 1)
    raise _Bad(f"content kind {kind}")


# Byte classes of UTF-8 for counting UTF-16 units: a continuation byte adds nothing, the lead of
# a 4-byte sequence (a character outside the BMP, a surrogate pair) two, any other byte one.
_UTF16_CLASS: Final = bytes(0 if 0x80 <= b < 0xC0 else 2 if b >= 0xF0 else 1 for b in range(256))


def _utf16_length(data: bytes, start: int, end: int, check: bool = False) -> int:
    """The UTF-16 length of the UTF-8 text data[start:end], counted a window at a time (the
    classes are per byte, so windows may cut characters). `check`: raise _Bad if the text is
    not UTF-8 (the cuts rely on its continuation bytes)."""
    units = 0
    decoder = codecs.getincrementaldecoder("utf-8")() if check else None
    for low in range(start, end, _WINDOW):
        chunk = data[low : min(end, low + _WINDOW)]
        if chunk.isascii():
            units += len(chunk)
            continue
        classes = chunk.translate(_UTF16_CLASS)
        units += classes.count(1) + 2 * classes.count(2)
        if decoder is not None:
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError:
                raise _Bad("a string that is not UTF-8") from None
    if decoder is not None:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise _Bad("a string that is not UTF-8") from None
    return units


# -- ordering --------------------------------------------------------------------------------


def _causal_order(structs: list[_Struct]) -> list[_Struct]:
    """The structs in an order where each comes after the structs of the update it refers to,
    depth first from the update's own order. A reference to what the update does not carry is
    the receiver's business. A cycle (no document makes one) is broken where it closes."""
    index: dict[int, tuple[list[int], list[int]]] = {}  # client -> (first clocks, struct numbers)
    for number, struct in enumerate(structs):
        if struct.length:
            clocks, numbers = index.setdefault(struct.client, ([], []))
            clocks.append(struct.clock)
            numbers.append(number)

    def holder(ref: tuple[int, int] | None) -> int | None:
        if ref is None or ref[0] not in index:
            return None
        clocks, numbers = index[ref[0]]
        at = bisect_right(clocks, ref[1]) - 1
        if at < 0:
            return None
        struct = structs[numbers[at]]
        return numbers[at] if ref[1] < struct.clock + struct.length else None

    NEW, OPEN, DONE = 0, 1, 2
    state = [NEW] * len(structs)
    order: list[_Struct] = []
    for root in range(len(structs)):
        if state[root] != NEW:
            continue
        stack = [root]
        state[root] = OPEN
        while stack:
            top = structs[stack[-1]]
            for dep in (top.prev, holder(top.origin), holder(top.right), holder(top.parent)):
                if dep is not None and state[dep] == NEW:
                    state[dep] = OPEN
                    stack.append(dep)
                    break
            else:
                state[stack.pop()] = DONE
                order.append(top)
    return order


# -- writing ---------------------------------------------------------------------------------


def _varuint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class _Section:
    """One client's structs in a piece: consecutive clocks from `clock`."""

    __slots__ = ("clock", "count", "parts")

    def __init__(self, clock: int) -> None:
        self.clock = clock
        self.count = 0
        self.parts: list[bytes | memoryview] = []


class _Packer:
    """Fills pieces in order: whole structs while they fit, a struct too large for an empty
    piece in parts, then the delete set."""

    def __init__(self, data: bytes, max_bytes: int) -> None:
        self.data = data
        self.view = memoryview(data)
        self.max_bytes = max_bytes
        self.pieces: list[bytes] = []
        self.next_clock: dict[int, int] = {}
        """Per client, the clock after the last struct placed: pieces go in clock order."""
        self._new_piece()

    def _new_piece(self) -> None:
        self.sections: dict[int, _Section] = {}
        self.deletes: list[tuple[int, list[bytes]]] = []
        self.size = _PIECE_HEADER

    def _close_piece(self) -> None:
        if not self.sections and not self.deletes:
            return
        out: list[bytes | memoryview] = [_varuint(len(self.sections))]
        for client, section in self.sections.items():
            out += [_varuint(section.count), _varuint(client), _varuint(section.clock)]
            out += section.parts
        out.append(_varuint(len(self.deletes)))
        for client, ranges in self.deletes:
            out += [_varuint(client), _varuint(len(ranges))]
            out += ranges
        self.pieces.append(b"".join(out))
        self._new_piece()

    def _room(self, client: int) -> int:
        """Bytes left in this piece for a struct of `client`."""
        header = 0 if client in self.sections else _SECTION_HEADER
        return self.max_bytes - self.size - header

    def _put(self, struct: _Struct, clock: int, length: int, parts: list[bytes | memoryview]) -> None:
        if self.next_clock.get(struct.client, clock) != clock:
            # Only a cycle of references (which no document makes) reorders a client's structs.
            raise SplitError("not a Yjs v1 update: its structs refer to each other in a cycle")
        self.next_clock[struct.client] = clock + length
        section = self.sections.get(struct.client)
        if section is None:
            section = self.sections[struct.client] = _Section(clock)
            self.size += _SECTION_HEADER
        section.count += 1
        section.parts += parts
        self.size += sum(map(len, parts))

    def add(self, struct: _Struct) -> None:
        if not struct.length:
            return  # yrs drops an item of length 0 as it reads it (Item::new); so do the pieces
        size = struct.end - struct.start
        if size > self._room(struct.client):
            if self.sections and size <= self.max_bytes - _PIECE_HEADER - _SECTION_HEADER:
                self._close_piece()
            else:
                self._add_in_parts(struct)
                return
        self._put(struct, struct.clock, struct.length, [self.view[struct.start : struct.end]])

    def _add_in_parts(self, struct: _Struct) -> None:
        kind = struct.info & 0x1F
        if kind not in (_STRING, _ANY, _JSON):
            self._too_large(f"a struct of {struct.end - struct.start} bytes (content kind {kind})")
        data = struct.content
        count, pos = _uint(self.data, data, MAX_CLOCK)  # bytes (string) or values (any, json)
        end = struct.end
        clock = struct.clock
        first = True
        while pos < end:
            # Header: the original's (with its parent) for the first part; then info, origin
            # (the part before) and the original's right origin, as Yjs writes a split item.
            if first:
                header: bytes | memoryview = self.view[struct.start : struct.content]
            else:
                info = kind | _HAS_ORIGIN | (struct.info & _HAS_RIGHT_ORIGIN)
                header = bytes([info]) + _varuint(struct.client) + _varuint(clock - 1)
                if struct.right is not None:
                    header += _varuint(struct.right[0]) + _varuint(struct.right[1])
            room = self._room(struct.client) - len(header) - 5  # 5: the content's count
            cut, units = self._cut(kind, pos, end, room)
            if cut == pos:
                if not self.sections:
                    self._too_large(f"a struct header of {len(header)} bytes with its first unit")
                self._close_piece()
                continue
            if kind == _STRING:
                count_bytes = _varuint(cut - pos)
            else:
                count_bytes = _varuint(units)
            self._put(struct, clock, units, [header, count_bytes, self.view[pos:cut]])
            clock += units
            pos = cut
            first = False
        if first or clock != struct.clock + struct.length:
            raise SplitError("not a Yjs v1 update: content length does not match")

    def _cut(self, kind: int, pos: int, end: int, room: int) -> tuple[int, int]:
        """The end of the longest run of whole units from `pos` that fits in `room` bytes,
        and its clock length."""
        data = self.data
        if room <= 0:
            return pos, 0
        if kind == _STRING:
            cut = min(end, pos + room)
            while cut > pos and cut < end and data[cut] & 0xC0 == 0x80:
                cut -= 1  # never inside a character, so never inside a surrogate pair
            return cut, _utf16_length(data, pos, cut)
        skip = _skip_string if kind == _JSON else _skip_one_any
        limit = pos + room
        cut, units = pos, 0
        while cut < end:
            nxt = skip(data, cut)
            if nxt > limit:
                break
            cut, units = nxt, units + 1
        return cut, units

    def add_deletes(self, client: int, ranges: list[tuple[int, int]]) -> None:
        header = 8 + 5  # client id and range count, at most
        pending: list[bytes] = []
        for clock, length in ranges:
            entry = _varuint(clock) + _varuint(length)
            need = len(entry) + (0 if pending else header)
            if self.size + need > self.max_bytes:
                if pending:
                    self.deletes.append((client, pending))
                    pending = []
                self._close_piece()
                need = len(entry) + header
            pending.append(entry)
            self.size += need
        if pending:
            self.deletes.append((client, pending))

    def finish(self) -> list[bytes]:
        self._close_piece()
        return self.pieces

    def _too_large(self, what: str) -> None:
        raise SplitError(f"{what} does not fit in pieces of {self.max_bytes} bytes")


def _skip_one_any(data: bytes, pos: int) -> int:
    return _skip_anys(data, pos, 1)
