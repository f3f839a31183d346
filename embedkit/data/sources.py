"""Training-data sources: local text / CSV / TSV / JSONL files, SICK and STS-B builders, Hub datasets.

Local files are read in plain Python and ``pyarrow`` (no torch, no ``datasets``) so that a recipe's data can be
checked in full, with file and line in every error, before any model loads. The readers stream: a chunk of rows
at a time is checked and written to the data cache (:mod:`embedkit.data.cache`), an Arrow file that the trainer
memory-maps; a second read of the same file finds it there. The result, a :class:`TrainData`, reads as a mapping
of column name to list of values, in the order the method expects its columns: strings for text columns, floats
for score columns (each column's type is declared by the method, see :meth:`Method.column_types`).
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from embedkit.data import cache
from embedkit.data.ranking import RERANK_COLUMNS, read_rerank
from embedkit.data.stream import local_stream
from embedkit.data.sts import read_sick, read_stsb, sha256_file
from embedkit.data.textio import json_objects, utf8_errors
from embedkit.errors import DataError
from embedkit.model_ref import require_hub

FORMATS = ("auto", "text", "csv", "tsv", "jsonl", "sick", "stsb", "rerank", "hub")
TEXT, SCORE = "text", "score"  # column types: a non-empty string; a finite number (read as float)
_SUFFIX_FORMATS = {".txt": "text", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
CHUNK_ROWS = 65536  # rows a chunked reader hands on at a time (validation holds one chunk)


class TrainData:
    """Columns of training text, in method order, plus provenance.

    The rows live in one of three places: a dict of lists (``columns``: small sets built in memory, mined rows),
    a memory-mapped Arrow file of the data cache (:class:`~embedkit.data.cache.ArrowRows`: local files) or a
    loaded ``datasets.Dataset`` (:class:`HubRows`: Hub datasets). ``columns`` reads like a dict of lists in every
    case; for the last two it is a lazy mapping that reads a column (into a list) only when it is indexed, so
    the column names and the row count cost nothing. :meth:`batches` walks the rows a chunk at a time and
    :meth:`to_dataset` hands the trainer a ``datasets.Dataset`` without a round trip through lists.
    """

    def __init__(self, columns: Mapping[str, list[Any]] | None = None, description: str = "",
                 sha256: str | None = None, rows: Any = None) -> None:
        self.description, self.sha256 = description, sha256
        self._rows = rows
        self._columns: Any = dict(columns) if rows is None else LazyColumns(rows)

    @property
    def columns(self) -> Mapping[str, list[Any]]:
        return self._columns

    @columns.setter
    def columns(self, value: Mapping[str, list[Any]]) -> None:  # rows rebuilt in memory (held-out slice, ...)
        self._rows, self._columns = None, dict(value)

    @property
    def column_names(self) -> list[str]:
        return list(self._columns)

    @property
    def in_memory(self) -> bool:
        return self._rows is None

    def __len__(self) -> int:
        if self._rows is not None:
            return len(self._rows)
        return len(next(iter(self._columns.values()))) if self._columns else 0

    def keep_first(self, n: int) -> None:
        """Keep the first ``n`` rows (``data.train.max_samples``); the rest is never read."""
        if self._rows is not None:
            self._rows = self._rows.head(n)
            self._columns = LazyColumns(self._rows)
        else:
            self._columns = {k: v[:n] for k, v in self._columns.items()}

    def batches(self, size: int | None = None) -> Iterator[dict[str, list[Any]]]:
        """The rows as dicts of lists of at most ``size`` rows each (default :data:`CHUNK_ROWS`), in order
        (memory: one chunk)."""
        size = size or CHUNK_ROWS
        if self._rows is not None:
            yield from self._rows.batches(size)
            return
        for start in range(0, len(self), size):
            yield {k: v[start:start + size] for k, v in self._columns.items()}

    def derived_path(self, tag: str) -> Path | None:
        """Where to keep a result computed from exactly these rows (``tag`` names it): beside their cache entry;
        ``None`` for rows held in memory."""
        path = getattr(self._rows, "path", None)
        return path.with_name(f"{path.stem}.{len(self)}.{tag}") if path is not None else None

    def to_dataset(self, names: Sequence[str]) -> Any:
        """A ``datasets.Dataset`` of these rows with the columns renamed ``names`` (the method's roles), in order:
        the memory-mapped cache file or the Hub dataset itself, or built from the lists."""
        import datasets

        if self._rows is None:
            return datasets.Dataset.from_dict(dict(zip(names, self._columns.values(), strict=True)))
        ds = self._rows.dataset()
        mapping = dict(zip(ds.column_names, names, strict=True))
        return ds.rename_columns(mapping) if any(k != v for k, v in mapping.items()) else ds


    def to_stream(self, names: Sequence[str]) -> Any:
        """A ``datasets.IterableDataset`` of these rows with the columns renamed ``names``, in file order
        (``data.train.streaming``): the data cache's Arrow file read a record batch at a time, or the rows held
        in memory (a set that could not be cached, or that a method built)."""
        if isinstance(self._rows, cache.ArrowRows):
            return local_stream(self._rows, names)
        return self.to_dataset(names).to_iterable_dataset()


class LazyColumns(Mapping):
    """The columns of rows held outside Python lists, read into a list (once) when indexed."""

    def __init__(self, rows: Any) -> None:
        self._rows, self._read = rows, {}

    def __getitem__(self, name: str) -> list[Any]:
        if name not in self._rows.names:
            raise KeyError(name)
        if name not in self._read:
            self._read[name] = self._rows.column(name)
        return self._read[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows.names)

    def __len__(self) -> int:
        return len(self._rows.names)


class HubRows:
    """A loaded ``datasets.Dataset`` as :class:`TrainData` rows (the interface of
    :class:`~embedkit.data.cache.ArrowRows`)."""

    def __init__(self, ds: Any) -> None:
        self.ds, self.names = ds, tuple(ds.column_names)

    def __len__(self) -> int:
        return len(self.ds)

    def head(self, n: int) -> HubRows:
        return HubRows(self.ds.select(range(n))) if n < len(self.ds) else self

    def column(self, name: str) -> list[Any]:
        return list(self.ds[name])

    def batches(self, size: int) -> Iterator[dict[str, list[Any]]]:
        yield from self.ds.iter(batch_size=size)

    def dataset(self) -> Any:
        return self.ds


def infer_format(path: str, fmt: str) -> str:
    """Return ``fmt`` or, for ``auto``, the format implied by the file name."""
    if fmt != "auto":
        return fmt
    name = Path(path).name
    if name.startswith("SICK"):
        return "sick"
    if name.startswith("sts-") and name.endswith(".csv"):
        return "stsb"
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIX_FORMATS:
        raise DataError(
            f"{path}: cannot tell the format from the suffix {suffix!r}; set data.train.format to one of "
            f"{', '.join(FORMATS[1:])}"
        )
    return _SUFFIX_FORMATS[suffix]


Rows = tuple[dict[str, list[Any]], list[int] | None]  # columns, and the file line of each row (None: not kept)
# A run of rows from a chunked reader: columns, and the file line of each row (a range when no line was skipped).
Chunk = tuple[dict[str, list[Any]], Sequence[int] | None]
_TEXT_BLOCK = 1 << 20  # characters a text reader decodes at a time


def _concat(chunks: Iterator[Chunk], names: list[str] | None = None) -> Rows:
    """Every chunk of a reader in one :data:`Rows` (the whole file in memory)."""
    out: dict[str, list[Any]] | None = {c: [] for c in names} if names is not None else None
    lines: list[int] = []
    for cols, chunk_lines in chunks:
        if out is None:
            out = {c: [] for c in cols}
        for c, values in cols.items():
            out[c].extend(values)
        lines.extend(chunk_lines or ())
    return out if out is not None else {}, lines


def iter_text(path: Path) -> Iterator[Chunk]:
    """One sentence a line, stripped; blank lines are skipped. Lines end where text-mode reading ends them
    (universal newlines), so the line numbers are those of ``for line in open(path)``."""
    with open(path, encoding="utf-8") as fh:
        start, tail = 1, ""
        while block := fh.read(_TEXT_BLOCK):
            parts = (tail + block).split("\n")
            tail = parts.pop()
            yield _text_chunk(parts, start)
            start += len(parts)
        if tail:
            yield _text_chunk([tail], start)


def _text_chunk(parts: list[str], start: int) -> Chunk:
    stripped = [s.strip() for s in parts]
    texts = [s for s in stripped if s]
    if len(texts) == len(stripped):
        return {"text": texts}, range(start, start + len(texts))
    return {"text": texts}, [start + i for i, s in enumerate(stripped) if s]


def read_text(path: Path) -> Rows:
    """One sentence a line; blank lines are skipped."""
    return _concat(iter_text(path), ["text"])


def _check_columns(path: Path, available: list[str], wanted: list[str], where: str) -> None:
    missing = [c for c in wanted if c not in available]
    if missing:
        raise DataError(f"{path}:{where}: missing column(s) {missing}; the file has {available}")


def iter_table(path: Path, delimiter: str, columns: list[str] | None) -> Iterator[Chunk]:
    """A CSV/TSV file with a header row; ``columns`` selects and orders the columns to keep (values as read)."""
    chunk_rows = CHUNK_ROWS
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter, quoting=quoting)
        header = next(reader, None)
        if not header:
            raise DataError(f"{path}:1: expected a header row naming the columns")
        wanted = columns or header
        _check_columns(path, header, wanted, "1")
        index = [header.index(c) for c in wanted]
        out: dict[str, list[Any]] = {c: [] for c in wanted}
        lines: list[int] = []
        end = reader.line_num
        try:
            for row in reader:
                # A quoted field may span lines: a row starts on the line after the previous row ended.
                lineno, end = end + 1, reader.line_num
                if not row:
                    continue
                if len(row) != len(header):
                    raise DataError(
                        f"{path}:{lineno}: expected {len(header)} fields like the header, got {len(row)}"
                    )
                lines.append(lineno)
                for col, i in zip(wanted, index):
                    out[col].append(row[i])
                if len(lines) == chunk_rows:
                    yield out, lines
                    out, lines = {c: [] for c in wanted}, []
        except csv.Error as err:  # e.g. a field over the csv module's size limit, an unclosed quote at the end
            raise DataError(f"{path}:{end + 1}: not valid {'TSV' if delimiter == chr(9) else 'CSV'} ({err})") from None
        if lines:
            yield out, lines


def read_table(path: Path, delimiter: str, columns: list[str] | None) -> Rows:
    """A CSV/TSV file with a header row; ``columns`` selects and orders the columns to keep (values as read)."""
    return _concat(iter_table(path, delimiter, columns), table_names(path, delimiter, columns))


def table_names(path: Path, delimiter: str, columns: list[str] | None) -> list[str] | None:
    """The columns :func:`iter_table` gives (``None`` when the header is missing: the reader says so)."""
    if columns:
        return list(columns)
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            return next(csv.reader(fh, delimiter=delimiter, quoting=quoting), None) or None
    except (UnicodeDecodeError, csv.Error):
        return None


def iter_jsonl(path: Path, columns: list[str] | None) -> Iterator[Chunk]:
    """One JSON object a line; ``columns`` selects the keys (default: the first line's keys); values as read."""
    chunk_rows = CHUNK_ROWS
    wanted = columns
    out: dict[str, list[Any]] = {}
    lines: list[int] = []
    for lineno, obj in json_objects(path):
        if wanted is None:
            wanted = list(obj)
        if not lines:
            out = {c: [] for c in wanted}
        _check_columns(path, list(obj), wanted, str(lineno))
        lines.append(lineno)
        for col in wanted:
            out[col].append(obj[col])
        if len(lines) == chunk_rows:
            yield out, lines
            lines = []
    if lines:
        yield out, lines


def read_jsonl(path: Path, columns: list[str] | None) -> Rows:
    """One JSON object a line; ``columns`` selects the keys (default: the first line's keys); values as read."""
    data, lines = _concat(iter_jsonl(path, columns))
    return data or {c: [] for c in (columns or ["text"])}, lines


def jsonl_names(path: Path, columns: list[str] | None) -> list[str] | None:
    """The columns :func:`iter_jsonl` gives (``None`` when the file has no object to tell: the reader says so)."""
    if columns:
        return list(columns)
    try:
        return next((list(obj) for _, obj in json_objects(path)), None)
    except (DataError, UnicodeDecodeError):
        return None


def to_score(value: Any) -> float | None:
    """A finite float from a number or a numeric string (as CSV/TSV hold them); ``None`` when it is neither."""
    if isinstance(value, bool):  # a JSON true/false is not a score, though Python counts it as an int
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def apply_types(
    path: str | Path, data: dict[str, list[Any]], lines: Sequence[int] | None, types: Sequence[str],
    key: str = "column"
) -> dict[str, list[Any]]:
    """Check each column against its declared type (``text``: a non-empty string; ``score``: a finite number,
    returned as float), naming the file, line and column of the first bad value."""
    for (col, values), kind in zip(data.items(), types, strict=True):
        problem = type_problem(path, col, values, lines, kind, key)
        if problem:
            raise DataError(problem)
    return data


def type_problem(path: str | Path, col: str, values: list[Any], lines: Sequence[int] | None, kind: str,
                 key: str = "column", offset: int = 0) -> str | None:
    """:func:`apply_types` for one column: converts scores in place; the message for the first bad value, or
    ``None``. ``offset``: the rows before ``values`` (a chunk), for the ``row N`` of a source without lines."""
    if kind == SCORE:
        numbers = [to_score(v) for v in values]
        if None not in numbers:
            values[:] = numbers
            return None
        i = numbers.index(None)
        where = f"{path}:{lines[i]}" if lines else f"{path}: row {offset + i + 1}"
        return f"{where}: {key} {col!r}: expected a finite number (a score), got {values[i]!r}"
    try:  # the common case at C speed: every value a string with a non-space character
        if all(map(str.strip, values)):
            return None
    except TypeError:  # a value that is not a string
        pass
    i = next(i for i, v in enumerate(values) if not isinstance(v, str) or not v.strip())
    value = values[i]
    where = f"{path}:{lines[i]}" if lines else f"{path}: row {offset + i + 1}"
    if key == "column" and isinstance(value, str):
        return f"{where}: column {col!r} is empty"
    return f"{where}: {key} {col!r} must be a non-empty string, got {value!r}"


def sick_triples(path: Path) -> dict[str, list[str]]:
    """SICK as NLI triples: (sentence_A, an entailed sentence_B, a contradicting sentence_B).

    Pairs are grouped by sentence_A; each entailment pair is matched with one contradiction pair of the
    same premise (cycling when there are fewer contradictions), as the SimCSE NLI triples are built.
    """
    pairs, labels = read_sick(path, with_labels=True)
    ent: dict[str, list[str]] = defaultdict(list)
    con: dict[str, list[str]] = defaultdict(list)
    for a, b, label in zip(pairs.sentences1, pairs.sentences2, labels):
        if label == "ENTAILMENT":
            ent[a].append(b)
        elif label == "CONTRADICTION":
            con[a].append(b)
    out: dict[str, list[str]] = {"anchor": [], "positive": [], "negative": []}
    for anchor, positives in ent.items():
        negatives = con.get(anchor)
        if not negatives:
            continue
        for i, positive in enumerate(positives):
            out["anchor"].append(anchor)
            out["positive"].append(positive)
            out["negative"].append(negatives[i % len(negatives)])
    return out


def stsb_pairs(path: Path) -> dict[str, list[Any]]:
    """STS Benchmark as scored pairs, score scaled to [0, 1] (column ``score``)."""
    pairs = read_stsb(path)
    return {"sentence1": pairs.sentences1, "sentence2": pairs.sentences2, "score": [s / 5.0 for s in pairs.scores]}


Types = Sequence[str] | Callable[[int], Sequence[str]]  # column types, or a function of the column count


def rerank_pairs(path: Path) -> dict[str, list[str]]:
    """A reranking CSV (``qtext,label,atext``) as (anchor, positive) rows: every candidate of label 1."""
    anchors, positives = read_rerank(path).pairs()
    if not anchors:
        raise DataError(f"{path}: no candidate with label 1; format rerank trains on the positive pairs")
    return {"anchor": anchors, "positive": positives}


def is_rerank_file(path: str | Path) -> bool:
    """Whether ``path`` is a CSV whose header is ``qtext,label,atext`` (a reranking file)."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            header = next(csv.reader(fh), None)
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return header is not None and tuple(h.strip() for h in header) == RERANK_COLUMNS


def read_pairs(path: str, fmt: str = "auto") -> TrainData:
    """(anchor, positive) rows for mining: a reranking CSV (its label-1 pairs), or a csv/tsv/jsonl file with
    ``anchor`` and ``positive`` columns (or exactly two columns, taken in order)."""
    if fmt == "rerank" or (fmt == "auto" and Path(path).suffix.lower() == ".csv" and is_rerank_file(path)):
        return read_local(path, "rerank", None, kind="pairs")
    data = read_local(path, fmt, None, kind="pairs")
    cols = data.columns
    if "anchor" in cols and "positive" in cols:
        data.columns = {"anchor": cols["anchor"], "positive": cols["positive"]}
    elif len(cols) != 2:
        raise DataError(f"{path}: expected columns 'anchor' and 'positive' (or exactly two columns), got {list(cols)}")
    apply_types(path, data.columns, None, (TEXT, TEXT))
    data.columns = dict(zip(("anchor", "positive"), data.columns.values()))
    return data


def read_corpus(path: str) -> list[str]:
    """Candidate texts for mining: a text file (one a line), a reranking CSV (every answer), or a csv/tsv/jsonl
    file with a ``text`` column (or a single column)."""
    if Path(path).suffix.lower() == ".csv" and is_rerank_file(path):
        return read_rerank(path).candidates()
    data = read_local(path, "auto", None, kind="corpus")
    cols = data.columns
    if "text" in cols:
        return [str(t) for t in cols["text"]]
    if len(cols) != 1:
        raise DataError(f"{path}: expected a 'text' column (or a single column), got {list(cols)}")
    return [str(t) for t in next(iter(cols.values()))]


LOCAL_FORMATS = ("text", "csv", "tsv", "jsonl", "sick", "stsb", "rerank")
# The columns of the formats whose columns are fixed, in the order their readers give them.
_FIXED_NAMES = {"text": ["text"], "sick": ["anchor", "positive", "negative"],
                "stsb": ["sentence1", "sentence2", "score"], "rerank": ["anchor", "positive"]}


def read_local(
    path: str, fmt: str, columns: list[str] | None, kind: str = "training", types: Types | None = None
) -> TrainData:
    """Read a local data file into columns; raises :class:`DataError` naming file and line (and ``kind``:
    what the file is for).

    ``types`` declares each column in order, ``text`` or ``score`` (default: all text); score values become
    floats. It may be a function of the number of columns the file gives (a method that takes any number of
    negatives). When the file gives a different number of columns than ``types``, the values are returned as
    read: the caller, which knows the roles, reports the mismatch.

    Where the types fit the columns, the rows are checked a chunk at a time and written to the data cache
    (:mod:`embedkit.data.cache`), or found there from an earlier read of the same file with the same settings
    (then only the file's hash is computed); the :class:`TrainData` memory-maps that Arrow file. Otherwise (and
    where the cache cannot be written) the file is read into lists, as the errors for such a file need.
    """
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{path}: {kind} data file not found")
    fmt = infer_format(path, fmt)
    if fmt not in LOCAL_FORMATS:
        raise DataError(f"{path}: format {fmt!r} is not a local file format")
    names = _names(file, fmt, columns)
    if names and len(set(names)) == len(names):
        resolved = _resolve_types(types, len(names))
        if len(resolved) == len(names):
            rows = _read_cached(path, file, fmt, columns, names, resolved, kind)
            if rows is not None:
                return rows
    return _read_in_memory(path, file, fmt, columns, kind, types)


def _resolve_types(types: Types | None, count: int) -> tuple[str, ...]:
    return tuple(types(count) if callable(types) else types) if types is not None else (TEXT,) * count


def _names(file: Path, fmt: str, columns: list[str] | None) -> list[str] | None:
    """The columns ``fmt``'s reader gives ``file``, told before the rows are read; ``None`` where that takes the
    rows (a missing header, an empty JSON-lines file, a column the format does not give: the reader says so)."""
    if fmt in _FIXED_NAMES:
        fixed = _FIXED_NAMES[fmt]
        return (list(columns) if all(c in fixed for c in columns) else None) if columns else fixed
    if fmt in ("csv", "tsv"):
        return table_names(file, "," if fmt == "csv" else "\t", columns)
    return jsonl_names(file, columns)


def _chunks(file: Path, fmt: str, columns: list[str] | None) -> Iterator[Chunk]:
    """The rows of ``file`` a chunk at a time (the SICK, STS-B and reranking readers give one chunk)."""
    if fmt == "text":
        yield from iter_text(file)
    elif fmt in ("csv", "tsv"):
        yield from iter_table(file, "," if fmt == "csv" else "\t", columns)
    elif fmt == "jsonl":
        yield from iter_jsonl(file, columns)
    else:
        yield {"sick": sick_triples, "stsb": stsb_pairs, "rerank": rerank_pairs}[fmt](file), None


def _read_cached(path: str, file: Path, fmt: str, columns: list[str] | None, names: list[str],
                 types: Sequence[str], kind: str) -> TrainData | None:
    """The rows from the data cache, converting the file on a miss; ``None`` when the cache cannot be written."""
    sha = sha256_file(file)
    key = cache.entry_key(sha, {"format": fmt, "columns": names, "types": list(types)})
    rows = cache.lookup_or_write(key, names, types, str(path),
                                 lambda writer: _convert(path, file, fmt, columns, names, types, kind, writer))
    return None if rows is None else TrainData(None, f"{fmt}:{path}", sha, rows=rows)


def _convert(path: str, file: Path, fmt: str, columns: list[str] | None, names: list[str],
             types: Sequence[str], kind: str, writer: Any) -> Any:
    """One streaming pass over ``file``: each chunk checked by type and written; memory holds one chunk.

    The errors are those of reading the whole file first: a row the reader refuses (bad JSON, a wrong field
    count, bad UTF-8) wins over a bad value anywhere, then an empty set, then the first bad value of the first
    column that has one (so a type problem is kept, not raised, until the file is read)."""
    key = "key" if fmt == "jsonl" else "column"
    problems: dict[int, str] = {}  # column index -> its first bad value
    total = 0
    with utf8_errors(path):
        for chunk, lines in _chunks(file, fmt, columns):
            if fmt in _FIXED_NAMES and columns:
                chunk = {c: chunk[c] for c in columns}
            for j, (col, kind_) in enumerate(zip(names, types, strict=True)):
                if fmt == "text" and kind_ == TEXT:
                    continue  # the reader keeps only stripped, non-empty lines
                if j not in problems:
                    problem = type_problem(path, col, chunk[col], lines, kind_, key, offset=total)
                    if problem:
                        problems[j] = problem
            total += len(chunk[names[0]])
            if not problems:
                writer.write(chunk)
    if not total:
        raise DataError(f"{path}: the {kind} set is empty")
    if problems:
        raise DataError(problems[min(problems)])
    return writer.commit()


def _read_in_memory(path: str, file: Path, fmt: str, columns: list[str] | None, kind: str,
                    types: Types | None) -> TrainData:
    """The whole file into lists (see :func:`read_local`)."""
    lines: list[int] | None = None
    with utf8_errors(path):
        if fmt == "text":
            data, lines = read_text(file)
        elif fmt in ("csv", "tsv"):
            data, lines = read_table(file, "," if fmt == "csv" else "\t", columns)
        elif fmt == "jsonl":
            data, lines = read_jsonl(file, columns)
        else:
            data = next(_chunks(file, fmt, columns))[0]
    if columns and fmt in _FIXED_NAMES:
        unknown = [c for c in columns if c not in data]
        if unknown:
            raise DataError(f"{path}: columns {unknown} do not exist for format {fmt!r}; it gives {list(data)}")
        data = {c: data[c] for c in columns}
    if not data or not next(iter(data.values())):
        raise DataError(f"{path}: the {kind} set is empty")
    resolved = _resolve_types(types, len(data))
    if len(resolved) == len(data):
        apply_types(path, data, lines, resolved, key="key" if fmt == "jsonl" else "column")
    return TrainData(data, f"{fmt}:{path}", sha256_file(file))


def read_hub(
    name: str,
    split: str,
    config: str | None,
    columns: list[str] | None,
    data_files: str | None = None,
    types: Types | None = None,
    max_samples: int | None = None,
    key: str = "data.train",
) -> TrainData:
    """A dataset from the HuggingFace Hub (or a local folder ``load_dataset`` understands); ``key`` is the
    recipe section named in errors (``data.train``, ``data.replay``).

    ``types`` declares each column in order as for :func:`read_local`; ``score`` columns are checked and
    converted to floats (a Hub CSV may hold them as strings). Text columns are taken as they are. The rows stay
    the loaded ``datasets.Dataset`` (memory-mapped from datasets' cache); ``max_samples`` selects the first rows
    before anything is read.
    """
    import datasets
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    if not Path(name).exists() and name not in _PACKAGED_DATASETS_MODULES:  # a Hub dataset, not `json` + files
        # One short probe first: offline, datasets would retry for a minute.
        require_hub(f"{key}.hub {name}", f"use a local file in {key}.path (a {{data_dir}} path needs "
                    "--data-dir or $EMBEDKIT_DATA)", name=name)

    try:
        ds = datasets.load_dataset(name, config, split=split, data_files=data_files)
    except Exception as err:  # noqa: BLE001 - any loading failure becomes one clear message
        raise DataError(
            f"{key}.hub: could not load dataset {name!r} (split {split!r}): {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}. Offline? Use a local file in {key}.path."
        ) from None
    wanted = columns or ds.column_names
    _check_columns(Path(name), ds.column_names, wanted, split)
    fingerprint = getattr(ds, "_fingerprint", None)
    if not wanted or not len(ds):
        raise DataError(f"{name} ({split}): the training set is empty")
    if wanted != ds.column_names:
        ds = ds.select_columns(wanted)
    if max_samples and max_samples < len(ds):
        ds = ds.select(range(max_samples))
    if callable(types):
        types = types(len(wanted))
    if types is not None and len(types) == len(wanted):  # else build_dataset reports the column count
        for col, kind in zip(wanted, types):
            if kind == SCORE:  # one column of numbers in memory, checked and converted, then put back in place
                values = list(ds[col])
                apply_types(f"{name} ({split})", {col: values}, None, (SCORE,))
                ds = ds.remove_columns(col).add_column(col, values).select_columns(wanted)
    return TrainData(None, f"hub:{name}:{split}", fingerprint, rows=HubRows(ds))


def read_train_source(src: Any, method_name: str, roles: Sequence[str], types: Types,
                      problem: Callable[[list[str]], str | None] | None = None) -> TrainData:
    """The training set a recipe's ``data.train`` names on the Hub, exactly as training reads it (``data_files``,
    ``max_samples``), checked against the method's roles (or by ``problem``, the method's
    :meth:`~embedkit.methods.base.Method.column_problem`, when given). ``embedkit data diagnose`` reads through
    here too, so it diagnoses the rows the recipe trains on."""
    data = read_hub(src.hub, src.split, src.config, src.columns, src.data_files, types, src.max_samples)
    if problem is not None:
        why = problem(list(data.columns))
        if why:
            raise DataError(f"data.train: {why}")
    elif len(data.columns) != len(roles):
        raise DataError(
            f"data.train: method {method_name!r} needs {len(roles)} column(s) ({', '.join(roles)}); "
            f"the dataset gives {list(data.columns)}; select them with data.train.columns"
        )
    return data


# The text columns a replayed file of a fixed-column format gives by default (the score is not replayed).
_REPLAY_TEXT_COLUMNS = {"stsb": ["sentence1", "sentence2"], "sick": ["anchor", "positive", "negative"]}


def read_replay(replay: Any, path: str | None) -> TrainData:
    """The rows ``data.replay`` names (already resolved to the local file ``path``; ``None``: its Hub dataset
    ``replay.hub``): its text columns (``replay.columns``, by default every column; ``stsb``: sentence1 and
    sentence2), every value a non-empty text, the first ``max_samples`` rows when set. Raises :class:`DataError`
    naming the file and line (a Hub dataset: its row and column)."""
    if path is None:
        data = read_hub(replay.hub, replay.split, replay.config, replay.columns, replay.data_files,
                        max_samples=replay.max_samples, key="data.replay")
        start = 0
        for chunk in data.batches():
            for column, values in chunk.items():
                bad = next((i for i, v in enumerate(values) if not isinstance(v, str) or not v.strip()), None)
                if bad is not None:
                    raise DataError(f"{replay.hub} ({replay.split}): row {start + bad} column {column!r}: expected a "
                                    f"non-empty text to replay, got {values[bad]!r}")
            start += len(next(iter(chunk.values()), []))
        return data
    fmt = infer_format(path, replay.format)
    columns = replay.columns or _REPLAY_TEXT_COLUMNS.get(fmt)
    data = read_local(path, fmt, columns, kind="replay", types=lambda n: (TEXT,) * n)
    if replay.max_samples:
        data.keep_first(replay.max_samples)
    if len(data) == 0:
        raise DataError(f"{path}: no rows to replay")
    return data
