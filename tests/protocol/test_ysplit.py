"""Splitting Yjs v1 updates into pieces (plait.protocol.split_update, spec §3.2 and §5.3).

Rules of this module: for every update a document makes and every `max_bytes` from
MIN_SPLIT_BYTES up, each piece is at most `max_bytes`, passes `check_update`, and integrates
completely on top of the pieces before it (the document's state vector then covers the
piece's); applying the pieces in order gives a document whose `get_update()` is byte for byte
the one applying the whole update gives (but for the order of keys in maps inside values, which
yrs writes in a random order every time it encodes: `canonical`). Anything that cannot be split raises SplitError. The
Yjs half (the same, in the real yjs package under Node) is in tests/interop/test_ysplit.py.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import pycrdt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plait.protocol import MIN_SPLIT_BYTES, PIECE_OVERHEAD, SplitError, check_update, split_update
from plait.protocol._ycrdt import _skip_string, _uint
from plait.protocol._ysplit import _read, _skip_id

from .crdt_corpus import mutations, pycrdt_updates, update, varstring, varuint

ALPHABET = "ab é漢😀🎉\u0301"
"""ASCII, a 2-byte and a 3-byte character, two characters outside the BMP (surrogate pairs in
UTF-16, 4 bytes in UTF-8) and a combining mark."""


def decode_state(state: bytes) -> dict[int, int]:
    def uint(pos: int) -> tuple[int, int]:
        value, shift = 0, 0
        while True:
            byte = state[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value, pos

    count, pos = uint(0)
    out = {}
    for _ in range(count):
        client, pos = uint(pos)
        out[client], pos = uint(pos)
    return out


def read_any(data: bytes, pos: int) -> tuple[object, int]:
    """One lib0 `Any` value, with maps as dicts: yrs writes a map's keys in a random order."""
    tag = data[pos]
    pos += 1
    if tag in (127, 126, 121, 120):
        return {127: "undefined", 126: None, 121: False, 120: True}[tag], pos
    if tag == 125:
        end = pos
        while data[end] & 0x80:
            end += 1
        return data[pos : end + 1], end + 1
    if tag in (124, 123, 122):
        size = {124: 4, 123: 8, 122: 8}[tag]
        return data[pos : pos + size], pos + size
    if tag in (119, 116):
        length, pos = _uint(data, pos, 2**32)
        return data[pos : pos + length], pos + length
    count, pos = _uint(data, pos, 2**32)
    items = []
    for _ in range(count):
        if tag == 118:
            length, pos = _uint(data, pos, 2**32)
            key, pos = data[pos : pos + length], pos + length
        value, pos = read_any(data, pos)
        items.append((key, value) if tag == 118 else value)
    return (sorted(items, key=repr) if tag == 118 else items), pos


def canonical(data: bytes) -> tuple[object, ...]:
    """The update's structs and delete set, each struct's bytes as they are but for `Any`
    values, embeds, formats and sub-document options, which yrs writes in an order of its own
    (a Rust HashMap's) each time it encodes: those are decoded, their maps order-free."""
    sections, deletes = _read(data)
    out: list[object] = []
    for section in sections:
        for k in range(len(section.ends)):
            start, end = section.byte_start(k), section.ends[k]
            info = data[start]
            kind = info & 0x1F
            pos = start + 1
            if kind not in (0, 10):
                if info & 0x80:
                    pos = _skip_id(data, pos)
                if info & 0x40:
                    pos = _skip_id(data, pos)
                if not info & 0xC0:
                    pos = _skip_string(data, pos + 1) if data[pos] == 1 else _skip_id(data, pos + 1)
                    if info & 0x20:
                        pos = _skip_string(data, pos)
            header = data[start:pos]
            content: object = data[pos:end]
            if kind == 8:
                count, pos = _uint(data, pos, 2**32)
                values = []
                for _ in range(count):
                    value, pos = read_any(data, pos)
                    values.append(value)
                content = values
            elif kind in (5, 6, 9):
                content = repr(json_or_any(data, kind, pos))
            out.append((section.client, section.clock_at(k), section.clocks[k], header, content))
    return tuple(out), tuple(deletes)


