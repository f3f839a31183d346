"""One recipe, end to end: recipe → dataset → method → trainer → evaluator → output folder.

``train`` runs four named steps: :func:`reserve` (refusals first, then the output folder's lock),
:func:`setup` (model, data, method, trainer), ``trainer.train`` (fit), :func:`finish` (evaluate, save, swap).
The output folder ends with the model in sentence-transformers format (``SentenceTransformer(dir)`` loads
it), ``recipe.yaml`` (resolved, every default filled in), ``results.json`` (written last: its presence
marks a finished run), ``logs/``, ``checkpoints/`` (trimmed once results.json is written:
``output.keep_checkpoints``, :func:`embedkit.training.checkpoints.plan_keep`) and the run marker ``.embedkit-run.json``
(:mod:`embedkit.training.rundir` says what the folder guarantees).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml
from packaging.version import Version

from embedkit import distributed
from embedkit.card import add_method_citation, set_card_data, set_dev_card_metrics, set_widget_examples, write_card
from embedkit.data import cache, stream
from embedkit.data.ranking import RerankSet
from embedkit.data.sources import read_train_source
from embedkit.data.stream import StreamData, hub_stream, rename_to
from embedkit.errors import EmbedkitError, RecipeError
from embedkit.evaluation import evaluate
from embedkit.evaluation.overlap import annotate_sts, flagged, run_overlap, summary_line
from embedkit.evaluation.provenance import package_versions
from embedkit.evaluation.ranking import score_set
from embedkit.hub import push
from embedkit.log import log, notice
from embedkit.methods import bound_method
from embedkit.methods.base import TrainContext
from embedkit.model_ref import hub_id_for, load_model
from embedkit.outputs import require_space, size_text, tensor_bytes, writing
from embedkit.paths import atomic_path, resolve_data_dir
from embedkit.recipe import (
    METRIC_LABELS,
    Overrides,
    Recipe,
    RecipeInput,
    is_multitask,
    recipe_to_yaml,
    replay_rows_per_step,
)
from embedkit.training import checkpoints, rundir
from embedkit.training.mine import mine_for_training
from embedkit.training.rundir import CHECKPOINTS, RESULTS, RunFolder
from embedkit.validate import check_batch_split, check_replay_data, load_recipe_with_data

# The packages recorded in a run's results.json.
TRAINING_PACKAGES = ("embedkit", "torch", "transformers", "sentence-transformers", "datasets", "accelerate", "mteb")


def hardware() -> str:
    """A short description of the machine the run used."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def resolve_precision(precision: str) -> str:
    """``auto`` → bf16 on a GPU with bf16 or a CPU with AMX/AVX512-BF16, else fp32."""
    if precision != "auto":
        return precision
    import torch

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    from embedkit.encoding import bf16_supported

    return "bf16" if bf16_supported(torch.device("cpu")) else "fp32"


def build_dataset(recipe: Recipe, train_data: Any, method_cls: Any) -> Any:
    """A ``datasets.Dataset`` whose columns are named after the method's roles (a Hub set is loaded now): the
    memory-mapped rows themselves (the data cache's Arrow file, the Hub dataset), never a copy through lists.
    With ``data.train.streaming`` a ``datasets.IterableDataset`` of them, in file order (a Hub set opened as a
    stream now; :mod:`embedkit.data.stream`)."""
    src = recipe.data.train
    if not isinstance(src, list) and src.streaming:
        return _build_stream(recipe, train_data, method_cls)
    if train_data is None:
        train_data = read_train_source(recipe.data.train, recipe.method.name, method_cls.roles(),
                                       method_cls.column_types, method_cls.column_problem)
        # What validation checks for a local file, once the Hub dataset's columns are known.
        refused = method_cls.data_refusals(recipe, list(train_data.columns))
        if refused:
            raise RecipeError("\n".join(f"{'.'.join(map(str, key))}: {why}" for key, why in refused))
    roles = method_cls.roles(len(train_data.columns))  # a method may take any number of negative columns
    return train_data.to_dataset(roles), train_data


def _build_stream(recipe: Recipe, train_data: Any, method_cls: Any) -> tuple[Any, Any]:
    if train_data is not None:  # a local file, validated and cached
        return train_data.to_stream(method_cls.roles(len(train_data.columns))), train_data
    src = recipe.data.train
    try:
        ds, names = hub_stream(src.hub, src.split, src.config, src.columns, src.data_files, src.max_samples)
    except EmbedkitError as err:
        raise RecipeError(str(err)) from None
    why = method_cls.column_problem(names)
    refused = [(("data", "train"), why)] if why else method_cls.data_refusals(recipe, names)
    if refused:
        raise RecipeError("\n".join(f"{'.'.join(map(str, key))}: {why}" for key, why in refused))
    roles = method_cls.roles(len(names))
    return rename_to(ds, names, roles), StreamData(roles, f"hub stream:{src.hub}:{src.split}")


def _streaming(recipe: Recipe) -> bool:
    return not is_multitask(recipe) and recipe.data.train.streaming


