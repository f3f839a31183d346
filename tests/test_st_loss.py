"""``st-loss``: a sentence-transformers loss by name trains as sentence-transformers' own trainer trains it, and
its recipe is checked (kwargs against the signature, the guide model, composition) before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from embedkit.errors import RecipeError
from embedkit.validate import load_recipe

ROWS = [
    ("a man plays a guitar", "someone plays music", "the stock market fell", 0.9),
    ("a dog runs in the park", "an animal is outside", "rain hits the window", 0.7),
    ("the chef cooks pasta", "food is being made", "a car drives fast", 0.2),
    ("children play football", "kids kick a ball", "the tax office is closed", 0.6),
    ("a woman reads a book", "someone is reading", "the engine is broken", 0.4),
    ("birds fly over the sea", "animals in the sky", "a phone rings twice", 0.1),
]


# Column → index in a ROWS tuple.
PICK = {"anchor": 0, "sentence1": 0, "sentence": 0, "query": 0, "positive": 1, "sentence2": 1, "negative": 2,
        "negative_1": 2, "negative_2": 2, "score": 3}


def write_data(tmp_path: Path, columns: list[str]) -> Path:
    """A CSV of the ROWS' columns named ``columns`` (the loss's documented input order)."""
    import csv

    path = tmp_path / "train.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for row in ROWS:
            w.writerow([row[PICK[c]] for c in columns])
    return path


def recipe_dict(tmp_path: Path, model: str, data: Path, method: dict, **training) -> dict:
    return {
        "description": "st-loss test",
        "model": {"name": model, "pooling": "mean", "max_seq_length": 16, "dropout": 0.0},
        "data": {"train": {"path": str(data)}, "dev": None},
        "method": {"name": "st-loss", **method},
        "training": {"batch_size": len(ROWS), "max_steps": 2, "learning_rate": 1e-3, "logging_steps": 1,
                     "precision": "fp32", "save_steps": 100, **training},
        "output": {"dir": str(tmp_path / "out")},
    }


def write_recipe(tmp_path: Path, recipe: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def reference_run(recipe: dict, columns: list[str], make_loss, tmp_path: Path, labels=None):
    """The same model, rows and hyperparameters through sentence-transformers' own trainer and loss."""
    import datasets
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from transformers import set_seed

    from embedkit.modeling import build_model
    from embedkit.recipe import Recipe

    r = Recipe.model_validate(recipe)
    t = r.training
    set_seed(t.seed)
    model = build_model(r.model)
    data = {c: [row[PICK[c]] for row in ROWS] for c in columns}
    if labels is not None:  # a teacher's labels, computed as sentence-transformers' examples do
        data["label"] = labels(data)
    dataset = datasets.Dataset.from_dict(data)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "ref"), per_device_train_batch_size=t.batch_size, learning_rate=t.learning_rate,
        max_steps=t.max_steps, warmup_steps=0, weight_decay=t.weight_decay, adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2, adam_epsilon=t.adam_epsilon, lr_scheduler_type=t.lr_scheduler,
        max_grad_norm=t.max_grad_norm, seed=t.seed, data_seed=t.seed, logging_steps=1, report_to="none",
        save_strategy="no", dataloader_pin_memory=False,
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=make_loss(model))
    trainer.train()
    losses = {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}
    return model, losses


def _st():
    from sentence_transformers.sentence_transformer import losses

    return losses


CASES = {
    # loss, method block extras, the columns it reads, the reference loss (model, guide) -> loss
    "cosent-scored-pairs": ("CoSENTLoss", {"kwargs": {"scale": 10.0}}, ["sentence1", "sentence2", "score"],
                            lambda m, g: _st().CoSENTLoss(m, scale=10.0)),
    "triplet": ("TripletLoss", {"kwargs": {"distance_metric": "COSINE", "triplet_margin": 0.5}},
                ["anchor", "positive", "negative"],
                lambda m, g: _st().TripletLoss(m, distance_metric=_st().TripletDistanceMetric.COSINE,
                                               triplet_margin=0.5)),
    "mnrl-hard-negatives": ("MultipleNegativesRankingLoss", {"kwargs": {"scale": 15.0}},
                            ["anchor", "positive", "negative_1"],
                            lambda m, g: _st().MultipleNegativesRankingLoss(m, scale=15.0)),
    "gist-guide": ("GISTEmbedLoss", {"kwargs": {"temperature": 0.05}, "guide": "GUIDE"},
                   ["anchor", "positive", "negative_1"],
                   lambda m, g: _st().GISTEmbedLoss(m, g, temperature=0.05)),
    "mse-teacher": ("MSELoss", {"teacher": "GUIDE"}, ["sentence"], lambda m, g: _st().MSELoss(m)),
    "marginmse-teacher": ("MarginMSELoss", {"teacher": "GUIDE"}, ["query", "positive", "negative_1"],
                          lambda m, g: _st().MarginMSELoss(m)),
}


