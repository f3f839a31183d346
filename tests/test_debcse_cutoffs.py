"""DebCSE cut-offs that hold in any embedding space.

The absolute cut-offs (positive ≥ 0.7, hard negative ≤ 0.9, mask ≥ 0.95) were tuned on a near-isotropic space.
In an anisotropic one (every embedding shares a large common component, as raw masked-LM [CLS] vectors do)
almost every pair has a high cosine: most in-batch negatives cross 0.95 and get masked. Relative cut-offs
(percentiles of the reference's own top-K neighbour cosines) follow the space. The spaces here are synthetic:
a bag-of-words encoder over topical sentences, with and without a common vector added to every embedding.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from embedkit.methods.debcse import DebCSEParams, false_negative_margin, false_negative_threshold, mask_only_cutoffs
from embedkit.methods.debcse import debias as db

TOPICS, WORDS_PER_TOPIC, DIM = 12, 60, 128


def corpus(n: int = 360, seed: int = 0) -> list[str]:
    """Topical sentences: mostly words of one topic, a few shared ones."""
    rng = np.random.default_rng(seed)
    shared = [f"common{i}" for i in range(10)]
    out = []
    for i in range(n):
        topic = i % TOPICS
        words = [f"t{topic}w{j}" for j in rng.integers(0, WORDS_PER_TOPIC, size=int(rng.integers(6, 12)))]
        words += list(rng.choice(shared, size=2))
        rng.shuffle(words)
        out.append(" ".join(words) + f" n{i}")
    return list(dict.fromkeys(out))


class FakeEncoder:
    """Unit mean of random word vectors; ``shift`` > 0 adds ``shift`` × a common unit vector before
    re-normalising (the anisotropic space)."""

    def __init__(self, shift: float) -> None:
        self.shift = shift
        self.vectors: dict[str, np.ndarray] = {}
        rng = np.random.default_rng(123)
        self.common = rng.standard_normal(DIM)
        self.common /= np.linalg.norm(self.common)

    def vector(self, word: str) -> np.ndarray:
        if word not in self.vectors:
            self.vectors[word] = np.random.default_rng(zlib.crc32(word.encode("utf-8"))).standard_normal(DIM)
        return self.vectors[word]

    def __call__(self, model, sentences, batch_size=128, device="auto", show_progress_bar=False) -> torch.Tensor:
        rows = []
        for s in sentences:
            v = np.mean([self.vector(w) for w in s.split()], axis=0)
            v /= np.linalg.norm(v)
            v = v + self.shift * self.common
            rows.append(v / np.linalg.norm(v))
        return torch.tensor(np.stack(rows), dtype=torch.float32)


def masked_share(monkeypatch, shift: float, cutoffs: str) -> tuple[float, dict]:
    import embedkit.mining

    monkeypatch.setattr(embedkit.mining, "unit_vectors", FakeEncoder(shift))
    texts = corpus()
    params = DebCSEParams(cutoffs=cutoffs, k=8, views=["delete", "crop"], mining_device="cpu")
    rows, _ = db.debias(None, texts, params, seed=0, device="cpu", backend="torch")
    threshold = false_negative_threshold(rows, params)
    stats = db.batch_statistics(rows, batch_size=32, seed=0, margin=false_negative_margin(rows, params),
                                threshold=threshold, max_pairs=50)
    return stats["masked_share"], rows.stats


@pytest.fixture(scope="module")
def spaces():
    mp = pytest.MonkeyPatch()
    try:
        return {(shift, mode): masked_share(mp, shift, mode)
                for shift in (0.0, 5.0) for mode in ("absolute", "relative")}
    finally:
        mp.undo()


def test_the_synthetic_space_is_anisotropic(spaces):
    iso = spaces[(0.0, "absolute")][1]["cutoffs"]["neighbour_percentiles"]
    aniso = spaces[(5.0, "absolute")][1]["cutoffs"]["neighbour_percentiles"]
    assert iso["p50"] < 0.8 and aniso["p10"] > 0.9, (iso, aniso)


def test_absolute_cutoffs_mask_most_in_batch_negatives_in_an_anisotropic_space(spaces):
    iso, aniso = spaces[(0.0, "absolute")][0], spaces[(5.0, "absolute")][0]
    assert iso < 0.10
    assert aniso > 0.5, f"masked {aniso:.2f} with absolute cut-offs in the anisotropic space"


def test_relative_cutoffs_keep_the_masked_fraction_of_the_isotropic_space(spaces):
    iso, aniso = spaces[(0.0, "relative")][0], spaces[(5.0, "relative")][0]
    assert aniso < 0.10
    assert abs(aniso - iso) < 0.03, f"isotropic {iso:.3f}, anisotropic {aniso:.3f}"
    assert abs(iso - spaces[(0.0, "absolute")][0]) < 0.05  # and near what the absolute cut-offs did where tuned


def test_relative_cutoffs_keep_the_positive_mix(spaces):
    """The share of positives of each kind (identity, view, neighbour) moves with absolute cut-offs in the
    anisotropic space (neighbours flood in) and stays put with relative ones (temperatures scale too)."""

    def share(key, kind):
        kinds = spaces[key][1]["positive_kinds"]
        return kinds.get(kind, 0) / sum(kinds.values())

    for kind in ("identity", "view", "neighbour"):
        assert abs(share((5.0, "relative"), kind) - share((0.0, "relative"), kind)) < 0.05, kind
    assert share((5.0, "absolute"), "neighbour") > share((0.0, "absolute"), "neighbour") + 0.2


def test_resolved_cutoffs_are_the_recipe_numbers_or_percentiles():
    sims = np.linspace(0.0, 1.0, 1001)
    absolute = db.resolve_cutoffs(DebCSEParams(), sims)
    assert (absolute.positive_min, absolute.negative_max, absolute.false_negative) == (0.7, 0.9, 0.95)
    rel = db.resolve_cutoffs(DebCSEParams(cutoffs="relative", positive_min_percentile=50, negative_max_percentile=80,
                                          false_negative_percentile=None), sims)
    assert (rel.mode, rel.positive_min, rel.negative_max, rel.false_negative) == ("relative", 0.5, 0.8, None)


def test_mask_only_relative_cutoffs_come_from_the_reference_neighbours():
    emb = FakeEncoder(5.0)(None, corpus(120))
    cut = mask_only_cutoffs(DebCSEParams(mode="mask-only", cutoffs="relative", k=8, mining_device="cpu"), emb)
    assert cut.mode == "relative" and cut.false_negative > 0.9  # high, as the space's cosines are
    absolute = mask_only_cutoffs(DebCSEParams(mode="mask-only"), emb)
    assert absolute.false_negative == 0.95


def test_diagnose_report_names_the_fractions_and_warns_on_a_high_masked_share():
    from embedkit.methods.debcse.diagnose import cutoff_report

    summary = {
        "cutoffs": {"mode": "absolute", "positive_min": 0.7, "negative_max": 0.9, "false_negative": 0.95,
                    "neighbour_percentiles": {"p10": 0.93, "p50": 0.96}},
        "after_positive_shares": {"identity": 0.1, "view": 0.2, "neighbour": 0.7},
        "after": {"in_batch": {"masked_share": 0.8, "above_threshold_share": 0.79}},
    }
    text = "\n".join(cutoff_report(summary))
    assert "neighbour 70.0%" in text and "masked: 80.0%" in text
    assert "warning" in text and "cutoffs: relative" in text
    summary["after"]["in_batch"]["masked_share"] = 0.02
    assert "warning" not in "\n".join(cutoff_report(summary))
