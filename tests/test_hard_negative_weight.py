"""``method.hard_negative_weight`` (log α on each anchor's own hard negative) is honoured or refused at validation.

Three methods take it: ``contrastive`` (negatives are the data's columns after anchor and positive, or mined with
``data.train.mine``), ``simcse-sup`` (its third column is always a hard negative) and ``debcse`` (a drawn hard
negative per row in ``mode: debias`` with ``hard_negatives: true``). Where the rows hold no negative the weight
has nothing to weigh: the loss is exactly the one without it, so the recipe is refused naming file, line and key.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from _mp_helpers import write_query_passages, write_recipe
from test_multitask import write_multitask_recipe

from embedkit.errors import RecipeError
from embedkit.validate import load_recipe

KEY = "method.hard_negative_weight"


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if text in line)


def pairs_file(folder: Path, n: int = 8) -> Path:
    path = folder / "pairs.csv"
    path.write_text("query,passage\n" + "".join(f"question {i},answer {i}\n" for i in range(n)), encoding="utf-8")
    return path


def contrastive_recipe(tmp: Path, model: str, data: Path, method: dict, mine: dict | None = None) -> Path:
    train = {"path": str(data), **({"mine": mine} if mine else {})}
    raw = {"model": {"name": model, "max_seq_length": 16}, "data": {"train": train, "dev": None},
           "method": {"name": "contrastive", **method}, "training": {"batch_size": 4, "max_steps": 2},
           "eval": {"before": False, "suite": "none"}, "output": {"dir": str(tmp / "out")}}
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def test_contrastive_pairs_without_negatives_refuse_the_weight(tmp_path, tiny_model_path):
    path = contrastive_recipe(tmp_path, tiny_model_path, pairs_file(tmp_path), {"hard_negative_weight": 0.5})
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}:{line_of(path, 'hard_negative_weight')}: {KEY}: ")
    assert "no negative column" in msg and "data.train.mine" in msg and len(msg.splitlines()) == 1
    # without the weight the same pairs are fine (in-batch negatives only)
    load_recipe(contrastive_recipe(tmp_path, tiny_model_path, pairs_file(tmp_path), {}))


def test_contrastive_with_negative_columns_or_mining_keeps_the_weight(tmp_path, tiny_model_path):
    with_negatives = contrastive_recipe(tmp_path, tiny_model_path, write_query_passages(tmp_path),
                                        {"hard_negative_weight": 0.5})
    assert load_recipe(with_negatives).method.hard_negative_weight == 0.5
    mined = contrastive_recipe(tmp_path, tiny_model_path, pairs_file(tmp_path), {"hard_negative_weight": 0.5},
                               mine={"num_negatives": 1})
    assert load_recipe(mined).method.hard_negative_weight == 0.5


@pytest.mark.parametrize("params", [{"mode": "mask-only"}, {"hard_negatives": False}])
def test_debcse_without_hard_negatives_refuses_the_weight(params, tmp_path, tiny_model_path):
    path = write_recipe(tmp_path, tiny_model_path, "debcse", tmp_path / "out",
                        method_params={"hard_negative_weight": 0.3, **params})
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value).startswith(f"{path}:{line_of(path, 'hard_negative_weight')}: {KEY}: ")
    ok = write_recipe(tmp_path / "ok", tiny_model_path, "debcse", tmp_path / "out2",
                      method_params={"hard_negative_weight": 0.3})
    assert load_recipe(ok).method.hard_negative_weight == 0.3


def test_simcse_sup_always_has_its_hard_negative(tmp_path, tiny_model_path):
    path = write_recipe(tmp_path, tiny_model_path, "simcse-sup", tmp_path / "out",
                        method_params={"hard_negative_weight": 0.7})
    assert load_recipe(path).method.hard_negative_weight == 0.7


def test_a_multitask_source_without_negatives_is_refused_under_its_own_keys(tmp_path, tiny_model_path):
    pairs = pairs_file(tmp_path)
    path = write_multitask_recipe(tmp_path / "r", tiny_model_path, tmp_path / "out", sources={
        "qa": {"path": str(pairs), "method": {"name": "contrastive", "hard_negative_weight": 0.5}}})
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value).startswith(f"{path}:{line_of(path, 'hard_negative_weight')}: "
                                     "data.train.1.method.hard_negative_weight: ")


def test_the_weight_is_a_no_op_without_negatives():
    """Why the refusal: on (anchor, positive) rows the loss with the weight is bit for bit the loss without."""
    import torch

    from embedkit.losses.contrastive import info_nce

    gen = torch.Generator().manual_seed(0)
    a, p = torch.randn(6, 8, generator=gen), torch.randn(6, 8, generator=gen)
    assert torch.equal(info_nce(a, p, 0.05, [], 2.0), info_nce(a, p, 0.05))