def _teacher_embeddings(teacher, columns: dict) -> list:
    return teacher.encode(columns["sentence"], convert_to_tensor=True).tolist()


def _teacher_margins(teacher, columns: dict) -> list:
    q, p, n = (teacher.encode(columns[c], convert_to_tensor=True) for c in ("query", "positive", "negative_1"))
    return ((q * p).sum(-1) - (q * n).sum(-1)).tolist()  # sentence-transformers' documented margin label


# The label column sentence-transformers' distillation examples precompute with the teacher (reference side).
TEACHER_LABELS = {"mse-teacher": _teacher_embeddings, "marginmse-teacher": _teacher_margins}


@pytest.mark.parametrize("case", list(CASES))
def test_trains_as_sentence_transformers_trainer(case, tmp_path, spread_model_path, tiny_model_path):
    """Two steps on the same batch through embedkit and through SentenceTransformerTrainer: the same loss at each
    step and the same final weights (within 1e-5)."""
    import torch
    from sentence_transformers import SentenceTransformer

    from embedkit.training.run import train

    loss, extra, columns, make = CASES[case]
    extra = {k: (tiny_model_path if v == "GUIDE" else v) for k, v in extra.items()}
    data = write_data(tmp_path, columns)
    recipe = recipe_dict(tmp_path, spread_model_path, data, {"loss": loss, **extra})
    result = train(str(write_recipe(tmp_path, recipe)))
    ours = {h["step"]: h["loss"] for h in result.results["train"]["log_history"] if "loss" in h}

    guide = labels = None
    if "guide" in extra or "teacher" in extra:
        guide = SentenceTransformer(tiny_model_path, device="cpu")
    if case in TEACHER_LABELS:
        labels = lambda data: TEACHER_LABELS[case](guide, data)  # noqa: E731
    ref_model, theirs = reference_run(recipe, columns, lambda m: make(m, guide), tmp_path, labels)
    assert sorted(ours) == sorted(theirs) == [1, 2]
    assert all(abs(v) > 1e-4 for v in theirs.values()), theirs  # the batch teaches something
    for step in theirs:
        assert ours[step] == pytest.approx(theirs[step], abs=1e-5), (step, ours, theirs)
    trained = SentenceTransformer(str(tmp_path / "out"), device="cpu").state_dict()
    ref = ref_model.state_dict()
    assert sorted(trained) == sorted(ref)
    start = SentenceTransformer(spread_model_path, device="cpu").state_dict()
    for key, value in ref.items():
        assert torch.allclose(trained[key], value, atol=1e-5), key
    assert max(float((ref[k] - start[k]).abs().max()) for k in start if k in ref) > 1e-4  # two steps moved it
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert loss in card
    for key, value in extra.get("kwargs", {}).items():  # the card lists the loss's config under it
        if isinstance(value, float):
            assert f'"{key}": {value}' in card, key
    saved = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    assert saved["method"]["name"] == "st-loss" and saved["recipe"]["method"]["loss"] == loss


# ---- validation: file:line:key before any model loads --------------------------------------------------------


def check(tmp_path: Path, method: str, extra: str = "", columns: tuple[str, ...] = ("anchor", "positive"),
          model: str | None = None, training: str = "{batch_size: 2, max_steps: 2}") -> str:
    """``embedkit check``'s error for a recipe whose method block is ``method`` (YAML lines)."""
    data = write_data(tmp_path, list(columns))
    text = f"""description: t
model: {{name: {model or "sentence-transformers/all-MiniLM-L6-v2"}, pooling: mean}}
data:
  train: {{path: {data}}}
  dev: null
method:
{method}
training: {training}
output: {{dir: {tmp_path / "out"}}}
{extra}"""
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RecipeError) as err:
        load_recipe(str(path))
    return str(err.value)


def test_unknown_kwarg_named_with_line_and_valid_ones(tmp_path):
    msg = check(tmp_path, "  name: st-loss\n  loss: MultipleNegativesRankingLoss\n  kwargs:\n    scale: 20\n"
                          "    temprature: 0.05\n")
    assert msg.startswith(f"{tmp_path / 'bad.yaml'}:11: method.kwargs.temprature: MultipleNegativesRankingLoss has "
                          "no parameter 'temprature'; expected one of: scale, similarity_fct, gather_across_devices")


def test_unknown_loss_and_refused_loss(tmp_path):
    msg = check(tmp_path, "  name: st-loss\n  loss: MultipleNegativesRankingLos\n")
    assert ":8: method.loss" in msg and "did you mean 'MultipleNegativesRankingLoss'" in msg
    msg = check(tmp_path, "  name: st-loss\n  loss: MatryoshkaLoss\n")
    assert ":8: method.loss" in msg and "training.matryoshka_dims" in msg


