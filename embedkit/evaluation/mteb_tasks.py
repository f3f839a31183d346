"""mteb task classes that read STS12–16, STSBenchmark and SICK-R from the local data folder (air-gapped MTEB).

Each class subclasses mteb's own registered task (itself an ``mteb.abstasks.sts.AbsTaskSTS``), so the name,
metadata, pinned dataset revision, score range and scoring are mteb's, and results land in exactly the
files an online run writes. Only ``load_data`` is overridden: it fills ``self.dataset`` with a
``DatasetDict`` of ``sentence1`` / ``sentence2`` / ``score`` read from the files.

The tasks mteb has no English version of are local tasks under local names (the offline benchmark's list is
:mod:`embedkit.evaluation.mteb_offline`): classification ``MR`` and ``SUBJ`` (``AbsTaskClassification``, a
fixed seeded split), pair classification ``SICK-E`` (``AbsTaskPairClassification``) and reranking
``TRECQA-dev`` (``AbsTaskRetrieval`` with type ``Reranking``).

Import this module only through :func:`embedkit.evaluation.mteb_eval.import_mteb`, which points mteb's
cache away from the home folder before mteb is first imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mteb
from datasets import Dataset, DatasetDict
from mteb.abstasks.classification import AbsTaskClassification
from mteb.abstasks.pair_classification import AbsTaskPairClassification
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.sts import AbsTaskSTS
from mteb.abstasks.task_metadata import TaskMetadata

from embedkit.data.classification import (
    CLASSIFICATION_SETS,
    classification_split,
    read_classification,
    read_sick_entailment,
)
from embedkit.data.ranking import read_beir, read_rerank
from embedkit.data.sts import PairSet
from embedkit.errors import DataError
from embedkit.evaluation.core import ranking_name
from embedkit.evaluation.mteb_offline import LOCAL_ONLY, local_source
from embedkit.evaluation.ranking import rerank_layout
from embedkit.evaluation.sts import load_local
from embedkit.recipe import TARGET_TASKS as TASKS

LOCAL_TASKS = TASKS
# SentEval's SICK-R (test split only) under its own name, so it can never be mistaken for mteb's SICK-R
# (train + trial + test). Used by the benchmark that compares mteb with the STS suite.
SENTEVAL_SICK = "SICK-R-test"


class LocalSTSData:
    """Mixin: ``load_data`` reads the task's pairs from ``data_root`` (the folder holding STS12 …, sick/)."""

    data_root: str = ""
    sick_split: str = "all"
    files: dict[str, str]

    def load_pairs(self) -> PairSet:
        """The task's pairs from the local folder (SICK-R: ``sick_split``, by default all 9,927 pairs as mteb)."""
        name = self.metadata.name  # type: ignore[attr-defined]
        task = "SICK-R" if name == SENTEVAL_SICK else name
        if not self.data_root:
            raise ValueError(f"{name}: data_root is not set")
        return load_local(Path(self.data_root), (task,), sick_split=self.sick_split).tasks[task]

    def load_data(self, num_proc: int | None = None, *, timer: Any = None, **kwargs: Any) -> None:
        if self.data_loaded:  # type: ignore[attr-defined]
            return
        pairs = self.load_pairs()
        self.files = dict(pairs.files)
        split = Dataset.from_dict({"sentence1": pairs.sentences1, "sentence2": pairs.sentences2,
                                   "score": [float(s) for s in pairs.scores]})
        self.dataset = DatasetDict({"test": split})
        self.data_loaded = True


_CLASSES: dict[str, type] = {}


def local_task_class(name: str) -> type[AbsTaskSTS]:
    """The local-data subclass of mteb's task ``name`` (one of :data:`LOCAL_TASKS` or ``SICK-R-test``)."""
    if name in _CLASSES:
        return _CLASSES[name]
    base_name = "SICK-R" if name == SENTEVAL_SICK else name
    if base_name not in LOCAL_TASKS:
        raise KeyError(name)
    base = type(mteb.get_task(base_name))
    attrs: dict[str, Any] = {"__doc__": f"mteb's {base_name} read from the local data folder."}
    if name == SENTEVAL_SICK:
        attrs["metadata"] = base.metadata.model_copy(update={
            "name": SENTEVAL_SICK,
            "description": "SICK-R test split only (4,927 pairs), as SentEval scores it; not mteb's SICK-R.",
        })
        attrs["sick_split"] = "test"
    cls = type(f"Local{base.__name__}", (LocalSTSData, base), attrs)
    _CLASSES[name] = cls
    return cls


def local_task(name: str, data_root: str | Path) -> AbsTaskSTS:
    """An instance of :func:`local_task_class` reading from ``data_root``."""
    task = local_task_class(name)()
    task.data_root = str(data_root)
    return task


# ----------------------------------------------------------------------------------------------------------
# Reranking and retrieval from local files (mteb 2.x scores both with AbsTaskRetrieval; a reranking task is one
# whose metadata type is "Reranking" and whose queries carry their candidate lists, ``top_ranked``).

