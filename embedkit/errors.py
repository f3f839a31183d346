"""Errors that embedkit shows to users as one clear message instead of a traceback."""

from __future__ import annotations


class EmbedkitError(Exception):
    """A user-facing error: the CLI prints ``str(err)`` and exits with status 2.

    Messages name the file (and line or key) at fault and what was expected.
    """


class RecipeError(EmbedkitError):
    """A recipe that does not validate: unknown key, wrong type, missing file, bad data."""


class DataError(EmbedkitError):
    """A data file that cannot be read: missing, empty or with a malformed line."""


class NonFiniteLossError(EmbedkitError):
    """Training produced a NaN or infinite loss; the run stops at that step."""
