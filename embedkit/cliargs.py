"""Command-line spellings shared by every command: one name per concept, old spellings kept as aliases."""

from __future__ import annotations

import argparse
from typing import Any

from embedkit.log import notice


class _Renamed(argparse.Action):
    """An old spelling of an option: it still works, and says once what the option is called now."""

    def __init__(self, option_strings: list[str], dest: str, new: str, flag: bool = False, **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, nargs=0 if flag else None, **kwargs)
        self.flag = flag

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        notice(f"{option_string} is now spelled {self.new}; the old spelling still works")
        setattr(namespace, self.dest, True if self.flag else values)


def add_renamed(parser: argparse.ArgumentParser | argparse._ArgumentGroup, old: str, new: str, dest: str,
                flag: bool = False) -> None:
    """Accept ``old`` as a hidden alias of the option ``new`` (stored in ``dest``)."""
    parser.add_argument(old, action=_Renamed, new=new, flag=flag, dest=dest, help=argparse.SUPPRESS)


def add_no_progress(parser: argparse.ArgumentParser, what: str = "encoding") -> None:
    """``--no-progress``: the same flag on every long command (``args.progress`` is then False, else None: a bar
    only when stderr is a terminal)."""
    parser.add_argument("--no-progress", dest="progress", action="store_const", const=False, default=None,
                        help=f"no progress bar while {what} (default: one on stderr when it is a terminal)")


def number_or_off(off: Any = None, expected: str = "a number in (0, 1]") -> Any:
    """An argparse ``type``: a float, or ``none`` / ``off`` / ``null`` (any case) meaning the option is off,
    returned as ``off``."""

    def parse(text: str) -> Any:
        if text.lower() in ("none", "off", "null"):
            return off
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected} or 'none', got {text!r}") from None

    return parse
