"""What validation needs to know about a model, read from its configuration and tokenizer files, never its weights:
the encoder's module names (LoRA targets), how many tokens a prompt takes (prompts against ``max_seq_length``) and
the embedding width (Matryoshka dimensions).

Each function returns ``None`` when its files are not at hand (a Hub model outside the cache while offline, a model
with its own code, a layout it does not know): the check is then left to training, which refuses as before. Module
names come from the safetensors headers (names and shapes, no tensor read); only without them is the encoder built
from its config on the meta device (torch and transformers: seconds, no weights, no memory). The rest reads JSON
files and the tokenizers library.
"""

from __future__ import annotations

import json
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from huggingface_hub import hf_hub_download, try_to_load_from_cache
from tokenizers import Tokenizer

from embedkit.model_ref import hub_offline, packaged_model_path

# The layer classes peft's LoRA adapts (its dispatchers: nn.Linear, nn.Embedding, nn.Conv1d/2d/3d, transformers'
# Conv1D, nn.MultiheadAttention); a target that names any other layer is refused by peft.
LORA_LAYERS = ("Linear", "Embedding", "Conv1d", "Conv2d", "Conv3d", "Conv1D", "MultiheadAttention")


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _local_root(name: str) -> Path | None:
    local = Path(name).expanduser()
    if local.is_dir():
        return local
    packaged = packaged_model_path(name)
    return Path(packaged) if packaged else None


def _hub_file(name: str, filename: str, revision: str | None) -> Path | None:
    """A file of a Hub model: the cached copy, else (online) downloaded, as the model load would; ``None`` if
    neither works (the load reports why)."""
    cached = try_to_load_from_cache(name, filename, revision=revision)
    if isinstance(cached, str):
        return Path(cached)
    if hub_offline():
        return None
    try:
        return Path(hf_hub_download(name, filename, revision=revision))
    except Exception:  # noqa: BLE001 - no such file, or the Hub failed: nothing to check with
        return None


def transformer_folder(name: str, revision: str | None = None) -> Path | None:
    """The folder with the encoder's ``config.json`` and tokenizer files: a plain model folder, the transformer's
    folder inside a sentence-transformers folder (the packaged model's too), or a Hub model's cached snapshot."""
    root = _local_root(name)
    if root is None:
        config = _hub_file(name, "config.json", revision)
        _hub_file(name, "tokenizer.json", revision)  # beside it in the snapshot, when the repo has one
        return config.parent if config is not None else None
    modules = _read(root / "modules.json")
    if isinstance(modules, list):
        entry = next((e for e in modules if isinstance(e, dict) and str(e.get("type", "")).endswith("Transformer")),
                     None)
        if entry is None:
            return None
        root = root / str(entry.get("path") or "")
    return root if (root / "config.json").is_file() else None


def _hidden_size(config: Any) -> int | None:
    if not isinstance(config, dict):
        return None
    for key in ("hidden_size", "d_model", "dim", "n_embd"):  # what transformers' attribute maps call hidden_size
        if isinstance(config.get(key), int):
            return config[key]
    return None


def _pooling_width(config: Any) -> int | None:
    """A sentence-transformers Pooling module's output width: its input width times its number of modes (the
    current ``pooling_mode`` key, or the older ``pooling_mode_*`` flags)."""
    if not isinstance(config, dict):
        return None
    width = config.get("embedding_dimension", config.get("word_embedding_dimension"))
    mode = config.get("pooling_mode")
    modes = (1 if isinstance(mode, str) else len(mode) if isinstance(mode, list) else
             sum(1 for k, v in config.items() if k.startswith("pooling_mode_") and v is True))
    return width * modes if isinstance(width, int) and modes else None


def embedding_width(name: str, pooling: str | None, revision: str | None = None) -> int | None:
    """The width of the sentence embedding :func:`embedkit.modeling.build_model` gives: the encoder's hidden size
    when the recipe sets a pooling (or the folder is a plain model), else that of the folder's own modules."""
    folder = transformer_folder(name, revision)
    hidden = _hidden_size(_read(folder / "config.json")) if folder is not None else None
    if pooling is not None:
        return hidden
    root = _local_root(name)
    if root is None:
        return None  # a Hub model kept as saved: its own modules are not at hand
    modules = _read(root / "modules.json")
    if not isinstance(modules, list):
        return hidden  # a plain model folder: sentence-transformers adds mean pooling
    width = None
    for entry in modules:
        kind = str(entry.get("type", "")).rsplit(".", 1)[-1] if isinstance(entry, dict) else ""
        config = _read(root / str(entry.get("path") or "") / "config.json") if kind else None
        if kind == "Transformer":
            width = hidden
        elif kind == "Pooling":
            width = _pooling_width(config)
        elif kind == "Dense":
            width = config.get("out_features") if isinstance(config, dict) else None
        elif kind != "Normalize":
            return None  # a module this does not know may change the width
    return width if isinstance(width, int) else None


