"""One logger for embedkit (``logging.getLogger("embedkit")``): progress lines, notes and warnings.

Progress goes to stdout as ``[embedkit] …`` (``[embedkit eval] …`` on stderr while evaluating, so that a table on
stdout stays clean), a note about something done instead of what was asked goes to stderr as ``embedkit: note: …``.
Only the main process (rank 0, :func:`embedkit.distributed.is_main`) prints, so a ``torchrun`` job says each thing
once. Library-style messages
(cache fallbacks, head choices) use :func:`get_logger` and reach the user through the same handler.
"""

from __future__ import annotations

import logging
import sys

from embedkit.distributed import is_main

LOGGER = logging.getLogger("embedkit")


class _Handler(logging.Handler):
    """INFO to stdout with ``[embedkit]``; WARNING and above to stderr with ``embedkit: note:``. Streams are looked
    up at each message (pytest and notebooks replace them)."""

    def emit(self, record: logging.LogRecord) -> None:
        if not is_main():
            return
        prefix = getattr(record, "prefix", None)
        if record.levelno >= logging.WARNING:
            stream, prefix = sys.stderr, prefix or "embedkit: note:"
        else:
            stream = sys.stderr if getattr(record, "to_stderr", False) else sys.stdout
            prefix = prefix or "[embedkit]"
        try:
            print(f"{prefix} {record.getMessage()}", file=stream, flush=True)
        except (BrokenPipeError, ValueError):  # a closed pipe or stream: progress is not worth a traceback
            pass


if not any(isinstance(h, _Handler) for h in LOGGER.handlers):
    LOGGER.addHandler(_Handler())
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False


def get_logger(name: str) -> logging.Logger:
    """A child of the embedkit logger (``name`` is usually ``__name__``)."""
    return LOGGER.getChild(name.removeprefix("embedkit.")) if name != "embedkit" else LOGGER


def log(msg: str) -> None:
    """A progress line: ``[embedkit] msg`` on stdout."""
    LOGGER.info(msg)


def notice(msg: str) -> None:
    """Something the user did not ask for happens instead: ``embedkit: note: msg`` on stderr."""
    LOGGER.warning(msg)


def progress(msg: str, enabled: bool = True) -> None:
    """Evaluation progress: ``[embedkit eval] msg`` on stderr."""
    if enabled:
        LOGGER.info(msg, extra={"prefix": "[embedkit eval]", "to_stderr": True})
