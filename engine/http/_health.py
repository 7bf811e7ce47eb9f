"""`/healthz` and `/readyz` on the engine's port, for a load balancer or an orchestrator.

- `/healthz`: alive. 200 `{"status": "alive"}` while the process serves requests at all.
- `/readyz`: ready for new connections. 200 `{"status": "ready"}` while the engine accepts
  and its store answers a ping (the store's optional `ping()`, see storage/_store.py); else
  503 `{"status": "unready", "reason": ...}` with `Retry-After`: shutting down, the store
  failed or did not answer within `timeout` seconds, or (a cluster) this process cannot
  reach the others.

Both answer GET and HEAD only (405 otherwise); a body of more than a kilobyte is 413, a query
string is ignored. The answers say nothing about rooms or users.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

import h11
import trio

from .._hooks import application_error
from .._metrics import Metrics
from ._exchange import Exchange, Refusal

logger = logging.getLogger("plait.http")

MAX_BODY_BYTES = 1024
"""A probe has nothing to say in a body; one that sends this much more is refused (413)."""
READY_TIMEOUT = 2.0
"""Seconds a store's ping may take before /readyz says the store did not answer."""
ALLOWED = (b"GET", b"HEAD")


async def check_method(ex: Exchange, request: h11.Request) -> None:
    """Refuse a method other than GET and HEAD (405), read past any body (413 past a
    kilobyte), so that the connection can carry the next request.

    Raises:
        Refusal: 405 or 413 (JSON).
    """
    if request.method not in ALLOWED:
        method = request.method.decode("ascii", "replace")[:20]
        raise Refusal(405, f"{method} is not served here; GET or HEAD is", (("Allow", "GET, HEAD"),), as_json=True)
    await ex.body(MAX_BODY_BYTES)


def _json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"  # a line, for curl in a terminal


class Health:
    """The two routes, and the store's ping behind /readyz: one ping at a time, whatever the
    number of probes (a hung store holds one worker thread, not one per probe).

    Args:
        accepting: whether the engine takes new connections (False while shutting down).
        ping: the store's `ping()`, or None for a store without one (always reachable).
        nursery: where the ping runs (the engine's), so a probe that gives up leaves it running
            rather than piling up another.
        metrics: a failed ping counts as a store error (`store_errors`, label `ping`).
        timeout: seconds a probe waits for the ping.
        linked: whether this process hears the other processes of its cluster (always, alone).
    """

    def __init__(
        self,
        accepting: Callable[[], bool],
        ping: Callable[[], Awaitable[object]] | None,
        nursery: Callable[[], trio.Nursery],
        metrics: Metrics,
        timeout: float = READY_TIMEOUT,
        linked: Callable[[], bool] = lambda: True,
    ) -> None:
        self._accepting = accepting
        self._linked = linked
        self._ping = ping
        self._nursery = nursery
        self._metrics = metrics
        self.timeout = timeout
        self._pinging: tuple[trio.Event, list[str]] | None = None
        """While a ping runs: set when it ends, and the reason it failed (if it did)."""

    async def healthz(self, ex: Exchange, request: h11.Request) -> None:
        await check_method(ex, request)
        await ex.respond(200, _json({"status": "alive"}), "application/json")

    async def readyz(self, ex: Exchange, request: h11.Request) -> None:
        await check_method(ex, request)
        reason = await self.unready()
        if reason is None:
            await ex.respond(200, _json({"status": "ready"}), "application/json")
        else:
            await ex.respond(503, _json({"status": "unready", "reason": reason}), "application/json", (("Retry-After", "5"),))

    async def unready(self) -> str | None:
        """Why the engine is not ready (a sentence), or None if it is."""
        if not self._accepting():
            return "shutting down"
        if not self._linked():
            return "the link to the server's other processes is down"
        if self._ping is None:
            return None
        if self._pinging is None:
            self._pinging = trio.Event(), []
            self._nursery().start_soon(self._run_ping, self._ping, *self._pinging)
        done, failure = self._pinging
        with trio.move_on_after(self.timeout):
            await done.wait()
            return failure[0] if failure else None
        return f"the store did not answer within {self.timeout:g} s"

    async def _run_ping(self, ping: Callable[[], Awaitable[object]], done: trio.Event, failure: list[str]) -> None:
        try:
            await ping()
        except BaseException as exc:  # a store's failure, or a bug in a third-party store
            if not application_error(exc):
                raise
            # The store's own words (paths) are for the log, not for whoever can reach the port.
            logger.error("readiness: the store's ping failed: %s", exc, exc_info=exc)
            self._metrics.add("store_errors", 1, "ping")
            failure.append(f"the store failed ({type(exc).__name__})")
        finally:
            self._pinging = None
            done.set()
