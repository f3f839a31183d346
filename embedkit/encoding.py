"""The one way embedkit embeds texts outside the training graph: :func:`encode` (evaluation, ``embedkit encode``,
mining, reference models). Fast and exact: tokenise once, batch by token length, optional bf16 autocast.

``SentenceTransformer.encode`` tokenises every batch on its own and sorts by character length. For an
evaluation that embeds tens of thousands of sentences once, :func:`embed` instead runs the model's own
preprocessing over large chunks of sentences (a few calls in all), sorts each chunk by true token length, and
cuts each batch out of the chunk's padded token matrix, trimmed to the longest sentence in the batch. The
tensors each batch sees are exactly those ``encode`` would build (same tokenizer call, same truncation,
padding to the batch's longest), so the embeddings are the same; only the work is less. Models whose first
module does not give plain padded token matrices (static embeddings, flattened flash-attention inputs) fall back
to ``model.encode``.

Prompts are applied as ``SentenceTransformer.encode`` applies them: ``prompt`` (a text), else
``model.prompts[prompt_name]``, else the model's ``default_prompt_name`` prompt, is handed to the model's own
preprocessing, which prepends it and records ``prompt_length``, so a ``Pooling(include_prompt=False)`` leaves
the prompt tokens out exactly as in ``encode``.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import huggingface_hub.utils as hub_utils
import numpy as np
import torch
from tqdm.auto import tqdm

from embedkit.errors import EmbedkitError
from embedkit.model_ref import embedding_dim

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

AUTOCAST_CHOICES = ("none", "bf16", "auto")
# Token positions a forward pass may hold per unit of batch_size: batch_size=128 → 2,048 positions. Measured on
# the 2-core CPU (MiniLM, 3,000 STS sentences, 5 interleaved repeats): 10-14% faster than 128 rows of any width,
# because long rows come in smaller batches; 4,096 and 8,192 positions were slower.
TOKENS_PER_ROW = 16


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 matrix multiplies natively (a bf16-capable GPU, or a CPU with AMX/AVX512-BF16)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_autocast(autocast: str | None, device: torch.device) -> str:
    """``none`` | ``bf16`` | ``auto`` → ``none`` or ``bf16``. ``auto`` is bf16 only where the hardware has it.

    The default everywhere is ``none`` (see docs/evaluation.md for the measured effect of bf16 on scores).
    """
    choice = (autocast or "none").lower()
    if choice not in AUTOCAST_CHOICES:
        raise EmbedkitError(f"autocast {autocast!r}: expected one of {', '.join(AUTOCAST_CHOICES)}")
    if choice == "auto":
        return "bf16" if bf16_supported(device) else "none"
    return choice


def _autocast_context(mode: str, device: torch.device):
    if mode == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def show_bars(progress: bool | None) -> bool:
    """Whether to draw progress bars: ``progress`` when given (``--no-progress`` is False), else whether stderr,
    where tqdm draws, is a terminal (so a log file or a CI job gets no carriage-return spam)."""
    if progress is not None:
        return progress
    isatty = getattr(sys.stderr, "isatty", None)  # decided here: tqdm's disable=None misses a wrapped terminal
    return bool(isatty and isatty())


def progress_bar(total: int, show: bool | None, desc: str = "encoding", unit: str = " sent") -> tqdm:
    """A tqdm bar over ``total`` items (sentences unless ``unit`` says otherwise) on stderr. ``show``: ``True``
    always, ``False`` never, ``None`` only when stderr is a terminal (:func:`show_bars`). Redrawn at most once a
    second."""
    return tqdm(total=total, desc=desc, unit=unit, disable=not show_bars(show), file=sys.stderr, mininterval=1.0,
                leave=False, dynamic_ncols=True)


@contextmanager
def quiet_bars(quiet: bool) -> Iterator[None]:
    """With ``quiet``: no tqdm bar from the libraries a run goes through (transformers' weight loading and saving,
    datasets, huggingface_hub, sentence-transformers' model card), each switched back as it was afterwards."""
    if not quiet:
        yield
        return
    import datasets
    import sentence_transformers.base.model_card as st_card
    import transformers.utils.logging as tf_logging

    switches = [(tf_logging.is_progress_bar_enabled(), tf_logging.disable_progress_bar, tf_logging.enable_progress_bar),
                (datasets.is_progress_bar_enabled(), datasets.disable_progress_bars, datasets.enable_progress_bars),
                (not hub_utils.are_progress_bars_disabled(), hub_utils.disable_progress_bars,
                 hub_utils.enable_progress_bars)]
    card_tqdm = st_card.tqdm  # the card's "Computing widget examples" bar has no switch of its own
    for _, off, _ in switches:
        off()
    st_card.tqdm = functools.partial(card_tqdm, disable=True)
    try:
        yield
    finally:
        st_card.tqdm = card_tqdm
        for was_on, _, on in switches:
            if was_on:
                on()


def _preprocess(model: SentenceTransformer, sentences: list[str], prompt: str | None = None) -> dict[str, Any]:
    fn = getattr(model, "preprocess", None) or model.tokenize  # sentence-transformers >= 6 / 5
    return fn(sentences, prompt=prompt) if prompt else fn(sentences)


def resolve_prompt(model: SentenceTransformer, prompt: str | None = None, prompt_name: str | None = None) -> str | None:
    """The prompt text ``SentenceTransformer.encode`` would use: ``prompt`` when given (even ``""``), else
    ``model.prompts[prompt_name]``, else the prompt named by ``model.default_prompt_name``, else none."""
    if prompt is not None:
        return prompt
    prompts = getattr(model, "prompts", None) or {}
    if prompt_name is not None:
        if prompt_name not in prompts:
            have = ", ".join(sorted(prompts)) or "none"
            raise EmbedkitError(f"prompt_name {prompt_name!r}: the model has no such prompt (its prompts: {have})")
        return prompts[prompt_name]
    default = getattr(model, "default_prompt_name", None)
    return prompts.get(default) if default else None


def _padding_side(mask: torch.Tensor) -> str | None:
    """``right`` or ``left`` when every row of the attention mask is one contiguous block at that side."""
    width = mask.shape[1]
    lengths = mask.sum(dim=1, keepdim=True)
    positions = torch.arange(width).unsqueeze(0)
    if torch.equal(mask.bool(), positions < lengths):
        return "right"
    if torch.equal(mask.bool(), positions >= width - lengths):
        return "left"
    return None


def _token_features(model: SentenceTransformer, sentences: list[str],
                    prompt: str | None = None) -> tuple[dict[str, Any], str] | None:
    """All sentences preprocessed at once, or ``None`` when the fast path does not apply to this model."""
    from sentence_transformers.models import Transformer

    if not len(model) or not isinstance(model[0], Transformer):
        return None
    features = _preprocess(model, sentences, prompt)
    mask = features.get("attention_mask")
    if not isinstance(mask, torch.Tensor) or mask.ndim != 2 or mask.shape[0] != len(sentences):
        return None
    for value in features.values():
        if isinstance(value, torch.Tensor) and value.shape[:2] != mask.shape:
            return None  # e.g. pixel values or flattened inputs: not sliceable per sentence
    side = _padding_side(mask)
    if side is None:
        return None
    return features, side


# Position-embedding tables that reserve slots before the first token (RoBERTa's padding_idx + 1 = 2 offset).
_POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2, "camembert": 2, "longformer": 2, "mpnet": 2}
# A tokenizer without a configured limit reports this sentinel (transformers' VERY_LARGE_INTEGER is 1e30).
_NO_LIMIT = 10**6


