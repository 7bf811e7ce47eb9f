"""The one reader of Yjs v1 update and state-vector bytes (spec/protocol.md §3.4, §5.3).

Untrusted bytes: pycrdt (yrs underneath) sizes allocations from counts it reads off the wire
before the entries behind them arrive, and recurses without a limit on nested values: nine bytes
of state vector take a server to 1 GiB and two seconds, 100 KB of nested `Any` arrays overflow
its stack and kill the process. spec/notes/crdt-input.md has the list, with the yrs functions
and measurements. `read_update` and `read_state_vector` walk the bytes the way yrs's v1 decoder
does (lib0 varints, structs, contents, the delete set), refuse what is not well formed, and
return what the engine's document checks need, so that for bytes that pass:

- Every count is backed by that many entries, each at least one byte: no reservation pycrdt
  makes while decoding exceeds a small constant times `len(data)`.
- No `Any` value nests deeper than `MAX_ANY_DEPTH`, far below the depth that overflows yrs's
  recursive decoder (20,000 levels pass, 50,000 kill the process, on an 8 MiB stack).
- Client ids are below 2**53 (yrs keeps 53 bits) and every clock range fits in yrs's u32
  clocks (a range that wraps corrupts its block lists and makes it panic).
- Strings are UTF-8; nothing follows the end of the value.

The walk costs time linear in `len(data)`; besides its result (a tuple per struct, a triple per
deleted range) it holds at most one decoded string at a time. It is stateless: what depends on
the document (a struct that cannot integrate, a cut inside a character, types nested through
many updates) is the engine's `UpdateCheck`, which reads the result; see the note.
"""

from __future__ import annotations

import re
from array import array
from typing import Final, NamedTuple, TypeAlias, final

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
_TRUSTED_TYPE_REFS: Final = _TYPE_REFS | {5, 9, 15}  # as yrs decodes them: no name follows

GC_STRUCT: Final = _GC
"""`Struct` info of a GC struct: a run of collected clocks, no content."""
SKIP_STRUCT: Final = _SKIP
"""`Struct` info of a skip: clocks a merged update leaves out."""
TYPE_CONTENT: Final = _TYPE
"""`info & 0x1F` of an item whose content is a shared type (array, map, text, XML)."""

YId: TypeAlias = "tuple[int, int]"
"""(client, clock)."""
Struct: TypeAlias = "tuple[int, int, int, int, YId | None, YId | None, str | YId | None, str | None]"
"""One struct of an update: `(client, clock, length, info, origin, right_origin, parent, text)`.

- `length`: clock units it takes (UTF-16 units for strings), at least 1.
- `info`: the info byte; `GC_STRUCT` and `SKIP_STRUCT` structs have no origins, parent or
  content, an item's content kind is `info & 0x1F` (`TYPE_CONTENT`: a shared type).
- `origin`, `right_origin`: the ids of its neighbours when created, or None.
- `parent`: None when an origin is given (the item shares its origin's parent), else the name
  of a root type (str) or the id of the type item it is in.
- `text`: the string content when it holds characters outside the BMP (two UTF-16 units
  each), else None.
"""


@final
class DecodedUpdate(NamedTuple):
    """What `read_update` found. Each struct, and each deleted range, is backed by at least
    two bytes of the update: the result takes no more memory than pycrdt's own decode of the
    same bytes (a tuple per item, as yrs allocates a block per item; runs of GC or skip
    structs merged, as yrs merges them; items of length 0, which yrs drops, left out)."""

    structs: list[Struct]
    """In the order of the bytes: a client's section at a time, clocks ascending."""
    deletes: dict[int, array[int]]
    """The delete set: per client, its ranges as `clock, length` pairs one after the other
    (u32), sorted and disjoint; ranges of length 0 left out (so a client's may be empty)."""


class _Bad(Exception):
    """Internal: the bytes are not what yrs would accept; `args[0]` says why."""


