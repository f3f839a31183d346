"""``training.batch_size`` is the global batch: each of W processes takes batch_size / W rows, a batch that
does not divide is refused with one line naming file, line and key, and the run records what it used."""

from __future__ import annotations

from pathlib import Path

import pytest
from _mp_helpers import write_recipe

from embedkit.errors import RecipeError
from embedkit.recipe import per_device_batch
from embedkit.validate import load_recipe, load_recipe_with_data


@pytest.mark.parametrize("batch, world, expected", [(16, 2, 8), (64, 1, 64), (512, 8, 64), (2048, 8, 256), (3, 3, 1)])
def test_per_device_batch_is_global_over_world_size(batch: int, world: int, expected: int) -> None:
    assert per_device_batch(batch, world) == expected
    assert per_device_batch(batch, world) * world == batch


@pytest.mark.parametrize("batch, world, hint", [(15, 2, "14 or 16"), (3, 4, "e.g. 4)"), (100, 8, "96 or 104")])
def test_batch_that_does_not_divide_is_refused(batch: int, world: int, hint: str) -> None:
    with pytest.raises(ValueError, match=f"the global batch {batch} does not divide over {world} processes") as err:
        per_device_batch(batch, world)
    assert hint in str(err.value)


def _batch_line(path: Path) -> int:
    return next(i for i, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if "batch_size" in text)


def test_load_recipe_refuses_under_a_launcher_naming_file_line_and_key(tmp_path, tiny_model_path, monkeypatch):
    path = write_recipe(tmp_path, tiny_model_path, "simcse-unsup", tmp_path / "out", {"batch_size": 16})
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value) == (f"{path}:{_batch_line(path)}: training.batch_size: the global batch 16 does not divide "
                              "over 3 processes; expected a multiple of 3 (e.g. 15 or 18)")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert load_recipe(path).training.batch_size == 16  # 8 per process
    monkeypatch.delenv("WORLD_SIZE")
    assert load_recipe(path, ["training.batch_size=15"]).training.batch_size == 15  # one process: any batch


def test_embedkit_check_says_it_when_world_size_is_set(tmp_path, tiny_model_path, monkeypatch, capsys):
    from embedkit.cli import main

    path = write_recipe(tmp_path, tiny_model_path, "simcse-unsup", tmp_path / "out", {"batch_size": 10})
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"embedkit: error: {path}:{_batch_line(path)}: training.batch_size: the global batch 10 does not "
                   "divide over 4 processes; expected a multiple of 4 (e.g. 8 or 12)"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["check", str(path)]) == 0


def test_setup_uses_the_per_device_share_and_the_recipe_adamw(tmp_path, tiny_model_path, capsys):
    """One process: the whole batch on this device, recorded for results.json; AdamW's betas, eps and weight
    decay come from the recipe (Contriever's 0.98 / 1e-6 / 0.01)."""
    from embedkit.training.run import setup

    path = write_recipe(tmp_path, tiny_model_path, "simcse-unsup", tmp_path / "out",
                        {"batch_size": 12, "adam_beta1": 0.8, "adam_beta2": 0.98, "adam_epsilon": 1e-6,
                         "weight_decay": 0.01})
    recipe, data = load_recipe_with_data(path)
    work = tmp_path / "work"
    work.mkdir()
    run = setup(recipe, data, None, work, None)
    start = "world size 1, batch 12 global = 12 per device × 1, 11 in-batch negatives per anchor"
    assert start in capsys.readouterr().out
    assert run.results["train"] == {"world_size": 1, "global_batch_size": 12, "per_device_batch_size": 12}
    args = run.trainer.args
    assert args.per_device_train_batch_size == 12
    optimizer = run.trainer.create_optimizer()
    group = optimizer.param_groups[0]
    assert group["betas"] == (0.8, 0.98) and group["eps"] == 1e-6
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.01, 0.0}  # biases/LayerNorm: no decay


def test_card_training_section_shows_the_batch():
    from embedkit.card import build_card

    results = {"recipe": {"model": {"name": "x"}, "method": {"name": "simcse-unsup"}},
               "method": {"name": "simcse-unsup"},
               "train": {"global_step": 3, "world_size": 2, "global_batch_size": 16, "per_device_batch_size": 8}}
    card = build_card(results, "alice/x")
    assert "- **Processes:** 2" in card and "- **Batch:** 16 global = 8 per device × 2" in card
