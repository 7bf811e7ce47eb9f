"""Splitting a Yjs v1 update into pieces that each fit in a message (spec/protocol.md §3.2, §5.3).

A document can be larger than the largest message a peer takes, so its state (a join's
`sync_step2`, the answer to a `sync_step1`, a large edit) travels as several updates. Cutting
the bytes anywhere would not do: each piece must be a Yjs v1 update of its own that integrates
completely on top of the pieces before it, or the receiver would keep it pending (and a Plait
server refuses a struct that cannot integrate now, §5.3). So:

- Pieces follow causal order. A struct goes after everything it refers to that the update also
  carries: the struct before it in its client's clocks, its origin, its right origin and its
  parent item. An update lists each client's structs in clock order, one section per client,
  but sections by client id, not by causality; so the sections are merged: each runs as far as
  its references allow, then waits until the section it refers to has gone far enough. The
  update's own order is kept wherever it is already causal.
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
import heapq
from array import array
from bisect import bisect_right
from collections import deque
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


JSON_FRAME_OVERHEAD: Final = 128
"""Bytes an `update` or `sync_step2` frame's JSON form (spec §3.5) adds around its update's
base64, padding included, with room to spare."""


def piece_bytes(max_message_bytes: int) -> int:
    """The most update bytes one `update` or `sync_step2` frame may carry so that it fits in a
    message in either form (spec §3.2, §3.5): in JSON the update is base64, a third longer."""
    return (max_message_bytes - JSON_FRAME_OVERHEAD) * 3 // 4


class SplitError(ValueError):
    """split_update could not split the update: it is not a well-formed Yjs v1 update
    (`malformed`), or one of its indivisible parts does not fit in a piece. `args[0]` says
    which."""

    def __init__(self, message: str, malformed: bool = False) -> None:
        super().__init__(message)
        self.malformed = malformed


# Struct info byte (yrs block.rs, Yjs encoding.js): low 5 bits are the content kind.
_HAS_ORIGIN: Final = 0x80
_HAS_RIGHT_ORIGIN: Final = 0x40
_HAS_PARENT_SUB: Final = 0x20
_GC, _DELETED, _JSON, _BINARY, _STRING, _EMBED, _FORMAT, _TYPE, _ANY, _DOC, _SKIP = range(11)
_INDIVISIBLE: Final = {
    _BINARY: "one binary value",
    _EMBED: "one embed in a text",
    _FORMAT: "one text format attribute",
    _TYPE: "one shared type's header",
    _DOC: "one sub-document",
}
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
    returned as it is, `[update]`, at no cost. Otherwise time is linear in the update's size
    (one pass over its structs; whole runs of them are copied at once), and memory is the
    pieces plus 16 bytes per struct and 24 per reference between clients.

    Args:
        update: a Yjs v1 update (pycrdt `get_update`, a transaction's update, a merge).
        max_bytes: the largest piece, in bytes; at least MIN_SPLIT_BYTES.

    Returns:
        The pieces, in the order they must be applied; never empty.

    Raises:
        SplitError: `max_bytes` is below MIN_SPLIT_BYTES; `update` is not a well-formed Yjs v1
            update (its structs referring to each other in a cycle included: no document
            makes one, and no order integrates it); or one indivisible part of it (a struct's
            header with one character, one array element or one JSON value; a whole embed,
            format, binary, type or sub-document) does not fit in `max_bytes -
            PIECE_OVERHEAD`. Anything else is a bug.
    """
    if len(update) <= max_bytes:
        return [update]
    if max_bytes < MIN_SPLIT_BYTES:
        raise SplitError(f"pieces of {max_bytes} bytes are too small (at least {MIN_SPLIT_BYTES})")
    try:
        sections, deletes = _read(update)
        packer = _Packer(update, sections, max_bytes)
        _merge(sections, packer)
    except (_Bad, IndexError) as exc:
        reason = exc.args[0] if isinstance(exc, _Bad) else "ends early"
        raise SplitError(f"not a Yjs v1 update: {reason}", malformed=True) from None
    for client, ranges in deletes:
        packer.add_deletes(client, ranges)
    return packer.finish()


# -- reading ---------------------------------------------------------------------------------