def read_state_vector(data: bytes) -> dict[int, int]:
    """Decode `data` if it is a well-formed Yjs v1 state vector: {client: clock}.

    A state vector is `varuint n` then `n` pairs `varuint client, varuint clock`
    (client < 2**53, clock < 2**32), and nothing after. Bytes that pass cost pycrdt's
    `Doc.get_update(data)` memory and time proportional to `len(data)` for decoding.

    Args:
        data: what a peer sent as a state vector (`sync_step1`, `join.state_vector`,
            y-websocket sync step 1), or what pycrdt wrote.

    Raises:
        RemoteProtocolError: with code INVALID_UPDATE, saying what is wrong.
            Anything else is a bug.
    """
    try:
        count, pos = _uint(data, 0, MAX_CLOCK)
        if count > (len(data) - pos) // 2:
            raise _Bad(f"claims {count} entries, more than its bytes can hold")
        clocks = {}
        for _ in range(count):
            client, pos = _uint(data, pos, MAX_CLIENT_ID)
            clocks[client], pos = _uint(data, pos, MAX_CLOCK)
        if pos != len(data):
            raise _Bad("bytes after the end")
    except (_Bad, IndexError) as exc:
        raise _refusal("state vector", exc) from None
    return clocks


def check_state_vector(data: bytes) -> None:
    """`read_state_vector`, for its refusal only (same rules, same errors)."""
    read_state_vector(data)


def read_update(data: bytes, *, trusted: bool = False) -> DecodedUpdate:
    """Decode `data` if it is a well-formed Yjs v1 update that yrs decodes as Yjs does.

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
        trusted: `data` was written by pycrdt itself (a document's own update, which may hold
            what its application put there): `Any` nests without limit, and legacy JSON
            content and every type ref yrs decodes are read as yrs reads them.

    Returns:
        The structs and the delete set (see `DecodedUpdate`, `Struct`).

    Raises:
        RemoteProtocolError: with code INVALID_UPDATE, saying what is wrong.
            Anything else is a bug.
    """
    return read_update_counted(data, trusted=trusted)[0]


def read_update_counted(data: bytes, *, trusted: bool = False) -> tuple[DecodedUpdate, int]:
    """`read_update`, and how many structs and deleted ranges it read: what reading it cost,
    one Python step each, however many a run merged (2,000,000 GC structs are one run).

    Raises:
        RemoteProtocolError: as `read_update`.
    """
    try:
        decoded, end, read = _read_update(data, trusted)
        if end != len(data):
            raise _Bad("bytes after the end")
    except (_Bad, IndexError) as exc:
        raise _refusal("update", exc) from None
    return decoded, read


MAX_SKIPS_SCANNED: Final = 1024
"""Skips `inserts_something` reads past before it takes the update as inserting."""


def inserts_something(data: bytes) -> bool:
    """Whether a Yjs v1 update holds a struct that is not a skip, found from its start: a GC
    or an item of any length, skips (and empty structs) before it read cheaply, and nothing
    after it. What a read-only member may not send (spec §5.3) is then refused without reading
    an update of a million items struct by struct. False when it holds none, or when the
    bytes are too malformed to say: `read_update` decides those. True, too, past
    MAX_SKIPS_SCANNED skips: 2,000,000 skips before an insert took 0.4 s to scan (QA), and
    skips come only from merging updates, which no client sends a server.
    """
    scanned = 0
    try:
        groups, pos = _uint(data, 0, MAX_CLOCK)
        for _ in range(groups):
            count, pos = _uint(data, pos, MAX_CLOCK)
            _, pos = _client(data, pos)
            _, pos = _uint(data, pos, MAX_CLOCK)
            for _ in range(count):
                scanned += 1
                if scanned > MAX_SKIPS_SCANNED:
                    return True  # no client writes that many skips: taken as inserting
                info = data[pos]
                if info != _SKIP and info != _GC:
                    return True
                length, pos = _uint(data, pos + 1, MAX_CLOCK)
                if length and info == _GC:
                    return True
    except (_Bad, IndexError):
        pass
    return False


