"""Training rows as Arrow files in a content-addressed cache, memory-mapped from validation to the trainer.

A local training file is converted once, in chunks, into an Arrow IPC stream file under the data cache
(``$EMBEDKIT_CACHE/data``, else ``$XDG_CACHE_HOME/embedkit/data``, else ``~/.cache/embedkit/data``). The file's
name is a hash of the source file's SHA-256 and the reader's settings (format, columns, column types, reader
version), so the same rows read the same way are found again and a second validation reads nothing but the
hash. An entry is complete when its ``.json`` record exists: the Arrow file is written to a temporary name and
renamed first, the record last, so a reader never sees half an entry (two processes converting the same file at
once each write whole files; the last rename wins, with the same content).

The record is written only once the command that read the file is accepted (:func:`until_accepted`: ``train``
after its output folder is reserved, ``check`` once every check passed): a refused command leaves the cache as it
found it, as it leaves every other file. An entry never accepted is removed when the process ends.

``datasets.Dataset.from_file`` memory-maps the same file for training (:meth:`ArrowRows.dataset`); validation
itself needs only ``pyarrow`` (``datasets`` is not imported: ``embedkit check`` stays light). Nothing is ever
evicted: remove the folder to reclaim the space.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from itertools import accumulate
from pathlib import Path
from typing import Any

import pyarrow as pa

CACHE_ENV = "EMBEDKIT_CACHE"
READER_VERSION = 1  # bump when a reader's output for the same file changes: old entries are then not found
SCORE = "score"
ID = "id"  # an integer column (CCP's document ids)


def cache_dir() -> Path:
    """The folder the data cache lives in (created on first write)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser() / "data"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "embedkit" / "data"


