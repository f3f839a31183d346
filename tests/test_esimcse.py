"""The esimcse and contriever methods end to end on the tiny model: their losses fall, and a killed run resumed
from its checkpoint ends with the same queue, momentum weights and model as the uninterrupted run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from embedkit.recipe import RECIPES_DIR
from embedkit.training.trainer import METHOD_STATE_FILE, load_method_state
from embedkit.validate import load_recipe, load_recipe_with_data

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def write_recipe(folder: Path, model: str, method: dict, **training) -> Path:
    corpus = folder / "corpus.txt"
    lines = [f"the {WORDS[i % 12]} of {WORDS[(i * 7) % 12]} sat near {WORDS[(i * 5) % 12]} number {i}"
             for i in range(96)]
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    recipe = {
        # mean pooling: a random tiny BERT's [CLS] vectors are all alike and learn too slowly for a short test
        "model": {"name": model, "pooling": "mean", "max_seq_length": 32},
        "data": {"train": {"path": str(corpus)}, "dev": None},
        "method": method,
        "training": {"batch_size": 8, "learning_rate": 3e-3, "seed": 3, **{"logging_steps": 2, **training}},
        "output": {"dir": str(folder / "out"), "keep_checkpoints": "all"},  # the tests read the method state
        "eval": {"before": False, "suite": "none"},
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def losses(results: dict) -> list[float]:
    return [entry["loss"] for entry in results["train"]["log_history"] if "loss" in entry]


@pytest.fixture(scope="module")
def esimcse_run(tmp_path_factory, tiny_model_path):
    """16 steps of esimcse (queue 16, dynamic sub-word repetition), checkpoints at steps 8 and 16."""
    from embedkit.training.run import train

    folder = tmp_path_factory.mktemp("esimcse")
    recipe = write_recipe(folder, tiny_model_path, {"name": "esimcse", "queue_size": 16, "momentum": 0.9},
                          max_steps=16, save_steps=8, eval_steps=8, logging_steps=4)
    results = train(str(recipe))
    final = folder / "out" / "checkpoints" / "checkpoint-16"
    return {
        "recipe": recipe, "folder": folder, "results": results,
        "state": load_file(str(final / METHOD_STATE_FILE)),
        "model": load_file(str(final / "model.safetensors")),
    }


def test_esimcse_training_decreases_its_loss(esimcse_run):
    """Logged every 4 steps. The queue fills in the first two steps, which raises the loss (from 8 to 24 logits),
    so the comparison starts once it is full."""
    values = losses(esimcse_run["results"])
    assert len(values) == 4
    assert values[-1] < values[1] - 0.2, values


def test_checkpoint_holds_queue_momentum_weights_and_augmentation_counter(esimcse_run):
    state = esimcse_run["state"]
    assert int(state["queue.count"]) == 16 and int(state["queue.ptr"]) == (16 * 8) % 16
    assert int(state["repetition.draws"]) == 16
    assert state["queue.keys"].abs().sum() > 0
    assert any(k.startswith("momentum_encoder.encoder.") for k in state)
    assert not any(k.startswith("model.") for k in state)


def test_resume_restores_queue_and_momentum_weights_bit_for_bit(esimcse_run):
    """A loss built afresh (as ``--resume`` builds it) holds exactly the checkpoint's tensors once loaded."""
    from embedkit.methods import get_method
    from embedkit.methods.base import TrainContext
    from embedkit.modeling import build_model
    from embedkit.training.run import build_dataset

    checkpoint = esimcse_run["folder"] / "out" / "checkpoints" / "checkpoint-8"
    saved = load_file(str(checkpoint / METHOD_STATE_FILE))
    recipe, data = load_recipe_with_data(esimcse_run["recipe"])
    method_cls = get_method("esimcse")
    model = build_model(recipe.model)
    method = method_cls(TrainContext(recipe=recipe, model=model, params=method_cls.params_cls(
        **{k: v for k, v in recipe.method.model_dump().items() if k != "name"})))
    method.prepare_dataset(build_dataset(recipe, data, method_cls)[0])
    loss = method.build_loss()
    assert int(loss.queue.count) == 0  # a fresh queue differs from the saved one ...
    load_method_state(loss, checkpoint)
    restored = {k: v for k, v in loss.state_dict().items() if not k.startswith("model.")}
    assert sorted(restored) == sorted(saved)
    for key, tensor in saved.items():  # ... and equals it bit for bit once loaded
        assert restored[key].dtype == tensor.dtype and torch.equal(restored[key], tensor), key


