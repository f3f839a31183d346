"""Two processes (``torchrun``, gloo on CPU) against one process holding the same global batch.

``training.batch_size`` is the global batch: both set-ups run the same recipe batch size; under two processes
each takes half of it.

With dropout off, cross-device negatives gathered with their gradient, the label offset by rank, the
batches sharded round-robin from one seeded order, DDP averaging the encoder's gradients and the trainer
averaging the loss's own (training-only head) gradients, both set-ups compute the same losses and end
with the same weights. To cover another method add its name to ``METHODS`` (and a data writer in
``_mp_helpers.TRAIN_DATA``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _mp_helpers import (
    check_ok,
    checkpoint_dirs,
    child_env,
    final_weights,
    marker,
    max_abs_diff,
    method_state,
    results,
    run_in_process,
    run_torchrun,
    step_losses,
    weights_apart,
    write_recipe,
)

# contriever is left out: its losses match (relative 7e-7), but with mean pooling and dot-product scores a
# token seen in one sentence gets a gradient near Adam's eps, which turns float rounding into 1.2e-5 weight
# differences; its queue and momentum encoder are the ones esimcse exercises here.
METHODS = ["simcse-unsup", "simcse-sup", "debcse", "esimcse", "text2token", "contrastive", "ccp"]
# Parameters that make more of the loss matter (simcse-sup: the own-hard-negative offset, placed by rank;
# contrastive: that offset on two negative columns and the positive → anchor direction over gathered anchors).
PARAMS = {"simcse-sup": {"hard_negative_weight": 0.7}, "contrastive": {"hard_negative_weight": 0.7, "symmetric": True}}
# Model settings per method (default: cls pooling with the training-only MLP head, state owned by the loss).
MODEL = {"text2token": {"pooling": "mean", "mlp_only_train": False}}
TOL = 1e-5
PER_DEVICE, STEPS = 8, 4


@pytest.mark.multiproc
@pytest.mark.parametrize("method", METHODS)
def test_two_processes_equal_one_process(method: str, tmp_path: Path, spread_model_path: str) -> None:
    compare_two_with_one(method, tmp_path, spread_model_path)


# Composed objectives under torchrun: CoSENT ranks the pairs of both processes together; SimCSE with GradCache,
# Matryoshka and the three extra terms (uniformity over the global batch, CWCL targets from gathered teacher
# embeddings) gives the single process's losses and weights.
COMPOSED = {
    "cosent": ({}, {}, None),
    "simcse-unsup": ({"mini_batch_size": 5, "matryoshka_dims": [32, 16]}, {"pooling": "mean", "mlp_only_train": False},
                     {"terms": [{"name": "uniformity", "weight": 0.3}, {"name": "alignment", "weight": 0.2},
                                {"name": "cwcl", "weight": 0.5, "floor": 0.2}]}),
}


@pytest.mark.multiproc
@pytest.mark.parametrize("method", sorted(COMPOSED))
def test_two_processes_equal_one_process_composed(method: str, tmp_path: Path, spread_model_path: str) -> None:
    training, model, objective = COMPOSED[method]
    compare_two_with_one(method, tmp_path, spread_model_path, training, {"pooling": "mean", "mlp_only_train": False,
                                                                         **model}, objective)


@pytest.mark.multiproc
def test_st_loss_two_processes_equal_one_process(tmp_path: Path, spread_model_path: str) -> None:
    """st-loss with sentence-transformers' MultipleNegativesRankingLoss: its own gather_across_devices (set from
    training.gather_across_devices), under embedkit's GradCache and Matryoshka, gives the single process's losses
    and weights."""
    compare_two_with_one("st-loss", tmp_path, spread_model_path, {"mini_batch_size": 5, "matryoshka_dims": [32, 16]},
                         {"pooling": "mean", "mlp_only_train": False})


@pytest.mark.multiproc
def test_esimcse_paper_settings_two_processes_equal_one_process(tmp_path: Path, spread_model_path: str) -> None:
    """The paper recipe's static repetition (drawn from seed and dataset row id, so every process draws the
    same view of a row) and freshly initialised key encoder give the single process's losses and state."""
    compare_two_with_one("esimcse", tmp_path, spread_model_path,
                         params={"static": True, "momentum_init": "random"})


