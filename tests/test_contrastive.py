"""Method ``contrastive``: the loss against sentence-transformers' MultipleNegativesRankingLoss and a direct
computation (value and gradient, 0/1/2 negatives, hard_negative_weight, symmetric), any number of negative
columns through validation, the no-duplicates sampler, and prompts from the recipe to the saved model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from _mp_helpers import write_query_passages, write_recipe

from embedkit.errors import RecipeError
from embedkit.methods.contrastive.loss import ContrastiveLoss

TAU = 0.05


def views(k: int, n: int = 6, dim: int = 8, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, dim, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(2 + k)]


def value_and_grads(fn, vs: list[torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
    out = fn(vs)
    grads = torch.autograd.grad(out, vs)
    return float(out.detach()), list(grads)


def direct(vs: list[torch.Tensor], w: float = 0.0, symmetric: bool = False) -> torch.Tensor:
    """The docstring's formula, term by term: anchor i against every positive and negative, log α on its own."""
    a, p, *negs = (F.normalize(v, dim=-1) for v in vs)
    n = a.shape[0]
    total = a.new_zeros(())
    for i in range(n):
        logits = [a[i] @ p[j] / TAU for j in range(n)]
        logits += [a[i] @ neg[j] / TAU + (w if i == j else 0.0) for neg in negs for j in range(n)]
        forward = -(logits[i] - torch.logsumexp(torch.stack(logits), 0))
        if symmetric:
            back = [a[j] @ p[i] / TAU for j in range(n)]
            forward = (forward - (back[i] - torch.logsumexp(torch.stack(back), 0))) / 2
        total = total + forward
    return total / n


@pytest.mark.parametrize("k", [0, 1, 2])
def test_loss_equals_sentence_transformers_mnrl(k):
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    vs = views(k)
    ours = value_and_grads(lambda v: ContrastiveLoss(torch.nn.Identity(), TAU).score(v), vs)
    st = MultipleNegativesRankingLoss(torch.nn.Identity(), scale=1 / TAU)
    theirs = value_and_grads(lambda v: st.compute_loss_from_embeddings(v, None), vs)
    assert ours[0] == pytest.approx(theirs[0], rel=1e-12)
    for g1, g2 in zip(ours[1], theirs[1], strict=True):
        torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)
    assert ours[0] == pytest.approx(float(direct(vs).detach()), rel=1e-12)


@pytest.mark.parametrize("k", [0, 1, 2])
@pytest.mark.parametrize("w,symmetric", [(0.7, False), (0.0, True), (-0.4, True)])
def test_loss_equals_direct_computation(k, w, symmetric):
    vs = views(k, seed=k)
    ours = value_and_grads(lambda v: ContrastiveLoss(torch.nn.Identity(), TAU, w, symmetric).score(v), vs)
    ref = value_and_grads(lambda v: direct(v, w, symmetric), vs)
    assert ours[0] == pytest.approx(ref[0], rel=1e-12)
    for g1, g2 in zip(ours[1], ref[1], strict=True):
        torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)
    if k and w:  # the offset changes the loss: it is applied, not ignored
        assert abs(ours[0] - float(direct(vs).detach())) > 1e-3


def test_symmetric_equals_sentence_transformers_per_direction():
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    vs = [v.detach() for v in views(1)]
    st = MultipleNegativesRankingLoss(torch.nn.Identity(), scale=1 / TAU, directions=("query_to_doc", "doc_to_query"),
                                      partition_mode="per_direction")
    ours = float(ContrastiveLoss(torch.nn.Identity(), TAU, symmetric=True).score(vs))
    assert ours == pytest.approx(float(st.compute_loss_from_embeddings(vs, None)), rel=1e-12)


# ---------------------------------------------------------------------------------------------------------
# Validation: any number of negative columns; prompts; options that cannot go together


def recipe(tmp: Path, model: str, data: Path, method: dict | None = None, model_keys: dict | None = None,
           training: dict | None = None) -> Path:
    raw = {
        "model": {"name": model, "max_seq_length": 16, **(model_keys or {})},
        "data": {"train": {"path": str(data)}, "dev": None},
        "method": {"name": "contrastive", **(method or {})},
        "training": {"batch_size": 4, "max_steps": 2, "logging_steps": 1, "learning_rate": 1e-3, **(training or {})},
        "eval": {"before": False, "suite": "none"},
        "output": {"dir": str(tmp / "out")},
    }
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