def test_enum_and_similarity_names_checked(tmp_path):
    msg = check(tmp_path, "  name: st-loss\n  loss: TripletLoss\n  kwargs: {distance_metric: COSINUS}\n",
                columns=("anchor", "positive", "negative"))
    assert ":9: method.kwargs.distance_metric: expected a member of TripletDistanceMetric: COSINE, EUCLIDEAN" in msg
    msg = check(tmp_path, "  name: st-loss\n  loss: CoSENTLoss\n  kwargs: {similarity_fct: cosine}\n",
                columns=("sentence1", "sentence2", "score"))
    assert ":9: method.kwargs.similarity_fct: expected the name of a similarity function" in msg


def test_guide_required_and_checked_like_model_name(tmp_path):
    msg = check(tmp_path, "  name: st-loss\n  loss: GISTEmbedLoss\n")
    assert ":6: method.guide: GISTEmbedLoss needs a guide model: set method.guide" in msg
    msg = check(tmp_path, "  name: st-loss\n  loss: GISTEmbedLoss\n  guide: /nonexistent/guide\n")
    assert ":9: method.guide: /nonexistent/guide does not exist" in msg
    msg = check(tmp_path, "  name: st-loss\n  loss: GISTEmbedLoss\n  kwargs: {guide: x}\n  guide: /nonexistent\n")
    assert ":9: method.kwargs.guide: a model is named in method.guide" in msg
    msg = check(tmp_path, "  name: st-loss\n  loss: CoSENTLoss\n  guide: /nonexistent\n",
                columns=("sentence1", "sentence2", "score"))
    assert ":9: method.guide: CoSENTLoss takes no guide model" in msg


def test_columns_from_the_loss_inputs(tmp_path):
    msg = check(tmp_path, "  name: st-loss\n  loss: CoSENTLoss\n")
    assert "method 'st-loss' needs 3 column(s) (sentence1, sentence2, score)" in msg
    msg = check(tmp_path, "  name: st-loss\n  loss: TripletLoss\n")
    assert "needs 3 column(s) (anchor, positive, negative)" in msg
    msg = check(tmp_path, "  name: st-loss\n  loss: GISTEmbedLoss\n  guide: /nonexistent\n",
                columns=("anchor", "positive", "negative_1", "negative_2"))
    assert "GISTEmbedLoss takes anchor, positive and at most 1 negative column(s)" in msg


def test_composition_refused_in_one_line_where_the_loss_cannot(tmp_path):
    msg = check(tmp_path, "  name: st-loss\n  loss: GISTEmbedLoss\n  guide: /x\n",
                extra="objective: {terms: [{name: uniformity, weight: 0.1}]}\n")
    assert msg.count("\n") == 0 and ":13: objective: GISTEmbedLoss is run as sentence-transformers builds it" in msg
    msg = check(tmp_path, "  name: st-loss\n  loss: CachedMultipleNegativesRankingLoss\n",
                training="{batch_size: 2, max_steps: 2, mini_batch_size: 1}")
    assert "training.mini_batch_size: CachedMultipleNegativesRankingLoss runs its own GradCache: set " \
           "method.kwargs.mini_batch_size instead" in msg
    msg = check(tmp_path, "  name: st-loss\n  loss: CoSENTLoss\n",
                extra="objective: {terms: [{name: alignment, weight: 0.1}]}\n",
                columns=("sentence1", "sentence2", "score"))
    assert "term 'alignment' needs an (anchor, positive) pair per row; method 'st-loss' gives none" in msg


def test_composable_loss_accepts_gradcache_matryoshka_terms(tmp_path, tiny_model_path):
    data = write_data(tmp_path, ["anchor", "positive"])
    recipe = recipe_dict(tmp_path, tiny_model_path, data, {"loss": "MultipleNegativesRankingLoss"},
                         mini_batch_size=2, matryoshka_dims=[32, 16])
    recipe["objective"] = {"terms": [{"name": "uniformity", "weight": 0.1}, {"name": "alignment", "weight": 0.1}]}
    loaded = load_recipe(recipe)
    assert loaded.method.loss == "MultipleNegativesRankingLoss"


