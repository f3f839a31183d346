"""DebCSE-style debiasing of contrastive pairs: propensity estimation by (surface-similarity bin ×
length-ratio bin), inverse-propensity-weighted selection of positives and hard negatives, and the
false-negative rule used by the loss.

This is embkit's own reading of DebCSE (Miao, Du and Zhang, CIKM 2023, arXiv:2309.07396); no official code
is public. ``docs/debcse.md`` states the reading; every choice is a field of :class:`DebiasParams`.

Pipeline for one mining round (``mine`` → ``build_candidates`` → ``select_pairs`` → ``build_rows``):

1. Each unique training sentence gets a candidate set: itself (the plain dropout positive, optional),
   length-changing views of itself (word repetition, deletion, cropping) and its top-K neighbours under a
   frozen reference encoder.
2. Every (anchor, candidate) pair records the reference cosine (semantic), token Jaccard, normalised
   token edit distance, a surface similarity combining them, and the length ratio.
3. Positives: among candidates with semantic ≥ ``positive_min_semantic`` the propensity π⁺(b) of each
   (surface bin × length bin) is the share of those candidate pairs in the bin (what plain sampling draws);
   one positive per anchor is drawn with probability ∝ exp(s/τ⁺) · t(b)/π⁺(b) — close in meaning, rare in
   surface and length, i.e. lexically different paraphrases. ``t`` is the target bin distribution
   (uniform by default).
4. Hard negatives: among neighbours whose semantic is at most the chosen positive's minus
   ``negative_margin`` (and at most ``negative_max_semantic``) and that are not near-duplicates, π⁻(b) is
   estimated the same way and one is drawn ∝ exp(−s/τ⁻) · t(b)/π⁻(b) (no semantic factor by default): the
   mirror preference, favouring rare (high-surface) bins among less similar meanings.

Randomness comes from ``numpy.random.default_rng((seed, round))`` only, so every process that mines with
the same seed and reference builds the same rows.
"""

from __future__ import annotations

import hashlib
import multiprocessing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from embedkit.methods.debcse.similarity import SurfaceMeasure, pair_surface, tokens

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

ViewKind = Literal["repeat", "delete", "crop"]
IDENTITY, VIEW, NEIGHBOUR = 0, 1, 2
KIND_NAMES = {IDENTITY: "identity", VIEW: "view", NEIGHBOUR: "neighbour", -1: "random"}


# Percentiles of the reference's top-K neighbour cosines that stand for the absolute cut-offs (0.7, 0.9, 0.95)
# where those were tuned: all-MiniLM-L6-v2 on Brown sentences (docs/debcse.md, "Cut-offs").
PERCENTILE_DEFAULTS = {"positive": 99.0, "negative": 99.5, "false_negative": 99.9}