@pytest.mark.parametrize("k", [0, 1, 3])
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_any_number_of_negative_columns(k, fmt, tmp_path, tiny_model_path):
    from embedkit.methods import get_method
    from embedkit.training.run import build_dataset
    from embedkit.validate import load_recipe_with_data

    cols = ["q", "p"] + [f"n{i}" for i in range(k)]
    rows = [[f"{c} text {r}" for c in cols] for r in range(5)]
    data = tmp_path / f"rows.{fmt}"
    if fmt == "csv":
        data.write_text("\n".join(",".join(r) for r in [cols, *rows]) + "\n", encoding="utf-8")
    else:
        data.write_text("".join(json.dumps(dict(zip(cols, r))) + "\n" for r in rows), encoding="utf-8")
    rec, train_data = load_recipe_with_data(recipe(tmp_path, tiny_model_path, data))
    dataset, _ = build_dataset(rec, train_data, get_method("contrastive"))
    assert dataset.column_names == ["anchor", "positive"] + [f"negative_{i}" for i in range(1, k + 1)]
    assert dataset[4]["positive"] == "p text 4" and (k == 0 or dataset[4][f"negative_{k}"] == f"n{k - 1} text 4")


def test_one_column_is_refused_naming_file_and_expected(tmp_path, tiny_model_path):
    from embedkit.validate import load_recipe

    data = tmp_path / "one.csv"
    data.write_text("q\nhello\n", encoding="utf-8")
    path = recipe(tmp_path, tiny_model_path, data)
    with pytest.raises(RecipeError, match=rf"{path}:\d+: data.train.path: method 'contrastive' needs at least 2 "
                                          r"columns \(anchor, positive, then any number of negative columns"):
        load_recipe(path)


def test_a_label_column_is_not_read_as_a_negative(tmp_path, tiny_model_path):
    from embedkit.validate import load_recipe

    data = tmp_path / "labelled.csv"
    data.write_text("question,answer,label\nwho,me,1\n", encoding="utf-8")
    with pytest.raises(RecipeError, match=r"column 'label' would be read as a negative text.*data.train.columns"):
        load_recipe(recipe(tmp_path, tiny_model_path, data))


def test_an_empty_negative_is_refused_with_its_line(tmp_path, tiny_model_path):
    from embedkit.validate import load_recipe

    data = tmp_path / "rows.jsonl"
    data.write_text('{"q": "a", "p": "b", "n": "c"}\n{"q": "a", "p": "b", "n": " "}\n', encoding="utf-8")
    with pytest.raises(RecipeError, match=r"rows.jsonl:2: key 'n' must be a non-empty string"):
        load_recipe(recipe(tmp_path, tiny_model_path, data))


PROMPTS = {"query": "query: ", "document": "passage: "}


@pytest.mark.parametrize("keys,match", [
    ({"prompts": PROMPTS, "prompt_columns": {"anchor": "question"}},
     r"model.prompt_columns.anchor: unknown prompt name 'question'; model.prompts has document, query"),
    ({"prompts": PROMPTS, "prompt_columns": {"title": "query"}},
     r"model.prompt_columns.title: method 'contrastive' has no column 'title'; expected one of: anchor, positive, "
     r"negative"),
    ({"prompt_columns": {"anchor": "query"}},
     r"model.prompt_columns.anchor: unknown prompt name 'query'; model.prompts is not set"),
    ({"prompts": {"q": "query: "}}, r"model.prompts: method 'contrastive' has no default mapping .* needs prompts "
                                    r"named document, query"),
])
def test_bad_prompt_mapping_is_refused(keys, match, tmp_path, tiny_model_path):
    from embedkit.validate import load_recipe

    path = recipe(tmp_path, tiny_model_path, write_query_passages(tmp_path), model_keys=keys)
    with pytest.raises(RecipeError, match=rf"{path}:\d+: {match}"):
        load_recipe(path)


def test_prompts_for_a_method_without_a_default_need_a_mapping(tmp_path, tiny_model_path):
    from embedkit.methods import get_method
    from embedkit.validate import load_recipe

    path = write_recipe(tmp_path, tiny_model_path, "simcse-unsup", tmp_path / "out", model={"prompts": PROMPTS})
    with pytest.raises(RecipeError, match=r"model.prompts: method 'simcse-unsup' has no default mapping"):
        load_recipe(path)
    ok = write_recipe(tmp_path, tiny_model_path, "simcse-unsup", tmp_path / "out",
                      model={"prompts": PROMPTS, "prompt_columns": {"text": "query"}}, name="ok.yaml")
    rec = load_recipe(ok)
    assert get_method("simcse-unsup").training_prompts(rec, ["text"]) == {"text": "query: "}


