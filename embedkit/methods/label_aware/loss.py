"""The ``label-aware`` method's loss: soft supervised contrastive targets from label overlap on labelled rows,
SimCSE's dropout InfoNCE on unlabelled rows, in one step (SPACE-2's semi-supervised objective, our reading)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from embedkit.losses.common import cosine_matrix, gather_no_grad
from embedkit.losses.objective import ComposedLoss, ViewBatch


def label_jaccard(a: Tensor, b: Tensor) -> Tensor:
    """Jaccard overlap of multi-hot label-node sets: ``|A_i ∩ B_j| / |A_i ∪ B_j|`` (n × m); 0 where either row has no
    label (an empty union), so an unlabelled row shares nothing with any row."""
    a, b = a.float(), b.float()
    inter = a @ b.T
    union = a.sum(dim=1)[:, None] + b.sum(dim=1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.zeros_like(inter))


def soft_targets(labels: Tensor, candidate_labels: Tensor, offset: int = 0) -> Tensor:
    """Each local anchor's target distribution over the (gathered) candidates, n × N.

    Anchor i's own dropout view (candidate ``offset + i``) weighs 1; for a labelled anchor every other labelled
    candidate j weighs ``s_ij = Jaccard(nodes_i, nodes_j)``; unlabelled candidates weigh 0 (negatives only). An
    unlabelled anchor keeps only its own view (one-hot: SimCSE's target). ``p_ij = w_ij / Σ_j w_ij``."""
    n = labels.shape[0]
    weights = label_jaccard(labels, candidate_labels)
    weights = weights * (labels.sum(dim=1) > 0)[:, None]
    own = torch.arange(n, device=weights.device)
    weights[own, own + offset] = 1.0
    return weights / weights.sum(dim=1, keepdim=True)


class LabelAwareLoss(ComposedLoss):
    """Label-aware semi-supervised contrastive loss: soft supervised contrast by label overlap on labelled rows,
    unsupervised SimCSE on unlabelled rows, in the same batch.

    He et al., "SPACE-2: Tree-Structured Semi-Supervised Contrastive Pre-training for Task-Oriented Dialog
    Understanding", COLING 2022 (arXiv:2209.06638): a label tree, a score of how much label structure two examples
    share that weighs them as positives in a supervised contrastive loss, and a self-supervised contrastive loss on
    unlabelled text. Gao, Yao and Chen, SimCSE (EMNLP 2021, arXiv:2104.08821): dropout views as positives.

    Every row enters twice (two dropout views ``h_i``, ``h_i'``). A row's labels are label paths ``a/b/c``; each
    path expands to its tree nodes ``{a, a/b, a/b/c}``, and the row's node set ``T_i`` is their union (a multi-hot
    vector over the label-node vocabulary, all zeros for an unlabelled row). With the N candidates ``h_j'`` of the
    (global) batch and temperature τ:

        s_ij = |T_i ∩ T_j| / |T_i ∪ T_j|                        (0 when either row is unlabelled)
        w_ii = 1;  w_ij = s_ij (i labelled, j ≠ i);  w_ij = 0 (i unlabelled, j ≠ i)
        p_ij = w_ij / Σ_k w_ik
        ℓ_i  = −Σ_j p_ij · log softmax_j( cos(h_i, h_j') / τ )

    An unlabelled anchor's ℓ_i is exactly SimCSE's InfoNCE. With L the labelled and U the unlabelled anchors of
    the global batch, λ = ``supervised_weight``:

        loss = λ · (1/|L|) Σ_{i∈L} ℓ_i + (1/|U|) Σ_{i∈U} ℓ_i          (a part with no anchor is 0)

    Under several processes the label sets are gathered with the embeddings (``batch.extra``), |L| and |U| are
    counted over the global batch, and each process returns its rows' share times the world size, so that DDP's
    gradient average equals one process holding the whole batch.

    Args:
        model: the SentenceTransformer being trained.
        temperature: τ (0.05).
        supervised_weight: λ, the weight of the labelled anchors' mean against the unlabelled anchors' mean.
        head: optional training-only MLP over both views.
        gather_across_devices: candidates and their label sets from every process.
        mini_batch_size: GradCache mini-batch (None: one forward pass for the whole batch).

    Example::

        loss = LabelAwareLoss(model, temperature=0.05, supervised_weight=1.0)
        # dataset columns: text, labels (a multi-hot float vector over the label nodes; all zeros: unlabelled)
        # recipe: method: {name: label-aware, label_fraction: 0.1}
    """

    config_keys = ("temperature", "supervised_weight")

    def __init__(
        self, model: nn.Module, temperature: float = 0.05, supervised_weight: float = 1.0,
        head: nn.Module | None = None, gather_across_devices: bool = True, mini_batch_size: int | None = None,
    ) -> None:
        super().__init__(model, head, gather_across_devices, mini_batch_size)
        self.temperature = temperature
        self.supervised_weight = supervised_weight

    def plan(self, features: list[dict[str, Tensor]], labels: Tensor | None) -> ViewBatch:
        text = features[0]
        n = text["input_ids"].shape[0]
        if labels is None:  # no label column (e.g. a dev loss): every row unlabelled
            labels = torch.zeros(n, 1, device=text["input_ids"].device)
        labels = labels.reshape(n, -1).float()
        batch = ViewBatch([text, text], labels, anchor_features=text, positive_features=text)
        # Gathered once per batch (not per Matryoshka dimension): every process makes the same collective calls.
        batch.extra.update(node_sets=labels, candidate_node_sets=gather_no_grad(labels, self.gather_across_devices))
        return batch

    def score(self, views: list[Tensor], batch: ViewBatch) -> Tensor:
        z1, z2 = (self.project(v) for v in views)
        candidates = self.gather(z2)
        n, total = z1.shape[0], candidates.shape[0]
        own, cand = batch.extra["node_sets"], batch.extra["candidate_node_sets"]
        targets = soft_targets(own, cand, self.own_rows(n).start)
        logits = cosine_matrix(z1, candidates) / self.temperature
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()  # a softmax over the batch needs fp32 under mixed precision
        per_anchor = -(targets.to(logits.dtype) * F.log_softmax(logits, dim=1)).sum(dim=1)
        labelled = own.sum(dim=1) > 0
        n_labelled = int((cand.sum(dim=1) > 0).sum())  # over the global batch
        n_unlabelled = total - n_labelled
        scale = total / n  # the world size when the candidates are gathered: DDP averages the processes' gradients
        loss = per_anchor.new_zeros(())
        if n_labelled:
            loss = loss + self.supervised_weight * per_anchor[labelled].sum() / n_labelled
        if n_unlabelled:
            loss = loss + per_anchor[~labelled].sum() / n_unlabelled
        return loss * scale
