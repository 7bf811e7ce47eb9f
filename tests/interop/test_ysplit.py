"""Split updates in the real yjs package (plait.protocol.split_update, spec §3.2, §5.3): the
pieces of a pycrdt document's update, and of every update in the Yjs corpus, applied in order
to a Yjs document (each in a transaction of its own) leave nothing pending and give the same
`encodeStateAsUpdate` and state vector as the whole update. The pycrdt half of the same rules
is tests/protocol/test_ysplit.py."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings

from plait.protocol import MIN_SPLIT_BYTES, SplitError

from ..protocol.test_ysplit import PIECE_SIZES, apply_pieces, documents

pytestmark = pytest.mark.slow

JS = Path(__file__).parent / "js"
CORPUS = Path(__file__).parent.parent / "protocol" / "yjs_corpus.cjs"


class YjsCheck:
    """`tests/interop/js/ysplit.mjs` in one Node process for the whole module."""

    def __init__(self) -> None:
        assert shutil.which("node"), "Node.js is required for the interop tests"
        assert (JS / "node_modules" / "yjs").exists(), "run `npm ci` in tests/interop/js"
        self.proc = subprocess.Popen(
            ["node", "ysplit.mjs"], cwd=JS, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, encoding="utf-8"
        )

    def call(self, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "ysplit.mjs exited"
        answer: dict[str, Any] = json.loads(line)
        assert "error" not in answer, answer["error"]
        return answer

    def __call__(self, base: bytes | None, whole: bytes, pieces: list[bytes]) -> None:
        b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
        answer = self.call(base=b64(base) if base else None, whole=b64(whole), pieces=[b64(p) for p in pieces])
        assert answer["same"], "Yjs built a different document from the pieces"
        if not answer["wholePending"]:
            assert answer["pending"] == -1, f"piece {answer['pending']} left structs pending in Yjs"

    def close(self) -> None:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.close()
        self.proc.wait(timeout=10)
        self.proc.stdout.close()


@pytest.fixture(scope="module")
def yjs() -> Iterator[YjsCheck]:
    check = YjsCheck()
    yield check
    check.close()


@settings(max_examples=200, deadline=None)
@given(documents(), PIECE_SIZES)
def test_pieces_of_pycrdt_documents_rebuild_them_in_yjs(yjs: YjsCheck, doc: tuple[bytes | None, bytes], max_bytes: int) -> None:
    base, whole = doc
    yjs(base, whole, apply_pieces(base, whole, max_bytes))


def test_pieces_of_every_update_yjs_writes_rebuild_it_in_yjs_and_pycrdt(yjs: YjsCheck) -> None:
    result = subprocess.run(["node", str(CORPUS)], capture_output=True, check=True, timeout=60)
    updates = [bytes.fromhex(u) for u in json.loads(result.stdout)["updates"]]
    split = 0
    for max_bytes in (MIN_SPLIT_BYTES, 400, 1500):
        for whole in updates:
            try:
                pieces = apply_pieces(None, whole, max_bytes)
            except SplitError as exc:
                assert "does not fit" in str(exc)
                continue
            split += len(pieces) > 1
            yjs(None, whole, pieces)
    assert split >= 10


def test_one_long_string_made_by_yjs_splits_and_rebuilds(yjs: YjsCheck) -> None:
    """The issue's shape, made by Yjs: one client's appended chunks are one item."""
    whole = base64.b64decode(yjs.call(appended="chunk 😀 of text ", count=2000)["update"])
    assert len(whole) > 35_000 and whole.count(b"\x04\x01\x04text") == 1  # one item
    pieces = apply_pieces(None, whole, 4096)
    assert len(pieces) >= 9
    yjs(None, whole, pieces)
