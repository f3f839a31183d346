"""End to end: a recipe trains through SentenceTransformerTrainer and leaves a complete, loadable output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from embedkit.training.run import train


def tiny_recipe(tmp_path: Path, model: str, data: Path, method: str = "simcse-unsup", extra: str = "") -> Path:
    text = f"""\
description: tiny
model: {{name: {model}, pooling: cls, mlp_only_train: true, max_seq_length: 16}}
data:
  train: {{path: {data}}}
  dev: null
method: {{name: {method}}}
training: {{batch_size: 8, max_steps: 6, eval_steps: 3, learning_rate: 1e-3, logging_steps: 1}}
output: {{dir: {tmp_path / "out"}}}
{extra}"""
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_train_unsup_writes_complete_loadable_output(tmp_path, tiny_model_path, sentences_file):
    from sentence_transformers import SentenceTransformer

    results = train(str(tiny_recipe(tmp_path, tiny_model_path, sentences_file)))
    out = tmp_path / "out"
    assert results["train"]["global_step"] == 6
    saved = json.loads((out / "results.json").read_text())
    assert saved["method"]["name"] == "simcse-unsup" and "gao2021simcse" in saved["method"]["citation"]
    resolved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert resolved["training"]["warmup_ratio"] == 0.0 and resolved["method"]["temperature"] == 0.05
    assert (out / "model.safetensors").exists() and not list(out.glob("*.bin"))
    assert any((out / "logs").iterdir())  # TensorBoard events
    # The training-only MLP head is not part of the saved model: CLS pooling only, no Dense module.
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling"]
    # Loading gives the embeddings the model had at the end of training.
    loaded = SentenceTransformer(str(out), device="cpu")
    sentences = ["the alpha of beta", "a completely different line"]
    trained = SentenceTransformer(str(out / "checkpoints" / "checkpoint-6"), device="cpu")
    np.testing.assert_allclose(loaded.encode(sentences), trained.encode(sentences), atol=1e-6)


def test_train_sup_on_csv_triples_keeps_mlp(tmp_path, tiny_model_path):
    rows = ["sent0,sent1,hard_neg"] + [f"anchor {i},positive {i},negative {i}" for i in range(40)]
    data = tmp_path / "nli.csv"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    recipe = tiny_recipe(tmp_path, tiny_model_path, data, method="simcse-sup")
    recipe.write_text(recipe.read_text().replace("mlp_only_train: true", "mlp_only_train: false"))
    results = train(str(recipe))
    losses = [e["loss"] for e in results["train"]["log_history"] if "loss" in e]
    assert len(losses) == 6 and all(np.isfinite(losses))
    modules = json.loads((tmp_path / "out" / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Dense"]


def test_existing_output_needs_resume_or_overwrite(tmp_path, tiny_model_path, sentences_file):
    from embedkit.errors import RecipeError

    recipe = tiny_recipe(tmp_path, tiny_model_path, sentences_file)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "something").write_text("x")
    with pytest.raises(RecipeError, match="already holds files; use --resume"):
        train(str(recipe))
    with pytest.raises(RecipeError, match="no checkpoints to resume from"):
        train(str(recipe), resume=True)


def test_resume_continues_from_last_checkpoint(tmp_path, tiny_model_path, sentences_file):
    import shutil

    recipe = tiny_recipe(tmp_path, tiny_model_path, sentences_file)
    train(str(recipe), ["output.keep_checkpoints=all"])  # whole, as a run that has not finished keeps them
    ckpts = sorted(p.name for p in (tmp_path / "out" / "checkpoints").glob("checkpoint-*"))
    assert ckpts == ["checkpoint-3", "checkpoint-6"]
    # As a kill after the step-3 save leaves it: no later checkpoint, no results.json.
    shutil.rmtree(tmp_path / "out" / "checkpoints" / "checkpoint-6")
    (tmp_path / "out" / "results.json").unlink()
    results = train(str(recipe), resume=True)
    assert results["train"]["global_step"] == 6
    steps = [e["step"] for e in results["train"]["log_history"] if "loss" in e]
    assert steps[-1] == 6 and 4 in steps


def test_sick_triples_builder(data_dir):
    from embedkit.data.sources import read_local

    data = read_local(str(data_dir / "sts/sick/SICK_train.txt"), "auto", None)
    assert list(data.columns) == ["anchor", "positive", "negative"]
    assert len(data) > 100
    for a, p, n in zip(*data.columns.values()):
        assert a and p and n and p != n


@pytest.mark.slow
def test_real_model_trains_a_few_steps(tmp_path, minilm_path, data_dir):
    """The packaged pretrained MiniLM through the whole pipeline, STS-B dev included."""
    from sentence_transformers import SentenceTransformer

    recipe = tiny_recipe(tmp_path, minilm_path, data_dir / "corpora/brown.txt")
    text = recipe.read_text().replace("  dev: null\n", "").replace("pooling: cls, mlp_only_train: true, ", "")
    text = text.replace("learning_rate: 1e-3", "learning_rate: 1e-5")
    recipe.write_text(text + "eval: {before: true}\n")
    results = train(str(recipe), ["data.train.max_samples=200"], data_dir=str(data_dir))
    assert 80 < results["dev"]["before"]["spearman"] < 90  # the packaged model scores ~86.6 on STS-B dev
    assert abs(results["dev"]["after"]["spearman"] - results["dev"]["before"]["spearman"]) < 5
    model = SentenceTransformer(str(tmp_path / "out"), device="cpu")
    assert model.encode(["a sentence"]).shape == (1, 384)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_cosent_trains_from_scored_pairs_file(tmp_path, tiny_model_path, fmt):
    """Scored pairs, the format the README gives CoSENT: a CSV score (text) and a JSONL score (a JSON number)
    are read as floats, so the trainer gets a float label column (a string column crashed in `datasets`)."""
    pairs = [(f"the pair number {i} first", f"the pair number {i} second", (i % 6) / 5) for i in range(24)]
    data = tmp_path / f"pairs.{fmt}"
    if fmt == "csv":
        data.write_text("sentence1,sentence2,score\n" + "".join(f"{a},{b},{s}\n" for a, b, s in pairs))
    else:
        data.write_text("".join(json.dumps({"sentence1": a, "sentence2": b, "score": s}) + "\n" for a, b, s in pairs))
    recipe = tiny_recipe(tmp_path, tiny_model_path, data, method="cosent")
    results = train(str(recipe), ["training.max_steps=2", "training.eval_steps=2"])
    assert results["train"]["global_step"] == 2
    losses = [e["loss"] for e in results["train"]["log_history"] if "loss" in e]
    assert len(losses) == 2 and all(np.isfinite(losses))
