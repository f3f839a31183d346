"""Training-data sources: local text / CSV / TSV / JSONL files, SICK and STS-B builders, Hub datasets.

Local files are read in plain Python (no torch, no ``datasets``) so that a recipe's data can be checked
in full, with file and line in every error, before any model loads. The result is a mapping of column name
to list of values, in the order the method expects its columns: strings for text columns, floats for score
columns (each column's type is declared by the method, see :meth:`Method.column_types`).
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedkit.data.ranking import RERANK_COLUMNS, read_rerank
from embedkit.data.sts import read_sick, read_stsb, sha256_file
from embedkit.data.textio import json_objects, utf8_errors
from embedkit.errors import DataError
from embedkit.model_ref import require_hub

FORMATS = ("auto", "text", "csv", "tsv", "jsonl", "sick", "stsb", "rerank", "hub")
TEXT, SCORE = "text", "score"  # column types: a non-empty string; a finite number (read as float)
_SUFFIX_FORMATS = {".txt": "text", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}


@dataclass
class TrainData:
    """Columns of training text, in method order, plus provenance."""

    columns: dict[str, list[Any]]
    description: str
    sha256: str | None = None

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0


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


def read_text(path: Path) -> Rows:
    """One sentence a line; blank lines are skipped."""
    texts, lines = [], []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.strip():
                texts.append(line.strip())
                lines.append(lineno)
    return {"text": texts}, lines


def _check_columns(path: Path, available: list[str], wanted: list[str], where: str) -> None:
    missing = [c for c in wanted if c not in available]
    if missing:
        raise DataError(f"{path}:{where}: missing column(s) {missing}; the file has {available}")


def read_table(path: Path, delimiter: str, columns: list[str] | None) -> Rows:
    """A CSV/TSV file with a header row; ``columns`` selects and orders the columns to keep (values as read)."""
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    lines: list[int] = []
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter, quoting=quoting)
        header = next(reader, None)
        if not header:
            raise DataError(f"{path}:1: expected a header row naming the columns")
        wanted = columns or header
        _check_columns(path, header, wanted, "1")
        index = [header.index(c) for c in wanted]
        out: dict[str, list[Any]] = {c: [] for c in wanted}
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
        except csv.Error as err:  # e.g. a field over the csv module's size limit, an unclosed quote at the end
            raise DataError(f"{path}:{end + 1}: not valid {'TSV' if delimiter == chr(9) else 'CSV'} ({err})") from None
    return out, lines


def read_jsonl(path: Path, columns: list[str] | None) -> Rows:
    """One JSON object a line; ``columns`` selects the keys (default: the first line's keys); values as read."""
    out: dict[str, list[Any]] | None = None
    wanted = columns
    lines: list[int] = []
    for lineno, obj in json_objects(path):
        if wanted is None:
            wanted = list(obj)
        if out is None:
            out = {c: [] for c in wanted}
        _check_columns(path, list(obj), wanted, str(lineno))
        lines.append(lineno)
        for col in wanted:
            out[col].append(obj[col])
    return out or {c: [] for c in (columns or ["text"])}, lines


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
    path: str | Path, data: dict[str, list[Any]], lines: list[int] | None, types: Sequence[str], key: str = "column"
) -> dict[str, list[Any]]:
    """Check each column against its declared type (``text``: a non-empty string; ``score``: a finite number,
    returned as float), naming the file, line and column of the first bad value."""
    for (col, values), kind in zip(data.items(), types, strict=True):
        for i, value in enumerate(values):
            if kind == SCORE:
                number = to_score(value)
                if number is None:
                    where = f"{path}:{lines[i]}" if lines else f"{path}: row {i + 1}"
                    raise DataError(f"{where}: {key} {col!r}: expected a finite number (a score), got {value!r}")
                values[i] = number
            elif not isinstance(value, str) or not value.strip():
                where = f"{path}:{lines[i]}" if lines else f"{path}: row {i + 1}"
                if key == "column" and isinstance(value, str):
                    raise DataError(f"{where}: column {col!r} is empty")
                raise DataError(f"{where}: {key} {col!r} must be a non-empty string, got {value!r}")
    return data


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


