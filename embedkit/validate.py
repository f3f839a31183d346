"""A recipe validated in full before anything runs: the schema (:mod:`embedkit.recipe`), the method's own
parameters (the method registry), the training and dev data (read now, every row), the model reference (a folder
that holds a model, custom code allowed only when asked, a reachable Hub; a Hub dataset the Hub has, or the cache
holds offline) and what the model's configuration and tokenizer files decide (LoRA target modules, prompts against
``max_seq_length``, Matryoshka dimensions; :mod:`embedkit.model_files`, no weights loaded). Every error names the
recipe file, the line and the key path (or the data file and line) and what was expected.

``embedkit check`` and ``embedkit train`` run the same validation, so ``check`` refuses everything ``train``
refuses before its first step (docs/reliability.md lists each refusal and where it fires). Torch is imported only
for a recipe that lists LoRA target modules of a model without safetensors weights, or asks for bf16.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from embedkit import distributed, model_files, paths
from embedkit.data.heldout import remove_heldout, split_heldout
from embedkit.data.ranking import ranking_name, read_beir, read_rerank
from embedkit.data.sources import infer_format, read_corpus, read_local, read_replay
from embedkit.errors import DataError, RecipeError
from embedkit.log import notice
from embedkit.methods import bound_method, get_method
from embedkit.methods.multitask import MultiTrainData, source_method_problem
from embedkit.model_ref import ModelRefError, check_hub_dataset, check_model, check_recipe_refs, hub_id_for
from embedkit.recipe import (
    DevSection,
    MethodSection,
    Overrides,
    Recipe,
    RecipeInput,
    format_validation_error,
    is_multitask,
    parse_recipe,
    per_device_batch,
    replay_rows_per_step,
    task_recipes,
    where_of,
)


def load_recipe(
    recipe: RecipeInput,
    overrides: Overrides = None,
    data_dir: str | None = None,
    check_data: bool = True,
    **fields: Any,
) -> Recipe:
    """Load, override and validate a recipe in full; returns the :class:`Recipe` (every default filled in).

    ``recipe`` is a file, a shipped recipe's name (``"quickstart"``), a dict of sections or a :class:`Recipe`;
    ``overrides`` a list of ``"key.sub=value"`` strings or a dict ``{"key.sub": value}``; keyword ``fields`` set
    sections key by key (``training={"max_steps": 2}``). Raises :class:`RecipeError` naming the file (or
    ``<dict>`` / ``<Recipe>``), line and key path of every problem found.
    """
    return load_recipe_with_data(recipe, overrides, data_dir, check_data, **fields)[0]


# A check a caller from a higher layer adds (training's: eval.mteb): (recipe, data folder) -> [(key path, why)].
Check = Callable[[Recipe, Path | None], list[tuple[tuple, str]]]


def load_recipe_with_data(
    recipe: RecipeInput,
    overrides: Overrides = None,
    data_dir: str | None = None,
    check_data: bool = True,
    checks: Sequence[Check] = (),
    **fields: Any,
) -> tuple[Recipe, Any]:
    """:func:`load_recipe` that also returns the training data it read: ``(recipe, train_data)``.

    ``train_data`` is the :class:`~embedkit.data.sources.TrainData` read from a local file (or ``None``
    for a Hub dataset or when ``check_data`` is off). ``checks`` run last, with the data checks; their problems
    are worded ``file:line: key: why`` like the rest (``embedkit check`` and ``train`` pass training's,
    :data:`embedkit.training.run.SETUP_CHECKS`). Raises :class:`RecipeError` with every problem found.
    """
    recipe, source, lines = parse_recipe(recipe, overrides, fields)
    if is_multitask(recipe) or recipe.method.name == "multitask":
        return _load_multitask(recipe, source, lines, data_dir, check_data, checks)

    # The method's own parameters.
    try:
        method = get_method(recipe.method.name)
    except KeyError as err:
        raise RecipeError(f"{_where(source, lines, ('method', 'name'))}: {err.args[0]}") from None
    params = {k: v for k, v in recipe.method.model_dump().items() if k != "name"}
    try:
        validated = method.params_cls.model_validate(params)
    except ValidationError as err:
        raise RecipeError(
            format_validation_error(err, source, lines, method.params_cls, prefix=("method",))
        ) from None
    recipe.method = MethodSection.validated(recipe.method.name, validated)
    method = method.bind(validated)
    _check_objective(recipe, method, validated, source, lines)
    world = distributed.world_size()
    if world > 1:  # under torchrun / accelerate: the global batch must split evenly now
        check_batch_split(recipe, world, source, lines)
    _check_replay_options(recipe, world, source, lines)
    _check_lora(recipe, source, lines)
    _check_experts(recipe, source, lines)
    _check_schedule(recipe, source, lines)

    # Paths and data.
    resolved_dir = paths.resolve_data_dir(data_dir)
    train_data = None
    if check_data:
        notes: list[str] = []  # said only once the checks pass: a refusal stays one line
        train_data = _check_train_data(recipe, resolved_dir, method, source, lines, notes)
        _check_one_batch(recipe, train_data, world, source, lines)
        dev_hubs = _check_dev(recipe, resolved_dir, source, lines, notes)
        # The model and the Hub too (torch-free, cheap): a bad model folder, custom code or an unreachable Hub
        # fails here, before anything loads.
        check_recipe_refs(recipe, source, lines, hub_data=train_data is None)
        for hub in dev_hubs:
            _check_dev_hub(*hub)
        _check_method_models(recipe, method, validated, source, lines)
        check_replay_data(recipe, resolved_dir, source, lines, notes)
        _check_teachers(recipe, source, lines)
        _check_environment(recipe, resolved_dir, source, lines, checks)
        for note in notes:
            notice(note)
    return recipe, train_data


def _distill_terms(recipe: Recipe) -> list[tuple[int, Any]]:
    terms = recipe.objective.terms if recipe.objective is not None else []
    return [(i, t) for i, t in enumerate(terms) if t.name == "distill"]


def _check_replay_options(recipe: Recipe, world: int, source: str, lines: dict, multi: bool = False) -> None:
    """``data.replay`` and the ``distill`` term come together (the term reads only the replayed rows; replayed rows
    nothing reads would be drawn for nothing), in a single-source recipe, with at least one replayed row a step,
    split evenly over the processes (docs/continual.md)."""
    replay, distill, errors = recipe.data.replay, _distill_terms(recipe), []
    if multi and replay is not None:
        errors.append((("data", "replay"), "a multi-task recipe trains the earlier task as a source of its own "
                       "(docs/multitask.md); data.replay with the distill term is for a single-source recipe"))
    elif replay is None:
        errors += [(("objective", "terms", i, "name"), "term distill holds replayed rows to a frozen teacher; set "
                    "data.replay (the earlier task's rows: path, share)") for i, _ in distill]
    else:
        if not distill:
            errors.append((("data", "replay"), "replayed rows are read only by the objective term distill: add "
                           "{name: distill} to objective.terms, or remove data.replay"))
        batch = recipe.training.batch_size
        k = replay_rows_per_step(batch, replay.share)
        if k < 1:
            errors.append((("data", "replay", "share"), f"{replay.share} of a step of {batch} new rows rounds to 0 "
                           "replayed rows; raise the share"))
        elif k % world:
            errors.append((("data", "replay", "share"), f"{k} replayed rows a step (share {replay.share} of {batch} "
                           f"new rows) do not split evenly over {world} processes; choose a share that gives a "
                           "multiple"))
    if errors:
        raise RecipeError("\n".join(f"{_where(source, lines, key)}: {why}" for key, why in errors))


def replay_file(recipe: Recipe, data_dir: Path | None, source: str = "recipe", lines: dict | None = None,
                notes: list[str] | None = None) -> str | None:
    """The local file ``data.replay.path`` names (``{data_dir}`` expanded), or ``None`` when its Hub dataset
    ``data.replay.hub`` is to be read instead (no path, or a ``{data_dir}`` path whose file is absent: a notice in
    ``notes`` says so); a path the user wrote out must exist."""
    replay = recipe.data.replay
    if replay.path is None:
        return None
    where = _where(source, lines or {}, ("data", "replay", "path"))
    return _local_file(replay.path, replay.hub, data_dir, where, f"replay reads the Hub dataset {replay.hub} instead",
                       notes if notes is not None else [])


def check_replay_data(recipe: Recipe, data_dir: Path | None, source: str = "recipe",
                      lines: dict | None = None, notes: list[str] | None = None) -> Any:
    """The replayed rows, read in full (``None`` without ``data.replay``): a missing file, a bad row or column, a
    file a ``data.dev`` slice is held out of (its rows would reach training), too few texts a step for ``kl``."""
    replay = recipe.data.replay
    if replay is None:
        return None
    lines = lines or {}
    path = replay_file(recipe, data_dir, source, lines, notes)
    where = _where(source, lines, ("data", "replay", "path" if path is not None else "hub"))
    if path is None:  # one line before anything loads when the Hub cannot give it
        try:
            check_hub_dataset(replay.hub, f"{where} {replay.hub}", "use a local file in data.replay.path")
        except ModelRefError as err:
            raise RecipeError(str(err)) from None
    held = heldout_devs(recipe, path, data_dir)
    if held:
        raise RecipeError(f"{where}: {path} is the file {held[0][1]}.split_from_train holds a selection slice out of; "
                          "replaying it would train on that slice: replay another file")
    try:
        data = read_replay(replay, path)
    except DataError as err:
        raise RecipeError(f"{where}: {err}") from None
    texts = replay_rows_per_step(recipe.training.batch_size, replay.share) * len(data.columns)
    for _, term in _distill_terms(recipe):
        if (term.model_extra or {}).get("mode") == "kl" and texts < 2 * distributed.world_size():
            raise RecipeError(f"{_where(source, lines, ('data', 'replay', 'share'))}: term distill mode kl compares "
                              f"each replayed text with the step's others; {texts} text(s) a step leave none to compare"
                              "; raise the share")
    return data


def _check_teachers(recipe: Recipe, source: str, lines: dict) -> None:
    """A distill term's named teacher, checked as ``model.name`` is; for ``cosine`` / ``mse`` its embedding width
    must be the model's (read from the files where they are at hand)."""
    for i, term in _distill_terms(recipe):
        extra = term.model_extra or {}
        teacher = extra.get("teacher", "initial")
        if teacher == "initial":
            continue
        where = _where(source, lines, ("objective", "terms", i, "teacher"))
        try:
            check_model(teacher, what=where, trust_remote_code=recipe.model.trust_remote_code)
        except ModelRefError as err:
            raise RecipeError(str(err)) from None
        mode = extra.get("mode", "cosine")
        if mode != "kl":
            tw = model_files.embedding_width(teacher, None)
            sw = model_files.embedding_width(recipe.model.name, recipe.model.pooling, recipe.model.revision)
            if tw is not None and sw is not None and tw != sw:
                raise RecipeError(f"{where}: {teacher} embeds in {tw} dimensions, the model in {sw}; mode {mode} "
                                  "compares the embeddings themselves: use mode kl (similarity distributions)")