# Named local reranking tasks: name -> (file under the data folder, split). Not official mteb tasks: mteb has no
# TREC QA task, so results under this name are comparable only with other runs of this file.
RERANK_TASKS = {"TRECQA-dev": (LOCAL_ONLY["TRECQA-dev"][1], "dev")}
_RANKING_DESCRIPTION = {
    "TRECQA-dev": "TREC QA answer-sentence selection, dev split (Wang et al. 2007, Yao et al. 2013 clean "
                  "split): 81 questions, 1,148 candidates. A local embedkit task, not an official mteb task.",
}


def _ranking_metadata(name: str, kind: str, split: str, source: str) -> Any:
    rerank = kind == "rerank"
    return TaskMetadata(
        name=name,
        description=_RANKING_DESCRIPTION.get(name, f"{'Reranking file' if rerank else 'BEIR folder'} {source} "
                                                   "(a local embedkit task, not an official mteb task)"),
        dataset={"path": f"local/{name}", "revision": "local"},
        type="Reranking" if rerank else "Retrieval",
        category="t2t",
        modalities=["text"],
        eval_splits=[split],
        eval_langs=["eng-Latn"],
        main_score="map_at_1000" if rerank else "ndcg_at_10",  # mteb's reranking / retrieval main scores
    )


class LocalRankingData:
    """Mixin: ``load_data`` fills mteb's retrieval layout from a reranking file or a BEIR folder."""

    source: str = ""
    split: str = "test"
    kind: str = "rerank"
    files: dict[str, str]

    def load_data(self, num_proc: int | None = None, *, timer: Any = None, **kwargs: Any) -> None:
        if self.data_loaded:  # type: ignore[attr-defined]
            return
        top_ranked = None
        if self.kind == "rerank":
            data = read_rerank(self.source)
            queries, docs, qrels, top_ranked = rerank_layout(data)  # the ids embedkit's own scorer uses
        else:
            data = read_beir(self.source, self.split)
            queries, docs, qrels = data.queries, data.corpus, data.qrels
        self.files = dict(data.files)
        split = {
            "corpus": Dataset.from_dict({"id": list(docs), "text": list(docs.values()), "title": [""] * len(docs)}),
            "queries": Dataset.from_dict({"id": list(queries), "text": list(queries.values())}),
            "relevant_docs": {q: dict(rel) for q, rel in qrels.items()},
            "top_ranked": top_ranked,
        }
        self.dataset = {"default": {self.split: split}}
        self.data_loaded = True


def _ranking_task(name: str, kind: str, source: str | Path, split: str) -> Any:
    cls = type(f"Local{kind.title()}Task", (LocalRankingData, AbsTaskRetrieval), {
        "__doc__": f"A local {kind} task read from {source}.",
        "metadata": _ranking_metadata(name, kind, split, str(source)),
    })
    task = cls()
    task.source, task.split, task.kind = str(source), split, kind
    return task


def local_rerank_task(path: str | Path, name: str | None = None) -> Any:
    """An mteb reranking task (main score MAP) over a ``qtext,label,atext`` file; ``name`` defaults to
    ``<folder>-<file stem>`` (the name embedkit's own scores carry)."""
    return _ranking_task(name or ranking_name("rerank", path), "rerank", Path(path), "test")


def local_retrieval_task(folder: str | Path, split: str = "test", name: str | None = None) -> Any:
    """An mteb retrieval task (main score nDCG@10) over a BEIR folder's ``split``; ``name`` defaults to
    ``<folder>-<split>`` (the name embedkit's own scores carry)."""
    return _ranking_task(name or ranking_name("retrieval", folder, split), "retrieval", Path(folder), split)


# ----------------------------------------------------------------------------------------------------------
# Classification (MR, SUBJ) and pair classification (SICK-E): local tasks, mteb's task types and scoring.

# MR and SUBJ ship no split: a fixed, seeded, stratified one (embedkit.data.classification.classification_split).
_CLASSIFICATION_PROTOCOL = (
    "No official split: a fixed stratified split, sklearn train_test_split(test_size=0.2, stratify=label, "
    "random_state=42) over the sentences in file order. Scored with mteb's AbsTaskClassification: logistic "
    "regression (max_iter=100) fitted on the frozen embeddings of every training sentence (no undersampling, "
    "one experiment), accuracy on the test part. A local embedkit task, not an official mteb task."
)
_CLASSIFICATION_TEXT = {
    "MR": "Movie-review snippet polarity (Pang and Lee 2005; SentEval's MR), 5,331 positive and 5,331 negative "
          "sentences.",
    "SUBJ": "Subjectivity of movie-review sentences (Pang and Lee 2004; SentEval's SUBJ), 5,000 subjective "
            "(quote) and 5,000 objective (plot) sentences.",
}
_CORNELL = "https://www.cs.cornell.edu/people/pabo/movie-review-data/"


def _local_metadata(name: str, task_type: str, category: str, description: str, main_score: str,
                    reference: str | None = None) -> TaskMetadata:
    return TaskMetadata(
        name=name, description=description, reference=reference,
        dataset={"path": f"local/{name}", "revision": "local"},
        type=task_type, category=category, modalities=["text"], eval_splits=["test"], eval_langs=["eng-Latn"],
        main_score=main_score,
    )


