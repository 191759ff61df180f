"""The ``vocabseg`` command line keeps its surface: subcommands, options, help texts.

``tests/fixtures/cli_surface.json`` is the parser as it was before subcommands
declared their own arguments. Any change of a subcommand's name, help, options,
defaults, types, choices or required flags shows up here as a diff. A deliberate
change (a new option) updates the fixture with

    python tests/test_cli_surface.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from vocabseg.cli import build_parser

FIXTURE = Path(__file__).parent / "fixtures" / "cli_surface.json"


def _plain(value: object) -> object:
    """A JSON-comparable form of an argparse attribute (types by name, tuples as lists)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return getattr(value, "__name__", repr(value))


def _action(action: argparse.Action, groups: dict[int, int]) -> dict:
    return {
        "options": list(action.option_strings),
        "dest": action.dest,
        "action": type(action).__name__,
        "nargs": _plain(action.nargs),
        "default": _plain(action.default),
        "type": _plain(action.type),
        "choices": _plain(action.choices),
        "required": action.required,
        "help": action.help,
        "metavar": _plain(action.metavar),
        "exclusive_group": groups.get(id(action)),
    }


def cli_surface(parser: argparse.ArgumentParser) -> dict:
    """Every subcommand with its help and its arguments, in declaration order."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in sub._choices_actions}
    commands = {}
    for name, p in sub.choices.items():
        groups = {id(a): i for i, g in enumerate(p._mutually_exclusive_groups) for a in g._group_actions}
        commands[name] = {
            "help": helps.get(name),
            "arguments": [_action(a, groups) for a in p._actions if not isinstance(a, argparse._HelpAction)],
        }
    return {
        "prog": parser.prog,
        "description": parser.description,
        "order": list(sub.choices),
        "commands": commands,
    }


def test_subcommands_and_their_options_are_unchanged():
    expected = json.loads(FIXTURE.read_text())
    actual = cli_surface(build_parser())
    assert actual["order"] == expected["order"]
    for name in expected["order"]:
        assert actual["commands"][name] == expected["commands"][name], name
    assert actual == expected


def test_every_subcommand_has_a_runner():
    from vocabseg.cli import _COMMANDS

    assert sorted(_COMMANDS) == sorted(json.loads(FIXTURE.read_text())["order"])


def test_a_name_cannot_be_registered_twice():
    from vocabseg.cli import _COMMANDS, subcommand

    before = dict(_COMMANDS)
    with pytest.raises(ValueError, match="'synth' registered twice"):
        subcommand("synth", lambda p: None, help="another synth")(lambda a: None)
    assert _COMMANDS == before


if __name__ == "__main__":
    FIXTURE.write_text(json.dumps(cli_surface(build_parser()), indent=1) + "\n")
    print(f"wrote {FIXTURE}", file=sys.stderr)