def test_gradcache_and_matryoshka_equal_plain_and_wrapped_st(tiny_model_path):
    """The composed path: GradCache gives the plain loss and gradients; Matryoshka equals sentence-transformers'
    MatryoshkaLoss around the same loss."""
    import torch
    from sentence_transformers.sentence_transformer import losses
    from tiny_model import training_model

    from embedkit.methods.st_loss.loss import STComposedLoss

    model = training_model(tiny_model_path, "mean")
    texts = [[r[0] for r in ROWS], [r[1] for r in ROWS], [r[2] for r in ROWS]]
    features = [model.preprocess(t) for t in texts]

    def run(loss):
        model.zero_grad()
        value = loss([dict(f) for f in features], torch.zeros(len(ROWS)))
        total = sum(value.values()) if isinstance(value, dict) else value
        total.backward()
        return float(total), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    st = losses.MultipleNegativesRankingLoss(model, scale=20.0)
    plain = STComposedLoss(model, losses.MultipleNegativesRankingLoss(model, scale=20.0), pairs=True)
    v0, g0 = run(st)
    v1, g1 = run(plain)
    v2, g2 = run(STComposedLoss(model, losses.MultipleNegativesRankingLoss(model), True).configure(mini_batch_size=2))
    assert v1 == pytest.approx(v0, abs=1e-6) and v2 == pytest.approx(v0, abs=1e-5)
    for a, b, c in zip(g0, g1, g2, strict=True):
        assert torch.allclose(a, b, atol=1e-6) and torch.allclose(a, c, atol=1e-5)
    vm, gm = run(losses.MatryoshkaLoss(model, losses.MultipleNegativesRankingLoss(model), [32, 16]))
    vc, gc = run(STComposedLoss(model, losses.MultipleNegativesRankingLoss(model), True).configure(
        matryoshka_dims=[32, 16]))
    assert vc == pytest.approx(vm, abs=1e-5)
    for a, b in zip(gm, gc, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_distillation_needs_a_teacher_and_its_columns(tmp_path):
    msg = check(tmp_path, "  name: st-loss\n  loss: MarginMSELoss\n", columns=("query", "positive", "negative"))
    assert ":6: method.teacher: MarginMSELoss needs a teacher model (it computes the labels when training starts)" \
        in msg
    msg = check(tmp_path, "  name: st-loss\n  loss: MarginMSELoss\n  teacher: /nonexistent/teacher\n",
                columns=("query", "positive"))
    assert "MarginMSELoss takes query, positive and at least 1 negative column(s)" in msg
    msg = check(tmp_path, "  name: st-loss\n  loss: MSELoss\n  teacher: /nonexistent/teacher\n", columns=("sentence",))
    assert ":9: method.teacher: /nonexistent/teacher does not exist" in msg
    msg = check(tmp_path, "  name: st-loss\n  loss: TripletLoss\n  teacher: /x\n",
                columns=("anchor", "positive", "negative"))
    assert ":9: method.teacher: TripletLoss takes no teacher model; remove the key" in msg
    msg = check(tmp_path, "  name: st-loss\n  loss: MSELoss\n  teacher: /x\n", columns=("sentence",),
                training="{batch_size: 2, max_steps: 2, matryoshka_dims: [16]}")
    assert "training.matryoshka_dims: MSELoss is run as sentence-transformers builds it" in msg


def test_literal_values_checked(tmp_path):
    msg = check(tmp_path, "  name: st-loss\n  loss: GISTEmbedLoss\n  guide: /x\n  kwargs: {margin_strategy: absolut}\n")
    assert ":10: method.kwargs.margin_strategy: expected one of: 'absolute', 'relative' (got 'absolut')" in msg


def test_a_multitask_source_reads_its_loss_columns(tmp_path):
    """A multi-task source with st-loss is validated by its loss's columns; a teacher loss (which adds a label
    column to its rows) is refused there."""
    pairs = write_data(tmp_path, ["anchor", "positive"])
    scored = tmp_path / "scored.csv"
    scored.write_text("sentence1,sentence2,score\n" + "".join(f"a{i},b{i},{i % 3}\n" for i in range(6)),
                      encoding="utf-8")

    def recipe(second: dict) -> dict:
        return {"description": "t", "model": {"name": "sentence-transformers/all-MiniLM-L6-v2"},
                "data": {"train": [
                    {"name": "pairs", "path": str(pairs), "method": {"name": "st-loss",
                                                                     "loss": "MultipleNegativesRankingLoss"}},
                    {"name": "scored", "path": str(scored), "method": second}], "dev": None},
                "method": {"name": "multitask", "sampler": "balanced"},
                "training": {"batch_size": 2, "max_steps": 2}, "output": {"dir": str(tmp_path / "out")}}

    loaded = load_recipe(recipe({"name": "st-loss", "loss": "CoSENTLoss"}))
    assert [src.method.loss for src in loaded.data.train] == ["MultipleNegativesRankingLoss", "CoSENTLoss"]
    with pytest.raises(RecipeError, match=r"data\.train\.1\.path: .*needs 2 column\(s\) \(sentence, label\)"):
        load_recipe(recipe({"name": "st-loss", "loss": "BatchAllTripletLoss"}))
    with pytest.raises(RecipeError, match=r"data\.train\.1\.method\.name: .*transforms its rows"):
        load_recipe(recipe({"name": "st-loss", "loss": "MSELoss", "teacher": "/x"}))