class LocalClassificationData:
    """Mixin: ``load_data`` reads an MR/SUBJ-layout folder and splits it with :func:`classification_split`."""

    data_root: str = ""
    files: dict[str, str]

    def load_data(self, num_proc: int | None = None, *, timer: Any = None, **kwargs: Any) -> None:
        if self.data_loaded:  # type: ignore[attr-defined]
            return
        data = read_classification(self.metadata.name, self.data_root)  # type: ignore[attr-defined]
        self.files = dict(data.files)
        try:
            train, test = classification_split(data.labels)
        except ValueError as err:  # too few sentences of a label for a stratified 80/20 split
            raise DataError(f"{data.name} ({', '.join(data.files)}): cannot split {len(data)} sentences 80/20 by "
                            f"label: {err}") from None

        def part(rows: list[int]) -> Dataset:
            return Dataset.from_dict({"text": [data.texts[i] for i in rows], "label": [data.labels[i] for i in rows]})

        self.dataset = DatasetDict({"train": part(train), "test": part(test)})
        self.data_loaded = True


class LocalClassification(LocalClassificationData, AbsTaskClassification):
    """mteb's classification protocol on a local set, every training sentence used (see ``_CLASSIFICATION_PROTOCOL``).

    mteb's default draws 8 sentences per label for each of 10 experiments (a few-shot probe); with the whole
    training part every experiment would fit the same data, so one is run.
    """

    samples_per_label = 10**9  # more than any label has: mteb's undersampling keeps every training sentence
    n_experiments = 1


class LocalMR(LocalClassification):
    """MR (movie-review polarity) from the local data folder."""

    metadata = _local_metadata("MR", "Classification", "t2c",
                               f"{_CLASSIFICATION_TEXT['MR']} {_CLASSIFICATION_PROTOCOL}", "accuracy", _CORNELL)


class LocalSUBJ(LocalClassification):
    """SUBJ (subjective vs objective sentences) from the local data folder."""

    metadata = _local_metadata("SUBJ", "Classification", "t2c",
                               f"{_CLASSIFICATION_TEXT['SUBJ']} {_CLASSIFICATION_PROTOCOL}", "accuracy", _CORNELL)


class LocalSICKEntailment(AbsTaskPairClassification):
    """SICK entailment as binary pair classification, from the local SICK test file.

    Label 1: ENTAILMENT; 0: NEUTRAL or CONTRADICTION. mteb's ``AbsTaskPairClassification`` scores it: average
    precision of the pairs ranked by cosine (``cosine_ap``, the main score), and AP, F1 and accuracy at the best
    threshold for cosine, dot product, Euclidean and Manhattan distance (``max_ap``: the best of them).
    """

    metadata = _local_metadata(
        "SICK-E", "PairClassification", "t2t",
        "SICK (Marelli et al. 2014) test split, 4,927 pairs: does sentence A entail sentence B (ENTAILMENT vs "
        "NEUTRAL or CONTRADICTION)? Binary pair classification scored by the average precision of cosine "
        "similarity; not SentEval's 3-way SICK-E probe. A local embedkit task, not an official mteb task.",
        "cosine_ap")
    source: str = ""
    files: dict[str, str]

    def load_data(self, num_proc: int | None = None, *, timer: Any = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        pairs = read_sick_entailment(self.source, name=self.metadata.name)
        self.files = dict(pairs.files)
        self.dataset = DatasetDict({"test": Dataset.from_dict(
            {"sentence1": pairs.sentences1, "sentence2": pairs.sentences2, "labels": pairs.labels})})
        self.data_loaded = True


_CLASSIFICATION_CLASSES = {"MR": LocalMR, "SUBJ": LocalSUBJ}
assert set(_CLASSIFICATION_CLASSES) == set(CLASSIFICATION_SETS)


def local_classification_task(name: str, data_root: str | Path) -> LocalClassification:
    """``MR`` or ``SUBJ`` reading from ``data_root`` (the folder holding ``classification/``)."""
    task = _CLASSIFICATION_CLASSES[name]()
    task.data_root = str(data_root)
    return task


def sick_entailment_task(path: str | Path) -> LocalSICKEntailment:
    """``SICK-E`` over a SICK file (the test split, ``SICK_test_annotated.txt``, in the offline benchmark)."""
    task = LocalSICKEntailment()
    task.source = str(path)
    return task


def local_only_task(name: str, data_dir: str | Path | None) -> Any:
    """The task object of one of :data:`embedkit.evaluation.mteb_offline.LOCAL_ONLY` from the data folder
    (``data_dir``, else ``$EMBEDKIT_DATA`` or the default folders); a missing file is a ``DataError``."""
    source = local_source(name, data_dir)
    if name in _CLASSIFICATION_CLASSES:
        return local_classification_task(name, source)
    if name == "SICK-E":
        return sick_entailment_task(source)
    return _ranking_task(name, "rerank", source, RERANK_TASKS[name][1])