def _check_one_batch(recipe: Recipe, data: Any, world: int, source: str, lines: dict) -> None:
    """A short last batch is dropped (``training.drop_last``, and always under several processes): with fewer
    rows than one global batch, nothing would train (the trainer runs 0 steps and saves the starting model)."""
    t = recipe.training
    if data is None or len(data) >= t.batch_size or not (t.drop_last or world > 1):
        return
    why = "training.drop_last drops" if t.drop_last else f"{world} processes drop"
    raise RecipeError(f"{_where(source, lines, ('training', 'batch_size'))}: the training data has {len(data)} "
                      f"rows, fewer than one global batch ({t.batch_size}), and {why} a short batch, so nothing "
                      "would train; lower training.batch_size or add rows")


# Fewer tokens than this left for the text after a prompt (model.prompts) is refused: every input would embed
# (nearly) the same.
MIN_TEXT_TOKENS = 8


def _check_environment(recipe: Recipe, data_dir: Path | None, source: str, lines: dict,
                       checks: Sequence[Check]) -> None:
    """What the model's files, the hardware and the caller's ``checks`` (training's: ``eval.mteb``) decide, once
    the recipe's own checks passed: each of these was refused by training setup only, after the model loaded."""
    _check_model_files(recipe, source, lines)
    _check_precision(recipe, source, lines)
    errors = [f"{_where(source, lines, key)}: {why}" for check in checks for key, why in check(recipe, data_dir)]
    if errors:
        raise RecipeError("\n".join(errors))


