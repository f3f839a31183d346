"""Objectives that compose: GradCache (``training.mini_batch_size``), Matryoshka and extra terms work with every
method, give the plain path's loss and gradients, are logged term by term, and are refused at validation
where a method cannot honour them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from _mp_helpers import write_recipe

from embedkit.errors import RecipeError

METHODS = ["simcse-unsup", "simcse-sup", "esimcse", "contriever", "debcse", "text2token", "cosent", "contrastive"]
# Settings that make each method's loss depend on all its parts in a 12-row batch.
PARAMS = {
    "simcse-sup": {"hard_negative_weight": 0.5},
    "contrastive": {"hard_negative_weight": 0.5, "symmetric": True},
    "esimcse": {"queue_size": 16},
    "contriever": {"queue_size": 16, "queue_init": "random", "normalize": True},
    "debcse": {"k": 4, "views": ["crop"], "temperature": 0.5, "false_negative_threshold": 0.9},
    "text2token": {"infonce_weight": 0.5, "temperature": 0.5},
}
# Mean pooling without the training-only head where a method or Matryoshka needs it.
MEAN = {"pooling": "mean", "mlp_only_train": False}
ROWS = 12


def recipe_file(tmp: Path, model_path: str, method: str, training=None, model=None, objective=None,
                name="recipe.yaml") -> Path:
    return write_recipe(tmp, model_path, method, tmp / "out", {"batch_size": ROWS, **(training or {})},
                        {"dropout": 0.0, **(model or {})}, PARAMS.get(method), name=name, objective=objective)


def build(recipe_path: Path):
    """The composed loss of a recipe and one tokenised batch of its first rows, as ``setup`` builds them."""
    from transformers import set_seed

    from embedkit.losses.objective import compose
    from embedkit.methods import get_method
    from embedkit.methods.base import TrainContext
    from embedkit.modeling import build_model
    from embedkit.training.run import build_dataset
    from embedkit.validate import load_recipe_with_data

    recipe, data = load_recipe_with_data(recipe_path)
    cls = get_method(recipe.method.name)
    params = cls.params_cls.model_validate({k: v for k, v in recipe.method.model_dump().items() if k != "name"})
    set_seed(recipe.training.seed)
    model = build_model(recipe.model)
    dataset, _ = build_dataset(recipe, data, cls)
    method = cls(TrainContext(recipe=recipe, model=model, params=params))
    dataset = method.prepare_dataset(dataset)
    loss = compose(method.build_loss(), recipe, model)
    rows = dataset[:ROWS]
    texts = [c for c in rows if c not in ("label", "score", "row")]
    features = [model.tokenize(rows[c]) for c in texts]
    labels = None
    if "label" in rows:
        labels = torch.tensor(rows["label"])
    elif "score" in rows:
        labels = torch.tensor(rows["score"], dtype=torch.float32)
    model.train()
    loss.train()
    return loss, features, labels


def loss_and_grads(recipe_path: Path):
    loss, features, labels = build(recipe_path)
    out = loss(features, labels)
    terms = {k: float(v.detach()) for k, v in out.items()} if isinstance(out, dict) else {}
    total = torch.stack(list(out.values())).sum() if isinstance(out, dict) else out
    total.backward()
    grads = {n: p.grad.clone() for n, p in loss.named_parameters() if p.grad is not None}
    return float(total.detach()), grads, terms


def assert_same(a, b):
    assert b[0] == pytest.approx(a[0], rel=1e-5, abs=1e-6)
    assert a[1].keys() == b[1].keys() and len(a[1]) > 10
    moved = max(g.abs().max().item() for g in a[1].values())
    assert moved > 0, "no gradient: the comparison would say nothing"
    for name, g in a[1].items():
        torch.testing.assert_close(b[1][name], g, atol=1e-5, rtol=1e-4, msg=name)
    assert a[2].keys() == b[2].keys()
    for key, value in a[2].items():
        assert b[2][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("method", METHODS)
def test_gradcache_equals_plain_for_every_method(method, tmp_path, spread_model_path):
    model = MEAN if method in ("text2token", "cosent", "contriever") else None
    plain = loss_and_grads(recipe_file(tmp_path / "a", spread_model_path, method, model=model))
    cached = loss_and_grads(recipe_file(tmp_path / "b", spread_model_path, method, {"mini_batch_size": 5}, model))
    assert plain[0] > 0
    assert_same(plain, cached)


def terms_for(method: str) -> list[dict]:
    terms = [{"name": "uniformity", "weight": 0.3}]
    if method != "cosent":
        terms += [{"name": "alignment", "weight": 0.2}, {"name": "cwcl", "weight": 0.5, "floor": 0.2}]
    return terms


@pytest.mark.parametrize("method", METHODS)
def test_matryoshka_and_terms_with_gradcache_equal_plain(method, tmp_path, spread_model_path):
    training = {} if method == "text2token" else {"matryoshka_dims": [32, 16, 8], "matryoshka_weights": [1, 0.5, 2]}
    objective = {"terms": terms_for(method)}
    plain = loss_and_grads(recipe_file(tmp_path / "a", spread_model_path, method, training, MEAN, objective))
    cached = loss_and_grads(recipe_file(tmp_path / "b", spread_model_path, method,
                                        {**training, "mini_batch_size": 5}, MEAN, objective))
    expected = {f"loss_{t['name']}" for t in objective["terms"]}
    expected |= {"loss_main"} if method == "text2token" else {"loss_main_32", "loss_main_16", "loss_main_8"}
    assert set(plain[2]) == expected
    assert plain[0] == pytest.approx(sum(plain[2].values()), rel=1e-6)
    assert_same(plain, cached)


def test_matryoshka_is_the_weighted_sum_of_truncated_losses(tmp_path, spread_model_path):
    """loss_main_d = weight_d · (the method's loss on the first d coordinates, re-normalised)."""
    import torch.nn.functional as F

    from embedkit.losses.contrastive import info_nce

    path = recipe_file(tmp_path, spread_model_path, "simcse-unsup",
                       {"matryoshka_dims": [32, 8], "matryoshka_weights": [1.0, 0.25]}, MEAN)
    loss, features, labels = build(path)
    out = loss(features, labels)
    with torch.no_grad():
        emb = loss.model(dict(features[0]))["sentence_embedding"]
    for dim, weight in ((32, 1.0), (8, 0.25)):
        z = F.normalize(emb[:, :dim], dim=-1)
        assert float(out[f"loss_main_{dim}"].detach()) == pytest.approx(weight * float(info_nce(z, z, 0.05)), rel=1e-5)


def test_matryoshka_dims_below_the_width_also_train_the_full_width(tmp_path, spread_model_path):
    """Dims that all lie below the model's width (32) get the full width added first, weight 1: the main loss
    applies to the full embedding *and* the prefixes (sentence-transformers' MatryoshkaLoss trains only what is
    listed, and warns that the full width then goes untrained)."""
    import torch.nn.functional as F

    from embedkit.losses.contrastive import info_nce

    path = recipe_file(tmp_path, spread_model_path, "simcse-unsup",
                       {"matryoshka_dims": [16, 8], "matryoshka_weights": [0.5, 2.0]}, MEAN)
    loss, features, labels = build(path)
    assert (loss.matryoshka_dims, loss.matryoshka_weights) == ([32, 16, 8], [1.0, 0.5, 2.0])
    out = loss(features, labels)
    assert set(out) == {"loss_main_32", "loss_main_16", "loss_main_8"}
    with torch.no_grad():
        emb = loss.model(dict(features[0]))["sentence_embedding"]
    for dim, weight in ((32, 1.0), (16, 0.5), (8, 2.0)):
        z = F.normalize(emb[:, :dim], dim=-1)
        assert float(out[f"loss_main_{dim}"].detach()) == pytest.approx(weight * float(info_nce(z, z, 0.05)), rel=1e-5)


def test_a_run_records_the_added_full_width_in_its_resolved_recipe(tmp_path, spread_model_path, capsys):
    from embedkit.training.run import train

    path = recipe_file(tmp_path, spread_model_path, "simcse-unsup", {"matryoshka_dims": [16, 8], "max_steps": 2},
                       MEAN)
    result = train(str(path))
    assert result["recipe"]["training"]["matryoshka_dims"] == [32, 16, 8]
    assert result["recipe"]["training"]["matryoshka_weights"] is None  # default: 1 each
    saved = yaml.safe_load((tmp_path / "out" / "recipe.yaml").read_text())
    assert saved["training"]["matryoshka_dims"] == [32, 16, 8]
    assert any("loss_main_32" in entry for entry in result["train"]["log_history"])
    assert "training.matryoshka_dims [16, 8] lacks the model's full width 32" in capsys.readouterr().out


def test_no_terms_returns_the_plain_loss(tmp_path, spread_model_path):
    loss, features, labels = build(recipe_file(tmp_path, spread_model_path, "simcse-unsup"))
    out = loss(features, labels)
    assert isinstance(out, torch.Tensor) and out.dim() == 0


def test_main_weight_zero_keeps_only_the_terms(tmp_path, spread_model_path):
    path = recipe_file(tmp_path, spread_model_path, "simcse-unsup", model=MEAN,
                       objective={"main_weight": 0, "terms": [{"name": "cwcl", "floor": 0.5}]})
    loss, features, labels = build(path)
    out = loss(features, labels)
    assert float(out["loss_main"]) == 0.0 and float(out["loss_cwcl"]) > 0


# ---- validation: unknown names and keys, options a method cannot honour ------------------------------------


def refusal(path: Path) -> str:
    from embedkit.validate import load_recipe

    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    return str(err.value)


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_unknown_term_name_is_refused_with_file_line_key(tmp_path, tiny_model_path):
    path = recipe_file(tmp_path, tiny_model_path, "simcse-unsup", objective={"terms": [{"name": "unifromity"}]})
    msg = refusal(path)
    assert f"{path}:{line_of(path, 'unifromity')}: objective.terms.0.name: unknown term 'unifromity'" in msg
    assert "uniformity" in msg


def test_unknown_term_key_is_refused_with_file_line_key(tmp_path, tiny_model_path):
    path = recipe_file(tmp_path, tiny_model_path, "simcse-unsup",
                       objective={"terms": [{"name": "uniformity", "weight": 0.1, "temp": 3}]})
    msg = refusal(path)
    assert f"{path}:{line_of(path, 'temp:')}: objective.terms.0.temp: unknown key" in msg


def test_unknown_objective_key_is_refused(tmp_path, tiny_model_path):
    path = recipe_file(tmp_path, tiny_model_path, "simcse-unsup", objective={"weights": 1})
    assert f"{path}:{line_of(path, 'weights:')}: objective.weights: unknown key" in refusal(path)


def test_matryoshka_refused_for_text2token_naming_the_key(tmp_path, tiny_model_path):
    path = recipe_file(tmp_path, tiny_model_path, "text2token", {"matryoshka_dims": [32, 16]}, MEAN)
    msg = refusal(path)
    assert f"{path}:{line_of(path, 'matryoshka_dims')}: training.matryoshka_dims: method 'text2token'" in msg


def test_matryoshka_refused_with_training_only_head(tmp_path, tiny_model_path):
    path = recipe_file(tmp_path, tiny_model_path, "simcse-unsup", {"matryoshka_dims": [32, 16]})
    assert "training.matryoshka_dims: a training-only MLP head" in refusal(path)


def test_pair_terms_refused_without_positives(tmp_path, tiny_model_path):
    path = recipe_file(tmp_path, tiny_model_path, "cosent", objective={"terms": [{"name": "alignment"}]})
    msg = refusal(path)
    assert f"{path}:{line_of(path, 'alignment')}: objective.terms.0.name: term 'alignment' needs an (anchor" in msg
    path = recipe_file(tmp_path / "t", tiny_model_path, "text2token", model=MEAN,
                       objective={"terms": [{"name": "cwcl"}]})
    raw = yaml.safe_load(path.read_text())
    raw["method"]["infonce_weight"] = 0.0
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert "objective.terms.0.name: term 'cwcl' needs an (anchor, positive) pair per row" in refusal(path)


def test_options_refused_for_a_method_that_does_not_compose(tmp_path, tiny_model_path):
    from embedkit.methods.base import _REGISTRY, Method, register

    class Plain(Method):
        name = "plain-test-method"

        def build_loss(self):
            raise NotImplementedError

    register(Plain)
    try:
        path = recipe_file(tmp_path, tiny_model_path, "simcse-unsup", {"mini_batch_size": 4})
        raw = yaml.safe_load(path.read_text())
        raw["method"] = {"name": "plain-test-method"}
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        msg = refusal(path)
        assert f"{path}:{line_of(path, 'mini_batch_size')}: training.mini_batch_size: method " \
               "'plain-test-method' does not compose its loss" in msg
    finally:
        _REGISTRY.pop("plain-test-method", None)


def test_matryoshka_weights_need_one_per_dim(tmp_path, tiny_model_path):
    path = recipe_file(tmp_path, tiny_model_path, "simcse-unsup",
                       {"matryoshka_dims": [32, 16], "matryoshka_weights": [1.0]}, MEAN)
    assert "one weight per training.matryoshka_dims entry" in refusal(path)


# ---- per-term logging ------------------------------------------------------------------------------------


def test_log_history_and_tensorboard_have_each_term(tmp_path, spread_model_path):
    from _mp_helpers import results

    from embedkit.training.run import train

    path = recipe_file(tmp_path, spread_model_path, "simcse-unsup", {"max_steps": 3, "mini_batch_size": 4},
                       {"dropout": 0.1}, {"terms": [{"name": "alignment", "weight": 0.5},
                                                    {"name": "uniformity", "weight": 0.1}]})
    train(str(path))
    history = results(tmp_path / "out")["train"]["log_history"]
    steps = [h for h in history if "loss" in h]
    assert len(steps) == 3
    for h in steps:
        assert {"loss_main", "loss_alignment", "loss_uniformity"} <= set(h), h
        assert h["loss_uniformity"] < 0 <= h["loss_alignment"]
        parts = h["loss_main"] + h["loss_alignment"] + h["loss_uniformity"]
        assert parts == pytest.approx(h["loss"], abs=2e-4)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "out" / "logs"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss_main", "train/loss_alignment", "train/loss_uniformity"} <= tags, tags


def test_composed_run_resumes_bit_for_bit(tmp_path, spread_model_path):
    """GradCache with dropout on (RNG replayed), and the CWCL teacher rebuilt from the starting model on resume:
    a run killed after its first checkpoint and resumed ends bit-for-bit where the uninterrupted one ends."""
    import signal

    from _mp_helpers import kill_resume_compare

    objective = {"terms": [{"name": "uniformity", "weight": 0.3}, {"name": "cwcl", "weight": 0.5, "floor": 0.2}]}
    report = kill_resume_compare(tmp_path, spread_model_path, "simcse-unsup", model={"dropout": 0.1},
                                 training={"max_steps": 12, "save_steps": 8, "batch_size": 8, "mini_batch_size": 3},
                                 objective=objective)
    assert report["killed"]["returncode"] == -signal.SIGKILL
    assert report["killed"]["checkpoints"] == ["checkpoint-8"]
    assert report["weights_bitwise_mismatch"] == [], f"max abs diff {report['weights_max_abs_diff']}"
    assert report["method_state_bitwise_mismatch"] == []
    assert not any(k.startswith("terms.") for k in report["method_state_keys"])
    full, resumed = report["losses"]
    assert [full[s] for s in range(9, 13)] == [resumed[s] for s in range(9, 13)]
    assert max(full.values()) - min(full.values()) > 1e-2
