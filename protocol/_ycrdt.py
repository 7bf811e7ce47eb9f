"""Checks for untrusted Yjs v1 CRDT bytes before pycrdt sees them (spec/protocol.md §3.4, §5.3).

pycrdt (yrs underneath) sizes allocations from counts it reads off the wire before the entries
behind them arrive, and recurses without a limit on nested values: nine bytes of state vector
take a server to 1 GiB and two seconds, 100 KB of nested `Any` arrays overflow its stack and
kill the process. spec/notes/crdt-input.md has the list, with the yrs functions and
measurements. The two functions here walk the bytes the way yrs's v1 decoder does (lib0
varints, structs, contents, the delete set) and refuse what is not well formed, so that:

- Every count in bytes that pass is backed by that many entries, each at least one byte: no
  reservation pycrdt makes while decoding exceeds a small constant times `len(data)`.
- No `Any` value nests deeper than `MAX_ANY_DEPTH`, far below the depth that overflows yrs's
  recursive decoder (20,000 levels pass, 50,000 kill the process, on an 8 MiB stack).
- Client ids are below 2**53 (yrs keeps 53 bits) and every clock range fits in yrs's u32
  clocks (a range that wraps corrupts its block lists and makes it panic).
- Strings are UTF-8; nothing follows the end of the value.

The walk itself costs time linear in `len(data)` and allocates at most one decoded string at
a time. It is stateless: what depends on the document (missing dependencies kept pending,
nested types built over many updates) is out of its reach; see the note.
"""

from __future__ import annotations

import re
from typing import Final

from ._errors import ErrorCode, RemoteProtocolError

MAX_CLIENT_ID: Final = 2**53 - 1
"""yrs keeps client ids in 53 bits (`ClientID::new`); above that, ids silently collide."""
MAX_CLOCK: Final = 2**32 - 1
"""yrs clocks are u32; a struct or deleted range must end at or below this."""
MAX_ANY_DEPTH: Final = 128
"""Deepest nesting of `Any` arrays and maps; serde_json's default limit for the JSON inside
embeds and formats is the same."""

_MAX_VARINT_BYTES: Final = 10  # 70 bits: enough for any u64; yrs gives up after 11 bytes

# Struct info byte (yrs block.rs): low 5 bits are the content kind, high bits say what follows.
_HAS_ORIGIN: Final = 0x80
_HAS_RIGHT_ORIGIN: Final = 0x40
_HAS_PARENT_SUB: Final = 0x20
_GC: Final = 0
_SKIP: Final = 10
_DELETED, _JSON, _BINARY, _STRING, _EMBED, _FORMAT, _TYPE, _ANY, _DOC = range(1, 10)
# Type refs yrs and Yjs both read the same way. XmlElement (3) carries a name. Not accepted:
# XmlHook (5: Yjs writes a name yrs does not read), weak links (7: not built into pycrdt),
# yrs's SubDoc (9) and Undefined (15) type refs, which no producer writes as content.
_TYPE_REFS: Final = frozenset({0, 1, 2, 4, 6})
_XML_ELEMENT: Final = 3


class _Bad(Exception):
    """Internal: the bytes are not what yrs would accept; `args[0]` says why."""


def check_state_vector(data: bytes) -> None:
    """Accept `data` only if it is a well-formed Yjs v1 state vector.

    A state vector is `varuint n` then `n` pairs `varuint client, varuint clock`
    (client < 2**53, clock < 2**32), and nothing after. Bytes that pass cost pycrdt's
    `Doc.get_update(data)` memory and time proportional to `len(data)` for decoding.

    Args:
        data: what a peer sent as a state vector (`sync_step1`, `join.state_vector`,
            y-websocket sync step 1).

    Raises:
        RemoteProtocolError: with code INVALID_UPDATE, saying what is wrong.
            Anything else is a bug.
    """
    try:
        count, pos = _uint(data, 0, MAX_CLOCK)
        if count > (len(data) - pos) // 2:
            raise _Bad(f"claims {count} entries, more than its bytes can hold")
        for _ in range(count):
            pos = _skip_id(data, pos)
        if pos != len(data):
            raise _Bad("bytes after the end")
    except (_Bad, IndexError) as exc:
        raise _refusal("state vector", exc) from None