def _check_schedule(recipe: Recipe, source: str, lines: dict) -> None:
    """With a dev set the best checkpoint is kept, so every save must fall on an evaluation (transformers'
    ``load_best_model_at_end`` rule, refused by the trainer's arguments otherwise)."""
    t = recipe.training
    if recipe.data.dev is not None and (t.save_steps or t.eval_steps) % t.eval_steps:
        raise RecipeError(f"{_where(source, lines, ('training', 'save_steps'))}: {t.save_steps} is not a multiple of "
                          f"training.eval_steps ({t.eval_steps}); with a dev set the best checkpoint is kept, so "
                          "every save must fall on an evaluation: use a multiple, or leave save_steps out (it "
                          "defaults to eval_steps)")


def _check_model_files(recipe: Recipe, source: str, lines: dict) -> None:
    """Refusals that need the model's configuration or tokenizer, read from its files (never its weights): LoRA
    target modules that the encoder lacks, prompts that leave fewer than :data:`MIN_TEXT_TOKENS` tokens of
    ``max_seq_length`` for the text, Matryoshka dimensions wider than the embedding. Skipped where the files are
    not at hand (training then refuses as before)."""
    cfg, dims = recipe.model, recipe.training.matryoshka_dims
    targets = cfg.lora.target_modules if cfg.lora is not None else None
    targets = targets if isinstance(targets, list) else None  # all-linear adapts whatever the model has
    if not (targets or cfg.prompts or dims):
        return
    folder = model_files.transformer_folder(cfg.name, cfg.revision)
    errors = []
    names = model_files.module_names(folder) if targets and folder is not None else None
    for target, why in model_files.lora_target_problems(names, targets) if names and targets else []:
        errors.append(f"{_where(source, lines, ('model', 'lora', 'target_modules', targets.index(target)))}: {why}")
    for name, prompt in (cfg.prompts or {}).items():
        count = model_files.prompt_tokens(folder, prompt) if folder is not None else None
        if count is not None and cfg.max_seq_length - count < MIN_TEXT_TOKENS:
            errors.append(f"{_where(source, lines, ('model', 'prompts', name))}: the prompt takes {count} tokens "
                          f"(special tokens included) of model.max_seq_length {cfg.max_seq_length}, leaving "
                          f"{max(cfg.max_seq_length - count, 0)} for the text; expected at least {MIN_TEXT_TOKENS}: "
                          "shorten the prompt or raise model.max_seq_length")
    width = model_files.embedding_width(cfg.name, cfg.pooling, cfg.revision) if dims else None
    wide = [d for d in dims or [] if width is not None and d > width]
    if wide:
        errors.append(f"{_where(source, lines, ('training', 'matryoshka_dims'))}: {wide[0]} is larger than the "
                      f"model's embedding dimension {width}")
    if errors:
        raise RecipeError("\n".join(errors))


