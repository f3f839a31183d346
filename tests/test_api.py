"""The Python API a notebook uses: ``embedkit.train`` takes a file, a shipped name, a dict or a ``Recipe`` and
returns the trained model, ``results.json`` and the output folder; ``embedkit.load_recipe`` returns a
``Recipe``; a bad dict is refused like a bad file, in one line naming the key."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

import embedkit
from embedkit import Recipe, RecipeError, TrainResult


def tiny(tmp_path: Path, model: str, data: Path, **training) -> dict:
    """A recipe as a dict: 2 steps of unsupervised SimCSE on the tiny BERT, no dev set, no final evaluation."""
    return {
        "description": "tiny, from a dict",
        "model": {"name": model, "pooling": "cls", "mlp_only_train": True, "max_seq_length": 16},
        "data": {"train": {"path": data}, "dev": None},  # a Path: taken as its string
        "method": {"name": "simcse-unsup", "temperature": 0.05},
        "training": {"batch_size": 8, "max_steps": 2, "learning_rate": 1e-3, "logging_steps": 1, **training},
        "eval": {"suite": "none", "before": False},
        "output": {"dir": str(tmp_path / "out")},
    }


def test_train_from_a_dict_returns_the_trained_model_results_and_folder(tmp_path, tiny_model_path, sentences_file):
    from sentence_transformers import SentenceTransformer

    recipe = tiny(tmp_path, tiny_model_path, sentences_file)
    given = copy.deepcopy(recipe)
    result = embedkit.train(recipe)
    assert isinstance(result, TrainResult)
    assert recipe == given, "train() changed the caller's dict"
    out = tmp_path / "out"
    assert result.output_dir == out
    vectors = result.model.encode(["a"])
    assert vectors.shape == (1, 32) and np.isfinite(vectors).all()
    # .model is the final model: the one saved in the folder.
    saved = SentenceTransformer(str(out), device="cpu")
    texts = ["a", "the alpha of beta is number 3"]
    np.testing.assert_allclose(result.model.encode(texts), saved.encode(texts), atol=1e-6)
    # .results is what results.json holds; the result is also a mapping of it.
    on_disk = json.loads((out / "results.json").read_text())
    assert json.loads(json.dumps(result.results, default=str)) == on_disk
    assert result["train"]["global_step"] == on_disk["train"]["global_step"] == 2
    assert set(result) == set(on_disk) and len(result) == len(on_disk)
    assert result.scores == {"dev": {}}  # no dev set, no final evaluation: nothing was scored
    assert on_disk["recipe"]["data"]["train"]["path"] == str(sentences_file)
    assert "global_step=2" in repr(result) and str(out) in repr(result)

    # resume=True on the finished run trains nothing and loads the model from the folder.
    again = embedkit.train(recipe, resume=True)
    assert again.results == on_disk and again._model is None
    np.testing.assert_allclose(again.model.encode(texts), saved.encode(texts), atol=1e-6)


def test_train_takes_a_recipe_object_and_dict_overrides(tmp_path, tiny_model_path, sentences_file):
    recipe = embedkit.load_recipe(tiny(tmp_path, tiny_model_path, sentences_file))
    assert isinstance(recipe, Recipe) and recipe.method.temperature == 0.05
    result = embedkit.train(recipe, {"training.max_steps": 3}, output={"dir": str(tmp_path / "obj")})
    assert result.output_dir == tmp_path / "obj"
    assert result["train"]["global_step"] == 3
    assert result.model.encode(["a"]).shape == (1, 32)
    assert recipe.training.max_steps == 2, "train() changed the caller's Recipe"


def test_keyword_sections_set_key_by_key_and_overrides_replace(tmp_path, tiny_model_path, sentences_file):
    """``training={...}`` changes only the keys it names; an override replaces the value at its key (a mapping
    replaces the whole section, whose other keys fall back to their defaults); keywords come after overrides."""
    raw = tiny(tmp_path, tiny_model_path, sentences_file)
    kept = embedkit.load_recipe(raw, training={"max_steps": 5})
    assert (kept.training.max_steps, kept.training.batch_size, kept.training.learning_rate) == (5, 8, 1e-3)
    replaced = embedkit.load_recipe(raw, {"training": {"max_steps": 5}})
    assert (replaced.training.max_steps, replaced.training.batch_size) == (5, 64)  # 64: the schema's default
    both = embedkit.load_recipe(raw, ["training.max_steps=4", "training.seed=9"], training={"max_steps": 6})
    assert (both.training.max_steps, both.training.seed) == (6, 9)
    shipped = embedkit.load_recipe("quickstart", check_data=False, training={"max_steps": 2})
    assert (shipped.training.max_steps, shipped.training.batch_size, shipped.method.name) == (2, 32, "cosent")


def _bad(tmp_path: Path, model: str, data: Path, change) -> dict:
    raw = tiny(tmp_path, model, data)
    change(raw)
    return raw


BAD_DICTS = [
    (lambda r: r["training"].update(max_stepz=3),
     "<dict>: training.max_stepz: unknown key (did you mean training.max_steps?); expected one of: adam_beta1, "),
    (lambda r: r["training"].update(batch_size="big"),
     "<dict>: training.batch_size: Input should be a valid integer, unable to parse string as an integer (got 'big')"),
    (lambda r: r["method"].update(temperature="hot"),
     "<dict>: method.temperature: Input should be a valid number, unable to parse string as a number (got 'hot')"),
    (lambda r: r.pop("output"), "<dict>: output: required key is missing"),
    (lambda r: r["method"].update(name="simcse-unsupervised"), "<dict>: method.name: unknown method"),
    (lambda r: r["data"]["train"].update(path="/no/such/file.txt"),
     "<dict>: data.train.path: file not found: /no/such/file.txt"),
]


@pytest.mark.parametrize(("change", "message"), BAD_DICTS)
def test_a_bad_dict_is_one_line_naming_the_key(tmp_path, tiny_model_path, sentences_file, change, message):
    with pytest.raises(RecipeError) as err:
        embedkit.train(_bad(tmp_path, tiny_model_path, sentences_file, change))
    text = str(err.value)
    assert "\n" not in text and text.startswith(message), text
    assert not (tmp_path / "out").exists(), "a refused recipe wrote its output folder"


def test_a_bad_recipe_object_or_argument_is_one_line(tmp_path, tiny_model_path, sentences_file):
    # A Recipe holds the method's parameters unchecked until it is loaded: they are validated as a file's are.
    recipe = Recipe.model_validate(_bad(tmp_path, tiny_model_path, str(sentences_file),
                                        lambda r: r["method"].update(temperature="hot")))
    with pytest.raises(RecipeError, match=r"^<Recipe>: method\.temperature: Input should be a valid number"):
        embedkit.train(recipe)
    with pytest.raises(RecipeError, match=r"^recipe: expected a file path, a shipped recipe name, a dict or a "
                                          r"Recipe, got int$"):
        embedkit.train(42)
    good = tiny(tmp_path, tiny_model_path, sentences_file)
    with pytest.raises(RecipeError, match=r"^overrides: expected a list of 'key\.sub=value' strings or a dict"):
        embedkit.train(good, "training.max_steps=2")
    with pytest.raises(RecipeError, match=r"^override 'training max steps': expected a dotted key path"):
        embedkit.train(good, {"training max steps": 2})
    with pytest.raises(RecipeError, match=r"^keyword argument: trainig: unknown key \(did you mean training\?\); "
                                          r"expected one of: data, description"):
        embedkit.train(good, trainig={"max_steps": 2})
    assert not (tmp_path / "out").exists()


def test_a_dict_with_a_bad_model_folder_names_the_key(tmp_path, tiny_model_path, sentences_file):
    """The model check (torch-free, before anything loads) says ``<dict>: model.name``, not a line number."""
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    raw = tiny(tmp_path, tiny_model_path, sentences_file)
    with pytest.raises(RecipeError, match=r"^<dict>: model\.name"):
        embedkit.train(raw, model={"name": str(empty)})


def test_readme_submodules_resolve_after_a_bare_import_in_a_fresh_interpreter():
    """The README calls ``embedkit.merging.merge(...)`` and ``embedkit.encoding.encode(...)`` after a bare
    ``import embedkit``: every submodule resolves on first access, while the import itself loads no torch."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    code = ("import json, sys, embedkit\n"
            "light = 'torch' not in sys.modules\n"
            "found = [callable(embedkit.merging.merge), callable(embedkit.encoding.encode),\n"
            "         embedkit.hub.push.__module__, 'merging' in dir(embedkit)]\n"
            "try:\n"
            "    embedkit.no_such_module\n"
            "    missing = None\n"
            "except AttributeError as err:\n"
            "    missing = str(err)\n"
            "print(json.dumps([light, found, missing, hasattr(embedkit, 'no_such_module')]))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=300,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "TOKENIZERS_PARALLELISM": "false"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    light, found, missing, has = json.loads(proc.stdout.strip().splitlines()[-1])
    assert light, "import embedkit must not load torch"
    assert found == [True, True, "embedkit.hub", True]
    assert missing == "module 'embedkit' has no attribute 'no_such_module'" and has is False