def joined_items(structs_and_deletes: tuple[object, ...]) -> tuple[object, ...]:
    """`canonical`'s structs with every string, Any or deleted item that continues the one before it (same
    client, next clock, its origin the last unit of the one before, same right origin) joined
    to it. yrs joins such items when they integrate in one transaction, so one update applied
    whole and the same update applied in pieces can hold the same text in more items."""
    structs, deletes = structs_and_deletes
    out: list[tuple[int, int, int, bytes, object]] = []
    for client, start, end, header, content in structs:  # type: ignore[misc]
        kind = header[0] & 0x1F if header else None
        if kind == 4 and isinstance(content, bytes):
            content = _text(content)
        elif kind == 1 and isinstance(content, bytes):  # deleted content: its length
            content = _uint(content, 0, 2**64)[0]
        if out and kind in (1, 4, 8) and header[0] & 0x80:
            p_client, p_start, p_end, p_header, p_content = out[-1]
            origin_client, pos = _uint(header, 1, 2**64)
            origin_clock, pos = _uint(header, pos, 2**64)
            if (
                p_client == client and p_end == start and p_header[0] & 0x1F == kind
                and (origin_client, origin_clock) == (client, start - 1)
                and _right_origin(header) == _right_origin(p_header)
            ):
                out[-1] = (client, p_start, end, p_header, p_content + content)  # type: ignore[operator]
                continue
        out.append((client, start, end, header, content))
    return tuple(out), deletes


def _right_origin(header: bytes) -> tuple[int, int] | None:
    """The right origin id in an item's header, if it has one."""
    info, pos = header[0], 1
    if not info & 0x40:
        return None
    if info & 0x80:
        _, pos = _uint(header, pos, 2**64)
        _, pos = _uint(header, pos, 2**64)
    client, pos = _uint(header, pos, 2**64)
    clock, _ = _uint(header, pos, 2**64)
    return client, clock


def _text(content: bytes) -> bytes:
    """A string content's UTF-8 bytes, without its length prefix."""
    _, pos = _uint(content, 0, 2**64)
    return content[pos:]


def json_or_any(data: bytes, kind: int, pos: int) -> object:
    def string(pos: int) -> tuple[str, int]:
        length, pos = _uint(data, pos, 2**32)
        return data[pos : pos + length].decode(), pos + length

    first, pos = string(pos)
    if kind == 5:
        return sorted_json(json.loads(first))
    if kind == 6:
        return first, sorted_json(json.loads(string(pos)[0]))
    return first, read_any(data, pos)[0]


def sorted_json(value: object) -> object:
    if isinstance(value, dict):
        return sorted((k, sorted_json(v)) for k, v in value.items())
    if isinstance(value, list):
        return [sorted_json(v) for v in value]
    return value


def apply_pieces(base: bytes | None, whole: bytes, max_bytes: int) -> list[bytes]:
    """Split `whole`, check every rule of this module, return the pieces."""
    pieces = split_update(whole, max_bytes)
    assert pieces
    reference, rebuilt = pycrdt.Doc(), pycrdt.Doc()
    if base is not None:
        reference.apply_update(base)
        rebuilt.apply_update(base)
    reference.apply_update(whole)
    reached = decode_state(reference.get_state())
    for piece in pieces:
        assert len(piece) <= max_bytes
        check_update(piece)
        rebuilt.apply_update(piece)
        # Integrated as far as the whole update integrates: nothing waits for a later piece.
        have = decode_state(rebuilt.get_state())
        for client, clock in decode_state(pycrdt.get_state(piece)).items():
            assert have.get(client, 0) >= min(clock, reached.get(client, 0)), (client, clock, have)
    assert joined_items(canonical(rebuilt.get_update())) == joined_items(canonical(reference.get_update()))
    assert decode_state(rebuilt.get_state()) == decode_state(reference.get_state())  # (yrs orders clients at random)
    return pieces


# -- examples --------------------------------------------------------------------------------


def appended_text(chunks: int, chunk: str, client_id: int = 7) -> pycrdt.Doc:
    """A document grown by one client appending chunks: yrs merges them into one item (the
    issue: a 17 MiB room made of acked 1 MiB edits is one 17 MiB string)."""
    doc = pycrdt.Doc(client_id=client_id)
    text = doc.get("text", type=pycrdt.Text)
    for _ in range(chunks):
        text += chunk
    return doc


def test_an_update_that_fits_is_returned_as_it_is() -> None:
    whole = appended_text(3, "hello ").get_update()
    pieces = split_update(whole, len(whole))
    assert pieces == [whole] and pieces[0] is whole
    assert split_update(b"\x00\x00", 10) == [b"\x00\x00"]  # below the minimum: it fits anyway