class DebiasParams(BaseModel):
    """Every choice of the debiasing reading, as recipe keys (``method.<key>``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    k: int = Field(16, gt=0, description="top-K reference neighbours mined per sentence")
    views: list[ViewKind] = Field(
        default_factory=lambda: ["repeat", "delete", "crop"],
        description="length-changing views of the anchor added to the positive candidates",
    )
    repeat_rate: float = Field(0.32, gt=0, le=1, description="word repetition: up to ⌊rate·L⌋ words doubled")
    delete_rate: float = Field(0.2, gt=0, lt=1, description="word deletion: each word dropped with this probability")
    crop_min: float = Field(0.5, gt=0, le=1, description="cropping: kept span is U(crop_min, crop_max) of the words")
    crop_max: float = Field(0.9, gt=0, le=1)
    include_identity: bool = Field(True, description="the anchor itself (dropout positive) is a candidate")
    surface_measure: SurfaceMeasure = Field("mean", description="jaccard, edit (1 − distance) or their mean")
    surface_bins: int = Field(5, gt=0, description="equal-width surface-similarity bins on [0, 1]")
    length_bins: int = Field(4, gt=0, description="equal-width length-ratio (shorter/longer) bins on [0, 1]")
    smoothing: float = Field(1.0, ge=0, description="pseudo-count added to every bin of a propensity table")
    max_weight: float = Field(10.0, gt=0, description="clip on inverse-propensity weights (mean 1 over the pool)")
    ipw: bool = Field(True, description="false: no propensity correction (ablation: draw by semantic weight only)")
    cutoffs: Literal["absolute", "relative"] = Field(
        "absolute", description="absolute: the semantic cut-offs are reference cosines (positive_min_semantic, "
        "negative_max_semantic, false_negative_threshold); relative: percentiles of the reference's own top-K "
        "neighbour cosines, measured at each mining (the *_percentile keys), so they hold in an anisotropic space",
    )
    positive_min_semantic: float = Field(0.7, ge=-1, le=1, description="candidates below are never positives")
    positive_temperature: float = Field(0.1, gt=0, description="τ⁺ of the semantic weight exp(s/τ⁺)")
    negative_margin: float = Field(
        0.1, ge=0, description="hard negative semantic ≤ positive's − margin (cutoffs relative: in units of "
        "1 − the median neighbour cosine)",
    )
    negative_max_semantic: float = Field(0.9, ge=-1, le=1, description="hard negatives never above this cosine")
    negative_temperature: float | None = Field(
        None, gt=0, description="τ⁻ of the semantic weight exp(−s/τ⁻); null: none (inverse propensity only)"
    )
    positive_min_percentile: float = Field(
        PERCENTILE_DEFAULTS["positive"], ge=0, le=100,
        description="cutoffs relative: positives need a cosine ≥ this percentile of the top-K neighbour cosines",
    )
    negative_max_percentile: float = Field(
        PERCENTILE_DEFAULTS["negative"], ge=0, le=100,
        description="cutoffs relative: hard negatives never above this percentile of the neighbour cosines",
    )
    false_negative_percentile: float | None = Field(
        PERCENTILE_DEFAULTS["false_negative"], ge=0, le=100,
        description="cutoffs relative: in-batch candidates at or above this percentile of the neighbour cosines "
        "are masked; null: off",
    )
    duplicate_surface: float = Field(0.9, gt=0, le=1, description="surface ≥ this: a near-duplicate, never a negative")
    hard_negatives: bool = Field(True, description="draw one hard negative per anchor")
    surface_workers: int = Field(1, ge=1, description="processes computing the surface measures of all pairs")


# --------------------------------------------------------------------------------------------------------
# Length-changing views (word level, on whitespace words)


def length_view(text: str, kind: ViewKind, rng: np.random.Generator, params: DebiasParams) -> str:
    """One augmented view of ``text`` that changes its length: ``repeat`` doubles k ~ U{1..⌊rate·L⌋} words
    in place, ``delete`` drops each word with probability ``delete_rate`` (keeping at least one), ``crop``
    keeps a contiguous span of U(crop_min, crop_max) of the words."""
    words = text.split()
    n = len(words)
    if n <= 1:
        return text
    if kind == "repeat":
        k = int(rng.integers(1, max(1, int(params.repeat_rate * n)) + 1))
        chosen = set(rng.choice(n, size=min(k, n), replace=False).tolist())
        out = [w for i, w in enumerate(words) for _ in range(2 if i in chosen else 1)]
    elif kind == "delete":
        keep = rng.random(n) >= params.delete_rate
        if keep.all():
            keep[int(rng.integers(0, n))] = False
        if not keep.any():
            keep[int(rng.integers(0, n))] = True
        out = [w for w, kept in zip(words, keep, strict=True) if kept]
    elif kind == "crop":
        low, high = sorted((params.crop_min, params.crop_max))
        length = max(1, min(n, int(round(rng.uniform(low, high) * n))))
        start = int(rng.integers(0, n - length + 1))
        out = words[start : start + length]
    else:
        raise ValueError(f"unknown view kind {kind!r}; expected repeat, delete or crop")
    return " ".join(out)


def make_views(texts: list[str], params: DebiasParams, seed: int, round_: int = 0) -> list[list[str]]:
    """For each view kind in ``params.views``, one view of every sentence (list per kind)."""
    out = []
    for v, kind in enumerate(params.views):
        rng = np.random.default_rng([seed, round_, 1000 + v])
        out.append([length_view(t, kind, rng, params) for t in texts])
    return out


# --------------------------------------------------------------------------------------------------------
# Propensity by (surface bin × length bin)


def bin_index(values: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bin of each value on [0, 1] (values outside are clipped to the end bins)."""
    return np.clip((np.asarray(values, dtype=np.float64) * bins).astype(np.int64), 0, bins - 1)