class _Section:
    """One client's structs in the update: where each ends and the clock after it, and the
    references to other clients' structs that must be sent before one of them can be."""

    __slots__ = ("client", "first_clock", "start", "ends", "clocks", "refs", "deps")

    def __init__(self, client: int, first_clock: int, start: int) -> None:
        self.client = client
        self.first_clock = first_clock
        self.start = start
        self.ends = array("Q")
        """Byte position after each struct."""
        self.clocks = array("Q")
        """Clock after each struct."""
        self.refs = array("Q")
        """(struct number, client, clock) triples, as read."""
        self.deps = array("Q")
        """(struct number, section number, clock) triples: struct k waits until that section
        has sent its struct holding `clock`. Only what the update carries and the receiver
        cannot have already."""

    def end_clock(self) -> int:
        return self.clocks[-1] if self.clocks else self.first_clock

    def byte_start(self, k: int) -> int:
        return self.ends[k - 1] if k else self.start

    def clock_at(self, k: int) -> int:
        return self.clocks[k - 1] if k else self.first_clock


def _read(data: bytes) -> tuple[list[_Section], list[tuple[int, list[tuple[int, int]]]]]:
    """Every section and the delete set (client, [(clock, length)]) of a v1 update, as yrs
    update.rs `Update::decode` reads them. Raises _Bad or IndexError."""
    uint = _uint
    sections: list[_Section] = []
    index: dict[int, int] = {}
    count, pos = uint(data, 0, MAX_CLOCK)
    for _ in range(count):
        structs, pos = uint(data, pos, MAX_CLOCK)
        client, pos = uint(data, pos, MAX_CLIENT_ID)
        if client in index:
            raise _Bad("a client has two sections")
        clock, pos = uint(data, pos, MAX_CLOCK)
        if structs > len(data) - pos:
            raise _Bad(f"claims {structs} structs, more than its bytes can hold")
        index[client] = len(sections)
        section = _Section(client, clock, pos)
        sections.append(section)
        ends, clocks, refs = section.ends, section.clocks, section.refs
        for k in range(structs):
            info = data[pos]
            pos += 1
            kind = info & 0x1F
            if kind == _GC or kind == _SKIP:
                if info != kind:
                    raise _Bad(f"struct info {info:#x}")
                length, pos = uint(data, pos, MAX_CLOCK)
            else:
                if info & _HAS_ORIGIN:
                    ref_client, pos = uint(data, pos, MAX_CLIENT_ID)
                    ref_clock, pos = uint(data, pos, MAX_CLOCK)
                    if ref_client != client:
                        refs.extend((k, ref_client, ref_clock))
                    elif ref_clock >= clock:
                        raise _Bad("its structs refer to each other in a cycle")
                if info & _HAS_RIGHT_ORIGIN:
                    ref_client, pos = uint(data, pos, MAX_CLIENT_ID)
                    ref_clock, pos = uint(data, pos, MAX_CLOCK)
                    if ref_client != client:
                        refs.extend((k, ref_client, ref_clock))
                    elif ref_clock >= clock:
                        raise _Bad("its structs refer to each other in a cycle")
                if not info & (_HAS_ORIGIN | _HAS_RIGHT_ORIGIN):
                    named = data[pos]
                    if named == 1:
                        pos = _skip_string(data, pos + 1)
                    elif named == 0:
                        ref_client, pos = uint(data, pos + 1, MAX_CLIENT_ID)
                        ref_clock, pos = uint(data, pos, MAX_CLOCK)
                        if ref_client != client:
                            refs.extend((k, ref_client, ref_clock))
                        elif ref_clock >= clock:
                            raise _Bad("its structs refer to each other in a cycle")
                    else:
                        raise _Bad(f"parent info {named}")
                    if info & _HAS_PARENT_SUB:
                        pos = _skip_string(data, pos)
                if kind == _STRING:  # the common case, inline
                    size = data[pos]
                    if size < 0x80:
                        pos += 1
                    else:
                        size, pos = uint(data, pos, MAX_CLOCK)
                    end = pos + size
                    if end > len(data):
                        raise IndexError
                    chunk = data[pos:end] if size < _WINDOW else None
                    length = size if chunk is not None and chunk.isascii() else _utf16_length(data, pos, end, check=True)
                    pos = end
                else:
                    length, pos = _read_content(data, pos, kind)
            clock += length
            if clock > MAX_CLOCK:
                raise _Bad(f"a client's clock passes {MAX_CLOCK}")
            ends.append(pos)
            clocks.append(clock)
    deletes: list[tuple[int, list[tuple[int, int]]]] = []
    count, pos = uint(data, pos, MAX_CLOCK)
    for _ in range(count):
        client, pos = uint(data, pos, MAX_CLIENT_ID)
        ranges_count, pos = uint(data, pos, MAX_CLOCK)
        if ranges_count > len(data) - pos:
            raise _Bad(f"claims {ranges_count} deleted ranges, more than its bytes can hold")
        ranges = []
        for _ in range(ranges_count):
            start, pos = uint(data, pos, MAX_CLOCK)
            length, pos = uint(data, pos, MAX_CLOCK)
            ranges.append((start, length))
        deletes.append((client, ranges))
    if pos != len(data):
        raise _Bad("bytes after the end")
    _resolve(sections, index)
    return sections, deletes


