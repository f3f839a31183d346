"""Domain experts with enforced routing (``model.experts``, docs/experts.md; Hallee et al. 2024).

Claims: each expert starts as the pretrained feed-forward block and everything else is one shared parameter; a
text routed to domain A goes through A's expert only (B's weights do not change its embedding) and its backward
reaches A's expert and the shared weights, never B's; the multi-task trainer routes each batch to its source's
expert; the saved model loads with ``SentenceTransformer(path)`` and ``encode(task=A)`` equals the trained
model's A route; what experts cannot honour is refused at validation with file:line:key; resume and torchrun
equal the uninterrupted single-process run.
"""

from __future__ import annotations

import contextlib
import io
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from _mp_helpers import (
    bitwise_equal,
    check_ok,
    checkpoint_dirs,
    final_weights,
    results,
    run_embedkit,
    run_in_process,
    run_torchrun,
    weights_apart,
)
from test_multitask import _line, build_run, drawn_batches, write_multitask_recipe

from embedkit.card import update_card
from embedkit.errors import RecipeError
from embedkit.validate import load_recipe

EXPERTS = {"domains": ["sts", "qa"], "layers": [1], "eval_routes": {"sts": "sts", "rerank": "qa"}}
FFN = ("intermediate.dense", "output.dense")
TEXTS = ["a man plays a guitar", "what is the capital of france", "the cat sat on the mat"]


def experts_model(path: str, layers: Any = (1,)):
    """The tiny BERT with two experts (``sts``, ``qa``) in ``layers``, built as training builds it."""
    from embedkit.modeling import build_model
    from embedkit.recipe import ExpertsSection, ModelSection

    cfg = ModelSection(name=path, pooling="mean", dropout=0.0, max_seq_length=16,
                       experts=ExpertsSection(domains=["sts", "qa"], layers=list(layers)))
    model = build_model(cfg)
    model.train()
    return model


def routes(model) -> dict[str, Any]:
    from embedkit.experts import router_of

    return {name: seq[0] for name, seq in router_of(model).sub_modules.items()}


def layer(transformer, i: int):
    return transformer.auto_model.encoder.layer[i]


def embed(model, domain: str) -> torch.Tensor:
    from embedkit.experts import routed

    with routed(model, domain):
        return model(model.tokenize(TEXTS))["sentence_embedding"]


# ----------------------------------------------------------------------------------------------------------
# Arithmetic


def test_each_expert_starts_as_the_pretrained_ffn_and_the_rest_is_shared(tiny_model_path: str) -> None:
    from embedkit.modeling import build_model
    from embedkit.recipe import ModelSection

    plain = build_model(ModelSection(name=tiny_model_path, pooling="mean", dropout=0.0, max_seq_length=16))[0]
    model = experts_model(tiny_model_path)
    sts, qa = routes(model).values()
    for part in FFN:
        a, b, p = (layer(t, 1).get_submodule(part) for t in (sts, qa, plain))
        assert a.weight is not b.weight and a.bias is not b.bias  # two experts
        assert torch.equal(a.weight, p.weight) and torch.equal(b.weight, p.weight)  # both the pretrained block
        assert torch.equal(a.bias, p.bias) and torch.equal(b.bias, p.bias)
        # layer 0 was not chosen: one shared block
        assert layer(sts, 0).get_submodule(part).weight is layer(qa, 0).get_submodule(part).weight
    assert layer(sts, 1).attention.self.query.weight is layer(qa, 1).attention.self.query.weight
    assert layer(sts, 1).output.LayerNorm.weight is layer(qa, 1).output.LayerNorm.weight
    assert sts.auto_model.embeddings.word_embeddings.weight is qa.auto_model.embeddings.word_embeddings.weight
    expert = sum(p.numel() for part in FFN for p in layer(plain, 1).get_submodule(part).parameters())
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in plain.parameters()) + expert
    # before training both routes are the pretrained encoder
    assert torch.allclose(embed(model, "sts"), embed(model, "qa"))


