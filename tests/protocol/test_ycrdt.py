"""The CRDT input checks (plait.protocol._ycrdt, spec/notes/crdt-input.md).

Rules of this module: `check_update` / `check_state_vector` (and `read_update` /
`read_state_vector`, which they are) return or raise RemoteProtocolError with code
INVALID_UPDATE, for any bytes. They accept everything pycrdt and
the real yjs package write, and refuse every input found to make pycrdt allocate, loop or
recurse far beyond its size (each such input is a golden case below). The fuzz tests hand what
the checks accept to pycrdt in a child process and bound its time and memory.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pycrdt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plait.protocol import (
    GC_STRUCT,
    SKIP_STRUCT,
    TYPE_CONTENT,
    DecodedUpdate,
    ErrorCode,
    RemoteProtocolError,
    check_state_vector,
    check_update,
    read_state_vector,
    read_update,
)
from plait.protocol._ycrdt import MAX_ANY_DEPTH

from .crdt_corpus import (
    U32,
    PycrdtProbe,
    beyond_a_stateless_check,
    bombs,
    delete_set,
    hostile_update,
    mutations,
    nested_any,
    pycrdt_state_vectors,
    pycrdt_updates,
    root_item,
    update,
    varstring,
    varuint,
)

Check = Callable[[bytes], None]


def refusal(check: Check, data: bytes) -> str:
    with pytest.raises(RemoteProtocolError) as info:
        check(data)
    assert info.value.code is ErrorCode.INVALID_UPDATE
    return info.value.message


def outcome(check: Check, data: bytes) -> str:
    """"ok", or the refusal's message; anything else escaping is a failure."""
    try:
        check(data)
    except RemoteProtocolError as exc:
        assert exc.code is ErrorCode.INVALID_UPDATE
        return exc.message
    return "ok"


@pytest.fixture(scope="module")
def real_updates() -> list[bytes]:
    return pycrdt_updates()


# -- golden cases: each input that made pycrdt 0.14.13 blow up or panic -----------------------


def test_the_nine_byte_state_vector_from_the_issue_is_refused() -> None:
    # Its count, 3.1e12, is no u32; yrs wraps it to ~6e8 and reserves a hash map for that many
    # entries: 1 GiB resident, ~2 s. A count that is a u32 but exceeds the bytes fails too.
    assert "out of range" in refusal(check_state_vector, bytes.fromhex("ece3c5baf359480059"))
    assert "more than its bytes can hold" in refusal(check_state_vector, varuint(2**29) + b"\x01\x01")


@pytest.mark.parametrize("name", list(bombs()))
def test_every_bomb_found_is_refused(name: str) -> None:
    kind, data = bombs()[name]
    refusal(check_state_vector if kind == "sv" else check_update, data)


@pytest.mark.slow
def test_types_nested_through_ids_pass_the_checks() -> None:
    # Deleting a type nested ~35,000 deep overflows yrs's stack (a recursive delete). The
    # nesting can be built over many small updates, so only the document can bound it: the
    # engine's UpdateCheck does, from what read_update returns (tests/engine/test_crdt_input.py).
    for _, data in beyond_a_stateless_check().values():
        check_update(data)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (varuint(2**28), "ends early"),  # clients claimed, none present
        (varuint(1) + varuint(U32) + varuint(1) + varuint(0), "ends early"),  # structs claimed
        (update([(1, 0, [root_item(8, varuint(2**26))])]), "unknown value tag"),  # Any items claimed
        (update([(1, 0, [root_item(8, varuint(1) + b"\x76" + varuint(2**27))])]), "ends early"),
        (update([(1, 0, [root_item(8, varuint(1) + b"\x75" + varuint(2**40))])]), "out of range"),
        (b"\x00" + varuint(1) + varuint(1) + varuint(2**29), "ends early"),  # deleted ranges claimed
    ],
)
def test_counts_the_bytes_cannot_hold_are_refused(data: bytes, reason: str) -> None:
    assert reason in refusal(check_update, data)