def _stream_order(recipe: Recipe, dataset: Any, train_data: Any, checkpoint: Path | None) -> Any:
    """The stream the trainer reads (:func:`embedkit.data.stream.training_stream`): shuffled passes enough for
    ``training.max_steps``, less the rows the steps before ``checkpoint`` trained on."""
    t, src = recipe.training, recipe.data.train
    rows = None if getattr(train_data, "rows", 0) is None else len(train_data)
    order = stream.training_stream(dataset, t.seed, src.shuffle_buffer or stream.DEFAULT_BUFFER,
                                   stream.passes_needed(rows, t.max_steps, t.batch_size))
    if checkpoint is None:
        return order
    step = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))["global_step"]
    log(f"streaming: resuming at row {step * t.batch_size:,} of the stream (step {step} × global batch "
        f"{t.batch_size}), skipped without tokenising")
    return stream.skip_rows(order, step * t.batch_size)


def replay_rows(recipe: Recipe, data_dir: str | None, world_size: int, rank: int) -> Any:
    """The rows ``data.replay`` names, as the seeded stream the distill term draws from each step
    (:class:`embedkit.losses.distill.ReplayRows`; docs/continual.md)."""
    from embedkit.losses.distill import ReplayRows

    r, t = recipe.data.replay, recipe.training
    data = check_replay_data(recipe, resolve_data_dir(data_dir))
    k = replay_rows_per_step(t.batch_size, r.share)
    rows = ReplayRows([[str(x) for x in col] for col in data.columns.values()], k,
                      r.seed if r.seed is not None else t.seed, world_size, rank, data.description)
    log(f"replay: {k} rows a step ({len(data.columns)} text(s) each) from {data.description} ({len(rows)} rows), "
        f"beside {t.batch_size} new rows: {k / (k + t.batch_size):.3f} of each step's rows")
    return rows


@dataclass
class Plan:
    """What :func:`reserve` decided before anything was written."""

    folder: RunFolder
    checkpoint: Path | None = None  # the intact checkpoint to resume from


def _resume_checks(recipe: Recipe, train_data: Any, out: Path) -> tuple[Path, dict[str, Any] | None]:
    """Read-only checks of ``--resume``: (folder to resume, the saved results if the run is finished)."""
    rundir.check_output_path(out)
    work = rundir.resume_work(out)
    if (work / RESULTS).is_file():  # first: a finished run may have no checkpoints (output.keep_checkpoints)
        return work, json.loads((work / RESULTS).read_text(encoding="utf-8"))
    if not (work / CHECKPOINTS).is_dir():
        raise RecipeError(f"output.dir {out}: no checkpoints to resume from")
    if checkpoints.latest_complete(work / CHECKPOINTS) is None:
        raise RecipeError(f"output.dir {out}: no complete checkpoint to resume from in {work / CHECKPOINTS} "
                          "(the run was stopped before its first save finished); start it again with --overwrite")
    marker = rundir.read_marker(work) or {}
    saved = marker.get("recipe")
    if saved is None and (work / "recipe.yaml").is_file():  # a run started before markers held the recipe
        saved = yaml.safe_load((work / "recipe.yaml").read_text(encoding="utf-8"))
        if recipe.model.pooling is None:
            saved.get("model", {})["pooling"] = None  # the saved file holds the pooling the model turned out to have
    current = recipe.model_dump(mode="json")
    changed = rundir.recipe_differences(saved, current) if saved is not None else []
    if changed:
        raise RecipeError(
            f"output.dir {out}: --resume with a recipe that differs from the run's: {'; '.join(changed)}. "
            f"Only {', '.join(rundir.RESUMABLE_KEYS)} may change on resume; start a new run (another output.dir "
            "or --overwrite) to change the rest"
        )
    digest = getattr(train_data, "sha256", None)
    if digest and marker.get("data_sha256") and digest != marker["data_sha256"]:
        raise RecipeError(f"output.dir {out}: data.train changed since the run started (sha256 {digest[:12]}, "
                          f"the run's {marker['data_sha256'][:12]}); resume needs the same training data")
    return work, None


def eval_task_problems(recipe: Recipe, data_dir: Path | None) -> list[tuple[tuple, str]]:
    """``eval.mteb``: every task known to mteb (or a local task with its data), a Hub task with the Hub answering,
    as :func:`setup` resolves them (it imports mteb, seconds, as setup does)."""
    if not recipe.eval.mteb:
        return []
    from embedkit.evaluation.mteb_eval import resolve_tasks

    try:
        resolve_tasks(recipe.eval.mteb, None, data_dir)
    except EmbedkitError as err:
        return [(("eval", "mteb"), str(err).removeprefix("--mteb: "))]
    return []


# What training adds to validation (embedkit check runs them too): refusals of setup that need a higher layer.
SETUP_CHECKS = (eval_task_problems,)


def check_reserve(recipe: Recipe, train_data: Any, resume: bool = False, overwrite: bool = False) -> None:
    """Every refusal of :func:`reserve`, read-only (``embedkit check`` with the same flags): the output folder,
    and for ``--resume`` its checkpoints and recipe. Checkpoint hashes are verified only under the lock."""
    out = rundir.check_output_path(Path(recipe.output.dir).expanduser())  # links followed, a dangling one refused
    if resume and not overwrite and _resume_checks(recipe, train_data, out)[1] is not None:
        return  # a finished run: --resume leaves it as it is
    rundir.check_open(out, resume=resume, overwrite=overwrite)