def _resolve(sections: list[_Section], index: dict[int, int]) -> None:
    """Turn references into dependencies: keep those to a struct the update carries (a
    reference below a section's first clock is to what the receiver has; one past its end,
    to what the update does not bring: the receiver's business either way)."""
    for section in sections:
        refs, deps = section.refs, section.deps
        for i in range(0, len(refs), 3):
            j = index.get(refs[i + 1])
            if j is None:
                continue
            other, clock = sections[j], refs[i + 2]
            if other.first_clock <= clock < other.end_clock():
                deps.extend((refs[i], j, clock))
        section.refs = array("Q")


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


def _merge(sections: list[_Section], packer: _Packer) -> None:
    """Hand every section's structs to the packer in causal order. A section runs until its
    next struct waits for another section to reach a clock; it is woken when that one has."""
    count = len(sections)
    cursor = [0] * count  # next struct to send, per section
    next_dep = [0] * count  # next dependency to look at, per section
    sent_clock = [s.first_clock for s in sections]  # everything below is sent (or not ours)
    waiting: list[list[tuple[int, int]]] = [[] for _ in range(count)]  # heaps of (clock, section)
    runnable = deque(range(count))
    finished = 0
    while runnable:
        s = runnable.popleft()
        section = sections[s]
        deps, d, k = section.deps, next_dep[s], cursor[s]
        limit = len(section.ends)
        while d < len(deps):
            struct, j, clock = deps[d], deps[d + 1], deps[d + 2]
            if sent_clock[j] > clock:
                d += 3
                continue
            limit = struct
            heapq.heappush(waiting[j], (clock, s))
            break
        next_dep[s] = d
        if limit > k:
            packer.add_run(s, k, limit)
            cursor[s] = limit
            sent_clock[s] = section.clocks[limit - 1]
            woken = waiting[s]
            while woken and woken[0][0] < sent_clock[s]:
                runnable.append(heapq.heappop(woken)[1])
        if limit == len(section.ends):
            finished += 1
    if finished != count:
        raise _Bad("its structs refer to each other in a cycle")


# -- writing ---------------------------------------------------------------------------------


def _varuint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class _Part:
    """One client's structs in a piece: consecutive clocks from `clock`."""

    __slots__ = ("clock", "count", "fragments", "span_end")

    def __init__(self, clock: int) -> None:
        self.clock = clock
        self.count = 0
        self.fragments: list[bytes | memoryview | list[int]] = []
        """Bytes, or [start, end] of a run of the update's own bytes."""
        self.span_end = -1