@dataclass
class Propensity:
    """P(bin) of candidate pairs under plain sampling, over surface-similarity bin × length-ratio bin."""

    probs: np.ndarray  # surface_bins × length_bins, sums to 1
    counts: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.probs.shape  # type: ignore[return-value]

    @classmethod
    def fit(cls, surface: np.ndarray, ratio: np.ndarray, surface_bins: int = 5, length_bins: int = 4,
            smoothing: float = 1.0) -> Propensity:
        """Estimate the bin distribution of the given pairs (``smoothing`` pseudo-counts on occupied-or-not
        bins keep every propensity positive)."""
        counts = np.zeros((surface_bins, length_bins))
        np.add.at(counts, (bin_index(surface, surface_bins), bin_index(ratio, length_bins)), 1.0)
        smoothed = counts + smoothing
        total = smoothed.sum()
        probs = smoothed / total if total > 0 else np.full_like(smoothed, 1.0 / smoothed.size)
        return cls(probs=probs, counts=counts)

    def weights(self, surface: np.ndarray, ratio: np.ndarray, target: np.ndarray | None = None,
                max_weight: float | None = None) -> np.ndarray:
        """Inverse-propensity weights t(b)/π(b), normalised to mean 1 over the given pairs and clipped at
        ``max_weight``. ``target`` (same shape as ``probs``): the bin distribution to reproduce; default
        uniform over the bins that hold pairs. Reweighting the pairs by these gives the target distribution."""
        s_bins, l_bins = self.shape
        sb, lb = bin_index(surface, s_bins), bin_index(ratio, l_bins)
        if target is None:
            occupied = self.counts > 0
            target = occupied / max(occupied.sum(), 1)
        w = target[sb, lb] / self.probs[sb, lb]
        mean = w.mean() if w.size else 1.0
        if mean > 0:
            w = w / mean
        if max_weight is not None:
            w = np.minimum(w, max_weight)
        return w


def bin_histogram(surface: np.ndarray, ratio: np.ndarray, weights: np.ndarray | None, shape: tuple[int, int]
                  ) -> np.ndarray:
    """Normalised (weighted) histogram of pairs over surface bin × length bin."""
    hist = np.zeros(shape)
    np.add.at(hist, (bin_index(surface, shape[0]), bin_index(ratio, shape[1])),
              np.ones(len(surface)) if weights is None else weights)
    total = hist.sum()
    return hist / total if total > 0 else hist


# --------------------------------------------------------------------------------------------------------
# Mining and candidate tables


@dataclass
class MinedCorpus:
    """One reference encoding of a corpus: unique texts, their embeddings and neighbours, and views."""

    texts: list[str]
    embeddings: torch.Tensor  # n × d, unit, float32, CPU
    neighbour_ids: np.ndarray  # n × K
    neighbour_sims: np.ndarray  # n × K
    views: list[list[str]]  # V lists of n views
    view_embeddings: torch.Tensor  # V × n × d, unit, float16, CPU
    round: int = 0


def unique_texts(rows: list[str]) -> tuple[list[str], np.ndarray]:
    """(unique texts in first-seen order, id of each row's text)."""
    index: dict[str, int] = {}
    ids = np.empty(len(rows), dtype=np.int64)
    for r, text in enumerate(rows):
        ids[r] = index.setdefault(text, len(index))
    return list(index), ids


def mine(model: SentenceTransformer, texts: list[str], params: DebiasParams, seed: int, round_: int = 0,
         batch_size: int = 128, chunk_size: int = 4096, backend: str = "auto", device: str = "auto",
         progress: bool | None = False) -> MinedCorpus:
    """Encode ``texts`` (unique) and their views with the reference ``model`` and mine top-K neighbours.
    ``progress``: a bar while encoding (``None``: when stderr is a terminal)."""
    import torch

    from embedkit.mining import mining_device, top_k_neighbours, unit_vectors

    if len(texts) < 2:
        raise ValueError(f"DebCSE mining needs at least 2 distinct sentences, got {len(texts)}")
    emb = unit_vectors(model, texts, batch_size=batch_size, device=device, show_progress_bar=progress)
    idx, sims = top_k_neighbours(emb, k=params.k, chunk_size=chunk_size, backend=backend,  # type: ignore[arg-type]
                                 device=mining_device(device))
    views = make_views(texts, params, seed, round_)
    view_emb = [unit_vectors(model, v, batch_size=batch_size, device=device, show_progress_bar=progress).half()
                for v in views]
    stacked = torch.stack(view_emb) if view_emb else torch.zeros(0, len(texts), emb.shape[1], dtype=torch.float16)
    return MinedCorpus(texts, emb, idx.numpy(), sims.numpy().astype(np.float64), views, stacked, round_)


