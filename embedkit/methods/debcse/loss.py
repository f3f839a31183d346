"""DebCSE-style contrastive loss with false-negative masking (embedkit's reading of Miao, Du and Zhang,
"DebCSE: Rethinking Unsupervised Contrastive Sentence Embedding Learning in the Debiasing Perspective",
CIKM 2023, arXiv:2309.07396; see ``docs/debcse.md``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from embedkit.losses.common import gather_no_grad
from embedkit.losses.contrastive import InfoNCELoss
from embedkit.losses.objective import ViewBatch


def false_negative_mask(
    table: Tensor, anchor_ids: Tensor, positive_ids: Tensor, negative_ids: Tensor | None = None,
    offset: int = 0, margin: float = 0.0, threshold: float | None = None,
) -> Tensor:
    """Which in-batch candidates of each anchor are likely false negatives.

    ``table`` holds unit reference embeddings; ``anchor_ids`` (n) index the local anchors, ``positive_ids``
    and ``negative_ids`` (N each, −1 = none) the (gathered) candidate columns, in the order the logits use
    (positives, then hard negatives). Anchor i's own positive sits at column ``offset + i`` and is never
    masked. A column j is masked when

    * it is the same text as the anchor or as the anchor's positive (same table id), or
    * its reference cosine to the anchor exceeds the anchor's positive cosine by more than ``margin``, or
    * its reference cosine to the anchor is at least ``threshold`` (near-duplicates; ``None``: off).

    Returns a bool matrix n × (N or 2N); missing hard negatives (id −1) are masked.
    """
    n = anchor_ids.shape[0]
    cols = positive_ids if negative_ids is None else torch.cat([positive_ids, negative_ids])
    valid = cols >= 0
    # Index first, then widen: only the batch's rows of the (half-precision, corpus-sized) table are converted.
    anchors = table[anchor_ids].float()
    own_ids = positive_ids[offset + torch.arange(n, device=positive_ids.device)]
    own = (anchors * table[own_ids].float()).sum(-1)
    sims = anchors @ table[cols.clamp(min=0)].float().T
    mask = sims > own.unsqueeze(1) + margin
    if threshold is not None:
        mask |= sims >= threshold
    mask |= cols.unsqueeze(0) == anchor_ids.unsqueeze(1)
    mask |= cols.unsqueeze(0) == own_ids.unsqueeze(1)
    mask |= ~valid.unsqueeze(0)
    rows = torch.arange(n, device=mask.device)
    mask[rows, offset + rows] = False
    return mask


class DebCSELoss(InfoNCELoss):
    """InfoNCE over (anchor, positive[, hard negative]) rows with in-batch negatives, minus likely false
    negatives: embedkit's reading of DebCSE (Miao et al., CIKM 2023, arXiv:2309.07396). The
    :class:`~embedkit.losses.contrastive.InfoNCELoss` with the false-negative mask its plan computes.

    With anchors ``h_i``, positives ``h_j⁺``, hard negatives ``h_j⁻`` of the (global) batch, temperature τ,
    hard-negative offset log α, and the set M_i of columns masked by :func:`false_negative_mask` under the
    frozen reference encoder r(·):

        ℓ_i = −log( e^{cos(h_i,h_i⁺)/τ} / Σ_{c ∉ M_i} e^{cos(h_i,h_c)/τ + 1[c = i⁻]·log α} )

        M_i = { c ≠ i⁺ : cos(r_i, r_c) > cos(r_i, r_i⁺) + margin  or  cos(r_i, r_c) ≥ threshold
                         or text(c) ∈ {text(i), text(i⁺)} }

    The rows come from :mod:`embedkit.methods.debcse.debias` (positives and hard negatives drawn by inverse propensity
    weighting); the batch labels carry each row's table ids ``[anchor, positive, negative]``. With
    ``dropout_positive`` the single text column is encoded twice (plain unsupervised SimCSE) and only the
    masking is added.

    Args:
        model: the SentenceTransformer being trained.
        temperature: τ (0.05 as in SimCSE).
        hard_negative_weight: log α on each anchor's own hard negative.
        head: optional training-only MLP.
        gather_across_devices: in-batch candidates from every process.
        margin: cosine margin over the positive above which an in-batch candidate is masked.
        threshold: reference cosine at or above which a candidate is masked (``None``: off).
        dropout_positive: one text column, positive = second dropout view (masking-only add-on).
        mini_batch_size: GradCache mini-batch (None: one forward pass); the mask is computed outside it.

    Example::

        loss = DebCSELoss(model, temperature=0.05, margin=0.05, threshold=0.95)
        loss.set_reference(table, round_=0)  # float16 unit embeddings indexed by the label ids
        # dataset columns: anchor, positive, negative, label ([a, p, n, round] ids)
    """

    config_keys = ("temperature", "hard_negative_weight", "margin", "threshold", "dropout_positive")

    def __init__(
        self, model: nn.Module, temperature: float = 0.05, hard_negative_weight: float = 0.0,
        head: nn.Module | None = None, gather_across_devices: bool = True, margin: float = 0.0,
        threshold: float | None = 0.95, dropout_positive: bool = False, reference: Tensor | None = None,
        mini_batch_size: int | None = None,
    ) -> None:
        super().__init__(model, temperature, hard_negative_weight, head=head,
                         gather_across_devices=gather_across_devices, mini_batch_size=mini_batch_size)
        self.margin = margin
        self.threshold = threshold
        self.dropout_positive = dropout_positive
        # Plain attributes, not buffers: tables are rebuilt by mining and never stored in checkpoints. The
        # last two rounds are kept, because the data loader may hand over one batch built before a re-mining.
        self.tables: dict[int, Tensor] = {}
        self.reference: Tensor | None = None
        self._offsets: dict[int, int] = {}
        self.last_masked_fraction = 0.0
        if reference is not None:
            self.set_reference(reference)

    def set_reference(self, table: Tensor, round_: int = 0) -> None:
        """Install the reference-embedding table of mining round ``round_`` (the label ids index it)."""
        self.tables[int(round_)] = table
        for old in sorted(self.tables)[:-2]:
            del self.tables[old]
        offsets, start = {}, 0
        for key in sorted(self.tables):
            offsets[key] = start
            start += self.tables[key].shape[0]
        self._offsets = offsets
        self.reference = torch.cat([self.tables[k] for k in sorted(self.tables)]) if len(self.tables) > 1 else table

    def _global_ids(self, ids: Tensor) -> Tensor:
        """Row ids ``[anchor, positive, negative(, round)]`` → ids into the combined reference table."""
        rounds = ids[:, 3] if ids.shape[1] > 3 else torch.zeros_like(ids[:, 0])
        out = ids[:, :3].clone()
        if len(self.tables) == 1 and ids.shape[1] <= 3:
            return out
        offset = torch.empty_like(rounds)
        for r in rounds.unique().tolist():
            if r not in self._offsets:
                raise RuntimeError(f"DebCSE batch of mining round {r}; the loss holds rounds {sorted(self.tables)}")
            offset[rounds == r] = self._offsets[r]
        return torch.where(out >= 0, out + offset.unsqueeze(1), out)

    def plan(self, features: list[dict[str, Tensor]], labels: Tensor | None = None) -> ViewBatch:
        columns = [features[0], features[0]] if self.dropout_positive else list(features)
        batch = ViewBatch(columns, labels, anchor_features=columns[0], positive_features=columns[1])
        if labels is not None and self.reference is not None:
            n = columns[0]["input_ids"].shape[0]
            ids = labels.view(n, -1).long()
            all_ids = self._global_ids(gather_no_grad(ids, self.gather_across_devices).to(self.reference.device))
            rows = self.own_rows(n)
            negative_ids = all_ids[:, 2] if len(columns) > 2 else None
            mask = false_negative_mask(self.reference, all_ids[rows, 0], all_ids[:, 1], negative_ids, rows.start,
                                       self.margin, self.threshold)
            self.last_masked_fraction = float(mask.float().mean())
            batch.extra["mask"] = mask
        return batch
