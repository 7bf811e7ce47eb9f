"""The JavaScript client SDK (js/) against a real `plait serve`: its own Node test suite
(js/test/*.test.mjs), which starts servers with this Python, so what is tested is this tree."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
JS = ROOT / "js"

pytestmark = pytest.mark.slow


def test_the_js_sdk_suite_passes() -> None:
    node = shutil.which("node")
    assert node is not None, "the JS SDK tests need Node.js 20 or later on PATH"
    assert (JS / "node_modules").is_dir(), "js/node_modules is missing: run `(cd js && npm ci)` first"
    tests = sorted(str(p.relative_to(JS)) for p in (JS / "test").glob("*.test.mjs"))
    assert tests, "no js/test/*.test.mjs found"
    env = {**os.environ, "PLAIT_PYTHON": sys.executable}
    # A process group of its own: the servers the tests start go with it, also when it is
    # stopped for taking too long (they would outlive it, each holding a port).
    node_run = subprocess.Popen([node, "--test", "--test-concurrency=4", *tests], cwd=JS, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = node_run.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(node_run.pid, signal.SIGKILL)
        stdout, stderr = node_run.communicate()
        pytest.fail(f"node --test did not finish in 240 s:\n{stdout[-20000:]}\n{stderr[-5000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node_run.pid, signal.SIGKILL)  # anything of it still running
    assert node_run.returncode == 0, f"node --test failed (exit {node_run.returncode}):\n{stdout[-20000:]}\n{stderr[-5000:]}"


def test_the_type_declarations_check_and_serve_a_strict_typescript_user() -> None:
    """`npm run typecheck` (the JSDoc of js/src/ against its declarations) and a TypeScript
    user's code (js/test/types/consumer.ts) compiled with --strict against them."""
    assert (JS / "node_modules" / ".bin" / "tsc").exists(), "js/node_modules is missing: run `(cd js && npm ci)` first"
    tsc = [str(JS / "node_modules" / ".bin" / "tsc"), "--noEmit"]
    consumer = subprocess.run(
        [*tsc, "--strict", "--target", "es2022", "--module", "nodenext", "--moduleResolution", "nodenext",
         "--lib", "es2022,dom", "test/types/consumer.ts"],
        cwd=JS, capture_output=True, text=True, timeout=120,
    )
    assert consumer.returncode == 0, consumer.stdout + consumer.stderr
    typecheck = subprocess.run(["npm", "run", "-s", "typecheck"], cwd=JS, capture_output=True, text=True, timeout=120)
    assert typecheck.returncode == 0, typecheck.stdout + typecheck.stderr