def model_max_length(model: SentenceTransformer) -> int | None:
    """The longest input the model itself can read, in tokens: the encoder's position table
    (``max_position_embeddings``, less RoBERTa's offset), else the limit its tokenizer was saved with. Not
    ``model.max_seq_length``: sentence-transformers makes that the tokenizer's ``model_max_length`` too, and a
    training run sets it to its training length. ``None`` when neither is known (``max_seq_length`` then stands)."""
    if not len(model):
        return None
    first = input_modules(model)[0]
    config = getattr(getattr(first, "auto_model", None), "config", None)
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        return positions - _POSITION_OFFSET.get(getattr(config, "model_type", ""), 0)
    saved = (getattr(getattr(first, "tokenizer", None), "init_kwargs", None) or {}).get("model_max_length")
    return saved if isinstance(saved, int) and 0 < saved < _NO_LIMIT else None


def input_modules(model: SentenceTransformer) -> list[Any]:
    """The module(s) that read the text: the first module, or each route's first under a ``Router`` (a model
    with experts, docs/experts.md)."""
    first = model[0]
    routes = getattr(first, "sub_modules", None)
    return [seq[0] for seq in routes.values()] if isinstance(routes, torch.nn.ModuleDict) else [first]


@contextmanager
def sequence_length(model: SentenceTransformer, length: int | None) -> Iterator[int | None]:
    """Encode with ``model.max_seq_length = length`` inside the block (restored after); ``None`` leaves it.
    Yields the length in force."""
    if length is None or not hasattr(model, "max_seq_length"):
        yield getattr(model, "max_seq_length", None)
        return
    before = model.max_seq_length
    routes = [m for m in input_modules(model) if m is not model[0] and hasattr(m, "max_seq_length")]
    route_before = [m.max_seq_length for m in routes]
    model.max_seq_length = length
    for m in routes:  # a Router's routes: each reads at the length too
        m.max_seq_length = length
    try:
        yield length
    finally:
        model.max_seq_length = before
        for m, value in zip(routes, route_before, strict=True):
            m.max_seq_length = value


