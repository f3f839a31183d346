"""CCP's loss: InfoNCE over the batch with every other sentence of the anchor's own document masked out."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from embedkit.losses.common import gather_no_grad, world
from embedkit.losses.contrastive import info_nce
from embedkit.losses.objective import ComposedLoss, ViewBatch


class ContextPositivesLoss(ComposedLoss):
    """Contrastive context prediction: a sentence's positive is another sentence of its own document, its
    negatives are the positives of the batch's rows from *other* documents.

    Wu et al., "Unsupervised Context Aware Sentence Representation Pretraining for Multi-lingual Dense
    Retrieval", IJCAI 2022 (arXiv:2206.03281): contrastive context prediction (CCP) pulls together the
    embeddings of sentences in one local context and pushes random negatives away. This is our reading of the
    objective (the paper's language-specific memory bank, asymmetric batch normalisation and post-processing
    are not part of it): InfoNCE with in-batch negatives (van den Oord et al. 2018), where a candidate from the
    anchor's own document is never a negative. Sentences of one document share its topic; treating them as
    negatives would push apart exactly what the positives pull together.

    Each row holds an anchor ``a_i``, a positive ``p_i`` within the window of ``a_i`` in document ``d_i``. With
    the positives of the (global, under ``gather_across_devices``, with their document ids) batch of N rows,
    temperature τ and the cosine s:

        ℓ_i = −log( e^{s(a_i,p_i)/τ} / Σ_{j : j = i or d_j ≠ d_i} e^{s(a_i,p_j)/τ} )

    averaged over the anchors. The candidates ``p_j`` with ``d_j = d_i``, ``j ≠ i`` (the document's other
    sentences, wherever they sit in the global batch) are left out of the denominator: their logits and
    gradients are exactly zero. With every row from a different document it is
    ``MultipleNegativesRankingLoss(model, scale=1/τ)`` on (anchor, positive).

    Args:
        model: the SentenceTransformer being trained.
        temperature: τ (0.05).
        head: optional training-only MLP over both views.
        gather_across_devices: candidates and their document ids from every process.
        mini_batch_size: GradCache mini-batch (None: one forward pass for the whole batch).

    Example::

        loss = ContextPositivesLoss(model, temperature=0.05)
        # dataset columns: anchor, positive, label (the document id; the trainer passes it as labels)
        # recipe: method: {name: ccp, documents: paragraph, window: 2}
    """

    def __init__(
        self, model: nn.Module, temperature: float = 0.05, head: nn.Module | None = None,
        gather_across_devices: bool = True, mini_batch_size: int | None = None,
    ) -> None:
        super().__init__(model, head, gather_across_devices, mini_batch_size)
        self.temperature = temperature

    def plan(self, features: list[dict[str, Tensor]], labels: Tensor | None) -> ViewBatch:
        if labels is None:
            raise ValueError("ContextPositivesLoss needs each row's document id as labels (the 'label' column)")
        docs = labels.reshape(-1).long()
        # Gathered once per batch (not per Matryoshka dimension): every process makes the same collective calls.
        extra = {"documents": docs, "candidate_documents": gather_no_grad(docs, self.gather_across_devices)}
        return ViewBatch(features[:2], labels, anchor_features=features[0], positive_features=features[1],
                         extra=extra)

    def same_document_mask(self, batch: ViewBatch) -> Tensor:
        """n × N: true where candidate j is from anchor i's document and is not anchor i's own positive."""
        docs, candidates = batch.extra["documents"], batch.extra["candidate_documents"]
        n = docs.shape[0]
        rank, size = world()
        offset = rank * n if candidates.shape[0] == n * size else 0  # where the local rows sit (as info_nce)
        mask = docs[:, None] == candidates[None, :]
        mask[torch.arange(n), offset + torch.arange(n)] = False
        return mask

    def score(self, views: list[Tensor], batch: ViewBatch) -> Tensor:
        anchors, positives = self.project_all(views)
        return info_nce(anchors, self.gather(positives), self.temperature, mask=self.same_document_mask(batch))
