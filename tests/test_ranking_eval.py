"""Reranking and retrieval evaluation: each metric against a hand computation on constructed cases, the model
pipeline against a direct encode-and-rank, mteb's local tasks against embedkit's own scores, the recipe's
``data.dev`` kinds, ``embedkit eval --rerank/--retrieval``, and checkpoint selection on dev MAP."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from embedkit.cli import main
from embedkit.data.ranking import read_beir, read_rerank
from embedkit.errors import DataError, RecipeError
from embedkit.evaluation.ranking import (
    ranking_metrics,
    rerank_layout,
    score_rerank,
    score_retrieval,
)

# ----------------------------------------------------------------------------------------------------------
# Metrics on constructed rankings


def test_rerank_map_and_mrr_equal_hand_computation():
    from sklearn.metrics import average_precision_score

    # q1: relevant at ranks 1 and 3 of 4 -> AP (1/1 + 2/3) / 2, RR 1
    # q2: relevant at rank 2 of 3 -> AP 1/2, RR 1/2
    # q3: relevant at ranks 2 and 4 of 5 -> AP (1/2 + 2/4) / 2, RR 1/2
    qrels = {"q1": {"a": 1, "b": 0, "c": 1, "d": 0}, "q2": {"a": 0, "b": 1, "c": 0},
             "q3": {"a": 0, "b": 1, "c": 0, "d": 1, "e": 0}}
    run = {"q1": {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.1}, "q2": {"a": 0.5, "b": 0.4, "c": -0.2},
           "q3": {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6, "e": 0.5}}
    ap = [(1 + 2 / 3) / 2, 1 / 2, (1 / 2 + 2 / 4) / 2]
    rr = [1, 1 / 2, 1 / 2]
    got = ranking_metrics(qrels, run, ("map", "mrr@10"))
    assert got["map"] == pytest.approx(100 * np.mean(ap), abs=1e-9)
    assert got["mrr@10"] == pytest.approx(100 * np.mean(rr), abs=1e-9)
    # Without ties, scikit-learn's average precision agrees question by question.
    sk = [average_precision_score([qrels[q][d] for d in run[q]], list(run[q].values())) for q in qrels]
    assert got["map"] == pytest.approx(100 * np.mean(sk), abs=1e-9)


def test_mrr_cuts_at_10_and_ties_count_against_positives():
    docs = {f"d{i:02d}": -i for i in range(12)}  # d00 best
    assert ranking_metrics({"q": {"d11": 1}}, {"q": docs}, ("mrr@10",))["mrr@10"] == 0.0  # rank 12
    assert ranking_metrics({"q": {"d09": 1}}, {"q": docs}, ("mrr@10",))["mrr@10"] == pytest.approx(10.0)
    # A reranking question whose candidates all tie: every negative ranks above the positive.
    data = read_rerank_text("qtext,label,atext\nq,1,p\nq,0,n1\nq,0,n2\n")
    queries, docs2, qrels, cands = rerank_layout(data)
    run = {q: {d: 0.5 for d in cands[q]} for q in queries}
    got = ranking_metrics(qrels, run, ("map", "mrr@10"))
    assert got == {"map": pytest.approx(100 / 3), "mrr@10": pytest.approx(100 / 3)}


def test_retrieval_ndcg_recall_mrr_equal_hand_computation():
    # 150 documents ranked d000 (best) .. d149; graded relevance, gain = relevance, discount log2(rank + 1).
    run = {"q1": {f"d{i:03d}": 1.0 - i / 1000 for i in range(150)},
           "q2": {f"d{i:03d}": 1.0 - i / 1000 for i in range(150)}}
    qrels = {"q1": {"d000": 2, "d002": 1, "d120": 1},  # ranks 1, 3, 121
             "q2": {"d004": 1, "d020": 3}}  # ranks 5, 21
    dcg1 = 2 / math.log2(2) + 1 / math.log2(4)
    idcg1 = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    dcg2 = 1 / math.log2(6)
    idcg2 = 3 / math.log2(2) + 1 / math.log2(3)
    got = ranking_metrics(qrels, run, ("ndcg@10", "recall@100", "mrr@10"))
    assert got["ndcg@10"] == pytest.approx(100 * (dcg1 / idcg1 + dcg2 / idcg2) / 2, abs=1e-6)
    assert got["recall@100"] == pytest.approx(100 * (2 / 3 + 2 / 2) / 2, abs=1e-6)
    assert got["mrr@10"] == pytest.approx(100 * (1 / 1 + 1 / 5) / 2, abs=1e-9)
    # A query the run does not rank at all scores 0 in every metric.
    missing = ranking_metrics({**qrels, "q3": {"d001": 1}}, run, ("ndcg@10", "recall@100", "mrr@10"))
    assert missing["mrr@10"] == pytest.approx(got["mrr@10"] * 2 / 3)


# ----------------------------------------------------------------------------------------------------------
# Small data sets and the model pipeline

RERANK_ROWS = [
    ("what is the capital of france", 1, "paris is the capital of france"),
    ("what is the capital of france", 0, "berlin is a large city"),
    ("what is the capital of france", 0, "the river flows to the sea"),
    ("who wrote hamlet", 0, "the play has five acts"),
    ("who wrote hamlet", 1, "hamlet was written by shakespeare"),
    ("who wrote hamlet", 0, "london has many theatres"),
    ("who wrote hamlet", 1, "shakespeare wrote the tragedy hamlet"),
    ("how tall is everest", 0, "mountains are cold"),
    ("how tall is everest", 1, "everest is 8849 metres tall"),
    ("how tall is everest", 0, "nepal borders china"),
    ("when did the war end", 1, "the war ended in 1945"),  # no negative: not scorable
    ("what do bees make", 0, "bees have wings"),
    ("what do bees make", 0, "flowers bloom in spring"),
    ("what do bees make", 1, "bees make honey"),
]


def read_rerank_text(text: str, tmp: Path | None = None):
    import tempfile

    folder = Path(tmp or tempfile.mkdtemp())
    f = folder / "r.csv"
    f.write_text(text, encoding="utf-8")
    return read_rerank(f)


def write_rerank(path: Path, rows=RERANK_ROWS) -> Path:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["qtext", "label", "atext"])
        w.writerows(rows)
    return path


def write_beir(folder: Path, split: str = "test") -> Path:
    docs = [f"document {i} about topic {i % 7} and subject {i % 5}" for i in range(130)]
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": f"d{i}", "title": "T" if i % 2 else "", "text": t}) + "\n"
                for i, t in enumerate(docs)), encoding="utf-8")
    queries = {"q1": "topic 3 subject 1", "q2": "document 17", "q3": "subject 4 and topic 0", "q4": "nothing"}
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in queries.items()),
                                          encoding="utf-8")
    qrels = [("q1", "d3", 2), ("q1", "d66", 1), ("q2", "d17", 1), ("q3", "d14", 1), ("q3", "d49", 3),
             ("q3", "d0", 0)]
    (folder / "qrels" / f"{split}.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in qrels), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(tiny_model_path, device="cpu")


def _unit(model, texts):
    emb = model.encode(texts, convert_to_numpy=True).astype(np.float64)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def _ap(labels_in_rank_order: list[int]) -> float:
    hits, total = 0, 0.0
    for rank, rel in enumerate(labels_in_rank_order, start=1):
        if rel:
            hits += 1
            total += hits / rank
    return total / sum(labels_in_rank_order)


def test_score_rerank_equals_direct_encode_and_rank(tiny, tmp_path):
    data = read_rerank(write_rerank(tmp_path / "r.csv"))
    got = score_rerank(tiny, data, batch_size=4)
    aps, rrs = [], []
    for q in data.queries:
        if not q.scorable:
            continue
        cands = q.positives + q.negatives
        labels = [1] * len(q.positives) + [0] * len(q.negatives)
        sims = _unit(tiny, cands) @ _unit(tiny, [q.query])[0]
        order = np.argsort(-sims, kind="stable")
        ranked = [labels[i] for i in order]
        aps.append(_ap(ranked))
        rrs.append(1 / (ranked.index(1) + 1) if 1 in ranked[:10] else 0.0)
    assert got["questions"] == 4 and got["skipped"] == 1
    assert got["map"] == pytest.approx(100 * np.mean(aps), abs=1e-6)
    assert got["mrr@10"] == pytest.approx(100 * np.mean(rrs), abs=1e-6)


def test_rerank_at_matryoshka_dims_equals_truncate_then_normalise(tiny, tmp_path):
    """Each width's MAP / MRR@10 equal a direct ranking of ST's embeddings cut to their first d coordinates and
    then normalised; the full width stays the top-level score."""
    data = read_rerank(write_rerank(tmp_path / "r.csv"))
    got = score_rerank(tiny, data, batch_size=4, dims=[8, 3])
    assert {k: got[k] for k in ("map", "mrr@10")} == {k: score_rerank(tiny, data, batch_size=4)[k]
                                                     for k in ("map", "mrr@10")}

    def cut(texts, d):
        emb = tiny.encode(texts, convert_to_numpy=True).astype(np.float64)[:, :d]
        return emb / np.linalg.norm(emb, axis=1, keepdims=True)

    for d in (8, 3):
        aps, rrs = [], []
        for q in (q for q in data.queries if q.scorable):
            labels = [1] * len(q.positives) + [0] * len(q.negatives)
            sims = cut(q.positives + q.negatives, d) @ cut([q.query], d)[0]
            ranked = [labels[i] for i in np.argsort(-sims, kind="stable")]
            aps.append(_ap(ranked))
            rrs.append(1 / (ranked.index(1) + 1) if 1 in ranked[:10] else 0.0)
        assert got["dims"][str(d)]["map"] == pytest.approx(100 * np.mean(aps), abs=1e-6)
        assert got["dims"][str(d)]["mrr@10"] == pytest.approx(100 * np.mean(rrs), abs=1e-6)
    assert got["dims"]["3"]["map"] != got["map"]  # a 3-wide cut of a random model ranks differently


def test_score_retrieval_equals_direct_exhaustive_search(tiny, tmp_path):
    data = read_beir(write_beir(tmp_path / "beir"))
    got = score_retrieval(tiny, data, batch_size=16)
    ids = list(data.corpus)
    d = _unit(tiny, [data.corpus[i] for i in ids])
    ndcgs, recalls, rrs = [], [], []
    for qid, text in data.queries.items():
        rel = data.qrels[qid]
        ranked = [ids[j] for j in np.argsort(-(d @ _unit(tiny, [text])[0]), kind="stable")]
        dcg = sum(rel.get(doc, 0) / math.log2(r + 2) for r, doc in enumerate(ranked[:10]))
        idcg = sum(g / math.log2(r + 2) for r, g in enumerate(sorted(rel.values(), reverse=True)[:10]))
        ndcgs.append(dcg / idcg)
        recalls.append(sum(doc in rel for doc in ranked[:100]) / len(rel))
        first = next((r for r, doc in enumerate(ranked[:10], start=1) if doc in rel), None)
        rrs.append(1 / first if first else 0.0)
    assert got["queries"] == 3 and got["documents"] == 130  # q4 has no relevant document; d0's 0 is dropped
    assert got["ndcg@10"] == pytest.approx(100 * np.mean(ndcgs), abs=1e-4)
    assert got["recall@100"] == pytest.approx(100 * np.mean(recalls), abs=1e-4)
    assert got["mrr@10"] == pytest.approx(100 * np.mean(rrs), abs=1e-4)


def test_prompts_are_applied_per_side(tiny):
    """With a ``query`` prompt, the questions are encoded with it and the candidates without."""
    from embedkit.evaluation.ranking import encode_side

    original = tiny.prompts
    tiny.prompts = {"query": "question: ", "document": ""}
    try:
        q = encode_side(tiny, ["who wrote hamlet"], "query")[0]
        d = encode_side(tiny, ["hamlet"], "document")[0]
    finally:
        tiny.prompts = original
    np.testing.assert_allclose(q, _unit(tiny, ["question: who wrote hamlet"])[0], atol=1e-5)
    np.testing.assert_allclose(d, _unit(tiny, ["hamlet"])[0], atol=1e-5)
    assert not np.allclose(q, _unit(tiny, ["who wrote hamlet"])[0], atol=1e-3)


# ----------------------------------------------------------------------------------------------------------
# mteb's local tasks give the same numbers


def test_mteb_local_tasks_equal_embedkit_scores(tiny, tmp_path):
    from embedkit.evaluation.mteb_eval import import_mteb

    mteb = import_mteb(tmp_path / "mteb-cache")
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    from embedkit.evaluation.mteb_tasks import local_rerank_task, local_retrieval_task

    rerank_file = write_rerank(tmp_path / "toy" / "dev.csv")
    beir = write_beir(tmp_path / "beir")
    tasks = [local_rerank_task(rerank_file), local_retrieval_task(beir, "test")]
    assert [t.metadata.name for t in tasks] == ["toy-dev", "beir-test"]
    assert [t.metadata.type for t in tasks] == ["Reranking", "Retrieval"]
    assert all(isinstance(t, AbsTaskRetrieval) for t in tasks)
    res = mteb.evaluate(tiny, tasks, cache=None, overwrite_strategy="always", show_progress_bar=False,
                        co2_tracker=False)
    by_name = {r.task_name: r.scores["test"][0] for r in res.task_results}
    ours_r = score_rerank(tiny, read_rerank(rerank_file))
    ours_b = score_retrieval(tiny, read_beir(beir))
    assert 100 * by_name["toy-dev"]["main_score"] == pytest.approx(ours_r["map"], abs=1e-3)  # mteb rounds to 1e-5
    assert 100 * by_name["toy-dev"]["mrr_at_10"] == pytest.approx(ours_r["mrr@10"], abs=1e-3)
    assert 100 * by_name["beir-test"]["main_score"] == pytest.approx(ours_b["ndcg@10"], abs=1e-3)
    assert 100 * by_name["beir-test"]["recall_at_100"] == pytest.approx(ours_b["recall@100"], abs=1e-3)
    assert 100 * by_name["beir-test"]["mrr_at_10"] == pytest.approx(ours_b["mrr@10"], abs=1e-3)


def test_trecqa_dev_resolves_as_a_named_local_mteb_task(data_dir, tmp_path):
    from embedkit.evaluation.mteb_eval import resolve_tasks

    tasks, sources = resolve_tasks(["TRECQA-dev"], None, data_dir, cache_dir=tmp_path)
    assert [t.metadata.name for t in tasks] == ["TRECQA-dev"] and sources == {"TRECQA-dev": "local"}
    assert (tasks[0].metadata.type, tasks[0].metadata.main_score, tasks[0].split) == ("Reranking", "map_at_1000", "dev")
    assert Path(tasks[0].source) == data_dir / "rerank" / "trecqa" / "dev.csv"
    assert "not an official mteb task" in tasks[0].metadata.description


# ----------------------------------------------------------------------------------------------------------
# Recipe: data.dev kinds and eval.rerank / eval.retrieval


def _recipe(tmp_path: Path, model: str, train: Path, dev: str, extra: str = "") -> Path:
    text = f"""\
