"""The `plait` command: `plait serve` runs the standalone engine; `inspect`, `replay`, `client`.

A mistake in the command line (or in `plait serve`'s environment variables or config file,
engine/_settings.py), a missing or bad input file, or a resource the system refuses
(port taken, store locked by another server, folder not writable) is one line on stderr,
`plait COMMAND: FLAG VALUE: what is wrong`, and exit status 2 (usage) or 1 (failed); a
traceback means a bug. `plait serve` checks what it can before it says "serving".
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import gc
import importlib.util
import json
import logging
import os
import re
import signal
import socket
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn

import prometheus_client
import pycrdt
import trio
from plait.protocol import MAX_ROOM_NAME, MiB
from plait.storage import FileStore, MemoryStore, PostgreSQLStore, SQLiteStore, StorageError, Store, StoreLocked

from ._admin import AdminError
from ._admin import add_commands as add_admin_commands
from ._admin import run as run_admin
from ._api import KEY_RULE, good_api_key, serve_api
from ._config import EngineConfig
from ._engine import Engine
from ._handle import root_value
from ._hooks import ACCESS_BY_NAME, Hooks
from ._logs import LOG_FORMATS, configure_logging
from ._metrics import NO_METRICS, Metrics
from ._prometheus import PrometheusMetrics
from ._record import TraceRecorder
from ._settings import ENV_PREFIX, SettingError, hide_password, resolve, settings_toml, unknown_variables
from .http._demo import Demo, DemoMissing, load_assets

if TYPE_CHECKING:
    from plait.client import PlaitError

logger = logging.getLogger("plait")

DEFAULT_PORT = 8765


USAGE: Final = 2
"""Exit status for a mistake in the command line (argparse uses it too)."""
FAILED: Final = 1
"""Exit status for a command that could not do its work (port taken, store locked, bad file)."""
INTERRUPTED: Final = 130

STORE_FORMS: Final = ("memory", "sqlite", "sqlite:PATH", "files", "files:DIR", "postgresql://USER@HOST:PORT/DB")
"""What `--store` takes; the help, the errors and the README list exactly these."""


class CommandError(Exception):
    """A mistake by the person running `plait`, or a refusal from the system: shown as one line
    `plait COMMAND: MESSAGE` on stderr, never as a traceback, and the process exits `status`."""

    def __init__(self, message: str, status: int = FAILED) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class StoreChoice:
    """A parsed `--store`/`--data` pair: which backend, where, and how to name it in an error."""

    kind: str
    """memory, sqlite, files or postgresql."""
    path: Path | None
    flag: str
    """The flag that chose the location, as the user typed it (its password hidden):
    `--store sqlite:x.db` or `--data DIR`."""
    dsn: str | None = None
    """postgresql: the connection URL."""

    def make(self, *, read_only: bool = False, shared: bool = False) -> Store:
        """`shared`: PostgreSQL written by several processes at once (a cluster)."""
        if self.kind == "postgresql":
            assert self.dsn is not None
            return PostgreSQLStore(self.dsn, read_only=read_only, shared=shared)
        if self.kind == "sqlite":
            assert self.path is not None
            return SQLiteStore(self.path, read_only=read_only)
        if self.kind == "files":
            assert self.path is not None
            return FileStore(self.path, read_only=read_only)
        return MemoryStore()


def choose_store(url: str | None, data: Path) -> StoreChoice:
    """`memory`, `sqlite` (DATA/plait.db), `sqlite:PATH`, `files` (DATA/files), `files:DIR`, or a
    PostgreSQL URL (`postgresql://` or `postgres://`; psycopg, the `postgres` extra).

    Raises:
        CommandError: (status USAGE) an unknown form, an empty PATH or DIR, a PostgreSQL URL
            without psycopg installed.
    """
    data_flag = f"--data {data}"
    if url is not None and url.startswith(("postgresql://", "postgres://")):
        flag = f"--store {hide_password(url)}"
        if importlib.util.find_spec("psycopg") is None:
            raise CommandError(f"{flag}: the PostgreSQL store needs psycopg: pip install 'plait[postgres]'", USAGE)
        return StoreChoice("postgresql", None, flag, dsn=url)
    if url is None or url == "sqlite":
        return StoreChoice("sqlite", data / "plait.db", data_flag)
    if url == "memory":
        return StoreChoice("memory", None, f"--store {url}")
    if url == "files":
        return StoreChoice("files", data / "files", data_flag)
    for kind, form in (("sqlite", "sqlite:PATH"), ("files", "files:DIR")):
        if url.startswith(kind + ":"):
            where = url.removeprefix(kind + ":")
            if not where:
                raise CommandError(f"--store {url!r}: no path after the colon ({form})", USAGE)
            return StoreChoice(kind, Path(where), f"--store {url}")
    raise CommandError(f"--store {url}: unknown store (use {', '.join(STORE_FORMS)})", USAGE)


async def inspect(choice: StoreChoice, room: str, out: Any = None) -> None:
    """Print a room's stored state without starting a server. The store is opened read-only
    and unlocked, so this works while a server runs on it.

    Raises:
        CommandError: the store cannot be read, or holds no room of that name.
    """
    if choice.kind == "memory":
        raise CommandError(f"{choice.flag}: a new memory store holds no rooms to inspect", USAGE)
    store = choice.make(read_only=True)
    try:
        data = await store.load(room)
    except StorageError as exc:
        raise CommandError(f"{choice.flag}: {exc}") from None
    finally:
        await store.aclose()
    if data.snapshot is None and not data.updates and not data.events:
        raise CommandError(f"no room {room!r} in {choice.path or choice.flag.removeprefix('--store ')}")
    out = out or sys.stdout
    doc: pycrdt.Doc[Any] = pycrdt.Doc()
    for update in ([data.snapshot] if data.snapshot else []) + list(data.updates):
        doc.apply_update(update)
    print(f"room: {room}", file=out)
    print(f"snapshot: {len(data.snapshot or b'')} bytes", file=out)
    print(f"updates since snapshot: {len(data.updates)} ({sum(map(len, data.updates))} bytes)", file=out)
    print(f"document: {len(doc.get_update())} bytes encoded", file=out)
    first_last = f", seq {data.events[0].seq}..{data.events[-1].seq}" if data.events else ""
    print(f"event history: {len(data.events)} events{first_last}", file=out)
    for name in sorted(doc.keys()):
        print(f"  {name}: {json.dumps(root_value(doc, name), ensure_ascii=False, default=repr)}", file=out)


def tune_gc() -> None:
    """A server holds many long-lived objects (rooms, sessions, documents) and allocates
    short-lived ones per frame. With the default thresholds the cycle collector runs every 700
    allocations and regularly walks the long-lived heap; a busy server spent a tenth of its time
    there (bench/README.md). Startup objects are frozen out of collection and collections made
    rarer; reference counting still frees everything that is not a cycle at once, and the
    cycles a busy spell leaves are collected once the load has dropped (RECLAIM_INTERVAL)."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