def check_update(data: bytes) -> None:
    """Accept `data` only if it is a well-formed Yjs v1 update that yrs decodes as Yjs does.

    Walks every struct (GC, skip, items with origins, parent and content: deleted, binary,
    string, embed, format, type, any, doc) and the delete set. Refused, besides truncated or
    malformed bytes: client ids >= 2**53, clock ranges past 2**32 - 1, a client's structs in
    two sections, delete ranges out of order, `Any` nested deeper than MAX_ANY_DEPTH, legacy
    JSON content (yrs reads one more string than Yjs writes), and type refs other than
    array, map, text, XML element, fragment and text. Bytes that pass cost pycrdt's decoder
    (in `apply_update`, `merge_updates`) memory and time proportional to `len(data)`.

    Args:
        data: what a peer sent as a document update (`update`, `sync_step2`, y-websocket
            sync step 2 and update).

    Raises:
        RemoteProtocolError: with code INVALID_UPDATE, saying what is wrong.
            Anything else is a bug.
    """
    try:
        if _walk_update(data) != len(data):
            raise _Bad("bytes after the end")
    except (_Bad, IndexError) as exc:
        raise _refusal("update", exc) from None


def _refusal(what: str, exc: Exception) -> RemoteProtocolError:
    reason = exc.args[0] if isinstance(exc, _Bad) else "ends early"
    return RemoteProtocolError(f"invalid {what}: {reason}", ErrorCode.INVALID_UPDATE)


# The walkers below read `data[pos]` without bounds checks: reading past the end raises
# IndexError, which the entry points turn into "ends early". Each returns the new position.
# Every loop iteration consumes at least one byte, so the walk is linear in len(data) whatever
# the counts claim. The code is written for speed (it runs on every update): common short forms
# take a fast path, anything else the exact one.


def _uint(data: bytes, pos: int, limit: int, minimal: bool = False) -> tuple[int, int]:
    """lib0 varuint: 7 bits a byte, low bits first, high bit set = more follows. `limit` is at
    least 2**21 (up to three bytes are always in range). `minimal`: refuse a last byte of 0
    after others (lib0 and yrs never write one)."""
    byte = data[pos]
    if byte < 0x80:
        return byte, pos + 1
    second = data[pos + 1]
    if second < 0x80:
        if minimal and not second:
            raise _Bad("a varint with a needless last byte")
        return byte & 0x7F | second << 7, pos + 2
    third = data[pos + 2]
    if third < 0x80:
        if minimal and not third:
            raise _Bad("a varint with a needless last byte")
        return byte & 0x7F | (second & 0x7F) << 7 | third << 14, pos + 3
    value = byte & 0x7F | (second & 0x7F) << 7 | (third & 0x7F) << 14
    shift = 21
    pos += 3
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
        if shift >= 7 * _MAX_VARINT_BYTES:
            raise _Bad("a varint longer than 10 bytes")
    if value > limit:
        raise _Bad(f"{value} is out of range (at most {limit})")
    if minimal and byte == 0:
        raise _Bad("a varint with a needless last byte")
    return value, pos


# An ID (client, clock) in its usual form: a client id of at most 7 bytes, or of 8 whose last
# is below 0x10 (either way < 2**53), then a clock of at most 4 bytes (< 2**28).
_ID_PATTERN: Final = rb"(?:[\x80-\xff]{0,6}[\x00-\x7f]|[\x80-\xff]{7}[\x00-\x0f])[\x80-\xff]{0,3}[\x00-\x7f]"
_SHORT_ID: Final = re.compile(_ID_PATTERN).match
_SHORT_IDS: Final = re.compile(_ID_PATTERN * 2).match
_SHORT_CLIENT: Final = re.compile(rb"[\x00-\x7f]|[\x80-\xff]{1,6}[\x01-\x7f]|[\x80-\xff]{7}[\x01-\x0f]").match
"""A client id in minimal form below 2**49, or of 8 bytes below 2**53."""


def _skip_id(data: bytes, pos: int) -> int:
    short = _SHORT_ID(data, pos)
    return short.end() if short is not None else _long_id(data, pos)