def test_a_routed_text_uses_its_expert_only_and_no_gradient_reaches_the_other(spread_model_path: str) -> None:
    model = experts_model(spread_model_path)
    sts, qa = routes(model).values()
    before = embed(model, "sts").detach()
    torch.manual_seed(0)  # random changes: a constant added to a weight row meets LayerNorm's zero-mean output
    with torch.no_grad():
        layer(qa, 1).intermediate.dense.weight.add_(torch.randn_like(layer(qa, 1).intermediate.dense.weight))
    assert torch.equal(embed(model, "sts").detach(), before)
    with torch.no_grad():
        layer(sts, 1).intermediate.dense.weight.add_(torch.randn_like(layer(sts, 1).intermediate.dense.weight))
    assert not torch.allclose(embed(model, "sts").detach(), before)

    model.zero_grad(set_to_none=True)
    embed(model, "sts").pow(2).sum().backward()
    for part in FFN:
        own, other = layer(sts, 1).get_submodule(part), layer(qa, 1).get_submodule(part)
        assert own.weight.grad is not None and own.weight.grad.abs().sum() > 0
        assert other.weight.grad is None and other.bias.grad is None
    shared = [layer(sts, 0).intermediate.dense.weight, layer(sts, 1).attention.self.query.weight,
              sts.auto_model.embeddings.word_embeddings.weight]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in shared)

    # Under DDP an unused parameter gets a zero gradient, which AdamW's momentum would still turn into an update:
    # after a step routed to sts, the trainer drops the other experts' gradients.
    from embedkit.experts import drop_inactive_gradients, set_route

    other = layer(qa, 1).intermediate.dense.weight
    other.grad = torch.zeros_like(other)
    set_route(model, "sts")
    drop_inactive_gradients(model)
    assert other.grad is None and layer(sts, 1).intermediate.dense.weight.grad is not None


@pytest.mark.parametrize("sampler", ["balanced", "mixed"])
def test_the_trainer_routes_each_source_to_its_own_expert(sampler: str, tmp_path: Path,
                                                          spread_model_path: str) -> None:
    """A training step of the multi-task trainer: the gradient reaches exactly the experts of the sources in the
    batch (one source a batch: its expert only; mixed: each source's rows through its own expert)."""
    run = build_run(tmp_path, spread_model_path, sampler, model={"experts": EXPERTS})
    trainer, model = run.trainer, run.trainer.model
    experts = {name: layer(t, 1).intermediate.dense.weight for name, t in routes(model).items()}
    rows, batches = drawn_batches(trainer)
    seen = set()
    for sources, batch in zip(rows, batches, strict=True):
        names = {name for name, _ in sources}
        model.zero_grad(set_to_none=True)
        trainer.compute_loss(model, batch).backward()
        got = {name for name, w in experts.items() if w.grad is not None and w.grad.abs().sum() > 0}
        assert got == names, (names, got)
        seen |= names
        if len(seen) == 2 and sampler == "balanced":
            break
    assert seen == {"sts", "qa"}


# ----------------------------------------------------------------------------------------------------------
# Saved model, card


