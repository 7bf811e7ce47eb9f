"""Private database servers for the tests that need a real one: each started from nothing under
a temporary folder, on a free port of 127.0.0.1, and stopped by its pid.

`.ci/run` installs them with apt-get (Debian's `postgresql`); a machine without them fails the
tests that need them with the command that installs them, rather than skipping them quietly.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

START_TIMEOUT = 60.0
"""Seconds a server may take to accept connections."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("postgres")
    if on_path:
        return Path(on_path).parent
    pytest.fail("PostgreSQL is not installed: apt-get install postgresql (.ci/run does)", pytrace=False)


def _as_postgres_user() -> dict[str, str]:
    """PostgreSQL refuses to run as root: run it as the `postgres` user Debian's package made."""
    return {"user": "postgres", "group": "postgres", "extra_groups": []} if os.geteuid() == 0 else {}


@dataclass
class PostgresServer:
    port: int
    process: subprocess.Popen[bytes]
    folder: Path
    admin_dsn: str

    def fresh_dsn(self) -> str:
        """A connection string that sees nothing any other test made: a new schema first on its
        search path (a new database would take ~0.3 s)."""
        import psycopg

        name = f"t{time.monotonic_ns()}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}")  # type: ignore[arg-type]
        return f"{self.admin_dsn}?options=-csearch_path%3D{name}"

    def fresh_database(self) -> str:
        """A connection string to a new database of its own: for a second plain Plait, whose
        writer's advisory lock is database-wide (a schema is not enough)."""
        import psycopg

        name = f"d{time.monotonic_ns()}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
        return f"{self.admin_dsn.rsplit('/', 1)[0]}/{name}"

    def terminate(self, pid: int) -> int:
        """End the backends of the Plait stores process `pid` opened (they name themselves
        `plait PID@HOST`): what a database restart or a dropped network does to them. How many."""
        import psycopg

        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE %s", (f"plait {pid}@%",)
            ).fetchall()
        return len(rows)

    def _processes(self) -> list[psutil.Process]:
        # The postmaster and its children (each backend is a process group of its own).
        top = psutil.Process(self.process.pid)
        return [top, *top.children(recursive=True)]

    def pause(self) -> None:
        """Stop the postmaster and every backend (SIGSTOP): a stalled database, whose TCP
        connections stay open and take requests that nobody answers."""
        for process in self._processes():
            process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        for process in self._processes():
            process.send_signal(signal.SIGCONT)


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster of its own (trust auth for user `plait`, on 127.0.0.1 only)."""
    bin_dir = _postgres_bin()
    folder = Path(tempfile.mkdtemp(prefix="plait-pg-"))
    runas = _as_postgres_user()
    if runas:
        shutil.chown(folder, "postgres", "postgres")
    data = folder / "data"
    subprocess.run(
        [str(bin_dir / "initdb"), "-D", str(data), "-U", "plait", "-A", "trust", "-E", "UTF8", "--no-sync"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=folder, **runas,  # type: ignore[call-overload]
    )
    port = free_port()
    log = open(folder / "server.log", "wb")  # closed below, after the server stops
    process = subprocess.Popen(
        [str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(folder),
         "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=100", "-c", "shared_buffers=16MB"],
        stdout=log, stderr=subprocess.STDOUT, cwd=folder, **runas,  # type: ignore[call-overload]
    )
    try:
        server = PostgresServer(port, process, folder, f"postgresql://plait@127.0.0.1:{port}/postgres")
        _wait_ready(server)
        yield server
    finally:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(process.pid).children(recursive=True):
                child.send_signal(signal.SIGCONT)
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGCONT)
            process.send_signal(signal.SIGQUIT)  # immediate shutdown: no checkpoint, its folder goes next
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def _wait_ready(server: PostgresServer) -> None:
    import psycopg

    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"postgres exited: {(server.folder / 'server.log').read_text(errors='replace')}")
        try:
            with psycopg.connect(server.admin_dsn, connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # polling a starting server: there is nothing to wait on


def _redis_bin() -> str:
    found = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)
    if found is None:
        pytest.fail("Redis is not installed: apt-get install redis-server (.ci/run does)", pytrace=False)
    return found


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]
    folder: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def flush(self) -> None:
        """Forget everything (a fresh Redis for the next test)."""
        _redis_command(self.port, b"FLUSHALL")

    def pause(self) -> None:
        """SIGSTOP: a Redis that keeps its connections open and answers nothing."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Kill it (-9: no save; it keeps nothing on disk) and start a new one on the same port:
        every connection drops, every stream and key is gone."""
        self.process.kill()
        self.process.wait()
        self.process = _start_redis(self.port, self.folder)


def _start_redis(port: int, folder: Path) -> subprocess.Popen[bytes]:
    log = open(folder / "server.log", "ab")
    process = subprocess.Popen(
        [_redis_bin(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(folder), "--daemonize", "no"],
        stdout=log, stderr=subprocess.STDOUT, cwd=folder,
    )
    log.close()  # the child has its own copy
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited: {(folder / 'server.log').read_text(errors='replace')}")
        try:
            _redis_command(port, b"PING")
            return process
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)  # polling a starting server: there is nothing to wait on


def _redis_command(port: int, command: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(command + b"\r\n")
        return s.recv(1024)


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    """A Redis of its own on a free port of 127.0.0.1, keeping nothing on disk."""
    folder = Path(tempfile.mkdtemp(prefix="plait-redis-"))
    port = free_port()
    server = RedisServer(port, _start_redis(port, folder), folder)
    try:
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            server.process.send_signal(signal.SIGCONT)
            server.process.kill()
        server.process.wait()
        shutil.rmtree(folder, ignore_errors=True)
