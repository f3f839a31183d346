"""Vocabulary heads: map a sentence embedding to logits over the tokenizer's vocabulary.

Three sources, tried in this order by :func:`build_vocab_head` with ``kind="auto"``:

* **pretrained MLM head** of a BERT-like checkpoint — ``transform`` (dense → activation → LayerNorm) then a
  decoder tied to the input embeddings plus a bias. Read from the backbone's safetensors checkpoint under
  ``cls.predictions.*`` (BERT), ``lm_head.{dense,layer_norm,bias}`` (RoBERTa) or ``vocab_*`` (DistilBERT);
* **decoder-LM head** — ``lm_head.weight`` of a causal LM checkpoint (untied), or the input embeddings when
  the config ties them;
* **tied linear head** — ``logits = s · (h Eᵀ) + b`` with ``E`` the input embedding matrix, a learnable
  scalar ``s`` (starts at 1) and bias ``b`` (starts at 0): for models without a usable head, such as the
  sentence-transformers all-MiniLM-L6-v2 checkpoint.

The head is *not* a module of the saved sentence-transformers model: it lives in the loss, so the trainer
saves its own parameters (``head.*``) as method state. A tied decoder is the model's embedding matrix; it is
held by reference and not registered, so it is neither saved twice nor handed to the optimizer twice.
:func:`save_head` / :func:`load_head` write and read the head's own parameters (for ``embedkit inspect``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

from embedkit.errors import EmbedkitError
from embedkit.paths import atomic_path

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

HeadKind = Literal["auto", "pretrained", "tied"]
HEAD_FILE = "text2token_head.safetensors"

# Checkpoint key layouts of pretrained heads: our name → candidate checkpoint names.
_MLM_LAYOUTS = {
    "bert": {
        "transform.dense.weight": ["cls.predictions.transform.dense.weight"],
        "transform.dense.bias": ["cls.predictions.transform.dense.bias"],
        "transform.norm.weight": [
            "cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.LayerNorm.gamma",
        ],
        "transform.norm.bias": [
            "cls.predictions.transform.LayerNorm.bias", "cls.predictions.transform.LayerNorm.beta",
        ],
        "bias": ["cls.predictions.bias", "cls.predictions.decoder.bias"],
    },
    "roberta": {
        "transform.dense.weight": ["lm_head.dense.weight"],
        "transform.dense.bias": ["lm_head.dense.bias"],
        "transform.norm.weight": ["lm_head.layer_norm.weight"],
        "transform.norm.bias": ["lm_head.layer_norm.bias"],
        "bias": ["lm_head.bias", "lm_head.decoder.bias"],
    },
    "distilbert": {
        "transform.dense.weight": ["vocab_transform.weight"],
        "transform.dense.bias": ["vocab_transform.bias"],
        "transform.norm.weight": ["vocab_layer_norm.weight"],
        "transform.norm.bias": ["vocab_layer_norm.bias"],
        "bias": ["vocab_projector.bias"],
    },
}
_ACTIVATION_DEFAULT = {"bert": None, "roberta": "gelu", "distilbert": "gelu"}


class HeadTransform(nn.Module):
    """The MLM head's transform: ``LayerNorm(act(W h + b))``."""

    def __init__(self, hidden: int, activation: str = "gelu", eps: float = 1e-12) -> None:
        super().__init__()
        from transformers.activations import ACT2FN

        self.dense = nn.Linear(hidden, hidden)
        self.act = ACT2FN[activation]
        self.norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.act(self.dense(x)))


