"""``label-aware``: semi-supervised contrastive training on rows with or without labels (SPACE-2, our reading).

Labelled rows pull each other together in proportion to how much of their label tree they share (Jaccard over the
label paths' tree nodes); unlabelled rows train as unsupervised SimCSE (dropout positives) in the same step
(docs/label-aware.md). The rows are ``text`` + ``labels``:

* JSONL: ``{"text": ..., "labels": ...}`` with ``labels`` a list of label strings, one string (several labels
  separated by ``|``), or ``null`` / ``""`` / ``[]`` / a missing key for an unlabelled row;
* CSV/TSV with a header holding ``text`` and ``labels`` columns; ``labels`` separated by ``|``, empty: unlabelled;
* an MR/SUBJ folder of the public-data layout (``{data_dir}/classification/mr``): its sentences labelled by file,
  less the test part of the offline classification evaluation's split (:func:`read_classification_train`).

A label is a path ``domain/intent/slot`` (``/`` between levels; one level is a flat label). ``method.label_fraction``
hides the labels of all but a seeded fraction of the labelled rows (:func:`keep_labels`), the semi-supervised
setting measured in docs/label-aware.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from embedkit.data.classification import (
    CLASSIFICATION_SETS,
    classification_set_of,
    classification_split,
    read_classification,
)
from embedkit.data.sources import TrainData, infer_format, read_table
from embedkit.data.textio import json_objects
from embedkit.errors import DataError
from embedkit.log import log
from embedkit.methods import bound_method
from embedkit.methods.base import Method, MethodParams, register, training_head

if TYPE_CHECKING:
    from embedkit.recipe import Recipe

SPACE2_CITATION = """@inproceedings{he2022space2,
  title = {{SPACE-2}: Tree-Structured Semi-Supervised Contrastive Pre-training for Task-Oriented Dialog
           Understanding},
  author = {He, Wanwei and Dai, Yinpei and Hui, Binyuan and Yang, Min and Cao, Zheng and Dong, Jianbo and
            Huang, Fei and Si, Luo and Li, Yongbin},
  booktitle = {Proceedings of the 29th International Conference on Computational Linguistics (COLING)},
  year = {2022}
}
@inproceedings{gao2021simcse,
  title = {{SimCSE}: Simple Contrastive Learning of Sentence Embeddings},
  author = {Gao, Tianyu and Yao, Xingcheng and Chen, Danqi},
  booktitle = {Empirical Methods in Natural Language Processing (EMNLP)},
  year = {2021}
}"""

LABEL_SEPARATOR = "|"  # between the labels of one row in a string
PATH_SEPARATOR = "/"   # between the levels of a label path
COLUMNS = ("text", "labels")
FORMATS = ("jsonl", "csv", "tsv")


class LabelAwareParams(MethodParams):
    temperature: float = Field(0.05, gt=0, description="τ of both the supervised and the SimCSE part")
    supervised_weight: float = Field(
        1.0, ge=0, description="λ: loss = λ · mean over labelled anchors + mean over unlabelled anchors")
    label_fraction: float = Field(
        1.0, gt=0, le=1, description="keep the labels of this fraction of the labelled rows (seeded by label_seed); "
        "the others train as unlabelled rows")
    label_seed: int = Field(42, description="seed of the rows whose labels label_fraction keeps")
    unlabelled: Literal["train", "drop"] = Field(
        "train", description="train: unlabelled rows train as SimCSE; drop: train on the labelled rows only "
        "(supervised contrast alone)")


def parse_labels(value: Any) -> tuple[str, ...] | str:
    """A row's label paths, canonical (levels stripped, joined by ``/``), sorted and de-duplicated; ``()`` for an
    unlabelled row. A string is the reason when ``value`` is not a label field."""
    if value is None:
        return ()
    if isinstance(value, str):
        items: list[Any] = value.split(LABEL_SEPARATOR) if value.strip() else []
    elif isinstance(value, list):
        items = value
    else:
        return f"expected a list of label strings, a string (labels separated by '{LABEL_SEPARATOR}') or null"
    paths = set()
    for item in items:
        if not isinstance(item, str):
            return f"label {item!r} is not a string"
        if isinstance(value, list) and LABEL_SEPARATOR in item:
            return f"label {item!r} holds '{LABEL_SEPARATOR}': in a list, give each label as its own string"
        levels = [level.strip() for level in item.split(PATH_SEPARATOR)]
        if not all(levels):
            return (f"label {item!r} has an empty level; expected a path like 'domain{PATH_SEPARATOR}intent' (or "
                    f"'{LABEL_SEPARATOR}' between labels, none at either end)")
        paths.add(PATH_SEPARATOR.join(levels))
    return tuple(sorted(paths))


def tree_nodes(paths: tuple[str, ...] | list[str]) -> set[str]:
    """The label-tree nodes of a row: each path ``a/b/c`` gives ``a``, ``a/b`` and ``a/b/c``."""
    out = set()
    for path in paths:
        levels = path.split(PATH_SEPARATOR)
        out.update(PATH_SEPARATOR.join(levels[:k]) for k in range(1, len(levels) + 1))
    return out


def read_labelled_rows(path: str, fmt: str, columns: list[str] | None) -> tuple[list[str], list[tuple[str, ...]]]:
    """The texts and label paths of a JSONL/CSV/TSV file (``columns``: the text and labels column names, in that
    order; default ``text``, ``labels``). Raises ``DataError`` naming the file and line of a bad row."""
    file = Path(path)
    if file.is_dir():
        return read_classification_train(path, columns)
    if not file.is_file():
        raise DataError(f"{path}: training data file not found")
    fmt = infer_format(path, fmt)
    if fmt not in FORMATS:
        raise DataError(f"{path}: method 'label-aware' reads {', '.join(FORMATS)} rows of text and labels, not "
                        f"format {fmt!r}")
    text_col, labels_col = columns or COLUMNS
    if fmt == "jsonl":
        texts, labels, lines = [], [], []
        for lineno, obj in json_objects(file):
            if text_col not in obj:
                raise DataError(f"{path}:{lineno}: missing key {text_col!r}; each row needs "
                                f"{{\"{text_col}\": ..., \"{labels_col}\": ...}}")
            texts.append(obj[text_col])
            labels.append(obj.get(labels_col))
            lines.append(lineno)
    else:
        cols, lines = read_table(file, "\t" if fmt == "tsv" else ",", [text_col, labels_col])
        texts, labels = cols[text_col], cols[labels_col]
    parsed = []
    for text, value, lineno in zip(texts, labels, lines, strict=True):
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}:{lineno}: {text_col!r} must be a non-empty string, got {text!r}")
        paths = parse_labels(value)
        if isinstance(paths, str):
            raise DataError(f"{path}:{lineno}: {labels_col!r} {value!r}: {paths}")
        parsed.append(paths)
    if not texts:
        raise DataError(f"{path}: no rows")
    return texts, parsed


def read_classification_train(path: str, columns: list[str] | None) -> tuple[list[str], list[tuple[str, ...]]]:
    """An MR/SUBJ folder of the public-data layout: its sentences labelled by file (``positive`` / ``negative``,
    ``objective`` / ``subjective``), less the test part of the offline classification evaluation's split
    (:func:`~embedkit.data.classification.classification_split`): those sentences are never trained on."""
    found = classification_set_of(path)
    if found is None:
        raise DataError(f"{path}: a folder; method 'label-aware' reads a folder only in the layout of "
                        f"../shared/data/classification ({', '.join(rel for rel, _ in CLASSIFICATION_SETS.values())}),"
                        f" else a {', '.join(FORMATS)} file of text and labels")
    if columns is not None:
        raise DataError(f"{path}: an MR/SUBJ folder has no columns to select: remove data.train.columns")
    data = read_classification(*found)
    train, _ = classification_split(data.labels)
    return [data.texts[i] for i in train], [(data.label_names[data.labels[i]],) for i in train]


def keep_labels(labels: list[tuple[str, ...]], fraction: float, seed: int) -> list[tuple[str, ...]]:
    """The labels with all but ``round(fraction · L)`` of the L labelled rows made unlabelled: the kept rows are the
    first of a permutation of the labelled rows drawn by ``numpy.random.default_rng(seed)`` (a function of the
    labelled rows' count, their order and the seed only)."""
    if fraction >= 1:
        return list(labels)
    labelled = [i for i, paths in enumerate(labels) if paths]
    order = np.random.default_rng(seed).permutation(len(labelled))
    keep = {labelled[k] for k in order[:round(fraction * len(labelled))]}
    return [paths if i in keep else () for i, paths in enumerate(labels)]


def node_vocabulary(label_strings: list[str]) -> list[str]:
    """The sorted label-tree nodes of the rows' canonical label strings (the same on every process)."""
    nodes: set[str] = set()
    for value in label_strings:
        nodes |= tree_nodes(value.split(LABEL_SEPARATOR) if value else [])
    return sorted(nodes)


def multi_hot(label_strings: list[str], vocabulary: list[str]) -> list[list[float]]:
    """Each row's tree nodes as a 0/1 vector over ``vocabulary`` (all zeros: unlabelled)."""
    index = {node: k for k, node in enumerate(vocabulary)}
    out = []
    for value in label_strings:
        row = [0.0] * max(len(vocabulary), 1)
        for node in tree_nodes(value.split(LABEL_SEPARATOR) if value else []):
            row[index[node]] = 1.0
        out.append(row)
    return out


@register
class LabelAware(Method):
    """Rows of ``text`` and ``labels`` (one label, several, label paths, or none). Labelled anchors are pulled
    towards every labelled row in proportion to the Jaccard overlap of their label-tree nodes (their own dropout
    view weighs 1), unlabelled anchors train as SimCSE; the loss is
    :class:`~embedkit.methods.label_aware.loss.LabelAwareLoss`."""

    name = "label-aware"
    params_cls = LabelAwareParams
    column_roles = ("text",)
    label_role = "labels"  # sentence-transformers' collator hands a `labels` column to the loss
    paper = ("He et al., SPACE-2 (COLING 2022), arXiv:2209.06638 — semi-supervised label-aware contrast, our "
             "reading: Jaccard over label-tree nodes as soft targets, SimCSE on unlabelled rows")
    citation = SPACE2_CITATION
    composable = True
    reads_folders = True  # an MR/SUBJ folder: its sentences less the offline evaluation's test part

    @classmethod
    def column_types(cls, n_columns: int | None = None) -> tuple[str, ...]:
        return ("text", "labels")  # read by read_train_file, never as a score

    @classmethod
    def refusals(cls, recipe: Recipe, params: Any) -> list[tuple[tuple, str]]:
        out = super().refusals(recipe, params)
        src = recipe.data.train
        if isinstance(src, list):
            return out
        if src.path is None:
            out.append((("data", "train", "hub"), "method 'label-aware' reads its text and labels from a local "
                        f"file ({', '.join(FORMATS)}): set data.train.path"))
        if src.format not in ("auto", *FORMATS):
            out.append((("data", "train", "format"), f"method 'label-aware' reads {', '.join(FORMATS)} rows of text "
                        f"and labels, not {src.format!r}"))
        if src.columns is not None and len(src.columns) != 2:
            out.append((("data", "train", "columns"), "method 'label-aware' takes two columns: the text column, "
                        f"then the labels column (got {len(src.columns)})"))
        if src.mine is not None:
            out.append((("data", "train", "mine"), "method 'label-aware' takes its positives from dropout and shared "
                        "labels, not mined negatives: remove the section"))
        if params.unlabelled == "drop" and params.supervised_weight == 0:
            out.append((("method", "supervised_weight"), "with unlabelled: drop only labelled rows train, and a "
                        "supervised_weight of 0 leaves no loss: set it above 0"))
        return out

    @classmethod
    def read_train_file(cls, path: str, recipe: Recipe, notes: list[str]) -> TrainData:
        p = bound_method(recipe.method)[1]
        src = recipe.data.train
        texts, labels = read_labelled_rows(path, src.format, src.columns)
        given = sum(1 for paths in labels if paths)
        labels = keep_labels(labels, p.label_fraction, p.label_seed)
        kept = sum(1 for paths in labels if paths)
        if p.unlabelled == "drop":
            texts = [t for t, paths in zip(texts, labels, strict=True) if paths]
            labels = [paths for paths in labels if paths]
        if kept == 0 and p.unlabelled == "drop":
            raise DataError(f"{path}: no labelled row is left (method.label_fraction {p.label_fraction} of {given} "
                            "labelled rows) and method.unlabelled is drop: nothing to train on")
        what = (f"{kept} of {len(labels) if p.unlabelled == 'drop' else len(texts)} rows labelled "
                f"({given} labelled in the data, label_fraction {p.label_fraction}, label_seed {p.label_seed}"
                + (", unlabelled rows dropped)" if p.unlabelled == "drop" else ")"))
        if Path(path).is_dir():
            what = f"the training part of the offline classification split (test part never trained on); {what}"
        notes.append(f"{path}: {what}")
        return TrainData({"text": texts, "labels": [LABEL_SEPARATOR.join(paths) for paths in labels]},
                         description=f"{path} ({what})")

    def prepare_dataset(self, dataset: Any) -> Any:
        import datasets

        strings = [str(v) for v in dataset["labels"]]
        vocabulary = node_vocabulary(strings)
        labelled = sum(1 for v in strings if v)
        log(f"label-aware: {labelled} of {len(strings)} rows labelled, {len(vocabulary)} label-tree nodes")
        self.vocabulary = vocabulary
        return datasets.Dataset.from_dict({"text": list(dataset["text"]), "labels": multi_hot(strings, vocabulary)})

    def build_loss(self):
        from embedkit.methods.label_aware.loss import LabelAwareLoss

        p = self.params
        return LabelAwareLoss(self.ctx.model, p.temperature, p.supervised_weight, head=training_head(self))
