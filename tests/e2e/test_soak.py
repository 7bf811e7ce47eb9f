"""The soak workloads (bench/hostile.py, bench/churn.py), run small against a real `plait
serve`: they still attack both endpoints, watch the good clients and the server's log, and
report every check. Their full-size numbers belong in bench/README.md."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (ROOT / "bench/js/node_modules").is_dir() or shutil.which("node") is None,
                       reason="needs Node and `cd bench/js && npm ci`"),
]
FAMILIES = ["native_random", "native_mutated", "native_utf8", "native_stale", "native_values", "native_limits",
            "yjs_random", "yjs_mutated", "yjs_forgery", "yjs_values", "yjs_surrogates", "yjs_after_close",
            "ws_violations", "http", "crdt_bytes"]


def start(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(ROOT / "bench" / script), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)


def finish(process: subprocess.Popen[str], timeout: float = 240) -> tuple[int, dict[str, list[str]], str]:
    """A soak script's exit status, its table rows keyed by their first cell, and its output."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    rows = {cells[0]: cells[1:] for line in stdout.splitlines() if line.startswith("| ") and not line.startswith("| ---")
            for cells in [[cell.strip() for cell in line.strip("|").split("|")]]}
    return process.returncode, rows, stdout + stderr


def run(script: str, *args: str) -> tuple[int, dict[str, list[str]], str]:
    return finish(start(script, *args))


def hostile(*families: str) -> tuple[int, dict[str, list[str]], str]:
    return run("hostile.py", "--seconds", "3", "--workers", "6", "--good", "1", "--edit-rate", "5", "--drain", "5",
               "--bombs", "--strict", "--only", *families)


def test_the_server_withstands_the_hostile_families_it_handles_and_the_checks_say_so() -> None:
    handled = [f for f in FAMILIES if f not in ("yjs_surrogates", "yjs_forgery", "crdt_bytes")]
    status, rows, output = hostile(*handled)
    assert status == 0, output[-4000:]  # --strict: every check passed
    assert rows["server still running and serving (a new connection gets welcome)"] == ["yes"], output[-4000:]
    assert rows["good clients converged, no edit lost"][0].startswith("yes: 2 clients, 0 of"), output[-4000:]
    assert rows["ERROR/CRITICAL lines (and uncaught tracebacks) in the server log"] == ["0"]
    for family in handled:
        assert int(rows[family][0].replace(",", "")) > 0, (family, rows[family])  # connections made


def test_lone_surrogates_and_forged_awareness_are_refused() -> None:
    """Two bugs the hostile run found (bench/README.md, 'Hostile input'): an awareness state
    holding a lone surrogate crashed its room and could stop the server, and a Yjs client could
    take over a native member's awareness id."""
    status, rows, output = hostile("yjs_surrogates", "yjs_forgery")
    errors = rows["ERROR/CRITICAL lines (and uncaught tracebacks) in the server log"]  # the script ran to its report
    forged = rows["forged awareness shown to a Yjs client (another identity under a good client's id)"]
    assert errors == ["0"], output[-4000:]
    assert forged == ["0"], output[-4000:]
    assert status == 0, output[-4000:]


def test_churn_counts_every_cycle_room_and_session() -> None:
    # Both variants at once: most of each run is waiting for rooms to unload (10 s idle grace).
    variants = ["distinct", "one-room"]
    processes = [start("churn.py", "--cycles", "30", "--concurrency", "4", "--variants", v) for v in variants]
    for variant, process in zip(variants, processes, strict=True):
        status, rows, output = finish(process)
        assert status == 0, output[-4000:]
        row = rows[variant]
        assert row[0] == "30 (20 + 10)", row  # native + /yjs/ cycles
        assert row[-2:] == ["0", "0"], output[-4000:]  # failed cycles, server log errors
        loaded, unloaded = row[-4].split(" / ")
        assert loaded == unloaded, row  # every room that loaded unloaded
        opened, closed = row[-3].split(" / ")
        assert opened == closed, row
        assert row[5].endswith("MiB"), row  # RSS after unload
