"""Evaluation UX and SentEval fidelity (issue 17, items 4 and 6): a subset of the STS suite by name, the
encoding length (the model's own maximum unless asked), the progress bar, the zoomed ``sts.png`` and the
dev-metric chart of a training run, and SICK-R's test split wherever the data came from."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_eval_data import make_sts_dir

import embedkit
from embedkit.cli import main
from embedkit.data.sts import SICK_ALL_PAIRS, SICK_TEST_PAIRS, read_sick
from embedkit.errors import DataError, EmbedkitError
from embedkit.evaluation import sts
from embedkit.evaluation.report import (
    _axis_range,
    dev_history,
    load_training_results,
    sts_figure,
    training_figure,
)

SICK_HEADER = "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root, _ = make_sts_dir(tmp_path_factory.mktemp("stsdata"), n_extra=20)
    return root


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(tiny_model_path, device="cpu")


# --- tasks= -------------------------------------------------------------------------------------------------


def test_task_names_aliases_any_case_in_suite_order():
    assert sts.resolve_tasks("stsb,STS12") == ("STS12", "STSBenchmark")
    assert sts.resolve_tasks(["SICKR", "sick-r", "Sts16", "STSBenchmark"]) == ("STS16", "STSBenchmark", "SICK-R")
    assert sts.resolve_tasks(None) == sts.TASKS
    with pytest.raises(DataError) as err:
        sts.resolve_tasks("STS12,STS17")
    msg = str(err.value)
    assert "\n" not in msg and "'STS17'" in msg and all(t in msg for t in sts.TASKS)


def test_evaluate_a_subset_averages_over_what_ran(tiny, data_root):
    full = embedkit.evaluate(tiny, suite="sts", data_dir=data_root, batch_size=8)
    part = embedkit.evaluate(tiny, suite="sts", data_dir=data_root, batch_size=8, tasks=["stsb", "STS12"])
    assert list(part["tasks"]) == ["STS12", "STSBenchmark"] and part["avg_tasks"] == ["STS12", "STSBenchmark"]
    for task in part["tasks"]:  # a task's score does not depend on which others ran
        assert part["tasks"][task]["spearman"] == pytest.approx(full["tasks"][task]["spearman"], abs=1e-9)
    assert part["avg"] == pytest.approx((full["tasks"]["STS12"]["spearman"]
                                         + full["tasks"]["STSBenchmark"]["spearman"]) / 2)
    assert "2 of 7 tasks" in part["avg_note"] and "avg_note" not in full
    with pytest.raises(EmbedkitError, match="geometry suite always uses STS-B"):
        embedkit.evaluate(tiny, suite="geometry", data_dir=data_root, tasks=["STS12"])


def test_cli_tasks_flag_and_unknown_task(tiny_model_path, data_root, tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["eval", tiny_model_path, "--data-dir", str(data_root), "--tasks", "STS12,stsb", "-o", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((out / "results.json").read_text())
    assert list(saved["sts"]["tasks"]) == ["STS12", "STSBenchmark"]
    assert "avg (2 tasks)" in printed and "not comparable with a 7-task STS avg" in printed
    bad = tmp_path / "bad"
    assert main(["eval", tiny_model_path, "--data-dir", str(data_root), "--tasks", "STS12,STSX", "-o", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'STSX'" in err and "SICK-R" in err and not bad.exists()


# --- encoding length ----------------------------------------------------------------------------------------


def test_model_max_length_is_the_position_table_not_max_seq_length(tiny_model_path):
    from sentence_transformers import SentenceTransformer

    from embedkit.encoding import model_max_length

    model = SentenceTransformer(tiny_model_path, device="cpu")  # 128 position embeddings
    model.max_seq_length = 16  # what a training run sets (sentence-transformers copies it into the tokenizer)
    assert model[0].tokenizer.model_max_length == 16
    assert model_max_length(model) == 128


def test_suite_encodes_up_to_the_model_maximum_not_the_training_length(tiny_model_path, data_root):
    from sentence_transformers import SentenceTransformer

    from embedkit.encoding import encode

    model = SentenceTransformer(tiny_model_path, device="cpu")
    model.max_seq_length = 4  # a training-time cut that would truncate every sentence here
    default = embedkit.evaluate(model, suite="sts", data_dir=data_root, batch_size=8, tasks="STSB")
    assert model.max_seq_length == 4  # restored after the suite
    assert default["encoding"]["max_seq_length"] == 128 and "model's maximum" in default["encoding"]["truncation"]
    assert default["model"]["max_seq_length"] == 4  # the model's own setting, recorded apart
    cut = embedkit.evaluate(model, suite="sts", data_dir=data_root, batch_size=8, tasks="STSB", max_seq_length=4)
    assert cut["encoding"]["max_seq_length"] == 4 and cut["encoding"]["truncation"].startswith("asked")
    # direct computation: whole sentences (max_seq_length 128), cosine, Spearman against gold
    from scipy.stats import spearmanr

    pairs = sts.load_suite(data_root, tasks=("STSBenchmark",)).tasks["STSBenchmark"]
    model.max_seq_length = 128
    a = encode(model, pairs.sentences1, normalize=True, dtype=np.float64)
    b = encode(model, pairs.sentences2, normalize=True, dtype=np.float64)
    whole = 100 * spearmanr((a * b).sum(axis=1), pairs.scores).statistic
    assert default["tasks"]["STSBenchmark"]["spearman"] == pytest.approx(whole, abs=1e-9)
    assert cut["tasks"]["STSBenchmark"]["spearman"] != pytest.approx(whole, abs=1e-6)
    with pytest.raises(EmbedkitError, match=r"max_seq_length 1000: longer than the model can read \(128 tokens\)"):
        embedkit.evaluate(model, suite="sts", data_dir=data_root, tasks="STSB", max_seq_length=1000)


def test_recipe_eval_length_needs_the_sts_suite(tmp_path, sentences_file):
    from test_recipe import good, write_recipe

    from embedkit.errors import RecipeError
    from embedkit.validate import load_recipe

    text = good(tmp_path, sentences_file) + "eval:\n  suite: stsb-dev\n  max_seq_length: 512\n"
    with pytest.raises(RecipeError, match=r"r\.yaml:1[0-9]: eval.*max_seq_length applies to the STS suite"):
        load_recipe(write_recipe(tmp_path, text))
    ok = good(tmp_path, sentences_file) + "eval:\n  suite: sts\n  max_seq_length: 512\n"
    recipe = load_recipe(write_recipe(tmp_path, ok, "ok.yaml"))
    assert recipe.eval.max_seq_length == 512


# --- progress bar -------------------------------------------------------------------------------------------


def test_progress_bar_counts_every_distinct_sentence_and_is_off_by_default(tiny, monkeypatch, capsys):
    import embedkit.encoding as enc

    made = []

    class Recorder:
        def __init__(self, total, disable, **kw):
            self.total, self.disable, self.n = total, disable, 0
            made.append(self)

        def update(self, n):
            self.n += n

        def close(self):
            pass

    texts = [f"sentence {i % 30} " + "word " * (i % 9) for i in range(90)] + ["sentence 0 "]  # one repeated
    unique = len(set(texts))
    monkeypatch.setattr(enc, "tqdm", Recorder)
    for show, disabled in ((True, False), (False, True), (None, True)):  # None: pytest's stderr is no terminal
        enc.encode(tiny, texts, batch_size=4, show_progress_bar=show)
        assert made[-1].total == unique and made[-1].n == unique and made[-1].disable is disabled
    monkeypatch.undo()
    enc.encode(tiny, texts, batch_size=4, show_progress_bar=True)
    assert "encoding" in capsys.readouterr().err  # a real bar on stderr when asked
    enc.encode(tiny, texts, batch_size=4, show_progress_bar=None)  # auto: stderr is not a terminal under pytest
    enc.encode(tiny, texts, batch_size=4)
    assert capsys.readouterr().err == ""


# --- charts -------------------------------------------------------------------------------------------------

REFERENCE = {"STS12": 72.37, "STS13": 80.60, "STS14": 75.59, "STS15": 85.39, "STS16": 78.99,
             "STSBenchmark": 82.03, "SICK-R": 77.15}


def test_sts_chart_zooms_names_the_model_and_carries_no_numbers():
    res = {"tasks": {t: {"spearman": v} for t, v in REFERENCE.items()}, "avg": 78.87,
           "model": {"name": "sentence-transformers/all-MiniLM-L6-v2"}, "encoding": {"max_seq_length": 512}}
    ax = sts_figure(res).axes[0]
    lo, hi = ax.get_ylim()
    assert 65 <= lo < 72.37 and 85.39 < hi <= 90  # zoomed: not 0-100
    assert "all-MiniLM-L6-v2" in ax.get_title() and "512 tokens" in ax.get_title()
    assert not ax.texts  # no numbers on the bars (they are in the table)
    assert [t.get_text() for t in ax.get_xticklabels()][-1] == "Avg"
    part = {"tasks": {"STS12": {"spearman": 72.37}}, "avg": 72.37, "model": {"name": "m"}}
    assert [t.get_text() for t in sts_figure(part).axes[0].get_xticklabels()] == ["STS12", "Avg (1 tasks)"]
    assert _axis_range([72.37, 85.39]) == (70.0, 90.0) and _axis_range([1.0, 99.5]) == (0.0, 100.0)


def test_compare_reads_what_changed_as_a_minus_b_in_table_and_chart():
    """``eval A --compare B``: the difference is A − B (what changed from B to A, e.g. a trained model against its
    base), said in the header; an A that scores higher reads +, in green on the chart."""
    from embedkit.evaluation.report import sts_table

    a = {"tasks": {"STS12": {"spearman": 80.0, "n": 10}, "STSBenchmark": {"spearman": 70.0, "n": 10}}, "avg": 75.0}
    b = {"tasks": {"STS12": {"spearman": 79.73, "n": 10}, "STSBenchmark": {"spearman": 71.0, "n": 10}}, "avg": 75.365}
    table = sts_table(a, b, ("trained", "base")).splitlines()
    assert "A = trained, B = base; A - B = what changed from B to A (+: A scores higher)" in table
    header = next(line for line in table if line.startswith("task"))
    assert header.endswith("A           B     A - B")
    rows = {line.split()[0]: line.split()[-1] for line in table[2:] if line.split() and line.split()[0] in a["tasks"]}
    assert rows == {"STS12": "+0.27", "STSBenchmark": "-1.00"}
    assert table[-1].split()[-1] == "-0.36"  # the average row: 75.0 − 75.365

    ax = sts_figure(a, b, ("trained", "base")).axes[0]
    marks = {t.get_text(): t.get_color() for t in ax.texts}
    assert marks == {"+0.27": "#2a7f2a", "-1.00": "#b22222", "-0.36": "#b22222"}  # green: A higher; red: lower
    assert "A − B above the bars" in ax.get_title()


def _history(steps_values, best=None):
    log = [{"loss": 1.0 / s, "step": s, "epoch": s / 100} for s in range(1, 7)]
    log += [{"eval_stsb-dev_spearman": v, "eval_stsb-dev_pearson": v - 1, "step": s} for s, v in steps_values]
    log.append({"train_runtime": 1.0, "step": 6})
    return {"train": {"log_history": log, "best_dev": {"metric": "eval_stsb-dev_spearman", "value": 0},
                      "best_checkpoint": best},
            "dev": {"name": "stsb-dev", "before": {"spearman": 50.0}}}


def test_dev_history_reads_the_trainers_log():
    hist = dev_history(_history([(2, 61.0), (4, 64.5), (6, 63.0)], best="/o/checkpoints/checkpoint-4"))
    assert hist["steps"] == [2, 4, 6] and hist["values"] == [61.0, 64.5, 63.0]
    assert hist["best_step"] == 4 and hist["before"] == 50.0 and hist["label"] == "stsb-dev Spearman"
    assert hist["loss_steps"] == [1, 2, 3, 4, 5, 6]
    assert dev_history({"train": {"log_history": [{"loss": 1.0, "step": 1}]}}) is None  # no dev set
    fig = training_figure(hist, "run")
    assert "stsb-dev Spearman" in fig.axes[0].get_title() and len(fig.axes) == 2


def test_training_results_from_results_json_else_newest_checkpoint(tmp_path):
    assert load_training_results(tmp_path) is None
    for step in (9, 10):
        ck = tmp_path / "checkpoints" / f"checkpoint-{step}"
        ck.mkdir(parents=True)
        state = {"log_history": [{"eval_stsb-dev_spearman": float(step), "step": step}]}
        (ck / "trainer_state.json").write_text(json.dumps(state))
    assert dev_history(load_training_results(tmp_path))["steps"] == [10]  # 10 after 9, not in name order
    (tmp_path / "results.json").write_text(json.dumps(_history([(3, 70.0)])))
    assert dev_history(load_training_results(tmp_path))["values"] == [70.0]


def test_eval_of_a_training_output_draws_the_dev_curve(tiny_model_path, data_root, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_model_path, run)
    (run / "results.json").write_text(json.dumps(_history([(2, 61.0), (4, 64.5)])))
    out = tmp_path / "ev"
    assert main(["eval", str(run), "--data-dir", str(data_root), "--tasks", "STSB", "-o", str(out),
                 "--no-progress"]) == 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["training_chart"] == str(out / "dev-curve.png") and (out / "dev-curve.png").stat().st_size > 0
    assert (out / "sts.png").exists() and "dev-curve.png" in capsys.readouterr().out


def test_training_writes_dev_curve_and_encodes_the_suite_at_the_recipe_length(tmp_path, tiny_model_path,
                                                                             sentences_file, data_root):
    from test_train import tiny_recipe

    from embedkit.training.run import train

    dev = tmp_path / "dev.csv"
    shutil.copy(data_root / "sts" / "stsbenchmark" / "sts-test.csv", dev)
    recipe = tiny_recipe(tmp_path, tiny_model_path, sentences_file, extra="eval: {suite: sts, max_seq_length: 12}")
    text = recipe.read_text().replace("dev: null", f"dev: {{path: {dev}}}")
    recipe.write_text(text)
    results = train(str(recipe), data_dir=str(data_root))
    out = tmp_path / "out"
    assert (out / "dev-curve.png").stat().st_size > 0
    assert results["sts"]["encoding"]["max_seq_length"] == 12
    hist = dev_history(json.loads((out / "results.json").read_text()))
    assert hist["steps"] == [3, 6]


# --- SICK-R: the test split wherever the data came from -----------------------------------------------------


def _sick_file(path: Path, n: int) -> Path:
    rows = [SICK_HEADER] + [f"{i + 1}\tA man {i} sings\tA person {i % 7} sings\t{1 + i % 5}\tNEUTRAL"
                            for i in range(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_local_test_split_refuses_the_9927_pair_union(tmp_path):
    _sick_file(tmp_path / "sick" / "SICK_test_annotated.txt", SICK_ALL_PAIRS)
    with pytest.raises(DataError, match=r"SICK_test_annotated\.txt: holds all 9,927 SemEval pairs .* 4,927-pair"):
        sts.load_local(tmp_path, ("SICK-R",))


def test_local_test_split_of_4927_pairs_has_no_deviation_fewer_is_flagged(tmp_path):
    _sick_file(tmp_path / "a" / "sick" / "SICK_test_annotated.txt", SICK_TEST_PAIRS)
    data = sts.load_local(tmp_path / "a", ("SICK-R",))
    assert len(data.tasks["SICK-R"]) == 4927 and data.deviations == []
    _sick_file(tmp_path / "b" / "sick" / "SICK_test_annotated.txt", 30)
    data = sts.load_local(tmp_path / "b", ("SICK-R",))
    assert len(data.deviations) == 1 and "30 pairs, not SentEval's 4,927" in data.deviations[0]


def test_all_split_reads_the_three_files_or_the_fetched_union(tmp_path):
    for name, n in (("SICK_train.txt", 5), ("SICK_trial.txt", 2), ("SICK_test_annotated.txt", 3)):
        _sick_file(tmp_path / "three" / name, n)
    both = sts.read_sick_split(tmp_path / "three", "all")
    assert len(both) == 10 and list(both.subsets) == ["SICK_train.txt", "SICK_trial.txt", "SICK_test_annotated.txt"]
    _sick_file(tmp_path / "one" / sts.SICK_ALL_FILE, 12)
    assert len(sts.read_sick_split(tmp_path / "one", "all")) == 12
    with pytest.raises(DataError, match="SICK_test_annotated.txt: SICK file not found"):
        sts.read_sick_split(tmp_path / "one", "test")  # the union is never taken for the test split


class FakeSplit(dict):
    """A datasets split: columns by name, ``column_names``."""

    _fingerprint = "fp"

    @property
    def column_names(self):
        return list(self)


def _fake_sick(n_train: int, n_test: int, with_field: bool = True) -> FakeSplit:
    sets = ["TRAIN"] * n_train + ["TEST"] * n_test
    cols = {"pair_ID": list(range(1, len(sets) + 1)), "sentence_A": [f"a{i}" for i in range(len(sets))],
            "sentence_B": [f"b{i}" for i in range(len(sets))],
            "relatedness_score": [1.0 + i % 5 for i in range(len(sets))]}
    if with_field:
        cols["SemEval_set"] = sets
    return FakeSplit(cols)


def test_hub_sick_r_is_the_semeval_test_split_selected_by_its_field():
    calls = []

    def loader(repo, revision, split):
        calls.append((repo, revision, split))
        if repo == sts.HUB_SICK_TEST[0]:
            return _fake_sick(3, SICK_TEST_PAIRS)  # a split that also holds train rows: only TEST ones are kept
        return FakeSplit(sentence1=["a", "b", "c"], sentence2=["d", "e", "f"], score=[1, 2, 3])

    data = sts.load_hub(loader=loader)
    assert (sts.HUB_SICK_TEST[0], None, "test") in calls
    assert "mteb/sickr-sts" not in [c[0] for c in calls]  # its 9,927 pairs carry no split
    sick = data.tasks["SICK-R"]
    assert len(sick) == SICK_TEST_PAIRS and sick.sentences1[0] == "a3" and sick.scores[0] == 1.0 + 3 % 5
    assert not any("SICK-R" in d for d in data.deviations)


def test_hub_sick_r_refuses_the_union_and_flags_a_smaller_release():
    with pytest.raises(DataError, match="holds all 9,927 SemEval pairs"):
        sts.hub_sick_test(_fake_sick(0, SICK_ALL_PAIRS, with_field=False), "some/sick")
    pairs, note = sts.hub_sick_test(_fake_sick(10, 4906), "RobZamp/sick")
    assert len(pairs) == 4906 and "4,906 pairs, not SentEval's 4,927" in note


def test_fetch_names_the_sick_files_by_what_they_hold(tmp_path):
    from test_fetch_public import fake_load_dataset, load_script

    def loader(name, split):
        if name == "RobZamp/sick":
            return _fake_sick(2, 5)
        return fake_load_dataset(name, split)

    written = load_script().fetch(tmp_path, load_dataset=loader)
    test = read_sick(tmp_path / "sts" / "sick" / "SICK_test_annotated.txt")
    assert test.sentences1 == [f"a{i}" for i in range(2, 7)]  # the TEST rows only
    union = read_sick(tmp_path / "sts" / "sick" / sts.SICK_ALL_FILE)
    assert len(union) == 2  # fake_load_dataset's two rows stand in for mteb's 9,927
    assert tmp_path / "sts" / "sick" / sts.SICK_ALL_FILE in written