class VocabHead(nn.Module):
    """``logits = s · (transform(h) Wᵀ) + b`` over the vocabulary.

    ``W`` is either the (unregistered) input embedding module of the encoder — a tied decoder that trains
    with the encoder — or an own ``decoder_weight`` parameter (an untied LM head). ``transform`` is present
    for pretrained MLM heads; the learnable scale ``s`` (stored as ``logit_scale``, its log) only for the
    plain tied head, which otherwise could not sharpen its output on a unit-norm embedding.

    Args:
        embedding: the encoder's input embedding module (the tied decoder).
        transform: the MLM transform, or ``None``.
        decoder_weight: an untied decoder matrix (vocab × hidden), or ``None`` to tie to ``embedding``.
        learn_scale: add the learnable logit scale.
        source: a short description of where the head came from (shown by ``embedkit inspect``).
    """

    def __init__(
        self, embedding: nn.Embedding, transform: HeadTransform | None = None, decoder_weight: Tensor | None = None,
        learn_scale: bool = False, source: str = "",
    ) -> None:
        super().__init__()
        object.__setattr__(self, "_embedding", embedding)  # held by reference: part of the model, not the head
        self.transform = transform
        vocab = embedding.weight.shape[0] if decoder_weight is None else decoder_weight.shape[0]
        self.decoder_weight = nn.Parameter(decoder_weight.detach().clone()) if decoder_weight is not None else None
        self.bias = nn.Parameter(torch.zeros(vocab, dtype=embedding.weight.dtype, device=embedding.weight.device))
        self.logit_scale = nn.Parameter(torch.zeros(1, device=embedding.weight.device)) if learn_scale else None
        self.source = source

    @property
    def vocab_size(self) -> int:
        return self.bias.shape[0]

    @property
    def kind(self) -> str:
        if self.transform is not None:
            return "mlm"
        return "lm" if self.decoder_weight is not None else "tied"

    def decoder(self) -> Tensor:
        """The vocabulary matrix (vocab × hidden)."""
        return self.decoder_weight if self.decoder_weight is not None else self._embedding.weight

    def forward(self, h: Tensor) -> Tensor:
        if self.transform is not None:
            h = self.transform(h)
        weight = self.decoder()
        logits = h.to(weight.dtype) @ weight.T
        if self.logit_scale is not None:
            logits = logits * self.logit_scale.exp()
        return logits + self.bias

    def frozen_copy(self, embedding: nn.Embedding) -> VocabHead:
        """A copy of this head (own parameters copied, no gradient), tied to another model's ``embedding``."""
        transform = None
        if self.transform is not None:
            transform = HeadTransform(self.transform.dense.in_features, "gelu", self.transform.norm.eps)
            transform.act = self.transform.act
        copy = VocabHead(embedding, transform, self.decoder_weight, self.logit_scale is not None, self.source)
        copy.load_state_dict(self.state_dict())
        return copy.to(embedding.weight.device).requires_grad_(False).eval()


def input_embedding(model: SentenceTransformer) -> nn.Embedding:
    """The input (word) embedding module of a SentenceTransformer's first module."""
    auto = getattr(model[0], "auto_model", None)
    if auto is None or not hasattr(auto, "get_input_embeddings"):
        raise EmbedkitError("vocabulary head: the model's first module is not a transformers encoder")
    return auto.get_input_embeddings()


def _checkpoint_source(model: SentenceTransformer) -> tuple[str, str | None]:
    """(name or path, revision) of the backbone checkpoint the model's encoder was loaded from."""
    auto = model[0].auto_model
    return str(getattr(auto.config, "_name_or_path", "") or ""), getattr(auto.config, "_commit_hash", None)


def _safetensors_files(name: str, revision: str | None = None) -> list[Path]:
    """The safetensors weight files of a local folder or (when reachable) a Hub repo; [] when none."""
    local = Path(name)
    if local.is_dir():
        index = local / "model.safetensors.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [local / s for s in shards]
        return [local / "model.safetensors"] if (local / "model.safetensors").is_file() else []
    if not name or local.exists():
        return []
    try:
        from huggingface_hub import hf_hub_download

        return [Path(hf_hub_download(name, "model.safetensors", revision=revision))]
    except Exception as err:  # noqa: BLE001 - offline or no such file: the caller falls back to a tied head
        logger.info("vocabulary head: no safetensors checkpoint for %s (%s)", name, type(err).__name__)
        return []


def _read_keys(files: list[Path], wanted: set[str]) -> dict[str, Tensor]:
    from safetensors import safe_open

    found: dict[str, Tensor] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as fh:
            for key in set(fh.keys()) & wanted:
                found[key] = fh.get_tensor(key)
    return found


