"""``embedkit sweep``: the grid is the product of the axes' values times the seeds; every cell is validated before
any run starts (a bad key or value is one line naming the cell); finished cells are skipped, stopped ones resumed;
the tables hold mean ± sample sd over the seeds; and the geometry's tolerance (Wang & Liu 2021) is checked against
a hand computation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from embedkit import sweep as sweep_mod
from embedkit.cli import main
from embedkit.errors import EmbedkitError, RecipeError
from embedkit.sweep import (
    FINISHED,
    NEW,
    RESTART,
    RESUME,
    Axis,
    cell_state,
    expand,
    parse_axis,
    parse_grid,
    split_values,
    sweep,
)
from embedkit.validate import load_recipe


def recipe_file(tmp_path: Path, model: str, data: Path, model_keys: dict | None = None, **training) -> Path:
    """2 steps of unsupervised SimCSE on the tiny BERT (checkpoint at step 2), no dev set, no final evaluation."""
    recipe = {
        "description": "tiny sweep",
        "model": {"name": model, "pooling": "cls", "mlp_only_train": True, "max_seq_length": 16, **(model_keys or {})},
        "data": {"train": {"path": str(data)}, "dev": None},
        "method": {"name": "simcse-unsup", "temperature": 0.05},
        "training": {"batch_size": 8, "max_steps": 2, "save_steps": 2, "learning_rate": 1e-3, "logging_steps": 1,
                     "seed": 42, "report_to": [], **training},
        "eval": {"suite": "none", "before": False},
        "output": {"dir": str(tmp_path / "unused")},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


class InlinePool:
    """Stands in for the sweep's spawned process pool: runs each task at once in this process (so a test's
    monkeypatched ``train`` / ``setup`` is the one called) and records how the pool was asked for."""

    made: list[tuple[int, dict]] = []

    def __init__(self, workers: int, **kwargs) -> None:
        InlinePool.made.append((workers, kwargs))

    def __enter__(self) -> InlinePool:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def submit(self, fn, *args):
        from concurrent.futures import Future

        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as err:  # noqa: BLE001 - the future carries it, as a worker's would
            future.set_exception(err)
        return future


@pytest.fixture(autouse=True)
def inline_pool(request, monkeypatch):
    """Every test but the real multi-process ones runs the sweep's cells in this process (see InlinePool)."""
    if "own_process" not in request.node.name:
        InlinePool.made.clear()
        monkeypatch.setattr(sweep_mod, "ProcessPoolExecutor", InlinePool)