def _long_id(data: bytes, pos: int) -> int:
    _, pos = _uint(data, pos, MAX_CLIENT_ID)
    _, pos = _uint(data, pos, MAX_CLOCK)
    return pos


def _skip_int(data: bytes, pos: int) -> int:
    """lib0 varint (sign in the first byte), at most 10 bytes; yrs takes any value."""
    for n in range(_MAX_VARINT_BYTES):
        if data[pos + n] < 0x80:
            return pos + n + 1
    raise _Bad("a varint longer than 10 bytes")


def _skip_bytes(data: bytes, pos: int) -> int:
    length, pos = _uint(data, pos, MAX_CLOCK)
    pos += length
    if pos > len(data):
        raise IndexError
    return pos


def _skip_string(data: bytes, pos: int) -> int:
    length = data[pos]
    if length < 0x80:
        pos += 1
    else:
        length, pos = _uint(data, pos, MAX_CLOCK)
    end = pos + length
    if end > len(data):
        raise IndexError
    if length > 1:
        if not data[pos:end].isascii():
            _check_utf8(data[pos:end])
    elif length and data[pos] >= 0x80:
        raise _Bad("a string that is not UTF-8")
    return end


def _check_utf8(chunk: bytes) -> None:
    try:
        chunk.decode("utf-8")
    except UnicodeDecodeError:
        raise _Bad("a string that is not UTF-8") from None


_ANY_ATOMS: Final = frozenset({127, 126, 121, 120})  # undefined, null, false, true
_ANY_FIXED: Final = {124: 4, 123: 8, 122: 8}  # float32, float64, bigint64


def _skip_anys(data: bytes, pos: int, count: int) -> int:
    """Skip `count` lib0 `Any` values (yrs any.rs `Any::decode`: a tag byte 116..127, then the
    value), iteratively: `enclosing` holds what is left of each enclosing array or map. Short
    ASCII strings (map keys, most string values) are skipped inline."""
    size, atoms, fixed = len(data), _ANY_ATOMS, _ANY_FIXED
    enclosing: list[tuple[int, bool]] = []
    in_map = False
    while True:
        if not count:
            if not enclosing:
                return pos
            count, in_map = enclosing.pop()
            continue
        count -= 1
        if in_map:
            length = data[pos]
            end = pos + 1 + length
            if length < 0x80 and end <= size and data[pos + 1 : end].isascii():
                pos = end
            else:
                pos = _skip_string(data, pos)
        tag = data[pos]
        pos += 1
        if tag in atoms:
            continue
        if tag == 119:
            length = data[pos]
            end = pos + 1 + length
            if length < 0x80 and end <= size and data[pos + 1 : end].isascii():
                pos = end
            else:
                pos = _skip_string(data, pos)
        elif tag in fixed:
            pos += fixed[tag]
            if pos > size:
                raise IndexError
        elif tag == 125:
            pos = _skip_int(data, pos)
        elif tag == 117 or tag == 118:
            if len(enclosing) >= MAX_ANY_DEPTH:
                raise _Bad(f"a value nested deeper than {MAX_ANY_DEPTH}")
            enclosing.append((count, in_map))
            count, pos = _uint(data, pos, MAX_CLOCK)
            in_map = tag == 118
        elif tag == 116:
            pos = _skip_bytes(data, pos)
        else:
            raise _Bad(f"unknown value tag {tag}")


