"""InfoNCE losses: SimCSE's (Gao, Yao and Chen, "SimCSE: Simple Contrastive Learning of Sentence Embeddings",
EMNLP 2021, arXiv:2104.08821) and the one :class:`InfoNCELoss` behind supervised SimCSE, ``contrastive``, ``ccp``
and DebCSE; :func:`info_nce`, the formula every InfoNCE-style loss of embedkit computes; and the loss's hardness
profile (:func:`hardness_profile`, Wang & Liu 2021), logged during training."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from embedkit.losses.common import cosine_matrix, gather_no_grad
from embedkit.losses.objective import ComposedLoss, ViewBatch

# hardness@k is logged for these k (docs/sweep.md#hardness-profile).
HARDNESS_K = (1, 5)


def hardness_profile(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = HARDNESS_K) -> Tensor:
    """How much of the InfoNCE gradient on the negatives the hardest ones take (Wang & Liu, "Understanding the
    Behaviour of Contrastive Loss", CVPR 2021, §3: the loss is hardness-aware, τ sets how much).

    For anchor i with logits z_ij (cos/τ plus any weight; masked cells −inf) and p_i = softmax(z_i), the loss
    ℓ_i = −log p_{i,pos} has ∂ℓ_i/∂z_ij = p_ij for every negative j, so negative j takes the share
    p_ij / Σ_{j' neg} p_ij' of the gradient on the negatives (the same share of ∂ℓ_i/∂s_ij, all divided by τ):

        hardness@k_i = Σ_{j ∈ top-k negatives of i} p_ij / Σ_{j negative} p_ij

    k/(number of negatives) when every negative weighs the same; 1 when the k hardest take it all. Returns an
    n × len(ks) tensor (no gradient); a row without a negative is NaN."""
    with torch.no_grad():
        p = logits.float().softmax(dim=1).scatter(1, labels[:, None], 0.0)  # the positive is no negative
        total = p.sum(dim=1, keepdim=True)
        top = p.topk(min(max(ks), p.shape[1]), dim=1).values.cumsum(dim=1)
        picked = top[:, [min(k, top.shape[1]) - 1 for k in ks]]
        return torch.where(total > 0, picked / total.clamp_min(torch.finfo(p.dtype).tiny), float("nan"))


class HardnessMeter:
    """Sums of :func:`hardness_profile` over the training rows since the trainer last logged (a plain attribute
    of the loss, not a buffer: no part of its checkpointed state). :meth:`take` returns the sums and row count and
    starts again."""

    def __init__(self, ks: tuple[int, ...] = HARDNESS_K) -> None:
        self.ks = ks
        self.sums: Tensor | None = None
        self.rows = 0

    def add(self, shares: Tensor) -> None:
        good = ~torch.isnan(shares).any(dim=1)
        total = shares[good].sum(dim=0).double()
        self.sums = total if self.sums is None else self.sums + total.to(self.sums.device)
        self.rows += int(good.sum())

    def take(self) -> tuple[list[float], int]:
        sums, rows = ([0.0] * len(self.ks) if self.sums is None else self.sums.tolist()), self.rows
        self.sums, self.rows = None, 0
        return sums, rows


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

    config_keys = ("temperature",)

    def __init__(
        self, model: nn.Module, temperature: float = 0.05, head: nn.Module | None = None,
        gather_across_devices: bool = True, mini_batch_size: int | None = None,
    ) -> None:
        super().__init__(model, head, gather_across_devices, mini_batch_size)
        self.temperature = temperature
        self.hardness = HardnessMeter()

    def plan(self, features: list[dict[str, Tensor]], labels: Tensor | None) -> ViewBatch:
        text = features[0]
        return ViewBatch([text, text], labels, anchor_features=text, positive_features=text)

    def score(self, views: list[Tensor], batch: ViewBatch | None = None) -> Tensor:
        z1, z2 = (self.project(v) for v in views)
        return info_nce(z1, self.gather(z2), self.temperature, rows=self.own_rows(z1.shape[0]),
                        hardness=self.hardness if self.model.training else None)


class InfoNCELoss(ComposedLoss):
    """InfoNCE over (anchor, positive, hard negatives …) rows with in-batch, cross-process and hard negatives: the
    one loss behind ``simcse-sup``, ``contrastive`` and ``ccp`` (and DebCSE's), each an option set of it.

    van den Oord, Li and Vinyals, "Representation Learning with Contrastive Predictive Coding", 2018
    (arXiv:1807.03748): InfoNCE. Henderson et al., "Efficient Natural Language Response Suggestion for Smart
    Reply", 2017 (arXiv:1705.00652): the other rows' positives as negatives. Gao, Yao and Chen, SimCSE
    (EMNLP 2021, arXiv:2104.08821) and Karpukhin et al., DPR (EMNLP 2020, arXiv:2004.04906): hard negatives.

    Each row holds an anchor ``a_i``, its positive ``p_i`` and k ≥ 0 hard negatives ``n_i^1 … n_i^k``. With the
    positives and negatives of the (global, under ``gather_across_devices``) batch of N rows, temperature τ, the
    cosine s and ``hard_negative_weight`` w = log α added to the anchor's own negatives only:

        ℓ_i = −log( e^{s(a_i,p_i)/τ} / ( Σ_{j ∉ M_i} e^{s(a_i,p_j)/τ} + Σ_{j,m ∉ M_i} e^{s(a_i,n_j^m)/τ + 1[i=j]·w} ) )

    averaged over the anchors. M_i is empty, except:

    * ``mask_same_document`` (``ccp``): the labels are document ids, and a candidate ``p_j`` from the anchor's
      own document (j ≠ i, wherever it sits in the global batch) is no negative: M_i = {j ≠ i : d_j = d_i};
    * a method's plan may hand a mask of likely false negatives (``batch.extra["mask"]``, DebCSE).

    With ``symmetric`` the positive → anchor direction over the (global) anchors is added and the two averaged
    (sentence-transformers' ``MultipleNegativesSymmetricRankingLoss``):

        ℓ_i^sym = ½ ( ℓ_i − log( e^{s(a_i,p_i)/τ} / Σ_j e^{s(a_j,p_i)/τ} ) )

    With w = 0, no mask and one direction it equals ``MultipleNegativesRankingLoss(model, scale=1/τ)``. Anchor
    i's own row among the gathered candidates is ``own_rows(n).start + i`` (:func:`embedkit.distributed.local_rows`).

    Args:
        model: the SentenceTransformer being trained.
        temperature: τ (0.05).
        hard_negative_weight: w = log α on each anchor's own negatives (0: α = 1).
        symmetric: add the positive → anchor direction.
        mask_same_document: the labels are document ids; same-document candidates leave the denominator.
        head: optional training-only MLP over every view (one matrix product over all of them).
        gather_across_devices: candidates (and, with ``symmetric``, anchors) from every process.
        mini_batch_size: GradCache mini-batch (None: one forward pass for the whole batch).

    Example::

        loss = InfoNCELoss(model, temperature=0.05, hard_negative_weight=0.0)
        # dataset columns: anchor, positive[, negative_1, ..., negative_k]
    """

    config_keys = ("temperature", "hard_negative_weight", "symmetric", "mask_same_document")

    def __init__(
        self, model: nn.Module, temperature: float = 0.05, hard_negative_weight: float = 0.0, symmetric: bool = False,
        mask_same_document: bool = False, head: nn.Module | None = None, gather_across_devices: bool = True,
        mini_batch_size: int | None = None,
    ) -> None:
        super().__init__(model, head, gather_across_devices, mini_batch_size)
        self.temperature = temperature
        self.hard_negative_weight = hard_negative_weight
        self.symmetric = symmetric
        self.mask_same_document = mask_same_document
        self.hardness = HardnessMeter()

    def plan(self, features: list[dict[str, Tensor]], labels: Tensor | None) -> ViewBatch:
        batch = ViewBatch(list(features), labels, anchor_features=features[0], positive_features=features[1])
        if self.mask_same_document:
            if labels is None:
                raise ValueError(f"{type(self).__name__} needs each row's document id as labels (the 'label' column)")
            docs = labels.reshape(-1).long()
            # Gathered once per batch (not per Matryoshka dimension): every process makes the same collective calls.
            batch.extra.update(documents=docs, candidate_documents=gather_no_grad(docs, self.gather_across_devices))
        return batch

    def same_document_mask(self, batch: ViewBatch) -> Tensor:
        """n × N: true where candidate j is from anchor i's document and is not anchor i's own positive."""
        docs, candidates = batch.extra["documents"], batch.extra["candidate_documents"]
        n = docs.shape[0]
        mask = docs[:, None] == candidates[None, :]
        own = torch.arange(n, device=mask.device)
        mask[own, own + self.own_rows(n).start] = False
        return mask

    def score(self, views: list[Tensor], batch: ViewBatch | None = None) -> Tensor:
        anchors, positives, *negatives = self.project_all(views)
        rows = self.own_rows(anchors.shape[0])
        if self.mask_same_document:
            mask = self.same_document_mask(batch)
        else:
            mask = batch.extra.get("mask") if batch is not None else None
        loss = info_nce(anchors, self.gather(positives), self.temperature, [self.gather(n) for n in negatives],
                        self.hard_negative_weight, mask=mask, rows=rows,
                        hardness=self.hardness if self.model.training else None)  # anchor → candidates only
        if self.symmetric:  # each local positive against the anchors of every process
            loss = (loss + info_nce(positives, self.gather(anchors), self.temperature, rows=rows)) / 2
        return loss


class SupervisedSimCSELoss(InfoNCELoss):
    """Supervised SimCSE on (anchor, positive, hard negative) triples, e.g. NLI entailment/contradiction: the
    :class:`InfoNCELoss` with one hard-negative column.

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

    config_keys = ("temperature", "hard_negative_weight")

    def __init__(
        self, model: nn.Module, temperature: float = 0.05, hard_negative_weight: float = 0.0,
        head: nn.Module | None = None, gather_across_devices: bool = True, mini_batch_size: int | None = None,
    ) -> None:
        super().__init__(model, temperature, hard_negative_weight, head=head,
                         gather_across_devices=gather_across_devices, mini_batch_size=mini_batch_size)

    def project_all(self, views: list[Tensor]) -> list[Tensor]:
        """The head over each column on its own (as this loss always did: its numbers stay bit for bit; one
        product over all columns differs in the last float bits)."""
        return [self.project(v) for v in views]


def info_nce(
    anchors: Tensor, positives: Tensor, temperature: float, hard_negatives: list[Tensor] | tuple = (),
    hard_negative_weight: float = 0.0, extra_logits: Tensor | None = None, mask: Tensor | None = None,
    rows: slice | None = None, hardness: HardnessMeter | None = None,
) -> Tensor:
    """Cross-entropy of each local anchor against all (gathered) positives, hard negatives and extra logits.

    The positive (and own hard negatives) of local anchor ``i`` sit at row ``rows.start + i`` of the candidates:
    ``rows`` is where the n local rows sit among them (:meth:`ComposedLoss.own_rows`, i.e.
    :func:`embedkit.distributed.local_rows` when the candidates are gathered); ``None``: the first n (candidates
    of this process only). ``extra_logits`` (n×k) are appended as further negative columns (e.g. a momentum
    queue). Cells where ``mask`` (n × all columns) is true are removed from the denominator (false negatives).
    ``hardness``: a meter that records :func:`hardness_profile` of these logits (training only).
    """
    n = anchors.shape[0]
    offset = rows.start if rows is not None else 0
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
    if hardness is not None:
        hardness.add(hardness_profile(logits, labels, hardness.ks))
    return F.cross_entropy(logits, labels)
