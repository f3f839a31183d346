"""MTEB through ``mteb.evaluate`` (the v2 API), air-gapped when the data is local, and leaderboard submission files.

* The cache is explicit: results go to ``<cache_dir>/results/<model name>/<revision>/<Task>.json`` (mteb's own
  layout, with ``model_meta.json``), and ``$MTEB_CACHE`` is pointed there before mteb is first imported, because
  ``import mteb`` otherwise creates ``~/.cache/mteb``.
* The model description (``ModelMeta``, :func:`build_model_meta`) is mteb's registry entry for a registered model
  whose origin proves it (the packaged all-MiniLM-L6-v2, a Hub id), else one derived from the model and its
  training recipe. Submission is mteb's own: the ``--submission`` folder is a ``ResultCache`` for
  ``mteb submit-results``.
* The revision of an unregistered model is a SHA-256 of its weights (unless given), and every run recomputes
  (``overwrite_strategy="always"``): a retrained model saved under the same name can never be shown an older
  model's cached score.
* STS12–16, STSBenchmark and SICK-R read from the local data folder through
  :mod:`embedkit.evaluation.mteb_tasks` when one is available (``source="auto"``/``"local"``); every other task
  loads from the Hub as mteb does. ``MR``, ``SUBJ`` (classification), ``SICK-E`` (pair classification) and
  ``TRECQA-dev`` (reranking) are local tasks, not official mteb tasks, and exist only from the local folder;
  ``offline`` names all of them with the STS tasks (:mod:`embedkit.evaluation.mteb_offline`). ``extra_tasks``
  takes task objects built elsewhere (a reranking file, a BEIR folder).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from datetime import date, datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from embedkit.errors import DataError, EmbedkitError
from embedkit.evaluation.mteb_offline import LOCAL_ONLY, OFFLINE, expand_names, local_source
from embedkit.evaluation.provenance import model_info, package_versions
from embedkit.evaluation.sts import SOURCES, sts_root
from embedkit.log import progress as progress_line
from embedkit.model_ref import embedding_dim, load_model, packaged_model_id, packaged_model_path, require_hub
from embedkit.recipe import TARGET_TASKS as TASKS

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

DEFAULT_LANGUAGES = ("eng-Latn",)
# The scores results.json keeps beside the main score, by mteb task type (the rest stays in mteb's files).
KEY_METRICS = {"STS": ("cosine_spearman", "cosine_pearson"), "Classification": ("accuracy", "f1"),
               "PairClassification": ("cosine_ap", "max_ap"), "Reranking": ("map_at_1000", "mrr_at_10"),
               "Retrieval": ("ndcg_at_10", "recall_at_100", "mrr_at_10")}
LOCAL_HINT = (f"STS12-16, STSBenchmark and SICK-R run from a local --data-dir, and so do {', '.join(LOCAL_ONLY)} "
              f"(--mteb {OFFLINE}: all of them)")
# Local training files that are (part of) an mteb task's dataset, for ModelMeta.training_datasets.
_TRAINING_FILE_TASKS = {"sts-train.csv": "STSBenchmark", "sts-dev.csv": "STSBenchmark", "SICK_train.txt": "SICK-R",
                        "SICK_trial.txt": "SICK-R"}


def import_mteb(cache_dir: str | os.PathLike | None = None) -> Any:
    """Import mteb with ``$MTEB_CACHE`` set first (to ``cache_dir``, or a temp folder), so nothing lands in ``~``."""
    if "mteb" not in sys.modules and not os.environ.get("MTEB_CACHE"):
        target = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "embedkit-mteb-cache"
        os.environ["MTEB_CACHE"] = str(target)
    import mteb

    return mteb


def parse_task_list(text: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """``"STS12, STSBenchmark"`` or a list → task names (empty items dropped; ``offline`` expanded to the
    offline benchmark's tasks)."""
    if text is None:
        return []
    items = text.split(",") if isinstance(text, str) else list(text)
    return expand_names([t.strip() for t in items if t and t.strip()])


def require_hub_for_mteb(names: str | list[str] | None, benchmark: str | None, root: Path | None,
                         source: str = "auto", data_dir: str | os.PathLike | None = None) -> None:
    """One line at once when a task would come from the Hub and the Hub does not answer (before mteb's retries),
    or when a local-only task's file is missing (before any model loads).

    ``root``: the local STS folder (``None``: none); the STS tasks of the suite run from it. The local-only
    tasks (``MR``, ``SUBJ``, ``SICK-E``, ``TRECQA-dev``) never need the Hub.
    """
    requested = parse_task_list(names)
    if source != "hub":
        for name in requested:
            if name in LOCAL_ONLY:
                local_source(name, data_dir)
    if source == "local":
        return  # tasks without local data are refused by resolve_tasks
    local = (*TASKS, "SICK-R-test") if root is not None else ()
    remote = [n for n in requested if n not in local and n not in LOCAL_ONLY]
    if remote or benchmark:
        what = "--mteb " + ",".join(remote) if remote else f"--mteb-benchmark {benchmark}"
        require_hub(what, LOCAL_HINT)


def resolve_tasks(names: list[str], benchmark: str | None, data_dir: str | os.PathLike | None,
                  source: str = "auto", cache_dir: str | os.PathLike | None = None,
                  extra: list[Any] | None = None) -> tuple[list[Any], dict[str, str]]:
    """mteb task objects for ``names`` and/or ``benchmark``; STS tasks from local files where possible.

    Returns ``(tasks, sources)`` with ``sources[task] = "local" | "hub"``. Unknown names raise
    :class:`EmbedkitError` with mteb's suggestion.
    """

    if source not in SOURCES:
        raise EmbedkitError(f"source {source!r}: expected one of {', '.join(SOURCES)}")
    names = expand_names(names)
    if not names and not benchmark and not extra:
        raise EmbedkitError(f"MTEB: name at least one task (--mteb STS12,STSBenchmark, or --mteb {OFFLINE}) or a "
                            "benchmark (--mteb-benchmark)")
    local_only = [n for n in names if n in LOCAL_ONLY]
    if local_only and source == "hub":
        raise DataError(f"--mteb {local_only[0]}: a local task, it exists only from a local data folder; use "
                        "--source auto or local with --data-dir")
    needs_sts = bool(benchmark) or len(local_only) < len(names)
    try:
        root = sts_root(data_dir) if source != "hub" else None
    except DataError:  # a data folder without STS data is fine for the local-only tasks alone
        if needs_sts:
            raise
        root = None
    mteb = import_mteb(cache_dir)
    from embedkit.evaluation.mteb_tasks import LOCAL_TASKS, SENTEVAL_SICK, local_only_task, local_task

    requested: list[Any] = []
    for name in names:
        if name in LOCAL_ONLY:
            requested.append(local_only_task(name, data_dir))
            continue
        if name == SENTEVAL_SICK:
            requested.append(name)
            continue
        try:
            requested.append(mteb.get_task(name))
        except KeyError as err:
            hint = str(err).strip("'\"").replace("KeyError: ", "")
            raise EmbedkitError(
                f"--mteb: unknown MTEB task {name!r} ({hint}); list them with mteb.get_tasks()") from None
    if benchmark:
        try:
            requested += list(mteb.get_benchmark(benchmark).tasks)
        except (KeyError, ValueError) as err:
            raise EmbedkitError(f"--mteb-benchmark: unknown MTEB benchmark {benchmark!r} ({err})") from None

    if source == "local" and root is None and needs_sts:
        raise DataError("--mteb with source 'local': no data folder; pass --data-dir or set $EMBEDKIT_DATA")
    tasks, sources, seen = [], {}, set()
    for task in requested:
        name = task if isinstance(task, str) else task.metadata.name
        if name in seen:
            continue
        seen.add(name)
        if name in LOCAL_ONLY:
            tasks.append(task)
            sources[name] = "local"
        elif name in (*LOCAL_TASKS, SENTEVAL_SICK) and root is not None:
            tasks.append(local_task(name, root))
            sources[name] = "local"
        elif name == SENTEVAL_SICK:
            raise DataError(f"{SENTEVAL_SICK} exists only from a local data folder; pass --data-dir")
        elif source == "local":
            raise DataError(
                f"MTEB task {name!r} has no local data (local: {', '.join(LOCAL_TASKS)}); use --source auto")
        else:
            tasks.append(task)
            sources[name] = "hub"
    for task in extra or []:
        if task.metadata.name not in seen:
            seen.add(task.metadata.name)
            tasks.append(task)
            sources[task.metadata.name] = "local"
    remote = [name for name, where in sources.items() if where == "hub"]
    if remote:  # one short probe, not mteb's download retries (over a minute offline)

        require_hub("--mteb " + ",".join(remote), LOCAL_HINT)
    return tasks, sources


def _training_datasets(recipe: dict[str, Any] | None) -> set[str]:
    """mteb task names whose data a training recipe used (train set, replayed rows, or STS-B dev for checkpoint
    selection)."""
    if not recipe:
        return set()
    out: set[str] = set()
    data = recipe.get("data") or {}
    for section in ("train", "dev", "replay"):
        entries = data.get(section) or {}  # a list: the sources of a multi-task recipe, or weighted dev sets
        text = " ".join(str(entry.get(k) or "") for entry in (entries if isinstance(entries, list) else [entries])
                        for k in ("path", "hub"))
        for fname, task in _TRAINING_FILE_TASKS.items():
            if fname in text:
                out.add(task)
        if "stsb" in text.lower() or "stsbenchmark" in text.lower():
            out.add("STSBenchmark")
        if "sick" in text.lower():
            out.add("SICK-R")
    return out


# embedkit's overlap set names (embedkit/evaluation/overlap.py) that are not mteb's task names.
_OVERLAP_TASKS = {"STSBenchmark-dev": "STSBenchmark", "trecqa-dev": "TRECQA-dev"}


def measured_datasets(path: str | None) -> set[str] | None:
    """mteb task names whose data the training run at ``path`` holds, from the overlap it measured
    (``results.json`` ``overlap``: sets above 1% of their units, and the selection set); ``None`` where the run
    recorded no measurement (then the fixed table of training files stands in)."""
    if not path or not (Path(path) / "results.json").is_file():
        return None
    try:
        overlap = json.loads((Path(path) / "results.json").read_text(encoding="utf-8")).get("overlap")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(overlap, dict):
        return None
    return {_OVERLAP_TASKS.get(name, name) for name, row in overlap.items()
            if isinstance(row, dict) and (row.get("flagged") or row.get("role") == "selection")}


def _read_recipe(path: str | None) -> dict[str, Any] | None:
    if not path or not (Path(path) / "recipe.yaml").is_file():
        return None

    try:
        loaded = yaml.safe_load((Path(path) / "recipe.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return loaded if isinstance(loaded, dict) else None


def _hf_cache_identity(spec: str | None) -> tuple[str, str] | None:
    """``(hub id, commit)`` when ``spec`` is a huggingface_hub cache snapshot (``models--org--name/snapshots/<sha>``
    under the Hub cache)."""
    if not spec:
        return None
    parts = Path(spec).expanduser().resolve().parts
    for i, part in enumerate(parts[:-2]):
        if part.startswith("models--") and parts[i + 1] == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", parts[i + 2]):
            return part[len("models--"):].replace("--", "/"), parts[i + 2]
    return None


def model_identity(spec: str | None) -> tuple[str | None, str | None]:
    """``(hub id, revision)`` that a model's origin proves: a Hub id it was loaded by, the folder a package ships
    for a Hub id (the same weights, revision unknown), or a Hub cache snapshot; ``(None, None)`` otherwise (a
    trained folder, an instance). A folder's own metadata (its README's title, ``model_card_data.model_name``) is
    not proof: a fine-tune keeps its base model's README until it is saved again."""
    if not spec:
        return None, None
    cached = _hf_cache_identity(spec)
    if cached:
        return cached
    local = Path(spec).expanduser()
    if local.exists():
        return packaged_model_id(local), None
    return (spec, None) if "/" in spec else (None, None)


def registered_meta(name: str) -> Any | None:
    """mteb's registry entry for ``name`` (``mteb.get_model_meta``), or ``None`` when mteb does not list it."""
    mteb = import_mteb()
    try:
        with warnings.catch_warnings():  # a renamed model warns; the entry it returns is still the one to use
            warnings.simplefilter("ignore", DeprecationWarning)
            return mteb.get_model_meta(name)
    except (KeyError, ValueError):
        return None


def uses_instructions(model: SentenceTransformer) -> bool:
    """Whether the model prepends instructions: a non-empty prompt. sentence-transformers saves
    ``{"query": "", "document": ""}`` for every model; empty prompts are no instructions."""
    prompts = getattr(model, "prompts", None) or {}
    return any(isinstance(p, str) and p.strip() for p in prompts.values())


def _run_date(path: str | None) -> str | None:
    """The day a training folder's run finished (``results.json``: ``finished``, else the file's time)."""
    if not path or not (Path(path) / "results.json").is_file():
        return None
    results_file = Path(path) / "results.json"
    try:
        finished = json.loads(results_file.read_text(encoding="utf-8")).get("finished")
    except (OSError, ValueError, AttributeError):
        finished = None
    if isinstance(finished, str) and re.match(r"\d{4}-\d{2}-\d{2}", finished):
        return finished[:10]
    return datetime.fromtimestamp(results_file.stat().st_mtime, tz=timezone.utc).date().isoformat()


def build_model_meta(model: SentenceTransformer, name: str, revision: str | None, *, path: str | None = None,
                     spec: str | None = None, weights_sha256: str | None = None,
                     languages: list[str] | None = None, license: str | None = None,
                     training_code: str | None = None, training_data: str | None = None,
                     training_datasets: set[str] | None = None, release_date: str | None = None,
                     recipe: dict[str, Any] | None = None) -> Any:
    """The ``mteb.ModelMeta`` for ``model`` (the leaderboard's model description).

    * A model mteb registers (``mteb.get_model_meta(name)``) gets mteb's own entry, unchanged, when its origin
      (``spec``: the Hub id it was loaded by, the packaged copy of that id, a Hub cache snapshot; see
      :func:`model_identity`) proves it is that model. Naming other weights after a registered model is refused.
    * Any other model: ``ModelMeta.from_sentence_transformer_model`` (dimension, max tokens, similarity, embedding
      parameters), completed from its training recipe (``recipe``, or ``path``'s ``recipe.yaml``): the base model
      (``adapted_from``), the training datasets (the recipe's, plus the base model's when mteb registers it), the
      license (``license``, the recipe's ``output.license``, else the base model's), the number of parameters,
      ``release_date`` (the run's day), and ``use_instructions`` only for non-empty prompts.
    """
    import_mteb()
    from mteb.models import ModelMeta

    if "/" not in name:
        raise EmbedkitError(f"--model-name {name!r}: mteb needs 'organization/model_name'")
    proven, proven_rev = model_identity(spec or path)
    if not (spec or path):  # an instance: embedkit's loader names a packaged / Hub model on its card (model_ref)
        proven = getattr(getattr(model, "model_card_data", None), "model_name", None)
    known = registered_meta(name)
    if known is not None:
        if proven != name:
            raise EmbedkitError(
                f"--model-name {name}: mteb registers that model, and this model ({spec or path or 'an instance'}) "
                f"is not known to be its weights (neither loaded by that Hub id nor its packaged copy); name it "
                "otherwise (e.g. local/<name>)")
        wanted = revision or proven_rev
        if wanted and known.revision and wanted != known.revision:
            raise EmbedkitError(f"--mteb-revision {wanted}: mteb registers {name} at revision {known.revision}; "
                                "results for another revision cannot use its entry (omit --mteb-revision)")
        return known

    recipe = recipe if recipe is not None else _read_recipe(path) or {}
    base = (recipe.get("model") or {}).get("name")
    base_id = base if isinstance(base, str) and "/" in base and not Path(base).expanduser().exists() else None
    base_meta = registered_meta(base_id) if base_id else None
    measured = measured_datasets(path)  # a run's own measurement beats the table of known training files
    datasets = set(training_datasets or ()) | (measured if measured is not None else _training_datasets(recipe))
    if base_meta is not None and base_meta.training_datasets:
        datasets |= set(base_meta.training_datasets)  # a fine-tune has seen what its base model saw
    base_license = (base_meta.license if base_meta is not None else None) or _card_license(base)
    with warnings.catch_warnings():  # mteb 2.26 warns about its own deprecated arguments and a renamed ST method
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        derived = ModelMeta.from_sentence_transformer_model(model)
    fields = {
        **derived.model_dump(),
        "name": name,
        "revision": revision or weights_sha256 or "no_revision_available",
        "release_date": release_date or _run_date(path) or date.today().isoformat(),
        "languages": list(languages or (base_meta.languages if base_meta is not None and base_meta.languages
                                        else DEFAULT_LANGUAGES)),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "memory_usage_mb": round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20, 2),
        "embed_dim": embedding_dim(model),
        "license": license or (recipe.get("output") or {}).get("license") or base_license,
        "open_weights": True,
        "public_training_code": training_code,
        "public_training_data": training_data,
        "reference": None if name.startswith("local/") else f"https://huggingface.co/{name}",
        "similarity_fn_name": model.similarity_fn_name or "cosine",
        "use_instructions": uses_instructions(model),
        "training_datasets": datasets or None,
        "adapted_from": base_id or derived.adapted_from,
    }
    try:
        return ModelMeta.model_validate(fields)
    except Exception as err:  # pydantic ValidationError: one line naming the field
        first = str(err).splitlines()
        raise EmbedkitError(f"mteb ModelMeta: {' '.join(first[:3])}") from None


def _card_license(model_ref: Any) -> str | None:
    """The ``license`` in the front matter of a local model folder's README (e.g. the packaged base model)."""
    if not isinstance(model_ref, str):
        return None
    folder = Path(model_ref).expanduser()
    if not folder.is_dir():
        folder = Path(packaged_model_path(model_ref) or "")
    readme = folder / "README.md"
    if not model_ref or not readme.is_file():
        return None
    match = re.match(r"^---\s*\n(.*?)\n---", readme.read_text(encoding="utf-8", errors="replace"), flags=re.S)
    try:
        front = yaml.safe_load(match.group(1)) if match else None
    except yaml.YAMLError:
        return None
    value = front.get("license") if isinstance(front, dict) else None
    return value if isinstance(value, str) else None


def run_mteb(
    model: Any,
    tasks: str | list[str] | None = None,
    benchmark: str | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 128,
    source: str = "auto",
    autocast: str | None = None,
    model_name: str | None = None,
    revision: str | None = None,
    reuse_cache: bool = False,
    submission: str | os.PathLike | None = None,
    languages: list[str] | None = None,
    license: str | None = None,
    training_code: str | None = None,
    training_data: str | None = None,
    progress: bool = False,
    model_path: str | None = None,
    extra_tasks: list[Any] | None = None,
    recipe: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``mteb.evaluate`` on ``tasks`` / ``benchmark`` (and ``extra_tasks``, task objects); returns
    ``{"tasks": {name: {"main_score", ...}}, ...}``.

    ``cache_dir`` (default: a temporary folder, removed afterwards unless ``submission`` copies from it) is
    mteb's result cache. ``revision`` defaults to the weights' SHA-256. ``reuse_cache`` allows mteb to reuse a
    result cached for the same name + revision (off: every run recomputes). ``submission`` writes the
    leaderboard files (see :func:`write_submission`). ``model_path``: where an already loaded ``model`` was
    saved (names it, and its ``recipe.yaml`` fills the model description); ``recipe``: the training recipe of an
    in-memory model (training's final evaluation), in place of that file.
    """
    from embedkit.encoding import _autocast_context, resolve_autocast

    started = time.perf_counter()
    names = parse_task_list(tasks)
    if submission:
        check_submission_target(submission)
    temp_cache = None
    if cache_dir is None:
        temp_cache = tempfile.mkdtemp(prefix="embedkit-mteb-")
        cache_dir = temp_cache
    cache_dir = Path(cache_dir)
    st_model, card_name = None, None
    try:
        task_objs, sources = resolve_tasks(names, benchmark, data_dir, source, cache_dir, extra_tasks)
        st_model, spec = load_model(model)
        info = model_info(st_model, spec or model_path)
        name = model_name or info["name"]
        meta = build_model_meta(st_model, name, revision, path=info["path"], spec=spec or model_path,
                                weights_sha256=info["weights_sha256"], languages=languages, license=license,
                                training_code=training_code, training_data=training_data, recipe=recipe)
        rev = meta.revision
        card_name = getattr(st_model.model_card_data, "model_name", None)
        if not card_name:  # mteb's wrapper reads the name from the card; put back after the run (a trained
            st_model.model_card_data.model_name = name  # model's own card keeps its title)
        mteb = import_mteb(cache_dir)
        from mteb.models import SentenceTransformerEncoderWrapper

        with warnings.catch_warnings():  # mteb 2.26 calls a method sentence-transformers 6 renamed
            warnings.filterwarnings("ignore", message=".*get_sentence_embedding_dimension.*", category=FutureWarning)
            wrapper = SentenceTransformerEncoderWrapper(st_model)
        wrapper.mteb_model_meta = meta
        cache = mteb.ResultCache(cache_path=cache_dir)
        mode = resolve_autocast(autocast, st_model.device)
        progress_line(f"mteb: {len(task_objs)} task(s) for {name} @ {rev[:12]}", progress)
        try:
            with _autocast_context(mode, st_model.device):
                result = mteb.evaluate(
                    wrapper, task_objs, cache=cache,
                    overwrite_strategy="only-missing" if reuse_cache else "always",
                    encode_kwargs={"batch_size": batch_size, "show_progress_bar": False},
                    show_progress_bar=False, co2_tracker=False,
                )
        except EmbedkitError:
            raise
        except Exception as err:  # noqa: BLE001 - data loading (offline), model errors: one clear line
            first = str(err).splitlines()[0] if str(err) else ""
            raise EmbedkitError(
                f"mteb.evaluate failed: {type(err).__name__}: {first}. Tasks from the Hub need internet; {LOCAL_HINT}"
            ) from err
        out_tasks: dict[str, Any] = {}
        by_name = {t.metadata.name: t for t in task_objs}
        for res in result.task_results:
            task_name = res.task_name
            split_scores = res.scores.get("test") or next(iter(res.scores.values()))
            path = cache.get_task_result_path(task_name, meta)
            task_meta = by_name[task_name].metadata if task_name in by_name else None
            task_type = task_meta.type if task_meta else None
            out_tasks[task_name] = {
                "main_score": float(res.get_score()),
                "main_metric": task_meta.main_score if task_meta else None,
                "type": task_type,  # the model card's model-index reads type and dataset
                "dataset": {"path": task_meta.dataset.get("path"), "revision": task_meta.dataset.get("revision")}
                if task_meta else None,
                "metrics": {k: float(split_scores[0][k]) for k in KEY_METRICS.get(task_type or "", ())
                            if len(split_scores) == 1 and k in split_scores[0]},
                "source": sources.get(task_name, "hub"),
                "n_subsets": len(split_scores),
                "evaluation_time": res.evaluation_time,
                "file": str(path),
            }
        out: dict[str, Any] = {
            "tasks": out_tasks,
            "model_name": name,
            "revision": rev,
            "model": info,
            "results_dir": str(cache_dir / "results" / meta.model_name_as_path() / rev),
            "cache": None if temp_cache else str(cache_dir),
            "data_files": {n: getattr(t, "files", None) for n, t in ((t.metadata.name, t) for t in task_objs)
                           if getattr(t, "files", None)},
            "autocast": mode,
            "batch_size": batch_size,
            "versions": package_versions(),
        }
        if submission:
            out["submission"] = write_submission(submission, cache, meta, list(out_tasks))
        out["seconds"] = round(time.perf_counter() - started, 2)
        if temp_cache:
            out["results_dir"] = out["submission"]["results_dir"] if submission else None
            for entry in out_tasks.values():
                entry["file"] = None
        return out
    finally:
        if st_model is not None and not card_name:
            st_model.model_card_data.model_name = card_name
        if temp_cache:
            shutil.rmtree(temp_cache, ignore_errors=True)


SUBMISSION_README = """# MTEB results for {name}

Written by `embedkit eval --mteb ... --submission`. This folder is an mteb result cache
(`mteb.ResultCache(cache_path=...)`): `results/{path}/{revision}/` holds one `<Task>.json` per task and
`model_meta.json`, the layout of https://github.com/embeddings-benchmark/results. Submit with mteb's own
command (it clones the results repository into mteb's cache, so it needs the network and git):

```bash
# commit the results on a new branch of a local clone of the results repository, and print the PR steps:
mteb submit-results --output-folder {folder} --models {name}
# or open the PR at once (needs pip install "mteb[github]" and gh auth login):
mteb submit-results --output-folder {folder} --models {name} --create-pr
```

or from Python: `mteb.ResultCache(cache_path="{folder}").submit_results("{name}", create_pr=False)`.
Only results the repository does not hold yet are committed.

{registry}

Check the fields embedkit could not know before submitting:
- `revision` is `{revision}`{revision_note}.
- `public_training_code`: {code}
- `public_training_data`: {data}
- `training_datasets`: {datasets}
- `license`: {license}; `languages`: {languages}

Tasks: {tasks}
"""
REGISTERED_NOTE = ("{name} is in mteb's model registry: `model_meta.json` is mteb's own entry "
                   "(`mteb.get_model_meta(\"{name}\")`), and the results go with it as they are.")
UNREGISTERED_NOTE = ("{name} is not in mteb's model registry. The results pull request's checklist asks for a "
                     "reference implementation: `model_meta.py` holds the `ModelMeta` to add under "
                     "`mteb/models/model_implementations/` in https://github.com/embeddings-benchmark/mteb (mteb's "
                     "guide: https://embeddings-benchmark.github.io/mteb/contributing/adding_a_model/).")


def check_submission_target(target: str | os.PathLike) -> Path:
    """``target`` as a Path; an existing file or non-empty folder is refused (submissions are never merged)."""
    target = Path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise EmbedkitError(f"--submission {target}: already exists and is not empty; choose a new folder")
    return target


def write_submission(target: str | os.PathLike, cache: Any, meta: Any, task_names: list[str]) -> dict[str, Any]:
    """Write the leaderboard files to ``target``: ``results/<name>/<revision>/<Task>.json`` + ``model_meta.json``
    (mteb's results-repository layout), ``model_meta.py`` (the ``ModelMeta`` for mteb's model registry) and
    a README listing the fields to check. Written to a temporary sibling folder and renamed at the end, so an
    error leaves no half-written submission; an existing non-empty ``target`` is refused."""
    target = check_submission_target(target)
    rel = Path("results") / meta.model_name_as_path() / meta.revision
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        dest = staging / rel
        dest.mkdir(parents=True)
        for task_name in task_names:
            src = cache.get_task_result_path(task_name, meta)
            if not src.is_file():
                raise EmbedkitError(f"mteb wrote no result file for {task_name} at {src}")
            shutil.copy2(src, dest / src.name)
        written = cache.get_task_result_path(task_names[0], meta).parent / "model_meta.json" if task_names else None
        if written is not None and written.is_file():  # mteb.evaluate's own copy
            shutil.copy2(written, dest / "model_meta.json")
        else:
            (dest / "model_meta.json").write_text(json.dumps(meta.to_dict(), indent=4, default=str), encoding="utf-8")
        (staging / "model_meta.py").write_text(
            "from mteb.models import ModelMeta\nfrom mteb.models.sentence_transformer_wrapper import "
            "SentenceTransformerEncoderWrapper\n\n" + f"{_python_name(meta.name)} = {meta.to_python()}\n",
            encoding="utf-8")
        (staging / "README.md").write_text(SUBMISSION_README.format(
            name=meta.name, path=meta.model_name_as_path(), revision=meta.revision, folder=target,
            registry=(REGISTERED_NOTE if registered_meta(meta.name) is not None else UNREGISTERED_NOTE).format(
                name=meta.name),
            revision_note=" (a SHA-256 of the weights; pass --mteb-revision <Hub commit> once the model is pushed)"
            if len(meta.revision) == 64 else "",
            code=meta.public_training_code or "not set (pass --training-code URL)",
            data=meta.public_training_data or "not set (pass --training-data URL)",
            datasets=sorted(meta.training_datasets) if meta.training_datasets else "none recorded",
            license=meta.license, languages=meta.languages, tasks=", ".join(task_names)), encoding="utf-8")
        if target.exists():
            target.rmdir()
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"dir": str(target), "results_dir": str(target / rel), "model_meta": str(target / rel / "model_meta.json"),
            "model_meta_py": str(target / "model_meta.py")}


def _python_name(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.split("/")[-1]).strip("_").lower() or "model"
