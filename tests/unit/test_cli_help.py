"""Every flag of every command says what it does and its default (or that it is required); every
`quiver serve` flag also names its QUIVER_* variable, the one ServeConfig reads."""

from __future__ import annotations

import argparse

import pytest

from quiver.cli import build_parser
from quiver.service.config import ServeConfig, env_name


def commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


@pytest.mark.parametrize("name", sorted(commands()))
def test_every_flag_says_what_it_does_and_its_default(name: str) -> None:
    for action in flags(commands()[name]):
        text = action.help or ""
        assert len(text) > 15, f"quiver {name} {action.option_strings[0]}: no help"
        assert "default" in text or "required" in text, f"quiver {name} {action.option_strings[0]}: {text!r}"


def test_every_serve_flag_names_its_environment_variable() -> None:
    serve = {a.dest: a.help or "" for a in flags(commands()["serve"])}
    names = {f for f in ServeConfig.__dataclass_fields__}
    assert set(serve) == names
    for name, text in serve.items():
        assert f"env {env_name(name)}" in text, text
    assert "(default: 256)" in serve["cache_mb"] and "(default: 127.0.0.1:50051)" in serve["listen"]