def reserve(recipe: Recipe, train_data: Any, resume: bool, overwrite: bool) -> Plan | dict[str, Any]:
    """Every refusal about the output folder, then its lock. Returns the saved results of a finished run
    (``--resume`` leaves it as it is) or the :class:`Plan`."""
    out = rundir.check_output_path(Path(recipe.output.dir).expanduser())  # links followed, a dangling one refused
    if resume and not overwrite:
        work, finished = _resume_checks(recipe, train_data, out)
        if finished is not None:
            step = finished.get("train", {}).get("global_step", "?")
            if work != out:  # an --overwrite run that finished but was stopped before it replaced the old run
                with rundir.open_run(out, resume=True, overwrite=False) as folder:
                    _keep_checkpoints(folder, finished.get("checkpoints"))  # again, if it was stopped in it
                    folder.finish()
                log(f"output.dir {out}: the interrupted --overwrite run had finished (step {step}); it now "
                    "replaces the earlier run")
                return finished
            log(f"output.dir {out}: this run finished (step {step}, {RESULTS}); --resume leaves it unchanged. "
                "Use --overwrite to train it again")
            return finished
    folder = rundir.open_run(out, resume=resume, overwrite=overwrite)
    if not resume:
        return Plan(folder)
    try:  # verify under the lock: hash every file of the newest checkpoints
        checkpoint, skipped = checkpoints.newest_intact(folder.work / CHECKPOINTS)
        for name, reason in skipped:
            log(f"skipping {name}: {reason}")
        if checkpoint is None:
            raise RecipeError(f"output.dir {out}: no intact checkpoint to resume from in {folder.work / CHECKPOINTS}"
                              "; start the run again with --overwrite")
    except BaseException:
        folder.release()
        raise
    return Plan(folder, checkpoint)


# The results.json sections that hold scores (TrainResult.scores).
SCORE_KEYS = ("dev", "sts", "rerank", "retrieval", "mteb")
# How long the other processes wait for rank 0's final evaluation and save (the default process group's 30
# minutes may be too short for a large final evaluation).
FINAL_WAIT = timedelta(hours=24)