def test_any_values_nest_at_most_max_any_depth() -> None:
    check_update(nested_any(MAX_ANY_DEPTH))  # an array in an array... MAX_ANY_DEPTH of them
    assert "nested deeper" in refusal(check_update, nested_any(MAX_ANY_DEPTH + 1))
    # 50,000 levels overflowed yrs's stack and killed the process.
    assert "nested deeper" in refusal(check_update, nested_any(50_000))


def test_nesting_is_counted_through_maps_and_doc_options() -> None:
    deep_map = b"\x76\x01" + varstring("k")
    too_deep = deep_map * (MAX_ANY_DEPTH + 1) + b"\x7e"
    assert "nested deeper" in refusal(check_update, update([(1, 0, [root_item(8, varuint(1) + too_deep)])]))
    subdoc = root_item(9, varstring("guid") + too_deep)
    assert "nested deeper" in refusal(check_update, update([(1, 0, [subdoc])]))


def test_clocks_must_stay_within_u32() -> None:
    # A run that wraps past 2**32 makes yrs panic ("attempt to divide by zero" in find_index).
    check_update(update([(1, 0, [root_item(1, varuint(U32))])]))
    assert "clock passes" in refusal(check_update, update([(1, 0, [root_item(1, varuint(U32)), root_item(4, varstring("a"))])]))
    assert "clock passes" in refusal(check_update, update([(1, U32 - 1, [root_item(4, varstring("ab"))])]))
    assert "out of range" in refusal(check_update, update([(1, 2**32, [root_item(4, varstring("a"))])]))
    assert "clock passes" in refusal(check_update, update([(1, 5, [b"\x0a" + varuint(U32 - 4)])]))
    assert "passes" in refusal(check_update, update([], delete_set({1: [(U32 - 1, 2)]})))


def test_client_ids_must_fit_in_53_bits() -> None:
    # yrs keeps 53 bits of a client id: larger ids would silently alias smaller ones.
    check_update(update([(2**53 - 1, 0, [root_item(4, varstring("a"))])]))
    for data in (
        update([(2**53, 0, [root_item(4, varstring("a"))])]),
        update([(1, 0, [b"\x84" + varuint(2**53) + varuint(0) + varstring("a")])]),
        update([], delete_set({2**60: [(0, 1)]})),
    ):
        assert "out of range" in refusal(check_update, data)
    assert "out of range" in refusal(check_state_vector, varuint(1) + varuint(2**53) + varuint(1))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (update([(1, 0, [root_item(4, varstring(b"\xff\xfe"))])]), "UTF-8"),
        (update([(1, 0, [root_item(4, varstring(b"\xc3"))])]), "UTF-8"),
        (update([(1, 0, [root_item(4, varstring("a"), root=b"\xc3(")])]), "UTF-8"),
        (update([(1, 0, [root_item(2, varuint(1) + varstring('"x"'))])]), "legacy JSON"),
        (update([(1, 0, [root_item(7, b"\x05")])]), "type ref 5"),  # XmlHook: Yjs writes a name yrs skips
        (update([(1, 0, [root_item(7, b"\x07")])]), "type ref 7"),  # weak links: not in pycrdt
        (update([(1, 0, [root_item(7, b"\x0f")])]), "type ref 15"),
        (update([(1, 0, [b"\x80" + varuint(1) + varuint(0)])]), "struct info"),  # GC with flags
        (update([(1, 0, [root_item(0x14, varstring("a"))])]), "content kind"),  # bit 4 set
        (update([(1, 0, [b"\x04" + varuint(2) + varstring("t") + varstring("a")])]), "parent info 2"),
        (update([(1, 0, [root_item(8, varuint(1) + b"\x73")])]), "unknown value tag"),
        (update([(1, 0, []), (1, 5, [])]), "two sections"),
        (varuint(1) + varuint(0) + b"\x81\x00" + varuint(0) + b"\x00", "needless last byte"),
        (update([], delete_set({1: [(5, 2), (0, 1)]})), "out of order"),
        (update([], delete_set({1: [(0, 5), (3, 1)]})), "out of order"),
        (update([]) + b"\x00", "bytes after the end"),
        (b"\x00\x00" + b"\x80" * 11, "bytes after the end"),
        (b"\x80" * 11, "longer than 10 bytes"),
        (b"", "ends early"),
    ],
)
def test_malformed_updates_are_refused(data: bytes, reason: str) -> None:
    assert reason in refusal(check_update, data)


