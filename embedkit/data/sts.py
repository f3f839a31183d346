"""Readers for the public STS files in the SentEval layout (``../shared/data/sts``).

Pure Python and strict: a malformed line raises :class:`~embedkit.errors.DataError` naming the file and
line. Sentences are returned exactly as they stand in the files (no lower-casing, no re-tokenising).
Scores are the raw gold scores (0–5 for STS, 1–5 for SICK).
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from embedkit.data.textio import utf8_errors
from embedkit.errors import DataError

# The SentEval/SimCSE "all" setting: subsets per year (STS13 without SMT, which is not distributed).
STS_YEARS = ("STS12", "STS13", "STS14", "STS15", "STS16")
# SICK as SemEval-2014 Task 1 distributed it: train 4,500 + trial 500 + test 4,927 = 9,927 pairs. SentEval's
# SICK-R is the test file alone; mteb's SICK-R (mteb/sickr-sts) is all 9,927.
SICK_TEST_PAIRS = 4927
SICK_ALL_PAIRS = 9927


@dataclass
class PairSet:
    """Scored sentence pairs of one task (or one subset of a task)."""

    name: str
    sentences1: list[str]
    sentences2: list[str]
    scores: list[float]
    files: dict[str, str] = field(default_factory=dict)  # path -> sha256, for provenance in results.json
    subsets: dict[str, tuple[int, int]] = field(default_factory=dict)  # subset -> [start, end) rows

    def __len__(self) -> int:
        return len(self.scores)


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"{path}: {what} not found (expected the layout of ../shared/data/sts)")
    return path


def _float(text: str, path: Path, lineno: int) -> float:
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{path}:{lineno}: expected a numeric gold score, got {text!r}") from None


def read_stsb(path: str | Path, name: str | None = None) -> PairSet:
    """Read one STS Benchmark split file (``sts-dev.csv``, ``sts-test.csv``, ``sts-train.csv``).

    Tab-separated with quoting off; the score is column 5 and the sentences columns 6–7. Some lines carry
    extra trailing columns, which are ignored.
    """
    path = _require(Path(path), "STS Benchmark file")
    s1, s2, scores = [], [], []
    with utf8_errors(path), open(path, encoding="utf-8", newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if not row or row == [""]:
                continue
            if len(row) < 7:
                raise DataError(f"{path}:{lineno}: expected at least 7 tab-separated columns, got {len(row)}")
            scores.append(_float(row[4], path, lineno))
            s1.append(row[5])
            s2.append(row[6])
    if not scores:
        raise DataError(f"{path}: no pairs found")
    return PairSet(name or path.stem, s1, s2, scores, files={str(path): sha256_file(path)})


def read_sick(path: str | Path, name: str | None = None, with_labels: bool = False) -> PairSet | tuple:
    """Read a SICK file (header: pair_ID, sentence_A, sentence_B, relatedness_score, entailment_judgment).

    With ``with_labels`` also returns the entailment labels, as ``(PairSet, labels)``.
    """
    path = _require(Path(path), "SICK file")
    s1, s2, scores, labels = [], [], [], []
    with utf8_errors(path), open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        expected = ["pair_ID", "sentence_A", "sentence_B", "relatedness_score", "entailment_judgment"]
        if header is None or header[:5] != expected:
            raise DataError(f"{path}:1: expected the SICK header {expected}, got {header}")
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < 5:
                raise DataError(f"{path}:{lineno}: expected 5 tab-separated columns, got {len(row)}")
            s1.append(row[1])
            s2.append(row[2])
            scores.append(_float(row[3], path, lineno))
            labels.append(row[4])
    if not scores:
        raise DataError(f"{path}: no pairs found")
    pairs = PairSet(name or path.stem, s1, s2, scores, files={str(path): sha256_file(path)})
    return (pairs, labels) if with_labels else pairs


def read_sts_subset(input_path: str | Path, gold_path: str | Path) -> tuple[list[str], list[str], list[float]]:
    """Read one SemEval subset: ``STS.input.X.txt`` (s1<TAB>s2) and ``STS.gs.X.txt`` (score per line).

    A pair whose gold line is empty has no gold score and is skipped.
    """
    input_path, gold_path = Path(input_path), Path(gold_path)
    with utf8_errors(input_path), open(input_path, encoding="utf-8") as fh:
        inputs = fh.read().split("\n")
    with utf8_errors(gold_path), open(gold_path, encoding="utf-8") as fh:
        golds = fh.read().split("\n")
    # A trailing newline leaves one empty element at the end of each list.
    if inputs and inputs[-1] == "":
        inputs.pop()
    if golds and golds[-1] == "" and len(golds) == len(inputs) + 1:
        golds.pop()
    if len(inputs) != len(golds):
        raise DataError(
            f"{gold_path}: {len(golds)} gold lines for {len(inputs)} pairs in {input_path.name}; "
            "each pair needs one gold line (empty when it has no score)"
        )
    s1, s2, scores = [], [], []
    for lineno, (pair, gold) in enumerate(zip(inputs, golds), start=1):
        if gold.strip() == "":
            continue
        parts = pair.split("\t")
        if len(parts) < 2:
            raise DataError(f"{input_path}:{lineno}: expected two tab-separated sentences")
        s1.append(parts[0])
        s2.append(parts[1])
        scores.append(_float(gold.strip(), gold_path, lineno))
    return s1, s2, scores


def read_sts_year(folder: str | Path, name: str | None = None) -> PairSet:
    """Read every subset of one STS year folder (``STS12`` … ``STS16``), concatenated in name order."""
    folder = _require(Path(folder), "STS year folder")
    inputs = sorted(folder.glob("STS.input.*.txt"))
    if not inputs:
        raise DataError(f"{folder}: no STS.input.*.txt files")
    result = PairSet(name or folder.name, [], [], [])
    for input_path in inputs:
        subset = input_path.name[len("STS.input.") : -len(".txt")]
        gold_path = _require(folder / f"STS.gs.{subset}.txt", f"gold file for subset {subset}")
        s1, s2, scores = read_sts_subset(input_path, gold_path)
        start = len(result)
        result.sentences1 += s1
        result.sentences2 += s2
        result.scores += scores
        result.subsets[subset] = (start, len(result))
        result.files[str(input_path)] = sha256_file(input_path)
        result.files[str(gold_path)] = sha256_file(gold_path)
    return result


def check_sick_test(pairs: PairSet, where: str) -> str | None:
    """Refuse SICK pairs offered as SentEval's SICK-R test split that cannot be it; flag a smaller set.

    More than 4,927 pairs (e.g. all 9,927 SemEval pairs, what mteb's SICK-R holds) is a :class:`DataError`;
    fewer returns a one-line deviation for the results (a sample or another release is not comparable with
    published SICK-R numbers); exactly 4,927 returns ``None``.
    """
    n = len(pairs)
    if n > SICK_TEST_PAIRS:
        what = ("all 9,927 SemEval pairs (train + trial + test, as mteb's SICK-R)" if n == SICK_ALL_PAIRS
                else f"{n:,} pairs")
        raise DataError(f"{where}: holds {what}, but SentEval's SICK-R is the {SICK_TEST_PAIRS:,}-pair SemEval test "
                        "split; give the test file (SICK_test_annotated.txt from SemEval-2014 Task 1)")
    if n < SICK_TEST_PAIRS:
        return (f"SICK-R test from {where} holds {n:,} pairs, not SentEval's {SICK_TEST_PAIRS:,}: not comparable "
                "with published SICK-R numbers")
    return None
