"""Mining under a frozen encoder, the one engine of the package: embed every unique text once, then each
query's top-K neighbours by cosine, computed in chunks of matrix products (or with faiss when it is installed).

Used by DebCSE-style debiasing (``embedkit.methods.debcse.debias``), ``embedkit data diagnose`` and hard-negative
mining for retrieval pairs (:func:`mine_negatives`: ``embedkit data mine`` and ``data.train.mine``). The encoder
is used in eval mode (no dropout) under ``torch.no_grad``; its train/eval mode and device are restored
afterwards. Under ``torchrun`` (a process group initialised) each process encodes its shard of the texts and the
embeddings are all-gathered (:func:`unit_vectors`), so no process encodes the whole corpus alone.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from rapidfuzz import process
from rapidfuzz.distance import Indel
from torch import Tensor

from embedkit import distributed
from embedkit.encoding import encode
from embedkit.recipe import PAIR_MINING_DEFAULTS as PAIR_MINING_DEFAULTS  # re-exported
from embedkit.recipe import mine_window

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

Backend = Literal["auto", "torch", "faiss"]


def mining_device(requested: str = "auto") -> torch.device:
    """``auto``: this process's GPU (``LOCAL_RANK``) when CUDA is available, else the CPU."""
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def unit_vectors(model: SentenceTransformer, sentences: list[str], batch_size: int = 128,
                 device: str | torch.device = "auto", show_progress_bar: bool | None = False) -> Tensor:
    """Unit-normalised float32 embeddings as a CPU tensor, from :func:`embedkit.encoding.encode` on the mining
    device (see :func:`mining_device`).

    With a ``torch.distributed`` process group of several processes up (:func:`embedkit.distributed.connected`),
    every process must call this with the same ``sentences``: each encodes one contiguous shard and the shards are
    all-gathered, so every process returns the whole table having encoded only ``ceil(n / world_size)`` texts.
    Without one (e.g. under a launcher before the trainer brings the group up) every process encodes them all."""

    if not sentences:
        return torch.zeros(0, model.get_embedding_dimension())
    target = mining_device(device) if isinstance(device, str) else device
    if not distributed.connected():
        return torch.from_numpy(encode(model, sentences, batch_size, normalize=True, device=target,
                                       show_progress_bar=show_progress_bar))

    size = distributed.world_size()
    per = math.ceil(len(sentences) / size)
    bar = show_progress_bar if distributed.is_main() else False  # one bar, rank 0's
    local = torch.from_numpy(encode(model, sentences[distributed.local_rows(per)], batch_size, normalize=True,
                                    device=target, show_progress_bar=bar))
    # nccl moves CUDA tensors only; gloo CPU ones. Every shard is padded to `per` rows for all_gather.
    comm = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    padded = torch.zeros(per, local.shape[1], dtype=local.dtype, device=comm)
    padded[: local.shape[0]] = local.to(comm)
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded)
    return torch.cat(parts)[: len(sentences)].cpu()


def ensure_process_group() -> bool:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1), initialise the default process group if nobody has yet (nccl
    with CUDA, else gloo; accelerate and the trainer reuse it), so that :func:`unit_vectors` shards. Returns
    whether a group of several processes is up."""

    if distributed.world_size() <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return distributed.connected()


def faiss_available() -> bool:
    """Whether the optional ``faiss`` package can be imported."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


@torch.no_grad()
def top_k_neighbours(
    queries: Tensor, corpus: Tensor | None = None, k: int = 16, chunk_size: int = 4096,
    exclude_self: bool = True, backend: Backend = "auto", device: str | torch.device = "cpu",
) -> tuple[Tensor, Tensor]:
    """The ``k`` most cosine-similar corpus rows of each query row.

    ``queries`` and ``corpus`` are unit-normalised (n×d, m×d); with ``corpus=None`` the queries are their
    own corpus and, with ``exclude_self``, row i never returns i. Returns ``(indices, scores)``, both
    n×k, best first (deterministic for the same input on the same device). ``backend='auto'`` uses faiss
    (exact inner product) when it is installed, else chunked matrix products of ``chunk_size`` queries at a
    time on ``device``.
    """
    same = corpus is None
    corpus = queries if same else corpus
    m = corpus.shape[0]
    k_eff = min(k, m - 1 if (same and exclude_self) else m)
    if k_eff <= 0:
        raise ValueError(f"top_k_neighbours: a corpus of {m} sentence(s) has no neighbours to offer")
    if backend == "faiss" or (backend == "auto" and faiss_available()):
        return _faiss_top_k(queries, corpus, k_eff, same and exclude_self)
    if backend not in ("auto", "torch", "faiss"):
        raise ValueError(f"unknown mining backend {backend!r}; expected auto, torch or faiss")
    dev = torch.device(device) if isinstance(device, str) else device
    corpus_dev = corpus.to(dev)
    all_idx, all_scores = [], []
    for start in range(0, queries.shape[0], chunk_size):
        block = queries[start : start + chunk_size].to(dev)
        sims = block @ corpus_dev.T
        if same and exclude_self:
            rows = torch.arange(block.shape[0], device=dev)
            sims[rows, rows + start] = float("-inf")
        scores, idx = torch.topk(sims, k_eff, dim=1, largest=True, sorted=True)
        all_idx.append(idx.cpu())
        all_scores.append(scores.cpu())
    return torch.cat(all_idx), torch.cat(all_scores)