def check_update(data: bytes) -> None:
    """`read_update`, for its refusal only (same rules, same errors)."""
    read_update(data)


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
    least 2**28 (up to four bytes are always in range). `minimal`: refuse a last byte of 0
    after others (lib0 and yrs never write one)."""
    byte = data[pos]
    if byte < 0x80:
        return byte, pos + 1
    value = byte & 0x7F
    shift = 7
    pos += 1
    # Unrolled up to five bytes: clocks take up to four, Yjs's random 32-bit client ids five.
    byte = data[pos]
    if byte >= 0x80:
        value |= (byte & 0x7F) << 7
        byte = data[pos + 1]
        shift, pos = 14, pos + 1
        if byte >= 0x80:
            value |= (byte & 0x7F) << 14
            byte = data[pos + 1]
            shift, pos = 21, pos + 1
            if byte >= 0x80:
                value |= (byte & 0x7F) << 21
                byte = data[pos + 1]
                shift, pos = 28, pos + 1
                while byte >= 0x80:
                    value |= (byte & 0x7F) << shift
                    shift += 7
                    if shift >= 7 * _MAX_VARINT_BYTES:
                        raise _Bad("a varint longer than 10 bytes")
                    pos += 1
                    byte = data[pos]
    value |= byte << shift
    if value > limit:
        raise _Bad(f"{value} is out of range (at most {limit})")
    if minimal and not byte:
        raise _Bad("a varint with a needless last byte")
    return value, pos + 1


# For walks that need positions, not values (`_skip_id` and the patterns): an ID (client,
# clock) in its usual form is a client id of at most 7 bytes, or of 8 whose last is below 0x10
# (either way < 2**53), then a clock of at most 4 bytes (< 2**28).
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


def _read_string(data: bytes, pos: int) -> tuple[str, int]:
    length, pos = _uint(data, pos, MAX_CLOCK)
    end = pos + length
    if end > len(data):
        raise IndexError
    return _check_utf8(data[pos:end]), end


def _check_utf8(chunk: bytes) -> str:
    try:
        return chunk.decode("utf-8")
    except UnicodeDecodeError:
        raise _Bad("a string that is not UTF-8") from None


# UTF-8 lead bytes of characters outside the BMP (U+10000 and up: two UTF-16 units each).
_ALL_BUT_ASTRAL_LEADS: Final = bytes(b for b in range(256) if not 0xF0 <= b <= 0xF4)

_ANY_ATOMS: Final = frozenset({127, 126, 121, 120})  # undefined, null, false, true
_ANY_FIXED: Final = {124: 4, 123: 8, 122: 8}  # float32, float64, bigint64


def _skip_anys(data: bytes, pos: int, count: int, max_depth: int = MAX_ANY_DEPTH) -> int:
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
            if len(enclosing) >= max_depth:
                raise _Bad(f"a value nested deeper than {max_depth}")
            enclosing.append((count, in_map))
            count, pos = _uint(data, pos, MAX_CLOCK)
            in_map = tag == 118
        elif tag == 116:
            pos = _skip_bytes(data, pos)
        else:
            raise _Bad(f"unknown value tag {tag}")


def _walk_update(data: bytes) -> int:
    """Walk an untrusted update; the position where it ends (bytes may follow)."""
    return _read_update(data, False)[1]


# Client ids take five (Yjs: random 32 bits) or eight bytes (yrs: random 53 bits), and a room
# sees few of them: each is decoded once, then found by its bytes. A varint's bytes are
# prefix-free, so the five or eight bytes at a position that are a known id are that id.
# Only minimal spellings are kept (a section's client id must be minimal).
_CLIENT_IDS: dict[bytes, int] = {}
_CLIENT_IDS_KEPT: Final = 4096


def _client(data: bytes, pos: int, minimal: bool = False) -> tuple[int, int]:
    """A client id at `pos` (< 2**53): (id, next position)."""
    client = _CLIENT_IDS.get(data[pos : pos + 8])
    if client is not None:
        return client, pos + 8
    client = _CLIENT_IDS.get(data[pos : pos + 5])
    if client is not None:
        return client, pos + 5
    client, end = _uint(data, pos, MAX_CLIENT_ID, minimal)
    if end - pos in (5, 8) and data[end - 1]:
        if len(_CLIENT_IDS) >= _CLIENT_IDS_KEPT:
            _CLIENT_IDS.clear()
        _CLIENT_IDS[data[pos:end]] = client
    return client, end


def _read_update(data: bytes, trusted: bool) -> tuple[DecodedUpdate, int, int]:
    """yrs update.rs `Update::decode` then id_set.rs `IdSet::decode`, v1: the update and the
    position where it ends, and the structs and deleted ranges read (however many merged).
    One-byte varints (most counts and clocks) are read inline."""
    read = 0
    uint, size, ids = _uint, len(data), _CLIENT_IDS
    structs: list[Struct] = []
    add = structs.append
    other: int | None  # an origin's client: the one we know by its bytes, if any
    parent: str | YId | None
    clients = data[0]
    if clients < 0x80:
        pos = 1
    else:
        clients, pos = uint(data, 0, MAX_CLOCK)
    seen: set[int] | None = set() if clients > 1 else None
    for _ in range(clients):
        count = data[pos]
        if count < 0x80:
            pos += 1
        else:
            count, pos = uint(data, pos, MAX_CLOCK)
        read += count
        start = pos
        client = ids.get(data[pos : pos + 5])
        if client is not None:
            pos += 5
        else:
            client, pos = _client(data, pos, True)
        own, own_size = data[start:pos], pos - start  # most origins name their own client
        if seen is not None:
            if client in seen:
                raise _Bad("a client has two sections")
            seen.add(client)
        clock = data[pos]
        if clock < 0x80:
            pos += 1
        elif data[pos + 1] < 0x80:
            clock = clock & 0x7F | data[pos + 1] << 7
            pos += 2
        else:
            clock, pos = uint(data, pos, MAX_CLOCK)
        for _ in range(count):
            info = data[pos]
            pos += 1
            kind = info & 0x1F
            if kind == _GC or kind == _SKIP:
                if info != kind:
                    raise _Bad(f"struct info {info:#x}")
                length, pos = uint(data, pos, MAX_CLOCK)
                if not length:
                    pass
                elif structs and structs[-1][3] == info and structs[-1][0] == client:  # a run: one
                    last = structs[-1]
                    structs[-1] = (client, last[1], last[2] + length, info, None, None, None, None)
                else:
                    add((client, clock, length, info, None, None, None, None))
            else:
                origin = right = parent = text = None
                if info & _HAS_ORIGIN:
                    if data.startswith(own, pos):
                        other = client
                        pos += own_size
                    else:
                        other = ids.get(data[pos : pos + 5])
                        if other is not None:
                            pos += 5
                        else:
                            other, pos = _client(data, pos)
                    at = data[pos]
                    if at < 0x80:
                        pos += 1
                    elif data[pos + 1] < 0x80:  # clocks up to 16,383
                        at = at & 0x7F | data[pos + 1] << 7
                        pos += 2
                    else:
                        at, pos = uint(data, pos, MAX_CLOCK)
                    origin = (other, at)
                if info & _HAS_RIGHT_ORIGIN:
                    if data.startswith(own, pos):
                        other = client
                        pos += own_size
                    else:
                        other = ids.get(data[pos : pos + 5])
                        if other is not None:
                            pos += 5
                        else:
                            other, pos = _client(data, pos)
                    at = data[pos]
                    if at < 0x80:
                        pos += 1
                    elif data[pos + 1] < 0x80:  # clocks up to 16,383
                        at = at & 0x7F | data[pos + 1] << 7
                        pos += 2
                    else:
                        at, pos = uint(data, pos, MAX_CLOCK)
                    right = (other, at)
                if not info & (_HAS_ORIGIN | _HAS_RIGHT_ORIGIN):  # no neighbour: the parent is written
                    named = data[pos]  # 1: a root type's name follows; 0: an item's id
                    if named == 1:
                        parent, pos = _read_string(data, pos + 1)
                    elif named == 0:
                        other, pos = _client(data, pos + 1)
                        at, pos = uint(data, pos, MAX_CLOCK)
                        parent = (other, at)
                    else:
                        raise _Bad(f"parent info {named}")
                    if info & _HAS_PARENT_SUB:  # a map key, usually short ASCII: inline
                        length = data[pos]
                        end = pos + 1 + length
                        if length < 0x80 and end <= size and data[pos + 1 : end].isascii():
                            pos = end
                        else:
                            pos = _skip_string(data, pos)
                if kind == _STRING:  # the most common content, inlined
                    length = data[pos]
                    if length < 0x80:
                        pos += 1
                    else:
                        length, pos = uint(data, pos, MAX_CLOCK)
                    end = pos + length
                    if end > size:
                        raise IndexError
                    chunk = data[pos:end]
                    if not chunk.isascii():
                        # The clock length is in UTF-16 units: one per character, two for
                        # one outside the BMP (a four-byte UTF-8 sequence).
                        decoded = _check_utf8(chunk)
                        astral = len(chunk.translate(None, _ALL_BUT_ASTRAL_LEADS))
                        length = len(decoded) + astral
                        if astral:
                            text = decoded
                    pos = end
                elif kind == _DELETED:
                    length, pos = uint(data, pos, MAX_CLOCK)
                else:
                    length, pos = _walk_content(data, pos, kind, trusted)
                if length:
                    add((client, clock, length, info, origin, right, parent, text))
            # yrs drops items of length 0 without advancing the clock (Item::new -> None).
            clock += length
            if clock > MAX_CLOCK:
                raise _Bad(f"a client's clock passes {MAX_CLOCK}")
    # Delete set: clients, each with ranges (clock, length), sorted and disjoint as yrs assumes
    # (ids.rs `IdRanges::from_raw`).
    deletes: dict[int, array[int]] = {}
    clients = data[pos]
    if clients < 0x80:
        pos += 1
    else:
        clients, pos = uint(data, pos, MAX_CLOCK)
    for _ in range(clients):
        client, pos = _client(data, pos)
        if client in deletes:
            raise _Bad("a client has two entries in the delete set")
        pairs = deletes[client] = array("I")
        ranges, pos = uint(data, pos, MAX_CLOCK)
        read += ranges
        low = 0
        for _ in range(ranges):
            start, pos = uint(data, pos, MAX_CLOCK)
            length, pos = uint(data, pos, MAX_CLOCK)
            if start < low:
                raise _Bad("deleted ranges out of order")
            low = start + length
            if low > MAX_CLOCK:
                raise _Bad(f"a deleted range passes {MAX_CLOCK}")
            if length:
                pairs.append(start)
                pairs.append(length)
    return tuple.__new__(DecodedUpdate, (structs, deletes)), pos, read


def _walk_content(data: bytes, pos: int, kind: int, trusted: bool = False) -> tuple[int, int]:
    """yrs block.rs `ItemContent::decode` but strings: returns (clock length, position)."""
    if kind == _DELETED:
        return _uint(data, pos, MAX_CLOCK)
    if kind == _ANY:
        count, pos = _uint(data, pos, MAX_CLOCK)
        return count, _skip_anys(data, pos, count, MAX_CLOCK if trusted else MAX_ANY_DEPTH)
    if kind == _TYPE:
        ref = data[pos]
        pos += 1
        if ref == _XML_ELEMENT:
            return 1, _skip_string(data, pos)
        if ref not in (_TRUSTED_TYPE_REFS if trusted else _TYPE_REFS):
            raise _Bad(f"type ref {ref}")
        return 1, pos
    if kind == _FORMAT:
        return 1, _skip_string(data, _skip_string(data, pos))
    if kind == _EMBED:
        return 1, _skip_string(data, pos)
    if kind == _BINARY:
        return 1, _skip_bytes(data, pos)
    if kind == _DOC:
        return 1, _skip_anys(data, _skip_string(data, pos), 1, MAX_CLOCK if trusted else MAX_ANY_DEPTH)
    if kind == _JSON and trusted:  # as yrs reads it: one more string than the count says
        count, pos = _uint(data, pos, MAX_CLOCK)
        for _ in range(count + 1):
            pos = _skip_string(data, pos)
        return count + 1, pos
    if kind == _JSON:
        raise _Bad("legacy JSON content")
    raise _Bad(f"content kind {kind}")
