"""Candidate mining under a frozen reference encoder: embed a corpus once, then each sentence's top-K
neighbours by cosine, computed in chunks of matrix products (or with faiss when it is installed).

Used by DebCSE-style debiasing (``embedkit.methods.debcse.debias``) and by ``embedkit data diagnose``. The reference
encoder is used in eval mode (no dropout) under ``torch.no_grad``; its train/eval mode and device are
restored afterwards.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

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
                 device: str | torch.device = "auto") -> Tensor:
    """Unit-normalised float32 embeddings as a CPU tensor, from :func:`embedkit.encoding.encode` on the mining
    device (see :func:`mining_device`)."""
    from embedkit.encoding import encode

    if not sentences:
        return torch.zeros(0, model.get_embedding_dimension())
    target = mining_device(device) if isinstance(device, str) else device
    return torch.from_numpy(encode(model, sentences, batch_size, normalize=True, device=target))


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
    import numpy as np

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
