"""Vocabulary heads: map a sentence embedding to logits over the tokenizer's vocabulary.

Three sources, tried in this order by :func:`build_vocab_head` with ``kind="auto"``:

* **pretrained MLM head** of the backbone checkpoint — ``transform`` (dense → activation → LayerNorm) then a
  decoder (the input embeddings when the checkpoint ties them) plus a bias. transformers'
  ``AutoModelForMaskedLM`` loads the checkpoint from the same folder or revision; the head's layers are found
  by their role among the modules outside the base model, whatever the family calls them (BERT, RoBERTa,
  DistilBERT, ELECTRA, DeBERTa, ModernBERT, ALBERT, MPNet, ...), and the assembled head must reproduce the
  masked-LM model's own logits on a probe input. A checkpoint without MLM weights, a family without this
  head, or one whose head we do not reproduce gets no pretrained head, and says so (a warning, or the
  error of ``head: pretrained``);
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

import copy as copying
import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from huggingface_hub import hf_hub_download
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from embedkit.errors import EmbedkitError
from embedkit.log import get_logger
from embedkit.paths import atomic_path

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = get_logger(__name__)

HeadKind = Literal["auto", "pretrained", "tied"]
HEAD_FILE = "text2token_head.safetensors"


class HeadTransform(nn.Module):
    """The MLM head's transform: ``LayerNorm(act(W h + b))``.

    ``W`` maps the hidden size to the decoder's width (the same for most families; ELECTRA's generator and
    ALBERT map to a smaller embedding size). ``activation`` is a name of ``transformers.activations.ACT2FN``
    or an activation module (``act_name`` then names it, when it has a name, for :func:`save_head`).
    ModernBERT's dense and LayerNorm have no bias: ``dense_bias`` / ``norm_bias``.
    """

    def __init__(
        self, hidden: int, activation: str | nn.Module = "gelu", eps: float = 1e-12, out_features: int | None = None,
        dense_bias: bool = True, norm_bias: bool = True, act_name: str | None = None,
    ) -> None:
        super().__init__()
        from transformers.activations import ACT2FN

        width = out_features or hidden
        self.dense = nn.Linear(hidden, width, bias=dense_bias)
        self.act = ACT2FN[activation] if isinstance(activation, str) else activation
        self.act_name = activation if isinstance(activation, str) else act_name
        self.norm = nn.LayerNorm(width, eps=eps, bias=norm_bias)

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

        transform = copying.deepcopy(self.transform) if self.transform is not None else None
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
        return [Path(hf_hub_download(name, "model.safetensors", revision=revision))]
    except Exception as err:  # noqa: BLE001 - offline or no such file: the caller falls back to a tied head
        logger.info("vocabulary head: no safetensors checkpoint for %s (%s)", name, type(err).__name__)
        return []


def _read_keys(files: list[Path], wanted: set[str]) -> dict[str, Tensor]:
    found: dict[str, Tensor] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as fh:
            for key in set(fh.keys()) & wanted:
                found[key] = fh.get_tensor(key)
    return found


def _trusts_remote_code(model: SentenceTransformer) -> bool:
    """Whether the backbone was loaded with ``trust_remote_code``: the flag of the SentenceTransformer that
    loaded it or, once its modules were re-wrapped, an encoder class that comes from the checkpoint's code."""
    auto = model[0].auto_model
    return bool(getattr(model, "trust_remote_code", False)) or type(auto).__module__.startswith("transformers_modules")


def _load_masked_lm(model: SentenceTransformer, name: str, revision: str | None) -> tuple[nn.Module | None, str]:
    """(the checkpoint as ``AutoModelForMaskedLM`` in float32 eval mode, "") or (None, why not)."""
    from transformers import AutoModelForMaskedLM
    from transformers.utils import logging as hf_logging

    local = Path(name).is_dir()
    kwargs = {"trust_remote_code": _trusts_remote_code(model), "local_files_only": local, "output_loading_info": True}
    if revision and not local:
        kwargs["revision"] = revision
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report of missing head weights is ours to word
    try:
        mlm, info = AutoModelForMaskedLM.from_pretrained(name, **kwargs)
    except Exception as err:  # noqa: BLE001 - no masked-LM class for this family, offline, no such file...
        return None, f"{name} does not load as a masked-LM model ({type(err).__name__}: {str(err).splitlines()[0]})"
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys") or []) + sorted(k for k, *_ in info.get("mismatched_keys") or [])
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        return None, f"the checkpoint of {name} has no complete MLM head ({len(missing)} weights missing: {shown})"
    return mlm.float().eval(), ""


