"""Readers for the sentence-classification sets of the public-data folder (SentEval's MR and SUBJ) and SICK's
entailment labels as a binary pair-classification set.

Pure Python and strict, like :mod:`embedkit.data.sts`: a missing file or an empty line raises
:class:`~embedkit.errors.DataError` naming the file (and line). A sentence is its line without the line
break, exactly as written (the files are already tokenised: ``it's a " gem " .``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedkit.data.sts import read_sick, sha256_file
from embedkit.data.textio import utf8_errors
from embedkit.errors import DataError


@dataclass
class LabelledTexts:
    """Sentences with an integer class label each; ``label_names[i]`` names label ``i``."""

    name: str
    texts: list[str]
    labels: list[int]
    label_names: tuple[str, ...]
    files: dict[str, str] = field(default_factory=dict)  # path -> sha256, for provenance

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class LabelledPairs:
    """Sentence pairs with a 0/1 label each (1: the relation holds, e.g. A entails B)."""

    name: str
    sentences1: list[str]
    sentences2: list[str]
    labels: list[int]
    files: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)


# name -> (folder under the data folder, ((file, label name), ...)); label i is the i-th file's.
CLASSIFICATION_SETS: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "MR": ("classification/mr", (("rt-polarity.neg", "negative"), ("rt-polarity.pos", "positive"))),
    "SUBJ": ("classification/subj", (("plot.tok.gt9.5000", "objective"), ("quote.tok.gt9.5000", "subjective"))),
}
SICK_TEST = "sick/SICK_test_annotated.txt"  # under the STS folder
ENTAILMENT = "ENTAILMENT"
SICK_JUDGMENTS = ("ENTAILMENT", "NEUTRAL", "CONTRADICTION")


def read_lines(path: str | Path) -> list[str]:
    """One sentence a line; an empty line is an error (it would be a sentence with no text)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected one sentence a line, the layout of "
                        "../shared/data/classification)")
    with utf8_errors(path), open(path, encoding="utf-8", newline="") as fh:
        lines = fh.read().splitlines()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            raise DataError(f"{path}:{lineno}: empty line; expected one sentence a line")
    if not lines:
        raise DataError(f"{path}: no sentences")
    return lines


def read_classification(name: str, data_root: str | Path) -> LabelledTexts:
    """``MR`` or ``SUBJ`` from ``data_root`` (the folder holding ``classification/``): every file's lines in
    order, label ``i`` for the ``i``-th file of :data:`CLASSIFICATION_SETS`."""
    if name not in CLASSIFICATION_SETS:
        raise DataError(f"unknown classification set {name!r}; expected one of {', '.join(CLASSIFICATION_SETS)}")
    folder, parts = CLASSIFICATION_SETS[name]
    out = LabelledTexts(name, [], [], tuple(label for _, label in parts))
    for label, (fname, _) in enumerate(parts):
        path = Path(data_root) / folder / fname
        lines = read_lines(path)
        out.texts += lines
        out.labels += [label] * len(lines)
        out.files[str(path)] = sha256_file(path)
    return out


# MR and SUBJ ship no split: a fixed, seeded, stratified one (scikit-learn's train_test_split over the sentences
# in file order, the label-0 file first); each part is kept in file order. The offline classification evaluation
# fits its probe on the train part and scores the test part; a method training on such a set keeps the test part out.
CLASSIFICATION_TEST_SIZE = 0.2
CLASSIFICATION_SEED = 42


def classification_split(labels: list[int], test_size: float = CLASSIFICATION_TEST_SIZE,
                         seed: int = CLASSIFICATION_SEED) -> tuple[list[int], list[int]]:
    """``(train rows, test rows)`` of a classification set: stratified by label, seeded, each sorted."""
    from sklearn.model_selection import train_test_split  # imported here: validation loads this module

    train, test = train_test_split(np.arange(len(labels)), test_size=test_size, stratify=labels, random_state=seed)
    return sorted(int(i) for i in train), sorted(int(i) for i in test)


def classification_set_of(folder: str | Path) -> tuple[str, Path] | None:
    """``(set name, data root)`` when ``folder`` is an MR/SUBJ folder of the public-data layout
    (``<root>/classification/mr``), else ``None``."""
    folder = Path(folder)
    for name, (rel, _) in CLASSIFICATION_SETS.items():
        parts = Path(rel).parts
        if folder.is_dir() and folder.parts[-len(parts):] == parts:
            return name, folder.parents[len(parts) - 1]
    return None


def read_sick_entailment(path: str | Path, name: str = "SICK-E") -> LabelledPairs:
    """A SICK file as binary pairs: label 1 where ``entailment_judgment`` is ENTAILMENT, 0 for NEUTRAL and
    CONTRADICTION (any other judgment is an error naming the line)."""
    pairs, judgments = read_sick(path, with_labels=True)
    for row, judgment in enumerate(judgments, start=1):
        if judgment not in SICK_JUDGMENTS:
            raise DataError(f"{path}: data row {row} (after the header): entailment_judgment {judgment!r}; "
                            f"expected one of {', '.join(SICK_JUDGMENTS)}")
    labels = [int(j == ENTAILMENT) for j in judgments]
    return LabelledPairs(name, pairs.sentences1, pairs.sentences2, labels, dict(pairs.files))
