"""What the soak workloads (bench/hostile.py, bench/churn.py) share beyond bench/_harness.py:
a `plait serve` whose log, at INFO, is kept in a file the workload reads while it runs (rooms
loaded and unloaded, sessions opened and closed, every ERROR and CRITICAL line)."""

from __future__ import annotations

import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import trio
from _harness import Server, free_port  # type: ignore[import-not-found]

# "%(asctime)s %(levelname)s %(name)s: %(message)s", as `plait serve` configures logging.
RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) (?P<logger>[\w.]+): (?P<message>.*)$")


@dataclass
class LogServer:
    server: Server
    log: Path

    def read(self) -> Log:
        return Log(self.log.read_text(errors="replace"))


class Log:
    """The server's log so far, parsed into records (a record's traceback lines follow it)."""

    def __init__(self, text: str) -> None:
        self.records: list[tuple[str, str, str, list[str]]] = []  # level, logger, message, continuation lines
        self.stray: list[str] = []  # lines outside any record (print(), a traceback at exit)
        for line in text.splitlines():
            match = RECORD.match(line)
            if match:
                self.records.append((match["level"], match["logger"], match["message"], []))
            elif self.records:
                self.records[-1][3].append(line)
            else:
                self.stray.append(line)

    def count(self, pattern: str, level: str | None = None) -> int:
        regex = re.compile(pattern)
        return sum(1 for lvl, _, message, _ in self.records if (level is None or lvl == level) and regex.search(message))

    def errors(self) -> list[tuple[str, str, str, list[str]]]:
        """ERROR and CRITICAL records, and tracebacks logged by no record (an exception that
        ended the process lands after whatever line came before it): the internal errors."""
        out = []
        for level, logger, message, more in self.records:
            if level in ("ERROR", "CRITICAL"):
                out.append((level, logger, message, more))
            elif any("Traceback (most recent call last)" in line for line in more):
                out.append(("UNCAUGHT", "-", "a traceback no log record owns (after: " + message[:60] + ")", more))
        if any("Traceback (most recent call last)" in line for line in self.stray):
            out.append(("UNCAUGHT", "-", "a traceback before the first log record", self.stray))
        return out

    def levels(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for level, *_ in self.records:
            out[level] = out.get(level, 0) + 1
        return out


def describe(record: tuple[str, str, str, list[str]]) -> str:
    """One line for an error record: its message and the last line of its traceback."""
    level, logger, message, more = record
    last = next((line.strip(" |") for line in reversed(more) if line.strip(" |") and not line.strip(" |").startswith("+")), "")
    return f"{level} {logger}: {message}" + (f" -- {last}" if last else "")


@contextmanager
def logged_server(*flags: str, keep_log: Path | None = None, diagnose: bool = False) -> Iterator[LogServer]:
    """`plait serve` on a free port, SQLite store in a temporary folder (unless a flag says
    otherwise), logging at INFO to a file; the file is copied to `keep_log` at the end. With
    `diagnose`, SIGUSR1 makes it log where its memory is (bench/_diagserve.py)."""
    with tempfile.TemporaryDirectory(prefix="plait-soak-") as scratch:
        port = free_port()
        log = Path(scratch) / "server.log"
        entry = [str(Path(__file__).parent / "_diagserve.py")] if diagnose else ["-m", "plait.engine._cli"]
        server = Server([sys.executable, *entry, "serve", "--port", str(port), "--data", scratch,
                         "--log-level", "INFO", *flags], port, log)
        try:
            yield LogServer(server, log)
        finally:
            server.stop()
            if keep_log is not None:
                keep_log.write_text(log.read_text(errors="replace"))


async def wait_for(check: Callable[[], bool], timeout: float, every: float = 0.2) -> bool:
    """Poll `check()` until it is true or `timeout` seconds have passed (a server in another
    process has no event to wait on)."""
    with trio.move_on_after(timeout):
        while not check():
            await trio.sleep(every)
        return True
    return False
