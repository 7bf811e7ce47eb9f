"""`plait serve` with two signal handlers for the soak workloads' --diagnose, each writing to
stderr (the server's log file):

- SIGUSR1 (bench/churn.py): where the memory is. One line

      DIAG rss=MiB collected=N rss_after_gc=MiB rss_after_trim=MiB

  then pymalloc's statistics (sys._debugmallocstats: arenas, bytes in allocated blocks). It
  changes what later measurements see (it collects garbage, returns free heap to the system):
  diagnosis only, never in the same run as the numbers a table reports.
- SIGUSR2 (bench/hostile.py): every Trio task still alive and the line it waits at, between
  "TASKS" and "TASKS end" (a server that stopped serving but did not exit).

With PLAIT_BENCH_DEFAULT_GC=1 in its environment the server keeps Python's default garbage
collector thresholds instead of the higher ones `plait serve` sets (engine/_cli.py tune_gc)."""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import sys
from typing import Any


def rss_mib() -> float:
    with open(f"/proc/{os.getpid()}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def diagnose(*_: Any) -> None:
    before = rss_mib()
    collected = gc.collect()
    after_gc = rss_mib()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    sys.stderr.write(f"DIAG rss={before:.1f} collected={collected} rss_after_gc={after_gc:.1f} "
                     f"rss_after_trim={rss_mib():.1f}\n")
    sys.stderr.flush()
    sys._debugmallocstats()  # C-level stderr
    sys.stderr.write("DIAG end\n")
    sys.stderr.flush()


def tasks(*_: Any) -> None:
    import trio

    lines = ["TASKS"]

    def where(coro: Any) -> str:
        frames = []
        while coro is not None and hasattr(coro, "cr_frame"):
            if coro.cr_frame is not None:
                frames.append(f"{coro.cr_code.co_filename.rsplit('/', 2)[-1]}:{coro.cr_frame.f_lineno} {coro.cr_code.co_name}")
            coro = coro.cr_await
        return " > ".join(frames[-3:])

    def walk(task: Any, depth: int) -> None:
        lines.append(f"{'  ' * depth}{task.name}: {where(task.coro)}")
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child, depth + 1)

    try:
        walk(trio.lowlevel.current_root_task(), 0)
    except RuntimeError as exc:  # not inside trio.run
        lines.append(f"no Trio run: {exc}")
    sys.stderr.write("\n".join(lines) + "\nTASKS end\n")
    sys.stderr.flush()


if __name__ == "__main__":
    signal.signal(signal.SIGUSR1, diagnose)
    signal.signal(signal.SIGUSR2, tasks)
    import plait.engine._cli as cli

    if os.environ.get("PLAIT_BENCH_DEFAULT_GC"):
        cli.tune_gc = lambda: None
    from plait.engine._cli import main

    sys.exit(main())
