"""spec/protocol.md is the single source of truth: these checks keep the code and it in step."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from plait.protocol import FRAME_TYPES, CloseCode, ErrorCode, state_diagram
from plait.protocol._frames import RECORD_TYPES, grammar

SPEC = (Path(__file__).parents[2] / "spec" / "protocol.md").read_text()


@pytest.mark.parametrize("cls", [*RECORD_TYPES, *FRAME_TYPES.values()], ids=lambda c: c.__name__)
def test_every_frame_grammar_is_in_the_spec(cls: type) -> None:
    assert grammar(cls) in SPEC


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.name)
def test_every_error_code_is_in_the_registry(code: ErrorCode) -> None:
    assert re.search(rf"^\| {code.value} \| {code.name} \|", SPEC, re.M)


@pytest.mark.parametrize("code", list(CloseCode), ids=lambda c: c.name)
def test_every_close_code_is_in_the_table(code: CloseCode) -> None:
    retry = "yes" if code.retryable else "no"
    assert re.search(rf"^\| {code.value} \| {code.name} \| {retry} \|", SPEC, re.M)


def test_fatal_codes_are_the_ones_the_spec_names() -> None:
    assert {c.value for c in ErrorCode if c.fatal} == set(range(1001, 1008))


def test_state_diagram_in_the_spec_is_generated_from_the_table() -> None:
    assert state_diagram() in SPEC, "regenerate §6 from plait.protocol.state_diagram()"
