"""The README's Python examples are the files under examples/, verbatim, and they run: the
embedding example serves on a free port, the client example joins it, edits, chats, and a
read-only user's edit raises Forbidden; Ctrl-C stops the server without a traceback."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
EXAMPLES = ROOT / "examples"
pytestmark = pytest.mark.slow


def readme_python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_every_python_block_of_the_readme_is_an_example_file() -> None:
    blocks = readme_python_blocks()
    files = {path.name: path.read_text(encoding="utf-8") for path in EXAMPLES.glob("*.py")}
    assert sorted(blocks) == sorted(files.values()), "README.md's ```python blocks must be examples/*.py verbatim"


def run_client(port: int, token: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / "client.py"), f"ws://127.0.0.1:{port}/", token],
        capture_output=True, text=True, timeout=60, cwd=cwd, check=False,
    )


def test_the_embedding_and_client_examples_run_as_written(tmp_path: Path) -> None:
    server = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "embed.py"), "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        match = re.fullmatch(r"serving on ws://127\.0\.0\.1:(\d+)/\n", first)
        assert match, first + (server.stderr.read() if server.poll() is not None and server.stderr else "")
        port = int(match.group(1))

        ada = run_client(port, "secret-ada", tmp_path)
        assert ada.returncode == 0, ada.stderr
        assert ada.stdout.splitlines() == ["chat {'text': 'hi'}", "hello Welcome!", ""]

        bob = run_client(port, "secret-bob", tmp_path)  # read-only in the example's hooks
        assert bob.returncode == 1
        assert bob.stderr.strip().splitlines()[-1].startswith("plait.client._errors.Forbidden: read-only member")
    finally:
        server.send_signal(signal.SIGINT)
        try:
            _, err = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()  # a hang fails the test without leaving the process behind
            server.communicate()
            raise
    assert server.returncode == 0 and "Traceback" not in err, err
