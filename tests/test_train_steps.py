"""The training path's steps (issue 28, item 4): the trainer's arguments are a function of the recipe alone, and
the method's parameters are validated once, then carried on the recipe."""

from __future__ import annotations

from functools import partial

import pytest
from _mp_helpers import write_recipe

from embedkit.data.samplers import LengthGroupedBatchSampler, default_batch_sampler
from embedkit.methods import bound_method, get_method
from embedkit.training.run import training_args
from embedkit.validate import load_recipe


@pytest.fixture
def recipe_file(tmp_path):
    # A model path that does not exist: nothing here may load a model.
    return write_recipe(tmp_path, str(tmp_path / "no-model"), "simcse-unsup", tmp_path / "out",
                        training={"batch_size": 8, "eval_steps": 3, "save_steps": None, "seed": 11})


def test_training_args_need_no_model_or_data(recipe_file, tmp_path) -> None:
    recipe = load_recipe(str(recipe_file), check_data=False)
    args = training_args(recipe, tmp_path / "work", world_size=2, precision="fp32", trackers=[], metric_key=None)
    assert args.per_device_train_batch_size == 4  # the global batch of 8 over 2 processes
    assert args.save_steps == 3 and args.eval_strategy == "no" and not args.load_best_model_at_end
    assert args.seed == args.data_seed == 11 and args.report_to == []
    assert args.batch_sampler is default_batch_sampler and args.output_dir == str(tmp_path / "work" / "checkpoints")
    assert args.dataloader_drop_last  # several processes: equal shares


def test_training_args_follow_the_dev_set_and_the_samplers(recipe_file, tmp_path) -> None:
    recipe = load_recipe(str(recipe_file), ["training.group_by_length=true"], check_data=False)
    args = training_args(recipe, tmp_path, world_size=1, precision="bf16", trackers=["tensorboard"],
                         metric_key="eval_stsb-dev_spearman")
    assert args.eval_strategy == "steps" and args.load_best_model_at_end and args.bf16 and not args.fp16
    assert args.metric_for_best_model == "eval_stsb-dev_spearman" and args.report_to == ["tensorboard"]
    assert isinstance(args.batch_sampler, partial) and args.batch_sampler.func is LengthGroupedBatchSampler
    assert args.batch_sampler.keywords == {"world_size": 1}


def test_the_method_parameters_are_validated_once(recipe_file, monkeypatch) -> None:
    recipe = load_recipe(str(recipe_file), check_data=False)
    cls = get_method("simcse-unsup")
    calls = []
    original = cls.params_cls.model_validate
    monkeypatch.setattr(cls.params_cls, "model_validate", lambda v, *a, **k: calls.append(v) or original(v, *a, **k))
    _, first = bound_method(recipe.method)
    _, second = bound_method(recipe.method)
    assert first is second is recipe.method.params() and calls == []  # validation's own object, twice
    recipe.method.temperature = 0.5  # a section changed after validation is validated again, never read stale
    _, changed = bound_method(recipe.method)
    assert changed.temperature == 0.5 and len(calls) == 1
