"""Training/evaluation overlap (embedkit/evaluation/overlap.py, `embedkit data overlap`): the arithmetic on small files,
and the published STS-B train / STS12–16 numbers on the shared data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedkit.cli import main
from embedkit.data.ranking import RerankQuery, RerankSet
from embedkit.evaluation.overlap import (
    EvalSet,
    TrainIndex,
    clean_average,
    from_rerank,
    measure,
    normalize,
    overlap_report,
)


def test_normalize_folds_case_punctuation_space_and_width():
    assert normalize("  A man, plays   the GUITAR! ") == "a man plays the guitar"
    assert normalize("ｆｕｌｌ－width") == "fullwidth"  # NFKC, then the hyphen is punctuation
    assert normalize("don't") == "dont"


def test_pairs_are_unordered_and_counted_exactly_and_normalised():
    index = TrainIndex()
    index.add_rows({"s1": ["a b", "c d", "e f"], "s2": ["x y", "Z W.", "g h"], "score": [1.0, 2.0, 3.0]}, "train")
    ev = EvalSet("t", "pairs", pairs=[("x y", "a b"),   # reversed: seen exactly
                                      ("c d", "z w"),   # seen only after normalisation
                                      ("a b", "g h"),   # both texts seen, never together: not a seen pair
                                      ("q", "r")],
                 texts=["x y", "a b", "c d", "z w", "a b", "g h", "q", "r"])
    row = measure(index, ev)
    assert (row["pairs"], row["pairs_seen"]) == (4, 1)
    assert row["pairs_pct"] == 25.0 and row["pairs_norm_pct"] == 50.0
    # distinct texts: x y, a b, c d, z w, g h, q, r = 7; exact hits: x y, a b, c d, g h = 4; normalised adds z w
    assert row["texts"] == 7 and row["texts_seen"] == 4
    assert row["texts_pct"] == round(400 / 7, 2) and row["texts_norm_pct"] == round(500 / 7, 2)
    assert row["flagged"] is True and row["role"] == "test"


def test_scores_and_labels_are_not_texts():
    index = TrainIndex()
    index.add_rows({"anchor": ["q1"], "positive": ["p1"], "label": [3]}, "train")
    assert len(index.texts) == 2 and len(index.pairs) == 1


def test_every_two_text_columns_of_a_row_form_a_pair():
    index = TrainIndex()
    index.add_rows({"anchor": ["a"], "positive": ["p"], "negative_1": ["n"]}, "train")
    ev = EvalSet("t", "pairs", pairs=[("p", "a"), ("a", "n"), ("p", "n")], texts=["a", "p", "n"])
    assert measure(index, ev)["pairs_seen"] == 3


def test_a_corpus_adds_texts_but_no_pairs():
    index = TrainIndex()
    index.add_texts(["a", "b"], "corpus")
    row = measure(index, EvalSet("t", "pairs", pairs=[("a", "b")], texts=["a", "b"]))
    assert row["pairs_seen"] == 0 and row["texts_pct"] == 100.0 and row["flagged"] is False


def test_rerank_queries_and_positive_pairs():
    data = RerankSet("qa", [RerankQuery("who?", ["him"], ["her"]), RerankQuery("when?", ["now"], ["then"])])
    index = TrainIndex()
    index.add_rows({"anchor": ["who?"], "positive": ["him"]}, "train")
    row = measure(index, from_rerank(data))
    assert row["queries"] == 2 and row["queries_seen"] == 1 and row["queries_pct"] == 50.0
    assert row["pairs_seen"] == 1 and row["pairs_pct"] == 50.0
    assert row["flagged"] is True


def test_flag_threshold_is_strictly_above_one_percent():
    index = TrainIndex()
    index.add_rows({"a": ["s0"], "b": ["t0"]}, "train")
    pairs = [(f"s{i}", f"t{i}") for i in range(100)]
    row = measure(index, EvalSet("t", "pairs", pairs=pairs, texts=[t for p in pairs for t in p]))
    assert row["pairs_pct"] == 1.0 and row["flagged"] is False  # exactly 1%: clean
    row = measure(index, EvalSet("t", "pairs", pairs=pairs[:50], texts=[t for p in pairs[:50] for t in p]))
    assert row["pairs_pct"] == 2.0 and row["flagged"] is True


def test_clean_average_leaves_out_flagged_sets():
    overlap = {"STS12": {"flagged": True}, "STS13": {"flagged": False}}
    assert clean_average({"STS12": 90.0, "STS13": 70.0, "SICK-R": 80.0}, overlap) == 75.0
    assert clean_average({"STS12": 90.0}, overlap) is None


def _tiny_data_dir(root: Path) -> Path:
    """A data folder with STS12 (2 subsets, one unscored pair) and STS-B dev (3 pairs), nothing else."""
    sts12 = root / "sts" / "STS12"
    sts12.mkdir(parents=True)
    (sts12 / "STS.input.a.txt").write_text("A cat sits.\tA cat is sitting.\nno gold\there\n", encoding="utf-8")
    (sts12 / "STS.gs.a.txt").write_text("4.0\n\n", encoding="utf-8")
    (sts12 / "STS.input.b.txt").write_text("Dogs run.\tA dog runs.\nRain falls\tIt rains\n", encoding="utf-8")
    (sts12 / "STS.gs.b.txt").write_text("3.0\n2.5\n", encoding="utf-8")
    stsb = root / "sts" / "stsbenchmark"
    stsb.mkdir()
    (stsb / "sts-dev.csv").write_text("g\tf\t2012\t1\t4.0\tDogs run.\tA dog runs.\n"
                                      "g\tf\t2012\t2\t1.0\tA bird sings.\tThe car is red.\n"
                                      "g\tf\t2012\t3\t2.5\tTwo men talk.\tMen are talking.\n", encoding="utf-8")
    return root


def test_cli_on_a_data_file_measures_and_flags(tmp_path, capsys):
    data_dir = _tiny_data_dir(tmp_path / "data")
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"anchor": "a cat sits", "positive": "A cat is sitting."}) + "\n"
                     + json.dumps({"anchor": "unrelated", "positive": "text"}) + "\n", encoding="utf-8")
    assert main(["data", "overlap", str(train), "--data-dir", str(data_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    sts12 = out["overlap"]["STS12"]
    # STS12 scores 3 pairs (the unscored one is not a unit); one is in training after normalisation only.
    assert sts12["pairs"] == 3 and sts12["pairs_seen"] == 0 and sts12["pairs_norm_pct"] == round(100 / 3, 2)
    assert sts12["flagged"] is True
    assert out["overlap"]["STSBenchmark-dev"]["pairs_norm_pct"] == 0.0
    assert any(n.startswith("STS13: not measured") for n in out["notes"])  # absent sets are said, not skipped


def test_cli_unknown_task_is_one_line(tmp_path, capsys):
    data_dir = _tiny_data_dir(tmp_path / "data")
    train = tmp_path / "train.txt"
    train.write_text("one\ntwo\n", encoding="utf-8")
    assert main(["data", "overlap", str(train), "--data-dir", str(data_dir), "--tasks", "STS99"]) == 2
    err = capsys.readouterr().err
    assert "--tasks: unknown set(s) STS99" in err and "Traceback" not in err


def test_quickstart_overlap_matches_the_published_counts(data_dir):
    """STS-B train holds 1,002/3,108 STS12, 597/1,500 STS13, 1,861/3,750 STS14, 1,102/3,000 STS15 and
    197/1,186 STS16 scored test pairs, verbatim; the quickstart's dev set is marked as the selection set."""
    overlap, _ = overlap_report("quickstart", data_dir=str(data_dir))
    expected = {"STS12": (1002, 3108), "STS13": (597, 1500), "STS14": (1861, 3750), "STS15": (1102, 3000),
                "STS16": (197, 1186)}
    for task, (seen, total) in expected.items():
        assert (overlap[task]["pairs_seen"], overlap[task]["pairs"]) == (seen, total), task
        assert overlap[task]["flagged"]
    assert overlap["STSBenchmark-dev"]["role"] == "selection"
    assert overlap["MR"]["texts_pct"] == 0.0


