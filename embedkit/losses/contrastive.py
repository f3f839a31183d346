"""SimCSE losses (Gao, Yao and Chen, "SimCSE: Simple Contrastive Learning of Sentence Embeddings",
EMNLP 2021, arXiv:2104.08821)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from embedkit.losses.common import cosine_matrix, world
from embedkit.losses.objective import ComposedLoss, ViewBatch


class SimCSELoss(ComposedLoss):
    """Unsupervised SimCSE: the positive of a sentence is the same sentence under another dropout mask.

    Each sentence enters the batch twice and both copies are encoded in one forward pass with dropout on,
    giving views ``h_i`` and ``h_i⁺``. With N sentences in the (global) batch and temperature τ:

        ℓ_i = −log( exp(cos(h_i, h_i⁺)/τ) / Σ_{j=1..N} exp(cos(h_i, h_j⁺)/τ) )

    averaged over the batch (InfoNCE with in-batch negatives). Under multi-process training the positives
    of all processes are gathered, so every anchor sees N−1 negatives whatever the device count.

    Args:
        model: the SentenceTransformer being trained.
        temperature: τ (0.05 in the paper).
        head: optional training-only MLP applied to both views (SimCSE's ``mlp_only_train``).
        gather_across_devices: gather in-batch negatives from every process.
        mini_batch_size: GradCache mini-batch (None: one forward pass for the whole batch).

    Example::

        loss = SimCSELoss(model, temperature=0.05)
        # dataset: one column of sentences
    """

    def __init__(
        self, model: nn.Module, temperature: float = 0.05, head: nn.Module | None = None,
        gather_across_devices: bool = True, mini_batch_size: int | None = None,
    ) -> None:
        super().__init__(model, head, gather_across_devices, mini_batch_size)
        self.temperature = temperature

    def plan(self, features: list[dict[str, Tensor]], labels: Tensor | None) -> ViewBatch:
        text = features[0]
        return ViewBatch([text, text], labels, anchor_features=text, positive_features=text)

    def score(self, views: list[Tensor], batch: ViewBatch | None = None) -> Tensor:
        z1, z2 = (self.project(v) for v in views)
        return info_nce(z1, self.gather(z2), self.temperature)


class SupervisedSimCSELoss(ComposedLoss):
    """Supervised SimCSE on (anchor, positive, hard negative) triples, e.g. NLI entailment/contradiction.

    Each anchor ``h_i`` is scored against every positive ``h_j⁺`` and every hard negative ``h_j⁻`` of the
    (global) batch; the anchor's own hard negative gets a logit offset ``log α`` (``hard_negative_weight``,
    0 by default, i.e. α = 1):

        ℓ_i = −log( e^{cos(h_i,h_i⁺)/τ} / ( Σ_j e^{cos(h_i,h_j⁺)/τ} + Σ_j e^{cos(h_i,h_j⁻)/τ + 1[i=j]·log α} ) )

    With two columns (no hard negatives) it reduces to in-batch InfoNCE over pairs.

    Args:
        model: the SentenceTransformer being trained.
        temperature: τ (0.05 in the paper).
        hard_negative_weight: log α, added to the anchor's own hard-negative logit only.
        head: optional training-only MLP.
        gather_across_devices: gather positives and hard negatives from every process.
        mini_batch_size: GradCache mini-batch (None: one forward pass for the whole batch).

    Example::

        loss = SupervisedSimCSELoss(model, temperature=0.05)
        # dataset columns: anchor, positive, negative
    """

    def __init__(
        self, model: nn.Module, temperature: float = 0.05, hard_negative_weight: float = 0.0,
        head: nn.Module | None = None, gather_across_devices: bool = True, mini_batch_size: int | None = None,
    ) -> None:
        super().__init__(model, head, gather_across_devices, mini_batch_size)
        self.temperature = temperature
        self.hard_negative_weight = hard_negative_weight

    def plan(self, features: list[dict[str, Tensor]], labels: Tensor | None) -> ViewBatch:
        return ViewBatch(features, labels, anchor_features=features[0], positive_features=features[1])

    def score(self, views: list[Tensor], batch: ViewBatch | None = None) -> Tensor:
        views = [self.project(v) for v in views]
        anchors = views[0]
        candidates = [self.gather(v) for v in views[1:]]
        return info_nce(anchors, candidates[0], self.temperature, candidates[1:], self.hard_negative_weight)


def info_nce(
    anchors: Tensor, positives: Tensor, temperature: float, hard_negatives: list[Tensor] | tuple = (),
    hard_negative_weight: float = 0.0, extra_logits: Tensor | None = None, mask: Tensor | None = None,
) -> Tensor:
    """Cross-entropy of each local anchor against all (gathered) positives, hard negatives and extra logits.

    The positive of local anchor ``i`` on process ``r`` sits at row ``r·n + i`` of ``positives``.
    ``extra_logits`` (n×k) are appended as further negative columns (e.g. a momentum queue). Cells where
    ``mask`` (n × all columns) is true are removed from the denominator (likely false negatives).
    """
    n = anchors.shape[0]
    rank, size = world()
    offset = rank * n if positives.shape[0] == n * size else 0
    blocks = [cosine_matrix(anchors, positives) / temperature]
    for neg in hard_negatives:
        logits = cosine_matrix(anchors, neg) / temperature
        if hard_negative_weight:
            weights = torch.zeros_like(logits)
            weights[torch.arange(n), offset + torch.arange(n)] = hard_negative_weight
            logits = logits + weights
        blocks.append(logits)
    if extra_logits is not None:
        blocks.append(extra_logits)
    logits = torch.cat(blocks, dim=1)
    labels = torch.arange(n, device=anchors.device) + offset
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # softmax over many columns needs fp32 under mixed precision
    if mask is not None:
        logits = logits.masked_fill(mask.to(logits.device), float("-inf"))
    return F.cross_entropy(logits, labels)