def _check_precision(recipe: Recipe, source: str, lines: dict) -> None:
    """``precision: bf16`` on a CUDA GPU without bf16 (before Ampere): transformers refuses it when the trainer
    is built. A CPU runs bf16 (emulated where it lacks AVX512-BF16/AMX). ``precision: fp16`` without a CUDA GPU:
    accelerate would run it as plain fp32 (no autocast, no loss scaler), an option silently not honoured."""
    if recipe.training.precision not in ("bf16", "fp16"):
        return
    import torch

    if recipe.training.precision == "fp16":
        if not torch.cuda.is_available():
            raise RecipeError(f"{_where(source, lines, ('training', 'precision'))}: fp16 mixed precision needs a "
                              "CUDA GPU; this machine has none (it would train in fp32): use auto, bf16 or fp32")
        return
    if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise RecipeError(f"{_where(source, lines, ('training', 'precision'))}: bf16 needs a GPU with bf16 (Ampere "
                          f"or newer); {torch.cuda.get_device_name(0)} has none: use fp16, fp32 or auto")


def _params(method: Any, recipe: Recipe) -> Any:
    """The method's validated parameters of a recipe whose ``method`` section validation has already checked."""
    return bound_method(recipe.method)[1]


def _check_method_models(recipe: Recipe, method: Any, params: Any, source: str, lines: dict) -> None:
    """The other models a method loads (DebCSE's ``method.reference``), checked as ``model.name`` is."""
    for key, name in method.model_refs(params):
        try:
            check_model(name, what=_where(source, lines, key), trust_remote_code=recipe.model.trust_remote_code)
        except ModelRefError as err:
            raise RecipeError(str(err)) from None


def _check_objective(recipe: Recipe, method: Any, params: Any, source: str, lines: dict) -> None:
    """Validate each ``objective.terms`` entry by its term's schema, then refuse every cross-cutting option
    (GradCache, Matryoshka, terms) the method cannot honour (:meth:`~embedkit.methods.base.Method.refusals`)."""
    errors = []
    for key, problem in method.objective_problems(recipe):
        if isinstance(problem, ValidationError):  # a term entry against its schema
            errors.append(format_validation_error(problem, source, lines, problem.title_schema, prefix=key))
        else:
            errors.append(f"{_where(source, lines, key)}: {problem}")
    for key, reason in method.prompt_problems(recipe):
        errors.append(f"{_where(source, lines, tuple(key))}: {reason}")
    if not errors:
        for key, reason in method.refusals(recipe, params):
            errors.append(f"{_where(source, lines, tuple(key))}: {reason}")
    if errors:
        raise RecipeError("\n".join(errors))


def check_batch_split(recipe: Recipe, world_size: int, source: str = "recipe",
                      lines: dict[tuple, int] | None = None) -> int:
    """The per-process batch of ``training.batch_size`` (the global batch) over ``world_size`` processes;
    a :class:`RecipeError` naming file, line and key when it does not divide."""
    try:
        return per_device_batch(recipe.training.batch_size, world_size)
    except ValueError as err:
        raise RecipeError(f"{_where(source, lines or {}, ('training', 'batch_size'))}: {err}") from None


def _check_experts(recipe: Recipe, source: str, lines: dict) -> None:
    """``model.experts`` (docs/experts.md): a multi-task recipe whose sources are the domains, one each; layers
    the encoder has; a route for every evaluation the run makes; nothing it cannot honour (LoRA, mteb)."""
    cfg = recipe.model.experts
    if cfg is None:
        return
    key = ("model", "experts")
    errors: list[tuple[tuple, str]] = []
    if not is_multitask(recipe):
        raise RecipeError(f"{_where(source, lines, key)}: experts route each multi-task source to its own expert; "
                          "they need data.train to list the sources (one per domain) and method: multitask")
    names = [src.name for src in recipe.data.train]
    for i, domain in enumerate(cfg.domains):
        if domain not in names:
            errors.append((key + ("domains", i), f"domain {domain!r} is not a source of data.train (sources: "
                                                 f"{', '.join(names)}); each domain is a source's name"))
    for i, name in enumerate(names):
        if name not in cfg.domains:
            errors.append((("data", "train", i, "name"), f"source {name!r} has no expert; list it in "
                                                         "model.experts.domains"))
    if cfg.default is not None and cfg.default not in cfg.domains:
        errors.append((key + ("default",), f"expected one of the domains ({', '.join(cfg.domains)}), got "
                                           f"{cfg.default!r}"))
    for kind, domain in cfg.eval_routes.items():
        if domain not in cfg.domains:
            errors.append((key + ("eval_routes", kind), f"expected one of the domains ({', '.join(cfg.domains)}), "
                                                        f"got {domain!r}"))
    dev = recipe.data.dev
    needed: dict[str, tuple] = {}
    for i, d in enumerate(dev if isinstance(dev, list) else [dev] if dev is not None else []):
        needed.setdefault("sts" if d.kind == "stsb" else d.kind, ("data", "dev", i) if isinstance(dev, list)
                          else ("data", "dev"))
    if recipe.eval.suite != "none":
        needed.setdefault("sts", ("eval", "suite"))
    if recipe.eval.rerank:
        needed.setdefault("rerank", ("eval", "rerank"))
    if recipe.eval.retrieval:
        needed.setdefault("retrieval", ("eval", "retrieval"))
    for kind, where in needed.items():
        if kind not in cfg.eval_routes:
            errors.append((where, f"a model with experts encodes every evaluation through one expert: give this "
                                  f"{kind} evaluation's route in model.experts.eval_routes.{kind} (one of "
                                  f"{', '.join(cfg.domains)})"))
    if recipe.eval.mteb:
        errors.append((("eval", "mteb"), "mteb encodes through its own wrapper, which cannot name an expert; "
                                         "remove the key (score the saved model with a task route instead)"))
    if recipe.model.lora is not None:
        errors.append((("model", "lora"), "LoRA and experts both replace encoder weights; use one of them"))
    if cfg.layers != "all":
        folder = model_files.transformer_folder(recipe.model.name, recipe.model.revision)
        config = model_files._read(folder / "config.json") if folder is not None else None
        count = config.get("num_hidden_layers") if isinstance(config, dict) else None
        for i, layer in enumerate(cfg.layers):
            if isinstance(count, int) and layer >= count:
                errors.append((key + ("layers", i), f"layer {layer} out of range: the encoder has {count} layers "
                                                    f"(0 .. {count - 1})"))
    if errors:
        raise RecipeError("\n".join(f"{_where(source, lines, k)}: {why}" for k, why in errors))