@dataclass(eq=False, repr=False)
class TrainResult(Mapping[str, Any]):
    """What :func:`train` returns, on every process of a multi-process run.

    * ``model``: the trained ``SentenceTransformer`` (the final model in memory; loaded from ``output_dir`` on
      first use when the call trained nothing, i.e. ``resume=True`` on a finished run);
    * ``results``: what ``results.json`` holds (rank 0 computes it; the other processes receive it);
      ``scores``: its evaluation sections only (``dev``, ``sts``, ``rerank``, ``retrieval``, ``mteb``);
    * ``output_dir``: the output folder.

    It is also a read-only mapping of ``results`` (``result["train"]["global_step"]``), as ``train`` returned
    before it had a result object.
    """

    output_dir: Path
    results: dict[str, Any]
    _model: Any = field(default=None, repr=False)

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = load_model(str(self.output_dir))[0]
        return self._model

    @property
    def scores(self) -> dict[str, Any]:
        return {k: self.results[k] for k in SCORE_KEYS if k in self.results}

    def __getitem__(self, key: str) -> Any:
        return self.results[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __repr__(self) -> str:
        step = self.results.get("train", {}).get("global_step")
        return (f"TrainResult(output_dir={str(self.output_dir)!r}, global_step={step}, "
                f"scores=[{', '.join(self.scores)}])")


def train(
    recipe: RecipeInput,
    overrides: Overrides = None,
    *,
    data_dir: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    **fields: Any,
) -> TrainResult:
    """Run a recipe end to end; returns a :class:`TrainResult` (the model, ``results.json``, the output folder).

    ``recipe``: a file, a shipped recipe's name (``"quickstart"``), a dict of sections or a :class:`Recipe`,
    validated in full either way (errors name the file, or ``<dict>`` / ``<Recipe>``, and the key path).
    ``overrides``: ``["training.max_steps=2"]`` (the command line's strings, YAML-typed) or
    ``{"training.max_steps": 2}``; each replaces the value at its key. ``fields``: sections by keyword, set key
    by key and applied after ``overrides``: ``train("quickstart", training={"max_steps": 2})`` changes
    ``training.max_steps`` only. ``data_dir``, ``resume`` and ``overwrite`` are the command's ``--data-dir``,
    ``--resume`` and ``--overwrite``. ``progress``: the trainer's progress bar (``None``: only when stderr is a
    terminal, else a plain line every ``training.logging_steps`` steps; ``False``: neither, ``--no-progress``).
    """
    started = time.time()
    with cache.until_accepted():  # a converted training file is kept in the data cache only if not refused
        recipe, train_data = load_recipe_with_data(recipe, overrides, data_dir, checks=SETUP_CHECKS, **fields)
        plan = reserve(recipe, train_data, resume, overwrite)
    if not isinstance(plan, Plan):
        return TrainResult(Path(recipe.output.dir).expanduser(), plan)
    from embedkit.training.progress import quiet_bars, show_bars, tracker_env

    with plan.folder as folder, quiet_bars(not show_bars(progress)):
        if distributed.is_main() and not resume:
            folder.write_marker(recipe=recipe.model_dump(mode="json"),
                                data_sha256=getattr(train_data, "sha256", None))
        run = setup(recipe, train_data, data_dir, folder.work, plan.checkpoint, progress)
        run.results["overrides"] = [str(o) for o in overrides or []]  # the card says what changed the recipe
        if plan.checkpoint is not None:
            log(f"resuming from {plan.checkpoint}")
        with tracker_env(run.trackers, folder.work):
            run.trainer.train(resume_from_checkpoint=str(plan.checkpoint) if plan.checkpoint else None)
        share = _from_rank_zero()  # every process, before rank 0's final evaluation
        if run.trainer.is_world_process_zero():
            try:
                results = finish(run, folder, data_dir, started)
            except BaseException:
                share(None)  # the other processes stop waiting and fail too
                raise
            share(results)
        else:
            results = share(None)
            if results is None:
                raise EmbedkitError("rank 0 failed after training (its error is above); this process stops too")
            if recipe.model.lora is not None and recipe.model.lora.merge:  # as rank 0 saved it
                from embedkit.modeling import merge_lora

                merge_lora(run.trainer.model)
        return TrainResult(folder.out, results, run.trainer.model)


def _from_rank_zero() -> Callable[[Any], Any]:
    """A function every process calls once: rank 0 passes its value, every process gets rank 0's value (in one
    process, the value itself; :func:`embedkit.distributed.broadcast_object`). Its own gloo group waits
    :data:`FINAL_WAIT`, since rank 0 evaluates and saves while the others wait."""
    if not distributed.connected():
        return lambda value: value
    import torch.distributed as dist

    group = dist.new_group(backend="gloo", timeout=FINAL_WAIT)

    def share(value: Any) -> Any:
        value = distributed.broadcast_object(value, group=group)
        dist.destroy_process_group(group)
        return value

    return share


def _row_count(train_data: Any, dataset: Any, multi: bool) -> str:
    if multi:
        return str(len(train_data))
    if hasattr(dataset, "__len__"):
        return str(len(dataset))
    rows = getattr(train_data, "rows", 0)
    return f"a stream of {len(train_data):,}" if rows is not None else "a stream of"


@dataclass
class Run:
    """The parts :func:`setup` built."""

    recipe: Recipe
    method_cls: Any
    trainer: Any
    dev_pairs: Any  # the DevSet (STS-B, reranking or retrieval) that selects the checkpoint, or None
    results: dict[str, Any]
    precision: str
    final_sets: tuple = ()  # eval.rerank / eval.retrieval sets, read before the model loaded
    trackers: list[str] = field(default_factory=list)  # training.report_to, resolved


@dataclass
class Parts:
    """What :func:`data_and_loss` built, the same fields for one method and for a multi-task source list."""

    dataset: Any  # a datasets.Dataset (one method) or a DatasetDict, one split per source
    loss: Any  # the composed loss (one method) or a dict of them, one per source
    train_data: Any  # the rows' TrainData / MultiTrainData (its description, the overlap check)
    rows: str  # how many training rows, as the log says it ("a stream of 1,000")
    hooks: Any  # the method (or the Tasks): batch_sampler() and callbacks(loss)
    prompts: dict | None  # the trainer's prompts argument
    make_trainer: Callable[..., Any]
    extra_args: dict[str, Any] = field(default_factory=dict)  # training arguments only a multi-task run sets
    tasks: Any = None  # the Tasks of a multi-task run: its summary, whether its sampler mixes sources
    replay: Any = None  # data.replay's rows (ReplayRows), drawn into each step by the distill term


def setup(recipe: Recipe, train_data: Any, data_dir: str | None, work: Path, checkpoint: Path | None,
          progress: bool | None = None) -> Run:
    """Model, data and loss, training arguments, trainer; nothing is trained. ``progress`` as in :func:`train`."""

    from embedkit.evaluation.core import load_dev, load_rankings, make_dev_evaluator, score_dev
    from embedkit.training.progress import PlainProgress, describe_trackers, resolve_trackers
    from embedkit.training.trainer import load_method_state

    dev_pairs = load_dev(recipe.data.dev, data_dir) if recipe.data.dev is not None else None
    # The final evaluation's sets are read now too: a bad row fails before training, not after it.
    final_sets = tuple(load_rankings([("rerank", p, "test") for p in recipe.eval.rerank]
                                     + [("retrieval", e.path, e.split) for e in recipe.eval.retrieval], data_dir))
    world_size, rank = distributed.world_size(), distributed.rank()
    model = setup_model(recipe)
    parts = data_and_loss(recipe, train_data, model, work, data_dir, world_size, rank, checkpoint)
    method_cls = bound_method(recipe.method)[0]

    t = recipe.training
    global_batch, per_device = t.batch_size, check_batch_split(recipe, world_size)  # load_recipe refused it already
    negatives = (global_batch if t.gather_across_devices else per_device) - 1
    log(f"method {recipe.method.name} on {recipe.model.name} ({recipe.model.pooling} pooling), "
        f"{parts.rows} training rows from {parts.train_data.description}")
    log(f"world size {world_size}, batch {global_batch} global = {per_device} per device × {world_size}"
        + (f", {negatives} in-batch negatives per anchor" if method_cls.in_batch_negatives
           and not (parts.tasks is not None and parts.tasks.mixed) else ""))  # mixed: each source's own rows

    results: dict[str, Any] = {"recipe": recipe.model_dump(mode="json"), "dev": {},
                               "train": batch_record(global_batch, per_device, world_size)}
    if dev_pairs is not None:  # role: it chooses the checkpoint, so its score is a selection score, not a test
        results["dev"].update(kind=dev_pairs.kind, name=dev_pairs.name, metric=dev_pairs.metric, role="selection")
        held = {d.name: d.heldout for d in getattr(dev_pairs, "sets", [dev_pairs]) if d.heldout}
        if held:  # data.dev.split_from_train: the slices held out of training
            results["dev"]["split_from_train"] = held
            for name, rec in held.items():
                log(f"selection set {name}: {rec['held_out']} of {rec['of']} {rec['unit']}s of {rec['file']} held "
                    f"out of training (share {rec['share']}, seed {rec['seed']})")
        if hasattr(dev_pairs, "rule"):  # several weighted dev sets
            results["dev"]["rule"] = dev_pairs.rule
            log(f"checkpoints selected on the weighted dev score {dev_pairs.rule}")
    # What of every evaluation set the training rows already hold (docs/evaluation.md#overlap), before training.
    results["overlap"], overlap_notes = run_overlap(parts.train_data, recipe, data_dir, dev_pairs, final_sets)
    for note in overlap_notes:
        log(f"overlap: {note}")
    if parts.replay is not None:
        r = parts.replay
        results["train"]["replay"] = {"source": r.source, "rows": len(r), "share": recipe.data.replay.share,
                                      "rows_per_step": r.rows_per_step, "seed": r.seed}
    if parts.tasks is not None:
        results["train"]["tasks"] = parts.tasks.summary
        results["train"]["sampler"] = recipe.method.model_dump()["sampler"]
    if dev_pairs is not None and recipe.eval.before and checkpoint is None:
        before = score_dev(model, dev_pairs)
        results["dev"]["before"] = before
        log(f"{dev_pairs.label} before training: {before[dev_pairs.metric]:.2f} {METRIC_LABELS[dev_pairs.metric]}")

    precision = resolve_precision(t.precision)
    trackers = resolve_trackers(t.report_to)
    log(describe_trackers(trackers, t.report_to, work))
    args = training_args(recipe, work, world_size, precision, trackers, dev_pairs.metric_key if dev_pairs else None,
                         parts.hooks.batch_sampler(), parts.prompts, progress, **parts.extra_args)
    # The method's callbacks, then its objective terms' (the distill term's replay step), then plain progress.
    term_callbacks = parts.loss.callbacks() if hasattr(parts.loss, "callbacks") else []
    callbacks = (parts.hooks.callbacks(parts.loss) + term_callbacks
                 + ([PlainProgress()] if progress is None and args.disable_tqdm else []))
    set_widget_examples(model, parts.dataset)
    trainer = parts.make_trainer(
        model=model, args=args, train_dataset=parts.dataset, loss=parts.loss,
        evaluator=make_dev_evaluator(dev_pairs) if dev_pairs is not None else None,
        callbacks=callbacks,
    )
    for callback in trainer.callback_handler.callbacks:  # TensorBoard writes the run folder's logs/
        if type(callback).__name__ == "TensorBoardCallback":
            callback.logging_dir = str(work / "logs")
    add_method_citation(model, recipe.method.name, method_cls.paper, method_cls.citation)
    if recipe.eval.mteb:  # unknown task names and missing local data fail now, not after training
        from embedkit.evaluation.mteb_eval import resolve_tasks

        resolve_tasks(recipe.eval.mteb, None, data_dir, cache_dir=work / "mteb")
    if checkpoint is not None:
        load_method_state(parts.loss, checkpoint)
    if rank == 0:
        with atomic_path(work / "recipe.yaml") as tmp:
            tmp.write_text(recipe_to_yaml(recipe), encoding="utf-8")
    return Run(recipe, method_cls, trainer, dev_pairs, results, precision, final_sets, trackers)


def setup_model(recipe: Recipe) -> Any:
    """The model to train, seeded identically on every process before anything random is built (a
    training-only head, LoRA weights); its card data and the Matryoshka widths recorded."""
    from transformers import set_seed

    from embedkit.losses.objective import complete_matryoshka
    from embedkit.modeling import build_model

    set_seed(recipe.training.seed)
    model = build_model(recipe.model)
    set_card_data(model, recipe.model_dump(mode="json"), recipe.method.name)  # what sentence-transformers' card says
    complete_matryoshka(recipe, model.get_embedding_dimension())  # the full width trains too; recorded in recipe
    return model


def data_and_loss(recipe: Recipe, train_data: Any, model: Any, work: Path, data_dir: str | None, world_size: int,
                  rank: int, checkpoint: Path | None = None) -> Parts:
    """The training rows as the trainer will draw them, and the loss: one method, or one per multi-task source
    (:func:`embedkit.training.multitask.build_tasks`), in the same :class:`Parts`. A stream starts past the rows
    the steps before ``checkpoint`` trained on."""
    if is_multitask(recipe):  # one dataset and one loss per source (docs/multitask.md)
        from embedkit.training.multitask import build_tasks

        tasks = build_tasks(recipe, train_data, model, world_size, rank, data_dir)
        return Parts(tasks.dataset, tasks.losses, tasks.train_data, str(len(tasks.train_data)), tasks,
                     tasks.prompts or None, tasks.make_trainer, {"multi_dataset_batch_sampler": tasks.sampler,
                                                                 **({"router_mapping": tasks.router_mapping}
                                                                    if tasks.router_mapping else {})},
                     tasks)
    from embedkit.losses.objective import compose
    from embedkit.training.trainer import EmbedkitTrainer

    method_cls, params = bound_method(recipe.method)
    if recipe.data.train.mine is not None:  # hard negatives from the starting model, before the method sees the rows
        train_data = mine_for_training(recipe, train_data, model, work, data_dir)
    dataset, train_data = build_dataset(recipe, train_data, method_cls)
    method = method_cls(TrainContext(recipe=recipe, model=model, params=params, world_size=world_size, rank=rank,
                                     extras={"data_dir": data_dir}))
    dataset = method.prepare_dataset(dataset)
    if _streaming(recipe):
        dataset = _stream_order(recipe, dataset, train_data, checkpoint)
    replay = replay_rows(recipe, data_dir, world_size, rank) if recipe.data.replay is not None else None
    # GradCache, gathering, Matryoshka, objective terms (the distill term reads the replayed rows)
    loss = compose(method.build_loss(), recipe, model, replay)
    return Parts(dataset, loss, train_data, _row_count(train_data, dataset, False), method,
                 method_cls.training_prompts(recipe, dataset.column_names) or None, EmbedkitTrainer, replay=replay)


def training_args(recipe: Recipe, work: Path, world_size: int, precision: str, trackers: list[str],
                  metric_key: str | None, batch_sampler: Any = None, prompts: dict | None = None,
                  progress: bool | None = None, **extra: Any) -> Any:
    """The trainer's ``SentenceTransformerTrainingArguments`` for a recipe: a function of its arguments alone (no
    model, no data; tests call it directly). ``metric_key``: the dev evaluator's score that selects the
    checkpoint (``None``: no dev set); ``batch_sampler``: the method's own (``None``: the default order,
    :func:`embedkit.data.samplers.default_batch_sampler`); ``extra``: further arguments (a multi-task run's
    ``multi_dataset_batch_sampler``; each replaces the argument of its name)."""
    import torch
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.training_args import BatchSamplers

    from embedkit.data.samplers import LengthGroupedBatchSampler, default_batch_sampler, sampler_for_processes
    from embedkit.training.progress import show_bars

    t = recipe.training
    per_device = check_batch_split(recipe, world_size)
    streaming = _streaming(recipe)
    # An embedkit sampler builds global batches and yields each process's share in turn, so its rule (no
    # duplicates, length groups) holds for the batch the loss gathers (docs/distributed.md).
    sampler = sampler_for_processes(batch_sampler or (LengthGroupedBatchSampler if t.group_by_length else None),
                                    world_size)
    kwargs: dict[str, Any] = dict(
        output_dir=str(work / CHECKPOINTS),
        # A stream: the dataloader reads whole global batches (see accelerator_config below).
        per_device_train_batch_size=t.batch_size if streaming else per_device,
        per_device_eval_batch_size=per_device,
        learning_rate=t.learning_rate,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        warmup_steps=t.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        dataloader_pin_memory=torch.cuda.is_available(),
        # No accelerator: say so. Several processes: accelerate only sets up DDP (gloo) when told it runs on CPU
        # (otherwise every process trains alone on the full data); one: transformers refuses bf16 without a GPU
        # unless told it runs on CPU (torch's CPU autocast does bf16).
        use_cpu=not _has_accelerator(),
        weight_decay=t.weight_decay,
        adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2,
        adam_epsilon=t.adam_epsilon,
        lr_scheduler_type=t.lr_scheduler,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        data_seed=t.seed,  # default_batch_sampler's order is accelerate's for this seed
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        eval_strategy="steps" if metric_key is not None else "no",
        eval_steps=t.eval_steps,
        save_strategy="steps",
        save_steps=t.save_steps or t.eval_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=metric_key is not None,
        metric_for_best_model=metric_key,
        greater_is_better=True,
        logging_steps=t.logging_steps,
        report_to=trackers or "none",  # the trainer's own integrations, with every logged loss term and dev score
        dataloader_num_workers=t.dataloader_workers,
        dataloader_drop_last=t.drop_last or world_size > 1,
        # The library's default order, in flat memory; a stream has no sampler (its order: _stream_order).
        batch_sampler=BatchSamplers.BATCH_SAMPLER if streaming else sampler or default_batch_sampler,
        prompts=prompts,
        disable_tqdm=not show_bars(progress),
        # A stream: every process reads it and keeps its k-th slice of each global batch (accelerate's
        # IterableDatasetShard with split batches; dispatching from rank 0 cannot carry the collator's string
        # entries, and per-file sharding would change the batches). A resumed run starts the stream past the rows
        # already trained on (_stream_order); the trainer does not skip them again
        # (EmbedkitTrainer.get_resumed_dataloader).
        **({"accelerator_config": {"dispatch_batches": False, "split_batches": True}} if streaming else {}),
    )
    return SentenceTransformerTrainingArguments(**{**kwargs, **extra})  # extra may replace one


def finish(run: Run, folder: RunFolder, data_dir: str | None, started: float) -> dict[str, Any]:
    """Final evaluation, the model and ``results.json`` (last), the swap of an ``--overwrite``, the push."""
    from embedkit.evaluation.core import score_dev
    from embedkit.experts import ROUTER_FILE, domain_texts, fit_classifier, routed_eval
    from embedkit.experts import describe as describe_experts
    from embedkit.experts import finalize as finalize_experts
    from embedkit.modeling import parameter_counts

    recipe, trainer, results = run.recipe, run.trainer, run.results
    model = trainer.model
    results["train"] = {
        "global_step": trainer.state.global_step,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "best_dev_spearman": trainer.state.best_metric
        if run.dev_pairs is not None and (run.dev_pairs.kind, run.dev_pairs.metric) == ("stsb", "spearman") else None,
        "best_dev": {"metric": run.dev_pairs.metric_key, "value": trainer.state.best_metric}
        if run.dev_pairs is not None else None,
        "precision": run.precision,
        "trainable_parameters": parameter_counts(model)[0],
        **results.get("train", {}),  # world_size, global_batch_size, per_device_batch_size
        "log_history": trainer.state.log_history,
    }
    if run.dev_pairs is not None:
        after = score_dev(model, run.dev_pairs)
        results["dev"]["after"] = after
        _report_dev(results["dev"], run.dev_pairs)
    if run.final_sets:
        for data in run.final_sets:
            with routed_eval(model, "rerank" if isinstance(data, RerankSet) else "retrieval"):
                kind, scores = score_set(model, data)
            results.setdefault(kind, {})[data.name] = scores
            log(f"{data.name}: " + ", ".join(f"{label} {scores[m]:.2f}" for m, label in METRIC_LABELS.items()
                                             if m in scores))
    if recipe.eval.suite == "sts":  # up to the model's own maximum unless eval.max_seq_length says otherwise
        # geometry (alignment, uniformity, tolerance) from the same embeddings: what embedkit sweep charts
        with routed_eval(model, "sts"):
            results["sts"] = evaluate(model, suite="sts", data_dir=data_dir,
                                      max_seq_length=recipe.eval.max_seq_length, show_progress_bar=None, geometry=True)
    if recipe.eval.mteb:
        results["mteb"] = _run_mteb(model, recipe, folder.work, data_dir)
    _report_overlap(results)

    results.update({
        "method": {"name": recipe.method.name, "paper": run.method_cls.paper, "citation": run.method_cls.citation},
        "hardware": hardware(),
        "versions": package_versions(TRAINING_PACKAGES),
        "seconds": round(time.time() - started, 1),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),  # mteb's release_date
    })
    if recipe.model.lora is not None:
        _lora_output(model, recipe.model.lora.merge)
    experts = describe_experts(model)
    if experts is not None:  # model.experts: the learned router, the saved routes' default and the record
        router = fit_classifier(model, domain_texts(trainer.train_dataset), seed=recipe.training.seed)
        with atomic_path(folder.work / ROUTER_FILE) as tmp:
            tmp.write_text(json.dumps(router.to_json()), encoding="utf-8")
        results["experts"] = {**experts, "router": {"file": ROUTER_FILE, **router.info}}
        log(f"experts: learned domain router ({ROUTER_FILE}) held-out accuracy {router.info['held_out_accuracy']}")
        finalize_experts(model)
    _dev_curve(folder.work, results, Path(recipe.output.dir).name)
    subject = f"output.dir {folder.out}"
    hint = (f"the checkpoints in {folder.work / CHECKPOINTS} are intact: free space (or make the folder writable), "
            "then run the same embedkit train ... --resume to finish from the last one")
    require_space(folder.work, tensor_bytes(model.state_dict()), f"{subject}: the final model", hint)
    checkpoints.drop_trainer_eval_dir(folder.work / CHECKPOINTS)
    # What output.keep_checkpoints keeps, recorded in results.json and carried out once that is written: until
    # then the run is unfinished, and --resume needs every checkpoint whole.
    results["checkpoints"] = checkpoints.plan_keep(folder.work / CHECKPOINTS, recipe.output.keep_checkpoints,
                                                   trainer.state.best_model_checkpoint)
    with writing(folder.work, "writing the final model and results.json", subject, hint):
        save_final(model, folder.work, results)
    _keep_checkpoints(folder, results["checkpoints"])
    replaced = folder.staged and rundir.read_marker(folder.out) is not None
    with writing(folder.out.parent, "moving the finished run into place", subject):
        folder.finish()
    out = folder.out
    log(f"model saved to {out} (SentenceTransformer('{out}') loads it)"
        + ("; it replaced the earlier run there" if replaced else ""))
    if recipe.output.push_to_hub:
        push(out, recipe.output.push_to_hub, private=recipe.output.private)
    return results


