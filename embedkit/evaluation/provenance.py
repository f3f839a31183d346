"""How a number was made: the model's identity (path or Hub id, name, a hash of its weights) and the package
versions. Shared by the STS suite, MTEB and training's ``results.json``."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedkit.backends import backend_file_hash, backend_of
from embedkit.model_ref import default_model_name, embedding_dim

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

_VERSIONED = ("embedkit", "torch", "transformers", "sentence-transformers", "mteb", "datasets", "numpy", "scipy")


def package_versions(names: tuple[str, ...] = _VERSIONED) -> dict[str, str]:
    """Versions of Python and of ``names`` (default: the packages that decide the scores)."""

    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def model_info(model: SentenceTransformer, spec: str | None) -> dict[str, Any]:
    """Path (or Hub id), name and a SHA-256 of all weights and buffers."""
    from embedkit.modeling import weights_hash

    backend = backend_of(model)  # an `embedkit export` folder: its weights are the backend file
    info = {
        "path": str(Path(spec).resolve()) if spec and Path(spec).exists() else spec,
        "name": default_model_name(model, spec),
        "weights_sha256": backend_file_hash(model) if backend else weights_hash(model),
        "embedding_dim": embedding_dim(model),
        "max_seq_length": model.max_seq_length,
    }
    if backend:
        info["backend"] = backend
    return info
