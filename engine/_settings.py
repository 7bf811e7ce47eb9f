"""A command's settings from four places: its flags, the environment, a TOML file, its defaults.

Every option of the command (`plait serve`) is a setting, whatever branch added it: its key is
the option's argparse `dest` (`--max-rooms` -> `max_rooms`), its environment variable is
`PLAIT_` and the key in capitals (`PLAIT_MAX_ROOMS`), and a value from either is read with the
option's own validator (its `type=`), so it is checked, and refused with the same words, as on
the command line. A flag wins over the environment, which wins over the file, which wins over
the default.

How a value is written, by the option's kind:

- a switch (`store_true`, `store_false`, `--x/--no-x`): TOML `true`/`false`; in the environment
  `true`/`false` (also 1/0, yes/no, on/off);
- a repeatable option (`action="append"`): a TOML list of strings; in the environment the
  items separated by commas (`PLAIT_ALLOW_ORIGIN=https://a.example,https://b.example`);
- any other option: a TOML string, or a number when the option's validator reads one
  (`port = 8765`); in the environment, its text.

An empty environment variable counts as not set (as a shell's `PLAIT_PORT= plait serve`
means). Options whose dest contains "secret", "key" or "token" are secrets: `settings_toml`
shows where they came from, never their value.

The resolution is pure (no I/O but reading the file, no process state): the caller passes
the environment and gets `SettingError` for anything it refuses.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Final

ENV_PREFIX: Final = "PLAIT_"
SECRET_WORDS: Final = ("secret", "key", "token")
"""An option whose dest contains one of these holds a secret: never printed."""
COMMAND_LINE_ONLY: Final = frozenset({"help", "config", "print_config"})
"""Options that say how to read the settings, not what they are: no key, no variable."""
DEFAULT: Final = "default"
TRUE_WORDS: Final = ("true", "1", "yes", "on")
FALSE_WORDS: Final = ("false", "0", "no", "off")
LIST_SEPARATOR: Final = ","


class SettingError(Exception):
    """A setting that cannot be used, as one line: where it came from, the key, what is wrong
    (`plait.toml: port: 'abc' is not a port number`)."""


class Kind(Enum):
    TEXT = "text"
    SWITCH = "switch"
    LIST = "list"


@dataclass(frozen=True, slots=True)
class Option:
    """One setting of the command, derived from its argparse action."""

    key: str
    env: str
    flag: str
    kind: Kind
    action: argparse.Action

    @property
    def secret(self) -> bool:
        """Whether its value is a secret (a file's path is not: --jwt-secret-file shows)."""
        return any(word in self.key for word in SECRET_WORDS) and self.action.type is not Path


@dataclass(frozen=True, slots=True)
class Setting:
    key: str
    value: Any
    source: str
    """`default`, the flag (`--port`), the variable (`PLAIT_PORT`) or the file's name."""
    secret: bool


def options_of(command: argparse.ArgumentParser) -> dict[str, Option]:
    """The command's settings by key, in the order of its options (the first option of a dest
    decides its kind: `--metrics` before `--no-metrics`). Options of a kind that has no
    written form (a `count`, a constant other than a bool) are left out: they are flags only."""
    found: dict[str, Option] = {}
    for action in command._actions:
        key = action.dest
        if key in found or key in COMMAND_LINE_ONLY or key == argparse.SUPPRESS or not action.option_strings:
            continue
        kind = _kind(action)
        if kind is None:
            continue
        flag = next((s for s in action.option_strings if s.startswith("--")), action.option_strings[0])
        found[key] = Option(key, ENV_PREFIX + key.upper(), flag, kind, action)
    return found


def _kind(action: argparse.Action) -> Kind | None:
    if isinstance(action, argparse.BooleanOptionalAction) or (action.nargs == 0 and isinstance(action.const, bool)):
        return Kind.SWITCH
    if isinstance(action, argparse._AppendAction) or action.nargs in ("*", "+"):
        return Kind.LIST
    if action.nargs is None or action.nargs == "?":
        return Kind.TEXT
    return None


def resolve(
    command: argparse.ArgumentParser,
    given: Mapping[str, Any],
    environ: Mapping[str, str],
    file: Path | None = None,
) -> dict[str, Setting]:
    """Every setting of `command`, from where it comes first: `given` (the dests the command
    line set: parse it with every default SUPPRESSed), `environ`, the TOML `file`, the default.

    Raises:
        SettingError: the file cannot be read or is not TOML; an unknown key in it; a value
            (in the file or the environment) of the wrong type, or that its option's validator
            refuses.
    """
    options = options_of(command)
    from_file = read_file(file, options) if file is not None else {}
    settings: dict[str, Setting] = {}
    for key, option in options.items():
        if key in given:
            value, source = given[key], option.flag
        elif environ.get(option.env):
            value, source = _from_env(option, environ[option.env]), option.env
        elif key in from_file:
            assert file is not None
            value, source = from_file[key], str(file)
        else:
            value, source = _default(option.action), DEFAULT
        settings[key] = Setting(key, value, source, option.secret)
    return settings


def unknown_variables(command: argparse.ArgumentParser, environ: Iterable[str]) -> list[tuple[str, str]]:
    """`PLAIT_` variables that look like a misspelt setting (`PLAIT_PROT`): each with the
    variable it is probably meant to be. A variable not close to any is someone else's
    (`PLAIT_BENCH_PROFILE`) and not named."""
    known = [o.env for o in options_of(command).values()] + [ENV_PREFIX + "CONFIG"]
    found = []
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
            if close:
                found.append((name, close[0]))
    return found


def read_file(path: Path, options: Mapping[str, Option]) -> dict[str, Any]:
    """The settings a TOML file gives, checked and converted as their flags' values are.

    Raises:
        SettingError: as `resolve`.
    """
    try:
        with open(path, "rb") as file:
            table = tomllib.load(file)
    except OSError as exc:
        raise SettingError(f"{path}: {_os_reason(exc)}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingError(f"{path}: not TOML: {exc}") from None
    except UnicodeDecodeError:
        raise SettingError(f"{path}: not TOML: not UTF-8 text") from None
    values: dict[str, Any] = {}
    for key, raw in table.items():
        option = options.get(key)
        if option is None:
            raise SettingError(f"{path}: {key}: {_unknown(key, options)}")
        values[key] = _from_toml(option, raw, f"{path}: {key}")
    return values


def _unknown(key: str, options: Mapping[str, Option]) -> str:
    if key in COMMAND_LINE_ONLY:
        return f"not a setting of the file (give it on the command line{' or as ' + ENV_PREFIX + 'CONFIG' if key == 'config' else ''})"
    spelt = key.replace("-", "_").lower()
    close = [spelt] if spelt in options else difflib.get_close_matches(spelt, list(options), n=1, cutoff=0.7)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"unknown key ({hint}--print-config lists every key)"


def _from_env(option: Option, text: str) -> Any:
    where = option.env
    if option.kind is Kind.SWITCH:
        return _switch(text, where)
    if option.kind is Kind.LIST:
        return [_checked(option, item.strip(), where) for item in text.split(LIST_SEPARATOR) if item.strip()]
    return _checked(option, text, where)


def _switch(text: str, where: str) -> bool:
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise SettingError(f"{where}: {text!r} is not true or false")


def _from_toml(option: Option, raw: object, where: str) -> Any:
    if option.kind is Kind.SWITCH:
        if not isinstance(raw, bool):
            raise SettingError(f"{where}: expected true or false, not {_shown(raw, option)}")
        return raw
    if option.kind is Kind.LIST:
        if not isinstance(raw, list):
            raise SettingError(f"{where}: expected a list ({option.key} = [...]), not {_shown(raw, option)}")
        return [_checked(option, _text(option, item, where), where) for item in raw]
    return _checked(option, _text(option, raw, where), where)


def _text(option: Option, raw: object, where: str) -> str:
    """A TOML value as the text its flag would have been given."""
    numeric = option.action.type not in (None, str, Path)  # a validator that may read a number
    if isinstance(raw, str):
        return raw
    if numeric and isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return str(raw)
    expected = "a number or a string" if numeric else "a string"
    raise SettingError(f"{where}: expected {expected}, not {_shown(raw, option)}")


def _checked(option: Option, text: str, where: str) -> Any:
    """`text` read by the option's validator, as argparse would."""
    convert = option.action.type or str
    assert callable(convert)
    try:
        value = convert(text)
    except argparse.ArgumentTypeError as exc:
        shown = str(exc).replace(repr(text), "(hidden)").replace(text, "(hidden)") if option.secret and text else str(exc)
        raise SettingError(f"{where}: {shown}") from None
    except (TypeError, ValueError):
        raise SettingError(f"{where}: invalid value {_quoted(text, option)}") from None
    choices = option.action.choices
    if choices is not None and value not in choices:
        raise SettingError(f"{where}: {_quoted(text, option)} is not one of {', '.join(map(str, choices))}")
    return value


def _default(action: argparse.Action) -> Any:
    default = action.default
    if isinstance(default, str) and action.type is not None and callable(action.type):
        return action.type(default)  # argparse converts a default given as text
    return list(default) if isinstance(default, list) else default


def _os_reason(exc: OSError) -> str:
    return os.strerror(exc.errno).lower() if exc.errno else str(exc)


# -- showing the settings (plait serve --print-config) --------------------------------------------


def settings_toml(settings: Mapping[str, Setting], header: Sequence[str] = ()) -> str:
    """The settings as a TOML file that gives them all, each line with where its value came
    from; a secret, or a setting with no value (None), is a comment, so the file leaves it to
    the environment or the default."""
    rows: list[tuple[str, str]] = []
    for s in settings.values():
        if s.secret and s.value not in (None, "", []):
            rows.append((f"# {s.key} = (hidden)", s.source))
        elif isinstance(s.value, str) and hide_password(s.value) != s.value:
            rows.append((f"# {s.key} = {toml_value(hide_password(s.value))}", s.source))
        elif s.value is None:
            rows.append((f"# {s.key} = (not set)", s.source))
        else:
            rows.append((f"{s.key} = {toml_value(s.value)}", s.source))
    width = min(max((len(line) for line, _ in rows), default=0), 48)
    lines = [f"# {line}" for line in header]
    lines += [f"{line.ljust(width)}  # {source}" for line, source in rows]
    return "\n".join(lines) + "\n"


def toml_value(value: object) -> str:
    """`value` (a bool, number, text, path or a list of them) in TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    # A JSON string is a TOML basic string, but for DEL, which TOML wants escaped.
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")


_URL_PASSWORD = re.compile(r"(://[^/@:]*:)[^/@]*@")
_KEYWORD_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S*)")


def hide_password(text: str) -> str:
    """`text` with the password of a connection URL (`postgresql://USER:PASSWORD@HOST`,
    `redis://:PASSWORD@HOST`) or libpq keyword (`password=...`) replaced by `(hidden)`: for what
    is printed or logged. A database's password belongs in its own file (~/.pgpass) or
    environment (PGPASSWORD), which Plait never prints."""
    return _KEYWORD_PASSWORD.sub(r"\1(hidden)", _URL_PASSWORD.sub(r"\1(hidden)@", text))


def _quoted(text: str, option: Option) -> str:
    return _shown(text, option) if option.secret else repr(hide_password(text))


def _shown(raw: object, option: Option | None = None) -> str:
    """A value as an error shows it: a secret's only by its type (an error goes to logs)."""
    if option is not None and option.secret:
        return f"a {type(raw).__name__} (hidden: a secret)"
    if isinstance(raw, str):
        return toml_value(hide_password(raw))
    if isinstance(raw, (bool, int, float, list)):
        return toml_value(raw)
    return "a table" if isinstance(raw, dict) else f"a {type(raw).__name__}"