def test_saved_model_loads_with_sentence_transformers_and_routes_by_task(tmp_path: Path,
                                                                         spread_model_path: str) -> None:
    from sentence_transformers import SentenceTransformer

    from embedkit.experts import routed

    recipe = write_multitask_recipe(tmp_path / "r", spread_model_path, tmp_path / "out",
                                    training={"max_steps": 4}, model={"experts": EXPERTS, "dropout": 0.0})
    result = run_in_process(recipe)
    trained = result.model
    trained.eval()
    with torch.no_grad():
        mine = {d: embed(trained, d) for d in ("sts", "qa")}
    assert not torch.allclose(mine["sts"], mine["qa"])  # the experts trained apart
    loaded = SentenceTransformer(str(tmp_path / "out"), device="cpu")
    for domain in ("sts", "qa"):
        got = loaded.encode(TEXTS, task=domain, convert_to_tensor=True)
        assert torch.allclose(got, mine[domain], atol=1e-6), domain
    with pytest.raises(ValueError):  # no default route: encode must name the domain
        loaded.encode(TEXTS)
    with routed(trained, "qa"):  # the in-memory model routes the same way
        assert torch.allclose(trained.encode(TEXTS, convert_to_tensor=True), mine["qa"], atol=1e-6)
    # Without a task, embedkit's encode path uses the run's learned domain router: each row is one route's row.
    from embedkit.experts import choose_route

    assert "learned router" in choose_route(loaded, None, str(tmp_path / "out"))
    got = loaded.encode(TEXTS, convert_to_tensor=True)
    for i in range(len(TEXTS)):
        assert any(torch.allclose(got[i], mine[d][i], atol=1e-5) for d in ("sts", "qa")), i
    with pytest.raises(Exception, match="not a route of this model"):
        choose_route(loaded, "news", None)
    res = results(tmp_path / "out")
    assert res["experts"]["domains"] == ["sts", "qa"] and res["experts"]["layers"] == [1]
    assert res["experts"]["router"]["file"] == "domain_router.json"
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert "2-expert model" in card and 'task="sts"' in card
    # The card's usage code runs against the saved model (sentence-transformers alone would write
    # encode_query / encode_document for any Router, which these routes refuse).
    usage = card.split("### Direct Usage (Sentence Transformers)", 1)[1].split("```python\n", 1)[1].split("\n```")[0]
    assert "encode_query" not in usage and 'model.encode(sentences, task="sts")' in usage
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(usage.replace('"sentence_transformers_model_id"', repr(str(tmp_path / "out"))), {})
    assert printed.getvalue().split() == ["(3,", "32)", "torch.Size([3,", "3])"], printed.getvalue()
    again = update_card(card, results(tmp_path / "out"))
    assert again.count("model.encode(sentences, task=") == 1 and usage in again  # a second update keeps it


def test_gradcache_trains_each_expert(tmp_path: Path, spread_model_path: str) -> None:
    """GradCache (training.mini_batch_size) re-forwards inside the source's loss: still that source's expert."""
    from embedkit.modeling import build_model

    recipe = write_multitask_recipe(tmp_path / "r", spread_model_path, tmp_path / "out",
                                    training={"max_steps": 4, "mini_batch_size": 3},
                                    model={"experts": EXPERTS, "dropout": 0.0})
    trained = run_in_process(recipe).model
    start = build_model(load_recipe(recipe).model)
    for name in ("sts", "qa"):
        a, b = layer(routes(trained)[name], 1), layer(routes(start)[name], 1)
        assert not torch.equal(a.intermediate.dense.weight, b.intermediate.dense.weight), name


# ----------------------------------------------------------------------------------------------------------
# Validation


CASES = {
    "not-a-source": ({"domains": ["sts", "news"]}, ("model.experts.domains.1", "'news' is not a source"), "- news"),
    "source-without-expert": ({"domains": ["sts", "other"]}, ("data.train.1.name", "'qa' has no expert"),
                              "name: qa"),
    "layer-out-of-range": ({"layers": [5]}, ("model.experts.layers.0", "out of range"), "- 5"),
    "unknown-kind": ({"kind": "lora"}, ("model.experts.kind", "ffn"), "kind: lora"),
    "default-not-a-domain": ({"default": "x"}, ("model.experts.default", "one of the domains"), "default: x"),
    "eval-without-route": ({"eval_routes": {"sts": "sts"}}, ("data.dev.1", "eval_routes.rerank"), "kind: rerank"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_what_experts_cannot_honour_is_refused_with_file_line_key(case: str, tmp_path: Path,
                                                                   tiny_model_path: str) -> None:
    change, (key, why), anchor = CASES[case]
    recipe = write_multitask_recipe(tmp_path / "r", tiny_model_path, tmp_path / "out",
                                    model={"experts": {**EXPERTS, **change}})
    text = recipe.read_text(encoding="utf-8")
    if case == "eval-without-route":
        import yaml

        data = yaml.safe_load(text)
        data["data"]["dev"] = [{"kind": "stsb", "path": data["data"]["train"][0]["path"], "weight": 1.0},
                               {"kind": "rerank", "path": data["data"]["train"][0]["path"], "weight": 1.0}]
        text = yaml.safe_dump(data, sort_keys=False)
        recipe.write_text(text, encoding="utf-8")
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe, check_data=False)
    message = str(err.value)
    assert f"{recipe}:{_line(recipe, anchor)}: {key}" in message, message
    assert why in message, message


def test_experts_need_a_multitask_recipe(tmp_path: Path, tiny_model_path: str) -> None:
    import yaml

    recipe = write_multitask_recipe(tmp_path / "r", tiny_model_path, tmp_path / "out", model={"experts": EXPERTS})
    data = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    data["data"]["train"] = {"path": data["data"]["train"][0]["path"]}
    data["method"] = {"name": "cosent"}
    recipe.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe, check_data=False)
    where = f"{recipe}:{_line(recipe, 'experts:')}: model.experts"
    assert f"{where}: experts route each multi-task source" in str(err.value)


