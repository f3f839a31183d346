"""The offline MTEB benchmark, ``embedkit eval MODEL --mteb offline``: its tasks, their categories and the local
files each reads. No mteb import here: the CLI checks names and files with it before mteb or a model loads.

* STS: mteb's own STS12–16, STSBenchmark and SICK-R, read from the local STS folder
  (:func:`embedkit.evaluation.mteb_tasks.local_task`): same names, metadata and scores as mteb's on the Hub.
* Classification ``MR``, ``SUBJ``; pair classification ``SICK-E``; reranking ``TRECQA-dev``: local tasks under
  local names. mteb 2.26 has no English version of these sets, so their numbers compare only with other runs
  of the same files (docs/evaluation.md says how each is split and scored).
"""

from __future__ import annotations

import os
from pathlib import Path

from embedkit import paths
from embedkit.data.classification import CLASSIFICATION_SETS, SICK_TEST
from embedkit.errors import DataError
from embedkit.recipe import TARGET_TASKS

OFFLINE = "offline"  # the name that stands for every task below
STS_TASKS: tuple[str, ...] = TARGET_TASKS
# Local-only tasks: name -> (mteb task type, where its data sits under the data folder).
LOCAL_ONLY: dict[str, tuple[str, str]] = {
    "MR": ("Classification", CLASSIFICATION_SETS["MR"][0]),
    "SUBJ": ("Classification", CLASSIFICATION_SETS["SUBJ"][0]),
    "SICK-E": ("PairClassification", f"sts/{SICK_TEST}"),
    "TRECQA-dev": ("Reranking", "rerank/trecqa/dev.csv"),
}
OFFLINE_TASKS: tuple[str, ...] = (*STS_TASKS, *LOCAL_ONLY)
CATEGORIES: dict[str, str] = {**dict.fromkeys(STS_TASKS, "STS"), **{n: kind for n, (kind, _) in LOCAL_ONLY.items()}}


def expand_names(names: list[str]) -> list[str]:
    """``offline`` (any case) replaced by :data:`OFFLINE_TASKS`; each name once, first occurrence kept."""
    out: list[str] = []
    for name in names:
        for task in OFFLINE_TASKS if name.lower() == OFFLINE else (name,):
            if task not in out:
                out.append(task)
    return out


def local_source(name: str, data_dir: str | os.PathLike | None) -> Path:
    """What local-only task ``name`` reads: the data folder (``MR``, ``SUBJ``: the one holding
    ``classification/``) or the file (``SICK-E``: SICK's test split, ``TRECQA-dev``). A missing folder or
    file is a :class:`DataError` naming it."""
    kind, rel = LOCAL_ONLY[name]
    base = paths.resolve_data_dir(data_dir)
    if base is None:
        raise DataError(f"--mteb {name}: a local task ({kind}); no data folder: pass --data-dir (or set "
                        f"${paths.ENV_VAR}) to a folder laid out like ../shared/data ({rel})")
    if name in CLASSIFICATION_SETS:
        for fname, _ in CLASSIFICATION_SETS[name][1]:
            if not (base / rel / fname).is_file():
                raise DataError(f"--mteb {name}: {base / rel / fname} not found (expected the layout of "
                                f"../shared/data: {rel}/{fname})")
        return base
    # SICK-E sits in the STS folder, which --data-dir may name itself (as for the STS tasks)
    candidates = [base / rel] + ([base / rel.removeprefix("sts/")] if rel.startswith("sts/") else [])
    for path in candidates:
        if path.is_file():
            return path
    raise DataError(f"--mteb {name}: {candidates[0]} not found (expected the layout of ../shared/data: {rel})")
