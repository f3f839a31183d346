"""A recipe validated in full before anything runs: the schema (:mod:`embedkit.recipe`), the method's own
parameters (the method registry), the training and dev data (read now, every row), and the model reference
(a folder that holds a model, custom code allowed only when asked, a reachable Hub). Every error names the recipe
file, the line and the key path (or the data file and line) and what was expected. Nothing here imports torch.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from embedkit import paths
from embedkit.data.ranking import check_beir_layout, read_rerank
from embedkit.data.sources import read_corpus, read_local
from embedkit.errors import DataError, RecipeError
from embedkit.log import notice
from embedkit.methods import get_method
from embedkit.model_ref import check_recipe_refs
from embedkit.recipe import (
    MethodSection,
    Recipe,
    env_world_size,
    format_validation_error,
    parse_recipe,
    per_device_batch,
)


def load_recipe(
    path: str | os.PathLike,
    overrides: list[str] | None = None,
    data_dir: str | None = None,
    check_data: bool = True,
) -> tuple[Recipe, Any]:
    """Load, override and validate a recipe; returns ``(recipe, train_data)``.

    ``train_data`` is the :class:`~embedkit.data.sources.TrainData` read from a local file (or ``None``
    for a Hub dataset or when ``check_data`` is off). Raises :class:`RecipeError` with every problem found.
    """
    recipe, source, lines = parse_recipe(path, overrides)

    # The method's own parameters.
    try:
        method = get_method(recipe.method.name)
    except KeyError as err:
        raise RecipeError(f"{source}:{lines.get(('method', 'name'), '?')}: method.name: {err.args[0]}") from None
    params = {k: v for k, v in recipe.method.model_dump().items() if k != "name"}
    try:
        validated = method.params_cls.model_validate(params)
    except ValidationError as err:
        raise RecipeError(
            format_validation_error(err, source, lines, method.params_cls, prefix=("method",))
        ) from None
    recipe.method = MethodSection(name=recipe.method.name, **validated.model_dump())
    _check_objective(recipe, method, validated, source, lines)
    world = env_world_size()
    if world is not None:  # under torchrun / accelerate: the global batch must split evenly now
        check_batch_split(recipe, world, source, lines)
    _check_lora(recipe, source, lines)

    # Paths and data.
    resolved_dir = paths.resolve_data_dir(data_dir)
    train_data = None
    if check_data:
        notes: list[str] = []  # said only once the checks pass: a refusal stays one line
        train_data = _check_train_data(recipe, resolved_dir, method, source, lines, notes)
        _check_dev(recipe, resolved_dir, source, lines, notes)
        # The model and the Hub too (torch-free, cheap): a bad model folder, custom code or an unreachable Hub
        # fails here, before anything loads.
        check_recipe_refs(recipe, source, lines, hub_data=train_data is None)
        for note in notes:
            notice(note)
    return recipe, train_data


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


def _check_lora(recipe: Recipe, source: str, lines: dict) -> None:
    """``model.lora`` needs the ``peft`` package (looked up, not imported: validation stays fast)."""
    if recipe.model.lora is None:
        return
    where = _where(source, lines, ("model", "lora"))
    if importlib.util.find_spec("peft") is None:
        raise RecipeError(f"{where}: LoRA needs the peft package: pip install peft (or pip install 'embedkit[lora]')")


def _where(source: str, lines: dict[tuple, int], key: tuple) -> str:
    """``file:line: key.path`` for a message; the nearest enclosing key's line when the key is a default."""
    line = next((lines[key[:n]] for n in range(len(key), 0, -1) if key[:n] in lines), None)
    dotted = ".".join(map(str, key))
    return f"{source}:{line}: {dotted}" if line else f"{source}: {dotted}"