def _faiss_top_k(queries: Tensor, corpus: Tensor, k: int, exclude_self: bool) -> tuple[Tensor, Tensor]:
    import faiss

    index = faiss.IndexFlatIP(corpus.shape[1])
    index.add(np.ascontiguousarray(corpus.float().numpy()))
    scores, idx = index.search(np.ascontiguousarray(queries.float().numpy()), k + int(exclude_self))
    idx_t, scores_t = torch.from_numpy(idx).long(), torch.from_numpy(scores).float()
    if exclude_self:
        keep = idx_t != torch.arange(idx_t.shape[0]).unsqueeze(1)
        # Drop the query itself (or the last column when the query was not among its own hits).
        keep[keep.all(dim=1), -1] = False
        idx_t = idx_t[keep].view(idx_t.shape[0], k)
        scores_t = scores_t[keep].view(idx_t.shape[0], k)
    return idx_t, scores_t


# ----------------------------------------------------------------------------------------------------------
# Hard negatives for (anchor, positive) pairs


@dataclass
class HardNegatives:
    """What :func:`mine_negatives` found: the kept rows (input order) with ``k`` negatives each, their scores,
    the scores of the candidates the false-negative filter dropped, and the counts of ``<output>.stats.json``."""

    anchors: list[str]
    positives: list[str]
    negatives: list[list[str]]  # per kept row, best first
    source_rows: list[int]  # input row of each kept row
    positive_scores: np.ndarray  # every input row's cos(anchor, positive)
    negative_scores: np.ndarray  # kept rows × k
    dropped_scores: np.ndarray  # every candidate the filter dropped (all rows)
    stats: dict[str, Any] = field(default_factory=dict)

    def columns(self) -> dict[str, list[str]]:
        """``anchor``, ``positive``, ``negative_1`` … ``negative_k``: sentence-transformers' n-tuple naming."""
        k = self.negative_scores.shape[1] if self.negative_scores.ndim == 2 else 0
        out = {"anchor": list(self.anchors), "positive": list(self.positives)}
        for j in range(k):
            out[f"negative_{j + 1}"] = [row[j] for row in self.negatives]
        return out


