"""CCP's loss: InfoNCE over the batch with every other sentence of the anchor's own document masked out (the
:class:`~embedkit.losses.contrastive.InfoNCELoss` with ``mask_same_document``)."""

from __future__ import annotations

from torch import nn

from embedkit.losses.contrastive import InfoNCELoss


class ContextPositivesLoss(InfoNCELoss):
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

    config_keys = ("temperature", "mask_same_document")

    def __init__(
        self, model: nn.Module, temperature: float = 0.05, head: nn.Module | None = None,
        gather_across_devices: bool = True, mini_batch_size: int | None = None,
    ) -> None:
        super().__init__(model, temperature, mask_same_document=True, head=head,
                         gather_across_devices=gather_across_devices, mini_batch_size=mini_batch_size)