def _check_lora(recipe: Recipe, source: str, lines: dict) -> None:
    """``model.lora`` needs the ``peft`` package (looked up, not imported: validation stays fast); an adapter that
    ``output.push_to_hub`` publishes needs a base with a Hub id (``embedkit push`` refuses it otherwise)."""
    if recipe.model.lora is None:
        return
    where = _where(source, lines, ("model", "lora"))
    if importlib.util.find_spec("peft") is None:
        raise RecipeError(f"{where}: LoRA needs the peft package: pip install peft (or pip install 'embedkit[lora]')")
    if recipe.output.push_to_hub and not recipe.model.lora.merge and hub_id_for(recipe.model.name) is None:
        raise RecipeError(f"{_where(source, lines, ('model', 'lora', 'merge'))}: output.push_to_hub would publish a "
                          f"LoRA adapter on the local model {recipe.model.name}, which has no Hub id (it would not "
                          "load anywhere else); set model.lora.merge: true to publish full weights")


def _where(source: str, lines: dict[tuple, int], key: tuple) -> str:
    """``file:line: key.path`` for a message; the nearest enclosing key's line when the key is a default."""
    return f"{where_of(source, lines, key)}: {'.'.join(map(str, key))}"


def _local_file(
    raw: str, hub: str | None, data_dir: Path | None, where: str, instead: str, notes: list[str],
    folder_file: str | None = None, folders: bool = False,
) -> str | None:
    """The local file a recipe ``path`` names, or ``None`` when the Hub dataset ``hub`` is to be used instead.

    The Hub stands in only for a ``{data_dir}`` path whose data folder (or file in it) is absent, and a notice
    says so: a path the user wrote out must exist. ``folder_file`` is the file to take when the path is a folder;
    ``folders``: a folder itself is a path (a method whose ``read_train_file`` reads one).
    """
    try:
        path = paths.expand(raw, data_dir)
    except FileNotFoundError as err:  # {data_dir} with no data folder set
        if hub:
            notes.append(f"{where}: no data folder for {raw!r} (pass --data-dir or set ${paths.ENV_VAR}); {instead}")
            return None
        raise RecipeError(f"{where}: {err}") from None
    if folder_file and Path(path).is_dir():
        path = str(Path(path) / folder_file)
    if Path(path).is_file() or folders and Path(path).is_dir():
        return path
    if hub and "{data_dir}" in raw:
        notes.append(f"{where}: {path}: not found; {instead}")
        return None
    raise RecipeError(f"{where}: file not found: {path}")


def heldout_devs(recipe: Recipe, train_path: str | None, data_dir: Path | None) -> list[tuple[DevSection, str]]:
    """The ``data.dev`` entries whose ``split_from_train`` slices the training file ``train_path`` (the same file,
    after ``{data_dir}``), with their key paths: that slice leaves this source's training rows."""
    if train_path is None:
        return []
    devs = recipe.data.dev if isinstance(recipe.data.dev, list) else [recipe.data.dev]
    out = []
    for i, dev in enumerate(devs):
        if dev is None or dev.split_from_train is None:
            continue
        try:
            path = Path(paths.expand(dev.path, data_dir))
            if path.is_file() and path.samefile(train_path):
                out.append((dev, ".".join(map(str, ("data", "dev", *((i,) if isinstance(recipe.data.dev, list)
                                                                      else ()))))))
        except (FileNotFoundError, OSError):
            continue  # the dev check reports a missing file
    return out


