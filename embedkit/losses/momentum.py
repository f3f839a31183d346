"""A momentum (key) encoder and a FIFO queue of its keys, MoCo-style, as parts any loss can attach; and the
MoCo loss built from them (Contriever's objective).

He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020
(arXiv:1911.05722); used for sentence embeddings by ESimCSE (Wu et al., COLING 2022, arXiv:2109.04380) and
for retrieval by Contriever (Izacard et al., TMLR 2022, arXiv:2112.09118).

How the parts fit the sentence-transformers trainer:

* :class:`MomentumEncoder` holds a frozen deep copy of the encoder (``requires_grad`` off, so the trainer's
  optimizer, which takes the loss's trainable parameters, skips it) under the attribute ``encoder`` —
  never ``model``, the name the trainer swaps for the wrapped model. It stays in eval mode (dropout off).
* :class:`KeyQueue` keeps the keys, the write pointer and the fill count as buffers.
* Both are submodules of the loss, so the :class:`~embedkit.training.trainer.EmbedkitTrainer` writes them
  into every checkpoint (the loss's state dict minus ``model.*``) and restores them on ``--resume``.
* :class:`MomentumUpdate` is the ``TrainerCallback`` that applies the EMA after each optimizer step.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel, TrainerCallback

from embedkit.losses.common import gather_no_grad
from embedkit.losses.objective import ComposedLoss, ViewBatch


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP (``.module``) or ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def reinitialise(module: nn.Module, seed: int) -> None:
    """Re-draw every weight of ``module`` as at construction (Hugging Face ``_init_weights`` for
    transformers models, ``reset_parameters`` for other layers), seeded."""

    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        covered: set[int] = set()
        for sub in module.modules():
            if isinstance(sub, PreTrainedModel) and id(sub) not in covered:
                for inner in sub.modules():
                    covered.add(id(inner))
                    for p in inner.parameters(recurse=False):
                        if hasattr(p, "_is_hf_initialized"):
                            p._is_hf_initialized = False
                    inner._is_hf_initialized = False
                    sub._init_weights(inner)
        for sub in module.modules():
            if id(sub) not in covered and hasattr(sub, "reset_parameters"):
                sub.reset_parameters()


class MomentumEncoder(nn.Module):
    """A frozen copy of the encoder, updated as an exponential moving average of the trained one:

        θ_k ← m·θ_k + (1 − m)·θ_q      (after each optimizer step; parameters only)

    Keys are computed without gradient, optionally through a live projection head (ESimCSE passes the
    training-only MLP), in eval mode (dropout off; ESimCSE's reference) unless ``dropout`` is set: then a
    training step's keys go through the encoder in train mode, dropout on, as Contriever's reference does
    (its key encoder follows the MoCo module's train mode).

    Args:
        model: the encoder being trained, with its pretrained weights already loaded.
        momentum: m (ESimCSE 0.995, Contriever 0.9995).
        init: ``copy`` (start from the trained encoder's weights) or ``random`` — re-initialise the copy, which
            reproduces the ESimCSE reference code (it builds the key encoder before the pretrained checkpoint
            loads and initialises it as a fresh BERT, so its key encoder starts random).
        seed: seed for ``init: random``.
        dropout: keys of training steps with dropout on (``forward(..., train=True)``).
    """

    def __init__(self, model: nn.Module, momentum: float = 0.995, init: Literal["copy", "random"] = "copy",
                 seed: int = 0, dropout: bool = False) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.momentum = momentum
        self.dropout = dropout
        self.encoder = copy.deepcopy(unwrap(model))
        if init == "random":
            reinitialise(self.encoder, seed)
        elif init != "copy":
            raise ValueError(f"init must be 'copy' or 'random', got {init!r}")
        self.encoder.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True) -> MomentumEncoder:
        """Module mode switches never turn the key encoder's dropout on."""
        super().train(mode)
        self.encoder.eval()
        return self

    @torch.no_grad()
    def forward(self, features: dict[str, Tensor], head: nn.Module | None = None, train: bool = False) -> Tensor:
        """Keys for a tokenised batch, no gradient, through ``head`` when given; dropout on only when both
        ``train`` (a training step) and the encoder's ``dropout`` switch are set."""
        self.encoder.train(train and self.dropout)
        try:
            emb = self.encoder(dict(features))["sentence_embedding"]
        finally:
            self.encoder.eval()
        if head is not None:
            emb = head(emb)
        return emb.detach()

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards ``model`` (the trained encoder, wrapped or not)."""
        live = dict(unwrap(model).named_parameters())
        mine = dict(self.encoder.named_parameters())
        missing = sorted(set(mine) - set(live))
        if missing:
            raise RuntimeError(f"momentum encoder and trained model differ: {missing[:3]} not in the trained model")
        weight = 1.0 - self.momentum
        for name, p in mine.items():
            p.lerp_(live[name].detach().to(p.dtype), weight)


class KeyQueue(nn.Module):
    """A FIFO queue of ``size`` key vectors (buffers: ``keys``, write pointer ``ptr``, fill count ``count``).

    ``init="empty"`` starts with no keys (only filled rows are used as negatives, ESimCSE style);
    ``init="random"`` starts full of random unit vectors, as MoCo and Contriever do.
    Under multi-process training the keys of all processes are gathered before they are enqueued, so every
    process holds the same queue.
    """

    def __init__(self, size: int, dim: int, init: Literal["empty", "random"] = "empty", seed: int = 0,
                 gather_across_devices: bool = True) -> None:
        super().__init__()
        if size <= 0:
            raise ValueError(f"queue size must be positive, got {size}")
        if init == "random":
            gen = torch.Generator().manual_seed(seed)
            keys = F.normalize(torch.randn(size, dim, generator=gen), dim=-1)
            count = size
        elif init == "empty":
            keys, count = torch.zeros(size, dim), 0
        else:
            raise ValueError(f"queue init must be 'empty' or 'random', got {init!r}")
        self.size = size
        self.gather_across_devices = gather_across_devices
        self.register_buffer("keys", keys)
        self.register_buffer("ptr", torch.zeros(1, dtype=torch.long))  # one-element tensors, not 0-dim
        self.register_buffer("count", torch.tensor([count], dtype=torch.long))

    def negatives(self) -> Tensor:
        """The filled keys (a detached copy, safe to use in a graph the next :meth:`enqueue` outlives)."""
        return self.keys[: int(self.count)].detach().clone()

    def ordered(self) -> Tensor:
        """The filled keys from oldest to newest."""
        n, ptr = int(self.count), int(self.ptr)
        if n < self.size:
            return self.keys[:n].clone()
        return torch.cat([self.keys[ptr:], self.keys[:ptr]]).clone()

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Append ``keys`` (gathered from every process first), dropping the oldest beyond ``size``."""
        keys = gather_no_grad(keys.detach(), self.gather_across_devices).to(self.keys.dtype)
        if keys.shape[0] > self.size:
            keys = keys[-self.size:]
        n = keys.shape[0]
        ptr = int(self.ptr)
        idx = (torch.arange(n, device=self.keys.device) + ptr) % self.size
        self.keys[idx] = keys.to(self.keys.device)
        self.ptr.fill_((ptr + n) % self.size)
        self.count.fill_(min(int(self.count) + n, self.size))


class MomentumUpdate(TrainerCallback):
    """Applies the EMA step of ``encoder`` towards ``owner.model`` after each optimizer step.

    Holds the loss (``owner``) rather than the model, because the trainer may replace ``loss.model`` with a
    wrapped model after the callback is made.
    """

    def __init__(self, encoder: MomentumEncoder, owner: nn.Module) -> None:
        self.encoder = encoder
        self.owner = owner

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.encoder.update(self.owner.model)


def momentum_callbacks(loss: nn.Module) -> list[MomentumUpdate]:
    """The EMA callback for a loss that holds a ``momentum_encoder`` (none when it has no queue)."""
    encoder = getattr(loss, "momentum_encoder", None)
    return [MomentumUpdate(encoder, loss)] if encoder is not None else []


class MoCoLoss(ComposedLoss):
    """MoCo's InfoNCE with queue-only negatives (Contriever's objective).

    For each text, two views are drawn (e.g. independent random crops with token deletion): the query
    ``q = f_θ(view₁)`` through the trained encoder and the key ``k⁺ = f_ξ(view₂)`` through the momentum
    encoder (no gradient; dropout as the encoder's ``dropout`` switch says). With the queue ``{n_j}`` of past
    keys and temperature τ:

        ℓ = −log( exp(s(q, k⁺)/τ) / ( exp(s(q, k⁺)/τ) + Σ_j exp(s(q, n_j)/τ) ) )

    where s is the dot product (Contriever's default) or the cosine (``normalize=True``). The keys of the
    batch are enqueued after the loss is computed. In-batch texts are not used as negatives.

    Args:
        model: the SentenceTransformer being trained.
        momentum_encoder: a :class:`MomentumEncoder` of ``model``.
        queue: a :class:`KeyQueue`.
        views: called as ``views(features, rows, view=i)`` to make view ``i``; ``None`` uses the text as is.
        temperature: τ (0.05 in Contriever).
        normalize: use cosine instead of the dot product.
        gather_across_devices: gather the keys of every process before they are enqueued (read by the queue).
        mini_batch_size: GradCache mini-batch for the queries (None: one forward pass); keys are computed
            outside it, without gradient.

    Example::

        enc = MomentumEncoder(model, 0.9995)
        loss = MoCoLoss(model, enc, KeyQueue(65536, model.get_embedding_dimension(), init="random"), views)
        callbacks = [MomentumUpdate(enc, loss)]
    """

    def __init__(self, model: nn.Module, momentum_encoder: MomentumEncoder, queue: KeyQueue,
                 views: nn.Module | None = None, temperature: float = 0.05, normalize: bool = False,
                 gather_across_devices: bool = True, mini_batch_size: int | None = None) -> None:
        super().__init__(model, None, gather_across_devices, mini_batch_size)
        self.momentum_encoder = momentum_encoder
        self.queue = queue
        self.views = views
        self.temperature = temperature
        self.normalize = normalize

    def get_config_dict(self) -> dict[str, Any]:
        views = self.views
        crop = {"crop_min": views.min_ratio, "crop_max": views.max_ratio, "deletion": views.deletion} if (
            views is not None and hasattr(views, "min_ratio")) else {}
        return {"temperature": self.temperature, "normalize": self.normalize, "queue_size": self.queue.size,
                "momentum": self.momentum_encoder.momentum, **crop, **super().get_config_dict()}

    def plan(self, features: list[dict[str, Tensor]], labels: Tensor | None = None) -> ViewBatch:
        """``labels``: the dataset row id of each batch row, handed to ``views`` (may be ``None``)."""
        text = features[0]
        if self.views is not None:
            q_features = self.views(text, labels, view=0)
            k_features = self.views(text, labels, view=1)
            if self.model.training:
                self.views.advance()
        else:
            q_features = k_features = text
        k = self.momentum_encoder(k_features, train=self.model.training)
        return ViewBatch([q_features], labels, pair=(0, 0), positive=k, side={"negatives": self.queue.negatives()},
                         anchor_features=q_features, positive_features=k_features, extra={"keys": k})

    def score(self, views: list[Tensor], batch: ViewBatch) -> Tensor:
        q = views[0]
        k = batch.positive.to(q.dtype)
        negatives = batch.side["negatives"].to(q.device, q.dtype)
        if self.normalize:
            q, k, negatives = F.normalize(q, dim=-1), F.normalize(k, dim=-1), F.normalize(negatives, dim=-1)
        positive = (q * k).sum(dim=-1, keepdim=True)
        logits = torch.cat([positive, q @ negatives.T], dim=1) / self.temperature
        labels0 = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        return F.cross_entropy(logits.float(), labels0)

    def after(self, batch: ViewBatch) -> None:
        self.queue.enqueue(batch.extra["keys"])
