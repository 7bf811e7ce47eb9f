"""`plait serve` on Linux with glibc runs on the C allocator (PYTHONMALLOC=malloc), so that the
memory a busy spell used can go back to the system (engine/_cli.py `use_the_c_allocator`,
bench/README.md "Churn"); a PYTHONMALLOC the user set wins. Real processes on 127.0.0.1; every
wait is bounded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .serveprocess import plait_serve

pytestmark = pytest.mark.slow


def glibc() -> bool:
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (AttributeError, ValueError, OSError):
        return False


@pytest.mark.skipif(not glibc() or not Path("/proc/self/environ").exists(), reason="Linux with glibc only")
@pytest.mark.parametrize(("given", "used"), [(None, "malloc"), ("pymalloc", "pymalloc")])
async def test_plait_serve_runs_on_the_c_allocator_unless_told_otherwise(
    tmp_path: Path, given: str | None, used: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYTHONMALLOC", raising=False)  # the server inherits this environment
    env = {"PYTHONMALLOC": given} if given is not None else {}
    async with plait_serve("--port", "0", "--data", str(tmp_path), "--store", "memory", env=env) as served:
        # The same process (the pid a supervisor knows), now running with the variable set.
        environ = Path(f"/proc/{served.process.pid}/environ").read_bytes().split(b"\0")
        assert f"PYTHONMALLOC={used}".encode() in environ
