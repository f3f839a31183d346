"""Exact resume: a run killed with SIGKILL right after its first checkpoint and continued with
``embedkit train --resume`` ends bit-for-bit where an uninterrupted run ends.

The checkpoint falls in the middle of the second epoch (48 rows, batch 8: 6 steps an epoch, checkpoint at
step 8), with dropout on, so the test needs the model, optimizer, scheduler, RNG states, the sampler's
per-epoch order and position, and the loss's own state (the training-only head) all restored. To cover a
stateful method add its name to ``METHODS`` (and a data writer in ``_mp_helpers.TRAIN_DATA``).
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
from _mp_helpers import final_weights, kill_resume_compare
from sentence_transformers.base.sampler import DefaultBatchSampler

from embedkit.errors import RecipeError
from embedkit.training.trainer import COMPLETE_MARKER, SamplerEpochCallback, latest_checkpoint

# Stateful methods, their model settings and the method-state keys their checkpoints must hold (esimcse and
# contriever: test_esimcse.py). debcse saves no rows: they are re-drawn from the seed and the mining round,
# which the resumed run must re-create (it re-mines every 5 steps here); text2token saves the stage step.
METHODS = {
    "simcse-unsup": (None, ()),
    "debcse": (None, ()),
    "text2token": ({"pooling": "mean", "mlp_only_train": False}, ("step", "head.bias")),
    "contrastive": (None, ()),
    "ccp": (None, ()),
}
# Method keys per method: contrastive resumes with its own seeded batch sampler (no_duplicates).
PARAMS = {"contrastive": {"no_duplicates": True, "hard_negative_weight": 0.5, "symmetric": True}}


@pytest.mark.parametrize("method", [
    pytest.param(m, marks=() if m == "simcse-unsup" else pytest.mark.slow) for m in METHODS])
def test_sigkill_then_resume_matches_uninterrupted_run(method: str, tmp_path: Path, spread_model_path: str) -> None:
    model, state_keys = METHODS[method]
    report = kill_resume_compare(tmp_path, spread_model_path, method, model=model, method_params=PARAMS.get(method),
                                 training={"max_steps": 12, "save_steps": 8, "batch_size": 8})
    killed = report["killed"]
    assert killed["returncode"] == -signal.SIGKILL
    assert killed["checkpoints"] == ["checkpoint-8"], "killed right after the first checkpoint"
    assert not killed["results_json"] and not killed["final_model"], "a killed run must not look finished"
    assert "resuming from" in report["resume_log"] and "checkpoint-8" in report["resume_log"]

    assert report["global_step"] == (12, 12)
    assert report["last_checkpoints"] == ("checkpoint-12", "checkpoint-12")
    assert report["weights_bitwise_mismatch"] == [], f"max abs diff {report['weights_max_abs_diff']}"
    assert report["method_state_keys"], "expected loss-owned state (the training-only head)"
    assert set(state_keys) <= set(report["method_state_keys"])
    assert report["method_state_bitwise_mismatch"] == []
    full, resumed = report["losses"]
    assert sorted(full) == sorted(resumed) == list(range(1, 13))
    assert [full[s] for s in range(9, 13)] == [resumed[s] for s in range(9, 13)]
    assert min(full.values()) > 1e-3 and max(full.values()) - min(full.values()) > 1e-2, \
        f"the loss must be live for the comparison to say anything: {full}"


def test_resume_after_the_final_checkpoint_trains_no_further_step(tmp_path: Path, spread_model_path: str) -> None:
    """Killed right after its last checkpoint (step 8 of 8), before it finished: --resume trains no step more
    (transformers takes one optimizer step before it checks max_steps) and ends bit-for-bit where the
    uninterrupted run ends."""
    report = kill_resume_compare(tmp_path, spread_model_path, "simcse-unsup",
                                 training={"max_steps": 8, "save_steps": 8, "batch_size": 8})
    assert report["killed"]["returncode"] == -signal.SIGKILL
    assert report["killed"]["checkpoints"] == ["checkpoint-8"] and not report["killed"]["results_json"]
    assert report["global_step"] == (8, 8)
    assert report["last_checkpoints"] == ("checkpoint-8", "checkpoint-8")
    assert report["weights_bitwise_mismatch"] == [], f"max abs diff {report['weights_max_abs_diff']}"
    full, resumed = report["losses"]
    assert sorted(full) == list(range(1, 9)) and max(resumed, default=0) <= 8, resumed


def test_sigkill_then_resume_lora_matches_uninterrupted_run(tmp_path: Path, spread_model_path: str) -> None:
    """A LoRA run's checkpoints hold the adapter, not the encoder; resume restores it in place and ends
    bit-for-bit where the uninterrupted run ends (the adapter files and the training-only head)."""
    pytest.importorskip("peft")
    lora = {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": "all-linear"}
    report = kill_resume_compare(tmp_path, spread_model_path, "simcse-unsup", model={"lora": lora},
                                 training={"max_steps": 12, "save_steps": 8, "batch_size": 8})
    assert report["killed"]["returncode"] == -signal.SIGKILL
    assert report["killed"]["checkpoints"] == ["checkpoint-8"] and not report["killed"]["results_json"]
    assert "checkpoint-8" in report["resume_log"]
    assert report["global_step"] == (12, 12)
    weights = final_weights(tmp_path / "uninterrupted")
    assert weights and all(k.startswith("adapter_model.safetensors:") or k.startswith("1_Pooling")
                           for k in weights), sorted(weights)[:3]
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in weights.items()), "the adapter must have trained"
    assert report["weights_bitwise_mismatch"] == [], f"max abs diff {report['weights_max_abs_diff']}"
    assert report["method_state_bitwise_mismatch"] == []
    full, resumed = report["losses"]
    assert [full[s] for s in range(9, 13)] == [resumed[s] for s in range(9, 13)]


def test_latest_checkpoint_skips_incomplete(tmp_path: Path) -> None:
    for step, complete in ((4, True), (8, True), (12, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / COMPLETE_MARKER).write_text("{}", encoding="utf-8")
    (tmp_path / "checkpoint-x").mkdir()
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-8"
    assert latest_checkpoint(tmp_path / "missing") is None


def test_resume_without_complete_checkpoint_is_an_error(tmp_path: Path, tiny_model_path: str) -> None:
    from _mp_helpers import write_recipe

    from embedkit.training.run import train

    out = tmp_path / "out"
    (out / "checkpoints" / "checkpoint-4").mkdir(parents=True)  # killed while writing: no marker
    recipe = write_recipe(tmp_path, tiny_model_path, "simcse-unsup", out)
    with pytest.raises(RecipeError, match="no complete checkpoint"):
        train(str(recipe), resume=True)


class EpochSeededSampler(DefaultBatchSampler):
    """Stand-in for a method's own batch sampler: one seeded order per epoch (``seed + epoch``)."""

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(len(self.sampler), generator=gen).tolist()
        for i in range(0, len(perm) - self.batch_size + 1, self.batch_size):
            yield perm[i : i + self.batch_size]

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size