def entry_key(sha256: str, settings: Mapping[str, Any]) -> str:
    """The cache name of a file's rows read with ``settings`` (format, columns, types)."""
    text = json.dumps({"v": READER_VERSION, "sha256": sha256, **settings}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def arrow_type(kind: str) -> Any:
    return pa.float64() if kind == SCORE else pa.int64() if kind == ID else pa.string()


def to_arrow(values: list[Any], kind: Any) -> Any:
    """An Arrow array of checked values (strings, or floats), built from its buffers: pyarrow's converter from
    Python objects gives the same array but maps ~50 MB of library code on its first call, a quarter of what a
    check may use."""
    if kind == pa.float64():
        return pa.Array.from_buffers(kind, len(values), [None, pa.py_buffer(array("d", values))])
    if kind == pa.int64():
        return pa.Array.from_buffers(kind, len(values), [None, pa.py_buffer(array("q", values))])
    text = "".join(values)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (from JSON): pyarrow's converter says what it says of it
        return pa.array(values, type=kind)
    if len(data) >= 2**31:  # beyond 32-bit offsets: in two halves
        half = len(values) // 2
        return pa.concat_arrays([to_arrow(values[:half], kind), to_arrow(values[half:], kind)])
    lengths = map(len, values) if len(data) == len(text) else (len(v.encode("utf-8")) for v in values)
    offsets = array("i", accumulate(lengths, initial=0))
    return pa.Array.from_buffers(kind, len(values), [None, pa.py_buffer(offsets), pa.py_buffer(data)])


@dataclass(frozen=True)
class ArrowRows:
    """The rows of one cache entry: an Arrow stream file, its column names, and how many of its rows are used
    (``limit``: ``data.train.max_samples``, applied without reading the rest)."""

    path: Path
    names: tuple[str, ...]
    rows: int
    limit: int | None = None

    def __len__(self) -> int:
        return self.rows if self.limit is None else min(self.rows, self.limit)

    def head(self, n: int) -> ArrowRows:
        return replace(self, limit=min(n, len(self)))

    def table(self) -> Any:
        """The used rows as a ``pyarrow.Table`` whose buffers are the memory-mapped file (nothing is copied)."""
        table = pa.ipc.open_stream(pa.memory_map(str(self.path))).read_all()
        return table.slice(0, len(self)) if len(self) < table.num_rows else table

    def column(self, name: str) -> list[Any]:
        return self.table().column(name).to_pylist()

    def batches(self, size: int) -> Iterator[dict[str, list[Any]]]:
        """The used rows, a record batch at a time, read (not memory-mapped: a walk over every row would leave
        the whole file's pages in the process's resident memory) and freed one after the other."""
        left = len(self)
        with pa.OSFile(str(self.path)) as fh:
            for batch in pa.ipc.open_stream(fh):
                if left <= 0:
                    break
                batch = batch.slice(0, left)
                left -= batch.num_rows
                for start in range(0, batch.num_rows, size):
                    yield batch.slice(start, size).to_pydict()

    def dataset(self) -> Any:
        """A ``datasets.Dataset`` memory-mapping the file (its first ``len(self)`` rows)."""
        import datasets

        ds = datasets.Dataset.from_file(str(self.path))
        return ds.select(range(len(self))) if len(self) < len(ds) else ds


# Entries this process converted whose record waits for the command to be accepted: key -> (rows, record).
_pending: dict[str, tuple[ArrowRows, dict[str, Any]]] = {}


def commit_pending() -> None:
    """Write the record of every entry converted so far (they become visible to later runs)."""
    while _pending:
        key, (rows, meta) = _pending.popitem()
        record = rows.path.with_name(f".{key}.{os.getpid()}.json.partial")
        try:
            record.write_text(json.dumps(meta), encoding="utf-8")
            os.replace(record, rows.path.with_name(f"{key}.json"))
        except OSError:
            record.unlink(missing_ok=True)  # not cached: the next run converts the file again


def discard_pending() -> None:
    """Remove the Arrow file of every entry converted so far that no record completes."""
    while _pending:
        key, (rows, _) = _pending.popitem()
        if not rows.path.with_name(f"{key}.json").exists():
            rows.path.unlink(missing_ok=True)


atexit.register(discard_pending)


@contextmanager
def until_accepted() -> Iterator[None]:
    """Around a command's validation and refusals: entries converted inside are kept when it ends normally,
    removed when it raises (a refusal)."""
    try:
        yield
    except BaseException:
        discard_pending()
        raise
    commit_pending()


def lookup(key: str) -> ArrowRows | None:
    """The complete entry ``key`` (or one this process converted), or ``None`` (absent, or damaged: its Arrow
    file missing or of another size)."""
    if key in _pending:
        return _pending[key][0]
    folder = cache_dir()
    try:
        meta = json.loads((folder / f"{key}.json").read_text(encoding="utf-8"))
        path = folder / f"{key}.arrow"
        if path.stat().st_size != meta["bytes"]:
            return None
        return ArrowRows(path, tuple(meta["names"]), int(meta["rows"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def lookup_or_write(key: str, names: Sequence[str], types: Sequence[str], source: str,
                    fill: Callable[[EntryWriter], ArrowRows]) -> ArrowRows | None:
    """Entry ``key`` from the cache, or, on a miss, the entry ``fill`` writes and commits through the writer it is
    given (removed again if ``fill`` raises); ``None`` when the cache folder cannot be written."""
    rows = lookup(key)
    if rows is not None:
        return rows
    try:
        writer = EntryWriter(key, names, types, source)
    except OSError:
        return None
    try:
        return fill(writer)
    except BaseException:
        writer.abort()
        raise


class EntryWriter:
    """Writes one cache entry chunk by chunk; :meth:`commit` makes it visible, :meth:`abort` removes it."""

    def __init__(self, key: str, names: Sequence[str], types: Sequence[str], source: str) -> None:
        self.key, self.names, self.source, self.rows = key, list(names), source, 0
        self.folder = cache_dir()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.tmp = self.folder / f".{key}.{os.getpid()}.partial"
        self.schema = pa.schema([(n, arrow_type(t)) for n, t in zip(names, types, strict=True)])
        self._sink = pa.OSFile(str(self.tmp), "wb")
        self._writer = pa.ipc.new_stream(self._sink, self.schema)

    def write(self, chunk: Mapping[str, list[Any]]) -> None:
        arrays = [to_arrow(chunk[n], f.type) for n, f in zip(self.names, self.schema)]
        self._writer.write_batch(pa.record_batch(arrays, schema=self.schema))
        self.rows += len(arrays[0]) if arrays else 0

    def commit(self) -> ArrowRows:
        """The finished Arrow file in place; its record waits for the command (:func:`until_accepted`)."""
        self._writer.close()
        self._sink.close()
        path = self.folder / f"{self.key}.arrow"
        os.replace(self.tmp, path)
        meta = {"names": self.names, "rows": self.rows, "bytes": path.stat().st_size, "source": self.source}
        rows = ArrowRows(path, tuple(self.names), self.rows)
        _pending[self.key] = (rows, meta)
        return rows

    def abort(self) -> None:
        try:
            self._writer.close()
            self._sink.close()
        except Exception:  # noqa: BLE001 - a half-written stream may refuse to close; it is removed anyway
            pass
        self.tmp.unlink(missing_ok=True)
