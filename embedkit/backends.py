"""Exported (ONNX / OpenVINO) model folders: recognise one, and load it with its transformer run by onnxruntime
or OpenVINO. ``embedkit export`` (embedkit/export.py) writes them; :func:`embedkit.model_ref.load_model` (so
``eval``, ``encode`` and the Python API) loads them through :func:`load_backend_model`.

A folder is an exported one when it holds ``export.json`` (``{"format": "onnx"|"openvino", "file": ...}``, written
by ``embedkit export``), or, in sentence-transformers' own backend layout, when it has a ``modules.json``, no
torch weights and exactly one ``onnx/*.onnx`` or ``openvino/*.xml``.

Why not ``SentenceTransformer(folder, backend="onnx")``: sentence-transformers' backend loaders run on
``optimum`` (``optimum-onnx`` / ``optimum-intel``), and no release of either on the package index imports under
transformers 5, which sentence-transformers 6 needs. :func:`load_backend_model` builds the SentenceTransformer
exactly as that call does (same folder, same modules: tokenizer, pooling, normalisation, prompts) and hands its
Transformer module an onnxruntime / OpenVINO encoder in place of optimum's, through the one hook
sentence-transformers calls for a non-torch backend (``load_onnx_model`` / ``load_openvino_model``).

Torch-free at import (model_ref, on the validation path, imports it).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedkit.errors import EmbedkitError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

FORMATS = ("onnx", "openvino")
MARKER = "export.json"  # written by embedkit export: the backend and the file to load
# What each backend needs (import name, pip name); the pip line goes into the error.
REQUIRES = {"onnx": (("onnx", "onnx"), ("onnxruntime", "onnxruntime")),
            "openvino": (("onnx", "onnx"), ("openvino", "openvino"))}
INSTALL = 'pip install "embedkit[export]"'
TORCH_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                 "pytorch_model.bin.index.json")


def require_backend(fmt: str, what: str) -> None:
    """One line naming the missing packages of backend ``fmt`` and the pip command that installs them."""
    missing = [pip for module, pip in REQUIRES[fmt] if find_spec(module) is None]
    if missing:
        raise EmbedkitError(f"{what}: needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
                            f"installed; install with: {INSTALL} (or pip install {' '.join(missing)})")


def read_marker(folder: str | os.PathLike) -> dict[str, Any] | None:
    """``export.json`` of an exported folder, or ``None`` when ``folder`` has none."""
    path = Path(folder) / MARKER
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EmbedkitError(f"{path}: cannot be read as JSON ({err})") from None
    if not isinstance(marker, dict) or marker.get("format") not in FORMATS or not isinstance(marker.get("file"), str):
        raise EmbedkitError(f"{path}: expected {{\"format\": \"onnx\"|\"openvino\", \"file\": ...}} (written by "
                            "embedkit export)")
    if not (Path(folder) / marker["file"]).is_file():
        raise EmbedkitError(f"{path}: names {marker['file']}, which is not in {folder}")
    return marker


def backend_files(folder: str | os.PathLike) -> tuple[str, str] | None:
    """``(format, file)`` of an exported folder (see the module docstring), ``None`` for any other folder."""
    folder = Path(folder)
    marker = read_marker(folder)
    if marker is not None:
        return marker["format"], marker["file"]
    if any((folder / name).is_file() for name in TORCH_WEIGHTS) or not (folder / "modules.json").is_file():
        return None
    for fmt, pattern in (("onnx", "onnx/*.onnx"), ("openvino", "openvino/*.xml")):
        found = sorted(p.relative_to(folder).as_posix() for p in folder.glob(pattern))
        if len(found) == 1:
            return fmt, found[0]
        if found:
            raise EmbedkitError(f"{folder}: holds {len(found)} {fmt} files ({', '.join(found)}) and no {MARKER} "
                                "saying which to load")
    return None


def backend_of(model: SentenceTransformer) -> str | None:
    """``onnx`` / ``openvino`` for a model :func:`load_backend_model` loaded, else ``None``."""
    return (getattr(model, "_embedkit_backend", None) or {}).get("format")


def backend_file_hash(model: SentenceTransformer) -> str | None:
    """SHA-256 of the backend file(s) a model loaded by :func:`load_backend_model` runs (its weights), else None."""
    info = getattr(model, "_embedkit_backend", None)
    if not info:
        return None
    digest = hashlib.sha256()
    files = [Path(info["path"])]
    if files[0].suffix == ".xml":  # OpenVINO: the graph and its weights
        files.append(files[0].with_suffix(".bin"))
    for file in files:
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _feeds(names: list[str], input_ids: Any, attention_mask: Any, token_type_ids: Any) -> dict[str, Any]:
    """int64 numpy inputs by name; ``token_type_ids`` zeros when the graph takes them and none were given."""
    import torch

    given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
    if given["token_type_ids"] is None and "token_type_ids" in names:
        given["token_type_ids"] = torch.zeros_like(input_ids)
    return {n: given[n].to(device="cpu", dtype=torch.int64).numpy() for n in names}


def onnx_encoder(path: str, config: Any) -> Any:
    """The transformer run by onnxruntime (CPU): ``forward(input_ids, attention_mask, ...)`` returns
    ``{"last_hidden_state": tensor}``, as the transformers model it replaces. Both encoders use
    ``torch.get_num_threads()`` threads (set when the model loads), as the torch model would."""
    import onnxruntime as ort
    import torch

    class OnnxEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = torch.get_num_threads()  # the threads torch would use, no more
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            self.input_names = [i.name for i in self.session.get_inputs()]
            self.config = config

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    token_type_ids: torch.Tensor | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:
            feeds = _feeds(self.input_names, input_ids, attention_mask, token_type_ids)
            return {"last_hidden_state": torch.from_numpy(self.session.run(["last_hidden_state"], feeds)[0])}

    return OnnxEncoder()


def openvino_encoder(path: str, config: Any) -> Any:
    """The transformer run by OpenVINO (CPU). Inference precision is pinned to f32: on a CPU with bf16 (AMX,
    AVX-512-BF16) OpenVINO would otherwise compute in bf16 and the fp32 export would not be fp32."""
    import openvino as ov
    import torch

    class OpenVinoEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            core = ov.Core()
            self.compiled = core.compile_model(core.read_model(path), "CPU", {
                "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_NUM_THREADS": torch.get_num_threads()})  # the threads torch would use, no more
            self.input_names = [i.get_any_name() for i in self.compiled.inputs]
            self.request = self.compiled.create_infer_request()
            self.config = config

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    token_type_ids: torch.Tensor | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:
            feeds = _feeds(self.input_names, input_ids, attention_mask, token_type_ids)
            out = self.request.infer(feeds)[self.compiled.output(0)]
            return {"last_hidden_state": torch.tensor(out)}  # a copy: the request reuses its output buffer

    return OpenVinoEncoder()


@contextmanager
def _backend_hook(fmt: str, file: str) -> Iterator[None]:
    """While a SentenceTransformer loads, sentence-transformers' backend loader for ``fmt`` (which needs optimum)
    returns embedkit's encoder of ``file`` instead."""
    from sentence_transformers.base.modules import transformer as st_transformer

    name = {"onnx": "load_onnx_model", "openvino": "load_openvino_model"}[fmt]
    encoder = {"onnx": onnx_encoder, "openvino": openvino_encoder}[fmt]

    def load(model_name_or_path: str, config: Any, task_name: str, **_: Any) -> Any:
        if task_name != "feature-extraction":
            raise EmbedkitError(f"{model_name_or_path}: an exported {task_name} model is not supported; "
                                "expected a feature-extraction encoder")
        return encoder(str(Path(model_name_or_path) / file), config)

    original = getattr(st_transformer, name)
    setattr(st_transformer, name, load)
    try:
        yield
    finally:
        setattr(st_transformer, name, original)


def load_backend_model(folder: str, fmt: str, file: str) -> SentenceTransformer:
    """The SentenceTransformer of an exported folder, its transformer run by onnxruntime or OpenVINO (CPU)."""
    require_backend(fmt, f"model {folder} (exported for {fmt})")
    from sentence_transformers import SentenceTransformer

    with _backend_hook(fmt, file):
        model = SentenceTransformer(folder, device="cpu", backend=fmt, local_files_only=True, trust_remote_code=False)
    model._embedkit_backend = {"format": fmt, "path": str(Path(folder, file).resolve())}
    return model
