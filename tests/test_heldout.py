"""data.dev.split_from_train: a seeded selection slice held out of the training file, disjoint from what trains,
recorded in results.json; refused where it cannot be honoured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedkit.data.heldout import heldout_indices, remove_heldout, split_heldout
from embedkit.errors import RecipeError
from embedkit.training.mine import corpus_texts
from embedkit.validate import load_recipe_with_data


def rerank_file(path: Path, questions: int = 20) -> Path:
    rows = ["qtext,label,atext"]
    for q in range(questions):
        rows += [f"question {q}?,1,answer {q} right", f"question {q}?,0,answer {q} wrong",
                 f"question {q}?,0,answer {q} other"]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def recipe_file(tmp_path: Path, train: Path, dev: str, model: str = "x", extra: str = "") -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(f"""\
model: {{name: {model}, pooling: mean, max_seq_length: 16}}
data:
  train: {{path: {train}, format: rerank}}
  dev: {dev}
method: {{name: contrastive}}
training: {{batch_size: 4, max_steps: 2, eval_steps: 2, logging_steps: 1}}
eval: {{before: false, suite: none}}
output: {{dir: {tmp_path / "out"}}}
{extra}""", encoding="utf-8")
    return path


def test_indices_are_seeded_sorted_and_never_all_or_none():
    a = heldout_indices(100, 0.15, 0)
    assert a == heldout_indices(100, 0.15, 0) and a == sorted(a) and len(a) == 15
    assert a != heldout_indices(100, 0.15, 1)
    assert len(heldout_indices(3, 0.01, 0)) == 1 and len(heldout_indices(3, 0.99, 0)) == 2


def test_rerank_slice_is_whole_questions_and_disjoint_from_training(tmp_path):
    path = rerank_file(tmp_path / "train.csv")
    held = split_heldout(path, "rerank", 0.15, 0)
    assert len(held.queries) == 3 and {q.query for q in held.dev.queries} == held.queries
    assert all(len(q.positives) == 1 and len(q.negatives) == 2 for q in held.dev.queries)  # every candidate kept
    columns = {"anchor": [f"question {q}?" for q in range(20)], "positive": [f"answer {q} right" for q in range(20)]}
    kept = remove_heldout(columns, held)
    assert len(kept["anchor"]) == 17 and not set(kept["anchor"]) & held.queries
    assert held.record["held_out"] == 3 and held.record["of"] == 20 and held.record["seed"] == 0
    assert held.record["unit"] == "question" and len(held.record["sha256"]) == 64


def test_stsb_slice_is_by_row(tmp_path):
    path = tmp_path / "sts-train.csv"
    path.write_text("".join(f"g\tf\t2012\t{i}\t{i % 5}.0\tleft {i}\tright {i}\n" for i in range(40)), encoding="utf-8")
    held = split_heldout(path, "stsb", 0.25, 7)
    assert len(held.dev) == 10 and held.dev.name == "stsb-heldout"
    cols = {"sentence1": [f"left {i}" for i in range(40)], "sentence2": [f"right {i}" for i in range(40)],
            "score": [float(i % 5) / 5 for i in range(40)]}
    kept = remove_heldout(cols, held)
    assert len(kept["sentence1"]) == 30 and not set(kept["sentence1"]) & set(held.dev.sentences1)


def test_recipe_trains_without_the_slice(tmp_path, tiny_model_path):
    train = rerank_file(tmp_path / "train.csv")
    recipe = recipe_file(tmp_path, train, f"{{kind: rerank, path: {train}, split_from_train: 0.15, metric: map}}",
                         tiny_model_path)
    _, data = load_recipe_with_data(str(recipe))
    held = split_heldout(train, "rerank", 0.15, 0)
    assert len(data) == 17 and not set(data.columns["anchor"]) & held.queries


def test_mining_candidates_leave_out_held_out_questions(tmp_path):
    from embedkit.recipe import MineSection

    train = rerank_file(tmp_path / "train.csv")
    held = split_heldout(train, "rerank", 0.15, 0)
    texts = corpus_texts(MineSection(), str(train), "rerank", None, held.queries)
    assert len(texts) == 17 * 3
    assert not any(t.startswith(f"answer {q.query.split()[1][:-1]} ") for q in held.dev.queries for t in texts)


@pytest.mark.parametrize("dev, problem", [
    ("{kind: rerank, split_from_train: 0.15}", "path names the local training file"),
    ("{kind: retrieval, path: TRAIN, split_from_train: 0.15}", "rerank or stsb, not retrieval"),
    ("{kind: rerank, path: TRAIN, split_from_train: 1.5}", "split_from_train"),
    ("{kind: stsb, path: TRAIN, split_from_train: 0.15}", "reads as format rerank; read it as format stsb"),
    ("{kind: rerank, path: ONE, split_from_train: 0.5}", "no held-out question has both a positive and a negative"),
])
def test_refusals_name_the_key(tmp_path, tiny_model_path, dev, problem):
    train = rerank_file(tmp_path / "train.csv")
    one = tmp_path / "one.csv"  # two questions, each with positives only: no held-out question is scorable
    one.write_text("qtext,label,atext\nq1?,1,a1\nq2?,1,a2\n", encoding="utf-8")
    recipe = recipe_file(tmp_path, train, dev.replace("TRAIN", str(train)).replace("ONE", str(one)), tiny_model_path)
    with pytest.raises(RecipeError) as err:
        load_recipe_with_data(str(recipe))
    assert problem in str(err.value) and "recipe.yaml:" in str(err.value)


def test_training_selects_on_the_slice_and_records_it(tmp_path, tiny_model_path):
    from embedkit.training.run import train as run

    train = rerank_file(tmp_path / "train.csv")
    recipe = recipe_file(tmp_path, train, f"{{kind: rerank, path: {train}, split_from_train: 0.15, metric: map}}",
                         tiny_model_path)
    run(str(recipe))
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    rec = saved["dev"]["split_from_train"][f"{tmp_path.name}-train-heldout"]
    assert rec["held_out"] == 3 and rec["of"] == 20 and rec["file"] == str(train)
    assert saved["dev"]["role"] == "selection" and saved["dev"]["name"] == f"{tmp_path.name}-train-heldout"
    assert saved["overlap"][f"{tmp_path.name}-train-heldout"]["queries_pct"] == 0.0  # disjoint from training


def test_a_source_that_reads_the_file_in_another_format_is_refused(tmp_path, tiny_model_path):
    train = rerank_file(tmp_path / "train.csv")
    recipe = recipe_file(tmp_path, train, f"{{kind: rerank, path: {train}, split_from_train: 0.15}}", tiny_model_path)
    recipe.write_text(recipe.read_text().replace("format: rerank", "format: csv, columns: [qtext, atext]"))
    with pytest.raises(RecipeError, match="data.dev.split_from_train holds a rerank slice out of .* which this source "
                                          "reads as format csv"):
        load_recipe_with_data(str(recipe))


def test_multitask_source_loses_the_slice(tmp_path, tiny_model_path):
    train = rerank_file(tmp_path / "train.csv")
    other = tmp_path / "pairs.jsonl"
    other.write_text("".join(json.dumps({"anchor": f"x {i}", "positive": f"y {i}"}) + "\n" for i in range(20)))
    recipe = tmp_path / "multi.yaml"
    recipe.write_text(f"""\