def test_one_long_string_item_is_split_inside_its_content() -> None:
    doc = appended_text(40, "lorem ipsum " * 100)
    whole = doc.get_update()
    assert len(whole) > 40_000
    pieces = apply_pieces(None, whole, 4096)
    assert len(pieces) == -(-len(whole) // 4096) or len(pieces) == -(-len(whole) // 4096) + 1
    # The right parts name their left part as origin, as Yjs writes a split item.
    check = pycrdt.Doc()
    for piece in pieces:
        check.apply_update(piece)
    assert str(check.get("text", type=pycrdt.Text)) == str(doc.get("text", type=pycrdt.Text))


def test_text_outside_the_bmp_is_never_cut_inside_a_character() -> None:
    for max_bytes in range(MIN_SPLIT_BYTES, MIN_SPLIT_BYTES + 8):  # every alignment of the cut
        doc = appended_text(10, "😀é漢a" * 20)
        pieces = apply_pieces(None, doc.get_update(), max_bytes)
        assert len(pieces) > 5
        # A string's bytes are whole UTF-8 (check_update above), and each piece ends on a whole
        # character: the document reads without U+FFFD after every piece. (A piece alone reads
        # as nothing past the first: its items wait for their origins in the pieces before.)
        rebuilt, length = pycrdt.Doc(), 0
        for piece in pieces:
            rebuilt.apply_update(piece)
            text = str(rebuilt.get("text", type=pycrdt.Text))
            assert "\ufffd" not in text
            assert len(text) > length
            length = len(text)


def test_a_large_array_of_values_is_split_between_values() -> None:
    doc = pycrdt.Doc(client_id=3)
    array = doc.get("array", type=pycrdt.Array)
    array.extend([i if i % 3 else {"n": i, "s": "x" * (i % 40), "l": [1, 2.5, None, True]} for i in range(800)])
    pieces = apply_pieces(None, doc.get_update(), 1024)
    assert len(pieces) > 10


def test_a_diff_against_a_state_vector_splits_on_top_of_the_receivers_document() -> None:
    a = appended_text(5, "abc😀 " * 50)
    b = pycrdt.Doc(client_id=8)
    b.apply_update(a.get_update())
    base = b.get_update()
    text = a.get("text", type=pycrdt.Text)
    text.insert(len(str(text)[:10].encode()), "inserted 🎉 " * 200)
    del text[0:40]
    apply_pieces(base, a.get_update(b.get_state()), 512)


def test_a_large_delete_set_travels_in_pieces_of_its_own() -> None:
    doc = appended_text(1, "x" * 6000)
    text = doc.get("text", type=pycrdt.Text)
    with doc.transaction():
        for i in range(5600, 0, -4):  # every fourth character: thousands of ranges
            del text[i : i + 1]
    whole = doc.get_update()
    pieces = apply_pieces(None, whole, 300)
    ds_only = [p for p in pieces if p.startswith(b"\x00")]
    assert len(ds_only) >= 2


def test_nested_types_and_their_parents_come_before_their_contents() -> None:
    doc = pycrdt.Doc(client_id=11)
    root = doc.get("root", type=pycrdt.Map)
    for i in range(30):
        root[f"k{i}"] = pycrdt.Map({"text": pycrdt.Text("nested 😀 " * 30), "list": pycrdt.Array(list(range(50)))})
    other = pycrdt.Doc(client_id=5)  # a lower client id: written after client 11 in the update
    other.apply_update(doc.get_update())
    inner = other.get("root", type=pycrdt.Map)["k3"]["text"]
    inner.insert(0, "from 5 " * 100)
    apply_pieces(None, other.get_update(), MIN_SPLIT_BYTES)


@pytest.mark.parametrize("max_bytes", [MIN_SPLIT_BYTES, 300, 1000, 5000])
def test_every_update_of_the_pycrdt_corpus(max_bytes: int) -> None:
    """Every content kind pycrdt writes (formats, embeds, XML, subdocuments, binary, merges of
    gapped updates with skips). Those with gaps leave the same structs pending either way."""
    for data in pycrdt_updates():
        try:
            pieces = split_update(data, max_bytes)
        except SplitError as exc:
            assert "does not fit" in str(exc)
            continue
        reference, rebuilt = pycrdt.Doc(), pycrdt.Doc()
        reference.apply_update(data)
        for piece in pieces:
            assert len(piece) <= max_bytes
            check_update(piece)
            rebuilt.apply_update(piece)
        assert joined_items(canonical(rebuilt.get_update())) == joined_items(canonical(reference.get_update()))


# -- refusals --------------------------------------------------------------------------------


def test_an_indivisible_value_larger_than_a_piece_is_an_error() -> None:
    doc = pycrdt.Doc()
    doc.get("map", type=pycrdt.Map)["big"] = "x" * 5000  # one map value: one unit
    with pytest.raises(SplitError, match="does not fit") as info:
        split_update(doc.get_update(), 4096)
    assert not info.value.malformed
    assert len(split_update(doc.get_update(), 5000 + PIECE_OVERHEAD + 20)) == 1


def test_an_indivisible_value_fits_when_max_bytes_leaves_the_overhead() -> None:
    doc = pycrdt.Doc(client_id=2**53 - 1)  # the longest client id
    array = doc.get("a", type=pycrdt.Array)
    array.extend(["v" * 1000] * 10)  # ten 1 KB values in one item
    with doc.transaction():
        for i in range(9, 0, -2):
            del array[i]
    pieces = apply_pieces(None, doc.get_update(), 1000 + PIECE_OVERHEAD + 8)
    assert len(pieces) >= 5


def test_pieces_smaller_than_the_minimum_are_refused() -> None:
    with pytest.raises(SplitError, match="too small"):
        split_update(appended_text(1, "x" * 500).get_update(), MIN_SPLIT_BYTES - 1)


def outcome(data: bytes, max_bytes: int) -> str:
    """"ok" (and then every piece fits and passes check_update), or SplitError's message."""
    try:
        pieces = split_update(data, max_bytes)
    except SplitError as exc:
        return str(exc).split(":")[0]
    assert all(len(p) <= max_bytes for p in pieces)
    return "ok"


def test_mutated_real_updates_split_or_raise_split_error() -> None:
    rng = random.Random(11)
    donors = [u for u in pycrdt_updates() if len(u) > MIN_SPLIT_BYTES]
    seen: dict[str, int] = {}
    for seed in donors:
        mutated = mutations(seed, rng, donors)
        for _ in range(40):
            reason = outcome(next(mutated), MIN_SPLIT_BYTES)
            seen[reason] = seen.get(reason, 0) + 1
    assert seen.get("ok", 0) > 20 and seen.get("not a Yjs v1 update", 0) > 100, seen


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(st.binary(min_size=MIN_SPLIT_BYTES + 1, max_size=2048), st.integers(MIN_SPLIT_BYTES, 1024))
def test_any_bytes_split_or_raise_split_error(data: bytes, max_bytes: int) -> None:
    outcome(data, max_bytes)


def test_malformed_updates_raise_split_error() -> None:
    good = appended_text(4, "abc " * 100).get_update()
    for bad in (
        good[:-1],  # ends early
        good + b"\x00",  # bytes after the end
        update([(1, 0, [b"\x04\x01" + varstring("t") + b"\x02\xff\xfe" + b"x" * 300])]),  # not UTF-8
        update([(1, 0, [b"\x04\x01" + varstring("t") + varstring("x" * 300)]), (1, 400, [b"\x04\x01" + varstring("t") + varstring("y")])]),
        b"\x01" + varuint(10**6) + b"\x01\x00" + b"\x00" * 400,  # claims more structs than it holds
    ):
        with pytest.raises(SplitError, match="not a Yjs v1 update") as info:
            split_update(bad, MIN_SPLIT_BYTES)
        assert info.value.malformed


def test_a_cycle_of_references_through_a_clients_clocks_raises_split_error() -> None:
    # Client 1's first struct has its origin in client 2's, whose origin is client 1's second
    # struct, which follows the first: no document makes this, and no order integrates it.
    def item(origin: tuple[int, int], text: str) -> bytes:
        return b"\x84" + varuint(origin[0]) + varuint(origin[1]) + varstring(text)

    cyclic = update([(1, 0, [item((2, 0), "a" * 200), item((1, 199), "b" * 200)]), (2, 0, [item((1, 200), "c" * 200)])])
    with pytest.raises(SplitError, match="cycle"):
        split_update(cyclic, MIN_SPLIT_BYTES)


# -- random documents ------------------------------------------------------------------------


@dataclass
class Editors:
    docs: list[pycrdt.Doc]

    def text(self, i: int) -> pycrdt.Text:
        return self.docs[i].get("text", type=pycrdt.Text)


def byte_offset(text: pycrdt.Text, chars: int) -> int:
    """pycrdt 0.14 counts text positions in UTF-8 bytes: the offset of character `chars`."""
    return len(str(text)[:chars].encode())


def random_value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(7 if depth < 2 else 5)
    if kind == 0:
        return rng.randrange(-(2**40), 2**40)
    if kind == 1:
        return rng.random() * 1e6
    if kind == 2:
        return "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(12)))
    if kind == 3:
        return rng.choice([True, False, None])
    if kind == 4:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(8)))
    if kind == 5:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {f"k{i}": random_value(rng, depth + 1) for i in range(rng.randrange(4))}