RECLAIM_INTERVAL: Final = 15.0
"""`plait serve` looks this often whether to give memory back (EngineConfig.reclaim_interval)."""


def use_the_c_allocator(argv: Sequence[str] | None) -> None:
    """On Linux with glibc, start `plait serve` again with PYTHONMALLOC=malloc: every object
    then comes from the C library's heap instead of Python's small-object allocator.

    Python's allocator gives a 1 MiB arena back only once every object in it is gone. After a
    busy spell the few objects that outlive it (a cache entry, a Trio task's current wait) are
    scattered over the arenas the spell used and keep them all: a server that loaded 6,000
    rooms and unloaded them stayed at 1.6x its start. glibc gives back any free page (on
    malloc_trim, engine/_reclaim.py), so those objects keep a few pages: 1.06x. It costs ~5 %
    more memory per idle connection (bench/README.md, "Churn").

    Does nothing when PYTHONMALLOC is set (PYTHONMALLOC=pymalloc keeps Python's allocator),
    when Python ignores the environment (-E, -I), without glibc, or when `main` was called
    from Python with arguments rather than run as a command; nor if the exec fails.
    """
    if argv is not None or "PYTHONMALLOC" in os.environ or sys.flags.ignore_environment:
        return
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        return
    if not sys.executable or not sys.orig_argv:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.environ["PYTHONMALLOC"] = "malloc"
    try:
        os.execv(sys.executable, sys.orig_argv)
    except OSError:  # carry on with Python's allocator
        del os.environ["PYTHONMALLOC"]


def quiet_rust_panics() -> None:
    """A client can make pycrdt panic with input that passes every check (the panic is caught
    and the update refused; spec/notes/crdt-input.md). With RUST_BACKTRACE set, each panic
    costs ~0.2 s and tens of MiB to print a backtrace, which a client could repeat at will;
    without it, ~50 µs and one line. The server is not a Rust developer's debugging session."""
    os.environ["RUST_BACKTRACE"] = "0"