class _Packer:
    """Fills pieces in order: runs of whole structs while they fit, a struct too large for an
    empty piece in parts, then the delete set."""

    def __init__(self, data: bytes, sections: list[_Section], max_bytes: int) -> None:
        self.data = data
        self.view = memoryview(data)
        self.sections = sections
        self.max_bytes = max_bytes
        self.pieces: list[bytes] = []
        self._new_piece()

    def _new_piece(self) -> None:
        self.parts: dict[int, _Part] = {}  # section number -> its structs in this piece
        self.deletes: list[tuple[int, list[bytes]]] = []
        self.size = _PIECE_HEADER

    def _close_piece(self) -> None:
        if not self.parts and not self.deletes:
            return
        view = self.view
        out: list[bytes | memoryview] = [_varuint(len(self.parts))]
        for s, part in self.parts.items():
            out += [_varuint(part.count), _varuint(self.sections[s].client), _varuint(part.clock)]
            out += [view[f[0] : f[1]] if isinstance(f, list) else f for f in part.fragments]
        out.append(_varuint(len(self.deletes)))
        for client, ranges in self.deletes:
            out += [_varuint(client), _varuint(len(ranges))]
            out += ranges
        self.pieces.append(b"".join(out))
        self._new_piece()

    def _room(self, s: int) -> int:
        """Bytes left in this piece for structs of section `s`."""
        return self.max_bytes - self.size - (0 if s in self.parts else _SECTION_HEADER)

    def _part(self, s: int, clock: int) -> _Part:
        part = self.parts.get(s)
        if part is None:
            part = self.parts[s] = _Part(clock)
            self.size += _SECTION_HEADER
        return part

    def add_run(self, s: int, first: int, end: int) -> None:
        """Structs first..end-1 of section `s`, whole where they fit."""
        section = self.sections[s]
        ends = section.ends
        k = first
        while k < end:
            start = section.byte_start(k)
            fit = bisect_right(ends, start + self._room(s), k, end)
            if fit == k:  # struct k does not fit in what is left
                if self.parts and ends[k] - start <= self.max_bytes - _PIECE_HEADER - _SECTION_HEADER:
                    self._close_piece()
                else:
                    self._add_in_parts(s, k)
                    k += 1
                continue
            if section.clocks[fit - 1] != section.clock_at(k):  # all of length 0: yrs drops them
                part = self._part(s, section.clock_at(k))
                stop = ends[fit - 1]
                if part.span_end == start:
                    span = part.fragments[-1]
                    assert isinstance(span, list)
                    span[1] = stop
                else:
                    part.fragments.append([start, stop])
                part.span_end = stop
                part.count += fit - k
                self.size += stop - start
            k = fit
            if k < end:
                self._close_piece()  # full

    def _add_in_parts(self, s: int, k: int) -> None:
        """Struct k of section `s` in parts, as Yjs splits an item (see the module's doc)."""
        section, data = self.sections[s], self.data
        start, end = section.byte_start(k), section.ends[k]
        clock, last_clock = section.clock_at(k), section.clocks[k]
        info = data[start]
        kind = info & 0x1F
        if kind not in (_STRING, _ANY, _JSON):
            self._too_large(f"{_INDIVISIBLE.get(kind, f'a value of content kind {kind}')} of {end - start} bytes")
        pos = start + 1
        right = b""
        if info & _HAS_ORIGIN:
            pos = _skip_id(data, pos)
        if info & _HAS_RIGHT_ORIGIN:
            right_start = pos
            pos = _skip_id(data, pos)
            right = data[right_start:pos]
        if not info & (_HAS_ORIGIN | _HAS_RIGHT_ORIGIN):
            pos = _skip_string(data, pos + 1) if data[pos] == 1 else _skip_id(data, pos + 1)
            if info & _HAS_PARENT_SUB:
                pos = _skip_string(data, pos)
        content = pos
        _, pos = _uint(data, content, MAX_CLOCK)  # bytes (string) or values (any, json)
        first = True
        while pos < end:
            # Header: the original's (with its parent) for the first part; then info, origin
            # (the part before) and the original's right origin, as Yjs writes a split item.
            if first:
                header: bytes | memoryview = self.view[start:content]
            else:
                header = bytes([kind | _HAS_ORIGIN | (info & _HAS_RIGHT_ORIGIN)])
                header += _varuint(section.client) + _varuint(clock - 1) + right
            room = self._room(s) - len(header) - 5  # 5: the content's count
            cut, units = self._cut(kind, pos, end, room)
            if cut == pos:
                if not self.parts:
                    unit = (_skip_string if kind == _JSON else _skip_one_any)(data, pos) - pos if kind != _STRING else 4
                    self._too_large(f"one value in a map or array, of {unit} bytes with its item's {len(header)}-byte header,")
                self._close_piece()
                continue
            count = cut - pos if kind == _STRING else units
            part = self._part(s, clock)
            part.fragments += [header, _varuint(count), self.view[pos:cut]]
            part.span_end = -1
            part.count += 1
            self.size += len(header) + len(part.fragments[-2]) + cut - pos
            clock += units
            pos = cut
            first = False
        if first or clock != last_clock:
            raise _Bad("a struct's content does not match its length")

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
        raise SplitError(
            f"{what} cannot be split and does not fit in a piece of {self.max_bytes} bytes; "
            "store it as several smaller values"
        )


def _skip_id(data: bytes, pos: int) -> int:
    _, pos = _uint(data, pos, MAX_CLIENT_ID)
    return _uint(data, pos, MAX_CLOCK)[1]


def _skip_one_any(data: bytes, pos: int) -> int:
    return _skip_anys(data, pos, 1)