def test_malformed_state_vectors_are_refused() -> None:
    assert "ends early" in refusal(check_state_vector, b"")
    assert "ends early" in refusal(check_state_vector, varuint(2) + varuint(1) + varuint(1) + varuint(2) + b"\x80")
    assert "after the end" in refusal(check_state_vector, b"\x00\x00")
    assert "out of range" in refusal(check_state_vector, varuint(1) + varuint(1) + varuint(2**32))


def test_every_truncation_of_a_real_update_is_refused(real_updates: list[bytes]) -> None:
    for data in real_updates[:40]:
        for end in range(len(data)):
            refusal(check_update, data[:end])
    largest = max(real_updates, key=len)
    for end in random.Random(3).sample(range(len(largest)), 300):
        refusal(check_update, largest[:end])


# -- acceptance --------------------------------------------------------------------------------


def test_pycrdt_updates_of_every_kind_are_accepted(real_updates: list[bytes]) -> None:
    for data in real_updates:
        check_update(data)


def test_pycrdt_state_vectors_are_accepted() -> None:
    for data in pycrdt_state_vectors():
        check_state_vector(data)


def test_edge_values_yrs_takes_are_accepted() -> None:
    accepted = [
        update([]),
        update([(0, 0, [])]),
        update([(5, 7, [b"\x00" + varuint(3), b"\x0a" + varuint(2), root_item(4, varstring(""))])]),
        update([(1, 0, [root_item(8, varuint(0))])]),  # empty: yrs drops it, clock unchanged
        update([(1, 0, [root_item(8, varuint(3) + b"\x7d\x81\x80\x80\x80\x80\x80\x80\x80\x01"
                                  + b"\x7c" + b"\x00" * 4 + b"\x7a" + b"\xff" * 8)])]),
        update([(1, 0, [root_item(1, varuint(U32 - 1)), root_item(4, varstring("a"))])]),
        update([], delete_set({1: [(0, 1), (1, 1), (5, 0), (U32 - 1, 1)], 2**53 - 1: []})),
    ]
    for data in accepted:
        check_update(data)
        pycrdt.Doc().apply_update(data)


def test_big_updates_are_accepted() -> None:
    doc = pycrdt.Doc()
    doc.get("t", type=pycrdt.Text).insert(0, "é😀a" * 100_000)
    doc.get("a", type=pycrdt.Array).extend([{"n": i, "s": "x" * (i % 50)} for i in range(2_000)])
    check_update(doc.get_update())


@pytest.mark.slow
def test_updates_and_state_vectors_made_by_yjs_are_accepted() -> None:
    assert shutil.which("node"), "Node.js is required (tests/interop/js holds yjs)"
    script = Path(__file__).parent / "yjs_corpus.cjs"
    result = subprocess.run(["node", str(script)], capture_output=True, check=True, timeout=60)
    corpus = json.loads(result.stdout)
    assert len(corpus["updates"]) > 300
    for data in map(bytes.fromhex, corpus["updates"]):
        check_update(data)
        pycrdt.Doc().apply_update(data)
    for data in map(bytes.fromhex, corpus["stateVectors"]):
        check_state_vector(data)


# -- what read_update returns -------------------------------------------------------------------