async def serve(
    host: str,
    port: int,
    choice: StoreChoice,
    config: EngineConfig,
    *,
    record: Path | None = None,
    ready: trio.Event | None = None,
    hooks: Hooks | None = None,
    api_keys: Sequence[str] = (),
    metrics: bool = True,
    demo: bool = False,
    cluster: str | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM, then shut down gracefully. With `metrics`, Prometheus
    exposition at /metrics (engine/_prometheus.py); with `demo`, the demo page at /demo/
    (engine/http/_demo.py); /healthz and /readyz always.

    Everything that can be checked is checked before "serving" is printed: the store is opened
    for real (created, locked, written), Redis reached (with `cluster`), and the port bound.

    Raises:
        CommandError: the store cannot be opened (locked by another server, unwritable), the
            trace folder cannot be made, the address cannot be bound, the demo's files are
            not installed, or (`cluster`) the store is not PostgreSQL or Redis cannot be reached.
    """
    assets = None
    if demo:
        try:
            assets = load_assets()
        except DemoMissing as exc:
            raise CommandError(f"--demo: {exc}, or serve without it (--no-demo)") from None
    check_cluster(cluster, choice)
    store = choice.make(shared=cluster is not None)
    try:
        try:
            await store.open()
        except StoreLocked as exc:
            if cluster is not None:
                raise CommandError(f"{choice.flag}: {exc}; a cluster cannot share its database with a single server") from None
            raise CommandError(f"{choice.flag}: {exc}; one server per store") from None
        except StorageError as exc:
            raise CommandError(f"{choice.flag}: {exc}") from None
        with contextlib.ExitStack() as files, trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            recorder = None
            if record is not None:
                path = record / f"trace-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.jsonl"
                try:
                    record.mkdir(parents=True, exist_ok=True)
                    trace = files.enter_context(open(path, "w", encoding="utf-8"))
                except OSError as exc:
                    raise CommandError(f"--record {record}: {_reason(exc)}") from None
                recorder = TraceRecorder(trace, asdict(config))
            unbound: OSError | None = None
            if metrics:
                # A `_created` series beside every counter doubles the page for what a
                # dashboard never reads; the setting is the process's, and this process serves.
                prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
            prometheus = PrometheusMetrics() if metrics else None
            reporter: Metrics = prometheus if prometheus is not None else NO_METRICS
            async with contextlib.AsyncExitStack() as stack:
                seams = await stack.enter_async_context(_cluster(cluster, store)) if cluster is not None else {}
                engine = await stack.enter_async_context(
                    Engine(store=store, config=config, recorder=recorder, hooks=hooks, metrics=reporter, **seams)
                )
                if prometheus is not None:
                    engine.router.add("/metrics", prometheus.route(engine.gauges))
                if api_keys:
                    serve_api(engine, api_keys)
                if assets is not None:
                    Demo(assets).add_to(engine.router)
                async with trio.open_nursery() as nursery:
                    try:
                        bound = await nursery.start(engine.serve_websocket, host, port)
                    except OSError as exc:  # reported once the engine has shut down
                        unbound = exc
                    else:
                        demo_url = f", demo page at http://{host}:{bound}/demo/" if assets is not None else ""
                        serving = f"ws://{host}:{bound}/ and http://{host}:{bound}/v1/{demo_url}"
                        print(f"plait: serving on {serving} (Ctrl-C to stop)", flush=True)
                        if recorder is not None:
                            print(f"plait: recording to {path}", flush=True)
                        tune_gc()
                        quiet_rust_panics()
                        if ready is not None:
                            ready.set()
                        async for signum in signals:
                            logger.info("received %s: shutting down", signal.Signals(signum).name)
                            break
                        logger.info("draining rooms")
                        # Still listening while it drains: /readyz says 503 and a new connection
                        # is told to go elsewhere, rather than refused, until every room is stored.
                        await engine.shutdown()
                    nursery.cancel_scope.cancel()
            if unbound is not None:
                if recorder is not None:
                    files.close()
                    path.unlink()  # a trace of nothing
                raise CommandError(_bind_error(host, port, unbound))
    finally:
        await store.aclose()
    print("plait: stopped", flush=True)


CLUSTER_SCHEMES: Final = ("redis", "rediss", "unix")


def check_cluster(url: str | None, choice: StoreChoice) -> None:
    """Raises CommandError (USAGE) for a `--cluster` that cannot work: not a Redis URL, or
    without a PostgreSQL store (the processes of a cluster share one)."""
    if url is None:
        return
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in CLUSTER_SCHEMES:
        raise CommandError(f"--cluster {hide_password(url)}: not a Redis URL (redis://HOST:PORT, rediss://, unix://)", USAGE)
    database = urllib.parse.parse_qs(parts.query).get("db", [""])[-1] or (parts.path.strip("/") if parts.scheme != "unix" else "")
    if database not in ("", "0"):
        # Keys are per database, but pub/sub is not: clusters on two databases of one Redis
        # would hear each other's rooms (edits, presence, operations) and lose data.
        raise CommandError(f"--cluster {hide_password(url)}: a Redis database number does not separate clusters "
                           f"(Redis pub/sub is shared by all its databases): give each cluster a Redis of its own", USAGE)
    if choice.kind != "postgresql":
        raise CommandError(f"--cluster: the processes of a cluster share one store: add --store postgresql://... "
                           f"(not {choice.kind})", USAGE)


@contextlib.asynccontextmanager
async def _cluster(url: str, store: Store) -> AsyncIterator[dict[str, Any]]:
    """This process's part in the cluster at `url`: the seams an Engine takes (architecture:
    Scale-out). Raises CommandError if Redis cannot be reached or coredis is not installed."""
    try:
        from .cluster import RedisCluster
    except ImportError:
        raise CommandError("--cluster: needs coredis: pip install 'plait[cluster]'", USAGE) from None
    cluster = RedisCluster(url, store)  # type: ignore[arg-type]  # PostgreSQLStore(shared=True)
    try:
        await cluster.__aenter__()
    except Exception as exc:
        cause: BaseException = exc
        while isinstance(cause, BaseExceptionGroup) and len(cause.exceptions) == 1:  # coredis's task groups
            cause = cause.exceptions[0]
        raise CommandError(f"--cluster {hide_password(url)}: cannot reach Redis: {hide_password(str(cause))}") from None
    try:
        yield {"replication": cluster, "sequence": cluster, "lease": cluster}
    finally:
        await cluster.__aexit__(None, None, None)


def _bind_error(host: str, port: int, exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return f"--host {host}: {exc.strerror.lower() if exc.strerror else exc}"
    if exc.errno in (errno.EADDRINUSE, errno.EACCES):
        return f"--port {port}: {_reason(exc)}"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"--host {host}: {_reason(exc)}"
    return f"--host {host} --port {port}: {_reason(exc)}"


def _reason(exc: OSError) -> str:
    """`address already in use`: the OS's words, without errno or repeated path."""
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        return "a file is in the way"  # of a folder to create or to look in
    return os.strerror(exc.errno).lower() if exc.errno else str(exc)


