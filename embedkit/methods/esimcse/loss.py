"""ESimCSE loss (Wu et al., "ESimCSE: Enhanced Sample Building Method for Contrastive Learning of
Unsupervised Sentence Embedding", COLING 2022, arXiv:2109.04380)."""

from __future__ import annotations

from torch import Tensor, nn

from embedkit.losses.common import cosine_matrix, encode_columns, gather
from embedkit.losses.contrastive import info_nce
from embedkit.losses.momentum import KeyQueue, MomentumEncoder


class ESimCSELoss(nn.Module):
    """Unsupervised SimCSE with a repetition-augmented positive and a momentum queue of extra negatives.

    The anchor ``h_i`` is the sentence as is; the positive ``h_i⁺`` is the same sentence with some words
    (or sub-words) repeated in place; both go through the trained encoder in one forward pass with dropout
    on. The keys ``k`` are the *original* sentences through the momentum encoder (dropout off, through the
    live training head when there is one), kept in a FIFO queue ``Q`` after use. With N sentences in the
    (global) batch and temperature τ:

        ℓ_i = −log( e^{cos(h_i,h_i⁺)/τ} / ( Σ_{j=1..N} e^{cos(h_i,h_j⁺)/τ} + Σ_{q∈Q} e^{cos(h_i,q)/τ} ) )

    i.e. logits ``[z1·z2ᵀ | z1·Qᵀ] / τ`` on unit vectors. Either part can be left out (``repetition=None``:
    dropout-only positives; ``queue=None``: in-batch negatives only), which gives the paper's ablations;
    with both left out it is :class:`~embedkit.losses.contrastive.SimCSELoss`.

    Args:
        model: the SentenceTransformer being trained.
        temperature: τ (0.05 in the paper).
        head: optional training-only MLP (applied to both views and to the keys).
        repetition: an augmenter from :mod:`embedkit.augment` (``SubwordRepetition`` or ``WordRepetition``)
            that turns the anchor features into the positive features.
        momentum_encoder: a :class:`~embedkit.losses.momentum.MomentumEncoder` (needed with ``queue``).
        queue: a :class:`~embedkit.losses.momentum.KeyQueue` of past keys.
        gather_across_devices: gather in-batch positives from every process.

    Example::

        enc = MomentumEncoder(model, 0.995)
        loss = ESimCSELoss(model, 0.05, repetition=SubwordRepetition(special, pad), momentum_encoder=enc,
                           queue=KeyQueue(160, model.get_embedding_dimension()))
        callbacks = [MomentumUpdate(enc, loss)]
    """

    def __init__(
        self, model: nn.Module, temperature: float = 0.05, head: nn.Module | None = None,
        repetition: nn.Module | None = None, momentum_encoder: MomentumEncoder | None = None,
        queue: KeyQueue | None = None, gather_across_devices: bool = True,
    ) -> None:
        super().__init__()
        if (queue is None) != (momentum_encoder is None):
            raise ValueError("a momentum queue needs both momentum_encoder and queue")
        self.model = model
        self.temperature = temperature
        self.head = head
        self.repetition = repetition
        self.momentum_encoder = momentum_encoder
        self.queue = queue
        self.gather_across_devices = gather_across_devices

    def forward(self, sentence_features: list[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        """``labels``: the dataset row id of each batch row (the esimcse method adds them as the label
        column); they key each row's repetition. Without them, static views are keyed by the tokens."""
        anchor = sentence_features[0]
        training = self.model.training
        if self.repetition is not None:
            positive = self.repetition(anchor, labels)
            if training:
                self.repetition.advance()
            z1, z2 = encode_columns(self.model, [anchor, positive], self.head)
        else:
            z1, z2 = encode_columns(self.model, [anchor], self.head, repeat=2)
        extra = keys = None
        if self.queue is not None:
            keys = self.momentum_encoder(anchor, self.head)
            negatives = self.queue.negatives().to(z1.device)
            if negatives.shape[0]:
                extra = cosine_matrix(z1, negatives.to(z1.dtype)) / self.temperature
        loss = info_nce(z1, gather(z2, self.gather_across_devices), self.temperature, extra_logits=extra)
        if keys is not None and training:
            self.queue.enqueue(keys)
        return loss