def test_read_update_returns_every_struct_and_the_delete_set() -> None:
    # yjs 13.6.33, client 1: insert "a😎b" into text "text", then "X" at UTF-16 index 2.
    assert read_update(bytes.fromhex("01010100040104746578740661f09f988e6200")) == DecodedUpdate(
        [(1, 0, 4, 4, None, None, "text", "a😎b")], {}
    )
    assert read_update(bytes.fromhex("01010104c401010102015800")) == DecodedUpdate(
        [(1, 4, 1, 0xC4, (1, 1), (1, 2), None, None)], {}
    )
    # A map entry inside item 7:3, a GC run (in two structs), a skip, a string without
    # characters outside the BMP (no text kept; its length in UTF-16 units), an empty string
    # (yrs drops it), and deleted ranges of three clients, one of length 0.
    gc_run = [b"\x00" + varuint(2), b"\x00" + varuint(1)]
    data = update(
        [(2**53 - 1, 10, [*gc_run, b"\x0a" + varuint(2), root_item(4, varstring("é漢")), root_item(4, varstring(""))]),
         (7, 0, [bytes([7 | 0x20]) + b"\x00" + varuint(7) + varuint(3) + varstring("key") + b"\x01"])],
        delete_set({7: [(0, 1), (5, 2)], 2**32: [(1, 1)], 9: [(4, 0)]}),
    )
    decoded = read_update(data)
    assert decoded.structs == [
        (2**53 - 1, 10, 3, GC_STRUCT, None, None, None, None),
        (2**53 - 1, 13, 2, SKIP_STRUCT, None, None, None, None),
        (2**53 - 1, 15, 2, 4, None, None, "t", None),
        (7, 0, 1, TYPE_CONTENT | 0x20, None, None, (7, 3), None),
    ]
    assert {client: list(ranges) for client, ranges in decoded.deletes.items()} == {7: [0, 1, 5, 2], 2**32: [1, 1], 9: []}


def test_the_result_takes_no_more_memory_than_yrs_would() -> None:
    # What yrs decodes for next to nothing (GC and skip runs it merges, items of length 0 it
    # drops, deleted ranges it keeps in eight bytes) costs the result next to nothing too.
    cheap_for_yrs = {
        "GC structs": update([(1, 0, [b"\x00\x01"] * 1_000)]),
        "skips": update([(1, 0, [b"\x0a\x01"] * 1_000)]),
        "empty strings": update([(1, 0, [b"\x84\x01\x00\x00"] * 1_000)]),
        "deleted ranges": update([], delete_set({1: [(2 * i, 1) for i in range(1_000)]})),
    }
    for name, data in cheap_for_yrs.items():
        tracemalloc.start()
        try:
            decoded = read_update(data)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 8 * len(data) + 16_000, (name, peak, len(data))
        assert len(decoded.structs) <= 1


def test_a_client_named_twice_in_the_delete_set_is_refused() -> None:
    # Neither Yjs nor yrs writes it; yrs would keep one of the two lists.
    data = update([], b"\x02" + delete_set({1: [(0, 1)]})[1:] + delete_set({1: [(3, 1)]})[1:])
    assert "two entries in the delete set" in refusal(check_update, data)


def test_struct_lengths_add_up_to_pycrdt_s_state_vector(real_updates: list[bytes]) -> None:
    # Every clock length read (UTF-16 units for strings) against pycrdt's own reading: the
    # updates, applied in the order they were made, reach exactly as far as their structs.
    doc = pycrdt.Doc()
    ends: dict[int, int] = {}
    for data in real_updates:
        for client, clock, length, info, *_ in read_update(data).structs:
            if info != SKIP_STRUCT and length:
                ends[client] = max(ends.get(client, 0), clock + length)
        doc.apply_update(data)
        assert read_state_vector(doc.get_state()) == ends, data.hex()