def test_kill_and_resume_matches_the_uninterrupted_run(esimcse_run):
    """Lose everything after the step-8 checkpoint (as a kill would), resume, and compare the step-16 state with
    the uninterrupted run's: queue, pointer, momentum encoder, augmentation counter and model, bit for bit."""
    from embedkit.training.run import train

    out = esimcse_run["folder"] / "out"
    shutil.rmtree(out / "checkpoints" / "checkpoint-16")
    (out / "results.json").unlink()
    train(str(esimcse_run["recipe"]), resume=True)
    final = out / "checkpoints" / "checkpoint-16"
    resumed, resumed_model = load_file(str(final / METHOD_STATE_FILE)), load_file(str(final / "model.safetensors"))
    assert sorted(resumed) == sorted(esimcse_run["state"])
    different = [k for k, v in esimcse_run["state"].items() if not torch.equal(resumed[k], v)]
    assert not different, different
    assert all(torch.equal(resumed_model[k], v) for k, v in esimcse_run["model"].items())


def held_out_view_loss(model, texts: list[str]) -> float:
    """Contriever's objective on fixed views, without the queue's staleness: crop view 0 of each text must find
    view 1 of the same text among the views 1 of all texts (cosine / 0.05, dropout off)."""
    import torch.nn.functional as F

    from embedkit.augment import CropAndDelete, special_token_ids

    views = CropAndDelete(special_token_ids(model.tokenizer), model.tokenizer.pad_token_id, 0.5, 1.0, 0.0, seed=99)
    features = model.preprocess(texts)
    model.eval()
    with torch.no_grad():
        a = F.normalize(model(views(features, None, view=0))["sentence_embedding"], dim=-1)
        b = F.normalize(model(views(features, None, view=1))["sentence_embedding"], dim=-1)
    return F.cross_entropy(a @ b.T / 0.05, torch.arange(len(texts))).item()


def test_contriever_training_decreases_its_loss(tmp_path, tiny_model_path):
    """16 steps of contriever on the tiny model lower its contrastive loss on fixed held views.

    The logged training loss is no measure here: its negatives are the queue's stale keys, and a random 32-wide
    encoder (whose mean-pooled vectors start at cosine ~0.97 to each other) makes it swing by more than it falls
    in 16 steps. The views are made easier than the defaults (long crops, no deletion) and compared by cosine,
    since unnormalised dot products of this encoder's embeddings give logits in the hundreds."""
    from sentence_transformers import SentenceTransformer

    from embedkit.modeling import build_model
    from embedkit.recipe import ModelSection
    from embedkit.training.run import train

    recipe = write_recipe(
        tmp_path, tiny_model_path,
        {"name": "contriever", "queue_size": 16, "momentum": 0.9, "crop_min": 0.5, "crop_max": 1.0,
         "deletion": 0.0, "normalize": True},
        max_steps=16, learning_rate=1e-3, save_steps=100, eval_steps=100,
    )
    texts = (tmp_path / "corpus.txt").read_text().split("\n")[:96]
    before = held_out_view_loss(build_model(ModelSection(name=tiny_model_path, pooling="mean")), texts)
    results = train(str(recipe))
    assert len(losses(results)) == 8 and all(torch.isfinite(torch.tensor(losses(results))))
    after = held_out_view_loss(SentenceTransformer(str(tmp_path / "out"), device="cpu"), texts)
    print(f"held-out view loss {before:.3f} -> {after:.3f}")
    assert after < before - 0.1, (before, after)
    state = load_file(str(tmp_path / "out" / "checkpoints" / "checkpoint-16" / METHOD_STATE_FILE))
    assert int(state["views.draws"]) == 16 and int(state["queue.count"]) == 16