def edit(editors: Editors, rng: random.Random) -> None:
    i = rng.randrange(len(editors.docs))
    doc = editors.docs[i]
    op = rng.randrange(9)
    text = editors.text(i)
    chars = len(str(text))
    if op <= 2:  # insert, sometimes a long run (appended chunks of one client merge)
        run = "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(1, 30))) * rng.choice([1, 1, 20, 80])
        at = rng.choice([chars, rng.randrange(chars + 1)])
        text.insert(byte_offset(text, at), run)
    elif op == 3 and chars:
        start = rng.randrange(chars)
        end = min(chars, start + rng.randrange(1, 200))
        del text[byte_offset(text, start) : byte_offset(text, end)]
    elif op == 4 and chars and str(text).isascii():
        # (pycrdt 0.14 formats by byte offsets badly: past a non-ASCII character, a format can
        # leave a document that no longer encodes what it holds.)
        start = rng.randrange(chars)
        end = min(chars, start + rng.randrange(1, 20))
        text.format(byte_offset(text, start), byte_offset(text, end) - byte_offset(text, start), {"bold": rng.choice([True, None])})
    elif op == 5:
        array = doc.get("array", type=pycrdt.Array)
        values = [random_value(rng) for _ in range(rng.randrange(1, 60))]
        array.insert(rng.randrange(len(array) + 1), values[0]) if len(values) == 1 else array.extend(values)
        if len(array) > 3 and rng.random() < 0.4:
            start = rng.randrange(len(array))
            del array[start : min(len(array), start + rng.randrange(1, 10))]
    elif op == 6:
        mapping = doc.get("map", type=pycrdt.Map)
        key = f"key{rng.randrange(6)}"
        choice = rng.randrange(4)
        if choice == 0:
            mapping[key] = random_value(rng)
        elif choice == 1:
            mapping[key] = pycrdt.Text("".join(rng.choice(ALPHABET) for _ in range(rng.randrange(50))))
        elif choice == 2:
            mapping[key] = pycrdt.Map({"inner": pycrdt.Array([random_value(rng) for _ in range(rng.randrange(5))])})
        elif key in mapping:
            del mapping[key]
    else:  # sync: one editor takes another's changes
        j = rng.randrange(len(editors.docs))
        if j != i:
            doc.apply_update(editors.docs[j].get_update(doc.get_state()))