model: {{name: {tiny_model_path}, pooling: mean}}
data:
  train:
    - {{name: qa, path: {train}, format: rerank, method: {{name: contrastive}}}}
    - {{name: other, path: {other}, method: {{name: contrastive}}}}
  dev:
    - {{kind: rerank, path: {train}, split_from_train: 0.15, metric: map}}
method: {{name: multitask}}
training: {{batch_size: 4, max_steps: 2}}
output: {{dir: {tmp_path / "out"}}}
""")
    _, data = load_recipe_with_data(str(recipe))
    held = split_heldout(train, "rerank", 0.15, 0)
    assert len(data.parts["qa"]) == 17 and not set(data.parts["qa"].columns["anchor"]) & held.queries
    assert len(data.parts["other"]) == 20


def test_data_mine_from_a_recipe_leaves_the_slice_out(tmp_path, tiny_model_path, capsys):
    """`embedkit data mine --recipe` mines what training would: the held-out questions are neither rows nor
    candidates (their answers would otherwise become other rows' negatives)."""
    from embedkit.cli import main

    train = rerank_file(tmp_path / "train.csv")
    recipe = recipe_file(tmp_path, train, f"{{kind: rerank, path: {train}, split_from_train: 0.15, metric: map}}",
                         tiny_model_path)
    out = tmp_path / "mined.jsonl"
    assert main(["data", "mine", "--recipe", str(recipe), "-o", str(out), "--num-negatives", "1",
                 "--range-max", "40", "--max-score-ratio", "none", "--no-progress"]) == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    held = split_heldout(train, "rerank", 0.15, 0)
    held_answers = {f"answer {q.query.split()[1][:-1]} " for q in held.dev.queries}
    assert len(rows) == 17 and not {r["anchor"] for r in rows} & held.queries
    assert not any(r["negative_1"].startswith(a) for r in rows for a in held_answers)
