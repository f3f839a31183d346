"""Settings that make the paper recipes follow their reference code (issue 18): the SimCSE MLP head's BERT
initialisation, ESimCSE's static repetition and fresh key encoder, Contriever's key-encoder dropout and AdamW
settings."""

from __future__ import annotations

import datasets
import pytest
import torch

from embedkit.recipe import RECIPES_DIR
from embedkit.validate import load_recipe

# ------------------------------------------------------------------------------------------------------------
# The SimCSE MLP head: weight ~ N(0, initializer_range), bias 0 (BERT's _init_weights, as the reference)


def test_projection_head_is_initialised_as_bert():
    from embedkit.losses.common import ProjectionHead

    torch.manual_seed(0)
    head = ProjectionHead(384, std=0.02)
    w = head.dense.weight.detach()
    assert torch.equal(head.dense.bias.detach(), torch.zeros(384))
    # 147,456 draws: the sample std is within 1% of 0.02 with overwhelming probability; nn.Linear's default
    # (uniform ±1/√384) has std 0.0295 and would fail.
    assert w.std().item() == pytest.approx(0.02, rel=0.02)
    assert abs(w.mean().item()) < 5e-4
    torch.manual_seed(0)
    assert torch.equal(ProjectionHead(384, std=0.02).dense.weight, head.dense.weight)  # seeded
    torch.manual_seed(1)
    assert not torch.equal(ProjectionHead(384, std=0.02).dense.weight, head.dense.weight)


def test_heads_read_initializer_range_from_the_model_config(spread_model_path):
    """The spread tiny BERT's config says initializer_range 0.2: the training-only head (mlp_only_train) and the
    kept Dense head (cls without mlp_only_train) both draw with std 0.2, bias 0."""
    from embedkit.methods import get_method
    from embedkit.methods.base import TrainContext, training_head
    from embedkit.modeling import build_model, initializer_range
    from embedkit.recipe import ModelSection, Recipe

    section = ModelSection(name=spread_model_path, pooling="cls", mlp_only_train=True)
    model = build_model(section)
    assert initializer_range(model) == pytest.approx(0.2)
    recipe = Recipe.model_validate({"model": section.model_dump(), "data": {"train": {"path": "x.txt"}},
                                    "method": {"name": "simcse-unsup"}, "output": {"dir": "x"}})
    cls = get_method("simcse-unsup")
    torch.manual_seed(3)
    head = training_head(cls(TrainContext(recipe=recipe, model=model, params=cls.params_cls())))
    torch.manual_seed(3)
    again = training_head(cls(TrainContext(recipe=recipe, model=model, params=cls.params_cls())))
    assert torch.equal(head.dense.weight, again.dense.weight)
    dim = model.get_embedding_dimension()
    assert head.dense.weight.std().item() == pytest.approx(0.2, rel=0.1)  # 32 × 32 draws
    assert torch.equal(head.dense.bias.detach(), torch.zeros(dim))

    kept = build_model(ModelSection(name=spread_model_path, pooling="cls", mlp_only_train=False))
    dense = kept[2].linear
    assert dense.weight.std().item() == pytest.approx(0.2, rel=0.1)
    assert torch.equal(dense.bias.detach(), torch.zeros(dim))


# ------------------------------------------------------------------------------------------------------------
# ESimCSE: the repetition drawn once per sentence (static), deterministic for the seed

LONG = [" ".join(f"{w}{i}" for w in "red green blue cyan plum teal gold navy rose lime sand jade".split()) + f" end {i}"
        for i in range(8)]


def _esimcse_loss(model_path: str, **params):
    from embedkit.methods import get_method
    from embedkit.methods.base import TrainContext
    from embedkit.modeling import build_model
    from embedkit.recipe import ModelSection, Recipe

    model = build_model(ModelSection(name=model_path, pooling="mean", max_seq_length=64))
    params = {"queue_size": 0, **params}
    seed = params.pop("seed", 42)
    recipe = Recipe.model_validate({"model": {"name": model_path}, "data": {"train": {"path": "x.txt"}},
                                    "method": {"name": "esimcse", **params}, "training": {"seed": seed},
                                    "output": {"dir": "x"}})
    cls = get_method("esimcse")
    method = cls(TrainContext(recipe=recipe, model=model, params=cls.params_cls(**params)))
    method.prepare_dataset(datasets.Dataset.from_dict({"text": LONG}))
    loss = method.build_loss()
    loss.model.train()
    return loss, model


def _positives(loss, model, order: list[int]) -> dict[int, list[int]]:
    """Each row's positive (token ids without padding) when the batch holds rows ``order``; one training draw."""
    features = model.preprocess([LONG[i] for i in order])
    batch = loss.plan([features], torch.tensor(order))
    ids, mask = batch.positive_features["input_ids"], batch.positive_features["attention_mask"]
    return {row: ids[r][mask[r].bool()].tolist() for r, row in enumerate(order)}


