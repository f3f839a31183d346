"""Alignment and uniformity (Wang and Isola, "Understanding Contrastive Representation Learning through
Alignment and Uniformity on the Hypersphere", ICML 2020, arXiv:2005.10242): the two formulas, used both as
training terms (``objective.terms``) and as evaluation metrics (:mod:`embedkit.evaluation.geometry` imports
:func:`alignment` and :func:`uniformity` from here: one implementation)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WANG_ISOLA_CITATION = """@inproceedings{wang2020hypersphere,
  title = {Understanding Contrastive Representation Learning through Alignment and Uniformity on the Hypersphere},
  author = {Wang, Tongzhou and Isola, Phillip},
  booktitle = {International Conference on Machine Learning (ICML)},
  year = {2020}
}"""


def alignment(x: Tensor, y: Tensor, alpha: float = 2.0) -> Tensor:
    """L_align = mean_i ‖x̂_i − ŷ_i‖₂^α over the rows of ``x`` and ``y`` (positive pairs), x̂ = x/‖x‖."""
    diff = F.normalize(x, dim=-1) - F.normalize(y, dim=-1)
    if alpha == 2.0:
        return diff.pow(2).sum(dim=-1).mean()  # smooth at x̂ = ŷ (the norm's derivative is not)
    return diff.norm(p=2, dim=-1).pow(alpha).mean()


def uniformity(x: Tensor, t: float = 2.0) -> Tensor:
    """L_uniform = log mean_{i<j} exp(−t ‖x̂_i − x̂_j‖₂²) over every unordered pair of rows, x̂ = x/‖x‖.

    On unit vectors ‖a − b‖² = 2 − 2 cos(a, b) (clamped at 0); the log-mean-exp is taken as a logsumexp.
    """
    n = x.shape[0]
    if n < 2:
        return x.sum() * float("nan")
    u = F.normalize(x, dim=-1)
    i, j = torch.triu_indices(n, n, offset=1, device=x.device)
    sq = (2.0 - 2.0 * (u[i] * u[j]).sum(dim=-1)).clamp(min=0.0)
    return torch.logsumexp(-t * sq, dim=0) - math.log(sq.shape[0])


class _WangIsolaTerm(nn.Module):
    """What the two terms share: no per-batch preparation, one citation, the config the card lists."""

    name: str
    weight: float
    config_keys: tuple[str, ...] = ()

    def prepare(self, batch: Any, loss: Any) -> None:
        pass

    def get_config_dict(self) -> dict[str, Any]:
        return {"name": self.name, "weight": self.weight, **{k: getattr(self, k) for k in self.config_keys}}

    @property
    def citation(self) -> str:
        return WANG_ISOLA_CITATION


class AlignmentTerm(_WangIsolaTerm):
    """Alignment of positive pairs (Wang and Isola, ICML 2020) as a term added to any method's loss.

    With the method's anchors ``x_i`` and positives ``x_i⁺`` (e.g. SimCSE's two dropout views; the momentum
    key for Contriever), L2-normalised to ``f(·)``:

        L_align = E_i ‖f(x_i) − f(x_i⁺)‖₂^α        (α = 2)

    The loss becomes ``L_method + weight · L_align``; logged as ``loss_alignment`` (already weighted).
    Computed on the encoder's output embeddings (before a training-only head), per process (each row's pair
    is local).

    Args:
        weight: multiplies the term.
        alpha: α (2 in the paper).

    Example::

        # recipe
        objective:
          terms: [{name: alignment, weight: 0.1}, {name: uniformity, weight: 0.1}]
        # or directly on embeddings
        from embedkit.losses.alignment_uniformity import alignment
        alignment(model.encode(a, convert_to_tensor=True), model.encode(b, convert_to_tensor=True))
    """

    name = "alignment"
    config_keys = ("alpha",)

    def __init__(self, weight: float = 1.0, alpha: float = 2.0) -> None:
        super().__init__()
        self.weight = weight
        self.alpha = alpha

    @classmethod
    def from_params(cls, params: Any, model: Any = None) -> AlignmentTerm:
        return cls(params.weight, params.alpha)

    def forward(self, views: list[Tensor], batch: Any, loss: Any = None) -> Tensor:
        anchors, positives = batch.anchors_positives(views)
        return alignment(anchors, positives, self.alpha)


class UniformityTerm(_WangIsolaTerm):
    """Uniformity on the hypersphere (Wang and Isola, ICML 2020) as a term added to any method's loss.

    Over every pair of distinct rows of the (global, when ``gather_across_devices``) batch, on L2-normalised
    embeddings ``f(·)``:

        L_uniform = log E_{i<j} exp(−t ‖f(x_i) − f(x_j)‖₂²)        (t = 2)

    taken over the anchors, and averaged with the same over the positives when the method has positives
    (as the paper's ``align + λ (uniform(x) + uniform(y)) / 2``). The loss becomes
    ``L_method + weight · L_uniform``; logged as ``loss_uniformity`` (already weighted; it is negative).

    Args:
        weight: multiplies the term.
        t: t (2 in the paper).

    Example::

        # recipe
        objective:
          terms: [{name: uniformity, weight: 0.1}]
        # or directly on embeddings
        from embedkit.losses.alignment_uniformity import uniformity
        uniformity(model.encode(sentences, convert_to_tensor=True))
    """

    name = "uniformity"
    config_keys = ("t",)

    def __init__(self, weight: float = 1.0, t: float = 2.0) -> None:
        super().__init__()
        self.weight = weight
        self.t = t

    @classmethod
    def from_params(cls, params: Any, model: Any = None) -> UniformityTerm:
        return cls(params.weight, params.t)

    def forward(self, views: list[Tensor], batch: Any, loss: Any = None) -> Tensor:
        gather = loss.gather if loss is not None else (lambda x: x)
        if batch.pair is None:
            return uniformity(gather(views[0]), self.t)
        anchors, positives = batch.anchors_positives(views)
        return (uniformity(gather(anchors), self.t) + uniformity(gather(positives), self.t)) / 2