@pytest.mark.multiproc
def test_no_duplicates_two_processes_equal_one_process(tmp_path: Path, spread_model_path: str) -> None:
    """contrastive with ``no_duplicates`` (repeated queries, negatives that are other rows' passages): the sampler
    builds each global batch without a duplicate and slices it, so the two processes train on the batches of one
    process (a sampler of per-process batches gives other batches, with questions repeated across processes).
    ``drop_last`` in both: several processes always drop a short last global batch, which the greedy pass leaves
    here (the single process would otherwise train on it)."""
    compare_two_with_one("contrastive", tmp_path, spread_model_path, training={"drop_last": True},
                         params={"no_duplicates": True})


def compare_two_with_one(method: str, tmp_path: Path, spread_model_path: str, training: dict | None = None,
                         model: dict | None = None, objective: dict | None = None,
                         params: dict | None = None, replay: dict | None = None) -> None:
    params = {**PARAMS.get(method, {}), **(params or {})}
    model = {"dropout": 0.0, **MODEL.get(method, {}), **(model or {})}
    common = {"max_steps": STEPS, "seed": 11, **(training or {})}
    multi_dir, single_dir = tmp_path / "two", tmp_path / "one"
    # The same global batch in both recipes (training.batch_size is global): 2 × PER_DEVICE.
    multi = write_recipe(tmp_path / "r2", spread_model_path, method, multi_dir,
                         {**common, "batch_size": 2 * PER_DEVICE}, model, params, objective=objective, replay=replay)
    single = write_recipe(tmp_path / "r1", spread_model_path, method, single_dir,
                          {**common, "batch_size": 2 * PER_DEVICE}, model, params, objective=objective, replay=replay)

    proc = run_torchrun(["train", str(multi)], tmp_path, nproc=2)
    check_ok(proc, "torchrun --nproc_per_node 2")
    negatives = "" if method == "cosent" else f", {2 * PER_DEVICE - 1} in-batch negatives per anchor"
    assert f"world size 2, batch {2 * PER_DEVICE} global = {PER_DEVICE} per device × 2{negatives}" in proc.stdout
    run_in_process(single)
    assert results(multi_dir)["train"]["per_device_batch_size"] == PER_DEVICE
    assert results(single_dir)["train"]["per_device_batch_size"] == 2 * PER_DEVICE

    # Same loss at every step (the logged loss is the mean over processes).
    one, two = step_losses(single_dir), step_losses(multi_dir)
    assert sorted(one) == sorted(two) == list(range(1, STEPS + 1))
    for step in one:
        assert abs(one[step] - two[step]) < TOL * max(1.0, abs(one[step])), (step, one[step], two[step])
    assert abs(one[STEPS] - one[1]) > 1e-2, "the loss did not move; the comparison would say nothing"

    if objective is not None:  # each term logged, the same in both set-ups (logs round terms to 4 decimals)
        keys = {"loss_main_32", "loss_main_16"} | {f"loss_{t['name']}" for t in objective["terms"]}
        h1, h2 = (
            [h for h in results(d)["train"]["log_history"] if "loss" in h] for d in (single_dir, multi_dir))
        for a, b in zip(h1, h2, strict=True):
            assert keys <= set(a) and keys <= set(b), (a, b)
            for key in keys:
                assert abs(a[key] - b[key]) <= 2e-4 * max(1.0, abs(a[key])), (key, a, b)

    # Same final encoder (within TOL, less the Adam-amplified float noise weights_apart allows).
    w1, w2 = final_weights(single_dir), final_weights(multi_dir)
    start = final_weights(Path(spread_model_path))
    shared = [k for k in w1 if k in start]
    assert shared, "the saved encoder should use the starting model's tensor names"
    assert weights_apart(w1, w2, start, TOL) == []
    moved = max((w1[k] - start[k]).abs().max().item() for k in shared)
    assert moved > 100 * TOL, "training did not move the weights; the comparison would say nothing"

    # Same loss-owned state (the MLP head), identical on both processes.
    last1, last2 = checkpoint_dirs(single_dir)[-1], checkpoint_dirs(multi_dir)[-1]
    assert last1.name == last2.name == f"checkpoint-{STEPS}"
    s1, s2 = method_state(last1), method_state(last2)
    if method in ("cosent", "st-loss") or model.get("mlp_only_train") is False and method in ("simcse-unsup",
                                                                                                 "contrastive"):
        assert not s1 and not s2  # no loss-owned state (the teacher is not saved)
        return
    assert s1, "expected loss-owned state (training-only head, momentum encoder, queue, stage step)"
    assert max_abs_diff(s1, s2) < TOL
    digests = marker(last2)["method_state_sha256_per_rank"]
    assert len(digests) == 2 and digests[0] == digests[1], "the processes hold different method states"