@pytest.mark.parametrize("text", ["", "   ", "!!!"])
def test_texts_that_normalise_to_nothing_still_hash(text):
    index = TrainIndex()
    index.add_rows({"a": [text], "b": ["x"]}, "train")
    assert measure(index, EvalSet("t", "texts", texts=[text]))["texts_seen"] == 1


def test_annotate_sts_and_the_table_mark_seen_tasks():
    from embedkit.evaluation.overlap import annotate_sts
    from embedkit.evaluation.report import sts_table

    sts = {"tasks": {"STS12": {"spearman": 80.0, "n": 3}, "STS13": {"spearman": 70.0, "n": 2},
                     "SICK-R": {"spearman": 60.0, "n": 2}}, "avg": 70.0}
    overlap = {"STS12": {"pairs_pct": 32.2, "pairs_norm_pct": 32.5, "texts_pct": 38.5, "flagged": True},
               "STS13": {"pairs_pct": 0.5, "pairs_norm_pct": 0.5, "texts_pct": 2.0, "flagged": False}}
    annotate_sts(sts, overlap)
    assert sts["seen_in_training"] == ["STS12"] and sts["avg_clean_tasks"] == ["STS13", "SICK-R"]
    assert sts["avg_clean"] == 65.0
    table = sts_table(sts)
    assert "STS12*" in table and "STS13*" not in table
    assert "clean avg" in table and "65.00" in table
    assert "* STS12: 32.2% of its pairs (32.5% normalised) and 38.5% of its texts" in table