def test_shipped_recipe_validates(data_dir: Path) -> None:
    recipe = load_recipe(Path(__file__).resolve().parent.parent / "recipes" / "experts-sts-trecqa-minilm.yaml",
                         data_dir=str(data_dir), check_data=False)
    assert recipe.model.experts.domains == ["sts", "trecqa"]


# ----------------------------------------------------------------------------------------------------------
# Resume and torchrun


@pytest.mark.slow
def test_sigkill_then_resume_equals_the_uninterrupted_run(tmp_path: Path, spread_model_path: str) -> None:
    training = {"max_steps": 12, "save_steps": 8}
    model = {"experts": EXPERTS}
    full = write_multitask_recipe(tmp_path / "full", spread_model_path, tmp_path / "uninterrupted",
                                  training=training, model=model)
    cut = write_multitask_recipe(tmp_path / "cut", spread_model_path, tmp_path / "killed", training=training,
                                 model=model)
    check_ok(run_embedkit(["train", str(full)], tmp_path), "uninterrupted run")
    killed = run_embedkit(["train", str(cut)], tmp_path, sigkill_after_save=True)
    assert killed.returncode == -signal.SIGKILL
    assert [p.name for p in checkpoint_dirs(tmp_path / "killed")] == ["checkpoint-8"]
    check_ok(run_embedkit(["train", str(cut), "--resume"], tmp_path), "resumed run")
    a, b = (final_weights(tmp_path / d) for d in ("uninterrupted", "killed"))
    assert any("sts_0_Transformer" in k for k in a) and any("qa_0_Transformer" in k for k in a)
    assert bitwise_equal(a, b) == []


@pytest.mark.multiproc
@pytest.mark.parametrize("mini_batch_size", [None, 3])
def test_two_processes_equal_one_process(mini_batch_size: int | None, tmp_path: Path, spread_model_path: str) -> None:
    # AdamW eps 1e-6 (Contriever's) rather than 1e-8: see the float-noise note at the end.
    training = {"batch_size": 16, "max_steps": 4, "seed": 11, "mini_batch_size": mini_batch_size,
                "adam_epsilon": 1e-6}
    model = {"dropout": 0.0, "experts": EXPERTS}
    two = write_multitask_recipe(tmp_path / "r2", spread_model_path, tmp_path / "two", training=training,
                                 model=model, qa_rows=32)
    one = write_multitask_recipe(tmp_path / "r1", spread_model_path, tmp_path / "one", training=training,
                                 model=model, qa_rows=32)
    check_ok(run_torchrun(["train", str(two)], tmp_path, nproc=2), "torchrun --nproc_per_node 2")
    run_in_process(one)
    h1, h2 = ([h for h in results(d)["train"]["log_history"] if "loss" in h] for d in (tmp_path / "one",
                                                                                         tmp_path / "two"))
    assert len(h1) == len(h2) == 4
    for a, b in zip(h1, h2, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-5 * max(1.0, abs(a["loss"])), (a, b)
    w1, w2 = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    # Float noise: at seed 11 one element of layer 1's value weight (shared) gets a first-step gradient of 3e-8
    # against the tensor's median 3e-2, i.e. rounding, and its sign and size depend on the summation order (one
    # process vs an all-reduce). With eps 1e-8 Adam makes that a step of 0.75 lr, which leaves the element 9e-5
    # apart after 4 steps and the last loss 1e-5 apart; eps 1e-6 leaves every real gradient's step as it was and
    # the noise's at 3% of lr. weights_apart allows 2% of a weight's own update on top; a route or gradient gone
    # astray moves weights by the whole update.
    assert weights_apart(w1, w2, final_weights(Path(spread_model_path)), 1e-5) == []