@st.composite
def documents(draw: st.DrawFn) -> tuple[bytes | None, bytes]:
    """(base, update): a whole document (base None), or a diff of one editor's document
    against another's state, to apply on top of that other's document."""
    seed = draw(st.integers(0, 2**32))
    rng = random.Random(seed)
    editors = Editors([pycrdt.Doc(client_id=rng.randrange(2**rng.choice([8, 32, 53]))) for _ in range(draw(st.integers(1, 3)))])
    for _ in range(draw(st.integers(1, 40))):
        edit(editors, rng)
    first = editors.docs[0]
    if len(editors.docs) > 1 and draw(st.booleans()):
        other = editors.docs[1]
        return other.get_update(), first.get_update(other.get_state())
    return None, first.get_update()


PIECE_SIZES = st.one_of(st.integers(MIN_SPLIT_BYTES, 600), st.integers(MIN_SPLIT_BYTES, 4096))


@settings(max_examples=20, deadline=None)
@given(documents(), PIECE_SIZES)
def test_random_documents_split_into_pieces_that_rebuild_them(doc: tuple[bytes | None, bytes], max_bytes: int) -> None:
    base, whole = doc
    apply_pieces(base, whole, max_bytes)


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(documents(), PIECE_SIZES)
def test_many_random_documents_split_into_pieces_that_rebuild_them(doc: tuple[bytes | None, bytes], max_bytes: int) -> None:
    base, whole = doc
    apply_pieces(base, whole, max_bytes)
