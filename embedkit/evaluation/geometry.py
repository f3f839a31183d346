"""Embedding-space geometry: alignment, uniformity (Wang & Isola 2020), tolerance (Wang & Liu 2021) and
anisotropy.

All four work on unit vectors (embeddings are L2-normalised first):

* alignment  = E_{(x, y) ~ p_pos} ‖f(x) − f(y)‖₂^α, α = 2; positives are STS-B pairs with gold score > 4
  (as SimCSE, Gao et al. 2021, §5). Lower is better.
* uniformity = log E_{x, y ~ p_data, x ≠ y} exp(−t ‖f(x) − f(y)‖₂²), t = 2, over every pair of a sample of
  sentences. Lower (more negative) is more uniform.
* tolerance  = E_{(x, y) similar} f(x)ᵀ f(y): the mean cosine of pairs that share a meaning (Wang & Liu 2021,
  §4: pairs sharing a class label). Here: STS-B pairs with gold score ≥ 4 (of 5), :data:`TOLERANCE_THRESHOLD`;
  :func:`label_tolerance` computes it over every same-label pair of a labelled set. Higher: semantically close
  sentences stay close. On the same pairs, tolerance = 1 − alignment / 2 (‖a − b‖² = 2 − 2 cos for unit
  vectors); the two differ here only by the pairs scored exactly 4.
* anisotropy = E_{x ≠ y} cos(f(x), f(y)) over the same pairs: the mean cosine of unrelated sentences
  (near 0 for an isotropic space; large for the narrow cone of untuned BERT).

Alignment and uniformity are computed by the training terms' formulas
(:func:`embedkit.losses.alignment_uniformity.alignment` / ``uniformity``, in float64): one implementation.

References: Tongzhou Wang, Phillip Isola. "Understanding Contrastive Representation Learning through
Alignment and Uniformity on the Hypersphere." ICML 2020. Feng Wang, Huaping Liu. "Understanding the Behaviour of
Contrastive Loss." CVPR 2021 (arXiv:2012.09740): the uniformity–tolerance dilemma.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from embedkit.data.sts import PairSet

POSITIVE_THRESHOLD = 4.0  # alignment's positives: gold score > 4 (SimCSE §5)
TOLERANCE_THRESHOLD = 4.0  # tolerance's similar pairs: gold score >= 4 (of 5)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.clip(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12, None)


def alignment(x: np.ndarray, y: np.ndarray, alpha: float = 2.0) -> float:
    """Mean ‖x_i − y_i‖^α over positive pairs (rows of ``x`` and ``y``), on unit vectors."""
    if len(x) == 0:
        return float("nan")
    import torch

    from embedkit.losses import alignment_uniformity as au

    return float(au.alignment(torch.as_tensor(_unit(x)), torch.as_tensor(_unit(y)), alpha))


def _pair_cosines(x: np.ndarray) -> np.ndarray:
    """Cosines of every unordered pair i < j of rows of ``x``."""
    u = _unit(x)
    gram = u @ u.T
    return gram[np.triu_indices(len(u), k=1)]


def uniformity(x: np.ndarray, t: float = 2.0) -> float:
    """log mean exp(−t ‖x_i − x_j‖²) over all pairs i < j, on unit vectors (‖a − b‖² = 2 − 2 cos)."""
    if len(x) < 2:
        return float("nan")
    import torch

    from embedkit.losses import alignment_uniformity as au

    return float(au.uniformity(torch.as_tensor(_unit(x)), t))


def tolerance(x: np.ndarray, y: np.ndarray) -> float:
    """Mean cosine of the pairs (rows of ``x`` and ``y``): Wang & Liu's tolerance over given similar pairs."""
    if len(x) == 0:
        return float("nan")
    return float(np.mean(np.sum(_unit(x) * _unit(y), axis=-1)))


def label_tolerance(x: np.ndarray, labels: Sequence[Any]) -> float:
    """Wang & Liu's tolerance on a labelled set: the mean cosine over every unordered pair i < j of rows of ``x``
    with the same label (each pair once, so a large class weighs by its number of pairs)."""
    u = _unit(x)
    labels = np.asarray(labels)
    total, count = 0.0, 0
    for label in np.unique(labels):
        members = u[labels == label]
        if len(members) > 1:
            total += float(_pair_cosines(members).sum())
            count += len(members) * (len(members) - 1) // 2
    return total / count if count else float("nan")


def anisotropy(x: np.ndarray) -> float:
    """Mean cosine over all pairs i < j of rows of ``x``."""
    if len(x) < 2:
        return float("nan")
    return float(_pair_cosines(x).mean())


def sample_sentences(sentences: list[str], n: int, seed: int = 0) -> list[str]:
    """Up to ``n`` distinct sentences drawn without replacement with a fixed seed (all of them if fewer)."""
    unique = list(dict.fromkeys(sentences))
    if len(unique) <= n:
        return unique
    rng = np.random.default_rng(seed)
    return [unique[i] for i in sorted(rng.choice(len(unique), size=n, replace=False))]


def geometry_scores(pairs: PairSet, table: dict[str, np.ndarray], n_sentences: int = 2000,
                    seed: int = 0) -> dict[str, Any]:
    """Alignment on ``pairs`` scored above 4, tolerance on those scored 4 or more, uniformity and anisotropy on a
    seeded sample of its sentences.

    ``table`` maps each sentence of ``pairs`` to its embedding.
    """
    pos = [i for i, s in enumerate(pairs.scores) if s > POSITIVE_THRESHOLD]
    x = np.stack([table[pairs.sentences1[i]] for i in pos]) if pos else np.zeros((0, 1))
    y = np.stack([table[pairs.sentences2[i]] for i in pos]) if pos else np.zeros((0, 1))
    similar = [i for i, s in enumerate(pairs.scores) if s >= TOLERANCE_THRESHOLD]
    tx = np.stack([table[pairs.sentences1[i]] for i in similar]) if similar else np.zeros((0, 1))
    ty = np.stack([table[pairs.sentences2[i]] for i in similar]) if similar else np.zeros((0, 1))
    sample = sample_sentences(pairs.sentences1 + pairs.sentences2, n_sentences, seed)
    z = np.stack([table[s] for s in sample])
    return {
        "alignment": alignment(x, y, alpha=2.0),
        "uniformity": uniformity(z, t=2.0),
        "tolerance": tolerance(tx, ty),
        "anisotropy": anisotropy(z),
        "positives": {"source": pairs.name, "rule": f"gold score > {POSITIVE_THRESHOLD:g}", "n": len(pos)},
        "tolerance_pairs": {"source": pairs.name, "rule": f"gold score >= {TOLERANCE_THRESHOLD:g}",
                            "n": len(similar)},
        "sentences": {"source": pairs.name, "n": len(sample), "seed": seed},
        "settings": {"alpha": 2, "t": 2},
        "reference": "Wang & Isola, ICML 2020 (alignment, uniformity); Wang & Liu, CVPR 2021 (tolerance: mean "
                     "cosine of similar pairs); anisotropy = mean cosine of random pairs",
    }
