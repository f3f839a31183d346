"""Every shipped recipe can load the data it names.

Hub datasets are unreachable here, so each Hub dataset a recipe names has a small local stand-in with the same
file names and columns (the table below). The stand-in folder is passed as the dataset name to the very loader
embedkit trains with (:func:`embedkit.data.sources.read_train_source`, i.e. ``datasets.load_dataset`` with the
recipe's ``data_files``, ``split``, ``config`` and ``columns``), and the result must give the columns the recipe's
method declares. A recipe whose data spec cannot load (e.g. a missing ``data_files`` that makes ``datasets``
pick another file of the repository) fails here, not an hour into a GPU job.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from embedkit.data.sources import read_train_source
from embedkit.errors import DataError
from embedkit.methods import get_method
from embedkit.recipe import RECIPES_DIR, is_multitask, task_recipes
from embedkit.validate import load_recipe

# Hub name → {file name: columns}. A ``.txt`` file holds one sentence a line (one column, ``text``, as
# `datasets` reads it); a ``.csv`` file has a header row. Files named train/validation/test are the splits.
HUB_STANDINS: dict[str, dict[str, list[str]]] = {
    # https://huggingface.co/datasets/princeton-nlp/datasets-for-simcse: SimCSE's training files.
    "princeton-nlp/datasets-for-simcse": {
        "wiki1m_for_simcse.txt": ["text"],
        "nli_for_simcse.csv": ["sent0", "sent1", "hard_neg"],
    },
    # https://huggingface.co/datasets/sentence-transformers/stsb: STS-B with scores in [0, 1], three splits.
    "sentence-transformers/stsb": {
        "train.csv": ["sentence1", "sentence2", "score"],
        "validation.csv": ["sentence1", "sentence2", "score"],
        "test.csv": ["sentence1", "sentence2", "score"],
    },
}

ROWS = 6


def _value(column: str, row: int) -> str:
    if column == "score":
        return f"{(row % 5) / 5:.2f}"
    return f"{column} sentence number {row} about topic {row % 3}"


def build_standin(root: Path, hub: str) -> Path:
    """A folder that mimics the Hub dataset ``hub`` (its file names and columns, a few rows each)."""
    folder = root / hub.replace("/", "__")
    if folder.is_dir():
        return folder
    folder.mkdir(parents=True)
    for name, columns in HUB_STANDINS[hub].items():
        path = folder / name
        if name.endswith(".txt"):
            path.write_text("".join(f"{_value('text', r)}\n" for r in range(ROWS)), encoding="utf-8")
        else:
            with open(path, "w", encoding="utf-8", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(columns)
                for r in range(ROWS):
                    writer.writerow([_value(c, r) for c in columns])
    return folder


def standin_for(recipe: str, hub: str, root: Path) -> Path:
    """The stand-in folder of ``hub``; an assertion naming the recipe when the table does not know ``hub``."""
    if hub not in HUB_STANDINS:
        raise AssertionError(
            f"{recipe}: names the Hub dataset {hub!r}, which tests/test_recipe_data.py::HUB_STANDINS does not know; "
            "add its file names and columns there so that the recipe's data spec is checked"
        )
    return build_standin(root, hub)


SHIPPED = sorted(p.name for p in RECIPES_DIR.glob("*.yaml"))


@pytest.fixture(scope="module")
def standins(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hub-standins")


@pytest.mark.parametrize("name", SHIPPED)
def test_recipe_data_spec_loads_against_hub_standin(name, standins):
    recipe = load_recipe(RECIPES_DIR / name, check_data=False)
    # A multi-task recipe: each source with its own method (as training reads it).
    views = [view for _, view in task_recipes(recipe)] if is_multitask(recipe) else [recipe]
    for view in views:
        method = get_method(view.method.name)
        roles, types = method.roles(), method.column_types()
        src = view.data.train
        if not src.hub:
            continue
        folder = standin_for(name, src.hub, standins)
        data = read_train_source(src.model_copy(update={"hub": str(folder)}), view.method.name, roles, types)
        assert len(data.columns) == len(roles), f"{name}: {list(data.columns)} for roles {roles}"
        assert len(data) > 0, f"{name}: the data spec loads no rows"
        for column, kind in zip(data.columns.values(), types, strict=True):
            if kind == "score":
                assert all(isinstance(v, float) for v in column), f"{name}: score column not numeric"
            else:
                assert all(isinstance(v, str) and v.strip() for v in column), f"{name}: empty text"
    for dev in recipe.data.dev if isinstance(recipe.data.dev, list) else [recipe.data.dev]:
        if dev is None or not dev.hub:  # read as embedkit.evaluation.core.load_dev_pairs reads it
            continue
        import datasets

        folder = standin_for(name, dev.hub, standins)
        ds = datasets.load_dataset(str(folder), split=dev.split)
        missing = {"sentence1", "sentence2", "score"} - set(ds.column_names)
        assert not missing, f"{name}: data.dev ({dev.hub}, {dev.split}) lacks columns {sorted(missing)}"


def test_standin_catches_a_missing_data_files(standins):
    """The stand-in reproduces the bug it guards against: without data_files, `datasets` picks
    nli_for_simcse.csv, which has no `text` column."""
    recipe = load_recipe(RECIPES_DIR / "text2token-bert-base.yaml", check_data=False)
    folder = standin_for("text2token-bert-base.yaml", "princeton-nlp/datasets-for-simcse", standins)
    broken = recipe.data.train.model_copy(update={"hub": str(folder), "data_files": None})
    with pytest.raises(DataError, match="text"):
        read_train_source(broken, "text2token", ("text",), ("text",))


def test_unknown_hub_dataset_fails_naming_the_recipe(standins):
    with pytest.raises(AssertionError, match=r"my-recipe\.yaml.*someone/unknown-set"):
        standin_for("my-recipe.yaml", "someone/unknown-set", standins)
