"""The `plait` command's answers to mistakes: one line `plait COMMAND: ...` on stderr and exit
status 2 (a bad command line) or 1 (the command could not do its work), never a traceback.

Rules: `main()` runs in this process (no sockets, no subprocesses; every case here fails before
a server would listen); tests/e2e/test_serve_cli.py runs the real command for the cases that need
a port or a second process. The README's option list is checked against the parser.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
import trio

from plait.engine._cli import STORE_FORMS, main
from plait.storage import SQLiteStore

README = Path(__file__).parents[2] / "README.md"
TRACES = Path(__file__).parents[2] / "spec" / "traces"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`plait ARGV` in this process: (exit status, stdout, stderr)."""
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse leaves this way
        assert isinstance(exc.code, int)
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def one_line(err: str, command: str) -> str:
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"plait {command}: " if command else "plait: "), lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["serve", "--store", "sqlite:"], "--store 'sqlite:': no path after the colon (sqlite:PATH)"),
        (["serve", "--store", "files:"], "--store 'files:': no path after the colon (files:DIR)"),
        (["serve", "--store", "mysql://db"], "--store mysql://db: unknown store (use memory, sqlite, "),
        (["inspect", "notes", "--store", "sqlite:"], "--store 'sqlite:': no path after the colon"),
        (["inspect", "notes", "--store", "memory"], "--store memory: a new memory store holds no rooms"),
        (["serve", "--port", "http"], "argument --port: 'http' is not a port number (0-65535"),
        (["serve", "--port", "65536"], "argument --port: '65536' is not a port number"),
        (["serve", "--max-rooms", "0"], "argument --max-rooms: '0' is not a whole number above 0"),
        (["serve", "--max-document-mib", "0"], "argument --max-document-mib: '0' is not a whole number above 0"),
        (["serve", "--updates-per-second", "lots"], "argument --updates-per-second: 'lots' is not a whole"),
        (["serve", "--heartbeat-seconds", "0"], "argument --heartbeat-seconds: '0' is not a whole number of seconds from 1 to 300"),
        (["serve", "--heartbeat-seconds", "301"], "argument --heartbeat-seconds: '301' is not a whole number of seconds"),
        (["serve", "--heartbeat-seconds", "1.5"], "argument --heartbeat-seconds: '1.5' is not a whole number of seconds"),
        (["serve", "--log-level", "loud"], "argument --log-level: 'loud' is not one of DEBUG, INFO"),
        (["client", "http://127.0.0.1:8765/", "notes"], "argument url: 'http://127.0.0.1:8765/' is not a WebSocket URL"),
        (["client", "ws://127.0.0.1:8765/", ""], "argument room: a room name has 1 to 256 characters, not 0"),
        (["client", "ws://127.0.0.1:8765/", "r" * 257], "argument room: a room name has 1 to 256 characters"),
    ],
)
def test_a_bad_command_line_is_one_line_and_status_2(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    status, _, err = run(argv, capsys)
    assert status == 2
    assert says in one_line(err, argv[0])
    assert list(tmp_path.iterdir()) == []  # nothing was created on the way


def test_no_command_or_an_unknown_flag_is_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run([], capsys)
    assert status == 2 and "required: COMMAND" in one_line(err, "")
    status, _, err = run(["serve", "--colour"], capsys)
    assert status == 2 and "unrecognized arguments: --colour" in one_line(err, "")


def test_an_unwritable_data_folder_fails_at_start(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # The case: the server said "serving" and the first join failed. A file where the
    # folder should be stands in for a folder without permission (root writes through those).
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    for argv, flag in (
        (["serve", "--data", str(blocker / "data")], f"--data {blocker / 'data'}"),
        (["serve", "--data", str(blocker), "--store", "files"], f"--data {blocker}"),
        (["serve", "--store", f"sqlite:{blocker}/plait.db"], f"--store sqlite:{blocker}/plait.db"),
    ):
        status, out, err = run(argv, capsys)
        assert status == 1
        assert one_line(err, "serve").startswith(f"plait serve: {flag}: ")
        assert "a file is in the way" in err
        assert "serving" not in out


def test_a_folder_given_as_the_database_fails_at_start(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, _, err = run(["serve", "--store", f"sqlite:{tmp_path}"], capsys)
    assert status == 1
    assert one_line(err, "serve") == f"plait serve: --store sqlite:{tmp_path}: {tmp_path}: is a folder, not a database file"


def test_a_store_in_use_refuses_the_server(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # Here the holder is a store in this process; tests/e2e/test_serve_cli.py uses two servers.
    holder = SQLiteStore(tmp_path / "plait.db")
    trio.run(holder.open)
    try:
        status, out, err = run(["serve", "--data", str(tmp_path), "--port", "0"], capsys)
    finally:
        trio.run(holder.aclose)
    assert status == 1
    assert one_line(err, "serve") == (
        f"plait serve: --data {tmp_path}: {tmp_path / 'plait.db'} is in use by another open store in this process;"
        " one server per store"
    )
    assert "serving" not in out


def test_a_trace_folder_that_cannot_be_made_fails_at_start(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    status, out, err = run(["serve", "--store", "memory", "--port", "0", "--record", str(blocker / "traces")], capsys)
    assert status == 1
    assert one_line(err, "serve") == f"plait serve: --record {blocker / 'traces'}: a file is in the way"
    assert "serving" not in out


def test_inspect_a_store_that_is_not_there(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    status, _, err = run(["inspect", "notes", "--data", str(missing)], capsys)
    assert status == 1
    assert one_line(err, "inspect") == f"plait inspect: --data {missing}: {missing / 'plait.db'}: no such database"
    status, _, err = run(["inspect", "notes", "--data", str(missing), "--store", "files"], capsys)
    assert status == 1
    assert one_line(err, "inspect").endswith(f"{missing / 'files'}: no such store folder")
    assert not missing.exists()  # inspecting creates nothing


def test_inspect_a_room_that_is_not_there_or_a_damaged_store(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "plait.db")
    trio.run(store.open)
    trio.run(store.aclose)
    status, _, err = run(["inspect", "notes", "--data", str(tmp_path)], capsys)
    assert status == 1
    assert one_line(err, "inspect") == f"plait inspect: no room 'notes' in {tmp_path / 'plait.db'}"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "plait.db").write_bytes(b"this is not a database" * 100)
    status, _, err = run(["inspect", "notes", "--data", str(tmp_path / "other")], capsys)
    assert status == 1
    assert "file is not a database" in one_line(err, "inspect")
    with sqlite3.connect(tmp_path / "other" / "app.db") as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    conn.close()
    status, _, err = run(["inspect", "notes", "--store", f"sqlite:{tmp_path / 'other' / 'app.db'}"], capsys)
    assert status == 1
    assert one_line(err, "inspect").endswith("app.db: not a Plait database")


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "no such file or directory"),
        (b"garbage\n", "not a trace: line 1: not JSON"),
        (b"\xff\xfe\x00binary", "not a trace: 'utf-8' codec can't decode"),
        (b"", "not a trace: empty trace"),
        (b'{"plait_trace": 1, "protocol": 1, "settings": {"bogus": 1}}\n', "not a trace: unknown trace settings: ['bogus']"),
        (b'{"plait_trace": 1, "protocol": 1}\n{"t": 0, "conn": "a", "dir": "in"}\n', "not a trace: line 2"),
    ],
)
def test_replay_of_a_missing_or_bad_trace_is_one_line_per_file(
    content: bytes | None, says: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "trace.jsonl"
    if content is not None:
        path.write_bytes(content)
    status, out, err = run(["replay", str(path)], capsys)
    assert status == 1
    assert one_line(err, "replay") .startswith(f"plait replay: {path}: {says}")
    assert out == ""


def test_replay_goes_on_past_a_bad_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    good = TRACES / "handshake.jsonl"
    status, out, err = run(["replay", str(tmp_path), str(good)], capsys)
    assert status == 1
    assert one_line(err, "replay") == f"plait replay: {tmp_path}: is a directory"
    assert out == f"ok: {good}\n"


def _by_flag(text: str) -> dict[str, str]:
    """`--flag` -> the text after it, up to the next flag, whitespace collapsed."""
    pieces = re.split(r"`?(--[a-z-]+)\b", " ".join(text.split()))
    return dict(zip(pieces[1::2], pieces[2::2], strict=True))


def test_the_readme_lists_every_serve_option_as_serve_help_does(capsys: pytest.CaptureFixture[str]) -> None:
    status, shown, _ = run(["serve", "--help"], capsys)
    assert status == 0
    helped = _by_flag(shown.split("options:")[1].split("configuration:")[0])
    del helped["--help"]
    readme = README.read_text(encoding="utf-8")
    start = readme.index("Options:", readme.index("## Run the server"))
    described = _by_flag(readme[start : readme.index("Ctrl-C", start)])
    assert set(described) == set(helped), "README's options for `plait serve` differ from `plait serve --help`"
    for flag, text in helped.items():
        default = re.search(r"\(default ([^);]+)", text)
        if default:
            assert f"(default {default.group(1)}" in described[flag], flag
    store_forms = re.match(r" ([a-zA-Z:|/@]+)`", described["--store"])
    assert store_forms is not None and store_forms.group(1).split("|") == list(STORE_FORMS)
    assert helped["--store"].split() == ["STORE", *", ".join(STORE_FORMS).replace("sqlite,", "sqlite (default),").split()]
    levels = re.match(r" ([A-Z|]+)`", described["--log-level"])
    assert levels is not None and levels.group(1).replace("|", ", ") in helped["--log-level"]


# -- plait serve --jwt-* ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "status", "message"),
    [
        (["--jwt-secret-file", "missing"], 1, "--jwt-secret-file missing: No such file or directory"),
        (["--jwt-secret-file", "short"], 1, "--jwt-secret-file short: the secret is 5 bytes; HS algorithms need at least 32"),
        (["--jwt-secret", "short"], 1, "--jwt-secret (hidden): the secret is 5 bytes"),
        (["--jwt-public-key", "short"], 1, "--jwt-public-key short: not a PEM public key"),
        (["--jwt-jwks", "short"], 1, "--jwt-jwks short: not JSON"),
        (["--jwt-secret-file", "long", "--jwt-algorithm", "RS256"], 1, "algorithm RS256 does not go with a secret"),
        (["--jwt-audience", "plait"], 2, "--jwt-audience needs a key: --jwt-secret-file, --jwt-public-key or --jwt-jwks"),
        (["--jwt-secret-file", "long", "--jwt-jwks", "long"], 2, "not allowed with argument"),
        (["--jwt-secret-file", "long", "--jwt-default-access", "admin"], 2, "invalid choice"),
    ],
    ids=["missing", "short-file", "short-secret", "not-pem", "not-jwks", "wrong-alg", "no-key", "two-keys", "bad-access"],
)
def test_a_bad_jwt_flag_or_key_file_is_one_line_before_serving(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: list[str], status: int, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "short").write_text("short\n")
    (tmp_path / "long").write_text("s" * 64 + "\n")
    code, out, err = run(["serve", "--store", "memory", "--port", "0", *flags], capsys)
    assert code == status
    assert "serving" not in out
    assert message in one_line(err, "serve"), err


def test_a_secret_on_the_command_line_is_never_shown(capsys: pytest.CaptureFixture[str]) -> None:
    secret = "a-secret-too-short"
    code, _, err = run(["serve", "--store", "memory", "--jwt-secret", secret], capsys)
    assert code == 1 and secret not in err
    _, shown, _ = run(["serve", "--help"], capsys)
    assert "ps" in " ".join(shown.split()) and "--jwt-secret-file" in shown


def test_a_postgresql_store_without_psycopg_says_what_to_install(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "psycopg" else real(name, *a))
    code, out, err = run(["serve", "--store", "postgresql://plait:pw-hidden@127.0.0.1/plait"], capsys)
    assert code == 2 and "serving" not in out
    assert one_line(err, "serve") == (
        "plait serve: --store postgresql://plait:(hidden)@127.0.0.1/plait: "
        "the PostgreSQL store needs psycopg: pip install 'plait[postgres]'"
    )


# -- plait serve --cluster ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--cluster", "http://127.0.0.1:6379", "--store", "postgresql://u@127.0.0.1/db"], "not a Redis URL"),
        # A fresh user's two clusters on databases 0 and 3 of one Redis shared their rooms (pub/sub
        # is per server), and an acknowledged edit could no longer be read.
        (["--cluster", "redis://127.0.0.1:6379/3", "--store", "postgresql://u@127.0.0.1/db"], "does not separate clusters"),
        (["--cluster", "unix:///tmp/redis.sock?db=2", "--store", "postgresql://u@127.0.0.1/db"], "does not separate clusters"),
        (["--cluster", "redis://127.0.0.1:6379"], "the processes of a cluster share one store: add --store postgresql://"),
        (["--cluster", "redis://127.0.0.1:6379", "--store", "memory"], "(not memory)"),
        (["--cluster", "redis://:hunter2@127.0.0.1:6379", "--store", "sqlite", "--print-config"], "share one store"),
    ],
)
def test_a_cluster_that_cannot_work_is_refused_before_anything_starts(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(["serve", "--port", "0", *argv], capsys)
    assert status == 2 and out == "", (status, out)
    assert message in one_line(err, "serve") and "hunter2" not in err


def test_a_cluster_from_the_environment_is_checked_by_print_config(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLAIT_CLUSTER", "redis://127.0.0.1:6379")
    status, out, err = run(["serve", "--print-config"], capsys)
    assert status == 2 and out == ""
    assert one_line(err, "serve").startswith("plait serve: PLAIT_CLUSTER: the processes of a cluster share one store")