def no_training(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the sweep trained although it should not have")

    monkeypatch.setattr(sweep_mod, "train", refuse)


# ---------------------------------------------------------------------------------------------------------
# The grid


@pytest.mark.parametrize("text, values", [
    ("0.02,0.05,0.1", ["0.02", "0.05", "0.1"]),
    ("0.02, 0.05", ["0.02", "0.05"]),
    ("[384,128],[384,64]", ["[384,128]", "[384,64]"]),
    ("{a: 1, b: 2},{a: 3}", ["{a: 1, b: 2}", "{a: 3}"]),
    ("'x,y',z", ["'x,y'", "z"]),
    ("3e-5", ["3e-5"]),
])
def test_values_split_on_top_level_commas_only(text, values):
    assert split_values(text) == values


def test_an_axis_reads_each_value_as_yaml_and_refuses_repeats():
    assert parse_axis("method.temperature=0.02,0.05") == Axis("method.temperature", ("0.02", "0.05"))
    assert parse_axis("training.matryoshka_dims=[32,16],[32]").values == ("[32,16]", "[32]")
    with pytest.raises(RecipeError, match="takes the value 0.050 twice"):
        parse_axis("method.temperature=0.05,0.050")  # the same number written twice
    with pytest.raises(RecipeError, match="an empty value"):
        parse_axis("method.temperature=0.05,,0.1")
    with pytest.raises(RecipeError, match="expected key.path=value"):
        parse_axis("method.temperature")
    with pytest.raises(RecipeError, match="not a dotted key path"):
        parse_axis("method..temperature=0.1")


def test_the_grid_is_the_product_of_the_axes_times_the_seeds():
    axes = parse_grid(["method.temperature=0.02,0.05", "model.pooling=cls,mean", "training.max_steps=5"], (2, []))
    cells = expand(axes, [42, 43])
    assert len(cells) == 2 * 2 * 2
    assert [c.name for c in cells[:4]] == ["temperature=0.02_pooling=cls_seed=42",
                                           "temperature=0.02_pooling=cls_seed=43",
                                           "temperature=0.02_pooling=mean_seed=42",
                                           "temperature=0.02_pooling=mean_seed=43"]
    assert cells[-1].name == "temperature=0.05_pooling=mean_seed=43"
    assert cells[0].label == "temperature=0.02, pooling=cls" == cells[1].label  # seeds share a row
    # the one-value axis is a fixed override of every run, not part of the names
    assert cells[0].overrides(Path("/s/runs")) == [
        "method.temperature=0.02", "model.pooling=cls", "training.max_steps=5", "training.seed=42",
        "output.dir=/s/runs/temperature=0.02_pooling=cls_seed=42"]
    # two keys with the same last part are named in full; without --seeds no seed in the name
    both = expand(parse_grid(["method.temperature=0.1,0.2", "objective.temperature=1,2"], None), [None])
    assert both[0].name == "method.temperature=0.1_objective.temperature=1"


@pytest.mark.parametrize("specs, seeds, message", [
    (["method.temperature=0.1", "method.temperature=0.2"], None, "method.temperature is given twice"),
    (["output.dir=a,b"], None, "the sweep puts each run in"),
    (["training.seed=1,2"], (3, []), "training.seed and --seeds: choose one"),
])
def test_grid_refusals_that_need_no_recipe(specs, seeds, message):
    with pytest.raises(RecipeError, match=message):
        parse_grid(specs, seeds)


def test_two_values_that_would_share_a_folder_are_refused():
    with pytest.raises(RecipeError, match="get the same folder name"):
        expand(parse_grid(["data.train.path=a/b,a_b"], None), [None])


# ---------------------------------------------------------------------------------------------------------
# Refusals before any run


@pytest.mark.parametrize("spec, expected", [
    ("method.temperatur=0.05,0.1", "sweep cell temperatur=0.05_seed=42: command line: method.temperatur: unknown key"),
    ("method.temperature=0.05,-1", "sweep cell temperature=-1_seed=42: command line: method.temperature: Input "
                                   "should be greater than 0"),
    ("training.batch_size=8,many", "sweep cell batch_size=many_seed=42: command line: training.batch_size: Input "
                                   "should be a valid integer"),
    ("method.temperature=0.05,,0.1", "an empty value"),
])
def test_a_bad_sweep_spec_is_one_line_before_any_run(tmp_path, tiny_model_path, sentences_file, monkeypatch, capsys,
                                                     spec, expected):
    no_training(monkeypatch)
    recipe = recipe_file(tmp_path, tiny_model_path, sentences_file)
    out = tmp_path / "sweep"
    assert main(["sweep", str(recipe), spec, "--seeds", "2", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("embedkit: error: ") and expected in err, err
    assert len(err.splitlines()) == 1, err
    assert not out.exists(), "nothing is written before every cell is valid"


def test_a_bad_seeds_or_parallel_value_is_one_line(tmp_path, tiny_model_path, sentences_file, monkeypatch, capsys):
    no_training(monkeypatch)
    recipe = recipe_file(tmp_path, tiny_model_path, sentences_file)
    assert main(["sweep", str(recipe), "method.temperature=0.1", "--seeds", "0", "-o", str(tmp_path / "s")]) == 2
    assert "--seeds 0: expected at least 1 seed" in capsys.readouterr().err
    assert main(["sweep", str(recipe), "method.temperature=0.1", "--parallel", "0", "-o", str(tmp_path / "s")]) == 2
    assert "--parallel 0: expected a number of runs at a time" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# Skipping, collecting, the tables and the chart (finished runs written by hand: no training)


def finished_run(folder: Path, recipe, sts_avg: float, geometry: dict[str, float] | None) -> None:
    """A finished run folder in an earlier sweep's DIR/runs (the sweep's manifest claims DIR)."""
    folder.mkdir(parents=True)
    manifest = folder.parent.parent / ".embedkit-output.json"
    if not manifest.exists():
        manifest.write_text(json.dumps({"command": "sweep", "files": []}))
    (folder / ".embedkit-run.json").write_text("{}")
    sts = {"avg": sts_avg, **({"geometry": geometry} if geometry else {})}
    results = {"recipe": recipe.model_dump(mode="json"), "sts": sts, "dev": {}, "train": {"global_step": 2},
               "seconds": 1.0}
    (folder / "results.json").write_text(json.dumps(results))


def test_finished_runs_are_skipped_and_tabled_as_mean_and_sample_sd(tmp_path, tiny_model_path, sentences_file,
                                                                      monkeypatch):
    no_training(monkeypatch)
    recipe = recipe_file(tmp_path, tiny_model_path, sentences_file)
    out = tmp_path / "sweep"
    numbers = {  # (temperature, seed) -> STS avg, uniformity, tolerance
        ("0.05", 42): (70.0, -2.0, 0.80), ("0.05", 43): (72.0, -2.2, 0.70), ("0.05", 44): (74.0, -2.4, 0.60),
        ("0.5", 42): (60.0, -1.0, 0.90), ("0.5", 43): (61.0, -1.0, 0.90), ("0.5", 44): (62.0, -1.0, 0.90),
    }
    for (t, seed), (avg, uni, tol) in numbers.items():
        cell = f"temperature={t}_seed={seed}"
        resolved = load_recipe(str(recipe), [f"method.temperature={t}", f"training.seed={seed}",
                                             f"output.dir={out / 'runs' / cell}"], check_data=False)
        finished_run(out / "runs" / cell, resolved, avg,
                     {"alignment": 2 - 2 * tol, "uniformity": uni, "tolerance": tol, "anisotropy": 0.1})
    result = sweep(str(recipe), ["method.temperature=0.05,0.5"], out, seeds=3)
    assert not result.failed

    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [r["method.temperature"] for r in rows] == ["0.05", "0.5"] and rows[0]["runs"] == "3"
    assert float(rows[0]["sts_avg_mean"]) == pytest.approx(72.0)
    assert float(rows[0]["sts_avg_sd"]) == pytest.approx(2.0)  # sample sd (n − 1) of 70, 72, 74
    assert float(rows[0]["uniformity_sd"]) == pytest.approx(0.2)
    assert float(rows[1]["tolerance_mean"]) == pytest.approx(0.9) and float(rows[1]["tolerance_sd"]) == 0
    md = (out / "sweep.md").read_text()
    assert "| `0.05` | 3 | 72.00 ± 2.00 |" in md and "| `0.5` | 3 | 61.00 ± 1.00 |" in md
    assert "sample standard deviation (n − 1)" in md
    per_run = list(csv.DictReader((out / "runs.csv").open()))
    assert len(per_run) == 6 and per_run[0]["seed"] == "42" and per_run[0]["run"] == "runs/temperature=0.05_seed=42"
    png = (out / "sweep.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    manifest = json.loads((out / ".embedkit-output.json").read_text())
    assert manifest["command"] == "sweep" and "sweep.md" in manifest["files"]
    # a rerun updates the same folder, still training nothing
    again = sweep(str(recipe), ["method.temperature=0.05,0.5"], out, seeds=3)
    assert [r.stat("sts_avg")[0] for r in again.rows] == [72.0, 61.0]


def test_table_only_tables_the_finished_runs_and_trains_nothing(tmp_path, tiny_model_path, sentences_file,
                                                               monkeypatch):
    recipe = recipe_file(tmp_path, tiny_model_path, sentences_file)
    out = tmp_path / "sweep"
    for seed, avg in ((42, 70.0), (43, 74.0)):  # seed 44 never ran
        cell = f"temperature=0.05_seed={seed}"
        resolved = load_recipe(str(recipe), ["method.temperature=0.05", f"training.seed={seed}",
                                             f"output.dir={out / 'runs' / cell}"], check_data=False)
        finished_run(out / "runs" / cell, resolved, avg, None)
    monkeypatch.setattr(sweep_mod, "run_all", lambda *a, **k: pytest.fail("--table-only trained a run"))
    assert main(["sweep", str(recipe), "method.temperature=0.05,0.5", "--seeds", "3", "-o", str(out),
                 "--table-only"]) == 0
    md = (out / "sweep.md").read_text()
    assert "| `0.05` | 2 (1 not finished) | 72.00 ± 2.83 |" in md, md
    assert "| `0.5` | 0 (3 not finished) | – |" in md, md
    assert not (out / "runs" / "temperature=0.05_seed=44").exists()


def test_a_finished_run_of_another_recipe_is_refused_not_reused(tmp_path, tiny_model_path, sentences_file,
                                                                 monkeypatch):
    no_training(monkeypatch)
    recipe = recipe_file(tmp_path, tiny_model_path, sentences_file)
    out = tmp_path / "sweep"
    cell = "temperature=0.05"
    other = load_recipe(str(recipe), ["method.temperature=0.05", "training.learning_rate=0.5",
                                      f"output.dir={out / 'runs' / cell}"], check_data=False)
    finished_run(out / "runs" / cell, other, 70.0, None)
    with pytest.raises(RecipeError, match=r"sweep cell temperature=0.05: .* finished with another recipe "
                                          r"\(training.learning_rate \(0.5 -> 0.001\)\)"):
        sweep(str(recipe), ["method.temperature=0.05,0.1"], out)
    assert not (out / "sweep.md").exists()


def test_cell_states(tmp_path):
    run = tmp_path / "run"
    assert cell_state(run) == NEW
    run.mkdir()
    assert cell_state(run) == NEW
    (run / ".embedkit-run.json").write_text("{}")  # killed before its first checkpoint
    assert cell_state(run) == RESTART
    ckpt = run / "checkpoints" / "checkpoint-2"
    ckpt.mkdir(parents=True)
    assert cell_state(run) == RESTART, "a checkpoint without its manifest is incomplete"
    (ckpt / "embedkit_checkpoint.json").write_text("{}")
    assert cell_state(run) == RESUME
    (run / "results.json").write_text("{}")
    assert cell_state(run) == FINISHED


# ---------------------------------------------------------------------------------------------------------
# Training: every cell an ordinary run; a stopped one is resumed by the rerun


def test_sweep_trains_each_cell_and_a_rerun_resumes_the_stopped_one(tmp_path, tiny_model_path, sentences_file,
                                                                     monkeypatch):
    from transformers import TrainerCallback

    from embedkit.training import run as run_mod

    recipe = recipe_file(tmp_path, tiny_model_path, sentences_file, max_steps=4)
    out = tmp_path / "sweep"
    real_setup, real_train = run_mod.setup, sweep_mod.train
    calls: list[tuple[str, bool, bool]] = []

    class Stop(TrainerCallback):  # the 0.1 run stops at step 3, after its checkpoint at step 2
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise RuntimeError("stopped")

    def stop_one(recipe, train_data, data_dir, work, *args, **kwargs):
        run = real_setup(recipe, train_data, data_dir, work, *args, **kwargs)
        if "temperature=0.1" in str(work):
            run.trainer.add_callback(Stop())
        return run

    def spy(recipe, overrides, **kwargs):
        calls.append((overrides[-1].rsplit("/", 1)[-1], kwargs["resume"], kwargs["overwrite"]))
        return real_train(recipe, overrides, **kwargs)

    monkeypatch.setattr(run_mod, "setup", stop_one)
    monkeypatch.setattr(sweep_mod, "train", spy)
    with pytest.raises(EmbedkitError, match=r"sweep: 1 of 2 runs failed \(temperature=0.1: RuntimeError: stopped\); "
                                            r"run the same command again"):
        sweep(str(recipe), ["method.temperature=0.05,0.1"], out, progress=False)
    assert calls == [("temperature=0.05", False, False), ("temperature=0.1", False, False)]
    first = out / "runs" / "temperature=0.05"
    assert (first / "results.json").is_file() and (first / ".embedkit-run.json").is_file()
    stopped = out / "runs" / "temperature=0.1"
    assert not (stopped / "results.json").exists() and cell_state(stopped) == RESUME
    assert "| `0.1` | 0 (1 not finished) |" in (out / "sweep.md").read_text()

    calls.clear()
    monkeypatch.setattr(run_mod, "setup", real_setup)
    result = sweep(str(recipe), ["method.temperature=0.05,0.1"], out, progress=False)
    assert calls == [("temperature=0.1", True, False)], "the finished run is skipped, the stopped one resumed"
    done = json.loads((stopped / "results.json").read_text())
    assert done["train"]["global_step"] == 4 and done["recipe"]["method"]["temperature"] == 0.1
    steps = [e["step"] for e in done["train"]["log_history"] if "loss" in e]
    assert steps == [1, 2, 3, 4], "resumed from checkpoint-2: steps 3 and 4 trained once more"
    assert [len(r.runs) for r in result.rows] == [1, 1]
    # One at a time (the default) is one spawned worker process per run, as --parallel's: a run's memory goes
    # back when it ends (in the sweep's own process, each MiniLM run held on to ~3 GB).
    workers, kwargs = InlinePool.made[-1]
    assert workers == 1 and kwargs["max_tasks_per_child"] == 1
    assert kwargs["mp_context"].get_start_method() == "spawn"


def test_a_finished_run_whose_recipe_left_settings_to_the_model_is_skipped(tmp_path, tiny_model_path,
                                                                          sentences_file):
    """pooling and dropout null (keep the model's: the shipped MiniLM recipes): training resolves them, and
    results.json records the resolved values; a rerun still finds the run's recipe unchanged and skips it."""
    recipe = recipe_file(tmp_path, tiny_model_path, sentences_file, {"pooling": None, "mlp_only_train": False,
                                                                     "dropout": None})
    out = tmp_path / "sweep"
    sweep(str(recipe), ["method.temperature=0.05,0.1"], out, progress=False)
    run = out / "runs" / "temperature=0.05"
    resolved = json.loads((run / "results.json").read_text())["recipe"]["model"]
    assert resolved["pooling"] is not None  # what the rerun must not read as a change
    stamp = (run / "results.json").stat().st_mtime_ns
    result = sweep(str(recipe), ["method.temperature=0.05,0.1"], out, progress=False)
    assert (run / "results.json").stat().st_mtime_ns == stamp and [len(r.runs) for r in result.rows] == [1, 1]


def test_runs_record_geometry_with_tolerance_in_results_and_card_and_the_sweep_charts_it(
        tmp_path, tiny_model_path, sentences_file):
    """A training run's final STS evaluation records the STS-B geometry (tolerance included) in results.json and
    the card; the sweep tables it and draws uniformity against tolerance (hand-built STS files: fast)."""
    from test_eval_data import make_sts_dir

    data_root, _ = make_sts_dir(tmp_path / "stsdata", n_extra=20)
    recipe = recipe_file(tmp_path, tiny_model_path, sentences_file, max_steps=1)
    out = tmp_path / "sweep"
    result = sweep(str(recipe), ["method.temperature=0.05,0.5", "eval.suite=sts"], out, data_dir=str(data_root),
                   progress=False)
    for name in ("temperature=0.05", "temperature=0.5"):
        run = out / "runs" / name
        geo = json.loads((run / "results.json").read_text())["sts"]["geometry"]
        assert -1 <= geo["tolerance"] <= 1 and geo["tolerance_pairs"]["rule"] == "gold score >= 4"
        assert geo["tolerance_pairs"]["n"] >= geo["positives"]["n"] > 0  # ≥ 4 also holds pairs scored exactly 4
        assert f"tolerance\n{geo['tolerance']:.4f}" in (run / "README.md").read_text()
    assert all(r.stat("tolerance")[2] == 1 and r.stat("sts_avg")[2] == 1 for r in result.rows)
    assert (out / "sweep.png").read_bytes().startswith(b"\x89PNG")
    header = (out / "sweep.md").read_text().splitlines()[4]
    assert header == "| method.temperature | runs | STS avg | alignment | uniformity | tolerance |"


# ---------------------------------------------------------------------------------------------------------
# Tolerance (Wang & Liu 2021)


def test_tolerance_is_the_mean_cosine_of_pairs_scored_4_or_more():
    from embedkit.data.sts import PairSet
    from embedkit.evaluation.geometry import geometry_scores, label_tolerance, tolerance

    vec = {"a": [1.0, 0.0], "b": [3.0, 4.0], "c": [0.0, 2.0], "d": [-1.0, 0.0], "e": [1.0, 1.0]}
    pairs = PairSet("toy", ["a", "a", "c", "d"], ["b", "c", "e", "e"], [4.0, 5.0, 3.9, 4.5])
    table = {k: np.array(v) for k, v in vec.items()}
    geo = geometry_scores(pairs, table)
    # cos(a, b) = 3/5, cos(a, c) = 0, cos(d, e) = −1/√2; the 3.9 pair is left out
    by_hand = (0.6 + 0.0 - 1 / np.sqrt(2)) / 3
    assert geo["tolerance"] == pytest.approx(by_hand, abs=1e-12)
    assert geo["tolerance_pairs"] == {"source": "toy", "rule": "gold score >= 4", "n": 3}
    # on the same pairs, alignment (α = 2) = 2 − 2 × tolerance: alignment's pairs are those scored above 4
    assert geo["alignment"] == pytest.approx(2 - 2 * (0.0 - 1 / np.sqrt(2)) / 2, abs=1e-9)
    assert np.isnan(tolerance(np.zeros((0, 2)), np.zeros((0, 2))))
    # a labelled set: every same-label pair once; class 0 = {a, b, c} (3 pairs), class 1 = {d, e} (1 pair)
    x = np.array([vec[k] for k in "abcde"])
    assert label_tolerance(x, [0, 0, 0, 1, 1]) == pytest.approx((0.6 + 0.0 + 0.8 - 1 / np.sqrt(2)) / 4, abs=1e-12)


def test_the_card_and_the_eval_table_show_tolerance():
    from embedkit.card import render_sections
    from embedkit.evaluation.report import geometry_table

    geo = {"alignment": 0.3, "uniformity": -2.5, "tolerance": 0.85, "anisotropy": 0.1,
           "positives": {"n": 10, "rule": "gold score > 4"}, "sentences": {"n": 20},
           "tolerance_pairs": {"n": 12, "rule": "gold score >= 4"}}
    assert "tolerance  0.8500  (mean cosine of 12 STS-B pairs, gold score >= 4" in geometry_table(geo)
    results = {"sts": {"protocol": "senteval-sts-all", "tasks": {"STSBenchmark": {"spearman": 80.0, "pearson": 79.0,
                                                                                   "n": 1379}},
                       "avg": 80.0, "geometry": geo}}
    card = render_sections(results, [])
    assert "tolerance\n0.8500 (mean cosine of pairs scored ≥ 4" in card and "uniformity -2.5000" in card


@pytest.mark.slow
def test_parallel_runs_each_cell_in_its_own_process(tmp_path, tiny_model_path, sentences_file, capsys):
    """--parallel 2 through the command line: two worker processes (spawned: each imports torch afresh, hence
    slow), the same run folders and tables as one at a time."""
    recipe = recipe_file(tmp_path, tiny_model_path, sentences_file)
    out = tmp_path / "sweep"
    assert main(["sweep", str(recipe), "method.temperature=0.05,0.1", "--seeds", "2", "--parallel", "2",
                 "-o", str(out), "--no-progress"]) == 0
    names = sorted(p.name for p in (out / "runs").iterdir())
    assert names == ["temperature=0.05_seed=42", "temperature=0.05_seed=43", "temperature=0.1_seed=42",
                     "temperature=0.1_seed=43"]
    for name in names:
        results = json.loads((out / "runs" / name / "results.json").read_text())
        assert results["train"]["global_step"] == 2
        assert results["recipe"]["training"]["seed"] == int(name[-2:])
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [(r["method.temperature"], r["runs"]) for r in rows] == [("0.05", "2"), ("0.1", "2")]
    assert "| `0.05` | 2 |" in capsys.readouterr().out