def check_dim(dim: int | None, width: int | None, what: str = "dim") -> None:
    """Refuse a Matryoshka dimension that is not in ``1..width`` (the model's embedding dimension)."""
    if dim is None:
        return
    if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
        raise EmbedkitError(f"{what} {dim!r}: expected a positive number of leading embedding coordinates")
    if width is not None and dim > width:
        raise EmbedkitError(f"{what} {dim}: larger than the model's embedding dimension ({width})")


def truncate(emb: np.ndarray, dim: int | None = None, normalize: bool = False) -> np.ndarray:
    """Matryoshka truncation: the first ``dim`` coordinates of each row (all with ``None``), THEN, with
    ``normalize``, each row scaled to unit length. Returns a new array (``emb`` is never written to)."""
    out = emb[:, :dim] if dim is not None else emb
    if normalize:
        return out / np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
    return np.array(out, copy=True)


def encode(model: SentenceTransformer, texts: list[str], batch_size: int = 128, *, normalize: bool = False,
           autocast: str | None = None, dtype: Any = np.float32, device: Any = None, prompt_name: str | None = None,
           prompt: str | None = None, dim: int | None = None, show_progress_bar: bool | None = False) -> np.ndarray:
    """Embeddings of ``texts``, row ``i`` for ``texts[i]``, each distinct text encoded once.

    ``dim`` keeps the first ``dim`` coordinates (Matryoshka truncation; refused unless in 1..the model's
    dimension); ``normalize`` then scales each row to unit length, after the cast to ``dtype`` (float32 by
    default; the STS suite asks for float64): truncate first, normalise second (:func:`truncate`).
    ``autocast`` is ``none`` (default), ``bf16`` or ``auto``; ``device`` (e.g. ``cuda:0``) moves the model
    there for the call and back after it; ``prompt_name`` / ``prompt`` as in ``SentenceTransformer.encode`` (the
    query side of a retrieval evaluation passes ``prompt_name="query"``, the document side ``"document"``;
    without either the model's default prompt, if any, applies). The rows equal ``SentenceTransformer.encode``'s.
    ``show_progress_bar``: a bar over the distinct texts on stderr (:func:`progress_bar`; ``None``: only on a
    terminal; off by default).
    """
    if dim is not None:
        check_dim(dim, embedding_dim(model))
    prompt = resolve_prompt(model, prompt, prompt_name)
    unique = list(dict.fromkeys(texts))
    original = next(model.parameters()).device if device is not None else None
    if device is not None and torch.device(device) != original:
        model.to(device)
    try:
        emb = embed(model, unique, batch_size=batch_size, autocast=autocast,
                    prompt=prompt if prompt is not None else "",
                    show_progress_bar=show_progress_bar).astype(dtype, copy=False)
    finally:
        if device is not None and torch.device(device) != original:
            model.to(original)
    if len(unique) < len(texts):
        row = {text: i for i, text in enumerate(unique)}
        emb = emb[[row[t] for t in texts]]
    if dim is not None:
        return truncate(emb, dim, normalize)
    if normalize:  # in place: no second copy of a large matrix
        emb /= np.clip(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12, None)
    return emb


