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
from embedkit.data.sts import PairSet, check_sick_test, read_sick, read_sts_year, read_stsb
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
# The same sets on the Hub (mteb's copies, with the revisions mteb 2.26 pins). mteb's SICK-R holds all 9,927
# SemEval pairs (train + trial + test) with no field saying which split a pair is from, so the SentEval suite takes
# SICK-R from HUB_SICK_TEST instead; HUB_SETS["SICK-R"] is what mteb's own SICK-R task reads.
HUB_SETS = {
    "STS12": ("mteb/sts12-sts", "a0d554a64d88156834ff5ae9920b964011b16384"),
    "STS13": ("mteb/sts13-sts", "7e90230a92c190f1bf69ae9002b8cea547a64cca"),
    "STS14": ("mteb/sts14-sts", "6031580fec1f6af667f0bd2da0a551cf4f0b2375"),
    "STS15": ("mteb/sts15-sts", "ae752c7c21bf194d8b67fd573edf7ae58183cbe3"),
    "STS16": ("mteb/sts16-sts", "4d8694f8f0e0100860b497b999b3dbed754a0513"),
    "STSBenchmark": ("mteb/stsbenchmark-sts", "b0fddb56ed78048fa8b90373c8a3cfc37b684831"),
    "SICK-R": ("mteb/sickr-sts", "20a6d6f312dd54037fe07a32d58e5e168867909d"),
}
# A Hub copy of SICK that carries the SemEval split of every pair: the `sick` dataset (Marelli et al. 2014; its
# documented schema: pair_ID, sentence_A, sentence_B, relatedness_score, ..., SemEval_set in TRAIN/TRIAL/TEST; its
# `test` split is SemEval_set == TEST). Not downloadable from the development machine: the reader is written to the
# documented schema and tested on a fake (tests/test_eval_data.py).
HUB_SICK_TEST = ("RobZamp/sick", "test")
SOURCES = ("auto", "local", "hub")
# Short names a user may type for a task (compared case-insensitively, ignoring '-', '_' and spaces).
TASK_ALIASES = {"stsb": "STSBenchmark", "stsbenchmark": "STSBenchmark", "sts-b": "STSBenchmark",
                "sickr": "SICK-R", "sick": "SICK-R", **{t.lower(): t for t in TASKS}}


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch not in "-_ ")