def _check_train_data(recipe: Recipe, data_dir: Path | None, method: Any, source: str, lines: dict,
                      notes: list[str], whole: Recipe | None = None) -> Any:
    """One training source's rows, read in full and checked (``whole``: the multi-task recipe a source's view
    belongs to, whose ``data.dev`` may hold a slice out of this source's file)."""
    src = recipe.data.train
    if src.mine is not None:
        _check_mine(recipe, data_dir, method, source, lines)
        _check_data_refusals(recipe, method, mined_columns(src.mine.num_negatives), source, lines)
    if src.path is None:
        return None  # a Hub dataset is read when training starts
    where = _where(source, lines, ("data", "train", "path"))
    path = _local_file(src.path, src.hub, data_dir, where, f"training reads the Hub dataset {src.hub} instead", notes,
                       folders=method.reads_folders)
    if path is None:
        return None
    data = _read_train_file(recipe, path, method, where, notes)
    if src.mine is None:  # mined columns were checked above
        _check_data_refusals(recipe, method, list(data.columns), source, lines)
    for dev, key in heldout_devs(whole or recipe, path, data_dir):  # before max_samples: the slice is of the whole file
        if src.streaming:
            raise RecipeError(f"{_where(source, lines, (*key.split('.'), 'split_from_train'))}: holding a slice out "
                              f"of the streamed training file {path} takes a pass over every row by index; point "
                              "data.dev at its own file, or train without data.train.streaming")
        fmt = infer_format(path, src.format)
        if fmt != dev.kind:
            raise RecipeError(f"{where}: {key}.split_from_train holds a {dev.kind} slice out of {path}, which this "
                              f"source reads as format {fmt}; read it as format {dev.kind} (or hold out another file)")
        try:
            held = split_heldout(path, dev.kind, dev.split_from_train, dev.split_seed)
        except DataError as err:
            raise RecipeError(f"{_where(source, lines, (*key.split('.'), 'path'))}: {err}") from None
        data.columns = remove_heldout(data.columns, held)
        data.description += f" less the {held.record['held_out']} {held.record['unit']}s held out by {key}"
    if src.max_samples:
        data.keep_first(src.max_samples)
    if src.mine is None:
        problem = method.rows_problem(data, _params(method, recipe))
        if problem:
            raise RecipeError(f"{where}: {problem}")
    return data


def _read_train_file(recipe: Recipe, path: str, method: Any, where: str, notes: list[str]) -> Any:
    src = recipe.data.train
    if src.mine is not None:  # (anchor, positive) rows; the negatives are mined at training setup
        try:
            data = read_local(path, src.format, src.columns)
        except DataError as err:
            raise RecipeError(f"{where}: {err}") from None
        if len(data.columns) != 2:
            raise RecipeError(f"{where}: data.train.mine needs (anchor, positive) rows, the data gives "
                              f"{len(data.columns)} column(s) ({', '.join(data.columns)}); select them with "
                              "data.train.columns")
        return data
    try:
        data = method.read_train_file(path, recipe, notes)  # a method that builds its own rows (ccp), else None
        if data is None:
            data = read_local(path, src.format, src.columns, types=method.column_types)
    except DataError as err:
        raise RecipeError(f"{where}: {err}") from None
    problem = method.column_problem(list(data.columns))
    if problem:
        raise RecipeError(f"{where}: {problem}")
    return data


def _check_data_refusals(recipe: Recipe, method: Any, columns: list[str], source: str, lines: dict) -> None:
    """The method's options that these training columns leave without effect
    (:meth:`~embedkit.methods.base.Method.data_refusals`), one ``file:line: key: reason`` line each."""
    errors = [f"{_where(source, lines, key)}: {reason}" for key, reason in method.data_refusals(recipe, columns)]
    if errors:
        raise RecipeError("\n".join(errors))


def mined_columns(num_negatives: int) -> list[str]:
    """The columns ``data.train.mine`` hands the method: anchor, positive, negative_1 … negative_k."""
    return ["anchor", "positive", *(f"negative_{i}" for i in range(1, num_negatives + 1))]


def _check_mine(recipe: Recipe, data_dir: Path | None, method: Any, source: str, lines: dict) -> None:
    """``data.train.mine``: the method must take the mined columns, and the corpus file must read."""
    mine = recipe.data.train.mine
    assert mine is not None
    wanted = mined_columns(mine.num_negatives)
    # The method must take 2 + k text columns (a fixed count, or any number of negatives) and no score column.
    if method.label_role or method.column_problem(wanted):
        raise RecipeError(
            f"{_where(source, lines, ('data', 'train', 'mine'))}: method {recipe.method.name!r} reads "
            f"{', '.join(method.roles())}; mining gives {', '.join(wanted)}: use a method that takes anchor, "
            "positive and negative columns (contrastive; simcse-sup with num_negatives: 1)")
    if mine.corpus is not None:
        where = _where(source, lines, ("data", "train", "mine", "corpus"))
        path = _local_file(mine.corpus, None, data_dir, where, "", [])
        try:
            if not read_corpus(str(path)):
                raise RecipeError(f"{where}: {path}: the corpus is empty")
        except DataError as err:
            raise RecipeError(f"{where}: {err}") from None