def test_default_prompt_columns_cover_every_negative(tmp_path, tiny_model_path):
    from embedkit.methods import get_method
    from embedkit.validate import load_recipe

    rec = load_recipe(recipe(tmp_path, tiny_model_path, write_query_passages(tmp_path),
                                model_keys={"prompts": PROMPTS}))
    got = get_method("contrastive").training_prompts(rec, ["anchor", "positive", "negative_1", "negative_2"])
    assert got == {"anchor": "query: ", "positive": "passage: ", "negative_1": "passage: ", "negative_2": "passage: "}


def test_no_duplicates_with_group_by_length_is_refused(tmp_path, tiny_model_path):
    from embedkit.validate import load_recipe

    path = recipe(tmp_path, tiny_model_path, write_query_passages(tmp_path), {"no_duplicates": True},
                  training={"group_by_length": True})
    with pytest.raises(RecipeError, match=r"training.group_by_length: method.no_duplicates needs its own batch"):
        load_recipe(path)


# ---------------------------------------------------------------------------------------------------------
# The no-duplicates sampler


def sampler_dataset(tmp_path):
    import csv

    import datasets

    with open(write_query_passages(tmp_path), encoding="utf-8") as fh:
        rows = list(csv.reader(fh))[1:]
    cols = ["anchor", "positive", "negative_1", "negative_2"]
    return datasets.Dataset.from_dict({c: [r[i] for r in rows] for i, c in enumerate(cols)})


@pytest.mark.parametrize("drop_last", [False, True])
def test_no_duplicates_sampler_keeps_false_negatives_out(drop_last, tmp_path):
    from embedkit.data.samplers import NoDuplicateTextsBatchSampler

    ds = sampler_dataset(tmp_path)
    rows = ds[:]
    keys = [{rows["anchor"][i], rows["positive"][i]} for i in range(len(ds))]
    texts = [keys[i] | {rows["negative_1"][i], rows["negative_2"][i]} for i in range(len(ds))]
    # The data has what the sampler must separate: repeated anchors, a negative that is another row's positive.
    assert len(set(rows["anchor"])) < len(ds) and set(rows["negative_1"]) & set(rows["positive"])

    def epoch(e: int, seed: int = 3) -> list[list[int]]:
        s = NoDuplicateTextsBatchSampler(ds, batch_size=8, drop_last=drop_last, generator=torch.Generator(), seed=seed)
        s.set_epoch(e)
        return list(s)

    batches = epoch(0)
    assert len(batches) == 6  # exactly len(): what the trainer's steps and --resume position count on
    for batch in batches:
        for i in batch:
            others = set().union(*(texts[j] for j in batch if j != i))
            assert not keys[i] & others, (i, batch)
    assert epoch(0) == batches and epoch(1) != batches and epoch(0, seed=4) != batches
    seen = [i for b in batches for i in b]
    assert len(seen) == len(set(seen)) and len(seen) >= 40


def test_no_duplicates_sampler_lets_rows_share_a_negative():
    import datasets

    from embedkit.data.samplers import NoDuplicateTextsBatchSampler

    ds = datasets.Dataset.from_dict({"anchor": ["a", "b", "c", "d"], "positive": ["p", "q", "r", "s"],
                                     "negative_1": ["x", "x", "x", "p"]})
    for seed in range(8):
        batches = list(NoDuplicateTextsBatchSampler(ds, batch_size=3, drop_last=False, seed=seed))
        assert sorted(i for b in batches for i in b) == [0, 1, 2, 3]
        # row 3's negative is row 0's positive: never with row 0; rows sharing the negative x may meet
        assert not any({0, 3} <= set(b) for b in batches)
        assert any(len(set(b) & {0, 1, 2}) >= 2 for b in batches)


# ---------------------------------------------------------------------------------------------------------
# Prompts: recipe → training → saved model → encode


def test_prompts_round_trip(tmp_path, spread_model_path, monkeypatch):
    from sentence_transformers import SentenceTransformer

    from embedkit.encoding import encode
    from embedkit.training.run import train

    seen: list[list[str]] = []
    plan = ContrastiveLoss.plan

    def spy(self, features, labels):
        tok = self.model.tokenizer
        seen.append([tok.decode(f["input_ids"][0], skip_special_tokens=True) for f in features])
        return plan(self, features, labels)

    monkeypatch.setattr(ContrastiveLoss, "plan", spy)
    path = recipe(tmp_path, spread_model_path, write_query_passages(tmp_path), {"no_duplicates": True},
                  {"prompts": PROMPTS, "pooling": "mean"})
    train(str(path))
    assert len(seen) == 2, "two training steps"
    for anchor, positive, neg1, neg2 in seen:  # the loss saw every column with its prompt
        assert anchor.startswith("query :") and "where does" in anchor
        assert all(t.startswith("passage :") for t in (positive, neg1, neg2))

    out = tmp_path / "out"
    saved = json.loads((out / "config_sentence_transformers.json").read_text(encoding="utf-8"))
    assert saved["prompts"]["query"] == "query: " and saved["prompts"]["document"] == "passage: "
    model = SentenceTransformer(str(out), device="cpu")
    texts = ["where is the alpha", "the beta meets gamma at place 3"]
    st = model.encode(texts, prompt_name="query", convert_to_numpy=True)
    ours = encode(model, texts, prompt_name="query")
    by_hand = encode(model, ["query: " + t for t in texts])
    plain = encode(model, texts)
    assert abs(st - by_hand).max() < 1e-5 and abs(ours - by_hand).max() < 1e-5
    assert abs(plain - by_hand).max() > 1e-3, "the prompt must change the embedding"


