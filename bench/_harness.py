"""What every workload script shares: start a server as a subprocess on 127.0.0.1 and watch its
CPU and memory, start load-generating Node processes (bench/js/load.mjs), release them at one
instant and collect what they measured. Every wait here is bounded."""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

BENCH = Path(__file__).resolve().parent
LOAD_SCRIPT = BENCH / "js" / "load.mjs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def machine() -> str:
    memory = psutil.virtual_memory().total / 2**30
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    return (f"{os.cpu_count()} cores ({platform.machine()}), {memory:.0f} GiB, "
            f"CPython {platform.python_version()}, Node {node}, "
            f"Linux {platform.release()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {speed()}")


def speed() -> str:
    """This machine's speed at the moment, which drifts by 2-3x within a day (bench/README.md):
    a pure Python loop, and a 1-byte round trip over loopback TCP (four system calls, the
    kernel's network path that every delivery takes). Compare results only between runs whose
    speed reads alike."""
    start = time.perf_counter()
    total = 0
    for i in range(1_000_000):
        total += i
    python_ms = (time.perf_counter() - start) * 1000
    with socket.create_server(("127.0.0.1", 0)) as listener:
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
        with a, b:
            for s in (a, b):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            rounds = 2000
            start = time.perf_counter()
            for _ in range(rounds):
                a.send(b"x")
                b.recv(1)
                b.send(b"y")
                a.recv(1)
            round_trip_us = (time.perf_counter() - start) / rounds * 1e6
    return f"speed now: 10^6 Python additions {python_ms:.0f} ms, loopback round trip {round_trip_us:.1f} µs"


