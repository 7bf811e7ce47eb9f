"""Yjs v1 bytes for the CRDT input checks: a lib0 encoder for hand-made (and hostile) updates,
real updates made by pycrdt, generators of well-formed but adversarial updates, and a
subprocess probe that measures what pycrdt spends on bytes (spec/notes/crdt-input.md).

`python -m tests.protocol.crdt_corpus` prints the table of bombs in the note, with `--cost`
the table of what the checks cost, and with `--keystrokes [BASELINE]` what the room's checks
cost per update (`keystroke_cost`).
"""

from __future__ import annotations

import functools
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pycrdt

U32 = 2**32 - 1

# -- lib0 v1 encoding ------------------------------------------------------------------------


def varuint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def varint(n: int) -> bytes:
    negative, n = n < 0, abs(n)
    out = bytearray([(0x80 if n > 0x3F else 0) | (0x40 if negative else 0) | (n & 0x3F)])
    n >>= 6
    while n:
        out.append((0x80 if n > 0x7F else 0) | (n & 0x7F))
        n >>= 7
    return bytes(out)


def varstring(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return varuint(len(raw)) + raw


def update(sections: Iterable[tuple[int, int, list[bytes]]], delete_set: bytes = b"\x00") -> bytes:
    """`sections`: (client, first clock, encoded structs) for each client."""
    sections = list(sections)
    out = varuint(len(sections))
    for client, clock, structs in sections:
        out += varuint(len(structs)) + varuint(client) + varuint(clock) + b"".join(structs)
    return out + delete_set


def root_item(content_ref: int, content: bytes, root: str | bytes = "t") -> bytes:
    """An item at the start of root type `root` (no origins: the parent is written out)."""
    return bytes([content_ref]) + varuint(1) + varstring(root) + content


def delete_set(ranges_by_client: dict[int, list[tuple[int, int]]]) -> bytes:
    out = varuint(len(ranges_by_client))
    for client, ranges in ranges_by_client.items():
        out += varuint(client) + varuint(len(ranges))
        out += b"".join(varuint(clock) + varuint(length) for clock, length in ranges)
    return out


def nested_any(depth: int) -> bytes:
    """An Any content item holding `depth` arrays, each inside the last."""
    return update([(1, 0, [root_item(8, varuint(1) + b"\x75\x01" * depth + b"\x7e")])])


def nested_maps(depth: int, delete_outermost: bool) -> bytes:
    """A map in root map "t" holding a map holding a map... `depth` deep, each level's parent
    given by id; optionally deleting the outermost, which yrs does recursively."""
    structs = [bytes([7 | 0x20]) + varuint(1) + varstring("t") + varstring("k") + b"\x01"]
    for level in range(1, depth):
        structs.append(bytes([7 | 0x20]) + varuint(0) + varuint(1) + varuint(level - 1) + varstring("k") + b"\x01")
    return update([(1, 0, structs)], delete_set({1: [(0, 1)]}) if delete_outermost else b"\x00")


# -- real updates made by pycrdt -------------------------------------------------------------


@functools.cache
def _pycrdt_updates() -> tuple[bytes, ...]:
    return tuple(_make_pycrdt_updates())


def pycrdt_updates() -> list[bytes]:
    """Every update pycrdt emitted while editing documents of every kind, then whole-document
    updates, diffs against state vectors and merges (merges of gapped updates hold skips), and
    last one holding a subdocument (its bytes differ from run to run)."""
    return list(_pycrdt_updates())


def _make_pycrdt_updates() -> list[bytes]:
    """Every update pycrdt emitted while editing documents of every kind, then whole-document
    updates, diffs against state vectors and merges (merges of gapped updates hold skips)."""
    updates: list[bytes] = []
    docs = []
    for client_id in (1, 2**32 + 7, 2**53 - 1):
        doc = pycrdt.Doc(client_id=client_id)
        doc.observe(lambda event: updates.append(event.update))
        docs.append(doc)
    a, b, c = docs
    text = a.get("text", type=pycrdt.Text)
    text.insert(0, "hello world")
    text.insert(5, ", dear é😀")
    del text[0:2]
    text.insert(2, "bold", {"bold": True})
    text.format(0, 6, {"italic": True})  # one attribute a call: yrs orders several at random
    text.format(0, 4, {"color": "#f00"})
    text.format(1, 3, {"italic": None})
    text.insert_embed(len(text), {"image": "x.png"}, {"alt": "x"})
    array = a.get("array", type=pycrdt.Array)
    array.extend([1, -1, 2**40, 1.5, "s", True, False, None, b"\x00\xff", {"k": [1, {"d": None}]}, [1, [2, [3]]]])
    array.append(pycrdt.Map({"inner": pycrdt.Array(["x", pycrdt.Text("deep")])}))
    del array[1:3]
    for i in range(200):
        text.insert((i * 7) % len(text), "abc"[i % 3])
    with a.transaction():
        for i in range(30):
            array.insert(0, i)
    mapping = a.get("map", type=pycrdt.Map)
    mapping["n"] = 1
    mapping["s"] = "v"
    mapping["n"] = 2
    del mapping["s"]
    mapping["sub"] = pycrdt.Map({"a": pycrdt.Array([1, 2])})
    xml = a.get("xml", type=pycrdt.XmlFragment)
    xml.children.append(pycrdt.XmlElement("p", {"class": "lead"}, [pycrdt.XmlText("para")]))
    xml.children.append(pycrdt.XmlText("tail"))
    paragraph = xml.children[0]
    assert isinstance(paragraph, pycrdt.XmlElement)
    inner = paragraph.children[0]
    assert isinstance(inner, pycrdt.XmlText)
    inner.format(0, 2, {"strong": True})
    inner.insert_embed(1, {"mention": "ada"})
    paragraph.attributes["id"] = "p1"
    del xml.children[1]

    b.apply_update(a.get_update())
    before = b.get_state()
    b.get("text", type=pycrdt.Text).insert(1, "from b")
    del b.get("array", type=pycrdt.Array)[0:2]
    c.apply_update(b.get_update())
    c.get("map", type=pycrdt.Map)["c"] = {"nested": [[[]]]}
    updates += [a.get_update(), b.get_update(before), b.get_update(a.get_state()), c.get_update()]
    # A subdocument, kept apart: yrs writes its options map in random order, and the fuzz test's
    # inputs, mutated from these updates, must be the same on every run.
    holder = pycrdt.Doc(client_id=9)
    holder.get("map", type=pycrdt.Map)["doc"] = pycrdt.Doc(guid="subdocument")
    subdoc_update = holder.get_update()
    updates.append(pycrdt.merge_updates(*updates[::3]))
    updates.append(pycrdt.merge_updates(*updates[:40]))
    updates.append(pycrdt.Doc().get_update())
    return [*updates, subdoc_update]


def pycrdt_state_vectors() -> list[bytes]:
    doc = pycrdt.Doc()
    vectors = [doc.get_state()]
    for update in pycrdt_updates():
        doc.apply_update(update)
        vectors.append(doc.get_state())
        vectors.append(pycrdt.get_state(update))
    return vectors


# -- well-formed but adversarial updates ---------------------------------------------------


def hostile_any(rng: random.Random, depth: int) -> bytes:
    """A random lib0 Any: every tag, edge values, wide containers near the top and, now and
    then, a chain of arrays nested to the checker's limit."""
    if depth == 0 and rng.random() < 0.05:
        deepest = 128 - 1  # containers inside one Any: MAX_ANY_DEPTH
        return b"\x75\x01" * deepest + b"\x76\x01" + varstring("k") + b"\x7e"
    pick = rng.randrange(12 if depth < 3 else 10)
    if pick == 0:
        return b"\x7d" + varint(rng.choice([0, -1, 2**62, -(2**62), rng.randrange(-1000, 1000)]))
    if pick == 1:
        return b"\x7b" + rng.randbytes(8)  # any float64, NaN and infinities included
    if pick == 2:
        return b"\x7c" + rng.randbytes(4)
    if pick == 3:
        return b"\x7a" + rng.randbytes(8)
    if pick == 4:
        return b"\x77" + varstring(rng.choice(["", "k", "é😀", "x" * rng.randrange(300)]))
    if pick == 5:
        return b"\x74" + varstring(rng.randbytes(rng.randrange(40)))
    if pick < 10:
        return bytes([rng.choice([0x7F, 0x7E, 0x79, 0x78])])
    count = rng.choice([0, 1, 2, rng.randrange(20)])
    if pick == 10:
        return b"\x75" + varuint(count) + b"".join(hostile_any(rng, depth + 1) for _ in range(count))
    return b"\x76" + varuint(count) + b"".join(
        varstring(rng.choice(["a", "b", str(i)])) + hostile_any(rng, depth + 1) for i in range(count)
    )


def hostile_update(rng: random.Random) -> bytes:
    """A random update the checker should accept, with values at the edges of its ranges:
    clocks near 2**32, ids up to 2**53 - 1, huge deleted/GC/skip lengths, deep values, parents
    and origins that point anywhere."""
    clients = rng.sample([0, 1, 2, 3, 2**32, 2**53 - 1, rng.randrange(2**53)], rng.randrange(1, 4))

    def some_id() -> bytes:
        return varuint(rng.choice([*clients, rng.randrange(2**53)])) + varuint(
            rng.choice([0, 1, 5, 2**31, U32 - 1, rng.randrange(2**32)])
        )

    sections = []
    for client in clients:
        clock = rng.choice([0, 0, 1, 100, U32 - 10_000, rng.randrange(2**20)])
        structs: list[bytes] = []
        room = U32 - clock
        for _ in range(rng.randrange(1, 12)):
            kind = rng.choice([0, 10, 1, 3, 4, 4, 4, 5, 6, 7, 8, 8, 9])
            if kind in (0, 10):
                length = min(room, rng.choice([0, 1, 7, 2**31]))
                structs.append(bytes([kind]) + varuint(length))
                room -= length
                continue
            info = kind | rng.choice([0, 0x80, 0x40, 0xC0]) | rng.choice([0, 0x20])
            body = b""
            if info & 0x80:
                body += some_id()
            if info & 0x40:
                body += some_id()
            if not info & 0xC0:
                if rng.random() < 0.5:
                    body += varuint(1) + varstring(rng.choice(["t", "m", "a", "xml"]))
                else:
                    body += varuint(0) + some_id()
                if info & 0x20:
                    body += varstring(rng.choice(["k", "key", ""]))
            length = 1
            if kind == 1:
                length = rng.choice([0, 1, 3, min(room, 2**31)])
                body += varuint(length)
            elif kind == 3:
                body += varstring(rng.randbytes(rng.randrange(20)))
            elif kind == 4:
                text = rng.choice(["a", "é😀", "hello", "x" * 200, ""])
                length = len(text.encode())  # the checker counts UTF-8 bytes: an upper bound
                body += varstring(text)
            elif kind == 5:
                body += varstring(rng.choice(['{"a":1}', "[[[[1]]]]", "null", '"s"']))
            elif kind == 6:
                body += varstring(rng.choice(["bold", "href"])) + varstring(rng.choice(["true", "null", '{"x":2}']))
            elif kind == 7:
                ref = rng.choice([0, 1, 2, 3, 4, 6])
                body += bytes([ref]) + (varstring(rng.choice(["p", "div"])) if ref == 3 else b"")
            elif kind == 8:
                length = rng.choice([0, 1, 2, 5])
                body += varuint(length) + b"".join(hostile_any(rng, 0) for _ in range(length))
            elif kind == 9:
                body += varstring("guid-" + str(rng.randrange(9))) + hostile_any(rng, 0)
            if length > room:
                break
            room -= length
            structs.append(bytes([info]) + body)
        sections.append((client, clock, structs))
    ranges: dict[int, list[tuple[int, int]]] = {}
    for client in rng.sample(clients, rng.randrange(len(clients) + 1)):
        start, spans = rng.choice([0, 5, 2**31]), []
        for _ in range(rng.randrange(4)):
            length = rng.choice([0, 1, 10, 2**20])
            if start + length > U32:
                break
            spans.append((start, length))
            start += length + rng.randrange(3)
        ranges[client] = spans
    return update(sections, delete_set(ranges))


def mutations(seed: bytes, rng: random.Random, donors: list[bytes]) -> Iterator[bytes]:
    """Small corruptions of `seed`: flipped, dropped, inserted and repeated bytes, varints
    swapped for huge ones, splices with another update."""
    while True:
        data = bytearray(seed)
        for _ in range(rng.choice([1, 1, 2, 4])):
            if not data:
                break
            at = rng.randrange(len(data))
            op = rng.randrange(7)
            if op == 0:
                data[at] ^= 1 << rng.randrange(8)
            elif op == 1:
                data[at] = rng.randrange(256)
            elif op == 2:
                del data[at : at + rng.randrange(1, 4)]
            elif op == 3:
                data[at:at] = rng.randbytes(rng.randrange(1, 4))
            elif op == 4:
                data[at : at + 1] = varuint(rng.choice([2**27, 2**29, U32, 2**53 - 1, 2**60]))
            elif op == 5:
                data[at:at] = data[at : at + rng.randrange(1, 16)]
            else:
                donor = rng.choice(donors)
                cut = rng.randrange(len(donor) + 1)
                data[at:] = donor[cut:]
        yield bytes(data)


# -- measuring pycrdt in a child process -----------------------------------------------------

_CHILD = r"""
import resource, sys, time, pycrdt
def rss(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
seed = pycrdt.Doc()
seed.get("t", type=pycrdt.Text).insert(0, "hello")
seed_update, seed_state = seed.get_update(), seed.get_state()
out = sys.stdout
print("ready", rss(), flush=True)
for line in sys.stdin:
    kind, data = line.split()
    data = b"" if data == "-" else bytes.fromhex(data)
    base = rss()
    start = time.perf_counter()
    def calls():
        if kind == "sv":
            yield lambda: seed.get_update(data)
        else:
            yield lambda: pycrdt.Doc().apply_update(data)
            doc = pycrdt.Doc()
            doc.apply_update(seed_update)
            yield lambda: doc.apply_update(data)
            yield lambda: doc.get_update(seed_state)
            yield lambda: pycrdt.merge_updates(seed_update, data)
            yield lambda: pycrdt.get_state(data)
    outcome = "ok"
    for call in calls():
        try:
            call()
        except BaseException as exc:
            outcome = type(exc).__name__
            if outcome not in ("ValueError", "PanicException", "RuntimeError"):
                raise
            break
    print(f"{time.perf_counter() - start:.6f} {rss() - base} {outcome}", flush=True)
"""


@dataclass(frozen=True)
class Probe:
    seconds: float
    rss_growth_mib: int
    outcome: str


class PycrdtProbe:
    """A child process that hands bytes to pycrdt, one input at a time, and reports the time
    and peak-RSS growth of each; a crash is reported, not suffered."""

    def __init__(self) -> None:
        # A panic with RUST_BACKTRACE=1 loads debug symbols: ~0.2 s and ~50 MiB the first time,
        # a backtrace on stderr every time. That is the environment's cost, not the input's.
        env = {**os.environ, "RUST_BACKTRACE": "0"}
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # a line per panic; a pipe nobody reads would fill up
            text=True,
        )
        assert self._proc.stdout is not None
        ready = self._proc.stdout.readline().split()
        assert ready[:1] == ["ready"], ready
        self.base_rss_mib = int(ready[1])

    def run(self, kind: str, data: bytes) -> Probe:
        """`kind` is "sv" (get_update with it) or "update" (apply to an empty and a non-empty
        doc, encode, merge, get_state). A child that dies reports its exit status."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        try:
            self._proc.stdin.write(f"{kind} {data.hex() or '-'}\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            pass
        line = self._proc.stdout.readline().split()
        if not line:
            status = self._proc.wait()
            return Probe(0.0, 0, f"child died: exit {status}")
        return Probe(float(line[0]), int(line[1]), line[2])

    def close(self) -> None:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        try:
            self._proc.stdin.close()
        except BrokenPipeError:
            pass
        self._proc.wait(timeout=10)
        self._proc.stdout.close()


def measure_once(kind: str, data: bytes, timeout: float = 120.0) -> tuple[float, int, str]:
    """Wall time, peak RSS of the child's whole life (MiB) and outcome of one pycrdt call on
    `data` in a fresh child: the table in spec/notes/crdt-input.md."""
    code = (
        "import sys, pycrdt\n"
        "data = sys.stdin.buffer.read()\n"
        "doc = pycrdt.Doc()\n"
        "doc.get('t', type=pycrdt.Text).insert(0, 'hello')\n"
        "try:\n"
        "    doc.get_update(data) if sys.argv[1] == 'sv' else doc.apply_update(data)\n"
        "    print('accepted')\n"
        "except BaseException as exc:\n"
        "    print(type(exc).__name__)\n"
    )
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", code, kind],
        env={**os.environ, "RUST_BACKTRACE": "0"},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(data)
    proc.stdin.close()
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() - start > timeout:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.01)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = proc.stdout.read().decode().strip()
    proc.stdout.close()
    return time.perf_counter() - start, usage.ru_maxrss // 1024, out or f"died (exit {proc.returncode})"


@functools.cache
def bombs() -> dict[str, tuple[str, bytes]]:
    """Each input found to make pycrdt 0.14.13 allocate or recurse far beyond its size, or, for
    the last, to corrupt its clocks (a panic; cheap unless RUST_BACKTRACE=1)."""
    return {
        "state vector from the issue": ("sv", bytes.fromhex("ece3c5baf359480059")),
        "state vector claiming 2**29 entries": ("sv", varuint(2**29)),
        "update claiming 2**28 clients": ("update", varuint(2**28)),
        "Any map claiming 2**27 entries": ("update", update([(1, 0, [root_item(8, varuint(1) + b"\x76" + varuint(2**27))])])),
        "Any arrays nested 50,000 deep": ("update", nested_any(50_000)),
        "clock wrapping past 2**32": ("update", update([(1, 0, [root_item(1, varuint(U32)), root_item(4, varstring("ab"))])])),
    }


def beyond_a_stateless_check() -> dict[str, tuple[str, bytes]]:
    """Inputs that still hurt pycrdt after the checks, because only the document knows."""
    return {"maps nested 35,000 deep, outermost deleted": ("update", nested_maps(35_000, True))}


def cost_table() -> None:
    """µs per call of the reader beside pycrdt applying the same bytes to an empty document
    (best of 7; the numbers in spec/notes/crdt-input.md)."""
    from plait.protocol import check_state_vector, read_update

    def best(call: Callable[[], object], inner: int) -> float:
        times = []
        for _ in range(7):
            start = time.perf_counter()
            for _ in range(inner):
                call()
            times.append((time.perf_counter() - start) / inner)
        return min(times) * 1e6

    doc = pycrdt.Doc()
    text = doc.get("t", type=pycrdt.Text)
    text.insert(0, "hello")
    before = doc.get_state()
    text.insert(3, "x")
    typed = typed_document()
    values = pycrdt.Doc()
    with values.transaction():
        mapping = values.get("m", type=pycrdt.Map)
        for i in range(40_000):
            mapping[f"key{i}"] = {"n": i, "l": [1, 2.5, "x"]}
    cases = {
        "one-character insert": doc.get_update(before),
        "1 MiB ASCII string": _one_string("a" * 2**20),
        "1 MiB string of é": _one_string("é" * 2**19),
        "60k typed edits (1.4 MiB)": typed.get_update(),
        "40k map entries of JSON (1.5 MiB)": values.get_update(),
    }
    for name, data in cases.items():
        inner = 2000 if len(data) < 1000 else 1
        ours = best(lambda: read_update(data), inner)  # noqa: B023 (best() calls it at once)
        theirs = best(lambda: pycrdt.Doc().apply_update(data), inner)  # noqa: B023
        print(f"{name:36s} {len(data):8d} B  read_update {ours:10.1f} µs  pycrdt apply {theirs:10.1f} µs")
    state = doc.get_state()
    ours = best(lambda: check_state_vector(state), 2000)
    theirs = best(lambda: doc.get_update(state), 2000)
    print(f"{'state vector, one client':36s} {len(state):8d} B  check_state_vector {ours:4.1f} µs  pycrdt get_update {theirs:4.1f} µs")


def keystroke_updates(count: int = 4000) -> list[bytes]:
    """What two editors send while typing into one text, one character an update, each at a
    random place: the updates a room applies most (Yjs-style random 32-bit client ids)."""
    rng = random.Random(7)
    docs = [pycrdt.Doc(client_id=rng.randrange(2**31, 2**32)) for _ in range(2)]
    texts = [doc.get("t", type=pycrdt.Text) for doc in docs]
    updates = []
    for i in range(count):
        doc, text, other = docs[i % 2], texts[i % 2], docs[1 - i % 2]
        before = doc.get_state()
        text.insert(rng.randint(0, len(text)), "etaoin shrdlu"[i % 13])
        updates.append(doc.get_update(before))
        other.apply_update(updates[-1])
    return updates


def typed_document(edits: int = 60_000) -> pycrdt.Doc:
    """One client's text after `edits` one-character inserts at random places, every third
    edit also deleting a character: 1.4 MiB of Yjs v1 for 60,000."""
    rng = random.Random(1)
    doc = pycrdt.Doc(client_id=2**52 + 12_345)  # eight bytes, as yrs's random ids mostly take
    text = doc.get("t", type=pycrdt.Text)
    for i in range(edits):
        text.insert(rng.randint(0, len(text)), "ab"[i % 2])
        if i % 3 == 0 and len(text) > 2:
            at = rng.randrange(len(text) - 1)
            del text[at : at + 1]
    return doc


def keystroke_cost(baseline: str | None = None, runs: int = 41) -> None:
    """What the room spends on a peer's update (spec/notes/crdt-input.md): µs per keystroke
    update, min of `runs`, and ms for a whole typed document sent at once (an initial sync),
    min of 5: pycrdt's apply alone; the room's checks then apply (read_update, then
    UpdateCheck); and with `baseline`, the path of another engine/room/_updatecheck.py (engine/_updatecheck.py before it moved) whose
    UpdateCheck reads bytes itself (main before the one reader), that check then apply. The
    runs interleave, so a loaded machine slows all alike."""
    import importlib.util

    from plait.engine.room._updatecheck import UpdateCheck
    from plait.protocol import read_update

    old: Any = None
    if baseline is not None:
        spec = importlib.util.spec_from_file_location("baseline_updatecheck", baseline)
        assert spec is not None and spec.loader is not None
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)

    def apply_only(updates: list[bytes]) -> float:
        doc = pycrdt.Doc()
        start = time.perf_counter()
        for update in updates:
            doc.apply_update(update)
        return time.perf_counter() - start

    def one_reader(updates: list[bytes]) -> float:
        doc, check = pycrdt.Doc(), UpdateCheck()
        doc.observe(lambda event: check.learn(event.update))
        start = time.perf_counter()
        for update in updates:
            check.apply(update, read_update(update), doc.apply_update)
        return time.perf_counter() - start

    def before(updates: list[bytes]) -> float:
        doc, check = pycrdt.Doc(), old.UpdateCheck()
        doc.observe(lambda event: check.learn(event.update))
        start = time.perf_counter()
        for update in updates:
            check.apply(update, doc.apply_update)
        return time.perf_counter() - start

    cases = {"pycrdt apply only": apply_only, "read_update + UpdateCheck + apply": one_reader}
    if old is not None:
        cases["baseline UpdateCheck + apply"] = before
    import gc

    keystrokes = keystroke_updates()
    whole = [typed_document().get_update()]
    for updates, repeat, unit, scale in ((keystrokes, runs, "µs per update", 1e6), (whole, 5, "ms", 1e3)):
        best = dict.fromkeys(cases, float("inf"))
        for _ in range(repeat):
            for name, case in cases.items():
                gc.collect()
                gc.disable()
                try:
                    best[name] = min(best[name], case(updates))
                finally:
                    gc.enable()
        size = sum(map(len, updates)) / len(updates)
        print(f"{len(updates)} updates of {size:.1f} B, min of {repeat} runs:")
        for name, seconds in best.items():
            print(f"  {name:36s} {seconds / len(updates) * scale:8.2f} {unit}")


def _one_string(text: str) -> bytes:
    doc = pycrdt.Doc()
    doc.get("t", type=pycrdt.Text).insert(0, text)
    return doc.get_update()


if __name__ == "__main__":
    if sys.argv[1:] == ["--cost"]:
        cost_table()
        sys.exit()
    if sys.argv[1:2] == ["--keystrokes"]:
        keystroke_cost(*sys.argv[2:3])
        sys.exit()
    print(f"pycrdt {pycrdt.__version__ if hasattr(pycrdt, '__version__') else ''}")
    for name, (kind, data) in {**bombs(), **beyond_a_stateless_check()}.items():
        seconds, peak, outcome = measure_once(kind, data)
        print(f"{name:40s} {len(data):7d} B  {seconds:5.2f} s  peak RSS {peak:5d} MiB  {outcome}")
    seconds, peak, outcome = measure_once("sv", b"\x00")
    print(f"{'baseline: empty state vector':40s} {1:7d} B  {seconds:5.2f} s  peak RSS {peak:5d} MiB  {outcome}")