@dataclass
class Candidates:
    """Per-anchor candidate pairs as n × C matrices (C = 1 identity + views + neighbours)."""

    kind: np.ndarray  # IDENTITY / VIEW / NEIGHBOUR
    ref: np.ndarray  # id in the text table: < n corpus sentence, ≥ n view (n + v·n + i)
    semantic: np.ndarray
    surface: np.ndarray
    jaccard: np.ndarray
    edit_distance: np.ndarray
    length_ratio: np.ndarray
    length_diff: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.kind.shape  # type: ignore[return-value]


def build_candidates(mined: MinedCorpus, params: DebiasParams) -> Candidates:
    """Candidate matrices with semantic and surface measures of every (anchor, candidate) pair."""
    n = len(mined.texts)
    v_count = len(mined.views)
    k = mined.neighbour_ids.shape[1]
    toks = [tokens(t) for t in mined.texts]
    rows = np.arange(n)
    # Column 0 is always the anchor itself (the plain dropout positive); selection may exclude it.
    cols_kind, cols_ref, cols_sem = [np.full(n, IDENTITY)], [rows.copy()], [np.ones(n)]
    emb = mined.embeddings
    for v in range(v_count):
        cols_kind.append(np.full(n, VIEW))
        cols_ref.append(n + v * n + rows)
        cols_sem.append((emb * mined.view_embeddings[v].float()).sum(-1).double().numpy())
    for j in range(k):
        cols_kind.append(np.full(n, NEIGHBOUR))
        cols_ref.append(mined.neighbour_ids[:, j].astype(np.int64))
        cols_sem.append(mined.neighbour_sims[:, j])
    kind = np.stack(cols_kind, axis=1)
    ref = np.stack(cols_ref, axis=1)
    semantic = np.stack(cols_sem, axis=1)
    view_toks = [[tokens(t) for t in view] for view in mined.views]

    def toks_of(r: int) -> list[str]:
        return toks[r] if r < n else view_toks[(r - n) // n][(r - n) % n]

    c = kind.shape[1]
    left = [toks[i] for i in range(n) for _ in range(c)]
    right = [toks_of(int(r)) for r in ref.reshape(-1)]
    surf = parallel_pair_surface(left, right, params.surface_measure, params.surface_workers)
    shaped = {key: value.reshape(n, c) for key, value in surf.items()}
    return Candidates(kind, ref, semantic, shaped["surface"], shaped["jaccard"], shaped["edit_distance"],
                      shaped["length_ratio"], shaped["length_diff"])


def _surface_chunk(args: tuple) -> dict[str, np.ndarray]:
    return pair_surface(*args)


def parallel_pair_surface(left: list, right: list, measure: SurfaceMeasure, workers: int = 1,
                          min_pairs: int = 20_000) -> dict[str, np.ndarray]:
    """:func:`~embedkit.methods.debcse.similarity.pair_surface` split over ``workers`` processes (same result); fewer
    than ``min_pairs`` pairs stay in this process."""
    if workers <= 1 or len(left) < min_pairs:
        return pair_surface(left, right, measure)

    step = -(-len(left) // (workers * 4))
    chunks = [(left[i : i + step], right[i : i + step], measure) for i in range(0, len(left), step)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        parts = pool.map(_surface_chunk, chunks)
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


# --------------------------------------------------------------------------------------------------------
# Semantic cut-offs


@dataclass
class Cutoffs:
    """The semantic cut-offs in force for one mining round, as reference cosines, and where they came from."""

    mode: str  # absolute | relative
    positive_min: float
    negative_max: float
    false_negative: float | None
    negative_margin: float = 0.1  # as cosine differences
    false_negative_margin: float = 0.0
    positive_temperature: float = 0.1  # of the semantic weights, in cosine units
    negative_temperature: float | None = None
    neighbour_percentiles: dict[str, float] = field(default_factory=dict)  # p10/p50/p90/p99 of the kNN cosines

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "positive_min": self.positive_min, "negative_max": self.negative_max,
                "false_negative": self.false_negative, "negative_margin": self.negative_margin,
                "false_negative_margin": self.false_negative_margin,
                "positive_temperature": self.positive_temperature, "negative_temperature": self.negative_temperature,
                "neighbour_percentiles": dict(self.neighbour_percentiles)}


def resolve_cutoffs(params: DebiasParams, neighbour_sims: np.ndarray) -> Cutoffs:
    """The cut-offs as cosines: the recipe's own (``cutoffs: absolute``) or, for ``relative``, the given
    percentiles of ``neighbour_sims`` (the reference's top-K neighbour cosines, all anchors together), with the
    margins (``negative_margin``, ``false_negative_margin``) and the temperatures of the semantic weights in
    units of the space's own scale, 1 − the median neighbour cosine: a common component added to every
    embedding shrinks all cosine differences by the same factor as that scale, so a relative margin stays the
    same step.

    A relative cut-off follows the reference space: where every pair has a high cosine (an anisotropic space,
    e.g. raw masked-LM [CLS] vectors) the neighbour cosines are high too, and so are the cut-offs taken from them.
    """
    sims = np.asarray(neighbour_sims, dtype=np.float64).ravel()
    sims = sims[np.isfinite(sims)]
    if sims.size == 0:
        raise ValueError("no neighbour similarities to take the cut-offs from")
    spread = {f"p{q:g}": float(np.percentile(sims, q)) for q in (10, 50, 90, 99)}
    threshold = getattr(params, "false_negative_threshold", None)
    fn_margin = float(getattr(params, "false_negative_margin", 0.0))
    if params.cutoffs == "absolute":
        return Cutoffs("absolute", params.positive_min_semantic, params.negative_max_semantic, threshold,
                       params.negative_margin, fn_margin, params.positive_temperature, params.negative_temperature,
                       spread)
    fn = params.false_negative_percentile
    scale = max(1.0 - spread["p50"], 1e-6)
    return Cutoffs(
        "relative", float(np.percentile(sims, params.positive_min_percentile)),
        float(np.percentile(sims, params.negative_max_percentile)),
        None if fn is None else float(np.percentile(sims, fn)),
        params.negative_margin * scale, fn_margin * scale, params.positive_temperature * scale,
        None if params.negative_temperature is None else params.negative_temperature * scale, spread,
    )


# --------------------------------------------------------------------------------------------------------
# Selection


@dataclass
class Selection:
    """The chosen column per anchor (positive, hard negative; −1 = none eligible) and the propensities."""

    positive: np.ndarray
    negative: np.ndarray
    positive_propensity: Propensity
    negative_propensity: Propensity | None
    stats: dict[str, Any] = field(default_factory=dict)


def _gumbel_argmax(log_w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One column per row drawn with probability ∝ exp(log_w) (−inf: never); −1 for rows with none."""
    noise = rng.gumbel(size=log_w.shape)
    keys = np.where(np.isfinite(log_w), log_w + noise, -np.inf)
    choice = keys.argmax(axis=1)
    choice[~np.isfinite(keys).any(axis=1)] = -1
    return choice


def select_pairs(cands: Candidates, params: DebiasParams, seed: int, round_: int = 0,
                 positive_target: np.ndarray | None = None, negative_target: np.ndarray | None = None
                 ) -> Selection:
    """Draw one positive and (optionally) one hard negative column per anchor by inverse propensity."""
    rng = np.random.default_rng([seed, round_, 7])
    n, c = cands.shape
    cutoffs = resolve_cutoffs(params, cands.semantic[cands.kind == NEIGHBOUR])
    # Positives.
    eligible = cands.semantic >= cutoffs.positive_min
    if params.include_identity:
        eligible |= cands.kind == IDENTITY
    else:
        eligible &= cands.kind != IDENTITY
    prop_pos = Propensity.fit(cands.surface[eligible], cands.length_ratio[eligible], params.surface_bins,
                              params.length_bins, params.smoothing)
    ipw = np.zeros((n, c))
    ipw[eligible] = prop_pos.weights(cands.surface[eligible], cands.length_ratio[eligible], positive_target,
                                     params.max_weight) if params.ipw else 1.0
    with np.errstate(divide="ignore"):
        log_w = np.where(eligible, cands.semantic / cutoffs.positive_temperature + np.log(ipw), -np.inf)
    positive = _gumbel_argmax(log_w, rng)
    stats: dict[str, Any] = {
        "positive_pool": int(eligible.sum()), "anchors_without_positive": int((positive < 0).sum()),
        "cutoffs": cutoffs.as_dict(),
    }

    # Hard negatives.
    negative = np.full(n, -1)
    prop_neg = None
    if params.hard_negatives:
        pos_sem = np.where(positive >= 0, cands.semantic[np.arange(n), np.maximum(positive, 0)], 1.0)
        neg_ok = (
            (cands.kind == NEIGHBOUR)
            & (cands.semantic <= pos_sem[:, None] - cutoffs.negative_margin)
            & (cands.semantic <= cutoffs.negative_max)
            & (cands.surface < params.duplicate_surface)
        )
        prop_neg = Propensity.fit(cands.surface[neg_ok], cands.length_ratio[neg_ok], params.surface_bins,
                                  params.length_bins, params.smoothing)
        ipw_n = np.zeros((n, c))
        ipw_n[neg_ok] = prop_neg.weights(cands.surface[neg_ok], cands.length_ratio[neg_ok], negative_target,
                                         params.max_weight) if params.ipw else 1.0
        sem_term = 0.0 if cutoffs.negative_temperature is None else -cands.semantic / cutoffs.negative_temperature
        with np.errstate(divide="ignore"):
            log_wn = np.where(neg_ok, sem_term + np.log(ipw_n), -np.inf)
        negative = _gumbel_argmax(log_wn, rng)
        stats["negative_pool"] = int(neg_ok.sum())
        stats["anchors_without_hard_negative"] = int((negative < 0).sum())
    return Selection(positive, negative, prop_pos, prop_neg, stats)


# --------------------------------------------------------------------------------------------------------
# Training rows


@dataclass
class MinedRows:
    """What one mining round gives the trainer: texts per dataset row, table ids for the loss's
    false-negative mask (``ids[:, 0..2]`` = anchor, positive, negative; −1 = none) and the table of
    reference embeddings those ids index (float16, CPU)."""

    anchor: list[str]
    positive: list[str]
    negative: list[str] | None
    ids: np.ndarray
    table: torch.Tensor
    table_texts: list[str] = field(default_factory=list)  # the text of every table row
    round: int = 0
    stats: dict[str, Any] = field(default_factory=dict)
    pairs: dict[str, np.ndarray] = field(default_factory=dict)  # per-row measures for diagnostics

    def __len__(self) -> int:
        return len(self.anchor)

    def digest(self) -> str:
        """A content hash of the rows (to check that every process built the same ones)."""

        h = hashlib.sha256()
        for col in (self.anchor, self.positive, self.negative or []):
            h.update("\x1f".join(col).encode("utf-8"))
            h.update(b"\x1e")
        h.update(np.ascontiguousarray(self.ids).tobytes())
        return h.hexdigest()


def build_rows(row_texts: list[str], mined: MinedCorpus, cands: Candidates, sel: Selection, seed: int
               ) -> MinedRows:
    """Turn a selection into dataset rows (one per original row, duplicates sharing their text's choice).

    Anchors without an eligible positive fall back to themselves (the dropout positive); anchors without
    an eligible hard negative get a random other sentence of the corpus.
    """
    import torch

    texts = mined.texts
    n = len(texts)
    uid = {t: i for i, t in enumerate(texts)}
    row_ids = np.array([uid[t] for t in row_texts], dtype=np.int64)
    ar = np.arange(n)
    pos_col = sel.positive
    pos_ref = np.where(pos_col >= 0, cands.ref[ar, np.maximum(pos_col, 0)], ar)
    pos_kind = np.where(pos_col >= 0, cands.kind[ar, np.maximum(pos_col, 0)], IDENTITY)

    # Compact table: corpus sentences, then only the views chosen as positives.
    chosen_views = np.unique(pos_ref[pos_ref >= n])
    view_slot = {int(r): n + i for i, r in enumerate(chosen_views)}
    v_emb = mined.view_embeddings
    extra = [v_emb[(int(r) - n) // n, (int(r) - n) % n] for r in chosen_views]
    table = torch.cat([mined.embeddings.half()] + ([torch.stack(extra)] if extra else []))

    def text_of(r: int) -> str:
        return texts[r] if r < n else mined.views[(r - n) // n][(r - n) % n]

    pos_text = [text_of(int(r)) for r in pos_ref]
    pos_table = np.array([view_slot.get(int(r), int(r)) for r in pos_ref], dtype=np.int64)

    neg_ref = np.full(n, -1, dtype=np.int64)
    neg_kind = np.full(n, -1, dtype=np.int64)
    neg_text: list[str] | None = None
    if sel.negative_propensity is not None:
        has = sel.negative >= 0
        neg_ref[has] = cands.ref[ar[has], sel.negative[has]]
        neg_kind[has] = NEIGHBOUR
        rng = np.random.default_rng([seed, mined.round, 11])
        fallback = rng.integers(0, n - 1, size=n)
        fallback = fallback + (fallback >= ar)  # any sentence but the anchor
        neg_ref[~has] = fallback[~has]
        neg_text = [texts[int(r)] for r in neg_ref]

    ids = np.stack([row_ids, pos_table[row_ids], neg_ref[row_ids]], axis=1)
    measures = _row_measures(cands, sel, ar, pos_col)
    stats = dict(sel.stats)
    stats.update({
        "rows": len(row_texts), "unique_sentences": n,
        "positive_kinds": _kind_counts(pos_kind),
        "negative_kinds": _kind_counts(neg_kind) if neg_text is not None else {},
    })
    return MinedRows(
        anchor=list(row_texts),
        positive=[pos_text[i] for i in row_ids],
        negative=[neg_text[i] for i in row_ids] if neg_text is not None else None,
        ids=ids, table=table, table_texts=list(texts) + [text_of(int(r)) for r in chosen_views],
        round=mined.round, stats=stats,
        pairs={k: v[row_ids] for k, v in measures.items()},
    )


def _kind_counts(kinds: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(kinds, return_counts=True)
    return {KIND_NAMES[int(v)]: int(c) for v, c in zip(values, counts, strict=True)}


def _row_measures(cands: Candidates, sel: Selection, ar: np.ndarray, pos_col: np.ndarray) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    pc = np.maximum(pos_col, 0)
    for name in ("semantic", "surface", "jaccard", "edit_distance", "length_ratio", "length_diff"):
        values = getattr(cands, name)[ar, pc].astype(np.float64)
        if name in ("semantic", "surface", "jaccard", "length_ratio"):
            values = np.where(pos_col >= 0, values, 1.0)
        else:
            values = np.where(pos_col >= 0, values, 0.0)
        out[f"positive_{name}"] = values
        if sel.negative_propensity is not None:
            nc = np.maximum(sel.negative, 0)
            neg = getattr(cands, name)[ar, nc].astype(np.float64)
            out[f"negative_{name}"] = np.where(sel.negative >= 0, neg, np.nan)
    return out


def identity_rows(row_texts: list[str], embeddings: torch.Tensor, texts: list[str]) -> MinedRows:
    """Rows for masking-only training on plain dropout positives: positive = anchor, no hard negative."""
    uid = {t: i for i, t in enumerate(texts)}
    row_ids = np.array([uid[t] for t in row_texts], dtype=np.int64)
    ids = np.stack([row_ids, row_ids, np.full(len(row_ids), -1)], axis=1)
    return MinedRows(anchor=list(row_texts), positive=list(row_texts), negative=None, ids=ids,
                     table=embeddings.half(), table_texts=list(texts),
                     stats={"rows": len(row_texts), "unique_sentences": len(texts)})


def debias(model: SentenceTransformer, row_texts: list[str], params: DebiasParams, seed: int, round_: int = 0,
           previous: tuple[MinedCorpus, Candidates] | None = None, positive_target: np.ndarray | None = None,
           negative_target: np.ndarray | None = None, **mine_kwargs: Any
           ) -> tuple[MinedRows, tuple[MinedCorpus, Candidates]]:
    """One whole round: mine and build candidates (or reuse ``previous``, for a frozen reference), select,
    build rows. Returns the rows and the (mined corpus, candidates) to pass back as ``previous``."""
    if previous is None:
        texts, _ = unique_texts(row_texts)
        mined = mine(model, texts, params, seed, round_, **mine_kwargs)
        cands = build_candidates(mined, params)
    else:
        mined, cands = previous
    sel = select_pairs(cands, params, seed, round_, positive_target, negative_target)
    rows = build_rows(row_texts, _with_round(mined, round_), cands, sel, seed)
    return rows, (mined, cands)


def _with_round(mined: MinedCorpus, round_: int) -> MinedCorpus:
    if mined.round == round_:
        return mined
    return MinedCorpus(mined.texts, mined.embeddings, mined.neighbour_ids, mined.neighbour_sims, mined.views,
                       mined.view_embeddings, round_)


# --------------------------------------------------------------------------------------------------------
# What batches of these rows look like to the loss


def batch_statistics(rows: MinedRows, batch_size: int, seed: int, margin: float = 0.0,
                     threshold: float | None = None, max_pairs: int = 20000, measure: SurfaceMeasure = "mean"
                     ) -> dict[str, Any]:
    """Simulate shuffled batches of ``rows`` and measure their in-batch negatives under the reference.

    Every other row's positive (and every row's hard negative, own one included) is an in-batch negative
    of an anchor. Returns the shares of in-batch negatives that are exact duplicates (same text as the
    anchor or its positive), that score above the anchor's positive (likely false negatives), at or above
    ``threshold``, and that :func:`~embedkit.methods.debcse.loss.false_negative_mask` removes; plus up to
    ``max_pairs`` sampled (semantic, surface) values of unmasked in-batch negatives, before and after
    masking.
    """
    import torch

    from embedkit.methods.debcse.loss import false_negative_mask

    rng = np.random.default_rng([seed, 13])
    n = len(rows)
    order = rng.permutation(n)
    ids = torch.as_tensor(rows.ids, dtype=torch.long)
    ref = rows.table.float()
    totals = {"negatives": 0, "duplicates": 0, "above_positive": 0, "above_threshold": 0, "masked": 0,
              "above_positive_kept": 0}
    sem_all: list[np.ndarray] = []
    sem_kept: list[np.ndarray] = []
    pair_left: list[int] = []
    pair_right: list[int] = []
    kept_flags: list[bool] = []
    for start in range(0, n, batch_size):
        b = torch.as_tensor(order[start : start + batch_size])
        if len(b) < 2:
            continue
        bi = ids[b]
        has_neg = bool((bi[:, 2] >= 0).all())
        cols = torch.cat([bi[:, 1], bi[:, 2]]) if has_neg else bi[:, 1]
        m = len(b)
        mask = false_negative_mask(rows.table, bi[:, 0], bi[:, 1], bi[:, 2] if has_neg else None, 0, margin,
                                   threshold)
        anchors = ref[bi[:, 0]]
        sims = anchors @ ref[cols].T
        own = (anchors * ref[bi[:, 1]]).sum(-1, keepdim=True)
        is_neg = torch.ones_like(mask)
        is_neg[torch.arange(m), torch.arange(m)] = False
        dup = (cols.unsqueeze(0) == bi[:, :1]) | (cols.unsqueeze(0) == bi[:, 1:2])
        totals["negatives"] += int(is_neg.sum())
        totals["duplicates"] += int((dup & is_neg).sum())
        above = ((sims > own + 1e-6) | dup) & is_neg
        totals["above_positive"] += int(above.sum())
        totals["above_positive_kept"] += int((above & ~mask).sum())
        if threshold is not None:
            totals["above_threshold"] += int(((sims >= threshold) & is_neg).sum())
        totals["masked"] += int((mask & is_neg).sum())
        sem_all.append(sims[is_neg].numpy())
        sem_kept.append(sims[is_neg & ~mask].numpy())
        rr, cc = torch.nonzero(is_neg, as_tuple=True)
        pair_left.extend(bi[rr, 0].tolist())
        pair_right.extend(cols[cc].tolist())
        kept_flags.extend((~mask[rr, cc]).tolist())
    total = max(totals["negatives"], 1)
    out: dict[str, Any] = {
        "batch_size": batch_size,
        "in_batch_negatives": totals["negatives"],
        "duplicate_share": totals["duplicates"] / total,
        "above_positive_share": totals["above_positive"] / total,
        "above_threshold_share": totals["above_threshold"] / total if threshold is not None else None,
        "masked_share": totals["masked"] / total,
        "above_positive_after_mask_share": totals["above_positive_kept"] / total,
    }
    semantic = np.concatenate(sem_all) if sem_all else np.zeros(0)
    kept = np.concatenate(sem_kept) if sem_kept else np.zeros(0)
    pick = rng.permutation(len(pair_left))[:max_pairs]
    texts = rows.table_texts
    left = [tokens(texts[pair_left[i]]) for i in pick]
    right = [tokens(texts[pair_right[i]]) for i in pick]
    surf = pair_surface(left, right, measure) if len(pick) else {"surface": np.zeros(0)}
    flags = np.array([kept_flags[i] for i in pick], dtype=bool)
    out["semantic"] = semantic[pick] if len(pick) else semantic
    out["semantic_kept"] = kept
    out["surface"] = surf["surface"]
    out["surface_kept"] = surf["surface"][flags] if len(pick) else surf["surface"]
    return out