def embed(
    model: SentenceTransformer,
    sentences: list[str],
    batch_size: int = 128,
    autocast: str | None = None,
    chunk_size: int = 4096,
    prompt: str | None = None,
    show_progress_bar: bool | None = False,
) -> np.ndarray:
    """Sentence embeddings (float32, as the model outputs them, not re-normalised), in the order given.

    Pass each sentence once (see :func:`encode`). ``autocast`` is
    ``none`` (default), ``bf16`` or ``auto`` (bf16 where the hardware supports it). ``batch_size`` sets the
    size of a forward pass in token positions (``batch_size * TOKENS_PER_ROW``; see :func:`_token_batches`),
    so that memory is bounded as with ``batch_size`` rows of 16 tokens. Sentences are
    preprocessed ``chunk_size`` at a time, in order of character length, so that each chunk's padded token
    matrix stays narrow (converting one matrix padded to the longest of all sentences costs more than
    tokenising); batches are cut inside a chunk, by token length. ``prompt`` is the prompt text
    (:func:`resolve_prompt`; ``None``: the model's default prompt, ``""``: none). ``show_progress_bar`` as in
    :func:`encode`.
    """
    prompt = resolve_prompt(model, prompt)
    if batch_size <= 0:
        raise EmbedkitError(f"batch_size must be positive, got {batch_size}")
    if chunk_size < batch_size:
        raise EmbedkitError(f"chunk_size must be at least batch_size ({batch_size}), got {chunk_size}")
    if not sentences:
        return np.zeros((0, embedding_dim(model) or 0), dtype=np.float32)
    device = model.device
    mode = resolve_autocast(autocast, device)
    was_training = model.training
    model.eval()
    order = sorted(range(len(sentences)), key=lambda i: -len(sentences[i]))  # longest first: memory errors show early
    out: np.ndarray | None = None
    bar = progress_bar(len(sentences), show_progress_bar)
    try:
        with torch.inference_mode(), _autocast_context(mode, device):
            for start in range(0, len(order), chunk_size):
                ids = order[start : start + chunk_size]
                chunk = [sentences[i] for i in ids]
                prepared = _token_features(model, chunk, prompt)
                if prepared is None:
                    emb = np.asarray(model.encode(chunk, batch_size=batch_size, convert_to_numpy=True,
                                                  show_progress_bar=False, prompt=prompt or ""), dtype=np.float32)
                    bar.update(len(chunk))
                else:
                    emb = _embed_prepared(model, prepared, batch_size, device, bar.update)
                if out is None:
                    out = np.empty((len(sentences), emb.shape[1]), dtype=np.float32)
                out[ids] = emb
    finally:
        bar.close()
        model.train(was_training)
    assert out is not None
    return out


def _token_batches(lengths: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Row indices of each batch, longest rows first; a batch holds up to ``batch_size * TOKENS_PER_ROW`` token
    positions (rows × padded width), so short rows go in bigger batches and long rows in smaller ones."""
    order = torch.argsort(-lengths, stable=True)
    sorted_lengths = lengths[order].tolist()
    budget = batch_size * TOKENS_PER_ROW
    batches, start = [], 0
    while start < len(order):
        rows = max(1, budget // max(1, sorted_lengths[start]))  # the first row is the widest of its batch
        batches.append(order[start : start + rows])
        start += rows
    return batches


def _embed_prepared(model: SentenceTransformer, prepared: tuple[dict[str, Any], str], batch_size: int,
                    device: torch.device, done: Callable[[int], Any] | None = None) -> np.ndarray:
    """Embeddings of one preprocessed chunk, in its order; each batch trimmed to its longest row. ``done(n)`` is
    called after each batch of ``n`` rows (the progress bar)."""
    features, side = prepared
    lengths = features["attention_mask"].sum(dim=1)
    out: np.ndarray | None = None
    truncate_dim = getattr(model, "truncate_dim", None)
    for idx in _token_batches(lengths, batch_size):
        width = int(lengths[idx].max())
        batch = {}
        for key, value in features.items():
            if isinstance(value, torch.Tensor):
                rows = value[idx]
                batch[key] = (rows[:, :width] if side == "right" else rows[:, -width:]).to(device)
            else:
                batch[key] = value
        emb = model(batch)["sentence_embedding"]
        if truncate_dim:
            emb = emb[..., :truncate_dim]
        emb = emb.float().cpu().numpy()
        if out is None:
            out = np.empty((len(lengths), emb.shape[1]), dtype=np.float32)
        out[idx.numpy()] = emb
        if done is not None:
            done(len(idx))
    assert out is not None
    return out