def test_method_parts_follow_the_parameters(tiny_model_path):
    """Ablation switches: repetition only, queue only, both; word mode; contriever's parts."""
    import datasets

    from embedkit.augment import CropAndDelete, SubwordRepetition, WordRepetition
    from embedkit.methods import get_method
    from embedkit.methods.base import TrainContext
    from embedkit.modeling import build_model
    from embedkit.recipe import ModelSection, Recipe

    model = build_model(ModelSection(name=tiny_model_path, pooling="cls", mlp_only_train=True))
    texts = ["one two three four five six", "seven eight nine ten eleven twelve"]

    def build(name: str, **params):
        recipe = Recipe.model_validate({
            "model": {"name": tiny_model_path}, "data": {"train": {"path": "x.txt"}},
            "method": {"name": name, **params}, "training": {"batch_size": 4}, "output": {"dir": "x"},
        })
        cls = get_method(name)
        method = cls(TrainContext(recipe=recipe, model=model, params=cls.params_cls(**params)))
        ds = method.prepare_dataset(datasets.Dataset.from_dict({"text": texts}))
        assert ds["label"] == [0, 1]
        return method.build_loss(), method

    loss, method = build("esimcse")
    assert isinstance(loss.repetition, SubwordRepetition) and loss.queue.size == 10  # 2.5 × 4
    assert len(method.callbacks(loss)) == 1
    loss, method = build("esimcse", queue_size=0)
    assert loss.queue is None and loss.momentum_encoder is None and method.callbacks(loss) == []
    loss, _ = build("esimcse", repetition="none", queue_size=8)
    assert loss.repetition is None and loss.queue.size == 8
    loss, _ = build("esimcse", repetition="word", static=True)
    assert isinstance(loss.repetition, WordRepetition) and loss.repetition.static
    loss.model.train()
    features = model.preprocess(texts)
    value = loss([features], torch.tensor([0, 1]))
    assert torch.isfinite(value)
    loss, method = build("contriever", queue_size=32)
    assert isinstance(loss.views, CropAndDelete) and int(loss.queue.count) == 32 and not loss.normalize
    assert len(method.callbacks(loss)) == 1


def test_shipped_recipes_validate(data_dir):
    for name, method, settings in [
        ("esimcse-unsup-bert-base", "esimcse", {"dup_rate": 0.32, "queue_size": 160, "momentum": 0.995}),
        ("contriever-bert-base", "contriever", {"queue_size": 131072, "momentum": 0.9995, "normalize": False}),
        ("esimcse-brown-minilm", "esimcse", {}),
        ("contriever-brown-minilm", "contriever", {}),
    ]:
        assert (RECIPES_DIR / f"{name}.yaml").is_file()
        # The bert-base recipes name a Hub model and Hub data: validated without checking them (offline here).
        recipe = load_recipe(name, data_dir=str(data_dir), check_data="bert-base" not in name)
        assert recipe.method.name == method
        for key, value in settings.items():
            assert getattr(recipe.method, key) == value, (name, key)


@pytest.mark.slow
@pytest.mark.parametrize("method, params, model", [
    ("esimcse", {"queue_size": 16, "momentum": 0.9}, None),
    # The paper recipe's settings: static repetition (keyed by row id, no state) and a fresh key encoder.
    ("esimcse", {"queue_size": 16, "momentum": 0.9, "static": True, "momentum_init": "random"}, None),
    ("contriever", {"queue_size": 16, "momentum": 0.9}, {"pooling": "mean", "mlp_only_train": False}),
])
def test_sigkill_then_resume_matches_uninterrupted_run(method, params, model, tmp_path, spread_model_path):
    """A real SIGKILL right after the first checkpoint (step 8 of 12), then ``embedkit train --resume``: the
    model, queue, momentum encoder and augmentation counter end bit for bit where an uninterrupted run ends."""
    from _mp_helpers import kill_resume_compare

    report = kill_resume_compare(tmp_path, spread_model_path, method, model=model, method_params=params,
                                 training={"max_steps": 12, "save_steps": 8, "batch_size": 8})
    assert report["killed"]["checkpoints"] == ["checkpoint-8"] and not report["killed"]["results_json"]
    assert report["global_step"] == (12, 12)
    keys = report["method_state_keys"]
    assert {"queue.keys", "queue.ptr", "queue.count"} <= set(keys)
    assert any(k.startswith("momentum_encoder.encoder.") for k in keys)
    assert report["method_state_bitwise_mismatch"] == []
    assert report["weights_bitwise_mismatch"] == [], report["weights_max_abs_diff"]