def test_client_ids_are_read_alike_whatever_was_read_before() -> None:
    # Ids of five and eight bytes are remembered by their bytes; a spelling with a needless
    # last byte is read (as an origin) but never remembered, so it cannot pass as a section's.
    for client in (2**31 + 5, 2**52 + 9, 2**28, 2**49 - 1, 127, 2**53 - 1):
        first = update([(client, 0, [root_item(4, varstring("ab"))])])
        second = update([(client, 2, [b"\x84" + varuint(client) + varuint(1) + varstring("c")])])
        assert read_update(first).structs[0][0] == client
        assert read_update(second).structs[0][:5] == (client, 2, 1, 0x84, (client, 1))
    for client in (2**25 + 77, 2**46 + 77):  # four and seven bytes, padded to five and eight
        padded = varuint(client)[:-1] + bytes([varuint(client)[-1] | 0x80]) + b"\x00"
        origin = update([(1, 0, [b"\x84" + padded + varuint(0) + varstring("c")])])
        assert read_update(origin).structs[0][4] == (client, 0)
        section = varuint(1) + varuint(1) + padded + varuint(0) + root_item(4, varstring("a")) + b"\x00"
        assert "needless last byte" in refusal(check_update, section)
    assert read_state_vector(varuint(1) + varuint(2**52 + 9) + varuint(4)) == {2**52 + 9: 4}


def test_a_trusted_read_takes_what_pycrdt_may_hold() -> None:
    # The document's own updates may hold what its application put there: values nested past
    # MAX_ANY_DEPTH, and type refs yrs decodes that no peer should send.
    deep = nested_any(MAX_ANY_DEPTH + 10)
    assert read_update(deep, trusted=True).structs[0][2] == 1
    hook = update([(1, 0, [root_item(7, b"\x05")])])
    assert read_update(hook, trusted=True).structs[0][3] == TYPE_CONTENT
    for data in (deep, hook):
        refusal(check_update, data)
    doc = pycrdt.Doc()
    doc.get("m", type=pycrdt.Map)["deep"] = json.loads("[" * 200 + "]" * 200)
    read_update(doc.get_update(), trusted=True)


# -- totality ----------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=128))
def test_arbitrary_bytes_give_none_or_invalid_update(data: bytes) -> None:
    outcome(check_update, data)
    outcome(check_state_vector, data)


def test_mutated_real_updates_give_none_or_invalid_update(real_updates: list[bytes]) -> None:
    rng = random.Random(5)
    reasons: dict[str, int] = {}
    for seed in rng.sample(real_updates, 30):
        mutated = mutations(seed, rng, real_updates)
        for _ in range(40):
            reason = outcome(check_update, next(mutated)).split(":")[-1].split(" (")[0].strip()
            reasons[reason] = reasons.get(reason, 0) + 1
    # The mutator reaches deep into the walk, not only the first bytes.
    assert reasons.get("ok", 0) > 50 and reasons.get("ends early", 0) > 50 and len(reasons) > 8, reasons


@pytest.mark.slow
@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_escape_at_length(data: bytes) -> None:
    outcome(check_update, data)
    outcome(check_state_vector, data)


# -- fuzz: what the checks accept costs pycrdt little ----------------------------------------

FUZZ_SECONDS_PER_INPUT = 0.5
"""Wall time one accepted input may cost pycrdt (apply to an empty and to a non-empty document,
re-encode, merge, state vector): generous, so that a loaded machine stays green; the bombs
took 0.5-2 s of CPU each, or killed the process."""
FUZZ_RSS_GROWTH_MIB = 16
"""Peak-RSS growth one accepted input may cause; the bombs took 70 MiB to 1 GiB."""