description: tiny
model: {{name: {model}, max_seq_length: 16}}
data:
  train: {{path: {train}}}
  dev: {dev}
method: {{name: simcse-unsup}}
training: {{batch_size: 8, max_steps: 4, eval_steps: 1, learning_rate: 5e-3, logging_steps: 1, save_total_limit: 10}}
output: {{dir: {tmp_path / "out"}}}
{extra}"""
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_dev_section_defaults_by_kind_and_keeps_stsb_shape():
    from embedkit.recipe import DevSection

    stsb = DevSection()
    assert (stsb.kind, stsb.path, stsb.hub, stsb.split, stsb.metric) == (
        "stsb", "{data_dir}/sts/stsbenchmark/sts-dev.csv", "sentence-transformers/stsb", "validation", "spearman")
    rerank = DevSection(kind="rerank", path="x.csv")
    assert (rerank.metric, rerank.hub) == ("map", None)
    assert (DevSection(kind="retrieval", path="b").metric, DevSection(kind="retrieval", path="b").split) == (
        "ndcg@10", "dev")


@pytest.mark.parametrize("dev, expected", [
    ("{kind: rerank, path: DEV, metric: ndcg@10}", r"recipe\.yaml:5: data\.dev\.metric: .*for kind 'rerank' "
                                                   r"expected one of map, mrr@10"),
    ("{kind: stsb, metric: map}", r"recipe\.yaml:5: data\.dev\.metric: .*expected one of spearman, pearson"),
    ("{kind: rerank, path: /no/such/dev.csv}", r"recipe\.yaml:5: data\.dev\.path: /no/such/dev\.csv: reranking file "
                                               "not found"),
    ("{kind: rerank, path: DEV, hub: some/set}", r"recipe\.yaml:5: data\.dev: .*hub: a rerank dev set is read"),
    ("{kind: retrieval, path: BEIR, split: dev}", r"recipe\.yaml:5: data\.dev\.path: .*qrels/dev\.tsv: qrels for "
                                                  "split 'dev' not found; this folder has: test"),
    ("{kind: rank, path: DEV}", r"recipe\.yaml:5: data\.dev\.kind: "),
])
def test_bad_dev_is_one_line_naming_file_line_key(tmp_path, tiny_model_path, sentences_file, dev, expected):
    from embedkit.validate import load_recipe

    dev = dev.replace("DEV", str(write_rerank(tmp_path / "trecqa" / "dev.csv"))).replace(
        "BEIR", str(write_beir(tmp_path / "beir")))
    with pytest.raises(RecipeError, match=expected) as err:
        load_recipe(_recipe(tmp_path, tiny_model_path, sentences_file, dev))
    assert "\n" not in str(err.value)


def test_unscorable_dev_and_bad_final_sets_are_refused_at_validation(tmp_path, tiny_model_path, sentences_file):
    from embedkit.validate import load_recipe

    only_pos = write_rerank(tmp_path / "p" / "dev.csv", [("q", 1, "a"), ("r", 1, "b")])
    with pytest.raises(RecipeError, match=r"data\.dev\.path: .*no question has both a positive and a negative"):
        load_recipe(_recipe(tmp_path, tiny_model_path, sentences_file, f"{{kind: rerank, path: {only_pos}}}"))
    bad = tmp_path / "bad.csv"
    bad.write_text("question,label,answer\nq,1,a\n", encoding="utf-8")
    with pytest.raises(RecipeError, match=r"recipe\.yaml:11: eval\.rerank\.0: .*bad\.csv:1: expected the header"):
        load_recipe(_recipe(tmp_path, tiny_model_path, sentences_file, "null", f"eval:\n  rerank:\n  - {bad}\n"))


# ----------------------------------------------------------------------------------------------------------
# embedkit eval --rerank / --retrieval


def test_cli_rerank_and_retrieval_write_results_and_table(tiny_model_path, tmp_path, capsys):
    rerank_file = write_rerank(tmp_path / "toy" / "dev.csv")
    beir = write_beir(tmp_path / "beir")
    out = tmp_path / "res"
    assert main(["eval", tiny_model_path, "--rerank", str(rerank_file), "--retrieval", str(beir), "-o", str(out),
                 "--as-mteb"]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((out / "results.json").read_text())
    assert "sts" not in saved  # the ranking options alone do not run the STS suite
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(tiny_model_path, device="cpu")
    direct = score_rerank(model, read_rerank(rerank_file))
    assert saved["rerank"]["toy-dev"]["map"] == pytest.approx(direct["map"], abs=1e-9)
    assert saved["retrieval"]["beir-test"]["ndcg@10"] == pytest.approx(
        score_retrieval(model, read_beir(beir))["ndcg@10"], abs=1e-9)
    assert "toy-dev" in printed and f"{direct['map']:.2f}" in printed and "beir-test" in printed
    # --as-mteb: the same sets as local mteb tasks, in mteb's layout, with the same numbers.
    files = {f.name: f for f in (out / "mteb" / "results").rglob("*.json")}
    assert {"toy-dev.json", "beir-test.json", "model_meta.json"} <= set(files)
    mteb_rerank = json.loads(files["toy-dev.json"].read_text())["scores"]["test"][0]
    assert 100 * mteb_rerank["main_score"] == pytest.approx(direct["map"], abs=1e-3)
    assert saved["mteb"]["beir-test"]["source"] == "local"


@pytest.mark.parametrize("args, expected", [
    (["--rerank", "NOFILE"], "reranking file not found"),
    (["--rerank", "BADHEADER"], ":1: expected the header qtext,label,atext"),
    (["--retrieval", "BEIR", "--split", "dev"], "qrels for split 'dev' not found"),
])
def test_cli_bad_ranking_input_is_one_line_and_writes_nothing(tiny_model_path, tmp_path, capsys, args, expected):
    bad = tmp_path / "bad.csv"
    bad.write_text("q,l,a\nx,1,y\n", encoding="utf-8")
    beir = write_beir(tmp_path / "beir")
    args = [a.replace("NOFILE", str(tmp_path / "none.csv")).replace("BADHEADER", str(bad)).replace(
        "BEIR", str(beir)) for a in args]
    out = tmp_path / "res"
    assert main(["eval", tiny_model_path, *args, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1
    assert not (out / "results.json").exists()


# ----------------------------------------------------------------------------------------------------------
# Checkpoint selection on dev MAP


def test_checkpoint_selection_by_dev_map_picks_the_best_checkpoint(tmp_path, tiny_model_path, sentences_file):
    from sentence_transformers import SentenceTransformer

    from embedkit.training.run import train

    dev_file = write_rerank(tmp_path / "toy" / "dev.csv")
    rerank_file = write_rerank(tmp_path / "final" / "set.csv")
    recipe = _recipe(tmp_path, tiny_model_path, sentences_file, f"{{kind: rerank, path: {dev_file}}}",
                     f"eval:\n  rerank: [{rerank_file}]\n")
    results = train(str(recipe), ["output.keep_checkpoints=all"])  # the resume below continues from checkpoint-3
    evals = [e for e in results["train"]["log_history"] if "eval_toy-dev_map" in e]
    assert [e["step"] for e in evals] == [1, 2, 3, 4] and all("eval_toy-dev_mrr@10" in e for e in evals)
    best = max(e["eval_toy-dev_map"] for e in evals)
    assert evals[-1]["eval_toy-dev_map"] < best  # the last step is not the best: selection has to act
    first_best = next(e["step"] for e in evals if e["eval_toy-dev_map"] == best)
    assert results["train"]["best_checkpoint"].endswith(f"checkpoint-{first_best}")
    assert results["train"]["best_dev"] == {"metric": "eval_toy-dev_map", "value": best}
    assert results["dev"]["kind"] == "rerank" and results["dev"]["metric"] == "map"
    # The saved model is the selected checkpoint: its dev MAP is the best, computed afresh from the folder.
    final = SentenceTransformer(str(tmp_path / "out"), device="cpu")
    assert score_rerank(final, read_rerank(dev_file))["map"] == pytest.approx(best, abs=1e-6)
    assert results["dev"]["after"]["map"] == pytest.approx(best, abs=1e-6)
    assert "before" in results["dev"] and results["rerank"]["final-set"]["map"] == pytest.approx(
        score_rerank(final, read_rerank(rerank_file))["map"], abs=1e-6)

    # Killed after the step-3 save: --resume rebuilds the (stateless) evaluator and selects the same checkpoint.
    import shutil

    shutil.rmtree(tmp_path / "out" / "checkpoints" / "checkpoint-4")
    (tmp_path / "out" / "results.json").unlink()
    resumed = train(str(recipe), resume=True)
    assert resumed["train"]["global_step"] == 4
    assert resumed["train"]["best_checkpoint"].endswith(f"checkpoint-{first_best}")
    assert resumed["dev"]["after"]["map"] == pytest.approx(best, abs=1e-6)


def test_card_names_the_dev_metric():
    from embedkit.card import _dev_section

    lines = _dev_section({"dev": {"kind": "rerank", "name": "trecqa-dev", "metric": "map",
                                  "before": {"map": 70.0, "mrr@10": 75.0}, "after": {"map": 80.5, "mrr@10": 85.25}}})
    text = "\n".join(lines)
    assert ("trecqa-dev (rerank dev set) (the selection set: used to select the checkpoint, on MAP; not a test "
            "score): MAP 80.50 after training, 70.00 before") in text and "MRR@10 85.25" in text
    old = "\n".join(_dev_section({"dev": {"before": {"spearman": 80.0}, "after": {"spearman": 81.0}}}))
    assert "STS-B dev (the selection set: used to select the checkpoint; not a test score): Spearman 81.00 after " \
        "training, 80.00 before" in old


def test_rerank_layout_refuses_a_set_without_scorable_questions(tmp_path):
    with pytest.raises(DataError, match="no question has both a positive and a negative"):
        rerank_layout(read_rerank(write_rerank(tmp_path / "p.csv", [("q", 1, "a")])))
