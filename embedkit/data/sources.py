"""Training-data sources: local text / CSV / TSV / JSONL files, SICK and STS-B builders, Hub datasets.

Local files are read in plain Python (no torch, no ``datasets``) so that a recipe's data can be checked
in full, with file and line in every error, before any model loads. The result is a mapping of column name
to list of strings, in the order the method expects its columns.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedkit.data.sts import read_sick, read_stsb, sha256_file
from embedkit.errors import DataError

FORMATS = ("auto", "text", "csv", "tsv", "jsonl", "sick", "stsb", "hub")
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


def read_text(path: Path) -> dict[str, list[str]]:
    """One sentence a line; blank lines are skipped."""
    with open(path, encoding="utf-8") as fh:
        lines = [line.strip() for line in fh]
    return {"text": [line for line in lines if line]}


def _check_columns(path: Path, available: list[str], wanted: list[str], where: str) -> None:
    missing = [c for c in wanted if c not in available]
    if missing:
        raise DataError(f"{path}:{where}: missing column(s) {missing}; the file has {available}")


def read_table(path: Path, delimiter: str, columns: list[str] | None) -> dict[str, list[str]]:
    """A CSV/TSV file with a header row; ``columns`` selects and orders the columns to keep."""
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter, quoting=quoting)
        header = next(reader, None)
        if not header:
            raise DataError(f"{path}:1: expected a header row naming the columns")
        wanted = columns or header
        _check_columns(path, header, wanted, "1")
        index = [header.index(c) for c in wanted]
        out: dict[str, list[str]] = {c: [] for c in wanted}
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(f"{path}:{lineno}: expected {len(header)} fields like the header, got {len(row)}")
            for col, i in zip(wanted, index):
                if row[i].strip() == "":
                    raise DataError(f"{path}:{lineno}: column {col!r} is empty")
                out[col].append(row[i])
    return out


def read_jsonl(path: Path, columns: list[str] | None) -> dict[str, list[str]]:
    """One JSON object a line; ``columns`` selects the keys (default: the first line's keys)."""
    out: dict[str, list[str]] | None = None
    wanted = columns
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            if wanted is None:
                wanted = list(obj)
            if out is None:
                out = {c: [] for c in wanted}
            _check_columns(path, list(obj), wanted, str(lineno))
            for col in wanted:
                value = obj[col]
                if not isinstance(value, str) or not value.strip():
                    raise DataError(f"{path}:{lineno}: key {col!r} must be a non-empty string")
                out[col].append(value)
    return out or {c: [] for c in (columns or ["text"])}


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


def read_local(path: str, fmt: str, columns: list[str] | None, kind: str = "training") -> TrainData:
    """Read a local data file into columns; raises :class:`DataError` naming file and line (and ``kind``:
    what the file is for)."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{path}: {kind} data file not found")
    fmt = infer_format(path, fmt)
    try:
        if fmt == "text":
            data = read_text(file)
        elif fmt in ("csv", "tsv"):
            data = read_table(file, "," if fmt == "csv" else "\t", columns)
        elif fmt == "jsonl":
            data = read_jsonl(file, columns)
        elif fmt == "sick":
            data = sick_triples(file)
        elif fmt == "stsb":
            data = stsb_pairs(file)
        else:
            raise DataError(f"{path}: format {fmt!r} is not a local file format")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start})") from None
    if columns and fmt in ("text", "sick", "stsb"):
        unknown = [c for c in columns if c not in data]
        if unknown:
            raise DataError(f"{path}: columns {unknown} do not exist for format {fmt!r}; it gives {list(data)}")
        data = {c: data[c] for c in columns}
    if not data or not next(iter(data.values())):
        raise DataError(f"{path}: the {kind} set is empty")
    return TrainData(data, f"{fmt}:{path}", sha256_file(file))


def read_hub(
    name: str, split: str, config: str | None, columns: list[str] | None, data_files: str | None = None
) -> TrainData:
    """A dataset from the HuggingFace Hub (or a local folder ``load_dataset`` understands)."""
    from embedkit.model_ref import require_hub  # one short probe first: offline, datasets retries for a minute

    require_hub(f"data.train.hub {name}", "use a local file in data.train.path (a {data_dir} path needs --data-dir "
                "or $EMBEDKIT_DATA)", name=name)
    import datasets

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
    return TrainData(data, f"hub:{name}:{split}", getattr(ds, "_fingerprint", None))
