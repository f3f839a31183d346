"""UTF-8 errors that point at the bad byte: file, line and absolute byte offset.

``UnicodeDecodeError.start`` from a text-mode file is relative to the chunk the decoder was handed, not to
the file, so it cannot be shown to users as is; :func:`utf8_error_at` rescans the bytes to find the real place.
"""

from __future__ import annotations

import codecs
import io
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

from embedkit.errors import DataError

_CHUNK = 1 << 20


def utf8_error_at(stream: BinaryIO) -> tuple[int, int, int] | None:
    """``(line, byte offset, byte)`` of the first byte of ``stream`` that is not valid UTF-8, or ``None``.

    The line is 1-based, the offset 0-based from the start of the stream. Reads in chunks: memory stays flat.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    fed = 0  # bytes handed to the decoder so far
    newlines = 0  # in the bytes before the ones the decoder still holds (a partial sequence holds no newline)
    while True:
        chunk = stream.read(_CHUNK)
        pending = decoder.getstate()[0]
        try:
            decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as err:
            offset = fed - len(pending) + err.start  # err.start counts from the held bytes, then this chunk
            line = newlines + chunk[: max(0, err.start - len(pending))].count(b"\n") + 1
            return line, offset, (pending + chunk)[err.start]
        if not chunk:
            return None
        fed += len(chunk)
        newlines += chunk.count(b"\n")


def not_utf8_message(name: str | os.PathLike, stream: BinaryIO) -> str:
    """One line: ``name:line: byte 0x.. at offset N is not valid UTF-8; expected UTF-8 text``."""
    found = utf8_error_at(stream)
    if found is None:
        return f"{name}: not valid UTF-8; expected UTF-8 text"
    line, offset, byte = found
    return f"{name}:{line}: byte 0x{byte:02x} at offset {offset} is not valid UTF-8; expected UTF-8 text"


def not_utf8(path: str | os.PathLike) -> DataError:
    """A :class:`DataError` naming the line and byte offset of the first bad byte of the file at ``path``."""
    with open(path, "rb") as fh:
        return DataError(not_utf8_message(path, fh))


def decode_utf8(data: bytes, name: str | os.PathLike) -> str:
    """``data`` decoded as UTF-8, or a :class:`DataError` naming the line and offset of the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(not_utf8_message(name, io.BytesIO(data))) from None


@contextmanager
def utf8_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn a ``UnicodeDecodeError`` raised while reading ``path`` into :func:`not_utf8`'s one-line error."""
    try:
        yield
    except UnicodeDecodeError:
        raise not_utf8(path) from None


def json_objects(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line, object)`` for each non-blank line of a JSON-lines file; a line that is not a JSON object is a
    :class:`DataError` naming the file and line."""
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
            except RecursionError:
                raise DataError(f"{path}:{lineno}: JSON nested too deeply") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj
