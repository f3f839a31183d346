"""Numbers checked for what they will do, not only for their type (issue 25): merge weights and λ whose result
overflows, non-finite or overflowing loss and dev weights, seeds outside numpy's range, and a loss guard that
never names a checkpoint holding NaN weights as the last good one."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from _mp_helpers import checkpoint_dirs, write_recipe
from test_merging import _save_variant
from test_multitask import write_multitask_recipe

from embedkit.cli import main
from embedkit.errors import NonFiniteLossError, RecipeError
from embedkit.merging import MergeError, coefficients, merge
from embedkit.validate import load_recipe


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("embedkit:")]  # not the progress bars
    assert len(lines) == 1 and lines[0].startswith("embedkit: error: ") and "Traceback" not in err, err
    return lines[0]


# ----------------------------------------------------------------------------------------------------------
# Recipe numbers: loss and dev weights, seeds, any .inf / .nan


@pytest.mark.parametrize(("kwargs", "key", "message"), [
    ({"sources": {"sts": {"weight": 1e30}}}, "data.train.0.weight", "expected at most 1e6"),
    ({"sources": {"qa": {"weight": float("inf")}}}, "data.train.1.weight", "Input should be a finite number"),
    ({"dev": [{"kind": "rerank", "path": "DEV", "weight": float("inf")}]}, "data.dev.0.weight",
     "Input should be a finite number"),
    ({"dev": [{"kind": "rerank", "path": "DEV", "weight": 1.0}, {"kind": "rerank", "path": "DEV2", "weight": 1e308}]},
     "data.dev.1.weight", "expected at most 1e6"),
    ({"training": {"seed": -1}}, "training.seed", "expected a seed in 0 .. 4294967295"),
    ({"training": {"seed": 2**32}}, "training.seed", "expected a seed in 0 .. 4294967295"),
    ({"training": {"learning_rate": float("inf")}}, "training.learning_rate", "Input should be a finite number"),
    ({"training": {"matryoshka_dims": [32, 16], "matryoshka_weights": [1.0, 1e9]}},
     "training.matryoshka_weights.1", "expected at most 1e6"),
])
def test_recipe_numbers_that_would_overflow_are_refused_naming_file_line_key(tmp_path, tiny_model_path, kwargs, key,
                                                                            message):
    """A source weight of 1e30 makes every gradient norm infinite (clipping then zeroes each update); ``.inf``
    ends in a NaN loss; an infinite dev weight makes the selection score inf/inf = NaN; numpy seeds its legacy
    generator with 0 .. 2**32 - 1 only. Each is refused at validation, with file, line and key."""
    from test_ranking_eval import write_rerank

    kwargs = copy.deepcopy(kwargs)
    for entry in kwargs.get("dev") or []:
        entry["path"] = str(write_rerank(tmp_path / entry["path"].lower() / "dev.csv",
                                         [("q", 1, "a"), ("q", 0, "b")]))
    path = write_multitask_recipe(tmp_path / "r", tiny_model_path, tmp_path / "out", **kwargs)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    text = str(err.value)
    assert re.fullmatch(rf"{re.escape(str(path))}:\d+: {re.escape(key)}: {re.escape(message)}.*", text), text


def test_the_largest_accepted_weights_and_seed_validate(tmp_path, tiny_model_path):
    path = write_multitask_recipe(tmp_path / "r", tiny_model_path, tmp_path / "out", sampler="round_robin",
                                  sources={"sts": {"weight": 1e6}, "qa": {"weight": 1e-12}},
                                  training={"seed": 2**32 - 1})
    recipe = load_recipe(path)
    assert [s.weight for s in recipe.data.train] == [1e6, 1e-12] and recipe.training.seed == 2**32 - 1


def test_method_and_term_numbers_are_finite(tmp_path, tiny_model_path):
    path = write_recipe(tmp_path, tiny_model_path, "simcse-unsup", tmp_path / "out",
                        method_params={"temperature": float("nan")})
    with pytest.raises(RecipeError, match=r"method\.temperature: Input should be a finite number \(got nan\)"):
        load_recipe(path)
    path = write_recipe(tmp_path, tiny_model_path, "simcse-unsup", tmp_path / "out",
                        objective={"terms": [{"name": "uniformity", "weight": 1e12}]})
    with pytest.raises(RecipeError, match=r"objective\.terms\.0\.weight: expected at most 1e6"):
        load_recipe(path)


@pytest.mark.parametrize("args", [["train", "RECIPE", "training.seed=-1"], ["check", "RECIPE", "training.seed=-1"],
                                  ["data", "mine", "--pairs", "PAIRS", "--model", "MODEL", "--seed", "-1", "-o",
                                   "m.jsonl"]])
def test_a_negative_seed_is_one_line_on_every_command(tmp_path, tiny_model_path, capsys, monkeypatch, args):
    """Before: ``ValueError: Seed must be between 0 and 2**32 - 1`` from numpy, as a traceback."""
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path, tiny_model_path, "simcse-unsup", tmp_path / "out")
    pairs = tmp_path / "p.jsonl"
    pairs.write_text("".join(json.dumps({"anchor": f"question {i}", "positive": f"answer {i}"}) + "\n"
                             for i in range(12)), encoding="utf-8")
    argv = [{"RECIPE": str(recipe), "PAIRS": str(pairs), "MODEL": tiny_model_path}.get(a, a) for a in args]
    assert main(argv) == 2
    line = one_error(capsys)
    assert "seed" in line and "expected a seed in 0 .. 4294967295" in line and "(got -1)" in line, line
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.jsonl").exists()


# ----------------------------------------------------------------------------------------------------------
# merge: weights and λ judged by their result


@pytest.fixture(scope="module")
def models(tiny_model_path, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("numbers-merge")
    return {"base": _save_variant(tiny_model_path, root / "base", None),
            "a": _save_variant(tiny_model_path, root / "a", 1),
            "b": _save_variant(tiny_model_path, root / "b", 2)}


def test_soup_weights_whose_sum_overflows_are_refused_before_loading():
    """Before: Σ w = inf, so every wᵢ / Σ w = 0 and the merge was a model of zeros."""
    with pytest.raises(MergeError, match=r"^--weights 1e\+308,1e\+308: their sum overflows to inf; .*scale them "):
        coefficients("average", 2, weights=[1e308, 1e308])
    assert coefficients("average", 2, weights=[1e300, 3e300]) == pytest.approx([0.25, 0.75])


def test_cli_soup_weights_1e308_write_nothing(models, tmp_path, capsys):
    out = tmp_path / "soup"
    assert main(["merge", models["a"], models["b"], "--weights", "1e308,1e308", "-o", str(out)]) == 2
    assert "their sum overflows" in one_error(capsys)
    assert not out.exists()


def test_lambdas_that_overflow_float32_are_refused_and_nothing_is_written(models, tmp_path, capsys):
    """θ = b + λ (θᵢ − b) with λ = 1e300 is finite in float64 but ±inf once cast back to float32: before, the
    model was written with inf/NaN weights (every embedding NaN)."""
    out = tmp_path / "arith"
    assert main(["merge", models["a"], models["b"], "--method", "task-arithmetic", "--base", models["base"],
                 "--lambdas", "1e300", "-o", str(out)]) == 2
    line = one_error(capsys)
    assert "--lambdas 1e+300: the merged weights overflow float32 (" in line and "beyond ±3.4e+38" in line, line
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # The largest λ whose result fits is merged as before (a sanity bound: 1e30 · |δ| stays under 3.4e38).
    fine = merge([models["a"], models["b"]], "task-arithmetic", base=models["base"], lambdas=[1e30])
    assert all(torch.isfinite(t).all() for t in fine.state_dict().values() if t.is_floating_point())


def test_an_input_with_nan_weights_is_refused_naming_it_and_the_tensor(models, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = Path(shutil.copytree(models["b"], tmp_path / "nan-model"))
    weights = load_file(str(bad / "model.safetensors"))
    name = sorted(k for k, v in weights.items() if v.is_floating_point())[0]
    weights[name][0] = float("nan")
    save_file(weights, str(bad / "model.safetensors"))
    with pytest.raises(MergeError, match=rf"^{bad}: holds non-finite weights \(0\.model\.{name}: 1 of "):
        merge([models["a"], str(bad)], "average", output=tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------------
# The loss guard names only a checkpoint with finite weights


def test_loss_guard_skips_checkpoints_whose_weights_are_not_finite(tmp_path, tiny_model_path, monkeypatch):
    """An infinite gradient at step 2 (as a source weight of 1e30 or .inf gives) makes the update NaN: the
    checkpoint saved after step 2 holds NaN weights while its loss was still finite, and the loss is NaN only at
    step 3. Before: "the last good checkpoint is …/checkpoint-2" (the NaN one). Now: checkpoint-1, and
    ``--resume`` skips checkpoint-2 saying why."""
    from embedkit.training import trainer as tr
    from embedkit.training.checkpoints import newest_intact
    from embedkit.training.run import train

    step = tr.EmbedkitTrainer.training_step

    def poisoned(self, model, inputs, num_items_in_batch=None):
        loss = step(self, model, inputs, num_items_in_batch)
        if self.state.global_step == 1:  # the second update
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.fill_(float("inf"))
        return loss

    monkeypatch.setattr(tr.EmbedkitTrainer, "training_step", poisoned)
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, tiny_model_path, "simcse-unsup", out, {"max_steps": 4, "save_steps": 1})
    with pytest.raises(NonFiniteLossError) as err:
        train(str(recipe))
    message = str(err.value)
    assert message.startswith("loss is nan at step 3;"), message
    assert f"the last good checkpoint is {out / 'checkpoints' / 'checkpoint-1'} (checkpoint-2 holds non-finite " \
           "weights)" in message, message
    assert [p.name for p in checkpoint_dirs(out)] == ["checkpoint-1", "checkpoint-2"]
    manifest = json.loads((out / "checkpoints" / "checkpoint-2" / "embedkit_checkpoint.json").read_text())
    assert manifest["weights_finite"] is False
    found, skipped = newest_intact(out / "checkpoints")
    assert found == out / "checkpoints" / "checkpoint-1"
    assert skipped == [("checkpoint-2", "its weights are not finite (NaN or ±inf: training had diverged by this "
                                        "save)")]
    # A manifest written before weights_finite existed: the weights themselves are read.
    del manifest["weights_finite"]
    (out / "checkpoints" / "checkpoint-2" / "embedkit_checkpoint.json").write_text(json.dumps(manifest))
    assert tr.last_good_checkpoint(out / "checkpoints") == (out / "checkpoints" / "checkpoint-1", ["checkpoint-2"])


def test_multitask_recipe_weights_round_trip_through_yaml(tmp_path, tiny_model_path):
    """YAML's ``.inf`` reaches the schema as a float infinity (what a user writes), and is refused."""
    path = write_multitask_recipe(tmp_path / "r", tiny_model_path, tmp_path / "out")
    text = yaml.safe_load(path.read_text(encoding="utf-8"))
    text["data"]["train"][0]["weight"] = ".inf"
    path.write_text(yaml.safe_dump(text).replace("'.inf'", ".inf"), encoding="utf-8")
    assert "weight: .inf" in path.read_text(encoding="utf-8")
    with pytest.raises(RecipeError, match=r"data\.train\.0\.weight: Input should be a finite number \(got inf\)"):
        load_recipe(path)
