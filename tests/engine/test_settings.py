"""`plait serve`'s settings from flags, the environment (PLAIT_*) and a TOML file (--config).

Rules: `main()` runs in this process with `--print-config` (nothing is served, no sockets);
the environment is the test's own (every PLAIT_ variable of the real one is removed first).
The generic resolution (engine/_settings.py) is also run over a parser with the kinds of
options other branches add (switches, secrets), to show they need no code of their own.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from plait.engine._cli import build_parser, main
from plait.engine._settings import SettingError, options_of, resolve, settings_toml

README = Path(__file__).parents[2] / "README.md"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("PLAIT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        status = main(argv)
    except SystemExit as exc:
        assert isinstance(exc.code, int)
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def printed(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """`plait serve ARGV --print-config`: the settings (read back as TOML) and each one's source."""
    status, out, err = run(["serve", *argv, "--print-config"], capsys)
    assert status == 0, err
    values = tomllib.loads(out)
    sources = {}
    for line in out.splitlines():
        match = re.match(r"#? ?(\w+) = .*?  # (\S+)$", line)
        if match:
            sources[match.group(1)] = match.group(2)
    return values, sources


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    status, out, err = run(["serve", *argv], capsys)
    assert status == 2, (out, err)
    assert "Traceback" not in err and out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("plait serve: ")
    return lines[0].removeprefix("plait serve: ")


# -- precedence: flag > environment > file > default --------------------------------------------


