"""Every console command's ``--help`` names the default of each option that has one (``commands/cli.make_parser``)."""
from __future__ import annotations

import argparse
import ast
import importlib
from pathlib import Path

import pytest

from mnv2_vision.commands import cli

ROOT = Path(__file__).resolve().parents[1]


def _setup_commands() -> dict[str, str]:
    """setup.py's ``COMMANDS`` (console name → module), read without running setup()."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "COMMANDS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no COMMANDS")


MODULES = sorted(p.stem for p in (ROOT / "mnv2_vision" / "commands").glob("*.py")
                 if p.stem not in ("__init__", "cli"))


class _Parsed(Exception):
    """Raised in place of parsing: carries the parser a command built."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__("parser built")
        self.parser = parser


def _parser_of(module: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    def capture(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise _Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(_Parsed) as e:
        importlib.import_module(f"mnv2_vision.commands.{module}").main([])
    return e.value.parser


def _has_default(action: argparse.Action) -> bool:
    """An option the user may leave out that then takes a value: not a flag's False, not None/[] ("not given")."""
    d = action.default
    return not (d is None or d is False or d is argparse.SUPPRESS or (isinstance(d, (list, str)) and not d)
                or action.help is argparse.SUPPRESS)


def test_every_console_command_is_a_module_checked_here():
    assert sorted(set(_setup_commands().values())) == MODULES


@pytest.mark.parametrize("module", MODULES)
def test_help_names_every_default(module, monkeypatch):
    parser = _parser_of(module, monkeypatch)
    assert issubclass(parser.formatter_class, cli.HelpFormatter), f"{module}: build its parser with make_parser"
    formatter = parser._get_formatter()
    missing = []
    for action in parser._actions:
        text = " ".join(formatter._format_action(action).split())
        if _has_default(action) and "(default:" not in text:
            missing.append(text)
        if action.default is None and "(default: None)" in text:
            missing.append(f"shows None: {text}")
    assert not missing, f"{module} --help: options without their default: {missing}"


@pytest.mark.parametrize("module", ["predict", "benchmark", "train_det"])
def test_help_prints_and_exits_0(module, capsys):
    with pytest.raises(SystemExit) as e:
        importlib.import_module(f"mnv2_vision.commands.{module}").main(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    expected = {"predict": "--score-thresh SCORE_THRESH detection: the lowest score kept and drawn.",
                "benchmark": "--threads THREADS (default: 2)",
                "train_det": "--out OUT run folder (default: runs/<config name>)"}[module]
    assert expected in text
    if module == "predict":
        assert "(default: 0.3)" in text and "eval.score_thresh (0.001" in text