def mine_negatives(
    model: SentenceTransformer | None, anchors: Sequence[str], positives: Sequence[str], settings: Any,
    corpus: Sequence[str] | None = None, *, encoder: Callable[[list[str]], Tensor] | None = None,
    backend: Backend = "auto", device: str = "auto", chunk_size: int = 4096, progress: bool | None = False,
) -> HardNegatives:
    """Mine ``settings.num_negatives`` hard negatives for each (anchor, positive) row.

    ``settings`` has the keys of :class:`embedkit.recipe.MineSection`. Every unique text (anchors, positives,
    corpus) is encoded once, by ``encoder`` (texts → unit vectors; default :func:`unit_vectors` with ``model``).
    The candidate corpus is ``corpus`` plus every positive (default: the pool of positives), as
    sentence-transformers' ``mine_hard_negatives`` builds it. For each anchor, candidates are ranked by cosine;
    every labelled positive of the anchor (any row with the same anchor text) and the anchor's own text are
    removed, and ranks are counted over what remains (0: the most similar). From the window
    ``[range_min, range_max)`` the positive-aware filter (NV-Retriever's TopK-PercPos) drops, per row with its
    own positive score ``p``, every candidate scoring above ``p − |p|·(1 − max_score_ratio)`` (``= ratio·p`` for
    ``p > 0``; sentence-transformers' ``relative_margin = 1 − ratio``) and, with ``margin``, above ``p − margin``.
    Of the rest, ``sampling_strategy: top`` keeps the ``k`` best, ``random`` draws ``k`` (seeded per row by
    ``(seed, row)``, so the draw does not depend on the other rows), written best first. A row left with fewer
    than ``k`` candidates is dropped and counted (``rows_short``), as sentence-transformers' n-tuple output does.
    ``progress``: a bar while the default encoder runs (``None``: when stderr is a terminal).
    """
    if len(anchors) != len(positives):
        raise ValueError(f"{len(anchors)} anchors but {len(positives)} positives")
    texts = list(dict.fromkeys([*anchors, *positives, *(corpus or ())]))
    if encoder is not None:
        vectors = encoder(texts)
    else:
        assert model is not None, "mine_negatives needs a model or an encoder"
        vectors = unit_vectors(model, texts, settings.batch_size, device, show_progress_bar=progress)
    uid = {t: i for i, t in enumerate(texts)}
    a_ids = np.array([uid[t] for t in anchors], dtype=np.int64)
    p_ids = np.array([uid[t] for t in positives], dtype=np.int64)
    pool = np.array(list(dict.fromkeys([*(uid[t] for t in corpus or ()), *p_ids.tolist()])), dtype=np.int64)
    found = select_negatives(vectors.float(), a_ids, p_ids, pool, settings, backend=backend,
                             device=mining_device(device), chunk_size=chunk_size)
    chosen, keep, scores, pos_scores, dropped_scores, stats = found
    stats.update(unique_texts=len(texts), corpus=len(pool))
    rows = np.flatnonzero(keep)
    return HardNegatives(
        anchors=[anchors[r] for r in rows], positives=[positives[r] for r in rows],
        negatives=[[texts[j] for j in chosen[r]] for r in rows], source_rows=rows.tolist(),
        positive_scores=pos_scores, negative_scores=scores[rows], dropped_scores=dropped_scores, stats=stats,
    )