def _check_dev(recipe: Recipe, data_dir: Path | None, source: str, lines: dict, notes: list[str]) -> list[tuple]:
    """``data.dev`` follows the rule of ``data.train``: a written-out path must exist (the Hub copy is used
    only for a ``{data_dir}`` path that is absent), checked now rather than after the heavy imports. A reranking
    file or retrieval folder is read in full now, as training reads it (a folder read here is not parsed again by
    the run); two dev sets of one name are refused. Then the final evaluation's ``eval.rerank`` /
    ``eval.retrieval`` the same way. Returns the Hub copies to check (:func:`_check_dev_hub`) once the model and
    the training set's Hub dataset are."""
    listed = isinstance(recipe.data.dev, list)
    devs = recipe.data.dev if listed else [recipe.data.dev]
    seen: dict[str, int] = {}
    hubs = []
    for i, dev in enumerate(devs):  # a list: weighted dev sets (data.dev.0, data.dev.1, ...)
        if dev is None:
            continue
        key = ("data", "dev", *((i,) if listed else ()))
        where = _where(source, lines, key + ("path",))
        if dev.split_from_train is not None:  # the slice must read and be scorable
            try:
                held = split_heldout(paths.expand(dev.path, data_dir), dev.kind, dev.split_from_train,
                                     dev.split_seed)
            except (DataError, FileNotFoundError) as err:
                raise RecipeError(f"{where}: {err}") from None
            name = held.dev.name
        elif dev.kind == "stsb":
            name = "stsb-dev"  # evaluation.core.load_dev's name for it
            instead = f"STS-B dev comes from the Hub dataset {dev.hub} ({dev.split}) instead"
            local = _local_file(dev.path, dev.hub, data_dir, where, instead, notes, folder_file="sts-dev.csv") \
                if dev.path else None
            if local is None:
                hubs.append((dev.hub, _where(source, lines, key + ("hub",)), _where(source, lines, key)))
        else:
            name = _check_ranking(dev.kind, dev.path, dev.split, data_dir, where, scorable=True)
        if name in seen:
            first = ".".join(map(str, ("data", "dev", seen[name])))
            raise RecipeError(f"{where}: this dev set is named {name!r} like {first} (a set is named after its "
                              "file's folder and name, or a retrieval folder and split); list each set once")
        seen[name] = i
    for i, path in enumerate(recipe.eval.rerank):
        _check_ranking("rerank", path, "test", data_dir, _where(source, lines, ("eval", "rerank", i)))
    for i, entry in enumerate(recipe.eval.retrieval):
        _check_ranking("retrieval", entry.path, entry.split, data_dir,
                       _where(source, lines, ("eval", "retrieval", i, "path")))
    return hubs


def _check_dev_hub(hub: str | None, where: str, where_dev: str) -> None:
    """STS-B dev from the Hub: it must be there (or, offline, in the cache), as training loads it."""
    if not hub:
        raise RecipeError(f"{where_dev}: STS-B dev needs a path (sts-dev.csv or its folder) or a hub dataset; or set "
                          "data.dev: null to train without checkpoint selection")
    try:
        check_hub_dataset(hub, f"{where} {hub}", "pass --data-dir (or set $EMBEDKIT_DATA) to a folder with "
                          "sts/stsbenchmark/sts-dev.csv, or set data.dev: null")
    except ModelRefError as err:
        raise RecipeError(str(err)) from None


def _check_ranking(kind: str, raw: str, split: str, data_dir: Path | None, where: str,
                   scorable: bool = False) -> str:
    """A reranking file or a BEIR folder, read in full (every id of the qrels in the corpus and queries); returns
    the set's name, as training names it."""
    try:
        path = paths.expand(raw, data_dir)
    except FileNotFoundError as err:
        raise RecipeError(f"{where}: {err}") from None
    try:
        if kind == "rerank":
            data = read_rerank(path)
            if scorable and not any(q.scorable for q in data.queries):
                raise DataError(f"{path}: no question has both a positive and a negative candidate (MAP and MRR "
                                "are undefined)")
        else:
            read_beir(path, split)
    except DataError as err:
        raise RecipeError(f"{where}: {err}") from None
    return ranking_name(kind, path, split)


# ----------------------------------------------------------------------------------------------------------
# Multi-task recipes (data.train a list of sources, method: multitask; docs/multitask.md)


