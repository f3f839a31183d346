"""MTEB through ``mteb.evaluate`` (the v2 API), air-gapped when the data is local, and leaderboard submission files.

* The cache is explicit: results go to ``<cache_dir>/results/<model name>/<revision>/<Task>.json`` (mteb's own
  layout, with ``model_meta.json``), and ``$MTEB_CACHE`` is pointed there before mteb is first imported, because
  ``import mteb`` otherwise creates ``~/.cache/mteb``.
* The revision is a SHA-256 of the model's weights (unless given), and every run recomputes
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
import shutil
import sys
import tempfile
import time
import warnings
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from embedkit.errors import DataError, EmbedkitError
from embedkit.evaluation.mteb_offline import LOCAL_ONLY, OFFLINE, expand_names, local_source
from embedkit.evaluation.provenance import model_info, package_versions
from embedkit.evaluation.sts import SOURCES, sts_root
from embedkit.log import progress as progress_line
from embedkit.model_ref import embedding_dim, load_model, require_hub
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
    """mteb task names whose data a training recipe used (train set, or STS-B dev for checkpoint selection)."""
    if not recipe:
        return set()
    out: set[str] = set()
    data = recipe.get("data") or {}
    for section in ("train", "dev"):
        entry = data.get(section) or {}
        text = " ".join(str(entry.get(k) or "") for k in ("path", "hub"))
        for fname, task in _TRAINING_FILE_TASKS.items():
            if fname in text:
                out.add(task)
        if "stsb" in text.lower() or "stsbenchmark" in text.lower():
            out.add("STSBenchmark")
        if "sick" in text.lower():
            out.add("SICK-R")
    return out


def _read_recipe(path: str | None) -> dict[str, Any] | None:
    if not path or not (Path(path) / "recipe.yaml").is_file():
        return None

    try:
        loaded = yaml.safe_load((Path(path) / "recipe.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return loaded if isinstance(loaded, dict) else None


def build_model_meta(model: SentenceTransformer, name: str, revision: str, *, path: str | None = None,
                     languages: list[str] | None = None, license: str | None = None,
                     training_code: str | None = None, training_data: str | None = None,
                     training_datasets: set[str] | None = None, release_date: str | None = None) -> Any:
    """An ``mteb.ModelMeta`` for ``model`` (the leaderboard's model description).

    Fields it cannot know (the code URL) stay ``None`` unless given. A training folder's ``recipe.yaml``
    supplies the license, the base model (``adapted_from``) and the training datasets.
    """
    import_mteb()
    from mteb.models import ModelMeta, SentenceTransformerEncoderWrapper

    if "/" not in name:
        raise EmbedkitError(f"--model-name {name!r}: mteb needs 'organization/model_name'")
    recipe = _read_recipe(path)
    recipe_license = ((recipe or {}).get("output") or {}).get("license")
    base = ((recipe or {}).get("model") or {}).get("name")
    datasets = set(training_datasets or ()) | _training_datasets(recipe)
    n_params = sum(p.numel() for p in model.parameters())
    try:
        n_embedding = int(model[0].auto_model.get_input_embeddings().weight.numel())
    except (AttributeError, IndexError, TypeError):
        n_embedding = None
    fields = dict(
        loader=SentenceTransformerEncoderWrapper,
        name=name,
        revision=revision,
        release_date=release_date or date.today().isoformat(),
        languages=list(languages or DEFAULT_LANGUAGES),
        n_parameters=n_params,
        n_embedding_parameters=n_embedding,
        memory_usage_mb=round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20, 2),
        max_tokens=model.max_seq_length,
        embed_dim=embedding_dim(model),
        license=license or recipe_license or "not specified",
        open_weights=True,
        public_training_code=training_code,
        public_training_data=training_data,
        framework=["Sentence Transformers", "PyTorch"],
        reference=None if name.startswith("local/") else f"https://huggingface.co/{name}",
        similarity_fn_name=model.similarity_fn_name or "cosine",
        use_instructions=bool(getattr(model, "prompts", None)),
        training_datasets=datasets or None,
        adapted_from=base if base and "/" in str(base) and not Path(str(base)).exists() else None,
    )
    try:
        return ModelMeta(**fields)
    except Exception as err:  # pydantic ValidationError: one line naming the field
        first = str(err).splitlines()
        raise EmbedkitError(f"mteb ModelMeta: {' '.join(first[:3])}") from None


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
) -> dict[str, Any]:
    """Run ``mteb.evaluate`` on ``tasks`` / ``benchmark`` (and ``extra_tasks``, task objects); returns
    ``{"tasks": {name: {"main_score", ...}}, ...}``.

    ``cache_dir`` (default: a temporary folder, removed afterwards unless ``submission`` copies from it) is
    mteb's result cache. ``revision`` defaults to the weights' SHA-256. ``reuse_cache`` allows mteb to reuse a
    result cached for the same name + revision (off: every run recomputes). ``submission`` writes the
    leaderboard files (see :func:`write_submission`). ``model_path``: where an already loaded ``model`` was
    saved (names it, and its ``recipe.yaml`` fills the model description).
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
    try:
        task_objs, sources = resolve_tasks(names, benchmark, data_dir, source, cache_dir, extra_tasks)
        st_model, spec = load_model(model)
        info = model_info(st_model, spec or model_path)
        name = model_name or info["name"]
        rev = revision or info["weights_sha256"]
        meta = build_model_meta(st_model, name, rev, path=info["path"], languages=languages, license=license,
                                training_code=training_code, training_data=training_data)
        if not getattr(st_model.model_card_data, "model_name", None):
            st_model.model_card_data.model_name = name
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
            task_type = by_name[task_name].metadata.type if task_name in by_name else None
            out_tasks[task_name] = {
                "main_score": float(res.get_score()),
                "main_metric": by_name[task_name].metadata.main_score if task_name in by_name else None,
                "type": task_type,
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
        if temp_cache:
            shutil.rmtree(temp_cache, ignore_errors=True)


SUBMISSION_README = """# MTEB leaderboard submission for {name}

Written by `embedkit eval --mteb ... --submission`. The leaderboard takes two pull requests:

1. **Results** → https://github.com/embeddings-benchmark/results : copy `results/` into the root of that
   repository (it becomes `results/{path}/{revision}/`: one `<Task>.json` per task plus `model_meta.json`).
2. **Model description** → https://github.com/embeddings-benchmark/mteb : add the `ModelMeta` in
   `model_meta.py` to a file under `mteb/models/model_implementations/`.

Before opening them, check the fields embedkit could not know and left empty or defaulted:
- `revision` is `{revision}`{revision_note}.
- `public_training_code`: {code}
- `public_training_data`: {data}
- `training_datasets`: {datasets}
- `license`: {license}; `languages`: {languages}

Tasks: {tasks}
"""


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
        (dest / "model_meta.json").write_text(json.dumps(meta.to_dict(), indent=4, default=str), encoding="utf-8")
        (staging / "model_meta.py").write_text(
            "from mteb.models import ModelMeta\nfrom mteb.models.sentence_transformer_wrapper import "
            "SentenceTransformerEncoderWrapper\n\n" + f"{_python_name(meta.name)} = {meta.to_python()}\n",
            encoding="utf-8")
        (staging / "README.md").write_text(SUBMISSION_README.format(
            name=meta.name, path=meta.model_name_as_path(), revision=meta.revision,
            revision_note=" (a SHA-256 of the weights; pass --revision <Hub commit> once the model is pushed)"
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