def test_a_training_run_records_overlap_and_selection_role(tmp_path, tiny_model_path):
    from embedkit.training.run import train

    data_dir = _tiny_data_dir(tmp_path / "data")
    rows = ["sentence1\tsentence2\tscore", "A cat sits.\tA cat is sitting.\t4.0"]
    rows += [f"line {i} alpha\tline {i} beta\t{i % 5}" for i in range(30)]
    train_file = tmp_path / "pairs.tsv"
    train_file.write_text("\n".join(rows) + "\n", encoding="utf-8")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""\
model: {{name: {tiny_model_path}, pooling: mean, max_seq_length: 16}}
data:
  train: {{path: {train_file}}}
  dev: {{path: "{{data_dir}}/sts/stsbenchmark/sts-dev.csv"}}
method: {{name: cosent}}
training: {{batch_size: 8, max_steps: 2, eval_steps: 2, logging_steps: 1}}
eval: {{before: false, suite: stsb-dev}}
output: {{dir: {tmp_path / "out"}}}
""", encoding="utf-8")
    results = train(str(recipe), data_dir=str(data_dir))
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["overlap"]["STS12"]["pairs_seen"] == 1 and saved["overlap"]["STS12"]["flagged"] is True
    assert saved["overlap"]["STSBenchmark-dev"]["role"] == "selection"
    assert saved["dev"]["role"] == "selection"
    assert results["overlap"]["STS12"]["pairs_pct"] == round(100 / 3, 2)


def test_the_card_marks_seen_tasks_in_its_table_model_index_and_overlap_section():
    from huggingface_hub import ModelCard

    from embedkit.card import build_card
    from embedkit.evaluation.overlap import annotate_sts

    overlap = {"STS12": {"kind": "pairs", "role": "test", "pairs_pct": 32.2, "pairs_norm_pct": 32.4,
                         "texts_pct": 38.5, "texts_norm_pct": 38.6, "flagged": True},
               "STS13": {"kind": "pairs", "role": "test", "pairs_pct": 0.0, "pairs_norm_pct": 0.0,
                         "texts_pct": 0.1, "texts_norm_pct": 0.1, "flagged": False},
               "trecqa-train-heldout": {"kind": "queries", "role": "selection", "queries_pct": 0.0,
                                        "queries_norm_pct": 0.0, "texts_pct": 0.0, "texts_norm_pct": 0.0,
                                        "flagged": False}}
    sts = {"protocol": "senteval-sts-all", "avg": 75.0,
           "tasks": {"STS12": {"spearman": 80.0, "pearson": 79.0, "n": 3108},
                     "STS13": {"spearman": 70.0, "pearson": 69.0, "n": 1500}}}
    annotate_sts(sts, overlap)
    results = {"recipe": {"model": {"name": "base"}, "method": {"name": "cosent"}}, "sts": sts, "overlap": overlap}
    card = build_card(results)
    assert "| STS12 * | 80.00 |" in card and "| STS13 | 70.00 |" in card
    assert "| **Avg, tasks not seen in training** | **70.00** |" in card
    assert "Seen in training: STS12 32.2%" in card
    assert "| STS12 | test | pairs | 32.20 | 32.40 | 38.50 |" in card
    assert "| trecqa-train-heldout | selection | queries | 0.00 | 0.00 | 0.00 |" in card
    assert "| STS13 | test |" not in card  # a clean test set is not listed
    index = ModelCard(card).data.eval_results
    by_task = {r.dataset_name: r for r in index}
    assert by_task["STS12"].dataset_args["train_overlap_pairs_pct"] == 32.2
    assert "32.2% of the pairs are in the training data" in by_task["STS12"].metric_name
    assert "train_overlap_pairs_pct" not in (by_task["STS13"].dataset_args or {})


def test_eval_with_train_data_marks_seen_tasks(tmp_path, tiny_model_path, capsys):
    data_dir = _tiny_data_dir(tmp_path / "data")
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"anchor": "Dogs run.", "positive": "A dog runs."}) + "\n", encoding="utf-8")
    out = tmp_path / "eval"
    assert main(["eval", tiny_model_path, "--tasks", "STS12", "--data-dir", str(data_dir), "--train-data", str(train),
                 "-o", str(out), "--no-chart", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((out / "results.json").read_text())
    assert saved["overlap"]["STS12"]["pairs_seen"] == 1 and saved["sts"]["seen_in_training"] == ["STS12"]
    assert saved["sts"]["avg_clean"] is None  # the one task that ran was seen
    assert "STS12*" in printed and "overlap: STS12: 1/3 pairs" in printed


def test_eval_refuses_a_missing_train_data_before_loading(tmp_path, capsys):
    assert main(["eval", "no/such-model-folder", "--train-data", str(tmp_path / "nope.jsonl")]) == 2
    assert "--train-data" in capsys.readouterr().err