def test_encode_applies_prompts_as_sentence_transformers_does(tiny_model_path):
    """With ``Pooling(include_prompt=False)`` the prompt is read but not pooled: embedkit's kernel must pass
    ``prompt_length`` through like ``SentenceTransformer.encode``; an unknown name is one clear error."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Pooling, Transformer

    from embedkit.encoding import encode
    from embedkit.errors import EmbedkitError
    from embedkit.losses.common import encode_columns

    first = Transformer(tiny_model_path, max_seq_length=32)
    pool = Pooling(first.get_embedding_dimension(), "mean", include_prompt=False)
    model = SentenceTransformer(modules=[first, pool], device="cpu", prompts=PROMPTS, default_prompt_name="document")
    texts = ["a short one", "a much longer sentence with many more words in it", "mid length text here"]
    for name in ("query", "document"):
        ours = encode(model, texts, prompt_name=name)
        theirs = model.encode(texts, prompt_name=name, convert_to_numpy=True)
        assert abs(ours - theirs).max() < 1e-5, name
    with_default = encode(model, texts)  # the default prompt, as encode applies it
    assert abs(with_default - model.encode(texts, convert_to_numpy=True)).max() < 1e-5
    assert abs(encode(model, texts, prompt="") - encode(model, texts, prompt_name="query")).max() > 1e-4
    assert abs(encode(model, ["query: " + t for t in texts], prompt="") - encode(model, texts, prompt_name="query")
               ).max() > 1e-4, "include_prompt=False: the prompt tokens are not pooled"
    with pytest.raises(EmbedkitError, match="prompt_name 'title': the model has no such prompt"):
        encode(model, texts, prompt_name="title")

    # Training's one-pass encoder: columns with prompts of different lengths give the per-column embeddings.
    model.eval()
    cols = [model.preprocess(texts, prompt="query: "), model.preprocess(texts, prompt="passage: ")]
    with torch.no_grad():
        joint = encode_columns(model, cols)
        alone = [model(dict(c))["sentence_embedding"] for c in cols]
    for a, b in zip(joint, alone, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(joint[0], torch.tensor(model.encode(texts, prompt_name="query")), atol=1e-5, rtol=1e-5)


def test_build_model_keeps_a_models_own_prompts(tmp_path, tiny_model_path):
    """A model that carries prompts keeps them when the recipe rebuilds its pooling; the recipe's prompts win."""
    from sentence_transformers import SentenceTransformer

    from embedkit.modeling import build_model
    from embedkit.recipe import ModelSection

    src = SentenceTransformer(tiny_model_path, device="cpu", prompts={"query": "q: ", "title": "t: "},
                              default_prompt_name="title")
    src.save_pretrained(str(tmp_path / "st"))
    model = build_model(ModelSection(name=str(tmp_path / "st"), pooling="mean", prompts={"query": "query: "}))
    assert model.prompts["query"] == "query: " and model.prompts["title"] == "t: "
    assert model.default_prompt_name == "title"


def test_simcse_sup_contrastive_ccp_and_debcse_share_one_infonce_loss():
    """One loss class with options, not four: each method's loss is an option set of InfoNCELoss (its score)."""
    from embedkit.losses.contrastive import InfoNCELoss, SupervisedSimCSELoss
    from embedkit.methods.ccp.loss import ContextPositivesLoss
    from embedkit.methods.debcse.loss import DebCSELoss

    for cls in (SupervisedSimCSELoss, ContrastiveLoss, ContextPositivesLoss, DebCSELoss):
        assert issubclass(cls, InfoNCELoss) and cls.score is InfoNCELoss.score, cls.__name__
    vs = views(2)
    ours = InfoNCELoss(torch.nn.Identity(), TAU, 0.3, symmetric=True).score(vs)
    assert torch.equal(ours, ContrastiveLoss(torch.nn.Identity(), TAU, 0.3, symmetric=True).score(vs))
    assert float(ours) == pytest.approx(float(direct(vs, 0.3, symmetric=True)), rel=1e-10)

