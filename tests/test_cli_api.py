"""The command line's surface: ``--version``, help text on every argument of every sub-command, and one spelling
of each option across commands (``-o/--output`` wherever a command writes somewhere, ``--data-dir``, ...)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from embedkit.cli import build_parser, main
from embedkit.version import __version__

ROOT = Path(__file__).resolve().parent.parent

# The spellings every command uses for these concepts (dest → option strings).
CANONICAL = {"output": {"-o", "--output"}, "data_dir": {"--data-dir"}, "overwrite": {"--overwrite"},
             "batch_size": {"--batch-size"}, "no_chart": {"--no-chart"}, "progress": {"--no-progress"}}


def commands(parser: argparse.ArgumentParser, prefix: str = "embedkit"):
    """(command path, parser) of the parser and every sub-command below it."""
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, f"{prefix} {name}")


def test_version_prints_the_version_and_exits_0(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"embedkit {__version__}"


def test_version_from_a_fresh_process():
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "embedkit.cli", "--version"], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"embedkit {__version__}"


def test_every_argument_of_every_command_has_help():
    missing = []
    found = 0
    for path, parser in commands(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                missing += [f"{path} {c.dest}" for c in action._choices_actions if not (c.help or "").strip()]
                continue
            found += 1
            if not (action.help or "").strip():
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert found > 60, "the walk did not reach the sub-commands"
    assert not missing, "arguments without help: " + ", ".join(missing)


def test_one_spelling_per_option_across_commands():
    """The same destination has the same option strings in every command, and the same option string the
    same destination; output paths are ``-o/--output`` everywhere."""
    by_dest: dict[str, dict[frozenset, list[str]]] = {}
    by_option: dict[str, set[str]] = {}
    for path, parser in commands(build_parser()):
        for action in parser._actions:
            if not action.option_strings or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            if action.help == argparse.SUPPRESS:  # an old spelling kept as a hidden alias (it says the new one)
                continue
            by_dest.setdefault(action.dest, {}).setdefault(frozenset(action.option_strings), []).append(path)
            for option in action.option_strings:
                by_option.setdefault(option, set()).add(action.dest)
    differing = {dest: {"/".join(sorted(k)): v for k, v in spellings.items()}
                 for dest, spellings in by_dest.items() if len(spellings) > 1}
    assert not differing, f"one concept, several spellings: {differing}"
    reused = {option: dests for option, dests in by_option.items() if len(dests) > 1}
    assert not reused, f"one option, several meanings: {reused}"
    for dest, options in CANONICAL.items():
        assert set(next(iter(by_dest[dest]))) == options, (dest, by_dest[dest])
    assert "out" not in by_dest
    # Every command that writes an output file or folder takes -o/--output.
    writers = {"embedkit eval", "embedkit encode", "embedkit data diagnose", "embedkit data mine"}
    assert writers <= set(next(iter(by_dest["output"].values())))


def test_diagnose_writes_where_output_says(tmp_path):
    """``data diagnose -o DIR`` (was ``--out``) reaches the command as ``output``."""
    args = build_parser().parse_args(["data", "diagnose", "quickstart", "-o", str(tmp_path / "d")])
    assert args.output == str(tmp_path / "d")