@pytest.mark.multiproc
def test_batch_size_is_global_under_torchrun(tmp_path: Path, tiny_model_path: str) -> None:
    """``batch_size: 16`` under two processes trains with 8 rows per process and reports 16.

    48 rows and one epoch: a global batch of 16 gives 3 optimizer steps; had each process taken 16 rows (the
    old per-device meaning, 32 global) the epoch would have been 1 step."""
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r", tiny_model_path, "simcse-unsup", out,
                          {"batch_size": 16, "max_steps": -1, "epochs": 1})
    proc = run_torchrun(["train", str(recipe)], tmp_path, nproc=2)
    check_ok(proc, "torchrun --nproc_per_node 2")
    assert "world size 2, batch 16 global = 8 per device × 2, 15 in-batch negatives per anchor" in proc.stdout
    train = results(out)["train"]
    assert (train["world_size"], train["global_batch_size"], train["per_device_batch_size"]) == (2, 16, 8)
    assert train["global_step"] == 48 // 16
    from embedkit.card import build_card, load_results

    assert "- **Batch:** 16 global = 8 per device × 2" in build_card(load_results(out), "alice/tiny")


@pytest.mark.multiproc
def test_batch_that_does_not_divide_is_refused_under_torchrun(tmp_path: Path, tiny_model_path: str) -> None:
    """A global batch of 15 over 2 processes: one line naming file, line and key, and no output folder."""
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r", tiny_model_path, "simcse-unsup", out, {"batch_size": 15})
    proc = run_torchrun(["train", str(recipe)], tmp_path, nproc=2)
    assert proc.returncode != 0
    line = next(i for i, text in enumerate(recipe.read_text().splitlines(), 1) if "batch_size" in text)
    assert f"{recipe}:{line}: training.batch_size: the global batch 15 does not divide over 2 processes" \
        in proc.stderr
    assert not out.exists()


# Run under torchrun: each process calls the Python API and writes what it got back.
RESULT_DRIVER = """
import json, os, sys
import embedkit

result = embedkit.train(sys.argv[1])
rank = int(os.environ["RANK"])
out = {"rank": rank, "output_dir": str(result.output_dir), "global_step": result["train"]["global_step"],
       "results": json.loads(json.dumps(result.results, default=str)), "vector": result.model.encode(["a"]).tolist()}
with open(os.path.join(sys.argv[2], f"rank{rank}.json"), "w") as fh:
    json.dump(out, fh)
"""


@pytest.mark.multiproc
def test_every_process_gets_the_train_result(tmp_path: Path, tiny_model_path: str) -> None:
    """``embedkit.train`` under torchrun returns the same result on rank 1 as on rank 0: ``results.json``'s
    content (rank 0 computes it after training while rank 1 waits), the output folder, and a trained model that
    encodes as the saved one does (ranks other than 0 used to get ``{}``)."""
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r", tiny_model_path, "simcse-unsup", out, {"batch_size": 16, "max_steps": 2})
    driver = tmp_path / "driver.py"
    driver.write_text(RESULT_DRIVER, encoding="utf-8")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(driver),
           str(recipe), str(tmp_path)]
    proc = subprocess.run(cmd, env=child_env(tmp_path), cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=300)
    check_ok(proc, "embedkit.train under torchrun --nproc_per_node 2")
    saved = results(out)
    expected = SentenceTransformer(str(out), device="cpu").encode(["a"])
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["output_dir"] == str(out) and got["global_step"] == 2
        assert got["results"] == saved, f"rank {rank}: results differ from results.json"
        assert max(abs(a - float(b)) for a, b in zip(got["vector"][0], expected[0], strict=True)) < 1e-5, rank