def replay(paths: Sequence[Path], out: Any = None) -> int:
    """`plait replay`: a line per trace (`ok:` or `MISMATCH:` and the difference, or the reason it
    could not be read, on stderr); returns how many did not match or could not be read."""
    from plait.protocol import TraceError, read_trace

    from .testing import config_from_settings, replay_trace

    out = out or sys.stdout
    failures = 0
    for path in paths:
        try:
            with open(path, encoding="utf-8") as file:
                trace = read_trace(file)
            config_from_settings(trace.header.settings)
        except OSError as exc:
            failures += 1
            print(f"plait replay: {path}: {_reason(exc)}", file=sys.stderr)
            continue
        except (UnicodeDecodeError, TraceError, ValueError, TypeError) as exc:
            failures += 1
            print(f"plait replay: {path}: not a trace: {exc}", file=sys.stderr)
            continue
        result = replay_trace(trace)  # its own Trio run, on MockClock
        print(f"{'ok' if result.ok else 'MISMATCH'}: {path}", file=out)
        if not result.ok:
            failures += 1
            print(result.report(), file=out)
    return failures


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake shown as one line (and where to read more)."""

    serve: argparse.ArgumentParser | None = None
    """The `serve` command's parser: its options are also read from the environment and a
    config file (engine/_settings.py)."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535; 0 = any free port)")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (0 or more; 0 = no limit)")
    return int(text)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number above 0")
    return int(text)


MAX_HEARTBEAT_SECONDS = 300


