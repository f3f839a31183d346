"""Text augmentations that make positive views: ESimCSE's word repetition, Contriever's random cropping and
token deletion.

The token-level operations work on the ids a tokenizer already produced: each one returns, for a row, the
list of *source positions* to keep (a position listed twice is duplicated), so that every per-token feature
(``input_ids``, ``attention_mask``, ``token_type_ids``) is rebuilt the same way by :func:`apply_indices`.
Special tokens ([CLS], [SEP], …) are never duplicated, cropped or deleted.

Randomness is reproducible and resumable without saving generator state: every row draws from a NumPy
generator seeded with ``(seed, salt, row key)`` for a *static* augmentation (the same view every time the
sentence is drawn) or ``(seed, salt, draw, row key)`` for a *dynamic* one, where ``draw`` counts training
batches and is a buffer of the augmenter module (so it travels in checkpoints). The row key is the dataset
row id when the loss receives one (embedkit methods pass row ids as labels), otherwise a hash of the row's
tokens (static) or its position in the batch (dynamic).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

# --------------------------------------------------------------------------------------------------------
# Pure operations on one row


def repetition_bound(length: int, dup_rate: float, max_dup: int = 10) -> int:
    """ESimCSE's bound ``min(max_dup, ⌊dup_rate·L⌋)``: k is drawn uniformly from ``{0, …, bound − 1}``
    (no repetition when the bound is 0)."""
    return min(max_dup, int(np.floor(dup_rate * length)))


def repetition_indices(
    special: Sequence[bool], dup_rate: float, rng: np.random.Generator, max_dup: int = 10
) -> list[int]:
    """Source positions of a row after ESimCSE sub-word repetition.

    With ``L = len(special)`` (special tokens included), k ~ U{0 … min(max_dup, ⌊dup_rate·L⌋) − 1}; k
    positions are chosen without replacement among the non-special tokens and each is duplicated in place.
    """
    length = len(special)
    bound = repetition_bound(length, dup_rate, max_dup)
    if bound <= 0:
        return list(range(length))
    candidates = [i for i, s in enumerate(special) if not s]
    k = min(int(rng.integers(0, bound)), len(candidates))
    chosen = set(rng.choice(candidates, size=k, replace=False).tolist()) if k else set()
    out: list[int] = []
    for i in range(length):
        out.append(i)
        if i in chosen:
            out.append(i)
    return out


def repeat_words(text: str, dup_rate: float, rng: np.random.Generator, max_dup: int = 10) -> str:
    """ESimCSE word repetition on whitespace words (before tokenisation): the same rule as
    :func:`repetition_indices` with L = the number of words. Words are re-joined with single spaces."""
    words = text.split()
    idx = repetition_indices([False] * len(words), dup_rate, rng, max_dup)
    return " ".join(words[i] for i in idx)


def _content_span(special: Sequence[bool]) -> tuple[int, int]:
    """[start, end) of the row between its leading and trailing special tokens."""
    start, end = 0, len(special)
    while start < end and special[start]:
        start += 1
    while end > start and special[end - 1]:
        end -= 1
    return start, end


def crop_indices(
    special: Sequence[bool], rng: np.random.Generator, min_ratio: float = 0.1, max_ratio: float = 0.5
) -> list[int]:
    """Contriever's random crop: a contiguous span of ``max(1, ⌊r·n⌋)`` content tokens, r ~ U(min_ratio,
    max_ratio), n the content length, at a uniform start; leading and trailing special tokens are kept."""
    start, end = _content_span(special)
    n = end - start
    if n <= 0:
        return list(range(len(special)))
    ratio = rng.uniform(min_ratio, max_ratio)
    length = max(1, int(n * ratio))
    offset = int(rng.integers(0, n - length + 1))
    return list(range(start)) + list(range(start + offset, start + offset + length)) + list(
        range(end, len(special))
    )


def deletion_indices(
    special: Sequence[bool], rng: np.random.Generator, p: float = 0.1, keep: Sequence[int] | None = None
) -> list[int]:
    """Contriever's token deletion: drop each non-special position of ``keep`` (default: the whole row)
    independently with probability ``p``."""
    keep = list(range(len(special))) if keep is None else list(keep)
    if p <= 0:
        return keep
    draws = rng.random(len(keep))
    return [i for i, u in zip(keep, draws, strict=True) if special[i] or u >= p]


# --------------------------------------------------------------------------------------------------------
# Batches of tokenised features


def row_tokens(features: dict[str, Tensor], special_ids: set[int]) -> list[tuple[list[int], list[bool]]]:
    """For each row: (positions holding real tokens, whether each is a special token)."""
    ids = features["input_ids"].tolist()  # one device-to-host copy per tensor, not one per row
    mask = features.get("attention_mask")
    masks = mask.tolist() if mask is not None else [[1] * len(row) for row in ids]
    out = []
    for row, row_mask in zip(ids, masks, strict=True):
        positions = [p for p, m in enumerate(row_mask) if m]
        out.append((positions, [row[p] in special_ids for p in positions]))
    return out


def apply_indices(
    features: dict[str, Tensor], index_rows: list[list[int]], pad_id: int, max_length: int | None = None,
    special_rows: list[list[bool]] | None = None,
) -> dict[str, Tensor]:
    """Rebuild a tokenised batch from per-row source positions, right-padded to the longest row.

    Every 2-D tensor shaped like ``input_ids`` is gathered the same way (padding: ``pad_id`` for
    ``input_ids``, 0 otherwise); other entries are passed through. Rows longer than ``max_length`` lose
    content tokens from the end (trailing special tokens are kept when ``special_rows`` is given).
    """
    if max_length is not None:
        index_rows = [_truncate(ix, sp, max_length) for ix, sp in
                      zip(index_rows, special_rows or [None] * len(index_rows), strict=True)]
    ids = features["input_ids"]
    width = max(1, max(len(ix) for ix in index_rows))
    out: dict[str, Tensor] = {}
    for key, value in features.items():
        if isinstance(value, Tensor) and value.dim() == 2 and value.shape == ids.shape:
            new = value.new_full((value.shape[0], width), pad_id if key == "input_ids" else 0)
            for r, ix in enumerate(index_rows):
                if ix:
                    new[r, : len(ix)] = value[r, torch.as_tensor(ix, device=value.device)]
            out[key] = new
        else:
            out[key] = value
    return out


def _truncate(ix: list[int], special: list[bool] | None, max_length: int) -> list[int]:
    if len(ix) <= max_length:
        return ix
    if special is None:
        return ix[:max_length]
    # ``special`` is indexed by source position; keep the trailing specials of the row.
    tail: list[int] = []
    for i in reversed(ix):
        if i < len(special) and special[i]:
            tail.insert(0, i)
        else:
            break
    return ix[: max_length - len(tail)] + tail


def _crc(values: list[int]) -> int:
    return zlib.crc32(np.asarray(values, dtype=np.int64).tobytes())


class SeededAugmenter(nn.Module):
    """Base for the augmenters: a seed, a static/dynamic switch and a checkpointed draw counter.

    ``draws`` (a one-element int64 buffer) counts the training batches seen, so a resumed run continues with
    exactly the views an uninterrupted run would have drawn.
    """

    def __init__(self, seed: int = 0, static: bool = False, salt: int = 0) -> None:
        super().__init__()
        self.seed = int(seed)
        self.static = static
        self.salt = int(salt)
        self.register_buffer("draws", torch.zeros(1, dtype=torch.long))

    def row_rngs(self, keys: list[int], view: int = 0) -> list[np.random.Generator]:
        """One generator per row, from (seed, salt, view[, draw], row key)."""
        base = [self.seed, self.salt, view]
        if not self.static:
            base.append(int(self.draws.item()))
        return [np.random.default_rng(base + [int(k) & 0xFFFFFFFFFFFF]) for k in keys]

    def row_keys(self, rows: Tensor | None, tokens: list[list[int]] | None, n: int) -> list[int]:
        """Dataset row ids when given; else a token hash (static) or the batch position (dynamic)."""
        if rows is not None:
            return [int(r) for r in rows.flatten().tolist()]
        if self.static and tokens is not None:
            return [_crc(t) for t in tokens]
        return list(range(n))

    def advance(self) -> None:
        """Count one training batch (call once per training forward)."""
        self.draws += 1


class SubwordRepetition(SeededAugmenter):
    """ESimCSE sub-word repetition on tokenised features (the reference code's default mode).

    Args:
        special_ids: ids of the tokenizer's special tokens (never duplicated).
        pad_id: the padding id for the re-padded batch.
        dup_rate: the rate in ``min(max_dup, ⌊dup_rate·L⌋)`` (0.32 for BERT in the paper).
        max_dup: cap on the bound (10 in the reference code).
        static: one augmentation per sentence for the whole run instead of a new one per draw.
        seed: training seed.
        max_length: cap on the augmented length (the encoder's position limit).
    """

    def __init__(
        self, special_ids: set[int], pad_id: int, dup_rate: float = 0.32, max_dup: int = 10, static: bool = False,
        seed: int = 0, max_length: int | None = None,
    ) -> None:
        super().__init__(seed=seed, static=static, salt=1)
        self.special_ids = set(special_ids)
        self.pad_id = pad_id
        self.dup_rate = dup_rate
        self.max_dup = max_dup
        self.max_length = max_length

    def forward(self, features: dict[str, Tensor], rows: Tensor | None = None) -> dict[str, Tensor]:
        rows_info = row_tokens(features, self.special_ids)
        tokens = None
        if rows is None and self.static:  # only a static draw without row ids is keyed by the tokens
            ids = features["input_ids"].tolist()
            tokens = [[ids[r][p] for p in pos] for r, (pos, _) in enumerate(rows_info)]
        rngs = self.row_rngs(self.row_keys(rows, tokens, len(rows_info)))
        index_rows, special_rows = [], []
        for (pos, special), rng in zip(rows_info, rngs, strict=True):
            local = repetition_indices(special, self.dup_rate, rng, self.max_dup)
            index_rows.append([pos[i] for i in local])
            full = [False] * features["input_ids"].shape[1]
            for p, s in zip(pos, special, strict=True):
                full[p] = s
            special_rows.append(full)
        return apply_indices(features, index_rows, self.pad_id, self.max_length, special_rows)


class WordRepetition(SeededAugmenter):
    """ESimCSE word repetition on whitespace words, before tokenisation.

    Needs the raw sentences and the dataset row id of every batch row (``rows``; embedkit methods pass them
    as the batch labels) and a ``tokenize`` function (``SentenceTransformer.preprocess``).
    """

    def __init__(
        self, texts: Sequence[str], tokenize: Callable[[list[str]], dict[str, Tensor]], dup_rate: float = 0.32,
        max_dup: int = 10, static: bool = False, seed: int = 0,
    ) -> None:
        super().__init__(seed=seed, static=static, salt=2)
        self.texts = texts
        self.tokenize = tokenize
        self.dup_rate = dup_rate
        self.max_dup = max_dup

    def forward(self, features: dict[str, Tensor], rows: Tensor | None = None) -> dict[str, Tensor]:
        if rows is None:
            raise ValueError("word repetition needs the dataset row id of each batch row (passed as labels)")
        keys = self.row_keys(rows, None, len(rows))
        texts = [repeat_words(self.texts[k], self.dup_rate, rng, self.max_dup)
                 for k, rng in zip(keys, self.row_rngs(keys), strict=True)]
        device = features["input_ids"].device
        return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in self.tokenize(texts).items()}


class CropAndDelete(SeededAugmenter):
    """Contriever's positive views: an independent random crop (span ratio ``min_ratio``–``max_ratio``)
    followed by token deletion with probability ``deletion``, on tokenised features.

    ``forward(features, rows, view)``: ``view`` (0, 1, …) selects an independent draw for the same rows.
    """

    def __init__(
        self, special_ids: set[int], pad_id: int, min_ratio: float = 0.1, max_ratio: float = 0.5,
        deletion: float = 0.1, seed: int = 0,
    ) -> None:
        super().__init__(seed=seed, static=False, salt=3)
        self.special_ids = set(special_ids)
        self.pad_id = pad_id
        self.min_ratio = min_ratio
        self.max_ratio = max_ratio
        self.deletion = deletion

    def forward(self, features: dict[str, Tensor], rows: Tensor | None = None, view: int = 0) -> dict[str, Tensor]:
        rows_info = row_tokens(features, self.special_ids)
        rngs = self.row_rngs(self.row_keys(rows, None, len(rows_info)), view=view)
        index_rows = []
        for (pos, special), rng in zip(rows_info, rngs, strict=True):
            local = crop_indices(special, rng, self.min_ratio, self.max_ratio)
            local = deletion_indices(special, rng, self.deletion, keep=local)
            index_rows.append([pos[i] for i in local])
        return apply_indices(features, index_rows, self.pad_id)


def special_token_ids(tokenizer) -> set[int]:
    """The ids a tokenizer treats as special (CLS, SEP, PAD, …)."""
    return {int(i) for i in getattr(tokenizer, "all_special_ids", [])}


def position_limit(model) -> int | None:
    """The longest input the encoder accepts (its tokenizer's ``model_max_length`` when sensible)."""
    tokenizer = getattr(model, "tokenizer", None)
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit <= 100_000 else None