def _activation_name(module: nn.Module) -> str | None:
    """The ``ACT2FN`` name of an activation module (same class, same output on a probe), or ``None``."""
    from transformers.activations import ACT2CLS, ACT2FN

    probe = torch.linspace(-6.0, 6.0, 97)
    with torch.no_grad():
        for key in ACT2CLS:
            candidate = ACT2FN[key]
            if type(candidate) is type(module) and torch.equal(candidate(probe), module(probe)):
                return key
    return None


def _is_activation(module: nn.Module) -> bool:
    kind = type(module).__module__
    return kind == "transformers.activations" or kind.startswith("torch.nn.modules.activation")


def _mlm_head(model: SentenceTransformer, name: str, revision: str | None) -> tuple[VocabHead | None, str]:
    """The checkpoint's MLM head rebuilt as a :class:`VocabHead`, or (None, why not).

    Roles among the masked-LM model's modules outside its base model: one ``Linear`` to the vocabulary (the
    decoder; absent where the family multiplies by the word embeddings itself, as DeBERTa-v2 with
    ``legacy=False``), one other ``Linear`` (dense), one ``LayerNorm``, at most one activation module (RoBERTa
    and MPNet call ``gelu`` as a function). The head is taken as dense → activation → LayerNorm → decoder +
    bias and kept only when it reproduces the masked-LM model's logits on a probe input.
    """
    mlm, why = _load_masked_lm(model, name, revision)
    if mlm is None:
        return None, why
    cls = type(mlm).__name__
    base = mlm.base_model
    inside = {id(m) for m in base.modules()}
    parts = [(n, m) for n, m in mlm.named_modules() if n and id(m) not in inside]
    vocab = mlm.get_input_embeddings().weight.shape[0]
    linears = [m for _, m in parts if isinstance(m, nn.Linear)]
    decoders = [m for m in linears if m.out_features == vocab]
    denses = [m for m in linears if m.out_features != vocab]
    norms = [m for _, m in parts if isinstance(m, nn.LayerNorm)]
    acts = [m for _, m in parts if _is_activation(m)]
    if len(decoders) > 1 or len(denses) != 1 or len(norms) != 1 or len(acts) > 1 or norms[0].weight is None:
        names = ", ".join(f"{n} ({type(m).__name__})" for n, m in parts if not list(m.children())) or "none"
        return None, (f"the MLM head of {cls} is not one dense layer, activation and LayerNorm before a decoder "
                      f"(its layers: {names})")
    dense, norm = denses[0], norms[0]
    in_emb = mlm.get_input_embeddings().weight
    decoder_w = decoders[0].weight if decoders else in_emb
    bias = decoders[0].bias if decoders else None
    if bias is None:
        bias = next((p for n, p in mlm.named_parameters() if n.split(".")[-1] == "bias" and p.shape == (vocab,)
                     and not n.startswith(mlm.base_model_prefix + ".")), None)
    tied = decoder_w is in_emb or (decoder_w.shape == in_emb.shape and torch.equal(decoder_w, in_emb))

    captured: dict[str, Tensor] = {}
    hook = base.register_forward_hook(lambda _m, _a, out: captured.__setitem__("h", out[0]))
    try:
        with torch.no_grad():
            logits = mlm(input_ids=torch.arange(5, 13).remainder(vocab)[None]).logits
    except Exception as err:  # noqa: BLE001 - a family that needs more than input ids
        return None, f"{cls} did not run on a probe input ({type(err).__name__}: {str(err).splitlines()[0]})"
    finally:
        hook.remove()
    if "h" not in captured:
        return None, f"{cls} did not go through its base model"
    config = mlm.config
    if acts:
        activations: list[str | nn.Module] = [acts[0]]
    else:
        hidden_act = getattr(config, "hidden_act", None)
        activations = list(dict.fromkeys([a for a in (hidden_act, "gelu") if isinstance(a, str)]))
    embedding = input_embedding(model)
    for activation in activations:
        act_name = _activation_name(activation) if isinstance(activation, nn.Module) else activation
        transform = HeadTransform(dense.in_features, activation, norm.eps, dense.out_features,
                                  dense.bias is not None, norm.bias is not None, act_name)
        transform.dense.load_state_dict(dense.state_dict())
        transform.norm.load_state_dict(norm.state_dict())
        with torch.no_grad():
            ours = transform(captured["h"]) @ decoder_w.T + (bias if bias is not None else 0.0)
        if ours.shape == logits.shape and torch.allclose(ours, logits, rtol=1e-4, atol=1e-4):
            break
    else:
        return None, f"the MLM head of {cls} (dense → activation → LayerNorm → decoder) does not reproduce its logits"
    if vocab != embedding.weight.shape[0]:
        raise EmbedkitError(
            f"vocabulary head: {name} has an MLM head over {vocab} tokens for {embedding.weight.shape[0]} input "
            "embeddings"
        )
    head = VocabHead(embedding, transform, decoder_weight=None if tied else decoder_w,
                     source=f"pretrained MLM head of {name} ({cls})")
    if bias is not None:
        with torch.no_grad():
            head.bias.copy_(bias)
    return head.to(device=embedding.weight.device, dtype=embedding.weight.dtype), ""


