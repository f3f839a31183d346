"""ESimCSE loss (Wu et al., "ESimCSE: Enhanced Sample Building Method for Contrastive Learning of
Unsupervised Sentence Embedding", COLING 2022, arXiv:2109.04380)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from embedkit.losses.common import cosine_matrix
from embedkit.losses.contrastive import HardnessMeter, info_nce
from embedkit.losses.momentum import KeyQueue, MomentumEncoder
from embedkit.losses.objective import ComposedLoss, ViewBatch


class ESimCSELoss(ComposedLoss):
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
        mini_batch_size: GradCache mini-batch (None: one forward pass for the whole batch); the keys are
            computed outside it, without gradient.

    Example::

        enc = MomentumEncoder(model, 0.995)
        loss = ESimCSELoss(model, 0.05, repetition=SubwordRepetition(special, pad), momentum_encoder=enc,
                           queue=KeyQueue(160, model.get_embedding_dimension()))
        callbacks = [MomentumUpdate(enc, loss)]
    """

    def __init__(
        self, model: nn.Module, temperature: float = 0.05, head: nn.Module | None = None,
        repetition: nn.Module | None = None, momentum_encoder: MomentumEncoder | None = None,
        queue: KeyQueue | None = None, gather_across_devices: bool = True, mini_batch_size: int | None = None,
    ) -> None:
        super().__init__(model, head, gather_across_devices, mini_batch_size)
        self.hardness = HardnessMeter()  # the queue's negatives count among the negatives
        if (queue is None) != (momentum_encoder is None):
            raise ValueError("a momentum queue needs both momentum_encoder and queue")
        self.temperature = temperature
        self.repetition = repetition
        self.momentum_encoder = momentum_encoder
        self.queue = queue

    def get_config_dict(self) -> dict[str, Any]:
        rep = self.repetition
        out = {"temperature": self.temperature,
               "repetition": type(rep).__name__ if rep is not None else None,
               **({"dup_rate": rep.dup_rate, "max_dup": rep.max_dup, "static": rep.static} if rep is not None else {}),
               "queue_size": self.queue.size if self.queue is not None else 0,
               **({"momentum": self.momentum_encoder.momentum} if self.momentum_encoder is not None else {})}
        return {**out, **super().get_config_dict()}

    def plan(self, features: list[dict[str, Tensor]], labels: Tensor | None = None) -> ViewBatch:
        """``labels``: the dataset row id of each batch row (the esimcse method adds them as the label
        column); they key each row's repetition. Without them, static views are keyed by the tokens."""
        anchor = features[0]
        positive = anchor
        if self.repetition is not None:
            positive = self.repetition(anchor, labels)
            if self.model.training:
                self.repetition.advance()
        batch = ViewBatch([anchor, positive], labels, anchor_features=anchor, positive_features=positive)
        if self.queue is not None:
            batch.extra["keys"] = self.momentum_encoder(anchor, self.head)
            batch.side["negatives"] = self.queue.negatives()
        return batch

    def score(self, views: list[Tensor], batch: ViewBatch) -> Tensor:
        z1, z2 = self.project_all(views)
        extra = None
        negatives = batch.side.get("negatives")
        if negatives is not None:
            negatives = negatives.to(z1.device)
            if negatives.shape[0]:
                extra = cosine_matrix(z1, negatives.to(z1.dtype)) / self.temperature
        return info_nce(z1, self.gather(z2), self.temperature, extra_logits=extra, rows=self.own_rows(z1.shape[0]),
                        hardness=self.hardness if self.model.training else None)

    def after(self, batch: ViewBatch) -> None:
        if batch.extra.get("keys") is not None:
            self.queue.enqueue(batch.extra["keys"])