def _local_file(
    raw: str, hub: str | None, data_dir: Path | None, where: str, instead: str, notes: list[str],
    folder_file: str | None = None,
) -> str | None:
    """The local file a recipe ``path`` names, or ``None`` when the Hub dataset ``hub`` is to be used instead.

    The Hub stands in only for a ``{data_dir}`` path whose data folder (or file in it) is absent, and a notice
    says so: a path the user wrote out must exist. ``folder_file`` is the file to take when the path is a folder.
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
    if Path(path).is_file():
        return path
    if hub and "{data_dir}" in raw:
        notes.append(f"{where}: {path}: not found; {instead}")
        return None
    raise RecipeError(f"{where}: file not found: {path}")


def _check_train_data(recipe: Recipe, data_dir: Path | None, method: Any, source: str, lines: dict,
                      notes: list[str]) -> Any:
    src = recipe.data.train
    if src.mine is not None:
        _check_mine(recipe, data_dir, method, source, lines)
    if src.path is None:
        return None  # a Hub dataset is read when training starts
    where = _where(source, lines, ("data", "train", "path"))
    path = _local_file(src.path, src.hub, data_dir, where, f"training reads the Hub dataset {src.hub} instead", notes)
    if path is None:
        return None
    if src.mine is not None:  # (anchor, positive) rows; the negatives are mined at training setup
        try:
            data = read_local(path, src.format, src.columns)
        except DataError as err:
            raise RecipeError(f"{where}: {err}") from None
        if len(data.columns) != 2:
            raise RecipeError(f"{where}: data.train.mine needs (anchor, positive) rows, the data gives "
                              f"{len(data.columns)} column(s) ({', '.join(data.columns)}); select them with "
                              "data.train.columns")
        if src.max_samples:
            data.columns = {k: v[: src.max_samples] for k, v in data.columns.items()}
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
    if src.max_samples:
        data.columns = {k: v[: src.max_samples] for k, v in data.columns.items()}
    return data


def _check_mine(recipe: Recipe, data_dir: Path | None, method: Any, source: str, lines: dict) -> None:
    """``data.train.mine``: the method must take the mined columns, and the corpus file must read."""
    mine = recipe.data.train.mine
    assert mine is not None
    wanted = ["anchor", "positive", *(f"negative_{i}" for i in range(1, mine.num_negatives + 1))]
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


def _check_dev(recipe: Recipe, data_dir: Path | None, source: str, lines: dict, notes: list[str]) -> None:
    """``data.dev`` follows the rule of ``data.train``: a written-out path must exist (the Hub copy is used
    only for a ``{data_dir}`` path that is absent), checked now rather than after the heavy imports. A reranking
    dev file is read in full now; a retrieval folder's layout is checked (its corpus is read before the model
    loads). Then the final evaluation's ``eval.rerank`` / ``eval.retrieval`` the same way."""
    dev = recipe.data.dev
    if dev is not None and dev.path:
        where = _where(source, lines, ("data", "dev", "path"))
        if dev.kind == "stsb":
            instead = f"STS-B dev comes from the Hub dataset {dev.hub} ({dev.split}) instead"
            _local_file(dev.path, dev.hub, data_dir, where, instead, notes, folder_file="sts-dev.csv")
        else:
            _check_ranking(dev.kind, dev.path, dev.split, data_dir, where, scorable=True)
    for i, path in enumerate(recipe.eval.rerank):
        _check_ranking("rerank", path, "test", data_dir, _where(source, lines, ("eval", "rerank", i)))
    for i, entry in enumerate(recipe.eval.retrieval):
        _check_ranking("retrieval", entry.path, entry.split, data_dir,
                       _where(source, lines, ("eval", "retrieval", i, "path")))


def _check_ranking(kind: str, raw: str, split: str, data_dir: Path | None, where: str,
                   scorable: bool = False) -> None:
    """A reranking file (read in full) or a BEIR folder (its files and qrels split present)."""
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
            check_beir_layout(path, split)
    except DataError as err:
        raise RecipeError(f"{where}: {err}") from None