def _keep_checkpoints(folder: RunFolder, record: dict[str, Any] | None) -> None:
    """Carry out ``results.json``'s record of what the finished run keeps of its checkpoints (a run finished
    before ``output.keep_checkpoints`` existed has none: it keeps everything)."""
    if not record or record.get("keep", "all") == "all":
        return
    with writing(folder.work, "removing the checkpoints' training state", f"output.dir {folder.out}"):
        spared = checkpoints.apply_keep(folder.work / CHECKPOINTS, record)
    for name, foreign in [*record.get("kept_for_user_files", {}).items(), *spared]:
        log(f"{name} holds files embedkit did not write ({', '.join(foreign[:3])}); kept")
    kept = ", ".join(record["kept"]) or "no checkpoint"
    state = ", ".join(record["training_state_removed"]) or "none"
    log(f"output.keep_checkpoints: {record['keep']}: " + (
        f"{CHECKPOINTS}/ removed ({size_text(record['bytes_before'])})" if record["folder_removed"] else
        f"kept {kept} without the training state that only --resume reads ({state}); {CHECKPOINTS}/ "
        f"{size_text(record['bytes_before'])} -> {size_text(record['bytes_after'])}"))


def _report_overlap(results: dict[str, Any]) -> None:
    """One line per evaluation set the training rows hold (above 1% of its units), and the STS suite's average
    over the clean tasks beside the usual one."""
    overlap = results.get("overlap") or {}
    for name in flagged(overlap):
        log(f"overlap: {summary_line(name, overlap[name])}")
    if "sts" in results and overlap:
        annotate_sts(results["sts"], overlap)
        if results["sts"]["seen_in_training"]:
            clean = results["sts"]["avg_clean"]
            n = len(results["sts"]["avg_clean_tasks"])
            log(f"STS avg {results['sts']['avg']:.2f}; over the {n} task{'s' * (n != 1)} not seen in training: "
                + (f"{clean:.2f}" if clean is not None else "none"))


