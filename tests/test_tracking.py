"""Experiment trackers (``training.report_to``) and training progress outside a terminal."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from embedkit.errors import RecipeError
from embedkit.recipe import TRACKERS
from embedkit.validate import load_recipe


def tiny(tmp_path: Path, model: str, data: Path, *, dev: Path | None = None, **training) -> dict:
    """2 steps of unsupervised SimCSE on the tiny BERT with a uniformity term; an STS-B-format dev set if given."""
    return {
        "model": {"name": model, "pooling": "cls", "mlp_only_train": True, "max_seq_length": 16},
        "data": {"train": {"path": data}, "dev": {"path": str(dev)} if dev else None},
        "method": {"name": "simcse-unsup", "temperature": 0.05},
        "objective": {"terms": [{"name": "uniformity", "weight": 0.1}]},
        "training": {"batch_size": 8, "max_steps": 2, "learning_rate": 1e-3, "logging_steps": 1, "eval_steps": 2,
                     **training},
        "eval": {"suite": "none", "before": False},
        "output": {"dir": str(tmp_path / "out")},
    }


def sts_dev(folder: Path) -> Path:
    """A 24-pair STS-B-format dev file."""
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    path = folder / "sts-dev.csv"
    path.write_text("".join(f"main-captions\tMSRvid\t2012test\t{i:04d}\t{(i * 7) % 6}.0\tthe {words[i % 12]} runs "
                            f"{i}\ta {words[(i * 5) % 12]} walks {i}\n" for i in range(24)), encoding="utf-8")
    return path


def test_every_tracker_name_is_a_transformers_integration():
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    assert set(TRACKERS) <= set(INTEGRATION_TO_CALLBACK)


def test_report_to_is_validated_with_file_line_and_key(tmp_path, tiny_model_path, sentences_file):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""model:
  name: {tiny_model_path}
data:
  train:
    path: {sentences_file}
  dev: null
method:
  name: simcse-unsup
training:
  report_to: [tensorbord]
output:
  dir: {tmp_path / 'out'}
""", encoding="utf-8")
    with pytest.raises(RecipeError, match=rf"^{recipe}:10: training\.report_to: unknown tracker 'tensorbord' "
                                          r"\(did you mean tensorboard\?\); expected one of: tensorboard, wandb"):
        load_recipe(recipe)
    missing = next((n for n in ("wandb", "comet_ml", "neptune") if importlib.util.find_spec(TRACKERS[n]) is None),
                   None)
    if missing is not None:
        with pytest.raises(RecipeError, match=rf"^command line: training\.report_to: {missing} is not installed: "
                                              rf"pip install {missing.replace('_', '-')}"):
            load_recipe(recipe, [f"training.report_to=[{missing}]"])
    assert load_recipe(recipe, ["training.report_to=[]"]).training.report_to == []
    assert load_recipe(recipe, ["training.report_to=tensorboard"]).training.report_to == ["tensorboard"]
    with pytest.raises(RecipeError, match=r"training\.report_to: expected 'auto', a tracker name or a list"):
        load_recipe(recipe, ["training.report_to=3"])


