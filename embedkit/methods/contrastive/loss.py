"""The ``contrastive`` method's loss: :class:`~embedkit.losses.contrastive.InfoNCELoss` over (anchor, positive,
negatives) rows, with its hard-negative weight and symmetric options."""

from __future__ import annotations

from torch import nn

from embedkit.losses.contrastive import InfoNCELoss


class ContrastiveLoss(InfoNCELoss):
    """InfoNCE with in-batch, cross-process and hard negatives (MultipleNegativesRankingLoss): the
    :class:`~embedkit.losses.contrastive.InfoNCELoss` without a document mask.

    van den Oord, Li and Vinyals, "Representation Learning with Contrastive Predictive Coding", 2018
    (arXiv:1807.03748): InfoNCE. Henderson et al., "Efficient Natural Language Response Suggestion for Smart
    Reply", 2017 (arXiv:1705.00652): the other rows' positives as negatives (sentence-transformers'
    ``MultipleNegativesRankingLoss``). Karpukhin et al., "Dense Passage Retrieval for Open-Domain Question
    Answering", EMNLP 2020 (arXiv:2004.04906): mined hard negatives added to the in-batch ones.

    Each row holds an anchor ``a_i``, its positive ``p_i`` and k ≥ 0 negatives ``n_i^1 … n_i^k``. With the
    positives and negatives of the (global, under ``gather_across_devices``) batch of N rows, temperature τ and
    ``hard_negative_weight`` w = log α added to the anchor's own negatives only:

        ℓ_i = −log( e^{s(a_i,p_i)/τ} / ( Σ_j e^{s(a_i,p_j)/τ} + Σ_{j,m} e^{s(a_i,n_j^m)/τ + 1[i=j]·w} ) )

    with s the cosine. sentence-transformers' ``scale`` is 1/τ: its default scale 20 is τ = 0.05. With
    ``symmetric`` the passage → query direction is added and the two averaged (sentence-transformers'
    ``MultipleNegativesSymmetricRankingLoss``, i.e. ``directions=("query_to_doc", "doc_to_query")``,
    ``partition_mode="per_direction"``):

        ℓ_i^sym = ½ ( ℓ_i − log( e^{s(a_i,p_i)/τ} / Σ_j e^{s(a_j,p_i)/τ} ) )

    With w = 0 the loss equals ``MultipleNegativesRankingLoss(model, scale=1/τ)`` on the same columns.

    Args:
        model: the SentenceTransformer being trained.
        temperature: τ (0.05).
        hard_negative_weight: w = log α on each anchor's own negatives (0: α = 1).
        symmetric: add the positive → anchor direction.
        head: optional training-only MLP over every view.
        gather_across_devices: candidates (and, with ``symmetric``, anchors) from every process.
        mini_batch_size: GradCache mini-batch (None: one forward pass for the whole batch).

    Example::

        loss = ContrastiveLoss(model, temperature=0.05)
        # dataset columns: anchor, positive[, negative_1, ..., negative_k]
        # recipe: method: {name: contrastive, temperature: 0.05, no_duplicates: true}
    """

    config_keys = ("temperature", "hard_negative_weight", "symmetric")

    def __init__(
        self, model: nn.Module, temperature: float = 0.05, hard_negative_weight: float = 0.0, symmetric: bool = False,
        head: nn.Module | None = None, gather_across_devices: bool = True, mini_batch_size: int | None = None,
    ) -> None:
        super().__init__(model, temperature, hard_negative_weight, symmetric, head=head,
                         gather_across_devices=gather_across_devices, mini_batch_size=mini_batch_size)
