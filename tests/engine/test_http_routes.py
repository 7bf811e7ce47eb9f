"""The port's routing (engine/http/), request by request, without sockets; tests/e2e sends the
same requests over real ones."""

from __future__ import annotations

import h11
import pytest

from plait.engine.http._server import _route

UPGRADE = [("Host", "x"), ("Upgrade", "websocket"), ("Connection", "keep-alive, Upgrade")]


def request(method: str, target: str, headers: list[tuple[str, str]] | None = None) -> h11.Request:
    return h11.Request(method=method, target=target, headers=headers or [("Host", "x")])


@pytest.mark.parametrize("target", ["/", "/yjs/doc?token=t", "/any/path"])
def test_websocket_upgrades_are_served_on_every_path(target: str) -> None:
    assert _route(request("GET", target, UPGRADE), accepting=True) is None


def test_an_upgrade_while_shutting_down_is_503_with_retry_after() -> None:
    refusal = _route(request("GET", "/", UPGRADE), accepting=False)
    assert refusal is not None and refusal.status == 503 and ("Retry-After", "5") in refusal.headers
    assert "shutting down" in refusal.reason


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [("GET", "/", 426), ("HEAD", "/yjs/doc", 426), ("POST", "/", 405), ("DELETE", "/yjs/doc", 405), ("GET", "/favicon.ico", 404),
     ("POST", "/nope", 404)],
)
def test_plain_requests_get_the_status_that_says_why(method: str, target: str, status: int) -> None:
    refusal = _route(request(method, target), accepting=True)
    assert refusal is not None and refusal.status == status and refusal.reason


def test_an_upgrade_header_without_connection_upgrade_is_not_an_upgrade() -> None:
    refusal = _route(request("GET", "/", [("Host", "x"), ("Upgrade", "websocket")]), accepting=True)
    assert refusal is not None and refusal.status == 426
