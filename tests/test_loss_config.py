"""Every method's loss reports its hyperparameters (``get_config_dict``, what sentence-transformers' model card
lists under the loss), with the recipe's values, and what the framework composed onto it (GradCache mini-batch,
gathering, Matryoshka, extra terms)."""

from __future__ import annotations

import json

import pytest
from test_objective import MEAN, build, recipe_file

# method → (recipe method params, the config entries they must produce)
CASES = {
    "simcse-unsup": ({"temperature": 0.07}, {"temperature": 0.07}),
    "simcse-sup": ({"temperature": 0.06, "hard_negative_weight": 0.5},
                   {"temperature": 0.06, "hard_negative_weight": 0.5}),
    "contrastive": ({"temperature": 0.04, "hard_negative_weight": 0.3, "symmetric": True},
                    {"temperature": 0.04, "hard_negative_weight": 0.3, "symmetric": True}),
    "ccp": ({"temperature": 0.09}, {"temperature": 0.09, "mask_same_document": True}),
    "esimcse": ({"temperature": 0.06, "queue_size": 16, "momentum": 0.99, "dup_rate": 0.2},
                {"temperature": 0.06, "queue_size": 16, "momentum": 0.99, "dup_rate": 0.2}),
    "contriever": ({"temperature": 0.08, "queue_size": 16, "momentum": 0.999, "normalize": True},
                   {"temperature": 0.08, "queue_size": 16, "momentum": 0.999, "normalize": True}),
    "debcse": ({"k": 4, "views": ["crop"], "temperature": 0.5, "hard_negative_weight": 0.2,
                "false_negative_threshold": 0.9}, {"temperature": 0.5, "hard_negative_weight": 0.2, "threshold": 0.9}),
    "text2token": ({"temperature": 0.5, "infonce_weight": 0.25, "infonce_temperature": 0.1},
                   {"temperature": 0.5, "infonce_weight": 0.25, "infonce_temperature": 0.1}),
    "cosent": ({"scale": 15.0}, {"scale": 15.0, "similarity_fct": "pairwise_cos_sim"}),
}


def config_of(tmp, model_path, method, params, training=None, objective=None) -> dict:
    from _mp_helpers import write_recipe

    mean = method in ("text2token", "cosent", "contriever") or "matryoshka_dims" in (training or {})
    model = {"dropout": 0.0, **(MEAN if mean else {})}
    path = write_recipe(tmp, model_path, method, tmp / "out", {"batch_size": 12, **(training or {})}, model,
                        params, objective=objective)
    loss, _, _ = build(path)
    config = loss.get_config_dict()
    json.dumps(config)  # the card renders it as JSON
    return config


@pytest.mark.parametrize("method", sorted(CASES))
def test_each_method_loss_reports_its_hyperparameters(method, tmp_path, spread_model_path):
    params, expected = CASES[method]
    config = config_of(tmp_path, spread_model_path, method, params)
    assert {k: config.get(k) for k in expected} == expected
    assert config["gather_across_devices"] is True


def test_composed_parts_are_reported(tmp_path, spread_model_path):
    objective = {"main_weight": 0.5, "terms": [{"name": "uniformity", "weight": 0.3, "t": 3.0},
                                               {"name": "cwcl", "weight": 0.5, "floor": 0.2}]}
    config = config_of(tmp_path, spread_model_path, "simcse-unsup", {}, {"mini_batch_size": 4,
                       "matryoshka_dims": [32, 16], "matryoshka_weights": [1.0, 0.5]}, objective)
    assert config["mini_batch_size"] == 4
    assert config["matryoshka_dims"] == [32, 16] and config["matryoshka_weights"] == [1.0, 0.5]
    assert config["main_weight"] == 0.5
    assert config["terms"] == [{"name": "uniformity", "weight": 0.3, "t": 3.0},
                               {"name": "cwcl", "weight": 0.5, "temperature": 0.05, "floor": 0.2}]


def test_the_card_lists_the_loss_hyperparameters(tmp_path, spread_model_path):
    """sentence-transformers' card data renders the dict (``config_code``) for the loss of a training run."""
    path = recipe_file(tmp_path, spread_model_path, "contrastive")
    loss, _, _ = build(path)
    from datasets import Dataset

    card = loss.model.model_card_data
    info = card.compute_dataset_metrics(Dataset.from_dict({"anchor": ["a"], "positive": ["b"]}), {}, loss)
    assert '"hard_negative_weight": 0.5' in info["loss"]["config_code"]
    assert '"symmetric": true' in info["loss"]["config_code"]
