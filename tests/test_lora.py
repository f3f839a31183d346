"""LoRA (``model.lora``): validation, the output folder (adapter or merged), frozen base weights, GradCache.

Kill/resume of a LoRA run: ``tests/test_resume.py -k lora``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _mp_helpers import write_recipe

from embedkit.errors import RecipeError

pytest.importorskip("peft")

TEXTS = ["the alpha of beta is number 3", "a gamma walks", "kappa and mu", "the theta of iota is number 40"]
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["query", "value"]}


def _train_lora(tmp_path: Path, model_path: str, merge: bool, monkeypatch, **model: Any) -> tuple[Path, dict]:
    """Train 6 steps of simcse-unsup with LoRA; returns the output folder and what the model was just before
    the final save (embeddings, state dict, the starting state dict)."""
    import embedkit.training.run as run_mod
    from embedkit.training.run import train

    seen: dict[str, Any] = {}
    original = run_mod._lora_output

    def capture(m, merge_flag):  # the model at the end of training, before any merge
        seen["emb"] = m.encode(TEXTS, convert_to_numpy=True)
        seen["state"] = {k: v.detach().clone() for k, v in m.state_dict().items()}
        original(m, merge_flag)

    monkeypatch.setattr(run_mod, "_lora_output", capture)
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, model_path, "simcse-unsup", out, model={"lora": {**LORA, "merge": merge}, **model},
                          training={"max_steps": 6, "learning_rate": 5e-3})
    results = train(str(recipe))
    seen["results"] = results
    return out, seen


def test_adapter_output_reloads_with_same_embeddings_and_base_unchanged(tmp_path, spread_model_path, monkeypatch,
                                                                        peft_gate):
    from safetensors.torch import load_file
    from sentence_transformers import SentenceTransformer

    out, seen = _train_lora(tmp_path, spread_model_path, merge=False, monkeypatch=monkeypatch)
    # An adapter, not full weights; its base is the local base model, by an absolute path that resolves.
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    base = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(base).is_absolute() and Path(base).resolve() == Path(spread_model_path).resolve()
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)
    assert {k.split(".")[-2] for k in adapter} == {"lora_A", "lora_B"}
    assert any(".query." in k for k in adapter) and not any(".key." in k for k in adapter)  # only the targets

    reloaded = SentenceTransformer(str(out), device="cpu")
    np.testing.assert_allclose(reloaded.encode(TEXTS, convert_to_numpy=True), seen["emb"], atol=1e-6)
    from embedkit.model_ref import load_model  # what embedkit eval / encode use: the folder check accepts it

    np.testing.assert_allclose(load_model(str(out))[0].encode(TEXTS, convert_to_numpy=True), seen["emb"], atol=1e-6)

    # Only LoRA weights changed: every base weight equals the starting model's; the LoRA B matrices (zero at
    # the start) moved.
    start = SentenceTransformer(spread_model_path, device="cpu")[0].model.state_dict()
    state = seen["state"]
    lora_keys = [k for k in state if "lora_" in k]
    base_keys = [k for k in state if k.startswith("0.") and "lora_" not in k]
    assert lora_keys and len(base_keys) == len(start)
    for key in base_keys:
        name = key.split(".", 2)[2].removeprefix("base_model.model.").replace(".base_layer", "")
        assert torch.equal(state[key], start[name]), key
    assert all(state[k].abs().max() > 0 for k in lora_keys if "lora_B" in k)
    trainable = seen["results"]["train"]["trainable_parameters"]
    assert trainable == sum(state[k].numel() for k in lora_keys)


def test_merged_output_loads_without_peft_and_gives_same_embeddings(tmp_path, spread_model_path, monkeypatch):
    from safetensors.torch import load_file
    from sentence_transformers import SentenceTransformer

    out, seen = _train_lora(tmp_path, spread_model_path, merge=True, monkeypatch=monkeypatch)
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").is_file()
    weights = load_file(str(out / "model.safetensors"))
    assert not any("lora" in k or "base_layer" in k for k in weights)  # plain encoder keys: no peft needed

    import transformers.integrations.peft as hf_peft

    def no_peft(**_):
        raise AssertionError("a merged output must load without peft")

    monkeypatch.setattr(hf_peft, "check_peft_version", no_peft)
    reloaded = SentenceTransformer(str(out), device="cpu")
    np.testing.assert_allclose(reloaded.encode(TEXTS, convert_to_numpy=True), seen["emb"], atol=1e-5)
    start = SentenceTransformer(spread_model_path, device="cpu").encode(TEXTS, convert_to_numpy=True)
    assert np.abs(seen["emb"] - start).max() > 1e-3, "training must have moved the embeddings"


def test_dense_head_trains_fully_and_reloads(tmp_path, spread_model_path, monkeypatch, peft_gate):
    """pooling: cls without mlp_only_train keeps a Dense head after the encoder: it trains in full and saves
    beside the adapter."""
    from sentence_transformers import SentenceTransformer

    out, seen = _train_lora(tmp_path, spread_model_path, merge=False, monkeypatch=monkeypatch,
                            pooling="cls", mlp_only_train=False)
    reloaded = SentenceTransformer(str(out), device="cpu")
    np.testing.assert_allclose(reloaded.encode(TEXTS, convert_to_numpy=True), seen["emb"], atol=1e-6)
    dense = [k for k in seen["state"] if k.startswith("2.")]
    assert dense and seen["results"]["train"]["trainable_parameters"] > sum(
        seen["state"][k].numel() for k in seen["state"] if "lora_" in k)


def test_gradcache_with_lora_equals_plain(spread_model_path):
    from embedkit.losses.contrastive import SimCSELoss
    from embedkit.modeling import build_model
    from embedkit.recipe import LoraSection, ModelSection

    model = build_model(ModelSection(name=spread_model_path, pooling="mean", dropout=0.0, max_seq_length=16,
                                     lora=LoraSection(**LORA)))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # B starts at zero: give the A gradients something to carry
    model.train()
    features = [model.tokenize([f"sentence number {i} about {'abc'[i % 3]}" for i in range(12)])]

    def grads(loss_fn):
        model.zero_grad()
        loss = loss_fn(features)
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads(SimCSELoss(model))
    cached = grads(SimCSELoss(model, mini_batch_size=5))
    assert plain[1] and all("lora_" in n for n in plain[1])  # the frozen base gets no gradient
    assert cached[0] == pytest.approx(plain[0], abs=1e-5)
    assert plain[1].keys() == cached[1].keys()
    for name, g in plain[1].items():
        torch.testing.assert_close(cached[1][name], g, atol=1e-5, rtol=1e-4, msg=name)


def _recipe(tmp_path: Path, model_path: str, lora: Any) -> Path:
    return write_recipe(tmp_path, model_path, "simcse-unsup", tmp_path / "out", model={"lora": lora})


@pytest.mark.parametrize(("lora", "expected"), [
    ({"r": 0}, r"model\.lora\.r: .*greater than 0"),
    ({"alpha": -1}, r"model\.lora\.alpha: .*greater than 0"),
    ({"dropout": 1.0}, r"model\.lora\.dropout: .*less than 1"),
    ({"target_modules": []}, r"model\.lora\.target_modules"),
    ({"target_modules": "some"}, r"model\.lora\.target_modules"),
    ({"rank": 4}, r"model\.lora\.rank: unknown key"),
])
def test_bad_lora_keys_are_one_line_each(tmp_path, tiny_model_path, lora, expected):
    from embedkit.validate import load_recipe

    with pytest.raises(RecipeError, match=expected) as err:
        load_recipe(_recipe(tmp_path, tiny_model_path, lora))
    assert str(err.value).count("\n") == 0 and "recipe.yaml:" in str(err.value)


def test_lora_without_peft_is_refused_at_validation(tmp_path, tiny_model_path, monkeypatch):
    import importlib.util

    from embedkit.validate import load_recipe

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    with pytest.raises(RecipeError, match=r"recipe.yaml:\d+: model.lora: .*pip install peft") as err:
        load_recipe(_recipe(tmp_path, tiny_model_path, {"r": 4}))
    assert "\n" not in str(err.value)


def test_unknown_target_module_is_one_line(tiny_model_path):
    from embedkit.errors import EmbedkitError
    from embedkit.modeling import build_model
    from embedkit.recipe import LoraSection, ModelSection

    with pytest.raises(EmbedkitError, match=r"model.lora: .*no_such_layer") as err:
        build_model(ModelSection(name=tiny_model_path, lora=LoraSection(target_modules=["no_such_layer"])))
    assert "\n" not in str(err.value)


def test_card_says_lora_settings():
    from embedkit.card import build_card

    recipe = {"model": {"name": "/x/base", "lora": {**LORA, "merge": False}}, "method": {"name": "simcse-unsup"}}
    card = build_card({"recipe": recipe, "train": {"trainable_parameters": 1234}}, "me/model")
    assert "- **LoRA:** r=4, alpha=8, dropout=0.0, targets `query`, `value`; 1,234 trainable parameters; saved as " \
           "a PEFT adapter" in card
    merged = build_card({"recipe": {**recipe, "model": {"name": "/x", "lora": {**LORA, "merge": True}}}}, "me/m")
    assert "merged into full weights" in merged


def test_adapter_folder_with_missing_base_is_one_line(tmp_path):
    from embedkit.model_ref import ModelRefError, check_model

    (tmp_path / "modules.json").write_text(json.dumps(
        [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"}]))
    (tmp_path / "adapter_model.safetensors").write_bytes(b"x")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "gone")}))
    with pytest.raises(ModelRefError, match=r"LoRA adapter whose base model .*gone does not exist here") as err:
        check_model(str(tmp_path))
    assert "\n" not in str(err.value)


def test_best_checkpoint_of_a_lora_run_is_restored_at_the_end(tmp_path, spread_model_path, monkeypatch):
    """Checkpoint selection loads the best checkpoint's adapter in place (not sentence-transformers' reload)."""
    from safetensors.torch import load_file
    from sentence_transformers.evaluation import SentenceEvaluator
    from test_eval_data import make_sts_dir

    import embedkit.evaluation.core as core
    from embedkit.training.run import train

    scores = iter([90.0, 50.0, 10.0])  # dev Spearman at steps 2, 4, 6: the best is checkpoint-2

    class Falling(SentenceEvaluator):
        def __init__(self) -> None:
            super().__init__()
            self.name, self.primary_metric = "stsb-dev", "spearman"

        def __call__(self, model, output_path=None, epoch=-1, steps=-1):
            return self.prefix_name_to_metrics({"spearman": next(scores)}, self.name)

    monkeypatch.setattr(core, "make_dev_evaluator", lambda pairs, batch_size=128: Falling())
    root, _ = make_sts_dir(tmp_path / "sts")
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, spread_model_path, "simcse-unsup", out, model={"lora": LORA},
                          training={"max_steps": 6, "eval_steps": 2, "save_steps": 2, "learning_rate": 5e-3},
                          dev={"path": str(root / "sts" / "stsbenchmark" / "sts-test.csv"), "hub": None})
    results = train(str(recipe))
    assert Path(results["train"]["best_checkpoint"]).name == "checkpoint-2"
    final = load_file(str(out / "adapter_model.safetensors"))
    best = load_file(str(out / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors"))
    last = load_file(str(out / "checkpoints" / "checkpoint-6" / "adapter_model.safetensors"))
    assert final.keys() == best.keys() and all(torch.equal(final[k], best[k]) for k in final)
    assert any(not torch.equal(final[k], last[k]) for k in final)


def _lora_model(path: str, pooling: str, targets: Any, **model: Any):
    from embedkit.modeling import build_model
    from embedkit.recipe import LoraSection, ModelSection

    return build_model(ModelSection(name=path, pooling=pooling, dropout=0.0, max_seq_length=16,
                                    lora=LoraSection(r=4, alpha=8, target_modules=targets), **model))


# The tiny BERT (hidden 32, intermediate 64, 2 layers) at r = 4: r·(fan_in + fan_out) per adapted Linear. Each
# layer has query, key, value and the attention output (32→32), intermediate (32→64) and output (64→32).
TINY_ALL_LINEAR = 2 * (4 * 4 * (32 + 32) + 2 * 4 * (32 + 64))  # 3,584; BERT's pooler (32→32) would add 256
TINY_QUERY_DENSE = 2 * (4 * (32 + 32) + 4 * (32 + 32) + 2 * 4 * (32 + 64))  # query + the three "dense" layers


@pytest.mark.parametrize(("pooling", "targets", "expected", "model"), [
    ("mean", "all-linear", TINY_ALL_LINEAR, {}),
    ("cls", "all-linear", TINY_ALL_LINEAR, {"mlp_only_train": False}),  # + the Dense head, trained in full
    ("cls_before_pooler", ["query", "dense"], TINY_QUERY_DENSE, {}),  # "dense" also names pooler.dense
    ("first_last_avg", "all-linear", TINY_ALL_LINEAR, {}),
])
def test_lora_adapts_only_layers_the_pooling_uses_and_each_gets_a_gradient(spread_model_path, pooling, targets,
                                                                            expected, model):
    """BERT's pooler feeds no embedkit pooling (sentence-transformers reads the token embeddings): it is not
    adapted, so every trainable LoRA parameter gets a non-zero gradient from one loss, and the count is the formula."""
    from embedkit.losses.contrastive import SimCSELoss
    from embedkit.modeling import parameter_counts

    net = _lora_model(spread_model_path, pooling, targets, **model)
    lora = {n: p for n, p in net.named_parameters() if "lora_" in n}
    assert not any(".pooler." in n for n in lora)
    assert sum(p.numel() for p in lora.values()) == expected
    head = sum(p.numel() for n, p in net.named_parameters() if p.requires_grad and "lora_" not in n)
    assert parameter_counts(net)[0] == expected + head and head == (32 * 32 + 32 if model else 0)
    for name, p in lora.items():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # B starts at zero, which would leave every A without a gradient
    net.train()
    SimCSELoss(net)([net.tokenize([f"sentence number {i} about {'abc'[i % 3]}" for i in range(6)])]).backward()
    dead = [n for n, p in lora.items() if p.grad is None or not p.grad.abs().max() > 0]
    assert not dead, dead


def _adapter_folder(folder: Path, base: str) -> Path:
    """A finished LoRA adapter output on ``base`` (untrained: only its files matter here)."""
    from embedkit.modeling import build_model
    from embedkit.recipe import LoraSection, ModelSection

    model = build_model(ModelSection(name=base, pooling="mean", max_seq_length=16, lora=LoraSection(**LORA)))
    model.save_pretrained(str(folder))
    recipe = {"model": {"name": base, "lora": {**LORA, "merge": False}}, "method": {"name": "simcse-unsup"}}
    (folder / "results.json").write_text(json.dumps({"recipe": recipe, "train": {}}))
    return folder


def test_push_publishes_an_adapter_on_the_packaged_model_with_the_bases_hub_id(tmp_path, minilm_path, peft_gate):
    """The output folder names the packaged copy by its local path (it loads here, offline); the files pushed name
    the Hub id that copy ships, so the adapter loads wherever the Hub does."""
    from embedkit.hub import prepare_upload

    out = _adapter_folder(tmp_path / "out", "sentence-transformers/all-MiniLM-L6-v2")  # as the quickstart names it
    local = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(local).resolve() == Path(minilm_path).resolve()
    staged = prepare_upload(out, tmp_path / "stage", "me/adapter")
    pushed = json.loads((staged.folder / "adapter_config.json").read_text())
    assert pushed["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == local  # unchanged
    assert minilm_path not in "".join(p.read_text(errors="ignore") for p in staged.folder.rglob("*.json"))


def test_push_refuses_an_adapter_whose_base_is_only_a_local_folder(tmp_path, tiny_model_path, peft_gate):
    from embedkit.hub import HubError, prepare_upload

    out = _adapter_folder(tmp_path / "out", tiny_model_path)
    with pytest.raises(HubError, match=r"adapter_config.json: a LoRA adapter on the local model .* no Hub id.*"
                                       r"model\.lora\.merge: true") as err:
        prepare_upload(out, tmp_path / "stage", "me/adapter")
    assert "\n" not in str(err.value)


def test_push_to_hub_of_an_adapter_on_a_local_base_is_refused_at_validation(tmp_path, tiny_model_path):
    import yaml

    from embedkit.validate import load_recipe

    path = write_recipe(tmp_path, tiny_model_path, "simcse-unsup", tmp_path / "out", model={"lora": LORA})
    raw = yaml.safe_load(path.read_text())
    raw["output"]["push_to_hub"] = "me/adapter"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(RecipeError, match=r"recipe.yaml:\d+: model.lora.merge: .*no Hub id.*merge: true") as err:
        load_recipe(path)
    assert "\n" not in str(err.value)
    raw["model"]["lora"]["merge"] = True  # full weights publish from anywhere
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert load_recipe(path).model.lora.merge


@pytest.mark.parametrize(("name", "expected"), [
    ("sentence-transformers/all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"),
    ("{hf_cache}/models--BAAI--bge-small-en-v1.5/snapshots/" + "a" * 40, "BAAI/bge-small-en-v1.5"),
    ("{tiny}", None),  # a plain folder: its config's _name_or_path names the model it was trained from, not itself
])
def test_hub_id_of_a_model_reference(tmp_path, tiny_model_path, minilm_path, name, expected):
    from embedkit.model_ref import hub_id_for

    if "{hf_cache}" in name:
        name = name.format(hf_cache=tmp_path)
        Path(name).mkdir(parents=True)
    name = name.format(tiny=tiny_model_path)
    assert hub_id_for(name) == expected
    assert hub_id_for(minilm_path) == "sentence-transformers/all-MiniLM-L6-v2"  # the packaged copy
