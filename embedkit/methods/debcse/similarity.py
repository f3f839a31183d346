"""Surface similarity of sentence pairs: token Jaccard, normalised token edit distance, length ratio.

These are the "surface" side of DebCSE-style debiasing (see ``docs/debcse.md``): how much two sentences
share words and length, independently of what they mean. Python, numpy and rapidfuzz (the edit
distance), no torch.

Tokens are lower-cased words (``\\w+``, keeping in-word apostrophes) and single punctuation marks, so the
measures are the same whatever encoder is in use.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

SurfaceMeasure = Literal["jaccard", "edit", "mean"]
_TOKEN = re.compile(r"\w+(?:'\w+)*|[^\w\s]")


def tokens(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens of ``text``."""
    return _TOKEN.findall(text.lower())


def jaccard(a: Sequence[str], b: Sequence[str]) -> float:
    """Jaccard similarity of the token sets: |A ∩ B| / |A ∪ B| (1.0 for two empty sentences)."""
    sa, sb = set(a), set(b)
    union = len(sa | sb)
    return len(sa & sb) / union if union else 1.0


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance between two token sequences (insertions, deletions, substitutions cost 1).

    Computed by rapidfuzz (``rapidfuzz.distance.Levenshtein``): the bit-parallel algorithm of Myers (1999) in
    Hyyrö's (2003) formulation for the global distance, in C++. rapidfuzz compares the elements of a token
    list by their Python hash (a one-character string by its code point), so two different tokens count as
    equal only on a 64-bit hash collision.
    """
    return Levenshtein.distance(a, b)


def normalized_edit_distance(a: Sequence, b: Sequence) -> float:
    """Token edit distance divided by the longer length: 0 for identical, 1 for nothing in common.

    With unit costs the distance is at most the longer length, so this is rapidfuzz's
    ``Levenshtein.normalized_distance`` (0 for two empty sequences).
    """
    return Levenshtein.normalized_distance(a, b)


def length_ratio(a: Sequence, b: Sequence) -> float:
    """Shorter over longer token count, in (0, 1]; 1 means the same length."""
    la, lb = len(a), len(b)
    if max(la, lb) == 0:
        return 1.0
    return min(la, lb) / max(la, lb)


def surface_similarity(jac: np.ndarray, ned: np.ndarray, measure: SurfaceMeasure = "mean") -> np.ndarray:
    """One surface similarity in [0, 1] from Jaccard and normalised edit distance:
    ``jaccard``, ``edit`` (1 − distance), or their ``mean``."""
    if measure == "jaccard":
        return np.asarray(jac, dtype=np.float64)
    if measure == "edit":
        return 1.0 - np.asarray(ned, dtype=np.float64)
    if measure == "mean":
        return 0.5 * (np.asarray(jac, dtype=np.float64) + 1.0 - np.asarray(ned, dtype=np.float64))
    raise ValueError(f"unknown surface measure {measure!r}; expected jaccard, edit or mean")


def pair_surface(
    left: Sequence[Sequence[str]], right: Sequence[Sequence[str]], measure: SurfaceMeasure = "mean"
) -> dict[str, np.ndarray]:
    """Surface measures of the pairs ``(left[i], right[i])`` given as token lists.

    Returns arrays ``jaccard``, ``edit_distance`` (normalised), ``length_ratio`` (shorter/longer),
    ``length_diff`` (len(right) − len(left), in tokens) and ``surface`` (per ``measure``).
    """
    if len(left) != len(right):
        raise ValueError(f"pair_surface: {len(left)} left sentences but {len(right)} right sentences")
    n = len(left)
    jac = np.empty(n)
    ratio = np.empty(n)
    diff = np.empty(n)
    for i, (a, b) in enumerate(zip(left, right, strict=True)):
        jac[i] = jaccard(a, b)
        ratio[i] = length_ratio(a, b)
        diff[i] = len(b) - len(a)
    # normalized_edit_distance of every pair in one rapidfuzz call (same values, no Python loop per pair)
    ned = process.cpdist(left, right, scorer=Levenshtein.normalized_distance, dtype=np.float64).reshape(n)
    return {
        "jaccard": jac, "edit_distance": ned, "length_ratio": ratio, "length_diff": diff,
        "surface": surface_similarity(jac, ned, measure),
    }