def test_tensorboard_gets_loss_terms_and_dev_score_and_no_carriage_returns(tmp_path, tiny_model_path,
                                                                          sentences_file, capfd):
    """Default (auto): TensorBoard in <output>/logs with each objective term and the dev score; stderr is not a
    terminal here, so no tqdm bar (no '\\r') but one plain progress line a logging step."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import embedkit

    embedkit.train(tiny(tmp_path, tiny_model_path, sentences_file, dev=sts_dev(tmp_path)))
    out, err = capfd.readouterr()
    assert "experiment tracking: tensorboard in " in out and "(auto: installed" in out
    assert "\r" not in err
    assert re.search(r"step 1/2 \(50%\), \d+\.\d\d s/step, eta \d+ s", err), err
    assert re.search(r"step 2/2 \(100%\), \d+\.\d\d s/step, eta 0 s", err), err
    events = EventAccumulator(str(tmp_path / "out" / "logs"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/loss_main", "train/loss_uniformity", "eval/stsb-dev_spearman"} <= tags, tags
    assert not (tmp_path / "out" / "checkpoints" / "runs").exists()  # not transformers' default folder


def test_report_to_empty_gives_no_tracker_and_no_progress_lines_when_off(tmp_path, tiny_model_path,
                                                                       sentences_file, capfd):
    import embedkit

    result = embedkit.train(tiny(tmp_path, tiny_model_path, sentences_file, report_to=[]), progress=False)
    out, err = capfd.readouterr()
    assert "experiment tracking: none; training.report_to names trackers" in out
    assert not (tmp_path / "out" / "logs").exists() and not (tmp_path / "out" / "mlruns").exists()
    assert "step 1/2" not in err and "\r" not in err  # progress=False (--no-progress): neither bar nor lines
    assert result["recipe"]["training"]["report_to"] == []


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed")
def test_mlflow_writes_a_local_store_in_the_output_folder(tmp_path, tiny_model_path, sentences_file, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    import mlflow

    import embedkit

    embedkit.train(tiny(tmp_path, tiny_model_path, sentences_file, dev=sts_dev(tmp_path), report_to=["mlflow"]))
    store = tmp_path / "out" / "mlruns"
    assert store.is_dir()
    client = mlflow.tracking.MlflowClient(tracking_uri=store.resolve().as_uri())
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1
    history = {m: [x.value for x in client.get_metric_history(runs[0].info.run_id, m)]
               for m in ("loss", "loss_main", "loss_uniformity", "eval_stsb-dev_spearman")}
    assert len(history["loss"]) == 2 and len(history["eval_stsb-dev_spearman"]) >= 1, history
    main, term = history["loss_main"], history["loss_uniformity"]
    assert [round(a + b, 3) for a, b in zip(main, term, strict=True)] == pytest.approx(
        [round(v, 3) for v in history["loss"]], abs=2e-3)
    assert not (tmp_path / "out" / "logs").exists()


def test_duration_is_rough_and_readable():
    from embedkit.training.progress import duration

    assert [duration(s) for s in (0, 40.4, 89, 90, 600, 5399, 5400, 7500)] == [
        "0 s", "40 s", "89 s", "2 min", "10 min", "90 min", "1 h 30 min", "2 h 05 min"]


# ---- one spelling per concept on the command line --------------------------------------------------------


def parse(argv: list[str]):
    from embedkit.cli import build_parser

    return build_parser().parse_args(argv)


def test_no_chart_is_the_one_spelling_and_no_plot_still_works(capsys):
    assert parse(["data", "diagnose", "r.yaml", "--no-chart"]).no_chart is True
    assert parse(["data", "diagnose", "r.yaml"]).no_chart is False
    assert parse(["eval", "m", "--no-chart"]).no_chart is True
    assert parse(["data", "diagnose", "r.yaml", "--no-plot"]).no_chart is True  # the old spelling
    assert "--no-plot is now spelled --no-chart" in capsys.readouterr().err


def test_revision_has_one_meaning_per_command(capsys):
    assert parse(["eval", "m", "--mteb-revision", "abc"]).mteb_revision == "abc"
    assert parse(["push", "out", "a/b", "--branch", "dev"]).branch == "dev"
    assert capsys.readouterr().err == ""
    assert parse(["eval", "m", "--revision", "abc"]).mteb_revision == "abc"  # old spellings keep working
    assert parse(["push", "out", "a/b", "--revision", "dev"]).branch == "dev"
    err = capsys.readouterr().err
    assert "--revision is now spelled --mteb-revision" in err and "--revision is now spelled --branch" in err
    from embedkit.cli import build_parser

    helps = build_parser()._subparsers._group_actions[0].choices
    assert "--revision" not in helps["eval"].format_help() and "--revision" not in helps["push"].format_help()


@pytest.mark.parametrize("argv", [["train", "quickstart"], ["encode", "m", "in.txt", "-o", "x.npy"],
                                  ["eval", "m"], ["data", "mine", "--pairs", "p.csv", "-o", "x.jsonl"]])
def test_no_progress_on_every_long_command(argv):
    assert parse(argv).progress is None  # a bar when stderr is a terminal
    assert parse([*argv, "--no-progress"]).progress is False
