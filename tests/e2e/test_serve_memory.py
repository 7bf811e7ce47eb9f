"""`plait serve` on Linux with glibc runs on the C allocator (PYTHONMALLOC=malloc), so that the
memory a busy spell used can go back to the system (engine/_cli.py `use_the_c_allocator`,
bench/README.md "Churn"); a PYTHONMALLOC the user set wins. Real processes on 127.0.0.1; every
wait is bounded."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

pytestmark = pytest.mark.slow


def glibc() -> bool:
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (AttributeError, ValueError, OSError):
        return False


@pytest.mark.skipif(not glibc() or not Path("/proc/self/environ").exists(), reason="Linux with glibc only")
@pytest.mark.parametrize(("given", "used"), [(None, "malloc"), ("pymalloc", "pymalloc")])
async def test_plait_serve_runs_on_the_c_allocator_unless_told_otherwise(tmp_path: Path, given: str | None, used: str) -> None:
    env = {name: value for name, value in os.environ.items() if name != "PYTHONMALLOC"}
    if given is not None:
        env["PYTHONMALLOC"] = given
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "plait.engine._cli", "serve", "--port", "0", "--data", str(tmp_path), "--store", "memory"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**env, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        seen = b""
        with trio.fail_after(60):
            while not re.search(rb"serving on ws://127.0.0.1:\d+/", seen):
                chunk = await process.stdout.receive_some(1024)
                assert chunk, f"server exited: {seen!r}"
                seen += chunk
        # The same process (the pid a supervisor knows), now running with the variable set.
        environ = Path(f"/proc/{process.pid}/environ").read_bytes().split(b"\0")
        assert f"PYTHONMALLOC={used}".encode() in environ
        process.send_signal(signal.SIGINT)
        with trio.fail_after(30):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
