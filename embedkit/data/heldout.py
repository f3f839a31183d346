"""A selection set held out of the training file (``data.dev.split_from_train``).

The set that chooses the checkpoint must not be the set whose score is reported: a score on the selection set
is biased upwards by the selection itself. Where the data has no separate split for selection (TREC QA here:
train and dev only), a seeded share of the training file is held out of training and selects the checkpoint,
and the dev file is left for the final, reported score.

* ``kind: rerank`` (a ``qtext,label,atext`` training file): a share of the distinct *questions*; every candidate
  of a held-out question leaves training (its pairs, and its answers as mining candidates).
* ``kind: stsb`` (an STS-B-style scored file): a share of the scored pairs.

The slice is ``round(share × n)`` units (at least 1, at most n − 1) drawn by ``numpy.random.default_rng(seed)``,
kept in file order; it depends on the file, the share and the seed only (not on ``training.seed``), so runs that
differ in their training seed select on the same slice.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedkit.data.ranking import RerankSet, read_rerank
from embedkit.data.sts import PairSet, read_stsb, sha256_file
from embedkit.errors import DataError


@dataclass
class Heldout:
    """The held-out slice of one training file: the selection set, what leaves training, and the record."""

    dev: RerankSet | PairSet
    queries: frozenset[str] = frozenset()  # rerank: held-out question texts
    rows: frozenset[int] = frozenset()  # stsb: held-out row indices (file order)
    record: dict[str, Any] = field(default_factory=dict)


def heldout_indices(n: int, share: float, seed: int) -> list[int]:
    """``round(share × n)`` indices of ``range(n)`` (at least 1, at most ``n − 1``), seeded, sorted."""
    if n < 2:
        raise DataError(f"split_from_train needs at least 2 units to hold one out, the file has {n}")
    k = min(n - 1, max(1, round(share * n)))
    return sorted(int(i) for i in np.random.default_rng(seed).permutation(n)[:k])


def _digest(items: list[str]) -> str:
    return hashlib.sha256("\n".join(items).encode("utf-8")).hexdigest()


def split_heldout(path: str | Path, kind: str, share: float, seed: int) -> Heldout:
    """The held-out slice of the training file ``path`` for a dev set of ``kind`` (``rerank`` | ``stsb``)."""
    path = Path(path)
    base = {"file": str(path), "sha256": sha256_file(path), "share": share, "seed": seed}
    if kind == "rerank":
        data = read_rerank(path)
        questions = list(dict.fromkeys(q.query for q in data.queries))
        held = {questions[i] for i in heldout_indices(len(questions), share, seed)}
        name = f"{path.parent.name}-{path.stem}-heldout"
        dev = RerankSet(name, [q for q in data.queries if q.query in held], files=dict(data.files))
        if not any(q.scorable for q in dev.queries):
            raise DataError(f"{path}: no held-out question has both a positive and a negative candidate (MAP is "
                            "undefined); use a larger split_from_train or another split_seed")
        record = {**base, "unit": "question", "held_out": len(held), "of": len(questions),
                  "units_sha256": _digest(sorted(held))}
        return Heldout(dev, queries=frozenset(held), record=record)
    if kind == "stsb":
        pairs = read_stsb(path)
        idx = heldout_indices(len(pairs), share, seed)
        dev = PairSet("stsb-heldout", [pairs.sentences1[i] for i in idx], [pairs.sentences2[i] for i in idx],
                      [pairs.scores[i] for i in idx], files=dict(pairs.files))
        record = {**base, "unit": "pair", "held_out": len(idx), "of": len(pairs),
                  "units_sha256": _digest([str(i) for i in idx])}
        return Heldout(dev, rows=frozenset(idx), record=record)
    raise DataError(f"split_from_train: kind {kind!r} has no held-out slice (rerank or stsb)")


def remove_heldout(columns: dict[str, list[Any]], held: Heldout) -> dict[str, list[Any]]:
    """The training columns without the held-out slice: rerank rows whose first (anchor) column is a held-out
    question; stsb rows by index (the columns as read from the file, before ``max_samples``)."""
    if held.queries:
        anchors = next(iter(columns.values()))
        keep = [i for i, a in enumerate(anchors) if a not in held.queries]
    else:
        n = len(next(iter(columns.values())))
        keep = [i for i in range(n) if i not in held.rows]
    return {k: [v[i] for i in keep] for k, v in columns.items()}
