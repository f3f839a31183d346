"""The ``self-pairs`` loss: InfoNCE over (anchor, positive) pairs that the model being trained mined from an
unlabelled corpus, the round's pairs held as buffers so that a checkpoint resumes with the very same pairs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from embedkit.losses.objective import ViewBatch
from embedkit.methods.contrastive.loss import ContrastiveLoss


class SelfPairsLoss(ContrastiveLoss):
    """:class:`~embedkit.methods.contrastive.loss.ContrastiveLoss` (InfoNCE with in-batch and cross-process
    negatives) on pairs mined by the model itself (docs/mine-pairs.md#self-training-rounds).

    The pairs come from the ratio margin of Artetxe & Schwenk, "Margin-based Parallel Corpus Mining with
    Multilingual Sentence Embeddings", ACL 2019 (arXiv:1811.01136), filtered and re-mined in rounds as in the
    self-mining recipe (El Mekki and Abdul-Mageed, *Effective Self-Mining of In-Context Examples for Unsupervised
    MT*, Findings of NAACL 2025). For the batch rows' pairs (a_i, p_i), temperature τ and cosine s:

        ℓ_i = −log( e^{s(a_i,p_i)/τ} / Σ_j e^{s(a_i,p_j)/τ} )

    (with ``symmetric`` averaged with the p → a direction, as ``ContrastiveLoss``).

    The loss holds the mining round in force as two buffers, saved in every checkpoint's method state:
    ``pairs`` (n_r × 2, indices into :attr:`texts`, the distinct corpus texts, in the round's seeded order) and
    ``mining_round``. The dataset hands over row ids only (as the batch labels); row i trains on pair
    ``pairs[i mod n_r]``, looked up and tokenised here, when the step runs. So the pairs a step trains on are
    those installed before it, whatever the data loader fetched ahead, and a resumed run reads the checkpoint's
    pairs instead of mining again with a later model.

    Args:
        model: the SentenceTransformer being trained.
        texts: the distinct corpus texts the pair indices refer to.
        tokenize: texts → features (``SentenceTransformer.preprocess``).
        temperature: τ (0.05).
        symmetric: add the positive → anchor direction.
        head: optional training-only MLP.
        gather_across_devices: candidates from every process.
        mini_batch_size: GradCache mini-batch (None: one forward pass).

    Example::

        loss = SelfPairsLoss(model, texts, model.preprocess)
        loss.set_pairs(torch.tensor([[0, 5], [2, 9]]), round_=0)
        # dataset: one column, label = the row id
    """

    config_keys = ("temperature", "symmetric")

    def __init__(
        self, model: nn.Module, texts: Sequence[str], tokenize: Callable[[list[str]], dict[str, Any]],
        temperature: float = 0.05, symmetric: bool = False, head: nn.Module | None = None,
        gather_across_devices: bool = True, mini_batch_size: int | None = None,
    ) -> None:
        super().__init__(model, temperature, 0.0, symmetric, head=head, gather_across_devices=gather_across_devices,
                         mini_batch_size=mini_batch_size)
        self.texts = list(texts)  # plain attribute: rebuilt from the data, never stored in checkpoints
        self.tokenize = tokenize
        self.register_buffer("pairs", torch.zeros(0, 2, dtype=torch.long))
        self.register_buffer("mining_round", torch.tensor(-1, dtype=torch.long))

    def set_pairs(self, pairs: Tensor, round_: int) -> None:
        """Install mining round ``round_``: ``pairs`` (n × 2 text indices, in the order rows read them)."""
        pairs = torch.as_tensor(pairs, dtype=torch.long).reshape(-1, 2)
        if pairs.shape[0] == 0:
            raise ValueError("a mining round without pairs cannot train")
        self.pairs = pairs.to(self.pairs.device)
        self.mining_round = torch.tensor(int(round_), dtype=torch.long, device=self.mining_round.device)

    @property
    def round(self) -> int:
        return int(self.mining_round)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        # A round's pair count is its own: take the checkpoint's shape before copying its values in.
        key = prefix + "pairs"
        if key in state_dict:
            self.pairs = torch.empty_like(state_dict[key], device=self.pairs.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def row_pairs(self, rows: Tensor) -> Tensor:
        """The (anchor, positive) text indices of dataset rows ``rows``: ``pairs[row mod n_r]``."""
        n = self.pairs.shape[0]
        if n == 0:
            raise RuntimeError("SelfPairsLoss has no pairs: set_pairs (or a checkpoint) must install a round first")
        return self.pairs[rows.reshape(-1).long().cpu() % n]

    def plan(self, features: list[dict[str, Tensor]], labels: Tensor | None) -> ViewBatch:
        if labels is None:
            raise ValueError("SelfPairsLoss needs each row's id as labels (the 'label' column)")
        ids = self.row_pairs(labels).tolist()
        device = next(self.model.parameters()).device
        columns = []
        for side in (0, 1):
            tokens = self.tokenize([self.texts[pair[side]] for pair in ids])
            columns.append({k: v.to(device) if isinstance(v, Tensor) else v for k, v in tokens.items()})
        return super().plan(columns, labels)