def resolve_tasks(names: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """The suite's tasks named by ``names`` (a list, or one comma-separated string such as ``STS12,STSB``), in the
    suite's order, each once; all 7 for ``None``. Names are the suite's (STS12 … STS16, STSBenchmark, SICK-R) or
    the aliases STSB / SICKR, in any case. An unknown name raises :class:`DataError` listing the valid ones."""
    if names is None:
        return TASKS
    items = names.split(",") if isinstance(names, str) else list(names)
    aliases = {_key(k): v for k, v in TASK_ALIASES.items()}
    chosen, unknown = set(), []
    for raw in items:
        name = str(raw).strip()
        if not name:
            continue
        if _key(name) in aliases:
            chosen.add(aliases[_key(name)])
        else:
            unknown.append(name)
    if unknown:
        raise DataError(f"unknown STS task {', '.join(repr(u) for u in unknown)}; the suite's tasks are "
                        f"{', '.join(TASKS)} (also STSB, SICKR; any case)")
    if not chosen:
        raise DataError(f"no STS task named; the suite's tasks are {', '.join(TASKS)}")
    return tuple(t for t in TASKS if t in chosen)
LAYOUT = ("sts/STS12..STS16/STS.input.*.txt + STS.gs.*.txt, sts/stsbenchmark/sts-test.csv, "
          "sts/sick/SICK_test_annotated.txt")
# SICK files by what they hold: SemEval-2014's three splits, and the 9,927-pair union data/fetch_public.py writes
# from mteb's SICK-R (train + trial + test in one file, no split labels).
SICK_FILES = {"train": "SICK_train.txt", "trial": "SICK_trial.txt", "test": "SICK_test_annotated.txt"}
SICK_ALL_FILE = "SICK_all_semeval2014.txt"


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
    deviations: list[str] = []
    for name in tasks:
        if name.startswith("STS1"):
            out[name] = read_sts_year(root / name, name=name)
        elif name == "STSBenchmark":
            out[name] = read_stsb(root / "stsbenchmark" / "sts-test.csv", name=name)
        elif name == "SICK-R":
            out[name] = read_sick_split(root / "sick", sick_split)
            if sick_split == "test":
                note = check_sick_test(out[name], str(root / "sick" / SICK_FILES["test"]))
                deviations += [note] if note else []
        else:
            raise DataError(f"unknown STS task {name!r}; the suite has {', '.join(TASKS)}")
    return SuiteData(out, "local", str(root), deviations)


def read_sick_split(folder: Path, split: str) -> PairSet:
    """SICK relatedness: the SemEval test file (``test``, what SentEval scores), or (``all``, what mteb scores)
    train + trial + test concatenated in that order, else the one 9,927-pair file data/fetch_public.py writes."""
    if split not in ("test", "all"):
        raise DataError(f"SICK split {split!r}: expected 'test' or 'all'")
    if split == "test":
        names = [SICK_FILES["test"]]
    elif all((folder / f).exists() for f in SICK_FILES.values()) or not (folder / SICK_ALL_FILE).exists():
        names = [SICK_FILES["train"], SICK_FILES["trial"], SICK_FILES["test"]]
    else:
        names = [SICK_ALL_FILE]
    result = PairSet("SICK-R", [], [], [])
    for fname in names:
        part = read_sick(folder / fname, name=fname)
        start = len(result)
        result.sentences1 += part.sentences1
        result.sentences2 += part.sentences2
        result.scores += part.scores
        result.files.update(part.files)
        result.subsets[fname] = (start, len(result))
    if len(names) == 1:
        result.subsets = {}
    return result


def _load(loader: Callable[..., Any], name: str, repo: str, revision: str | None, split: str) -> Any:
    try:
        return loader(repo, revision=revision, split=split)
    except Exception as err:  # noqa: BLE001 - offline or missing: one clear message
        first = str(err).splitlines()[0] if str(err) else ""
        at = f"@{revision[:8]}" if revision else ""
        raise DataError(
            f"{name}: could not load {repo}{at} from the Hub ({type(err).__name__}: {first}). "
            f"Offline? Pass --data-dir (or set ${paths.ENV_VAR}) to a local folder ({LAYOUT})"
        ) from None


def _columns(ds: Any, repo: str, wanted: tuple[str, str, str]) -> None:
    missing = set(wanted) - set(ds.column_names)
    if missing:
        raise DataError(f"{repo}: expected columns {', '.join(wanted)}; missing {sorted(missing)}")


def hub_sick_test(ds: Any, repo: str) -> tuple[PairSet, str | None]:
    """SentEval's SICK-R test pairs from a Hub copy of SICK in the `sick` schema (sentence_A, sentence_B,
    relatedness_score): the rows whose ``SemEval_set`` is TEST when the set has that column, else the split as
    loaded. Refused when it holds more than the 4,927 test pairs (e.g. mteb's 9,927); returns a deviation line when
    it holds fewer (the final SICK release left some SemEval test pairs out)."""
    _columns(ds, repo, ("sentence_A", "sentence_B", "relatedness_score"))
    a, b, score = list(ds["sentence_A"]), list(ds["sentence_B"]), list(ds["relatedness_score"])
    rows = range(len(a))
    if "SemEval_set" in ds.column_names:
        rows = [i for i, s in enumerate(ds["SemEval_set"]) if str(s).strip().upper() == "TEST"]
    pairs = PairSet("SICK-R", [a[i] for i in rows], [b[i] for i in rows], [float(score[i]) for i in rows],
                    files={f"hub:{repo}:test": str(getattr(ds, "_fingerprint", ""))})
    return pairs, check_sick_test(pairs, f"{repo} (test split)")


def load_hub(tasks: tuple[str, ...] = TASKS, loader: Callable[..., Any] | None = None) -> SuiteData:
    """Read the suite's tasks from the Hub: mteb's copies (test splits, pinned revisions) for STS12-16 and STS-B;
    SICK-R's SemEval test split from :data:`HUB_SICK_TEST` (mteb's SICK-R holds all 9,927 pairs, unlabelled)."""
    if loader is None:

        # One short probe instead of datasets' retries (over a minute offline).
        require_hub("the STS data", f"pass --data-dir (or set ${paths.ENV_VAR}) to a local folder ({LAYOUT})")
        import datasets

        loader = datasets.load_dataset
    out: dict[str, PairSet] = {}
    deviations = []
    for name in tasks:
        if name == "SICK-R":
            repo, split = HUB_SICK_TEST
            out[name], note = hub_sick_test(_load(loader, name, repo, None, split), repo)
            deviations += [note] if note else []
            continue
        repo, revision = HUB_SETS[name]
        ds = _load(loader, name, repo, revision, "test")
        _columns(ds, repo, ("sentence1", "sentence2", "score"))
        scores = [float(s) for s in ds["score"]]
        out[name] = PairSet(name, list(ds["sentence1"]), list(ds["sentence2"]), scores,
                            files={f"hub:{repo}@{revision}": str(getattr(ds, "_fingerprint", ""))})
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
