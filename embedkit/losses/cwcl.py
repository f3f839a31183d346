"""CWCL: continuously weighted contrastive targets from a frozen teacher (Srinivasa et al., "CWCL: Cross-Modal
Transfer with Continuously Weighted Contrastive Loss", NeurIPS 2023, arXiv:2309.14580), as a term any method
can add (``objective.terms: [{name: cwcl, ...}]``)."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from embedkit.losses.common import cosine_matrix, gather_no_grad, teacher_embedding

CWCL_CITATION = """@inproceedings{srinivasa2023cwcl,
  title = {{CWCL}: Cross-Modal Transfer with Continuously Weighted Contrastive Loss},
  author = {Srinivasa, Rakshith Sharma and Cho, Jaejin and Yang, Chouchang and Saidutta, Yashas Malur and Lee,
            Ching-Hua and Shen, Yilin and Jin, Hongxia},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year = {2023}
}"""


def cwcl_weights(teacher_sims: Tensor, offset: int = 0, floor: float = 0.0) -> Tensor:
    """Row-normalised target weights from teacher cosines ``s`` (n local anchors × N candidates).

    Anchor i's own positive is column ``offset + i``. With ``s_ii`` that cell's cosine and m = ``floor``:

        w̃_ij = clamp((s_ij − m) / (s_ii − m), 0, 1)   for j ≠ i      (0 for every j when s_ii ≤ m)
        w̃_ii = 1
        w_ij = w̃_ij / Σ_k w̃_ik

    so with m = 0 a candidate's weight is its teacher cosine (negatives cut to 0) rescaled so the anchor's own
    positive has 1, and each row sums to 1; a larger m keeps only near-duplicates.
    """
    n = teacher_sims.shape[0]
    rows = torch.arange(n, device=teacher_sims.device)
    own = teacher_sims[rows, offset + rows].unsqueeze(1)
    scale = (own - floor).clamp(min=0)
    w = torch.where(scale > 0, ((teacher_sims - floor) / scale.clamp(min=1e-12)).clamp(0.0, 1.0),
                    torch.zeros_like(teacher_sims))
    w[rows, offset + rows] = 1.0
    return w / w.sum(dim=1, keepdim=True)


def cwcl_loss(anchors: Tensor, candidates: Tensor, weights: Tensor, temperature: float) -> Tensor:
    """L = −(1/n) Σ_i Σ_j w_ij log softmax_j( cos(x_i, x⁺_j) / τ )."""
    logits = cosine_matrix(anchors, candidates) / temperature
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return -(weights.to(logits.dtype) * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


class CWCLTerm(nn.Module):
    """Continuously weighted contrastive loss (CWCL, Srinivasa et al., NeurIPS 2023) over a method's
    (anchor, positive) views, with targets from a frozen teacher instead of one-hot InfoNCE targets.

    InfoNCE asks each anchor ``x_i`` to pick its own positive ``x_i⁺`` out of the (global) batch and pushes
    every other positive away as a negative, near-duplicates included. CWCL spreads the target over the batch
    by the teacher's similarity. With the teacher ``T`` (by default the **starting model, frozen**: a copy
    taken before training, in eval mode, run without gradient) and ``s_ij = cos(T(text of x_i), T(text of
    x_j⁺))``:

        w̃_ij = clamp((s_ij − m) / (s_ii − m), 0, 1) for j ≠ i,   w̃_ii = 1,   w_ij = w̃_ij / Σ_k w̃_ik

        L_CWCL = −(1/n) Σ_i Σ_j w_ij log( e^{cos(x_i, x_j⁺)/τ} / Σ_k e^{cos(x_i, x_k⁺)/τ} )

    i.e. the teacher cosine, cut at the floor m (0 by default: negative cosines give weight 0), rescaled so
    the anchor's own positive has weight 1, normalised per row to sum to 1. With every off-diagonal weight 0
    it is InfoNCE exactly. The candidates ``x_j⁺`` (and their teacher embeddings) are gathered from every
    process when ``gather_across_devices`` is on. To use it *instead of* the method's InfoNCE, set
    ``objective.main_weight: 0``; logged as ``loss_cwcl`` (already weighted).

    Args:
        teacher: the frozen teacher encoder (a SentenceTransformer); it is copied, frozen and put in eval mode.
        weight: multiplies the term.
        temperature: τ of the student's softmax (0.05, as SimCSE).
        floor: m; teacher cosines at or below it give weight 0.

    Example::

        # recipe: unsupervised SimCSE with CWCL targets instead of one-hot ones
        method: {name: simcse-unsup}
        objective:
          main_weight: 0
          terms: [{name: cwcl, weight: 1.0, temperature: 0.05, floor: 0.5}]
    """

    name = "cwcl"

    def __init__(self, teacher: nn.Module, weight: float = 1.0, temperature: float = 0.05, floor: float = 0.0) -> None:
        super().__init__()
        frozen = copy.deepcopy(teacher)
        frozen.requires_grad_(False)
        frozen.eval()
        # Not a registered submodule: the starting model is rebuilt from the recipe, never saved in checkpoints.
        object.__setattr__(self, "teacher", frozen)
        self.weight = weight
        self.temperature = temperature
        self.floor = floor

    @classmethod
    def from_params(cls, params: Any, model: nn.Module) -> CWCLTerm:
        from embedkit.losses.momentum import unwrap

        return cls(unwrap(model), params.weight, params.temperature, params.floor)

    @property
    def citation(self) -> str:
        return CWCL_CITATION

    def get_config_dict(self) -> dict[str, Any]:
        return {"name": self.name, "weight": self.weight, "temperature": self.temperature, "floor": self.floor}

    def embed(self, features: dict[str, Tensor]) -> Tensor:
        return teacher_embedding(self.teacher, features)

    @torch.no_grad()
    def prepare(self, batch: Any, loss: Any) -> None:
        """Teacher similarities of the batch, outside the encoder pass (so GradCache replays none of it)."""
        if batch.anchor_features is None or batch.positive_features is None:
            raise ValueError("cwcl: the method gave no anchor/positive texts for the teacher")
        a = self.embed(batch.anchor_features)
        p = a if batch.positive_features is batch.anchor_features else self.embed(batch.positive_features)
        enabled = loss.gather_across_devices if loss is not None else False
        p = gather_no_grad(p, enabled)
        rows = loss.own_rows(a.shape[0]) if loss is not None else slice(0, a.shape[0])
        batch.extra["cwcl_weights"] = cwcl_weights(cosine_matrix(a, p), rows.start, self.floor)

    def forward(self, views: list[Tensor], batch: Any, loss: Any = None) -> Tensor:
        anchors, positives = batch.anchors_positives(views)
        candidates = loss.gather(positives) if loss is not None else positives
        return cwcl_loss(anchors, candidates, batch.extra["cwcl_weights"], self.temperature)
