"""Every option of every benchmark and experiment driver has a help text, as every sb-mal option does."""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
#: Every script of benchmarks/ that runs as a program (helpers such as _stage_clock.py included).
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if '__name__ == "__main__"' in p.read_text(encoding="utf-8"))


class _Parsed(Exception):
    """Raised instead of parsing: carries the parser the script built."""


def parser_of(script: Path) -> argparse.ArgumentParser | None:
    """The argument parser ``script`` builds when run (None if it takes no options)."""
    seen = []
    real = argparse.ArgumentParser.parse_known_args

    def capture(self, args=None, namespace=None):
        seen.append(self)
        raise _Parsed

    argparse.ArgumentParser.parse_known_args = capture
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv, sys.path[:0] = [str(script)], [str(BENCHMARKS)]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except _Parsed:
        pass
    finally:
        argparse.ArgumentParser.parse_known_args = real
        sys.argv, sys.path[:] = saved_argv, saved_path
    return seen[0] if seen else None


def options_without_help(parser: argparse.ArgumentParser, prefix: str = "") -> list[str]:
    """The options and positionals of ``parser`` and of its sub-commands, recursively, that show no help
    (none, empty, or hidden with ``argparse.SUPPRESS``), and the sub-commands without a description."""
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = prefix + (", ".join(action.option_strings) or action.dest)
        if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
            missing.append(name)
        if isinstance(action, argparse._SubParsersAction):
            shown = {c.dest for c in action._choices_actions if (c.help or "").strip()}
            for command, sub in action.choices.items():
                if command not in shown:
                    missing.append(f"{prefix}{command} (sub-command)")
                missing += options_without_help(sub, f"{prefix}{command} ")
    return missing


def test_the_scripts_are_found():
    names = {p.name for p in SCRIPTS}
    assert len(SCRIPTS) >= 15 and {"bench_soft_dtw.py", "diagnostics.py", "_stage_clock.py"} <= names
    assert "protocol.py" not in names and "_results.py" not in names  # libraries, not programs


def test_a_missing_help_is_found():
    """The check itself: an option, a positional, a hidden option and a sub-command's option without help."""
    parser = argparse.ArgumentParser(description="d")
    parser.add_argument("--good", help="has one")
    parser.add_argument("--bare")
    parser.add_argument("--hidden", help=argparse.SUPPRESS)
    parser.add_argument("where")
    sub = parser.add_subparsers(dest="which", help="the command")
    sub.add_parser("run", help="runs").add_argument("--fast")
    sub.add_parser("mute").add_argument("--quiet", help="says nothing")
    assert options_without_help(parser) == ["--bare", "--hidden", "where", "run --fast", "mute (sub-command)"]


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_every_option_has_help(script):
    parser = parser_of(script)
    assert parser is not None, f"{script.name} runs as a program but builds no argument parser (no --help)"
    missing = options_without_help(parser)
    assert not missing, f"{script.name}: options without help: {missing}"
    assert parser.description, f"{script.name}: the parser has no description (its module docstring, say)"