@torch.no_grad()
def select_negatives(
    vectors: Tensor, anchor_ids: np.ndarray, positive_ids: np.ndarray, pool: np.ndarray, settings: Any, *,
    backend: Backend = "auto", device: str | torch.device = "cpu", chunk_size: int = 4096,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """The selection of :func:`mine_negatives` on ids into the unit-vector table ``vectors``.

    ``anchor_ids``/``positive_ids``: one entry per row; ``pool``: the candidate ids. Returns ``(chosen, keep,
    scores, positive_scores, dropped_scores, stats)``: ``chosen`` rows × k candidate ids (-1 for a short row),
    ``keep`` the rows that got k negatives, ``scores`` their cosines, every row's positive cosine, the cosines
    of the candidates the filter dropped, and the counts."""
    k = settings.num_negatives
    low, high = mine_window(settings)
    n_rows = len(anchor_ids)
    unique, row_anchor = np.unique(anchor_ids, return_inverse=True)  # one search per distinct anchor
    # Each anchor's labelled positives and its own text, grouped in one pass (a mask per anchor is anchors × rows).
    order = np.argsort(row_anchor, kind="stable")
    groups = np.split(np.asarray(positive_ids)[order], np.cumsum(np.bincount(row_anchor, minlength=len(unique)))[:-1])
    excluded = [np.unique(np.append(group, unique[a])) for a, group in enumerate(groups)]
    in_pool = np.zeros(len(vectors), dtype=bool)
    in_pool[pool] = True
    room = max(int(in_pool[e].sum()) for e in excluded)  # positives may take places in the top: search past them
    depth = min(high + room, len(pool))
    idx, sims = top_k_neighbours(vectors[torch.from_numpy(unique)], vectors[torch.from_numpy(pool)], k=depth,
                                 exclude_self=False, backend=backend, device=device, chunk_size=chunk_size)
    cand = pool[idx.numpy()]  # distinct anchors × depth, text ids, best first
    sims_np = sims.numpy().astype(np.float64)
    is_pos = np.stack([np.isin(cand[a], excluded[a]) for a in range(len(unique))])
    others_before = np.cumsum(~is_pos, axis=1) - (~is_pos)  # non-positives ranked above each place
    in_window = ~is_pos & (others_before >= low) & (others_before < high)
    pos_dropped = (is_pos & (others_before < high)).sum(axis=1)  # positives that ranked inside the window's reach

    p = (vectors[torch.from_numpy(anchor_ids)] * vectors[torch.from_numpy(positive_ids)]).sum(-1).double().numpy()
    window = in_window[row_anchor]
    s = sims_np[row_anchor]
    by_ratio = np.zeros_like(window)
    by_margin = np.zeros_like(window)
    if settings.max_score_ratio is not None:
        by_ratio = window & (s > (p - np.abs(p) * (1.0 - settings.max_score_ratio))[:, None])
    if settings.margin is not None:
        by_margin = window & (s > (p - settings.margin)[:, None])
    dropped = by_ratio | by_margin
    kept = window & ~dropped
    keep = kept.sum(axis=1) >= k
    chosen = np.full((n_rows, k), -1, dtype=np.int64)
    scores = np.full((n_rows, k), np.nan)
    places = np.argsort(~kept, axis=1, kind="stable")  # kept places first, in rank order
    for r in np.flatnonzero(keep):
        if settings.sampling_strategy == "random":
            options = np.flatnonzero(kept[r])
            pick = np.sort(np.random.default_rng([settings.seed or 0, int(r)]).choice(options, k, replace=False))
        else:
            pick = places[r, :k]
        chosen[r] = cand[row_anchor[r], pick]
        scores[r] = s[r, pick]
    stats = {
        "rows_in": n_rows, "rows": int(keep.sum()), "rows_short": int((~keep).sum()), "anchors": len(unique),
        "num_negatives": k, "range_min": low, "range_max": high,
        "max_score_ratio": settings.max_score_ratio, "margin": settings.margin,
        "sampling_strategy": settings.sampling_strategy, "seed": settings.seed,
        "candidates_considered": int(window.sum()),
        "dropped_labelled_positive": int(pos_dropped[row_anchor].sum()),
        "dropped_by_filter": int(dropped.sum()), "dropped_by_ratio": int(by_ratio.sum()),
        "dropped_by_margin": int(by_margin.sum()),
        "scores": {name: _quantiles(v) for name, v in (
            ("positive", p), ("negative_kept", scores[keep].ravel()), ("negative_dropped", s[dropped]))},
    }
    return chosen, keep, scores, p, s[dropped], stats


def _quantiles(values: np.ndarray) -> dict[str, float] | None:
    if values.size == 0:
        return None
    q = np.quantile(values, [0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0])
    return {"count": int(values.size), "mean": round(float(values.mean()), 6),
            **{name: round(float(v), 6) for name, v in zip(("min", "p05", "p25", "p50", "p75", "p95", "max"), q)}}


# ----------------------------------------------------------------------------------------------------------
# Pairs mined from unlabelled text: the ratio margin (embedkit data mine-pairs)


@dataclass
class MarginPairs:
    """Candidate pairs (source row, target row) of :func:`margin_pairs`, best margin first, with their cosine and
    ratio-margin score, and every row's mean cosine to its ``k`` nearest neighbours on the other side."""

    source: np.ndarray  # int
    target: np.ndarray  # int
    cosine: np.ndarray
    margin: np.ndarray
    source_knn_mean: np.ndarray  # per source row
    target_knn_mean: np.ndarray  # per target row
    same: bool  # one corpus: source and target rows are the same texts

    def one_to_one(self, allowed: np.ndarray | None = None) -> np.ndarray:
        """Indices of the pairs kept when each row may be in one pair only: best margin first, a pair is kept
        when neither row is in a kept pair yet (the paper's "max-score" rule, greedy). ``allowed``: a mask of the
        candidates that may be kept at all (e.g. not surface duplicates); the others never take a row."""
        used_s: set[int] = set()
        used_t: set[int] = used_s if self.same else set()
        keep = []
        for i in range(len(self.source)):
            s, t = int(self.source[i]), int(self.target[i])
            if (allowed is not None and not allowed[i]) or s in used_s or t in used_t:
                continue
            used_s.add(s)
            used_t.add(t)
            keep.append(i)
        return np.asarray(keep, dtype=np.int64)


def margin_pairs(source: Tensor, target: Tensor | None = None, k: int = 4, backend: Backend = "auto") -> MarginPairs:
    """Candidate pairs between unit-normalised ``source`` (n×d) and ``target`` (m×d) rows, scored by the ratio
    margin of Artetxe & Schwenk (2019, "Margin-based parallel corpus mining with multilingual sentence
    embeddings", arXiv:1811.01136):

        margin(x, y) = cos(x, y) / ( Σ_{z ∈ NN_k(x)} cos(x, z) / 2k  +  Σ_{z ∈ NN_k(y)} cos(y, z) / 2k )

    where NN_k(x) are x's k nearest target rows and NN_k(y) y's k nearest source rows. A pair scores above 1
    when the two are closer to each other than to their usual neighbours, which discounts "hub" sentences that
    are near everything. The candidates are every (x, y) with y among x's k nearest (forward) or x among y's
    (backward), each once, best margin first; :meth:`MarginPairs.one_to_one` then keeps each row in one pair.
    With ``target=None`` the source is its own target (paraphrase mining): a row is never its own neighbour and
    (i, j) is (j, i)."""
    same = target is None
    tgt = source if same else target
    fwd_idx, fwd_cos = top_k_neighbours(source, None if same else tgt, k, exclude_self=True, backend=backend)
    bwd_idx, bwd_cos = (fwd_idx, fwd_cos) if same else top_k_neighbours(tgt, source, k, backend=backend)
    src_mean, tgt_mean = fwd_cos.mean(1).double(), bwd_cos.mean(1).double()
    k_f, k_b = fwd_idx.shape[1], bwd_idx.shape[1]
    rows_s = torch.cat([torch.arange(source.shape[0]).repeat_interleave(k_f), bwd_idx.reshape(-1)])
    rows_t = torch.cat([fwd_idx.reshape(-1), torch.arange(tgt.shape[0]).repeat_interleave(k_b)])
    cos = torch.cat([fwd_cos.reshape(-1), bwd_cos.reshape(-1)]).double()
    if same:  # (i, j) and (j, i) are one pair
        rows_s, rows_t = torch.minimum(rows_s, rows_t), torch.maximum(rows_s, rows_t)
    # the denominator is a mean of nearest-neighbour cosines, positive for any trained encoder; floored so that
    # a degenerate one (all neighbours orthogonal) cannot flip or blow up the ratio
    margin = cos / ((src_mean[rows_s] + tgt_mean[rows_t]) / 2).clamp_min(1e-6)
    s_np, t_np = rows_s.numpy(), rows_t.numpy()
    _, first = np.unique(s_np.astype(np.int64) * tgt.shape[0] + t_np, return_index=True)  # each pair once
    # best margin first; ties by source then target row, so the order is the same on every machine
    order = first[np.lexsort((t_np[first], s_np[first], -margin.numpy()[first]))]
    return MarginPairs(s_np[order], t_np[order], cos.numpy()[order], margin.numpy()[order], src_mean.numpy(),
                       tgt_mean.numpy(), same)


# The defaults of pair mining, shared by `embedkit data mine-pairs` and the `self-pairs` method.


def fold(text: str) -> str:
    """Case and runs of white space folded: what the surface filter compares."""
    return re.sub(r"\s+", " ", text).strip().casefold()


def surface_similarity(a: list[str], b: list[str]) -> np.ndarray:
    """Per pair, rapidfuzz's normalised Indel similarity (1 − edits / total length) of the folded texts."""
    if not a:
        return np.zeros(0)
    return process.cpdist([fold(t) for t in a], [fold(t) for t in b], scorer=Indel.normalized_similarity,
                          workers=1).astype(np.float64)


def select_margin_pairs(
    found: MarginPairs, a: list[str], b: list[str], threshold: float | None, top: int | None,
    max_surface_similarity: float | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The filters of pair mining on the candidates of :func:`margin_pairs` (``a[i]``, ``b[i]``: candidate i's
    texts), in this order: surface near-duplicates out (normalised Indel similarity of the folded texts at or
    above ``max_surface_similarity``; ``None``: off), one-to-one best margin first (a near-duplicate never takes
    a row), margin below ``threshold`` out, then the best ``top``. Returns ``(chosen, below, near_dup, kept,
    beyond_top)``: the one-to-one candidates, which of them fell under the threshold, the near-duplicate mask
    over all candidates, the kept candidates (best first) and those cut by ``top``."""
    surface = surface_similarity(a, b)
    near_dup = surface >= max_surface_similarity if max_surface_similarity is not None else np.zeros(len(a), bool)
    chosen = found.one_to_one(~near_dup)
    below = found.margin[chosen] < threshold if threshold is not None else np.zeros(len(chosen), bool)
    kept = chosen[~below]
    beyond_top = kept[top:] if top is not None else kept[:0]
    kept = kept[:top] if top is not None else kept
    return chosen, below, near_dup, kept, beyond_top