def _run_mteb(model: Any, recipe: Recipe, work: Path, data_dir: str | None) -> dict[str, Any]:
    """``eval.mteb`` on the trained model: mteb's result files in ``<output>/mteb`` (paths recorded relative to
    the output folder, which an ``--overwrite`` run renames at the end)."""
    from embedkit.evaluation.mteb_eval import run_mteb

    name = recipe.output.push_to_hub or f"local/{Path(recipe.output.dir).name}"
    run = run_mteb(model, recipe.eval.mteb, data_dir=data_dir, cache_dir=work / "mteb", model_name=name,
                   recipe=recipe.model_dump(mode="json"), progress=True)
    for entry in run["tasks"].values():
        if entry.get("file"):
            entry["file"] = os.path.relpath(entry["file"], work)
    for key in ("results_dir", "cache"):
        if run.get(key):
            run[key] = os.path.relpath(run[key], work)
    log("mteb: " + ", ".join(f"{t} {v['main_score']:.4f}" for t, v in run["tasks"].items()))
    return run


def _dev_curve(work: Path, results: dict[str, Any], name: str) -> None:
    """``dev-curve.png`` in the output folder: the dev metric at each evaluation step, from the trainer's log."""
    from embedkit.evaluation.report import dev_history, render_training_chart  # scipy, through the STS suite

    history = dev_history(results)
    if history is None or not distributed.is_main():
        return
    try:
        render_training_chart(work / "dev-curve.png", history, name)
    except (OSError, ValueError, RuntimeError) as err:  # a chart is not worth the finished run
        notice(f"dev-curve.png not drawn ({type(err).__name__}: {err})")


