"""`plait serve`, plus a SIGUSR1 handler for `bench/churn.py --diagnose`: on the signal it
writes to stderr (the server's log file) where the memory is. One line

    DIAG rss=MiB collected=N rss_after_gc=MiB rss_after_trim=MiB

then pymalloc's statistics (sys._debugmallocstats: arenas, bytes in allocated blocks). What
it does changes what later measurements see (it collects garbage, returns free heap to the
system): diagnosis only, never in the same run as the numbers a table reports."""

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


if __name__ == "__main__":
    signal.signal(signal.SIGUSR1, diagnose)
    from plait.engine._cli import main

    sys.exit(main())
