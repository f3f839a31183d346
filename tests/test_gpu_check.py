"""``eval/gpu_check.py``: its CPU quick mode runs and its table is sane (CI keeps the GPU check alive), and the
precisions it runs on a CPU train there (``precision: bf16`` on a machine without a GPU)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from _mp_helpers import child_env, step_losses, write_recipe

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "eval" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_bf16_trains_on_a_cpu_only_machine(tmp_path, spread_model_path):
    """``training.precision: bf16`` is bf16 autocast wherever torch has it, a CPU included (README: "bf16 / fp16
    force it"); the trainer must not refuse it for want of a GPU. Its losses stay near fp32's."""
    from embedkit.training.run import train

    losses = {}
    for precision in ("fp32", "bf16"):
        recipe = write_recipe(tmp_path / precision, spread_model_path, "simcse-unsup", tmp_path / f"out-{precision}",
                              training={"precision": precision, "max_steps": 2}, model={"dropout": 0.0})
        results = train(str(recipe))
        assert results["train"]["precision"] == precision
        losses[precision] = step_losses(tmp_path / f"out-{precision}")
    assert sorted(losses["bf16"]) == [1, 2]
    for step, ref in losses["fp32"].items():
        assert losses["bf16"][step] == pytest.approx(ref, rel=0.05), (step, losses)


def test_agreement_is_the_largest_relative_difference_over_common_steps():
    script = load_script()
    ref = {1: 2.0, 2: 1.0, 3: 0.5}
    assert script.max_rel_diff(ref, ref) == 0.0
    assert script.max_rel_diff({1: 2.2, 2: 1.0, 3: 0.45}, ref) == pytest.approx(0.1)
    assert script.max_rel_diff({1: 2.0, 2: 1.0}, ref) is None  # a run that stopped early is no agreement
    # A loss near 0 (MoCo's first step, empty queue) is compared absolutely.
    assert script.max_rel_diff({1: 1e-5, 2: 1.0}, {1: 0.0, 2: 1.0}) == pytest.approx(1e-5 / script.LOSS_FLOOR)


def test_plan_runs_fp32_first_and_each_baseline_after_its_method():
    script = load_script()
    configs = script.plan(["simcse-unsup", "ccp"], ["fp32", "bf16"], {"simcse-unsup": 8, "ccp": 8}, 1)
    keys = [c.key for c in configs]
    assert keys[:4] == ["simcse-unsup|fp32|0|1", "simcse-unsup|fp32|8|1", "simcse-unsup|bf16|0|1",
                        "simcse-unsup|bf16|8|1"]
    assert [c.baseline_of for c in configs[4:8]] == ["simcse-unsup"] * 4  # MNRL and CachedMNRL, each precision
    assert keys[8:] == ["ccp|fp32|0|1", "ccp|fp32|8|1", "ccp|bf16|0|1", "ccp|bf16|8|1"]
    # Under torchrun: the same runs, no baseline.
    assert [c.key for c in script.plan(["ccp"], ["fp32"], {"ccp": 8}, 2)] == ["ccp|fp32|0|2", "ccp|fp32|8|2"]


@pytest.mark.slow
@pytest.mark.multiproc
def test_cpu_quick_mode_prints_a_sane_table(tmp_path, data_dir, minilm_path):
    """The CPU quick mode, one process and ``torchrun --nproc_per_node 2`` (gloo): every row present and trained,
    fp32 agrees with itself exactly, bf16 within a loose bound of fp32, GradCache within a tight one in fp32, two
    processes as one, no NaN, a ratio to sentence-transformers, a peak memory."""
    out = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--nproc", "2", "--data-dir", str(data_dir),
                           "--json", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=ROOT, env=child_env(tmp_path, threads=1))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["precisions"] == ["fp32", "bf16"]
    assert any(note.startswith("fp16 skipped: ") for note in report["notes"])
    assert "fp16 skipped: " in proc.stdout

    rows = {"|".join((r["method"], r["precision"], str(r["mini_batch_size"] or 0), str(r["nproc"]))): r
            for r in report["rows"]}
    methods = ["simcse-unsup", "cosent", "contrastive"]
    expected = {f"{m}|{p}|{b}|{n}" for m in methods for p in ("fp32", "bf16") for b in (0, 4) for n in (1, 2)}
    expected |= {f"ST MultipleNegativesRankingLoss|{p}|0|1" for p in ("fp32", "bf16")}
    expected |= {f"ST CachedMultipleNegativesRankingLoss|{p}|4|1" for p in ("fp32", "bf16")}
    expected |= {f"ST CoSENTLoss|{p}|0|1" for p in ("fp32", "bf16")}
    assert set(rows) == expected
    table = proc.stdout[proc.stdout.index("method "):]
    assert len([ln for ln in table.splitlines() if ln.split()[:1] and ln.split()[0] in {*methods, "ST"}]) == len(rows)

    steps = report["settings"]["steps"]
    for key, r in rows.items():
        assert r["status"] == "ok", (key, r["status"])
        losses = r["losses"]
        assert sorted(int(s) for s in losses) == list(range(1, steps + 1)), key
        assert all(math.isfinite(v) for v in losses.values()), key
        assert r["rows_per_s"] > 0 and r["peak_mb"] > 0, key
        if r["precision"] == "fp32":
            assert r["d_fp32"] == 0.0, key  # the reference against itself
        else:
            assert r["d_fp32"] < 0.05, key  # bf16 rounding over a few steps of a tiny model
        if r["mini_batch_size"] and not key.startswith("ST"):
            # GradCache against one pass: the same loss (dropout off), bf16 rounding aside.
            assert r["d_plain"] < (1e-4 if r["precision"] == "fp32" else 0.05), key
        if r["nproc"] == 2:
            assert r["d_1proc"] is not None, key
            # Two processes take the same global batches as one (docs/distributed.md), no_duplicates included.
            if r["precision"] == "fp32":
                assert r["d_1proc"] < 1e-4, key
        elif key.startswith(("simcse-unsup", "cosent")) and not r["mini_batch_size"]:
            assert r["vs_st"] > 0, key
