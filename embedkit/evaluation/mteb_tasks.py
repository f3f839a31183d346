"""mteb task classes that read STS12–16, STSBenchmark and SICK-R from the local data folder (air-gapped MTEB).

Each class subclasses mteb's own registered task (itself an ``mteb.abstasks.sts.AbsTaskSTS``), so the name,
metadata, pinned dataset revision, score range and scoring are mteb's, and results land in exactly the
files an online run writes. Only ``load_data`` is overridden: it fills ``self.dataset`` with a
``DatasetDict`` of ``sentence1`` / ``sentence2`` / ``score`` read from the files.

Import this module only through :func:`embedkit.evaluation.mteb_eval.import_mteb`, which points mteb's
cache away from the home folder before mteb is first imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mteb
from datasets import Dataset, DatasetDict
from mteb.abstasks.sts import AbsTaskSTS

from embedkit.data.sts import PairSet
from embedkit.evaluation.core import TASKS
from embedkit.evaluation.sts import load_local

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
