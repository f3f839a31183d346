"""Pieces every contrastive loss shares: one-pass encoding of several columns, the training-only MLP head,
and gathering embeddings across processes with their gradient."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from embedkit import distributed
from embedkit.model_ref import load_model
from embedkit.modeling import DEFAULT_INITIALIZER_RANGE, init_linear_


class ProjectionHead(nn.Module):
    """SimCSE's MLP over the pooled vector: ``tanh(W h + b)``. Used at training time only
    (``mlp_only_train``); a head kept at test time is a sentence-transformers ``Dense`` module instead.

    Initialised as the reference (its MLP goes through BERT's ``_init_weights``): W ~ N(0, ``std``), b = 0,
    with ``std`` the encoder config's ``initializer_range`` (:func:`embedkit.modeling.initializer_range`).
    """

    def __init__(self, dim: int, std: float = DEFAULT_INITIALIZER_RANGE) -> None:
        super().__init__()
        self.dense = init_linear_(nn.Linear(dim, dim), std)
        self.activation = nn.Tanh()

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.dense(x))


def concat_features(features: list[dict[str, Tensor]]) -> tuple[dict[str, Tensor], list[int]]:
    """Stack the tokenised columns of a batch into one batch (right-padded to the longest), so that all
    views are encoded in a single forward pass; returns the batch and each column's row count."""
    sizes = [f["input_ids"].shape[0] for f in features]
    if len(features) == 1:
        return features[0], sizes
    width = max(f["input_ids"].shape[1] for f in features)
    merged: dict[str, Tensor] = {}
    for key in features[0]:
        if key == PROMPT_LENGTH:  # batch metadata, not rows: kept when every column has the same prompt
            if len({_prompt_length(f) for f in features}) == 1:
                merged[key] = features[0][key]
            continue
        parts = []
        for f in features:
            value = f[key]
            if not isinstance(value, Tensor) or value.dim() != 2:
                break
            parts.append(F.pad(value, (0, width - value.shape[1]), value=0))
        else:
            merged[key] = torch.cat(parts, dim=0)
    return merged, sizes


PROMPT_LENGTH = "prompt_length"  # what sentence-transformers' preprocessing adds for a prompt (tokens to skip)


def _prompt_length(features: dict[str, Tensor]) -> int:
    value = features.get(PROMPT_LENGTH)
    if isinstance(value, Tensor):
        return int(value.reshape(-1)[0]) if value.numel() else 0
    return int(value or 0)


def _pools_without_prompt(model: nn.Module) -> bool:
    """Whether a pooling module leaves prompt tokens out (``Pooling(include_prompt=False)``)."""
    return any(getattr(m, "include_prompt", True) is False for m in model.modules())


def encode_columns(
    model: nn.Module, features: list[dict[str, Tensor]], head: nn.Module | None = None, repeat: int = 1
) -> list[Tensor]:
    """Encode every column of the batch in one forward pass; returns one embedding matrix per column
    (``repeat`` copies of each when a column is entered more than once, e.g. SimCSE's two dropout views),
    passed through ``head`` when one is given.

    Columns with prompts of different lengths go through one pass each when the pooling leaves prompt tokens
    out: one pass has one ``prompt_length``."""
    features = [f for f in features for _ in range(repeat)]
    if len({_prompt_length(f) for f in features}) > 1 and _pools_without_prompt(model):
        embs = [model(f)["sentence_embedding"] for f in features]
        return [head(e) for e in embs] if head is not None else embs
    batch, sizes = concat_features(features)
    emb = model(batch)["sentence_embedding"]
    if head is not None:
        emb = head(emb)
    return list(torch.split(emb, sizes, dim=0))


def gather(x: Tensor, enabled: bool = True) -> Tensor:
    """Concatenate ``x`` from every process along dim 0, keeping the gradient path to every shard.

    sentence-transformers' ``all_gather_with_grad`` (the gather its own losses use for
    ``gather_across_devices``): the backward pass sums each shard's gradient over processes, so with the
    trainer's gradient averaging the update equals a single process holding the whole global batch. In one
    process ``x`` itself comes back (sentence-transformers would also log a warning, hence the early return).
    """
    if not enabled or distributed.world_size() == 1:
        return x
    from sentence_transformers.util import all_gather_with_grad

    return all_gather_with_grad(x.contiguous())


def gather_no_grad(x: Tensor, enabled: bool = True) -> Tensor:
    """Concatenate ``x`` from every process along dim 0 (no gradient; rank order), e.g. keys to enqueue."""
    size = distributed.world_size()
    if not enabled or size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def cosine_matrix(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise cosine similarity, ``a`` (n×d) against ``b`` (m×d)."""
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


def frozen_model(name: str, like: nn.Module) -> nn.Module:
    """A guide or teacher: loaded on the trained model's device, in eval mode, never trained (sentence-transformers
    computes a guide under ``no_grad`` either way; the distill term's named teacher)."""
    other, _ = load_model(name, device=str(like.device))
    other.eval()
    other.requires_grad_(False)
    return other


@torch.no_grad()
def teacher_embedding(teacher: nn.Module, features: dict[str, Tensor]) -> Tensor:
    """A frozen teacher's float32 embeddings of tokenised ``features``, on their device, in eval mode (moved there
    on first use: the trainer moves the trained model, not the teacher)."""
    device = features["input_ids"].device
    if next(teacher.parameters()).device != device:
        teacher.to(device)
    teacher.eval()
    return teacher(dict(features))["sentence_embedding"].float()