def read_local(
    path: str, fmt: str, columns: list[str] | None, kind: str = "training", types: Types | None = None
) -> TrainData:
    """Read a local data file into columns; raises :class:`DataError` naming file and line (and ``kind``:
    what the file is for).

    ``types`` declares each column in order, ``text`` or ``score`` (default: all text); score values become
    floats. It may be a function of the number of columns the file gives (a method that takes any number of
    negatives). When the file gives a different number of columns than ``types``, the values are returned as
    read: the caller, which knows the roles, reports the mismatch.
    """
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{path}: {kind} data file not found")
    fmt = infer_format(path, fmt)
    lines: list[int] | None = None
    with utf8_errors(path):
        if fmt == "text":
            data, lines = read_text(file)
        elif fmt in ("csv", "tsv"):
            data, lines = read_table(file, "," if fmt == "csv" else "\t", columns)
        elif fmt == "jsonl":
            data, lines = read_jsonl(file, columns)
        elif fmt == "sick":
            data = sick_triples(file)
        elif fmt == "stsb":
            data = stsb_pairs(file)
        elif fmt == "rerank":
            data = rerank_pairs(file)
        else:
            raise DataError(f"{path}: format {fmt!r} is not a local file format")
    if columns and fmt in ("text", "sick", "stsb", "rerank"):
        unknown = [c for c in columns if c not in data]
        if unknown:
            raise DataError(f"{path}: columns {unknown} do not exist for format {fmt!r}; it gives {list(data)}")
        data = {c: data[c] for c in columns}
    if not data or not next(iter(data.values())):
        raise DataError(f"{path}: the {kind} set is empty")
    types = tuple(types(len(data)) if callable(types) else types) if types is not None else (TEXT,) * len(data)
    if len(types) == len(data):
        apply_types(path, data, lines, types, key="key" if fmt == "jsonl" else "column")
    return TrainData(data, f"{fmt}:{path}", sha256_file(file))


def read_hub(
    name: str,
    split: str,
    config: str | None,
    columns: list[str] | None,
    data_files: str | None = None,
    types: Types | None = None,
) -> TrainData:
    """A dataset from the HuggingFace Hub (or a local folder ``load_dataset`` understands).

    ``types`` declares each column in order as for :func:`read_local`; ``score`` columns are checked and
    converted to floats (a Hub CSV may hold them as strings). Text columns are taken as they are.
    """
    import datasets
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    if not Path(name).exists() and name not in _PACKAGED_DATASETS_MODULES:  # a Hub dataset, not `json` + files
        # One short probe first: offline, datasets would retry for a minute.
        require_hub(f"data.train.hub {name}", "use a local file in data.train.path (a {data_dir} path needs "
                    "--data-dir or $EMBEDKIT_DATA)", name=name)

    try:
        ds = datasets.load_dataset(name, config, split=split, data_files=data_files)
    except Exception as err:  # noqa: BLE001 - any loading failure becomes one clear message
        raise DataError(
            f"data.train.hub: could not load dataset {name!r} (split {split!r}): {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}. Offline? Use a local file in data.train.path."
        ) from None
    wanted = columns or ds.column_names
    _check_columns(Path(name), ds.column_names, wanted, split)
    data = {c: list(ds[c]) for c in wanted}
    if not data or not data[wanted[0]]:
        raise DataError(f"{name} ({split}): the training set is empty")
    if callable(types):
        types = types(len(data))
    if types is not None and len(types) == len(data):  # else build_dataset reports the column count
        scores = {c: v for (c, v), kind in zip(data.items(), types) if kind == SCORE}
        apply_types(f"{name} ({split})", scores, None, (SCORE,) * len(scores))
    return TrainData(data, f"hub:{name}:{split}", getattr(ds, "_fingerprint", None))


def read_train_source(src: Any, method_name: str, roles: Sequence[str], types: Types,
                      problem: Callable[[list[str]], str | None] | None = None) -> TrainData:
    """The training set a recipe's ``data.train`` names on the Hub, exactly as training reads it (``data_files``,
    ``max_samples``), checked against the method's roles (or by ``problem``, the method's
    :meth:`~embedkit.methods.base.Method.column_problem`, when given). ``embedkit data diagnose`` reads through
    here too, so it diagnoses the rows the recipe trains on."""
    data = read_hub(src.hub, src.split, src.config, src.columns, src.data_files, types)
    if src.max_samples:
        data.columns = {k: v[: src.max_samples] for k, v in data.columns.items()}
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
