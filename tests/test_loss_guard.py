"""The loss guard: a NaN or infinite loss stops training at that step with one clear line, keeps the last
good checkpoint and leaves nothing that looks like a finished run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _mp_helpers import checkpoint_dirs, marker, run_embedkit, write_recipe

from embedkit.errors import NonFiniteLossError


def _assert_unfinished(out: Path) -> None:
    assert not (out / "results.json").exists()
    assert not (out / "model.safetensors").exists()
    assert not list(out.glob("*.partial")) and not list(out.glob(".*.partial"))


def test_nan_loss_stops_cli_run_keeping_last_good_checkpoint(tmp_path: Path, tiny_model_path: str) -> None:
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, tiny_model_path, "simcse-unsup", out, {"max_steps": 10, "save_steps": 4})
    proc = run_embedkit(["train", str(recipe)], tmp_path, nan_at_step=6)

    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, errors
    line = errors[0]
    assert line.startswith("embedkit: error: loss is nan at step 6;"), line
    assert "checkpoint-4" in line and "no final model" in line

    assert [p.name for p in checkpoint_dirs(out)] == ["checkpoint-4"]
    assert marker(out / "checkpoints" / "checkpoint-4")["global_step"] == 4
    _assert_unfinished(out)


def test_infinite_loss_before_any_checkpoint(tmp_path: Path, tiny_model_path: str, monkeypatch) -> None:
    """In process: an infinite loss at the first step; nothing to keep, and the message says so."""
    from sentence_transformers import SentenceTransformerTrainer

    from embedkit.training.run import train

    compute = SentenceTransformerTrainer.compute_loss

    def infinite(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = compute(self, model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        return loss * torch.tensor(float("inf")) if model.training else loss

    monkeypatch.setattr(SentenceTransformerTrainer, "compute_loss", infinite)
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, tiny_model_path, "simcse-unsup", out, {"max_steps": 3, "save_steps": 2})
    with pytest.raises(NonFiniteLossError, match=r"loss is inf at step 1;.*no checkpoint was saved") as err:
        train(str(recipe))
    assert "\n" not in str(err.value)
    assert checkpoint_dirs(out) == []
    _assert_unfinished(out)


def test_gradient_clipping_covers_the_loss_owned_head(tmp_path: Path, spread_model_path: str, monkeypatch) -> None:
    """``max_grad_norm`` bounds the joint norm of the encoder's and the training-only head's gradients."""
    from embedkit.training import trainer as tr
    from embedkit.training.run import train

    seen: list[tuple[float, float]] = []
    clip = tr.EmbedkitTrainer._clip_grad_norm

    def recording_clip(self, model):
        before = float(clip(self, model))
        params = [*model.parameters(), *tr.loss_own_parameters(self.loss)]
        after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
        seen.append((before, after.item()))
        return before

    monkeypatch.setattr(tr.EmbedkitTrainer, "_clip_grad_norm", recording_clip)
    recipe = write_recipe(tmp_path, spread_model_path, "simcse-unsup", tmp_path / "out",
                          {"max_steps": 2, "max_grad_norm": 1e-3})
    train(str(recipe))
    assert len(seen) == 2
    for before, after in seen:
        assert before > 1e-2, "the gradients should need clipping for this test to say anything"
        assert after <= 1e-3 * (1 + 1e-4), (before, after)