def _lm_head(model: SentenceTransformer, name: str, revision: str | None) -> VocabHead | None:
    """A decoder LM's ``lm_head.weight`` from the safetensors checkpoint (tied when the config ties it)."""
    files = _safetensors_files(name, revision)
    tensors = _read_keys(files, {"lm_head.weight"}) if files else {}
    if "lm_head.weight" not in tensors:
        return None
    embedding = input_embedding(model)
    config = model[0].auto_model.config
    weight = tensors["lm_head.weight"].to(embedding.weight.dtype)
    tied = bool(getattr(config, "tie_word_embeddings", False)) and weight.shape == embedding.weight.shape
    head = VocabHead(embedding, decoder_weight=None if tied else weight, source=f"LM head of {name}")
    return head.to(embedding.weight.device)


def pretrained_head_or_reason(model: SentenceTransformer) -> tuple[VocabHead | None, str]:
    """(the backbone checkpoint's own MLM or LM head, "") or (None, why there is none)."""
    name, revision = _checkpoint_source(model)
    if not name:
        return None, "the encoder's config names no checkpoint"
    head, why = _mlm_head(model, name, revision)
    if head is None:
        head = _lm_head(model, name, revision)
    return head, "" if head is not None else f"{why}; no lm_head.weight either"


def pretrained_head(model: SentenceTransformer) -> VocabHead | None:
    """The backbone checkpoint's own MLM or LM head, or ``None`` when the checkpoint has none."""
    return pretrained_head_or_reason(model)[0]


def build_vocab_head(model: SentenceTransformer, kind: HeadKind = "auto", freeze: bool = False) -> VocabHead:
    """The vocabulary head for ``model``.

    ``auto``: the checkpoint's MLM/LM head when it has one, else the tied linear head, with a warning that
    says why. ``pretrained``: the checkpoint's head, an error (with the reason) when there is none. ``tied``:
    always the tied linear head. ``freeze`` stops the head's own parameters from training (a tied decoder
    still trains with the encoder).
    """
    head = None
    if kind in ("auto", "pretrained"):
        head, why = pretrained_head_or_reason(model)
        if head is None and kind == "pretrained":
            raise EmbedkitError(f"method.head: 'pretrained' needs the checkpoint's MLM or LM head: {why}. "
                                "Use head: tied or auto.")
        if head is None:
            logger.warning("vocabulary head: no pretrained head (%s); using a linear head tied to the input "
                           "embeddings", why)
    if head is None:
        embedding = input_embedding(model)
        head = VocabHead(embedding, learn_scale=True, source="linear head tied to the input embeddings")
    if freeze:
        head.requires_grad_(False)
    return head


def save_head(head: VocabHead, path: str | Path, temperature: float = 1.0) -> Path:
    """Write the head's own parameters (not the tied embeddings) to a safetensors file, atomically."""

    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    meta = {"kind": head.kind, "source": head.source, "temperature": repr(float(temperature))}
    if head.transform is not None:
        meta["eps"] = repr(float(head.transform.norm.eps))
        meta["activation"] = type(head.transform.act).__name__
        if head.transform.act_name:
            meta["act"] = head.transform.act_name
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return Path(path)


def head_state_from_file(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Head parameters from a :func:`save_head` file or a checkpoint's method state (keys ``head.*``)."""

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
        width, hidden = state["transform.dense.weight"].shape
        config = model[0].auto_model.config
        activation = meta.get("act") or getattr(config, "hidden_act", "gelu")  # files before "act": the config's
        transform = HeadTransform(hidden, activation if isinstance(activation, str) else "gelu",
                                  float(meta.get("eps", getattr(config, "layer_norm_eps", 1e-12))), width,
                                  "transform.dense.bias" in state, "transform.norm.bias" in state)
    head = VocabHead(embedding, transform, state.get("decoder_weight"), "logit_scale" in state)
    head.source = f"{meta.get('source') or head.kind + ' vocabulary head'} (trained, from {path})"
    if head.vocab_size != state["bias"].shape[0]:
        raise EmbedkitError(
            f"{path}: the head has {state['bias'].shape[0]} vocabulary entries, the model {head.vocab_size}"
        )
    head.load_state_dict(state, strict=True)
    return head.to(embedding.weight.device).eval(), meta