def batch_record(global_batch: int, per_device: int, world_size: int) -> dict[str, int]:
    """What ``results.json`` (``train``) and the model card record about the batch."""
    return {"world_size": world_size, "global_batch_size": global_batch, "per_device_batch_size": per_device}


def _lora_output(model: Any, merge: bool) -> None:
    """``merge: true``: fold the adapter into full weights before the save; else say what loading needs."""
    from embedkit.modeling import lora_encoder, merge_lora

    if merge:
        merge_lora(model)
        log("LoRA merged into the encoder's weights (the output loads without peft)")
        return
    peft_model = lora_encoder(model)
    base = peft_model.peft_config[peft_model.active_adapter].base_model_name_or_path if peft_model else None
    if base and hub_id_for(base) is None:
        log(f"note: the adapter's base is the local model {base}, which has no Hub id: the output loads here, and "
            "`embedkit push` refuses it (model.lora.merge: true writes full weights, which publish)")

    try:
        from transformers.integrations.peft import MIN_PEFT_VERSION
    except ImportError:  # a transformers without the constant: nothing known to warn about
        return
    if Version(version("peft")) < Version(MIN_PEFT_VERSION):
        log(f"note: the output holds a LoRA adapter; SentenceTransformer(path) loads it through transformers, which "
            f"asks for peft>={MIN_PEFT_VERSION} (installed {version('peft')}); model.lora.merge: true writes full "
            "weights instead")