def prompt_tokens(folder: Path, prompt: str) -> int | None:
    """Tokens ``prompt`` takes in the model's input, its special tokens included (as sentence-transformers
    prepends it to each text): the fast tokenizer's ``tokenizer.json``, else transformers' ``AutoTokenizer``."""
    if (folder / "tokenizer.json").is_file():
        try:
            tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
            tokenizer.no_padding()  # a saved file may pad or cut to a fixed length; the prompt's own count is asked
            tokenizer.no_truncation()
            return len(tokenizer.encode(prompt).ids)
        except Exception:  # noqa: BLE001 - a file the library cannot read: the load reports it
            return None
    try:
        from transformers import AutoTokenizer

        return len(AutoTokenizer.from_pretrained(str(folder), local_files_only=True)(prompt)["input_ids"])
    except Exception:  # noqa: BLE001 - no tokenizer files here: nothing to count with
        return None


def _safetensors_header(path: Path) -> dict | None:
    """The JSON header of a safetensors file (tensor names, dtypes, shapes): its first 8 + N bytes."""
    try:
        with open(path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(size)) if 0 < size < 100_000_000 else None
    except (OSError, ValueError):
        return None
    return header if isinstance(header, dict) else None


def _checkpoint_modules(folder: Path) -> dict[str, bool] | None:
    """``{module path: adaptable}`` from the safetensors headers of ``folder``'s weights: a module per ``.weight``
    tensor (adaptable when the weight has two or more dimensions: linear, embedding, convolution), and each
    enclosing module (not adaptable). Paths may carry the checkpoint's prefix (``bert.``): peft's suffix rule
    matches them alike."""
    index = _read(folder / "model.safetensors.index.json")
    shards = index.get("weight_map") if isinstance(index, dict) else None
    files = sorted(set(shards.values())) if isinstance(shards, dict) else ["model.safetensors"]
    out: dict[str, bool] = {}
    for file in files:
        header = _safetensors_header(folder / str(file))
        if header is None:
            return None
        for key, info in header.items():
            if key.endswith(".weight") and isinstance(info, dict):
                out[key.removesuffix(".weight")] = len(info.get("shape") or ()) >= 2
    for name in list(out):
        parts = name.split(".")
        for i in range(1, len(parts)):
            out.setdefault(".".join(parts[:i]), False)
    return out or None


def _meta_modules(folder: Path) -> dict[str, bool] | None:
    """``{module path: adaptable}`` of the encoder transformers builds from ``folder``'s config (as ``AutoModel``),
    on the meta device: no weights read, no memory taken. Imports torch and transformers (seconds)."""
    import torch
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
        with torch.device("meta"):
            model = AutoModel.from_config(config)
    except Exception:  # noqa: BLE001 - a config transformers cannot build: the load reports it
        return None
    return {n: type(m).__name__ in LORA_LAYERS for n, m in model.named_modules() if n}


def module_names(folder: Path) -> dict[str, bool] | None:
    """``{module path: whether LoRA can adapt it}`` of the encoder in ``folder``, without its weights: from the
    safetensors headers (names and shapes only, milliseconds), else from the config on the meta device."""
    return _checkpoint_modules(folder) or _meta_modules(folder)


def lora_target_problems(names: dict[str, bool], targets: list[str]) -> list[tuple[str, str]]:
    """(target, why) for each LoRA target name that peft would not adapt: one that matches no module (peft
    ignores it when another target matches), or one that also names a layer LoRA cannot adapt (peft refuses).
    peft's rule: a target matches a module whose path is the target or ends in ``.<target>``."""
    adaptable = sorted({n.rsplit(".", 1)[-1] for n, ok in names.items() if ok})
    out = []
    for target in targets:
        hits = [ok for n, ok in names.items() if n == target or n.endswith("." + target)]
        if not hits:
            close = get_close_matches(target, adaptable, n=1)
            out.append((target, f"{target!r} matches no module of the model"
                        + (f" (did you mean {close[0]!r}?)" if close else "")
                        + f"; its adaptable layers are named {', '.join(adaptable)}"))
        elif not all(hits):
            out.append((target, f"{target!r} names layers LoRA cannot adapt (it adapts linear, embedding and "
                                f"convolution layers); this model's are named {', '.join(adaptable)}"))
    return out