def _heartbeat_seconds(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_HEARTBEAT_SECONDS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds from 1 to {MAX_HEARTBEAT_SECONDS}")
    return int(text)


MAX_ROOM_IDLE_SECONDS = 86_400


def _room_idle_seconds(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= MAX_ROOM_IDLE_SECONDS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds from 0 to {MAX_ROOM_IDLE_SECONDS}")
    return int(text)


def _log_level(text: str) -> str:
    if text.upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(LOG_LEVELS)}")
    return text.upper()


def _ws_url(text: str) -> str:
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{text!r} is not a WebSocket URL (ws://HOST:PORT/ or wss://...)")
    return text


def _api_key(text: str) -> str:
    if not good_api_key(text):
        raise argparse.ArgumentTypeError(KEY_RULE)  # not the key itself: errors end up in logs
    return text


def _origin(text: str) -> str:
    parts = urllib.parse.urlsplit(text)
    if text != "*" and (parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") or parts.query):
        raise argparse.ArgumentTypeError(f"{text!r} is not an origin (https://app.example.com[:PORT]) or *")
    return text.rstrip("/")


def _room(text: str) -> str:
    if not 1 <= len(text) <= MAX_ROOM_NAME:
        raise argparse.ArgumentTypeError(f"a room name has 1 to {MAX_ROOM_NAME} characters, not {len(text)}")
    return text


LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")

SERVE_EPILOG: Final = f"""\
configuration:
  Every option is also an environment variable, {ENV_PREFIX} and its name in capitals
  ({ENV_PREFIX}PORT=9000, {ENV_PREFIX}MAX_ROOMS=16, {ENV_PREFIX}ALLOW_ORIGIN=https://a.example,https://b.example),
  and a key of the config file, its name with _ for - (port = 9000, max_rooms = 16,
  allow_origin = ["https://a.example"]). An option given on the command line wins over
  the environment, which wins over the file, which wins over the default. An unknown key
  or a bad value is refused (exit status 2). The printed config is a config file."""


def _add_jwt_flags(serve_cmd: argparse.ArgumentParser) -> None:
    jwt_flags = serve_cmd.add_argument_group(
        "JWT authentication", "accept only JSON Web Tokens signed by one key (README: Authentication with JWTs)")
    key = jwt_flags.add_mutually_exclusive_group()
    key.add_argument("--jwt-secret-file", type=Path, metavar="FILE",
                     help="HS256/384/512: the shared secret is FILE's bytes (at least 32; a final newline is ignored)")
    key.add_argument("--jwt-secret", metavar="SECRET",
                     help="HS256/384/512 with this secret; it shows in `ps` and shell history: prefer --jwt-secret-file")
    key.add_argument("--jwt-public-key", type=Path, metavar="FILE",
                     help="RS/PS, ES or EdDSA: an RSA, EC or Ed25519 public key in PEM")
    key.add_argument("--jwt-jwks", type=Path, metavar="FILE",
                     help="a JSON Web Key Set file of public keys; the token's kid picks one")
    jwt_flags.add_argument("--jwt-algorithm", action="append", metavar="ALG",
                           help="accept only this algorithm (repeatable; default: every one the key's type allows, never none)")
    jwt_flags.add_argument("--jwt-audience", metavar="AUD", help="tokens must name this audience (aud)")
    jwt_flags.add_argument("--jwt-issuer", metavar="ISS", help="tokens must come from this issuer (iss)")
    jwt_flags.add_argument("--jwt-default-access", choices=list(ACCESS_BY_NAME), metavar="ACCESS",
                           help="access in every room for a token without a rooms claim: none (default), read, comment, write")


def jwt_hooks(args: argparse.Namespace) -> Hooks | None:
    """The JwtHooks the --jwt-* flags ask for, or None (anonymous users, full access).

    Raises:
        CommandError: a --jwt-* option without a key (USAGE), or a key file that cannot be read
            or does not hold a key that verifies JWTs (FAILED).
    """
    sources = {"--jwt-secret-file": args.jwt_secret_file, "--jwt-secret": args.jwt_secret,
               "--jwt-public-key": args.jwt_public_key, "--jwt-jwks": args.jwt_jwks}
    flag, source = next(((f, v) for f, v in sources.items() if v is not None), (None, ""))
    options = {"--jwt-algorithm": args.jwt_algorithm, "--jwt-audience": args.jwt_audience,
               "--jwt-issuer": args.jwt_issuer, "--jwt-default-access": args.jwt_default_access}
    if flag is None:
        given = [f for f, v in options.items() if v is not None]
        if given:
            raise CommandError(f"{given[0]} needs a key: --jwt-secret-file, --jwt-public-key or --jwt-jwks", USAGE)
        return None
    kwargs: dict[str, Any] = {
        "algorithms": args.jwt_algorithm,
        "audience": args.jwt_audience,
        "issuer": args.jwt_issuer,
        "default_access": ACCESS_BY_NAME[args.jwt_default_access or "none"],
    }
    shown = "(hidden)" if flag == "--jwt-secret" else source
    from ._jwt import JwtHooks, JwtKeyError  # PyJWT and cryptography: ~8 MiB, loaded only for JWT auth

    try:
        if flag == "--jwt-secret-file":
            return JwtHooks.from_secret_file(source, **kwargs)
        if flag == "--jwt-secret":
            return JwtHooks.from_secret(source, **kwargs)
        if flag == "--jwt-public-key":
            return JwtHooks.from_public_key_file(source, **kwargs)
        return JwtHooks.from_jwks_file(source, **kwargs)
    except JwtKeyError as exc:
        raise CommandError(f"{flag} {shown}: {exc}") from None


def build_parser() -> _Parser:
    """The `plait` command line: serve, replay, inspect, client."""
    defaults = EngineConfig()
    stores = ", ".join(f"{form} (default)" if form == "sqlite" else form for form in STORE_FORMS)
    parser = _Parser(prog="plait", description="Plait real-time collaboration engine")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_cmd = commands.add_parser(
        "serve", help="run the standalone server", epilog=SERVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.serve = serve_cmd
    serve_cmd.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    serve_cmd.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any)")
    serve_cmd.add_argument("--data", type=Path, default=Path("plait-data"), metavar="DIR", help="data folder (default ./plait-data)")
    serve_cmd.add_argument("--store", default=None, metavar="STORE", help=stores)
    serve_cmd.add_argument("--cluster", default=None, metavar="REDIS_URL",
                           help="share every room with the other processes given the same redis://HOST:PORT and the "
                                "same PostgreSQL store (README: Several processes; the `cluster` extra)")
    serve_cmd.add_argument("--log-level", type=_log_level, default="INFO", metavar="LEVEL",
                           help="DEBUG, INFO, WARNING, ERROR (default INFO)")
    serve_cmd.add_argument("--updates-per-second", type=_positive, metavar="N", default=defaults.updates_per_second,
                           help="document updates per connection per second (default %(default)s)")
    serve_cmd.add_argument("--events-per-second", type=_positive, metavar="N", default=defaults.events_per_second,
                           help="published events per connection per second (default %(default)s)")
    serve_cmd.add_argument("--frames-per-second", type=_positive, metavar="N", default=defaults.frames_per_second,
                           help="other frames (presence, cursors, typing, pings, joins) per connection per second "
                                "(default %(default)s)")
    serve_cmd.add_argument("--heartbeat-seconds", type=_heartbeat_seconds, metavar="N", default=int(defaults.heartbeat),
                           help="the heartbeat interval H (spec §5.7): a connection that has sent nothing for H gets a "
                                "ping; one silent for 2H is closed (default %(default)s)")
    serve_cmd.add_argument("--room-idle-seconds", type=_room_idle_seconds, metavar="N", default=int(defaults.room_idle_grace),
                           help="a room whose last member left stays in memory this long, then is stored and unloaded: "
                                "a member back within it finds it loaded (default %(default)s; 0 = at once)")
    serve_cmd.add_argument("--max-rooms", type=_positive, metavar="N", default=defaults.max_rooms_per_connection,
                           help="rooms per connection (default %(default)s)")
    serve_cmd.add_argument("--max-document-mib", type=_positive, metavar="N", default=defaults.max_document_bytes // MiB,
                           help="largest document a room may hold, in MiB (default %(default)s)")
    serve_cmd.add_argument("--allow-origin", type=_origin, action="append", default=[], metavar="ORIGIN",
                           help="a web origin (https://app.example.com) whose pages may open WebSockets and use the "
                                "HTTP transports (/v1/); repeat for more, * for any (default: the server's own origin only)")
    serve_cmd.add_argument("--api-key", type=_api_key, action="append", default=[], metavar="KEY",
                           help="serve the server API (spec/api.md) under /api/ to requests giving this key as "
                                "Authorization: Bearer KEY (16+ characters); repeat to accept several. Off without one. "
                                "A key on a command line shows in ps: prefer PLAIT_API_KEY")
    serve_cmd.add_argument("--record", type=Path, default=None, metavar="DIR",
                           help="write a trace of every connection to DIR/trace-<time>-<pid>.jsonl")
    serve_cmd.add_argument("--max-connections-per-ip", type=_count, metavar="N", default=defaults.max_connections_per_ip,
                           help="WebSockets and HTTP sessions open at once from one address; past it, 429 "
                                "(default %(default)s; 0 = no limit: behind a proxy, every client has its address)")
    serve_cmd.add_argument("--max-connections-per-user", type=_count, metavar="N", default=defaults.max_connections_per_user,
                           help="sessions open at once for one user (the authenticate hook's id); past it the handshake "
                                "is refused, TOO_MANY_CONNECTIONS (default %(default)s; 0 = no limit)")
    serve_cmd.add_argument("--config", type=Path, default=None, metavar="FILE",
                           help=f"read settings from this TOML file (or {ENV_PREFIX}CONFIG); see below")
    serve_cmd.add_argument("--print-config", action="store_true",
                           help="print the settings in force, and where each comes from, as TOML; then exit")
    _add_jwt_flags(serve_cmd)
    serve_cmd.add_argument("--metrics", action=argparse.BooleanOptionalAction, default=True,
                           help="Prometheus metrics at /metrics (default on; counts only, no room or user names)")
    serve_cmd.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                           help="text (default) or json: one JSON object per line, with session, room and identity ids")
    serve_cmd.add_argument("--demo", action=argparse.BooleanOptionalAction, default=True,
                           help="a demo page at /demo/ (a shared editor, presence, chat, a poll; a browser opening / "
                                "is sent there); default on, --no-demo for a server that serves the protocol alone")
    replay_cmd = commands.add_parser("replay", help="replay trace files; exit 0 if all match")
    replay_cmd.add_argument("files", nargs="+", type=Path)
    replay_cmd.add_argument("--log-level", type=_log_level, default="WARNING", metavar="LEVEL")
    inspect_cmd = commands.add_parser("inspect", help="print a room's stored state (also while a server runs)")
    inspect_cmd.add_argument("room")
    inspect_cmd.add_argument("--data", type=Path, default=Path("plait-data"), metavar="DIR", help="data folder (default ./plait-data)")
    inspect_cmd.add_argument("--store", default=None, metavar="STORE", help=stores)
    inspect_cmd.add_argument("--log-level", type=_log_level, default="WARNING", metavar="LEVEL")
    admin_cmd = commands.add_parser("admin", help="the server API from a terminal (spec/api.md)")
    admin_cmd.add_argument("--log-level", type=_log_level, default="WARNING", metavar="LEVEL")
    add_admin_commands(admin_cmd)
    client_cmd = commands.add_parser("client", help="join a room from the terminal")
    client_cmd.add_argument("url", type=_ws_url, help="server URL, e.g. ws://127.0.0.1:8765/")
    client_cmd.add_argument("room", type=_room, help="room name")
    client_cmd.add_argument("--token", default=None, help="token for the server's authenticate hook")
    client_cmd.add_argument("--name", default=None, help="your presence name")
    client_cmd.add_argument("--log-level", type=_log_level, default="WARNING", metavar="LEVEL")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `plait`; returns the exit status. A user's mistake or a refused resource prints one
    line `plait COMMAND: ...` on stderr and returns USAGE (2) or FAILED (1); Ctrl-C returns 130.
    Any traceback is a bug."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        try:
            settings = _settle(parser, args, argv, os.environ)
        except CommandError as exc:
            print(f"plait serve: {exc}", file=sys.stderr)
            return exc.status
        if settings is None:
            use_the_c_allocator(argv)  # before the warnings: they are said once, by the process that serves
        assert parser.serve is not None
        for name, meant in unknown_variables(parser.serve, os.environ):
            print(f"plait serve: {name} is not a setting (ignored); did you mean {meant}?", file=sys.stderr)
        if settings is not None:
            print(settings, end="")
            return 0
    configure_logging(args.log_level, getattr(args, "log_format", "text"), sys.stderr)
    try:
        return _run(args)
    except BaseException as exc:
        shown = _user_error(exc)
        if shown is None:
            raise
        if isinstance(shown, KeyboardInterrupt):
            return INTERRUPTED
        print(f"plait {args.command}: {shown}", file=sys.stderr)
        return shown.status if isinstance(shown, CommandError) else FAILED


def _settle(parser: _Parser, args: argparse.Namespace, argv: Sequence[str] | None, environ: Mapping[str, str]) -> str | None:
    """Give `args` every `serve` setting from where it comes first: the command line, the
    environment, the config file (engine/_settings.py), the default. Returns the settings
    as TOML if they are to be printed instead of served.

    Raises:
        CommandError: (USAGE) a setting that cannot be used, in the file or the environment.
    """
    assert parser.serve is not None
    config = args.config
    if config is None and environ.get(ENV_PREFIX + "CONFIG"):
        config = Path(environ[ENV_PREFIX + "CONFIG"])
    try:
        settings = resolve(parser.serve, _given(argv), environ, config)
    except SettingError as exc:
        raise CommandError(str(exc), USAGE) from None
    for key, setting in settings.items():
        setattr(args, key, setting.value)
    try:
        # A bad store or cluster is refused before anything is printed.
        check_cluster(args.cluster, choose_store(args.store, args.data))
    except CommandError as exc:
        key = "cluster" if str(exc).startswith("--cluster") else "store"
        source = settings[key].source
        if source in ("--store", "--cluster", "default"):
            raise
        where = source if source.startswith(ENV_PREFIX) else f"{source}: {key}"
        shown = re.sub(r"^--cluster( \S+)?: ", "", str(exc)) if key == "cluster" else str(exc).removeprefix("--store ")
        raise CommandError(f"{where}: {shown}", exc.status) from None
    if not args.print_config:
        return None
    header = [
        "plait serve settings; each from: a flag, the environment, the config file or the default (in that order).",
        "This is a config file (--config FILE). Secrets are not shown: give them in the environment.",
    ]
    return settings_toml(settings, header)


def _given(argv: Sequence[str] | None) -> dict[str, Any]:
    """The `serve` options the command line gives: it parsed again, with no defaults."""
    parser = build_parser()
    assert isinstance(parser, _Parser) and parser.serve is not None
    for action in parser.serve._actions:
        action.default = argparse.SUPPRESS
    given = vars(parser.parse_args(argv))
    given.pop("command", None)
    return given


def _run(args: argparse.Namespace) -> int:
    if args.command == "serve":
        choice = choose_store(args.store, args.data)
        config = EngineConfig(
            heartbeat=args.heartbeat_seconds,
            room_idle_grace=args.room_idle_seconds,
            updates_per_second=args.updates_per_second,
            events_per_second=args.events_per_second,
            frames_per_second=args.frames_per_second,
            max_rooms_per_connection=args.max_rooms,
            max_document_bytes=args.max_document_mib * MiB,
            # A join of the largest document must fit in a connection's queue (EngineConfig).
            outbox_max_bytes=max(EngineConfig().outbox_max_bytes, (args.max_document_mib + 16) * MiB),
            reclaim_interval=RECLAIM_INTERVAL,
            allow_origins=tuple(args.allow_origin),
            max_connections_per_ip=args.max_connections_per_ip,
            max_connections_per_user=args.max_connections_per_user,
        )
        api_keys = args.api_key  # also PLAIT_API_KEY (comma-separated) or api_key in the file (_settings.py)
        hooks = jwt_hooks(args)
        run = functools.partial(
            serve, args.host, args.port, choice, config, record=args.record, api_keys=api_keys, hooks=hooks, metrics=args.metrics,
            demo=args.demo, cluster=args.cluster,
        )
        trio.run(run)
    elif args.command == "inspect":
        trio.run(inspect, choose_store(args.store, args.data), args.room)
    elif args.command == "replay":
        return FAILED if replay(args.files) else 0
    elif args.command == "admin":
        try:
            return run_admin(args)
        except AdminError as exc:
            raise CommandError(str(exc)) from None
    elif args.command == "client":
        # The terminal client lives with the client SDK; only this command loads it.
        from plait.client import terminal_main

        return terminal_main(args)
    return 0


def _user_error(exc: BaseException) -> CommandError | PlaitError | KeyboardInterrupt | None:
    """The error to show as one line, if `exc` is one (alone, or alone in exception groups)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, (CommandError, KeyboardInterrupt)):
        return exc
    if "plait.client" in sys.modules:  # a server's refusal, seen by `plait client`
        from plait.client import PlaitError

        if isinstance(exc, PlaitError):
            return exc
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