@pytest.mark.parametrize(
    ("key", "flag", "env", "file", "expected"),
    [
        # (value from the flag, the environment, the file, the default)
        ("port", ["--port", "1001"], "1002", "1003", (1001, 1002, 1003, 8765)),
        ("data", ["--data", "f"], "e", '"d"', ("f", "e", "d", "plait-data")),
        ("log_level", ["--log-level", "error"], "warning", '"debug"', ("ERROR", "WARNING", "DEBUG", "INFO")),
        (
            "allow_origin",
            ["--allow-origin", "https://f.example", "--allow-origin", "https://g.example"],
            "https://e.example, http://e2.example:81",
            '["https://d.example"]',
            (["https://f.example", "https://g.example"], ["https://e.example", "http://e2.example:81"], ["https://d.example"], []),
        ),
    ],
)
def test_a_flag_wins_over_the_environment_over_the_file_over_the_default(
    key: str,
    flag: list[str],
    env: str,
    file: str,
    expected: tuple[Any, Any, Any, Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    config = tmp_path / "plait.toml"
    config.write_text(f"{key} = {file}\n")
    variable = "PLAIT_" + key.upper()
    from_flag, from_env, from_file, default = expected

    monkeypatch.setenv(variable, env)
    got, sources = printed(["--config", str(config), *flag], capsys)
    assert (got[key], sources[key]) == (from_flag, flag[0])
    got, sources = printed(["--config", str(config)], capsys)
    assert (got[key], sources[key]) == (from_env, variable)
    monkeypatch.delenv(variable)
    got, sources = printed(["--config", str(config)], capsys)
    assert (got[key], sources[key]) == (from_file, str(config))
    got, sources = printed([], capsys)
    assert (got.get(key, None), sources[key]) == (default, "default")


def test_the_settings_reach_the_engine(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Not only printed: what `serve` is given is the resolved settings."""
    import plait.engine._cli as cli

    seen: dict[str, Any] = {}

    def fake_run(func: Any, *args: Any) -> None:
        seen.update(config=func.args[3], host=func.args[0], port=func.args[1], choice=func.args[2])

    monkeypatch.setattr(cli.trio, "run", fake_run)
    (tmp_path / "plait.toml").write_text('max_rooms = 5\nmax_connections_per_ip = 3\nallow_origin = ["https://a.example"]\n')
    monkeypatch.setenv("PLAIT_MAX_CONNECTIONS_PER_USER", "2")
    monkeypatch.setenv("PLAIT_STORE", "memory")
    given = ["--port", "0", "--heartbeat-seconds", "25", "--room-idle-seconds", "0"]
    status, _, err = run(["serve", "--config", "plait.toml", *given], capsys)
    assert status == 0, err
    config = seen["config"]
    assert config.heartbeat == 25
    assert config.room_idle_grace == 0
    assert (config.max_rooms_per_connection, config.max_connections_per_ip, config.max_connections_per_user) == (5, 3, 2)
    assert config.allow_origins == ("https://a.example",)
    assert seen["port"] == 0 and seen["choice"].kind == "memory"


def test_plait_config_names_the_file(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text("port = 2001\n")
    monkeypatch.setenv("PLAIT_CONFIG", str(tmp_path / "a.toml"))
    got, sources = printed([], capsys)
    assert got["port"] == 2001 and sources["port"] == str(tmp_path / "a.toml")


# -- what is refused ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("port = 'abc'", "plait.toml: port: 'abc' is not a port number (0-65535; 0 = any free port)"),
        ("port = 70000", "plait.toml: port: '70000' is not a port number"),
        ("port = true", "plait.toml: port: expected a number or a string, not true"),
        ("host = 1", "plait.toml: host: expected a string, not 1"),
        ("max_rooms = 0", "plait.toml: max_rooms: '0' is not a whole number above 0"),
        ("heartbeat_seconds = 3600", "plait.toml: heartbeat_seconds: '3600' is not a whole number of seconds from 1 to 300"),
        ("room_idle_seconds = -1", "plait.toml: room_idle_seconds: '-1' is not a whole number of seconds from 0 to 86400"),
        ("room_idle_seconds = 1.5", "plait.toml: room_idle_seconds: '1.5' is not a whole number of seconds"),
        ("max_connections_per_ip = -1", "plait.toml: max_connections_per_ip: '-1' is not a whole number (0 or more"),
        ("allow_origin = 'https://a.example'", 'plait.toml: allow_origin: expected a list (allow_origin = [...]), not "https://a.example"'),
        ("allow_origin = ['ftp://a']", "plait.toml: allow_origin: 'ftp://a' is not an origin"),
        ("allow_origin = [true]", "plait.toml: allow_origin: expected a number or a string, not true"),
        ("colour = 'red'", "plait.toml: colour: unknown key (--print-config lists every key)"),
        ("max-rooms = 5", "plait.toml: max-rooms: unknown key (did you mean max_rooms? --print-config lists every key)"),
        ("max_room = 5", "plait.toml: max_room: unknown key (did you mean max_rooms?"),
        ("[serve]\nport = 1", "plait.toml: serve: unknown key"),
        ("config = 'other.toml'", "plait.toml: config: not a setting of the file (give it on the command line or as PLAIT_CONFIG)"),
        ("print_config = true", "plait.toml: print_config: not a setting of the file"),
        ("store = 'mysql://db'", "plait.toml: store: mysql://db: unknown store (use memory, sqlite,"),
        ("port = ", "plait.toml: not TOML: Invalid value (at line 1, column 8)"),
    ],
)
def test_a_bad_file_is_one_line_and_status_2(text: str, says: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "plait.toml").write_text(text + "\n")
    assert refused(["--config", "plait.toml"], capsys).startswith(says)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plait.toml"]  # nothing was made on the way


def test_a_missing_or_binary_file_is_one_line_and_status_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert refused(["--config", "nowhere.toml"], capsys) == "nowhere.toml: no such file or directory"
    (tmp_path / "bin.toml").write_bytes(b"port = '\xff'\n")
    assert refused(["--config", "bin.toml"], capsys).startswith("bin.toml: not TOML")
    assert refused(["--config", str(tmp_path)], capsys) == f"{tmp_path}: is a directory"


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("PLAIT_PORT", "abc", "PLAIT_PORT: 'abc' is not a port number (0-65535; 0 = any free port)"),
        ("PLAIT_MAX_ROOMS", "0", "PLAIT_MAX_ROOMS: '0' is not a whole number above 0"),
        ("PLAIT_LOG_LEVEL", "loud", "PLAIT_LOG_LEVEL: 'loud' is not one of DEBUG, INFO, WARNING, ERROR"),
        ("PLAIT_ALLOW_ORIGIN", "https://a.example,nope", "PLAIT_ALLOW_ORIGIN: 'nope' is not an origin"),
        ("PLAIT_STORE", "files:", "PLAIT_STORE: 'files:': no path after the colon (files:DIR)"),
    ],
)
def test_a_bad_variable_is_one_line_and_status_2(
    variable: str, value: str, says: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    assert refused([], capsys).startswith(says)


def test_a_flag_hides_a_bad_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flag wins: the variable it hides is not read at all (so not refused)."""
    monkeypatch.setenv("PLAIT_PORT", "abc")
    got, sources = printed(["--port", "1"], capsys)
    assert got["port"] == 1 and sources["port"] == "--port"


def test_an_empty_variable_is_not_set(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLAIT_PORT", "")
    monkeypatch.setenv("PLAIT_RECORD", "")  # not the current folder
    got, sources = printed([], capsys)
    assert (got["port"], sources["port"]) == (8765, "default")
    assert "record" not in got


def test_a_misspelt_variable_is_named_but_not_fatal(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLAIT_PROT", "9000")
    monkeypatch.setenv("PLAIT_BENCH_PROFILE", "x")  # someone else's: not named
    status, _, err = run(["serve", "--print-config"], capsys)
    assert status == 0
    assert err == "plait serve: PLAIT_PROT is not a setting (ignored); did you mean PLAIT_PORT?\n"


# -- --print-config ---------------------------------------------------------------------------------


def test_the_printed_settings_are_a_config_file_that_gives_the_same_settings(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "plait.toml").write_text('allow_origin = ["https://a.example", "*"]\nrecord = "traces dir"\nhost = "0.0.0.0"\n')
    monkeypatch.setenv("PLAIT_MAX_ROOMS", "9")
    monkeypatch.setenv("PLAIT_DATA", 'odd "name"\\ \u00e9')
    status, first, err = run(["serve", "--config", "plait.toml", "--port", "0", "--log-level", "debug", "--print-config"], capsys)
    assert status == 0, err
    (tmp_path / "saved.toml").write_text(first)
    monkeypatch.delenv("PLAIT_MAX_ROOMS")
    monkeypatch.delenv("PLAIT_DATA")
    again, sources = printed(["--config", "saved.toml"], capsys)
    assert again == tomllib.loads(first)
    assert again["data"] == 'odd "name"\\ \u00e9' and again["port"] == 0 and again["record"] == "traces dir"
    assert {sources[key] for key in ("port", "max_rooms", "allow_origin", "data", "log_level")} == {"saved.toml"}
    assert sources["store"] == "default"  # not set, so a comment in the file


def test_serve_help_explains_the_environment_and_the_file(capsys: pytest.CaptureFixture[str]) -> None:
    status, shown, _ = run(["serve", "--help"], capsys)
    assert status == 0
    assert "PLAIT_PORT=9000" in shown and "allow_origin = [" in shown and "--config FILE" in shown
    assert "--print-config" in shown


# -- the same, over options other branches add (switches, secrets, repeatable ones) -----------------


def other_branches_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="x")
    parser.add_argument("--metrics", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--verbose-frames", action="store_true")
    parser.add_argument("--no-reclaim", dest="reclaim", action="store_false")
    parser.add_argument("--jwt-secret", default=None)
    parser.add_argument("--api-key", action="append", default=[])
    parser.add_argument("--jwt-leeway", type=float, default=5.0)
    parser.add_argument("--log-format", choices=["text", "json"], default="text")
    parser.add_argument("--tags", nargs="+", default=["a"])
    parser.add_argument("-v", action="count", default=0)  # a kind with no written form: a flag only
    return parser


def resolve_other(argv: list[str], environ: dict[str, str], file_text: str | None, tmp_path: Path) -> dict[str, Any]:
    parser = other_branches_parser()
    explicit = other_branches_parser()
    for action in explicit._actions:
        action.default = argparse.SUPPRESS
    file = None
    if file_text is not None:
        file = tmp_path / "x.toml"
        file.write_text(file_text)
    settings = resolve(parser, vars(explicit.parse_args(argv)), environ, file)
    return {key: (s.value, s.source) for key, s in settings.items()}


def test_switches_from_every_place(tmp_path: Path) -> None:
    got = resolve_other([], {}, None, tmp_path)
    assert got["metrics"] == (True, "default") and got["verbose_frames"] == (False, "default") and got["reclaim"] == (True, "default")
    got = resolve_other([], {}, "metrics = false\nverbose_frames = true\nreclaim = false\n", tmp_path)
    assert (got["metrics"][0], got["verbose_frames"][0], got["reclaim"][0]) == (False, True, False)
    env = {"PLAIT_METRICS": "yes", "PLAIT_VERBOSE_FRAMES": "0", "PLAIT_RECLAIM": "On"}
    got = resolve_other([], env, "metrics = false\nverbose_frames = true\n", tmp_path)
    assert got["metrics"] == (True, "PLAIT_METRICS") and got["verbose_frames"] == (False, "PLAIT_VERBOSE_FRAMES")
    assert got["reclaim"] == (True, "PLAIT_RECLAIM")
    got = resolve_other(["--no-metrics", "--no-reclaim"], env, None, tmp_path)
    assert got["metrics"] == (False, "--metrics") and got["reclaim"] == (False, "--no-reclaim")
    with pytest.raises(SettingError, match=r"^PLAIT_METRICS: 'maybe' is not true or false$"):
        resolve_other([], {"PLAIT_METRICS": "maybe"}, None, tmp_path)
    with pytest.raises(SettingError, match=r"x.toml: metrics: expected true or false, not \"yes\"$"):
        resolve_other([], {}, 'metrics = "yes"\n', tmp_path)


def test_other_kinds_from_every_place(tmp_path: Path) -> None:
    got = resolve_other([], {"PLAIT_JWT_LEEWAY": "2.5", "PLAIT_TAGS": "x,y"}, 'log_format = "json"\napi_key = ["k1", "k2"]\n', tmp_path)
    assert got["jwt_leeway"] == (2.5, "PLAIT_JWT_LEEWAY") and got["tags"] == (["x", "y"], "PLAIT_TAGS")
    assert got["log_format"][0] == "json" and got["api_key"][0] == ["k1", "k2"]
    assert resolve_other([], {}, "jwt_leeway = 3\n", tmp_path)["jwt_leeway"][0] == 3.0
    with pytest.raises(SettingError, match=r"^PLAIT_LOG_FORMAT: 'xml' is not one of text, json$"):
        resolve_other([], {"PLAIT_LOG_FORMAT": "xml"}, None, tmp_path)
    with pytest.raises(SettingError, match=r"x\.toml: jwt_leeway: invalid value 'soon'"):
        resolve_other([], {}, 'jwt_leeway = "soon"\n', tmp_path)
    assert "v" not in options_of(other_branches_parser())  # a count is a flag only


def test_every_serve_option_has_a_key_and_a_variable() -> None:
    parser = build_parser()
    assert parser.serve is not None
    keys = set(options_of(parser.serve))
    flags = {a.dest for a in parser.serve._actions} - {"help", "config", "print_config"}
    assert keys == flags, "an option of plait serve that cannot be set in the environment or the file"


def test_secrets_are_never_printed(tmp_path: Path) -> None:
    settings = resolve(
        other_branches_parser(), {}, {"PLAIT_JWT_SECRET": "s3cr3t-value", "PLAIT_API_KEY": "k-one,k-two"}, None
    )
    shown = settings_toml(settings)
    assert "s3cr3t" not in shown and "k-one" not in shown and "k-two" not in shown
    assert re.search(r"^# jwt_secret = \(hidden\) +# PLAIT_JWT_SECRET$", shown, re.M)
    assert re.search(r"^# api_key = \(hidden\) +# PLAIT_API_KEY$", shown, re.M)
    assert "jwt_secret" not in tomllib.loads(shown)  # a saved file leaves secrets to the environment


# -- the README's example ---------------------------------------------------------------------------


def test_the_readme_example_config_is_read_as_it_says(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    readme = README.read_text(encoding="utf-8")
    section = readme[readme.index("## Configuration") :]
    example = re.search(r"```toml\n(.*?)```", section, re.S)
    assert example is not None
    (tmp_path / "plait.toml").write_text(example.group(1))
    got, sources = printed(["--config", "plait.toml"], capsys)
    for key, value in tomllib.loads(example.group(1)).items():
        assert got[key] == value and sources[key] == "plait.toml", key
    # The command after it: "listens on 9001 and logs at INFO".
    command = re.search(r"```sh\n(PLAIT_PORT=9001 .*?)\n```", section)
    assert command is not None and command.group(1).endswith("serve --config plait.toml --log-level info")
    monkeypatch.setenv("PLAIT_PORT", "9001")
    got, sources = printed(["--config", "plait.toml", "--log-level", "info"], capsys)
    assert (got["port"], got["log_level"], got["host"]) == (9001, "INFO", "0.0.0.0")


@pytest.mark.parametrize(
    "text",
    [
        'api_key = "my-real-production-api-key-1234"',  # a string where a list goes
        'api_key = ["short-secret"]',  # too short: the validator's words, not the key
        "jwt_secret = 123456789012345678901234567890123",
        'jwt_secret = ["hunter2-hunter2-hunter2-hunter2-hunter2"]',
    ],
)
def test_an_error_about_a_secret_never_shows_it(text: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "plait.toml").write_text(text + "\n")
    said = refused(["--config", "plait.toml"], capsys)
    assert said.startswith("plait.toml: ")
    for secret in ("my-real-production", "short-secret", "12345678901234567890", "hunter2"):
        assert secret not in said, said


def test_an_api_key_from_the_environment_is_refused_by_its_variable_not_shown(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLAIT_API_KEY", "tiny-key")
    said = refused([], capsys)
    assert said.startswith("PLAIT_API_KEY: an API key is 16 or more") and "tiny-key" not in said


def test_a_key_files_path_is_shown_it_is_not_a_secret(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "s").write_text("x" * 40)
    assert main(["serve", "--jwt-secret-file", str(tmp_path / "s"), "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert tomllib.loads(printed)["jwt_secret_file"] == str(tmp_path / "s")  # a printed file keeps JWT auth on


@pytest.mark.parametrize(
    "store",
    ["postgresql://plait:hunter2-pw@db.example:5432/plait", "postgres://u:hunter2-pw@h/db?sslmode=require"],
)
def test_a_database_password_in_the_store_url_is_never_printed(
    store: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLAIT_STORE", store)
    status, out, err = run(["serve", "--print-config"], capsys)
    assert status == 0, err
    assert "hunter2" not in out
    assert re.search(r'^# store = ".*:\(hidden\)@.*" +# PLAIT_STORE$', out, re.M)
    assert "store" not in tomllib.loads(out)  # a saved file leaves it to the environment
    # Nor in an error about it.
    status, out, err = run(["serve", "--store", store.replace("://", "://x", 1) + "\x00", "--port", "-1"], capsys)
    assert status == 2 and "hunter2" not in out + err
