"""Hooks an embedding application implements: authentication, authorisation, events.

Subclass `Hooks` and override what you need; every method has a safe default (anonymous users,
full access, events unchanged). Hooks run on the Trio thread and may await.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, TypeVar

import pycrdt
import trio

from plait.protocol import MAX_DEPTH, Access, ErrorCode, ProtocolError, check_value, wire_size

from ._errors import RequestError

logger = logging.getLogger("plait.hooks")
T = TypeVar("T")
MIN_ANONYMOUS_KEY, MAX_ANONYMOUS_KEY = 16, 128
MAX_IDENTITY_ID = 256
"""Characters of identity["id"]: it travels as event.user (spec §4, str≤256)."""

ACCESS_BY_NAME: dict[str, Access | None] = {"read": Access.READ, "comment": Access.COMMENT, "write": Access.WRITE, "none": None}
"""An access by the name people give it (the server API, `plait serve --jwt-default-access`,
a JWT's `rooms` claim); `none` is no access."""

Identity = dict[str, Any]
"""Who is behind a session: a map with at least "id" (a string). Stamped on presence/events."""


CONNECTION_IDENTITY: ContextVar[Callable[[], Awaitable[Identity | None]] | None] = ContextVar("plait_connection_identity", default=None)
"""Who the application that hands the engine a connection says is behind it, asked for at the
session's handshake before `Hooks.authenticate` (plait.engine.asgi's `identity_from_scope`):
an identity, or None to leave it to the token and `Hooks.authenticate`; it may raise
Unauthenticated. Set in the task that serves (or starts) the session; tasks started from it
inherit it. Application code: contained as a hook is."""


class Unauthenticated(Exception):
    """Raise from `Hooks.authenticate` to refuse a token (close 4003)."""


class EventRejected(RequestError):
    """Raise from `Hooks.on_event` to refuse an event.

    Args:
        message: for people; sent in the error frame.
        code: ErrorCode.EVENT_REJECTED, or an application code in 4000..4999.
    """

    def __init__(self, message: str, code: int = ErrorCode.EVENT_REJECTED) -> None:
        if code != ErrorCode.EVENT_REJECTED and not 4000 <= code <= 4999:
            raise ValueError("application error codes are 4000..4999")
        super().__init__(code, message)


class Hooks:
    """Default hooks: every connection is an anonymous user with write access everywhere.

    Every hook is application code run by the engine (spec §8 INTERNAL): an exception other
    than the one a hook documents, a return value of the wrong shape, or a hook running longer
    than `EngineConfig.hook_timeout` is logged with its traceback and fails only the request
    that ran it (a handshake is refused, a join or publish gets INTERNAL). It never stops the
    engine or another connection."""

    def __init__(self, anonymous_prefix: str = "anon-") -> None:
        """`anonymous_prefix`: what the ids of anonymous users without a key start with
        (`anon-1`, `anon-2`, ...). Each process of a cluster needs its own, or two strangers
        on two processes would be one user: an Engine in a cluster gives its default Hooks
        `anon-PROCESS-`; a subclass of Hooks that keeps this method should pass one too."""
        self._anonymous = itertools.count(1)
        self._anonymous_prefix = anonymous_prefix

    async def authenticate(self, token: str | None, client: dict[str, Any]) -> Identity:
        """Turn the hello's token into an identity, or raise Unauthenticated.

        By default everyone is anonymous. A client that sends `anonymous_key` in hello.client
        (spec §4.2; the Python SDK does) is the same anonymous user on every connection, so a
        reconnect is not a second person; its id is derived from the key, which stays secret."""
        key = client.get("anonymous_key")
        if isinstance(key, str) and MIN_ANONYMOUS_KEY <= len(key) <= MAX_ANONYMOUS_KEY:
            return {"id": "anon-" + hashlib.sha256(key.encode()).hexdigest()[:12]}
        return {"id": f"{self._anonymous_prefix}{next(self._anonymous)}"}

    async def expires_at(self, token: str | None, identity: Identity) -> float | None:
        """When the credential `token` (which `authenticate` turned into `identity`) stops
        being valid: wall-clock unix seconds, or None (the default) for never.

        A session whose credential expires is asked for a fresh one shortly before
        (`token_expiring`, spec §5.9); one not refreshed in time is closed with TOKEN_EXPIRED
        (4012). A time already past refuses the token (UNAUTHENTICATED). Called after each
        successful `authenticate` of a hello and of a refresh (JwtHooks: the token's `exp`)."""
        return None

    async def authorize(self, identity: Identity, room: str) -> Access | None:
        """The identity's access to a room: Access.WRITE (edit and publish), Access.COMMENT
        (publish events, not edit), Access.READ, or None (FORBIDDEN)."""
        return Access.WRITE

    async def on_event(self, room: str, identity: Identity | None, name: str, payload: Any) -> Any:
        """Return the payload to broadcast (possibly transformed) or raise EventRejected."""
        return payload

    async def on_room_loaded(self, room: str, doc: pycrdt.Doc) -> None:  # type: ignore[type-arg]
        """A room was loaded from the store, before anyone joins. Edits made to `doc` here (a
        template for a new room, say) are stored and sent like any other. Raising refuses the
        room (joins get STORAGE_UNAVAILABLE) and leaves the stored data untouched."""

    async def on_room_stored(self, room: str, snapshot: bytes) -> None:
        """A new snapshot of the room's document was stored (compaction, or the room unloading):
        the place to mirror documents elsewhere. Errors here are logged, never fail the room."""


class HookFailed(RequestError):
    """An application hook raised an exception it may not raise, returned something invalid,
    or took longer than `EngineConfig.hook_timeout`. The hook's traceback is logged; the
    request is answered with INTERNAL (and a handshake refused with INTERNAL_ERROR). The
    engine and every other connection carry on."""

    def __init__(self, hook: str) -> None:
        super().__init__(ErrorCode.INTERNAL, "internal error")
        self.hook = hook


_PASSING = (trio.Cancelled, KeyboardInterrupt, GeneratorExit)


def application_error(exc: BaseException) -> bool:
    """Whether the engine contains `exc`, raised by application code (hooks, stores, seams, a
    metrics exporter): anything, SystemExit and other BaseExceptions included (a hook calling
    sys.exit must not stop the server for everyone), but Trio's Cancelled, KeyboardInterrupt
    and GeneratorExit, which go on."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(_PASSING) is None
    return not isinstance(exc, _PASSING)


async def call_hook(
    hook: str,
    call: Callable[[], Awaitable[T]],
    timeout: float,
    passes: tuple[type[BaseException], ...] = (),
) -> T:
    """Run application code: what it raises, other than the exceptions its contract lets it
    raise (`passes`), is logged and becomes HookFailed; so does running past `timeout`
    seconds. Cancellation propagates."""
    try:
        with trio.fail_after(timeout):
            return await call()
    except passes:
        raise
    except trio.TooSlowError:
        logger.error("hook %s took longer than %g s", hook, timeout)
        raise HookFailed(hook) from None
    except BaseException as exc:
        if not application_error(exc):
            raise
        logger.error("hook %s failed", hook, exc_info=exc)
        raise HookFailed(hook) from exc


def checked_identity(identity: object, max_bytes: int) -> Identity:
    """What `Hooks.authenticate` returned, if it is an identity: a map with a string "id"
    (1..256 characters) whose values are application values (spec §3.3), of at most
    `max_bytes` encoded (it travels in every presence entry, spec §5.4), so that it can be
    stamped on presence and events and sent in every protocol. Raises HookFailed otherwise."""
    problem = None
    if not isinstance(identity, dict):
        problem = f"returned {type(identity).__name__}, not a map"
    elif not isinstance(identity.get("id"), str) or not 1 <= len(identity["id"]) <= MAX_IDENTITY_ID:
        problem = f'"id" must be a string of 1..{MAX_IDENTITY_ID} characters, got {identity.get("id")!r:.80}'
    else:
        try:
            check_value(identity, MAX_DEPTH)
            size = wire_size(identity)
            if size > max_bytes:
                problem = f"the identity takes {size} bytes, over the {max_bytes}-byte limit (EngineConfig.max_presence_bytes)"
        except ProtocolError as exc:
            problem = exc.message
    if problem is not None:
        logger.error("hook authenticate: %s", problem)
        raise HookFailed("authenticate")
    assert isinstance(identity, dict)
    return identity


def checked_expiry(expiry: object) -> float | None:
    """What `Hooks.expires_at` returned: None or a finite number of unix seconds. Raises
    HookFailed for anything else."""
    if expiry is None:
        return None
    if type(expiry) in (int, float) and math.isfinite(expiry):  # type: ignore[arg-type]
        return float(expiry)  # type: ignore[arg-type]
    logger.error("hook expires_at returned %r, not unix seconds or None", expiry)
    raise HookFailed("expires_at")


def checked_access(access: object) -> Access | None:
    """What `Hooks.authorize` returned: an Access or None. Raises HookFailed
    for anything else."""
    if access is None or isinstance(access, Access):
        return access
    if type(access) is int and access in Access._value2member_map_:
        return Access(access)
    logger.error("hook authorize returned %r, not an Access or None", access)
    raise HookFailed("authorize")
