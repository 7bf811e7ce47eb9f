"""The demo page's built files (engine/demo/, served by `plait serve` at /demo/) are what its
sources build: js/build.mjs --check rebuilds them from js/demo/ and js/src/ with the pinned
esbuild into a temporary folder and names every file that differs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
JS = ROOT / "js"


@pytest.mark.slow
def test_the_committed_demo_files_are_what_the_sources_build() -> None:
    node = shutil.which("node")
    assert node is not None, "node is not installed: the demo page is built with it (apt-get install nodejs npm)"
    assert (JS / "node_modules" / "esbuild").is_dir(), "js/node_modules is missing: run (cd js && npm ci) first"
    result = subprocess.run([node, "build.mjs", "--check"], cwd=JS, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (
        f"engine/demo/ does not match js/demo/ and js/src/:\n{result.stdout}{result.stderr}"
        "run (cd js && npm ci && node build.mjs) and commit engine/demo/"
    )