@pytest.mark.parametrize("kind", ["default", "custom"])
@pytest.mark.parametrize("rank", [0, 1])
def test_resumed_rank_sees_the_same_batches(kind: str, rank: int) -> None:
    """Rank ``rank`` of 2, resumed 2 batches into its second epoch, gets the batches an uninterrupted run gets.

    Built from accelerate's own ``prepare_data_loader`` / ``skip_first_batches``; the epoch is set the way
    transformers' ``Trainer._run_epoch`` does, plus embedkit's :class:`SamplerEpochCallback`. Without the
    callback the custom sampler restarts at epoch 0's order (``BatchSamplerShard`` forwards no ``set_epoch``)."""
    from types import SimpleNamespace

    import datasets
    from accelerate.data_loader import prepare_data_loader, skip_first_batches
    from torch.utils.data import DataLoader, RandomSampler

    dataset = datasets.Dataset.from_dict({"idx": list(range(40))})

    def loader():
        gen = torch.Generator().manual_seed(3)
        sampler = (DefaultBatchSampler(RandomSampler(dataset, generator=gen), batch_size=4, drop_last=True, seed=3)
                   if kind == "default" else EpochSeededSampler(dataset, batch_size=4, drop_last=True, seed=3))
        plain = DataLoader(dataset, batch_sampler=sampler, collate_fn=lambda rows: [r["idx"] for r in rows])
        return prepare_data_loader(plain, num_processes=2, process_index=rank, put_on_device=False,
                                   use_seedable_sampler=True, data_seed=3)

    def epoch_batches(dl, epoch: int, skip: int = 0) -> list:
        if skip:
            dl = skip_first_batches(dl, skip)
        dl.set_epoch(epoch)
        inner = getattr(getattr(dl, "batch_sampler", None), "batch_sampler", None)
        if hasattr(inner, "set_epoch"):
            inner.set_epoch(epoch)
        return list(dl)

    full = loader()
    first, second = epoch_batches(full, 0), epoch_batches(full, 1)
    assert first != second and len(second) == 5

    resumed = loader()
    SamplerEpochCallback().on_epoch_begin(None, SimpleNamespace(epoch=1.4), None, train_dataloader=resumed)
    assert epoch_batches(resumed, 1, skip=2) == second[2:]
