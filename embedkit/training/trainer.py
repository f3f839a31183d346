"""``SentenceTransformerTrainer`` with the two things contrastive methods need on top:

* **method state in checkpoints** – parameters and buffers that live in the loss rather than the model
  (a training-only MLP head, a momentum encoder, a negative queue, a stage counter) are written next to
  each checkpoint and restored on resume; a checkpoint counts as complete only once that file and the
  ``embedkit_checkpoint.json`` marker exist.
* **loss guard** – a NaN or infinite loss stops training at that step, before the optimizer sees it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from sentence_transformers import SentenceTransformerTrainer

from embedkit.errors import NonFiniteLossError

METHOD_STATE_FILE = "embedkit_method_state.safetensors"
COMPLETE_MARKER = "embedkit_checkpoint.json"


def method_state(loss: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Everything in the loss module's state dict except the model being trained."""
    return {
        k: v.detach().cpu().contiguous().clone()
        for k, v in loss.state_dict().items()
        if not k.startswith("model.")
    }


def load_method_state(loss: torch.nn.Module, checkpoint: str | Path) -> None:
    """Restore :func:`method_state` from a checkpoint folder into ``loss`` (in place)."""
    file = Path(checkpoint) / METHOD_STATE_FILE
    if not file.exists():
        return
    state = load_file(str(file))
    missing = [k for k in method_state(loss) if k not in state]
    if missing:
        raise RuntimeError(f"{file}: method state lacks {missing}; was the checkpoint made by another method?")
    loss.load_state_dict(state, strict=False)


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The complete checkpoint with the highest step in ``folder``, or ``None``."""
    best, best_step = None, -1
    for ckpt in Path(folder).glob("checkpoint-*"):
        try:
            step = int(ckpt.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if (ckpt / COMPLETE_MARKER).exists() and step > best_step:
            best, best_step = ckpt, step
    return best


class EmbedkitTrainer(SentenceTransformerTrainer):
    """The sentence-transformers trainer plus method-state checkpoints and a loss guard."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        loss = out[0] if return_outputs else out
        if model.training and not torch.isfinite(loss.detach()).all():
            raise NonFiniteLossError(
                f"loss is {loss.item()} at step {self.state.global_step + 1}; training stopped. "
                f"The last good checkpoint is kept in {self.args.output_dir}."
            )
        return out

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
        if self.args.should_save and os.path.isdir(folder):
            state = method_state(self.loss)
            if state:
                save_file(state, os.path.join(folder, METHOD_STATE_FILE))
            with open(os.path.join(folder, COMPLETE_MARKER), "w", encoding="utf-8") as fh:
                json.dump({"global_step": self.state.global_step, "method_state": sorted(state)}, fh)