def _load_multitask(recipe: Recipe, source: str, lines: dict, data_dir: str | None,
                    check_data: bool, checks: Sequence[Check]) -> tuple[Recipe, Any]:
    """:func:`load_recipe` for ``data.train`` as a list: the top-level ``multitask`` method, each source's method
    and options checked against that source's own view (:func:`embedkit.recipe.task_recipes`), each source's data
    read in full; errors name the source's keys (``data.train.<i>.…``)."""
    multi = is_multitask(recipe)
    if multi != (recipe.method.name == "multitask"):
        key, why = (("method", "name"), "a recipe whose data.train lists several sources needs method: {name: "
                    "multitask, sampler: ...}; each source's method goes in its own method block") if multi else (
                    ("data", "train"), "method multitask needs data.train to be a list of named sources, each with "
                    "its own method block")
        raise RecipeError(f"{_where(source, lines, key)}: {why}")
    method = get_method("multitask")
    try:
        params = method.params_cls.model_validate(
            {k: v for k, v in recipe.method.model_dump().items() if k != "name"})
    except ValidationError as err:
        raise RecipeError(format_validation_error(err, source, lines, method.params_cls, prefix=("method",))) from None
    recipe.method = MethodSection.validated("multitask", params)
    errors = []
    world = distributed.world_size()
    if params.sampler == "mixed" and world > 1:
        errors.append(f"{_where(source, lines, ('method', 'sampler'))}: sampler mixed runs in one process (each "
                      "process's share of a source would differ in size); use a single-task sampler under torchrun")
    if recipe.training.group_by_length:
        errors.append(f"{_where(source, lines, ('training', 'group_by_length'))}: a multi-task run draws its batches "
                      "with the multi-task sampler; it cannot also group them by length: remove the key")
    views = task_recipes(recipe)
    for i, (src, view) in enumerate(views):
        errors += _check_source_method(i, src, view, source, lines)
    if errors:
        raise RecipeError("\n".join(errors))
    _check_replay_options(recipe, world, source, lines, multi=True)
    if world > 1:
        check_batch_split(recipe, world, source, lines)
    _check_lora(recipe, source, lines)
    _check_experts(recipe, source, lines)
    _check_schedule(recipe, source, lines)
    recipe.data.train = [src.model_copy(update={"method": view.method}) for src, view in views]
    if not check_data:
        return recipe, None
    resolved_dir = paths.resolve_data_dir(data_dir)
    notes: list[str] = []
    parts: dict[str, Any] = {}
    for i, (src, view) in enumerate(views):
        try:
            parts[src.name] = _check_train_data(view, resolved_dir, bound_method(view.method)[0], source,
                                                _source_lines(lines, i), notes, recipe)
        except RecipeError as err:
            raise RecipeError(_source_keys(str(err), i)) from None
        data, batch = parts[src.name], recipe.training.batch_size
        if data is not None and len(data) < batch:  # as training's build_tasks refuses it (a Hub source: there)
            raise RecipeError(f"{_where(source, lines, ('data', 'train', i, 'path'))}: source {src.name!r} has "
                              f"{len(data)} rows, fewer than one global batch ({batch}); lower training.batch_size "
                              "or add rows")
    dev_hubs = _check_dev(recipe, resolved_dir, source, lines, notes)
    for i, (src, view) in enumerate(views):  # the model once; a Hub source's dataset each; other models each
        try:
            if i == 0 or parts[src.name] is None:
                check_recipe_refs(view, source, _source_lines(lines, i), hub_data=parts[src.name] is None)
            method, params = bound_method(view.method)
            _check_method_models(view, method, params, source, _source_lines(lines, i))
        except RecipeError as err:
            raise RecipeError(_source_keys(str(err), i)) from None
    for hub in dev_hubs:
        _check_dev_hub(*hub)
    _check_environment(recipe, resolved_dir, source, lines, checks)
    for note in notes:
        notice(note)
    return recipe, MultiTrainData(parts)


def _check_source_method(i: int, src: Any, view: Recipe, source: str, lines: dict) -> list[str]:
    """Source ``i``'s method block: a known method, its parameters by its schema, an option a multi-task source
    cannot honour, and the cross-cutting options (GradCache, Matryoshka, terms, prompts) by that method."""
    prefix = ("data", "train", i, "method")
    try:
        method = get_method(src.method.name)
    except KeyError as err:
        return [f"{_where(source, lines, prefix + ('name',))}: {err.args[0]}"]
    try:
        params = method.params_cls.model_validate({k: v for k, v in src.method.model_dump().items() if k != "name"})
    except ValidationError as err:
        return [format_validation_error(err, source, lines, method.params_cls, prefix=prefix)]
    method = method.bind(params)
    problem = source_method_problem(method, params)
    if problem:
        return [f"{_where(source, lines, prefix + (problem[0],))}: {problem[1]}"]
    if src.streaming:
        return [f"{_where(source, lines, ('data', 'train', i, 'streaming'))}: a multi-task run draws each source's "
                "rows by index (its sampler weighs and interleaves the sources); stream a single-source recipe "
                "instead"]
    if src.mine is not None:
        return [f"{_where(source, lines, ('data', 'train', i, 'mine'))}: mining inside a multi-task run is not "
                "supported; mine first (embedkit data mine --recipe ...) and list the mined file as this source"]
    view.method = MethodSection.validated(method.name, params)
    try:
        _check_objective(view, method, params, source, lines)
    except RecipeError as err:
        return [f"{line} (source {src.name!r}, method {method.name!r})" for line in str(err).splitlines()]
    return []


def _source_lines(lines: dict, i: int) -> dict:
    """The key lines of source ``i`` under the single-source keys (``data.train.…``, ``method.…``) that the
    single-source checks look up; every other key keeps its line."""
    out = dict(lines)
    for key, line in lines.items():
        if key[:3] == ("data", "train", i):
            out[("data", "train", *key[3:])] = line
            if key[3:4] == ("method",):
                out[("method", *key[4:])] = line
    return out


def _source_keys(message: str, i: int) -> str:
    """A single-source check's message with its keys named as source ``i``'s (``data.train.<i>.…``)."""
    return message.replace(": data.train.", f": data.train.{i}.").replace(": method.", f": data.train.{i}.method.")
