"""The 7-task STS suite under the SentEval/SimCSE protocol ("all" setting).

STS12–16: for each year, every subset concatenated, one correlation; STS-B and SICK-R: their test splits.
Cosine similarity, 100 × Spearman; "STS avg" is the mean of the 7. Pairs without a gold score are skipped.
SentEval's other two aggregations of STS12–16 are computed as well and reported apart, labelled:
``mean`` (plain mean of the per-subset correlations) and ``wmean`` (mean weighted by subset size).

Data comes from a local folder laid out like ``../shared/data/sts`` or, when none is set, from the
mteb/* copies on the Hub.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedkit import paths
from embedkit.data.sts import PairSet, read_sick, read_sts_year, read_stsb
from embedkit.errors import DataError
from embedkit.evaluation.core import correlations as _correlations
from embedkit.evaluation.core import pair_cosines
from embedkit.model_ref import require_hub
from embedkit.recipe import TARGET_TASKS as TASKS  # the one list

PROTOCOL = "senteval-sts-all"
SETTINGS = ("wmean", "mean")
SETTING_DESCRIPTIONS = {
    "all": "per task, all subsets concatenated, one correlation (the SimCSE/SentEval 'all' setting)",
    "wmean": "per task, the mean of per-subset correlations weighted by subset size (SentEval 'wmean')",
    "mean": "per task, the unweighted mean of per-subset correlations (SentEval 'mean')",
}
# The same sets on the Hub (mteb's copies, with the revisions mteb 2.26 pins). SICK-R there holds all 9,927
# SemEval pairs (train + trial + test), not the 4,927 test pairs SentEval uses: recorded as a deviation.
HUB_SETS = {
    "STS12": ("mteb/sts12-sts", "a0d554a64d88156834ff5ae9920b964011b16384"),
    "STS13": ("mteb/sts13-sts", "7e90230a92c190f1bf69ae9002b8cea547a64cca"),
    "STS14": ("mteb/sts14-sts", "6031580fec1f6af667f0bd2da0a551cf4f0b2375"),
    "STS15": ("mteb/sts15-sts", "ae752c7c21bf194d8b67fd573edf7ae58183cbe3"),
    "STS16": ("mteb/sts16-sts", "4d8694f8f0e0100860b497b999b3dbed754a0513"),
    "STSBenchmark": ("mteb/stsbenchmark-sts", "b0fddb56ed78048fa8b90373c8a3cfc37b684831"),
    "SICK-R": ("mteb/sickr-sts", "20a6d6f312dd54037fe07a32d58e5e168867909d"),
}
SOURCES = ("auto", "local", "hub")
LAYOUT = ("sts/STS12..STS16/STS.input.*.txt + STS.gs.*.txt, sts/stsbenchmark/sts-test.csv, "
          "sts/sick/SICK_test_annotated.txt")


@dataclass
class SuiteData:
    """The loaded tasks of the suite and where they came from."""

    tasks: dict[str, PairSet]
    source: str  # "local" | "hub"
    root: str | None = None
    deviations: list[str] = field(default_factory=list)

    @property
    def files(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for pairs in self.tasks.values():
            out.update(pairs.files)
        return out

    def sentences(self) -> list[str]:
        """Every sentence of every task, each once, in first-seen order."""
        seen: dict[str, None] = {}
        for pairs in self.tasks.values():
            seen.update(dict.fromkeys(pairs.sentences1))
            seen.update(dict.fromkeys(pairs.sentences2))
        return list(seen)


def sts_root(data_dir: str | os.PathLike | None) -> Path | None:
    """The folder that holds STS12 … and stsbenchmark: ``DATA/sts`` or ``DATA`` itself; ``None`` if unset.

    Raises :class:`DataError` when a folder was named (``--data-dir`` or ``$EMBEDKIT_DATA``) but is missing.
    """
    base = paths.resolve_data_dir(data_dir)
    if base is None:
        return None
    origin = "--data-dir" if data_dir else (f"${paths.ENV_VAR}" if os.environ.get(paths.ENV_VAR) else "data folder")
    if not base.is_dir():
        raise DataError(
            f"{origin} {base}: folder not found; pass --data-dir (or set ${paths.ENV_VAR}) to a folder laid out "
            f"like ../shared/data ({LAYOUT})"
        )
    for cand in (base / "sts", base):
        if (cand / "STS12").is_dir() or (cand / "stsbenchmark").is_dir():
            return cand
    raise DataError(f"{origin} {base}: no STS data inside; expected {LAYOUT}")


def load_local(root: Path, tasks: tuple[str, ...] = TASKS, sick_split: str = "test") -> SuiteData:
    """Read the suite's tasks from a local folder (see :data:`LAYOUT`); strict, with file:line errors.

    ``sick_split`` is ``test`` (SentEval) or ``all`` (train + trial + test, the 9,927 pairs mteb's SICK-R uses).
    """
    out: dict[str, PairSet] = {}
    for name in tasks:
        if name.startswith("STS1"):
            out[name] = read_sts_year(root / name, name=name)
        elif name == "STSBenchmark":
            out[name] = read_stsb(root / "stsbenchmark" / "sts-test.csv", name=name)
        elif name == "SICK-R":
            out[name] = read_sick_split(root / "sick", sick_split)
        else:
            raise DataError(f"unknown STS task {name!r}; the suite has {', '.join(TASKS)}")
    return SuiteData(out, "local", str(root))


def read_sick_split(folder: Path, split: str) -> PairSet:
    """SICK relatedness: the SemEval test file, or (``all``) train + trial + test concatenated in that order."""
    names = {"test": ["SICK_test_annotated.txt"],
             "all": ["SICK_train.txt", "SICK_trial.txt", "SICK_test_annotated.txt"]}
    if split not in names:
        raise DataError(f"SICK split {split!r}: expected 'test' or 'all'")
    result = PairSet("SICK-R", [], [], [])
    for fname in names[split]:
        part = read_sick(folder / fname, name=fname)
        start = len(result)
        result.sentences1 += part.sentences1
        result.sentences2 += part.sentences2
        result.scores += part.scores
        result.files.update(part.files)
        result.subsets[fname] = (start, len(result))
    if split == "test":
        result.subsets = {}
    return result


def load_hub(tasks: tuple[str, ...] = TASKS, loader: Callable[..., Any] | None = None) -> SuiteData:
    """Read the suite's tasks from mteb's copies on the Hub (test splits, pinned revisions)."""
    if loader is None:

        # One short probe instead of datasets' retries (over a minute offline).
        require_hub("the STS data", f"pass --data-dir (or set ${paths.ENV_VAR}) to a local folder ({LAYOUT})")
        import datasets

        loader = datasets.load_dataset
    out: dict[str, PairSet] = {}
    for name in tasks:
        repo, revision = HUB_SETS[name]
        try:
            ds = loader(repo, revision=revision, split="test")
        except Exception as err:  # noqa: BLE001 - offline or missing: one clear message
            first = str(err).splitlines()[0] if str(err) else ""
            raise DataError(
                f"{name}: could not load {repo}@{revision[:8]} from the Hub ({type(err).__name__}: {first}). "
                f"Offline? Pass --data-dir (or set ${paths.ENV_VAR}) to a local folder ({LAYOUT})"
            ) from None
        missing = {"sentence1", "sentence2", "score"} - set(ds.column_names)
        if missing:
            raise DataError(f"{repo}: expected columns sentence1, sentence2, score; missing {sorted(missing)}")
        scores = [float(s) for s in ds["score"]]
        out[name] = PairSet(name, list(ds["sentence1"]), list(ds["sentence2"]), scores,
                            files={f"hub:{repo}@{revision}": str(getattr(ds, "_fingerprint", ""))})
    deviations = []
    if "SICK-R" in out:
        deviations.append(
            f"SICK-R from {HUB_SETS['SICK-R'][0]} holds {len(out['SICK-R'])} pairs (SemEval train+trial+test); "
            "SentEval uses the 4,927 test pairs, so this task is not comparable with local-data results"
        )
    if any(name.startswith("STS1") for name in out):
        deviations.append("the Hub copies carry no subset labels: the wmean and mean settings equal 'all' for STS12-16")
    return SuiteData(out, "hub", None, deviations)


def load_suite(data_dir: str | os.PathLike | None = None, source: str = "auto",
               tasks: tuple[str, ...] = TASKS) -> SuiteData:
    """The suite's data: ``local`` (a data folder), ``hub``, or ``auto`` (local when a folder is set, else Hub)."""
    if source not in SOURCES:
        raise DataError(f"source {source!r}: expected one of {', '.join(SOURCES)}")
    root = sts_root(data_dir) if source != "hub" else None
    if root is not None:
        return load_local(root, tasks)
    if source == "local":
        raise DataError(
            f"no local STS data: pass --data-dir or set ${paths.ENV_VAR} to a folder laid out like ../shared/data "
            f"({LAYOUT})"
        )
    return load_hub(tasks)


def correlations(cosines: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """100 × Spearman and 100 × Pearson of ``cosines`` against ``gold`` (NaN for fewer than 2 pairs)."""
    if len(gold) < 2:
        return {"spearman": float("nan"), "pearson": float("nan")}
    return _correlations(cosines, gold)


def score_task(pairs: PairSet, cosines: np.ndarray) -> dict[str, Any]:
    """One task's scores under the three SentEval aggregations, plus per-subset scores.

    Returns ``{"all": {spearman, pearson, n}, "wmean": {...}, "mean": {...}, "subsets": {name: {...}}}``.
    A task without subsets (STS-B, SICK-R) has the same value in all three settings.
    """
    gold = np.asarray(pairs.scores, dtype=np.float64)
    main = {**correlations(cosines, gold), "n": len(gold)}
    subsets = {
        name: {**correlations(cosines[a:b], gold[a:b]), "n": b - a} for name, (a, b) in pairs.subsets.items()
    }
    if not subsets:
        return {"all": main, "wmean": dict(main), "mean": dict(main), "subsets": {}}
    weights = np.array([s["n"] for s in subsets.values()], dtype=np.float64)
    out: dict[str, Any] = {"all": main, "subsets": subsets}
    for setting in SETTINGS:
        agg = {}
        for metric in ("spearman", "pearson"):
            values = np.array([s[metric] for s in subsets.values()], dtype=np.float64)
            agg[metric] = float(np.average(values, weights=weights if setting == "wmean" else None))
        out[setting] = {**agg, "n": int(weights.sum())}
    return out


def score_suite(data: SuiteData, table: dict[str, np.ndarray]) -> dict[str, Any]:
    """The suite's scores from an embedding table (sentence → unit vector).

    Returns the ``tasks`` / ``avg`` / ``settings`` / ``subsets`` part of :func:`embedkit.evaluation.evaluate`.
    """
    per_task = {}
    for name, pairs in data.tasks.items():
        per_task[name] = score_task(pairs, pair_cosines(table, pairs))
    tasks = {name: s["all"] for name, s in per_task.items()}
    settings: dict[str, Any] = {}
    for setting in SETTINGS:
        rows = {name: s[setting] for name, s in per_task.items()}
        settings[setting] = {
            "description": SETTING_DESCRIPTIONS[setting],
            "tasks": rows,
            "avg": float(np.mean([r["spearman"] for r in rows.values()])),
        }
    return {
        "tasks": tasks,
        "avg": float(np.mean([t["spearman"] for t in tasks.values()])),
        "settings": settings,
        "subsets": {name: s["subsets"] for name, s in per_task.items() if s["subsets"]},
    }