class Server:
    """A server process: its port, and its CPU time and memory as the kernel counts them."""

    def __init__(self, argv: Sequence[str], port: int, log: Path) -> None:
        self.port = port
        self._log = log.open("w")
        self.popen = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                      env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.process = psutil.Process(self.popen.pid)
        deadline = time.monotonic() + 30
        while True:  # ready once it accepts a connection
            if self.popen.poll() is not None:
                raise SystemExit(f"server exited with {self.popen.returncode}: {log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"server did not listen on {port} within 30 s") from None
                time.sleep(0.05)

    def cpu_seconds(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def rss(self) -> int:
        return int(self.process.memory_info().rss)

    def reset_peak_rss(self) -> None:
        # Writing 5 to clear_refs resets VmHWM, the kernel's record of the peak RSS.
        Path(f"/proc/{self.popen.pid}/clear_refs").write_text("5")

    def peak_rss(self) -> int:
        match = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{self.popen.pid}/status").read_text())
        assert match is not None
        return int(match.group(1)) * 1024

    def stop(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=10)
        self._log.close()


@contextmanager
def plait_server(*flags: str, data: Path | None = None) -> Iterator[Server]:
    """`plait serve` on a free port with its data in `data` or a temporary folder (SQLite
    unless a flag says otherwise)."""
    with tempfile.TemporaryDirectory(prefix="plait-bench-") as scratch:
        data = data or Path(scratch)
        port = free_port()
        server = Server([sys.executable, "-m", "plait.engine._cli", "serve", "--port", str(port), "--data", str(data),
                         "--log-level", "WARNING", *flags], port, Path(scratch) / "server.log")
        try:
            yield server
        finally:
            server.stop()


@contextmanager
def pycrdt_websocket_server() -> Iterator[Server]:
    """pycrdt-websocket served the way its own tests serve it (bench/peers/)."""
    with tempfile.TemporaryDirectory(prefix="pycrdt-bench-") as data:
        port = free_port()
        server = Server([sys.executable, str(BENCH / "peers" / "pycrdt_websocket_server.py"), str(port)],
                        port, Path(data) / "server.log")
        try:
            yield server
        finally:
            server.stop()


HOCUSPOCUS = BENCH / "peers" / "hocuspocus"


@contextmanager
def hocuspocus_server(*, sqlite: bool = False) -> Iterator[Server]:
    """Hocuspocus 4.7 (@hocuspocus/server, default settings) under Node, in memory or with its
    SQLite extension (bench/peers/hocuspocus/; `npm ci` there first)."""
    if not (HOCUSPOCUS / "node_modules" / "@hocuspocus" / "server").is_dir():
        raise SystemExit(f"Hocuspocus is not installed: (cd {HOCUSPOCUS} && npm ci)")
    with tempfile.TemporaryDirectory(prefix="hocuspocus-bench-") as data:
        port = free_port()
        argv = ["node", str(HOCUSPOCUS / "server.mjs"), str(port), *([str(Path(data) / "hocuspocus.db")] if sqlite else [])]
        server = Server(argv, port, Path(data) / "server.log")
        try:
            yield server
        finally:
            server.stop()


@dataclass
class Measured:
    """What one released load measured: each process's result, the server's CPU seconds and
    the wall time between the release and the end, and the server's peak RSS in between."""

    results: list[dict[str, Any]]
    wall: float
    server_cpu: float
    server_peak_rss: int
    server_rss_after: int
    load_cpu: float
    clients: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for result in self.results:
            self.clients.extend(result["clients"])
            self.errors.extend(result["errors"])


class Load:
    """Node processes sharing out `clients` ((client id, room) pairs) round-robin, each running
    `script` (bench/js/load.mjs unless told)."""

    def __init__(
        self, server: Server, config: dict[str, Any], clients: list[tuple[int, str]], processes: int, script: Path = LOAD_SCRIPT
    ) -> None:
        self.server = server
        self._dir = tempfile.TemporaryDirectory(prefix="plait-load-")
        self.procs: list[subprocess.Popen[str]] = []
        self.outs: list[Path] = []
        for i in range(processes):
            out = Path(self._dir.name) / f"load-{i}.json"
            share = clients[i::processes]
            if not share:
                continue
            argv = ["node", *os.environ.get("PLAIT_BENCH_NODE_FLAGS", "").split(), str(script),
                    json.dumps({**config, "clients": share, "out": str(out), "seed": i + 1})]
            self.procs.append(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                               cwd=BENCH / "js"))
            self.outs.append(out)

    def _line(self, proc: subprocess.Popen[str], key: str, timeout: float) -> dict[str, Any]:
        result: dict[str, Any] = {}

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                message = json.loads(line)
                if key in message:
                    result.update(message)
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        if not result:
            self.kill()
            raise SystemExit(f"a load process did not report {key!r} within {timeout:.0f} s")
        return result

    def ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            self._line(proc, "ready", max(1.0, deadline - time.monotonic()))

    def run(self, timeout: float, before_go: Any = None) -> Measured:
        """Release every process at once, wait for all to finish, measure the server meanwhile."""
        server = self.server
        if before_go is not None:
            before_go()
        server.reset_peak_rss()
        profiler = self._start_profiler()
        cpu0, t0 = server.cpu_seconds(), time.monotonic()
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        deadline = t0 + timeout
        for proc in self.procs:
            self._line(proc, "done", max(1.0, deadline - time.monotonic()))
        wall, cpu = time.monotonic() - t0, server.cpu_seconds() - cpu0
        peak, rss = server.peak_rss(), server.rss()
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(timeout=60)
        for proc in self.procs:
            proc.wait(timeout=30)
        results = [json.loads(out.read_text()) for out in self.outs]
        self._dir.cleanup()
        for result in results:
            for error in result["errors"][:3]:
                print(f"  load error: {error}", file=sys.stderr)
        return Measured(results, wall, cpu, peak, rss, sum(r["cpuSeconds"] for r in results))

    def _start_profiler(self) -> subprocess.Popen[bytes] | None:
        """With PLAIT_BENCH_PROFILE=FILE, py-spy samples the server while the load runs and
        writes collapsed stacks to FILE (py-spy needs ptrace: run as root or allow it)."""
        out = os.environ.get("PLAIT_BENCH_PROFILE")
        if not out:
            return None
        profiler = subprocess.Popen(["py-spy", "record", "--pid", str(self.server.popen.pid), "--format", "raw",
                                     "--rate", os.environ.get("PLAIT_BENCH_PROFILE_RATE", "200"), "--output", out, "--nonblocking"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # attached before the load starts
        return profiler

    def kill(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(timeout=10)
        self._dir.cleanup()


def percentile(sorted_values: Sequence[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" if i == 0 else "---:" for i in range(len(header))) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"