def pretrained_head(model: SentenceTransformer) -> VocabHead | None:
    """The backbone checkpoint's own MLM or LM head, or ``None`` when the checkpoint has none."""
    embedding = input_embedding(model)
    config = model[0].auto_model.config
    name, revision = _checkpoint_source(model)
    files = _safetensors_files(name, revision)
    if not files:
        return None
    candidates = {k for layout in _MLM_LAYOUTS.values() for names in layout.values() for k in names}
    tensors = _read_keys(files, candidates | {"lm_head.weight"})
    device, dtype = embedding.weight.device, embedding.weight.dtype
    for family, layout in _MLM_LAYOUTS.items():
        picked = {ours: next((tensors[k] for k in names if k in tensors), None) for ours, names in layout.items()}
        if any(v is None for v in picked.values()):
            continue
        hidden = picked["transform.dense.weight"].shape[1]
        activation = _ACTIVATION_DEFAULT[family] or getattr(config, "hidden_act", "gelu")
        if not isinstance(activation, str):
            activation = "gelu"
        eps = float(getattr(config, "layer_norm_eps", 1e-12))
        head = VocabHead(embedding, HeadTransform(hidden, activation, eps), source=f"pretrained MLM head of {name}")
        head.load_state_dict({k: v.to(dtype) for k, v in picked.items()}, strict=True)
        if head.vocab_size != embedding.weight.shape[0]:
            raise EmbedkitError(
                f"vocabulary head: {name} has an MLM bias of {head.vocab_size} entries for "
                f"{embedding.weight.shape[0]} input embeddings"
            )
        return head.to(device)
    if "lm_head.weight" in tensors:
        weight = tensors["lm_head.weight"].to(dtype)
        tied = bool(getattr(config, "tie_word_embeddings", False)) and weight.shape == embedding.weight.shape
        head = VocabHead(embedding, decoder_weight=None if tied else weight, source=f"LM head of {name}")
        return head.to(device)
    return None


def build_vocab_head(model: SentenceTransformer, kind: HeadKind = "auto", freeze: bool = False) -> VocabHead:
    """The vocabulary head for ``model``.

    ``auto``: the checkpoint's MLM/LM head when it has one, else the tied linear head. ``pretrained``:
    the checkpoint's head, an error when there is none. ``tied``: always the tied linear head.
    ``freeze`` stops the head's own parameters from training (a tied decoder still trains with the encoder).
    """
    head = None
    if kind in ("auto", "pretrained"):
        head = pretrained_head(model)
        if head is None and kind == "pretrained":
            name, _ = _checkpoint_source(model)
            raise EmbedkitError(
                f"method.head: 'pretrained' needs an MLM or LM head in the checkpoint of {name!r} "
                "(safetensors with cls.predictions.* / lm_head.*); none found. Use head: tied or auto."
            )
    if head is None:
        embedding = input_embedding(model)
        head = VocabHead(embedding, learn_scale=True, source="linear head tied to the input embeddings")
    if freeze:
        head.requires_grad_(False)
    return head


def save_head(head: VocabHead, path: str | Path, temperature: float = 1.0) -> Path:
    """Write the head's own parameters (not the tied embeddings) to a safetensors file, atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    meta = {"kind": head.kind, "source": head.source, "temperature": repr(float(temperature))}
    if head.transform is not None:
        meta["eps"] = repr(float(head.transform.norm.eps))
        meta["activation"] = type(head.transform.act).__name__
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return Path(path)


def head_state_from_file(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Head parameters from a :func:`save_head` file or a checkpoint's method state (keys ``head.*``)."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        for name in (HEAD_FILE, "embedkit_method_state.safetensors"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise EmbedkitError(f"{path}: no {HEAD_FILE} or embedkit_method_state.safetensors in this folder")
    if not path.is_file():
        raise EmbedkitError(f"{path}: head file not found")
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        state = {k: fh.get_tensor(k) for k in fh.keys()}
    if any(k.startswith("head.") for k in state):
        state = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
    if "bias" not in state:
        raise EmbedkitError(f"{path}: expected vocabulary-head parameters (a 'bias' entry); found {sorted(state)[:5]}")
    return state, meta


def load_head(model: SentenceTransformer, path: str | Path) -> tuple[VocabHead, dict[str, str]]:
    """Rebuild a trained head for ``model`` from :func:`head_state_from_file`; returns (head, metadata)."""
    state, meta = head_state_from_file(path)
    embedding = input_embedding(model)
    transform = None
    if "transform.dense.weight" in state:
        hidden = state["transform.dense.weight"].shape[1]
        config = model[0].auto_model.config
        activation = getattr(config, "hidden_act", "gelu")
        transform = HeadTransform(hidden, activation if isinstance(activation, str) else "gelu",
                                  float(meta.get("eps", getattr(config, "layer_norm_eps", 1e-12))))
    head = VocabHead(embedding, transform, state.get("decoder_weight"), "logit_scale" in state)
    head.source = f"{meta.get('source') or head.kind + ' vocabulary head'} (trained, from {path})"
    if head.vocab_size != state["bias"].shape[0]:
        raise EmbedkitError(
            f"{path}: the head has {state['bias'].shape[0]} vocabulary entries, the model {head.vocab_size}"
        )
    head.load_state_dict(state, strict=True)
    return head.to(embedding.weight.device).eval(), meta
