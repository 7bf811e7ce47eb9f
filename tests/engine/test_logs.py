"""`plait serve`'s logging (engine/_logs.py)."""

from __future__ import annotations

import io
import logging

from plait.engine._logs import configure_logging


def test_coredis_own_connection_errors_are_not_logged_the_cluster_says_them() -> None:
    """coredis logs a failed connection attempt as an ERROR and a second line, "NoneType: None";
    the cluster logs what failed itself, once, in one line."""
    coredis_logger = logging.getLogger("coredis")
    level = coredis_logger.level
    try:
        configure_logging("INFO", stream=io.StringIO())
        assert not coredis_logger.isEnabledFor(logging.ERROR)
        assert logging.getLogger("plait.cluster").isEnabledFor(logging.ERROR)
    finally:
        coredis_logger.setLevel(level)