def _has_accelerator() -> bool:
    """Whether torch sees a GPU or another accelerator (CUDA, XPU, MPS, ...)."""
    import torch

    if torch.cuda.is_available():
        return True
    accelerator = getattr(torch, "accelerator", None)
    return bool(accelerator is not None and accelerator.is_available())


def _report_dev(dev: dict[str, Any], dev_set: Any) -> None:
    metric, label = dev_set.metric, dev_set.label
    what = "" if metric == "spearman" else f" {METRIC_LABELS[metric]}"  # STS-B's line stays as it always was
    after = dev["after"][metric]
    role = "; the selection set: it chose the checkpoint, so this is not a test score"
    if "before" not in dev:
        log(f"{label}{what} after training: {after:.2f} ({role[2:]})")
        return
    before = dev["before"][metric]
    log(f"{label}{what} after training: {after:.2f} (before {before:.2f}, change {after - before:+.2f}{role})")
    if after <= before:
        log(f"note: this run did not improve {label}{what} over the starting model; no gain is claimed.")


def save_final(model: Any, out: Path, results: dict[str, Any]) -> None:
    """Write the model next to the checkpoints, then ``results.json`` last (atomically)."""
    staging = out / ".final-model.partial"
    if staging.exists():
        shutil.rmtree(staging)
    set_dev_card_metrics(model, results)  # the card's dev scores: the saved model's, not the last evaluation's
    model.save_pretrained(str(staging), safe_serialization=True)  # sentence-transformers writes its card
    write_card(staging, results, mteb_dir=out / "mteb")  # ... and embedkit adds its part
    for item in staging.iterdir():
        target = out / item.name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        item.rename(target)
    staging.rmdir()
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")