def test_static_repetition_is_the_same_every_epoch_differs_per_sentence_and_follows_the_seed(tiny_model_path):
    loss, model = _esimcse_loss(tiny_model_path, static=True)
    epoch1 = _positives(loss, model, list(range(8)))
    epoch2 = _positives(loss, model, [5, 2, 7, 0, 3, 6, 1, 4])  # another epoch: other order, other batch positions
    assert int(loss.repetition.draws) == 2
    assert epoch1 == epoch2
    originals = {i: model.preprocess([LONG[i]])["input_ids"][0].tolist() for i in range(8)}
    added = {i: len(epoch1[i]) - len(originals[i]) for i in range(8)}
    assert all(0 <= n <= 9 for n in added.values())  # k < min(10, ⌊0.32·L⌋), L ≥ 29 tokens here
    assert len(set(added.values())) > 1, added  # each sentence has its own draw
    assert any(n > 0 for n in added.values())

    same_seed, _ = _esimcse_loss(tiny_model_path, static=True)
    assert _positives(same_seed, model, list(range(8))) == epoch1
    other_seed, _ = _esimcse_loss(tiny_model_path, static=True, seed=43)
    assert _positives(other_seed, model, list(range(8))) != epoch1

    dynamic, _ = _esimcse_loss(tiny_model_path, static=False)
    first = _positives(dynamic, model, list(range(8)))
    assert _positives(dynamic, model, list(range(8))) != first  # per-step draws change between epochs


def test_fresh_key_encoder_is_a_seeded_bert_initialisation(tiny_model_path):
    """momentum_init: random (the reference's key encoder, built before the checkpoint loads): weights differ
    from the trained encoder's, are the same for the same seed, and LayerNorm starts at (1, 0) as BERT's init."""
    loss, model = _esimcse_loss(tiny_model_path, queue_size=8, momentum_init="random")
    again, _ = _esimcse_loss(tiny_model_path, queue_size=8, momentum_init="random")
    key = dict(loss.momentum_encoder.encoder.named_parameters())
    live = dict(model.named_parameters())
    name = next(n for n in key if n.endswith("attention.self.query.weight"))
    assert not torch.equal(key[name], live[name])
    assert torch.equal(key[name], dict(again.momentum_encoder.encoder.named_parameters())[name])
    norm = next(n for n in key if n.endswith("output.LayerNorm.weight"))
    assert torch.equal(key[norm], torch.ones_like(key[norm]))


# ------------------------------------------------------------------------------------------------------------
# Contriever: the key encoder's dropout as the reference (on during training)


def _contriever_loss(model_path: str, **params):
    from embedkit.methods import get_method
    from embedkit.methods.base import TrainContext
    from embedkit.modeling import build_model
    from embedkit.recipe import ModelSection, Recipe

    model = build_model(ModelSection(name=model_path, pooling="mean", dropout=0.3))
    params = {"queue_size": 16, **params}
    recipe = Recipe.model_validate({"model": {"name": model_path}, "data": {"train": {"path": "x.txt"}},
                                    "method": {"name": "contriever", **params}, "output": {"dir": "x"}})
    cls = get_method("contriever")
    method = cls(TrainContext(recipe=recipe, model=model, params=cls.params_cls(**params)))
    loss = method.build_loss()
    loss.views = None  # query and key are the text itself: only dropout can make two keys differ
    return loss, model


def test_contriever_key_encoder_runs_with_dropout_as_the_reference(spread_model_path):
    loss, model = _contriever_loss(spread_model_path)
    assert loss.momentum_encoder.dropout  # the default, as the reference
    features = model.preprocess(LONG[:4])
    model.train()
    k1, k2 = loss.plan([features]).positive, loss.plan([features]).positive
    assert (k1 - k2).abs().max().item() > 1e-4  # two dropout masks
    assert not loss.momentum_encoder.encoder.training  # back in eval mode after each key batch
    model.eval()  # evaluation: keys without dropout
    e1, e2 = loss.plan([features]).positive, loss.plan([features]).positive
    assert torch.equal(e1, e2)

    off, model = _contriever_loss(spread_model_path, key_encoder_dropout=False)
    model.train()
    assert torch.equal(off.plan([features]).positive, off.plan([features]).positive)


# ------------------------------------------------------------------------------------------------------------
# The shipped recipes say it


def test_paper_recipes_carry_the_reference_settings():
    paper = load_recipe(RECIPES_DIR / "esimcse-unsup-bert-base.yaml", check_data=False)
    assert (paper.method.static, paper.method.momentum_init, paper.method.repetition) == (True, "random", "subword")
    assert paper.target is not None and paper.target.avg == 78.27
    variant = load_recipe(RECIPES_DIR / "esimcse-unsup-bert-base-variant.yaml", check_data=False)
    assert (variant.method.static, variant.method.momentum_init) == (False, "copy") and variant.target is None
    assert "variant" in variant.description and "not the paper's configuration" in variant.description
    assert "esimcse-unsup-bert-base-variant.yaml" in paper.description

    con = load_recipe(RECIPES_DIR / "contriever-bert-base.yaml", check_data=False)
    m, t = con.method, con.training
    assert (m.crop_min, m.crop_max, m.deletion, m.key_encoder_dropout) == (0.05, 0.5, 0.1, True)
    assert (t.weight_decay, t.adam_beta1, t.adam_beta2, t.adam_epsilon) == (0.01, 0.9, 0.98, 1e-6)
    assert t.batch_size == 2048  # global, as published
    assert "37.7" in con.description and "STS-B dev" in con.description and "as published" not in con.description