def fuzz_inputs(rng: random.Random, count: int) -> list[tuple[str, bytes]]:
    updates = pycrdt_updates()[:-1]  # the last, with a subdocument, differs from run to run
    vectors = pycrdt_state_vectors()
    inputs: list[tuple[str, bytes]] = [("update", hostile_update(rng)) for _ in range(count // 4)]
    update_mutants = [mutations(seed, rng, updates) for seed in rng.sample(updates, 40)]
    vector_mutants = [mutations(seed, rng, vectors) for seed in rng.sample(vectors, 20)]
    while len(inputs) < count:
        inputs.append(("update", next(rng.choice(update_mutants))))
        if len(inputs) % 5 == 0:
            inputs.append(("sv", next(rng.choice(vector_mutants))))
    return inputs


@pytest.mark.slow
def test_accepted_inputs_cost_pycrdt_bounded_time_and_memory() -> None:
    rng = random.Random(2024)
    probe = PycrdtProbe()
    tried = 0
    try:
        for kind, data in fuzz_inputs(rng, 30_000):
            try:
                (check_state_vector if kind == "sv" else check_update)(data)
            except RemoteProtocolError:
                continue
            tried += 1
            result = probe.run(kind, data)
            assert not result.outcome.startswith("child died"), (result, kind, data.hex())
            assert result.outcome in ("ok", "ValueError", "PanicException", "RuntimeError"), result
            assert result.seconds < FUZZ_SECONDS_PER_INPUT, (result, kind, data.hex())
            assert result.rss_growth_mib < FUZZ_RSS_GROWTH_MIB, (result, kind, data.hex())
    finally:
        probe.close()
    assert tried > 5_000  # the generators and mutators get past the checks often enough


@pytest.mark.slow
def test_the_probe_sees_a_bomb_the_checks_refuse() -> None:
    # The fuzz test is only as good as its probe: it must notice the issue's state vector, and
    # survive (to report it) a child that dies.
    probe = PycrdtProbe()
    try:
        result = probe.run("sv", bytes.fromhex("ece3c5baf359480059"))
        assert result.rss_growth_mib > FUZZ_RSS_GROWTH_MIB or result.seconds > FUZZ_SECONDS_PER_INPUT, result
        assert probe.run("update", nested_any(50_000)).outcome.startswith("child died")
    finally:
        probe.close()


def _inserts(data: bytes) -> bool:
    return any(struct[3] != SKIP_STRUCT for struct in read_update(data).structs)


def test_inserts_something_agrees_with_reading_the_whole_update() -> None:
    # A read-only member's update that inserts is refused from its first structs (spec §5.3):
    # an 8 MB update of a million items took 2 s to read before FORBIDDEN (QA).
    from plait.protocol import inserts_something

    skip, gc, empty_gc = bytes([10]) + varuint(3), bytes([0]) + varuint(2), bytes([0]) + varuint(0)
    text = root_item(4, varstring("hi"))
    cases = [
        *pycrdt_updates(),
        update([]),
        update([], delete_set({5: [(0, 3)]})),
        update([(5, 0, [skip])]),
        update([(5, 0, [skip, skip, empty_gc])]),
        update([(5, 0, [skip, text])]),
        update([(5, 0, [skip]), (6, 0, [text])]),
        update([(5, 0, [gc])]),
        update([(5, 0, [empty_gc, skip])]),
    ]
    assert any(_inserts(c) for c in cases) and not all(_inserts(c) for c in cases)
    for data in cases:
        assert inserts_something(data) == _inserts(data), data.hex()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_inserts_something_never_raises_on_bytes_that_are_not_an_update(data: bytes) -> None:
    from plait.protocol import inserts_something

    assert inserts_something(data) in (True, False)


def test_an_update_of_more_skips_than_are_scanned_is_taken_as_inserting() -> None:
    # QA: 2,000,000 skips before an insert took 0.4 s to scan before a read-only member's
    # update was refused; no client sends skips (they come from merging updates).
    from plait.protocol import inserts_something
    from plait.protocol._ycrdt import MAX_SKIPS_SCANNED

    skip = bytes([10]) + varuint(1)
    assert not inserts_something(update([(5, 0, [skip] * MAX_SKIPS_SCANNED)]))
    assert inserts_something(update([(5, 0, [skip] * (MAX_SKIPS_SCANNED + 1))]))


def test_read_update_counted_counts_merged_runs_struct_by_struct() -> None:
    # QA: 2,000,000 GC structs read as one merged run counted once toward the read rate.
    from plait.protocol import read_update_counted

    gc = bytes([0]) + varuint(1)
    decoded, read = read_update_counted(update([(5, 0, [gc] * 5000)], delete_set({5: [(0, 1), (2, 1)]})))
    assert len(decoded.structs) == 1 and read == 5000 + 2
