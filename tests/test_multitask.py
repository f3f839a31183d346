"""Multi-task recipes (docs/multitask.md): ``data.train`` as a list of named sources, each with its own method.

Claims: every batch the trainer draws in a single-task run holds rows of one source only, in the order the
sampler's rule gives; ``mixed`` batches hold both sources and the loss is the weighted sum of each source's loss
on its own rows; each source's loss is logged under its name; the weighted dev score selects the checkpoint;
the sampler's order is a function of the seed (and restored on resume, two processes split one process's batch);
what a multi-task run cannot honour is refused at validation with file:line:key.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
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
    write_query_passages,
    write_scored_pairs,
)

from embedkit.errors import RecipeError
from embedkit.training.multitask import TaskBatchSampler, step_schedule
from embedkit.validate import load_recipe, load_recipe_with_data

ROOT = Path(__file__).resolve().parent.parent

SOURCES = ("sts", "qa")


def write_multitask_recipe(folder: Path, model_path: str, out_dir: Path, sampler: str = "balanced",
                           training: dict[str, Any] | None = None, sources: dict[str, dict] | None = None,
                           dev: Any = None, model: dict[str, Any] | None = None, qa_rows: int = 24) -> Path:
    """Two sources on the tiny model: ``sts`` (48 scored pairs, cosent) and ``qa`` (``qa_rows`` query/passage
    rows, contrastive with two negative columns); no dev set unless given; a loss logged at every step."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pairs, queries = write_scored_pairs(folder, 48), write_query_passages(folder, qa_rows)
    extra = sources or {}
    recipe = {
        "model": {"name": str(model_path), "pooling": "mean", "max_seq_length": 16, **(model or {})},
        "data": {"train": [
            {"name": "sts", "path": str(pairs), "method": {"name": "cosent"}, **extra.get("sts", {})},
            {"name": "qa", "path": str(queries), "method": {"name": "contrastive"}, **extra.get("qa", {})},
        ], "dev": dev},
        "method": {"name": "multitask", "sampler": sampler},
        "training": {"batch_size": 8, "max_steps": 6, "logging_steps": 1, "learning_rate": 1e-3,
                     "save_total_limit": None, "seed": 7, **(training or {})},
        "eval": {"before": False, "suite": "none"},
        "output": {"dir": str(out_dir)},
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def build_run(tmp_path: Path, model_path: str, sampler: str, **kwargs: Any):
    """The trainer :func:`embedkit.training.run.setup` builds for a two-source recipe (nothing trained)."""
    from embedkit.training.run import setup

    recipe_path = write_multitask_recipe(tmp_path / "r", model_path, tmp_path / "out", sampler, **kwargs)
    recipe, data = load_recipe_with_data(recipe_path)
    (tmp_path / "work").mkdir()
    return setup(recipe, data, None, tmp_path / "work", None)


class Recorder:
    """Wraps the trainer's collator: the source of every row of every batch it is handed."""

    def __init__(self, base: Any) -> None:
        self.base, self.batches = base, []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        self.batches.append([(row["dataset_name"], "score" in row) for row in features])
        return self.base(features)


def drawn_batches(trainer, epoch: int = 0) -> tuple[list[list[tuple[str, bool]]], list[Any]]:
    """Every batch of one epoch of the trainer's own training dataloader: each row's (source, has a score)
    as the collator saw it, and the collated batches."""
    recorder = Recorder(trainer.data_collator)
    trainer.data_collator = recorder
    loader = trainer.get_train_dataloader()
    loader.set_epoch(epoch)
    collated = list(loader)
    trainer.data_collator = recorder.base
    return recorder.batches, collated


# ----------------------------------------------------------------------------------------------------------
# Batches


@pytest.mark.parametrize("sampler", ["balanced", "proportional", "round_robin"])
def test_every_batch_the_trainer_draws_holds_rows_of_one_source(sampler: str, tmp_path: Path,
                                                                tiny_model_path: str) -> None:
    run = build_run(tmp_path, tiny_model_path, sampler)
    batches, collated = drawn_batches(run.trainer)
    sources = [{name for name, _ in rows} for rows in batches]
    assert batches and all(len(s) == 1 for s in sources), sources
    # The rows are what the source holds (cosent rows carry a score, contrastive rows none) and the collated batch
    # goes to that source's loss under its name.
    assert all(has_score == (name == "sts") for rows in batches for name, has_score in rows)
    assert [b["dataset_name"] for b in collated] == [next(iter(s)) for s in sources]
    assert all(len(rows) == 8 for rows in batches)
    # The order is the rule's: 48 rows → 6 batches of sts, 24 → 3 of qa per epoch.
    order = [next(iter(s)) for s in sources]
    expected = [SOURCES[i] for i in step_schedule(sampler, [6, 3], [1.0, 1.0], 7, 0)]
    assert order == expected
    counts = Counter(order)
    assert counts == {"balanced": {"sts": 5, "qa": 4}, "proportional": {"sts": 6, "qa": 3},
                      "round_robin": {"sts": 3, "qa": 3}}[sampler]


def test_mixed_batches_hold_both_sources_and_sum_the_weighted_losses(tmp_path: Path, spread_model_path: str) -> None:
    run = build_run(tmp_path, spread_model_path, "mixed", sources={"qa": {"weight": 0.5}},
                    model={"dropout": 0.0})
    trainer = run.trainer
    batches, collated = drawn_batches(trainer)
    assert len(batches) == (48 + 24) // 8
    assert any(len({name for name, _ in rows}) == 2 for rows in batches), "no batch mixed the two sources"
    assert sum(len(rows) for rows in batches) == 72 and all(len(rows) == 8 for rows in batches)
    # One mixed batch: the trainer's loss is Σ_source weight · (the source's loss on its own rows).
    inputs = next(b for b, rows in zip(collated, batches, strict=True) if len({n for n, _ in rows}) == 2)
    model = trainer.model
    model.eval()
    with torch.no_grad():
        direct = 0.0
        for name, group in inputs["tasks"].items():
            group = {k: v for k, v in group.items() if k != "dataset_name"}
            features, labels = trainer.collect_features(group)
            direct += {"sts": 1.0, "qa": 0.5}[name] * trainer.loss[name](features, labels).item()
        got = trainer.compute_loss(model, {"tasks": {k: dict(v) for k, v in inputs["tasks"].items()}}).item()
    assert got == pytest.approx(direct, rel=1e-6)


def test_mixed_source_with_one_row_trains_nothing_and_the_step_is_counted(tmp_path: Path,
                                                                          spread_model_path: str) -> None:
    """``mixed`` scores each source on its own rows only (docs/multitask.md): a pairs-only InfoNCE source with one
    row of the batch has its own positive as its only candidate, so it contributes a loss of exactly 0 and no
    gradient; the step's loss and gradient are the other source's alone. The trainer counts, per source, the
    steps where it had fewer than 2 rows (1 row, or none) and logs them as ``mixed_short_<name>``."""
    run = build_run(tmp_path, spread_model_path, "mixed", sources={"qa": {"columns": ["query", "passage"]}},
                    model={"dropout": 0.0})
    trainer, model = run.trainer, run.trainer.model
    rows = {name: [dict(trainer.train_dataset[name][i], dataset_name=name) for i in range(8)] for name in SOURCES}

    def step(features: list[dict[str, Any]]) -> tuple[float, dict[str, torch.Tensor], float | None]:
        """The step's loss, the encoder's gradient and the qa loss the trainer recorded (None: qa not scored)."""
        model.zero_grad()
        before = trainer._task_sums["qa"][:]
        loss = trainer.compute_loss(model, trainer.data_collator(features))
        loss.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        after = trainer._task_sums["qa"]
        return loss.item(), grads, (after[0] - before[0]) if after[1] > before[1] else None

    model.train()
    one_qa, grads_one, qa_loss = step(rows["sts"][:7] + rows["qa"][:1])
    assert qa_loss == 0.0  # one row: cross-entropy over a single candidate
    sts_only, grads_sts, none = step(rows["sts"][:7])
    assert none is None  # no qa row: qa not scored at all
    assert one_qa == pytest.approx(sts_only, rel=1e-6)
    assert grads_one.keys() == grads_sts.keys() and grads_one
    assert max((grads_one[k] - grads_sts[k]).abs().max().item() for k in grads_one) < 1e-6
    _, _, two_rows = step(rows["sts"][:6] + rows["qa"][:2])
    assert two_rows is not None and two_rows > 0.1  # two rows: each anchor has one in-batch negative

    trainer.log({"loss": 1.0})  # the window's counts: 3 steps, qa short in 2 of them (1 row, 0 rows), sts in 0
    assert {k: v for k, v in trainer.state.log_history[-1].items() if k.startswith("mixed_short_")} == {
        "mixed_short_sts": 0, "mixed_short_qa": 2}


def test_mixed_run_counts_short_steps_in_results(tmp_path: Path, tiny_model_path: str, capsys) -> None:
    """A trained ``mixed`` run: every step logs, per source, whether it had fewer than 2 rows, matching the batches
    the sampler drew; results.json's ``train.tasks`` holds the totals, and the run says them (and no global
    in-batch negative count, which a mixed source does not have)."""
    recipe = write_multitask_recipe(tmp_path / "r", tiny_model_path, tmp_path / "out", "mixed", qa_rows=8)
    out = run_in_process(recipe)
    said = capsys.readouterr().out
    assert "in-batch negatives per anchor" not in said
    assert "mixed: each source's loss sees only its own rows of a batch" in said
    history = [h for h in out["train"]["log_history"] if "loss" in h]
    assert len(history) == 6
    run = build_run(tmp_path / "again", tiny_model_path, "mixed", qa_rows=8)
    batches, _ = drawn_batches(run.trainer)
    for entry, rows in zip(history, batches, strict=False):
        counts = Counter(name for name, _ in rows)
        assert entry["mixed_short_qa"] == int(counts["qa"] < 2) and entry["mixed_short_sts"] == int(counts["sts"] < 2)
    totals = {t["name"]: t["mixed_short_steps"] for t in out["train"]["tasks"]}
    assert totals == {name: sum(h[f"mixed_short_{name}"] for h in history) for name in SOURCES}
    assert totals["qa"] > 0  # 8 of 56 rows: most batches of 8 hold 0 or 1 qa rows
    assert f"qa in {totals['qa']} of 6" in said


def test_step_schedule_rules() -> None:
    """proportional: every batch once, seeded order; round_robin: in turn until the smallest runs out; balanced:
    after every step each source's count is within one step of its weighted share."""
    prop = step_schedule("proportional", [6, 3], [1, 1], seed=7, epoch=0)
    assert Counter(prop) == {0: 6, 1: 3}
    assert prop == step_schedule("proportional", [6, 3], [1, 1], seed=7, epoch=0)
    assert prop != step_schedule("proportional", [6, 3], [1, 1], seed=7, epoch=1)
    assert {tuple(step_schedule("proportional", [6, 3], [1, 1], seed=s, epoch=0)) for s in range(6)} != {tuple(prop)}
    assert step_schedule("round_robin", [6, 3], [1, 1], 7, 0) == [0, 1, 0, 1, 0, 1]
    balanced = step_schedule("balanced", [10, 2], [2.0, 1.0], 7, 0)
    assert len(balanced) == 12 and Counter(balanced) == {0: 8, 1: 4}
    for t in range(1, 13):
        taken = Counter(balanced[:t])
        assert abs(taken[0] - t * 2 / 3) <= 1 and abs(taken[1] - t / 3) <= 1, (t, balanced)


def test_two_processes_split_the_step_one_process_draws() -> None:
    """Process r of 2 (accelerate hands it every 2nd per-process batch) gets half of the global batch one process
    draws at the same step, from the same source, every step; a second epoch is another order."""
    import datasets
    from torch.utils.data import ConcatDataset

    parts = [datasets.Dataset.from_dict({"x": list(range(40))}), datasets.Dataset.from_dict({"x": list(range(17))})]
    concat = ConcatDataset(parts)

    def sampler(batch: int, world: int, epoch: int = 0) -> list[list[int]]:
        s = TaskBatchSampler(concat, [torch.utils.data.BatchSampler(range(n), batch, True) for n in (40, 17)],
                             seed=5, rule="balanced", world_size=world)
        s.set_epoch(epoch)
        return list(s)

    one, two = sampler(8, 1), sampler(4, 2)
    assert len(two) == 2 * len(one)
    assert [a + b for a, b in zip(two[0::2], two[1::2], strict=True)] == one
    assert all(len({i >= 40 for i in batch}) == 1 for batch in one)  # one source a step
    assert sampler(8, 1, epoch=1) != one
    assert sampler(8, 1) == one  # a function of seed and epoch: a resumed run replays it


# ----------------------------------------------------------------------------------------------------------
# Logs and selection


def test_each_source_loss_is_logged_under_its_name(tmp_path: Path, tiny_model_path: str) -> None:
    recipe = write_multitask_recipe(tmp_path / "r", tiny_model_path, tmp_path / "out", "proportional",
                                    sources={"qa": {"weight": 0.5}})
    history = [h for h in run_in_process(recipe)["train"]["log_history"] if "loss" in h]
    assert len(history) == 6
    for entry in history:
        logged = [k for k in entry if k.startswith("loss_")]
        assert len(logged) == 1, entry  # one source a step
        weight = 0.5 if logged[0] == "loss_qa" else 1.0
        assert entry["loss"] == pytest.approx(weight * entry[logged[0]], abs=1e-4)  # loss = weight × source's loss
    assert {k for h in history for k in h if k.startswith("loss_")} == {"loss_sts", "loss_qa"}
    tb = list((tmp_path / "out" / "logs").rglob("events.out.tfevents*"))
    assert tb, "TensorBoard logs are written"


def _write_dev_files(folder: Path) -> tuple[Path, Path]:
    """A 24-pair STS-B-format dev file and an 8-question reranking dev file."""
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    sts = folder / "sts-dev.csv"
    sts.write_text("".join(f"main-captions\tMSRvid\t2012test\t{i:04d}\t{(i * 7) % 6}.0\tthe {words[i % 12]} runs "
                           f"{i}\ta {words[(i * 5) % 12]} walks {i}\n" for i in range(24)), encoding="utf-8")
    (folder / "qa").mkdir()
    rerank = folder / "qa" / "dev.csv"  # named qa-dev
    rows = ["qtext,label,atext"]
    for q in range(8):
        a, b = words[q], words[(q * 5 + 3) % 12]
        rows += [f"where does the {a} meet {b} {q},1,the {a} meets {b} at place {q}",
                 f"where does the {a} meet {b} {q},0,no {a} was seen near {b} {q + 5}",
                 f"where does the {a} meet {b} {q},0,the {b} left town {q}"]
    rerank.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return sts, rerank


def test_weighted_dev_score_selects_the_checkpoint(tmp_path: Path, spread_model_path: str) -> None:
    sts, rerank = _write_dev_files(tmp_path)
    dev = [{"kind": "stsb", "path": str(sts), "metric": "spearman", "weight": 0.25},
           {"kind": "rerank", "path": str(rerank), "metric": "map", "weight": 0.75}]
    out = tmp_path / "out"
    recipe = write_multitask_recipe(tmp_path / "r", spread_model_path, out, "balanced", dev=dev,
                                    training={"max_steps": 8, "eval_steps": 2, "learning_rate": 3e-3},
                                    model={"dropout": 0.0})
    res = run_in_process(recipe)
    evals = [h for h in res["train"]["log_history"] if "eval_dev_weighted" in h]
    assert [h["step"] for h in evals] == [2, 4, 6, 8]
    for h in evals:  # the combination's rule: Σ w·metric / Σ w
        direct = (0.25 * h["eval_dev_stsb-dev_spearman"] + 0.75 * h["eval_dev_qa-dev_map"]) / 1.0
        assert h["eval_dev_weighted"] == pytest.approx(direct, abs=1e-9)
    scores = [h["eval_dev_weighted"] for h in evals]
    assert len(set(scores)) > 1, "the weighted score never moved; the selection would say nothing"
    best = evals[scores.index(max(scores))]
    state = json.loads((checkpoint_dirs(out)[-1] / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"].endswith(f"checkpoint-{best['step']}")
    assert res["dev"]["after"]["weighted"] == pytest.approx(max(scores), abs=1e-6)  # the final model is the best
    assert res["dev"]["rule"] == "(0.25 × stsb-dev Spearman + 0.75 × qa-dev MAP) / 1"


# ----------------------------------------------------------------------------------------------------------
# Validation


def _recipe_text(tmp_path: Path, model_path: str, **kwargs: Any) -> Path:
    return write_multitask_recipe(tmp_path / "r", model_path, tmp_path / "out", **kwargs)


def _line(path: Path, text: str, nth: int = 0) -> int:
    return [i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line][nth]


@pytest.mark.parametrize("case", [
    "top-method", "bad-param", "unknown-method", "no-duplicates", "stateful", "mine", "missing-file", "names",
    "group-by-length", "single-source"])
def test_what_a_multitask_run_cannot_honour_is_refused_with_file_line_key(case: str, tmp_path: Path,
                                                                          tiny_model_path: str) -> None:
    sources: dict[str, dict] = {}
    training: dict[str, Any] = {}
    if case == "bad-param":
        sources = {"qa": {"method": {"name": "contrastive", "temperature": -1}}}
    elif case == "unknown-method":
        sources = {"qa": {"method": {"name": "no-such-method"}}}
    elif case == "no-duplicates":
        sources = {"qa": {"method": {"name": "contrastive", "no_duplicates": True}}}
    elif case == "stateful":
        sources = {"qa": {"method": {"name": "esimcse"}}}
    elif case == "mine":
        sources = {"qa": {"mine": {"num_negatives": 1}}}
    elif case == "missing-file":
        sources = {"qa": {"path": str(tmp_path / "absent.csv")}}
    elif case == "names":
        sources = {"qa": {"name": "sts"}}
    elif case == "group-by-length":
        training = {"group_by_length": True}
    path = _recipe_text(tmp_path, tiny_model_path, sources=sources, training=training)
    raw = yaml.safe_load(path.read_text())
    if case == "top-method":
        raw["method"] = {"name": "cosent"}
    if case == "single-source":
        raw["data"]["train"] = raw["data"]["train"][0]
        for key in ("name", "method", "weight"):
            raw["data"]["train"].pop(key, None)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    msg = str(err.value)
    assert len(msg.splitlines()) == 1, msg
    expected = {
        "top-method": ("name: cosent", 1, "method.name: a recipe whose data.train lists several sources"),
        "bad-param": ("temperature", 0, "data.train.1.method.temperature: Input should be greater than 0"),
        "unknown-method": ("no-such-method", 0, "data.train.1.method.name: unknown method 'no-such-method'"),
        "no-duplicates": ("no_duplicates", 0, "data.train.1.method.no_duplicates: needs the method's own"),
        "stateful": ("esimcse", 0, "data.train.1.method.name: method 'esimcse' keeps state across steps"),
        "mine": ("mine:", 0, "data.train.1.mine: mining inside a multi-task run is not supported"),
        "missing-file": ("absent.csv", 0, "data.train.1.path: file not found"),
        "names": ("train:", 0, "data.train: Value error, source names must be distinct; sts"),
        "group-by-length": ("group_by_length", 0, "training.group_by_length: a multi-task run draws"),
        "single-source": ("train:", 0, "data.train: method multitask needs data.train to be a list"),
    }[case]
    text, nth, what = expected
    assert msg.startswith(f"{path}:{_line(path, text, nth)}: {what}"), msg


def test_mixed_is_refused_under_several_processes(tmp_path: Path, tiny_model_path: str, monkeypatch) -> None:
    path = _recipe_text(tmp_path, tiny_model_path, sampler="mixed")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RecipeError, match=rf"{path}:{_line(path, 'sampler: mixed')}: method.sampler: sampler mixed "
                                          "runs in one process"):
        load_recipe(path)


def test_a_bad_row_of_a_source_names_its_file_and_line(tmp_path: Path, tiny_model_path: str) -> None:
    path = _recipe_text(tmp_path, tiny_model_path)
    pairs = tmp_path / "r" / "pairs.csv"
    lines = pairs.read_text().splitlines()
    lines[5] = "the alpha runs 4,a beta walks 4,not-a-number"
    pairs.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecipeError, match=rf"data.train.0.path: {pairs}:6: column 'score': expected a finite number"):
        load_recipe(path)


def test_shipped_recipe_validates_and_switches_by_override(data_dir: Path) -> None:
    """The shipped recipe, the mixed baseline and each source alone (the overrides eval/multitask_report.py runs,
    as docs/multitask.md gives them)."""
    recipe, data = load_recipe_with_data("multitask-sts-trecqa-minilm", data_dir=str(data_dir))
    assert [s.name for s in recipe.data.train] == ["sts", "trecqa"]
    # TREC QA train's 348 label-1 pairs less those of the 14 of 93 questions held out for selection (data.dev.1)
    from embedkit.data.heldout import split_heldout

    held = split_heldout(data_dir / "rerank" / "trecqa" / "train.csv", "rerank", 0.15, 0)
    assert len(held.queries) == 14 and len(data.parts["trecqa"]) == 328
    assert not set(data.parts["trecqa"].columns["anchor"]) & held.queries
    mixed = load_recipe("multitask-sts-trecqa-minilm", ["method.sampler=mixed"], data_dir=str(data_dir))
    assert mixed.method.model_dump()["sampler"] == "mixed"
    from embedkit.recipe import TrainSource

    one_source = _report_overrides()
    for name, method in (("sts", "cosent"), ("trecqa", "contrastive")):
        overrides = one_source[name]
        alone, alone_data = load_recipe_with_data("multitask-sts-trecqa-minilm", overrides, data_dir=str(data_dir))
        assert isinstance(alone.data.train, TrainSource) and alone.method.name == method
        assert alone.training.max_steps == recipe.training.max_steps and alone.training.seed == 42


# The single-source overrides of the shipped recipe, as docs/multitask.md lists them.
def _report_overrides() -> dict[str, list[str]]:
    """The single-source overrides of eval/multitask_report.py (the report's ``sts`` and ``trecqa`` rows)."""
    spec = importlib.util.spec_from_file_location("multitask_report", ROOT / "eval" / "multitask_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {"sts": module.TRAINED["sts"], "trecqa": module.TRAINED["trecqa"]}


# ----------------------------------------------------------------------------------------------------------
# Resume and torchrun


@pytest.mark.slow
def test_sigkill_then_resume_restores_the_task_order_and_weights(tmp_path: Path, spread_model_path: str) -> None:
    """Killed right after the step-8 checkpoint (second epoch: 9 steps an epoch) and resumed: the same source at
    every step as the uninterrupted run (the order the seed gives), the same losses, bit-identical weights."""
    training = {"max_steps": 12, "save_steps": 8}
    sources = {"qa": {"weight": 2.0}}
    full = write_multitask_recipe(tmp_path / "full", spread_model_path, tmp_path / "uninterrupted",
                                  training=training, sources=sources)
    cut = write_multitask_recipe(tmp_path / "cut", spread_model_path, tmp_path / "killed", training=training,
                                 sources=sources)
    check_ok(run_embedkit(["train", str(full)], tmp_path), "uninterrupted run")
    killed = run_embedkit(["train", str(cut)], tmp_path, sigkill_after_save=True)
    assert killed.returncode == -signal.SIGKILL
    assert [p.name for p in checkpoint_dirs(tmp_path / "killed")] == ["checkpoint-8"]
    resumed = run_embedkit(["train", str(cut), "--resume"], tmp_path)
    check_ok(resumed, "resumed run")
    assert "checkpoint-8" in resumed.stdout

    def per_step(out: Path) -> dict[int, tuple[str, float]]:
        hist = [h for h in results(out)["train"]["log_history"] if "loss" in h]
        return {h["step"]: (next(k for k in h if k.startswith("loss_")), h["loss"]) for h in hist}

    a, b = per_step(tmp_path / "uninterrupted"), per_step(tmp_path / "killed")
    assert sorted(a) == sorted(b) == list(range(1, 13))
    assert a == b
    # The order is the rule's for this seed: 48 + 24 rows, batch 8, weights 1 : 2 → 9 steps an epoch.
    epoch = step_schedule("balanced", [6, 3], [1.0, 2.0], 7, 0) + step_schedule("balanced", [6, 3], [1.0, 2.0], 7, 1)
    assert [a[s][0] for s in range(1, 13)] == [f"loss_{SOURCES[i]}" for i in epoch[:12]]
    assert bitwise_equal(final_weights(tmp_path / "uninterrupted"), final_weights(tmp_path / "killed")) == []


@pytest.mark.multiproc
@pytest.mark.parametrize("mini_batch_size", [None, 3])
def test_two_processes_equal_one_process(mini_batch_size: int | None, tmp_path: Path, spread_model_path: str) -> None:
    """torchrun with 2 processes (gloo) against one process with the same global batch of 16: the same source,
    loss and per-source loss at every step, the same final weights (with GradCache too)."""
    training = {"batch_size": 16, "max_steps": 4, "seed": 11, "mini_batch_size": mini_batch_size}
    sources = {"qa": {"weight": 2.0}}
    model = {"dropout": 0.0}
    two = write_multitask_recipe(tmp_path / "r2", spread_model_path, tmp_path / "two", training=training,
                                 sources=sources, model=model, qa_rows=32)
    one = write_multitask_recipe(tmp_path / "r1", spread_model_path, tmp_path / "one", training=training,
                                 sources=sources, model=model, qa_rows=32)
    proc = run_torchrun(["train", str(two)], tmp_path, nproc=2)
    check_ok(proc, "torchrun --nproc_per_node 2")
    assert "world size 2, batch 16 global = 8 per device × 2" in proc.stdout
    run_in_process(one)
    h1, h2 = ([h for h in results(d)["train"]["log_history"] if "loss" in h] for d in (tmp_path / "one",
                                                                                         tmp_path / "two"))
    assert len(h1) == len(h2) == 4
    assert {k for h in h1 for k in h if k.startswith("loss_")} == {"loss_sts", "loss_qa"}
    for a, b in zip(h1, h2, strict=True):
        assert [k for k in a if k.startswith("loss_")] == [k for k in b if k.startswith("loss_")], (a, b)
        assert abs(a["loss"] - b["loss"]) < 1e-5 * max(1.0, abs(a["loss"])), (a, b)
    w1, w2 = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    assert weights_apart(w1, w2, final_weights(Path(spread_model_path)), 1e-5) == []


def test_model_card_lists_the_sources(tmp_path: Path) -> None:
    from embedkit.card import _training_data

    recipe = {"data": {"train": [
        {"name": "sts", "path": "/d/sts-train.csv", "method": {"name": "cosent"}, "weight": 1.0},
        {"name": "trecqa", "path": "/d/train.csv", "method": {"name": "contrastive"}, "weight": 0.5}]}}
    assert _training_data(recipe) == ("`sts` (cosent, weight 1.0): the local file `sts-train.csv`; `trecqa` "
                                      "(contrastive, weight 0.5): the local file `train.csv`")


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
