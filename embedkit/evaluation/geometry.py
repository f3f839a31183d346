"""Embedding-space geometry: alignment, uniformity (Wang & Isola 2020) and anisotropy.

All three work on unit vectors (embeddings are L2-normalised first):

* alignment  = E_{(x, y) ~ p_pos} ‖f(x) − f(y)‖₂^α, α = 2; positives are STS-B pairs with gold score > 4
  (as SimCSE, Gao et al. 2021, §5). Lower is better.
* uniformity = log E_{x, y ~ p_data, x ≠ y} exp(−t ‖f(x) − f(y)‖₂²), t = 2, over every pair of a sample of
  sentences. Lower (more negative) is more uniform.
* anisotropy = E_{x ≠ y} cos(f(x), f(y)) over the same pairs: the mean cosine of unrelated sentences
  (near 0 for an isotropic space; large for the narrow cone of untuned BERT).

Alignment and uniformity are computed by the training terms' formulas
(:func:`embedkit.losses.alignment_uniformity.alignment` / ``uniformity``, in float64): one implementation.

Reference: Tongzhou Wang, Phillip Isola. "Understanding Contrastive Representation Learning through
Alignment and Uniformity on the Hypersphere." ICML 2020.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from embedkit.data.sts import PairSet

POSITIVE_THRESHOLD = 4.0


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
    """Alignment on ``pairs`` scored above 4, uniformity and anisotropy on a seeded sample of its sentences.

    ``table`` maps each sentence of ``pairs`` to its embedding.
    """
    pos = [i for i, s in enumerate(pairs.scores) if s > POSITIVE_THRESHOLD]
    x = np.stack([table[pairs.sentences1[i]] for i in pos]) if pos else np.zeros((0, 1))
    y = np.stack([table[pairs.sentences2[i]] for i in pos]) if pos else np.zeros((0, 1))
    sample = sample_sentences(pairs.sentences1 + pairs.sentences2, n_sentences, seed)
    z = np.stack([table[s] for s in sample])
    return {
        "alignment": alignment(x, y, alpha=2.0),
        "uniformity": uniformity(z, t=2.0),
        "anisotropy": anisotropy(z),
        "positives": {"source": pairs.name, "rule": f"gold score > {POSITIVE_THRESHOLD:g}", "n": len(pos)},
        "sentences": {"source": pairs.name, "n": len(sample), "seed": seed},
        "settings": {"alpha": 2, "t": 2},
        "reference": "Wang & Isola, ICML 2020 (alignment, uniformity); anisotropy = mean cosine of random pairs",
    }