def _walk_update(data: bytes) -> int:
    """yrs update.rs `Update::decode` then id_set.rs `IdSet::decode`, v1."""
    uint, skip_string, short_id, short_ids, short_client = _uint, _skip_string, _SHORT_ID, _SHORT_IDS, _SHORT_CLIENT
    size = len(data)
    clients, pos = uint(data, 0, MAX_CLOCK)
    seen: set[bytes] = set()
    for _ in range(clients):
        structs, pos = uint(data, pos, MAX_CLOCK)
        # The client id's bytes name it: both short and long forms are minimal, so one id has
        # one spelling.
        match = short_client(data, pos)
        end = match.end() if match is not None else _uint(data, pos, MAX_CLIENT_ID, minimal=True)[1]
        client = data[pos:end]
        if client in seen:
            raise _Bad("a client has two sections")
        seen.add(client)
        clock, pos = uint(data, end, MAX_CLOCK)
        for _ in range(structs):
            info = data[pos]
            pos += 1
            kind = info & 0x1F
            if kind == _GC or kind == _SKIP:
                if info != kind:
                    raise _Bad(f"struct info {info:#x}")
                length, pos = uint(data, pos, MAX_CLOCK)
            else:
                origins = info & (_HAS_ORIGIN | _HAS_RIGHT_ORIGIN)
                if origins == _HAS_ORIGIN | _HAS_RIGHT_ORIGIN:  # inserted between two items
                    match = short_ids(data, pos)
                    pos = match.end() if match is not None else _long_id(data, _long_id(data, pos))
                elif origins:
                    match = short_id(data, pos)
                    pos = match.end() if match is not None else _long_id(data, pos)
                else:  # no neighbour to copy the parent from: it is written out
                    named = data[pos]  # 1: a root type's name follows; 0: an item's id
                    if named > 1:
                        raise _Bad(f"parent info {named}")
                    pos = skip_string(data, pos + 1) if named else _skip_id(data, pos + 1)
                    if info & _HAS_PARENT_SUB:  # a map key, usually short ASCII: inline
                        length = data[pos]
                        end = pos + 1 + length
                        if length < 0x80 and end <= size and data[pos + 1 : end].isascii():
                            pos = end
                        else:
                            pos = skip_string(data, pos)
                if kind == _STRING:  # the most common content, inlined
                    length = data[pos]
                    if length < 0x80:
                        pos += 1
                    else:
                        length, pos = uint(data, pos, MAX_CLOCK)
                    end = pos + length
                    if end > size:
                        raise IndexError
                    if length > 1:
                        if not data[pos:end].isascii():
                            _check_utf8(data[pos:end])
                    elif length and data[pos] >= 0x80:
                        raise _Bad("a string that is not UTF-8")
                    pos = end
                    # The clock length is the UTF-16 length, which the UTF-8 length bounds
                    # from above: exact enough for the overflow check, and free.
                elif kind == _DELETED:
                    length, pos = uint(data, pos, MAX_CLOCK)
                else:
                    length, pos = _walk_content(data, pos, kind)
            # yrs drops items of length 0 without advancing the clock (Item::new -> None).
            clock += length
            if clock > MAX_CLOCK:
                raise _Bad(f"a client's clock passes {MAX_CLOCK}")
    # Delete set: clients, each with ranges (clock, length), sorted and disjoint as yrs assumes
    # (ids.rs `IdRanges::from_raw`).
    clients, pos = uint(data, pos, MAX_CLOCK)
    for _ in range(clients):
        _, pos = uint(data, pos, MAX_CLIENT_ID)
        ranges, pos = uint(data, pos, MAX_CLOCK)
        low = 0
        for _ in range(ranges):
            start, pos = uint(data, pos, MAX_CLOCK)
            length, pos = uint(data, pos, MAX_CLOCK)
            if start < low:
                raise _Bad("deleted ranges out of order")
            low = start + length
            if low > MAX_CLOCK:
                raise _Bad(f"a deleted range passes {MAX_CLOCK}")
    return pos


def _walk_content(data: bytes, pos: int, kind: int) -> tuple[int, int]:
    """yrs block.rs `ItemContent::decode` but strings: returns (clock length, position)."""
    if kind == _DELETED:
        return _uint(data, pos, MAX_CLOCK)
    if kind == _ANY:
        count, pos = _uint(data, pos, MAX_CLOCK)
        return count, _skip_anys(data, pos, count)
    if kind == _TYPE:
        ref = data[pos]
        pos += 1
        if ref == _XML_ELEMENT:
            return 1, _skip_string(data, pos)
        if ref not in _TYPE_REFS:
            raise _Bad(f"type ref {ref}")
        return 1, pos
    if kind == _FORMAT:
        return 1, _skip_string(data, _skip_string(data, pos))
    if kind == _EMBED:
        return 1, _skip_string(data, pos)
    if kind == _BINARY:
        return 1, _skip_bytes(data, pos)
    if kind == _DOC:
        return 1, _skip_anys(data, _skip_string(data, pos), 1)
    if kind == _JSON:
        raise _Bad("legacy JSON content")
    raise _Bad(f"content kind {kind}")
