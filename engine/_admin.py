"""`plait admin`: the server API (spec/api.md) from a terminal, for operators.

    plait admin --url http://127.0.0.1:8765 --api-key KEY rooms
    plait admin publish notes chat '{"text": "hello"}'
    plait admin access notes alice read
    plait admin kick --user alice

The URL and key also come from PLAIT_URL and PLAIT_API_KEY. Answers are printed as JSON (a
document read as Yjs goes to --out FILE). A refusal is one line on stderr with the server's
reason and code, exit status 1; a server that cannot be reached, the same.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

TIMEOUT = 30.0
"""Seconds a call may take (a publish waits until the event is durable)."""


class AdminError(Exception):
    """A call the server refused, or could not be made; shown as one line."""


def add_commands(admin: argparse.ArgumentParser) -> None:
    """The `plait admin` subcommands, on the parser `plait` made for it."""
    admin.add_argument("--url", default=os.environ.get("PLAIT_URL", "http://127.0.0.1:8765"),
                       help="the server (default $PLAIT_URL or http://127.0.0.1:8765)")
    admin.add_argument("--api-key", default=None, metavar="KEY",
                       help="the server's API key (default $PLAIT_API_KEY; a key on a command line shows in ps)")
    commands = admin.add_subparsers(dest="action", required=True, metavar="ACTION")
    rooms = commands.add_parser("rooms", help="rooms loaded now")
    rooms.add_argument("--stored", action="store_true", help="also the names of stored rooms")
    commands.add_parser("room", help="one room").add_argument("room")
    publish = commands.add_parser("publish", help="publish an event as the server")
    publish.add_argument("room")
    publish.add_argument("name")
    publish.add_argument("payload", nargs="?", default="null", help="JSON (default null)")
    publish.add_argument("--key", default=None, help="idempotency key")
    history = commands.add_parser("history", help="the room's event history")
    history.add_argument("room")
    history.add_argument("--since", type=int, default=0)
    commands.add_parser("presence", help="who is in the room").add_argument("room")
    document = commands.add_parser("document", help="the room's document (JSON, or Yjs bytes with --out)")
    document.add_argument("room")
    document.add_argument("--types", default=None, help="root types for JSON, e.g. body:text,meta:map")
    document.add_argument("--out", type=Path, default=None, help="write the document as a Yjs update to this file")
    apply = commands.add_parser("apply", help="apply a Yjs update (a file) to the room's document")
    apply.add_argument("room")
    apply.add_argument("file", type=Path)
    sessions = commands.add_parser("sessions", help="sessions open now")
    which = sessions.add_mutually_exclusive_group()
    which.add_argument("--room", default=None, help="only the sessions in this room")
    which.add_argument("--user", default=None, help="only this user's sessions (its identity id)")
    kick = commands.add_parser("kick", help="end a session, or every session of a user (close 4013)")
    who = kick.add_mutually_exclusive_group(required=True)
    who.add_argument("--user")
    who.add_argument("--session")
    access = commands.add_parser("access", help="set a user's access to a room (default: the hooks decide again)")
    access.add_argument("room")
    access.add_argument("user")
    access.add_argument("access", choices=["read", "comment", "write", "none", "default"])
    commands.add_parser("delete", help="delete a room").add_argument("room")


def run(args: argparse.Namespace, out: Any = None) -> int:
    """Do the action `args` names; 0, or AdminError for a refusal."""
    out = out or sys.stdout
    key = args.api_key or os.environ.get("PLAIT_API_KEY")
    if not key:
        raise AdminError("give the API key: --api-key KEY or PLAIT_API_KEY")
    api = _Api(args.url, key)
    room = urllib.parse.quote(getattr(args, "room", None) or "", safe="")
    match args.action:
        case "rooms":
            answer = api.call("GET", "/api/rooms" + ("?stored=true" if args.stored else ""))
        case "room":
            answer = api.call("GET", f"/api/rooms/{room}")
        case "publish":
            try:
                payload = json.loads(args.payload)
            except ValueError as exc:
                raise AdminError(f"payload {args.payload[:60]!r} is not JSON: {exc}") from None
            body = {"name": args.name, "payload": payload} | ({"key": args.key} if args.key else {})
            answer = api.call("POST", f"/api/rooms/{room}/events", body)
        case "history":
            answer = api.call("GET", f"/api/rooms/{room}/events?since={args.since}")
        case "presence":
            answer = api.call("GET", f"/api/rooms/{room}/presence")
        case "document":
            if args.out is not None:
                args.out.write_bytes(api.call("GET", f"/api/rooms/{room}/document", raw=True))
                return 0
            types = f"&types={urllib.parse.quote(args.types)}" if args.types else ""
            answer = api.call("GET", f"/api/rooms/{room}/document?format=json{types}")
        case "apply":
            try:
                update = args.file.read_bytes()
            except OSError as exc:
                raise AdminError(f"{args.file}: {exc.strerror or exc}") from None
            answer = api.call("POST", f"/api/rooms/{room}/document", update)
        case "sessions":
            if args.room:
                answer = api.call("GET", f"/api/rooms/{room}/sessions")
            else:
                query = f"?user={urllib.parse.quote(args.user)}" if args.user else ""
                answer = api.call("GET", f"/api/sessions{query}")
        case "kick":
            if args.user is not None:
                answer = api.call("DELETE", f"/api/users/{urllib.parse.quote(args.user, safe='')}/sessions")
            else:
                answer = api.call("DELETE", f"/api/sessions/{urllib.parse.quote(args.session, safe='')}")
        case "access":
            path = f"/api/rooms/{room}/access/{urllib.parse.quote(args.user, safe='')}"
            answer = api.call("DELETE", path) if args.access == "default" else api.call("PUT", path, {"access": args.access})
        case "delete":
            answer = api.call("DELETE", f"/api/rooms/{room}")
        case _:  # pragma: no cover - argparse allows only the actions above
            raise AdminError(f"unknown action {args.action}")
    print(json.dumps(answer, indent=2, ensure_ascii=False), file=out)
    return 0


class _Api:
    def __init__(self, url: str, key: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise AdminError(f"--url {url}: not an http:// or https:// URL")
        self._base = url.rstrip("/")
        self._key = key

    def call(self, method: str, path: str, body: Any = None, *, raw: bool = False) -> Any:
        headers = {"Authorization": f"Bearer {self._key}"}
        data = None
        if isinstance(body, bytes):
            data, headers["Content-Type"] = body, "application/octet-stream"
        elif body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        request = urllib.request.Request(self._base + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                content = response.read()
        except urllib.error.HTTPError as exc:
            raise AdminError(_refusal(exc)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AdminError(f"{self._base}: cannot reach the server: {reason}") from None
        return content if raw else json.loads(content)


def _refusal(exc: urllib.error.HTTPError) -> str:
    try:
        obj = json.loads(exc.read())
        name = f" ({obj['name']})" if "name" in obj else ""
        return f"{exc.code} {obj['error']}{name}"
    except (ValueError, KeyError, TypeError):
        return f"{exc.code} {exc.reason}"
