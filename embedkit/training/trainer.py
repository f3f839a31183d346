"""``SentenceTransformerTrainer`` with the two things contrastive methods need on top:

* **method state in checkpoints** – parameters and buffers that live in the loss rather than the model
  (a training-only MLP head, a momentum encoder, a negative queue, a stage counter) are written next to
  each checkpoint (from the public ``on_save`` hook) and restored on resume; a checkpoint counts as complete
  only once its manifest ``embedkit_checkpoint.json`` (every file's size and SHA-256, written last) exists.
* **loss guard** – a NaN or infinite loss stops training at that step, before the optimizer sees it, naming the
  newest checkpoint whose weights are finite (each manifest records ``weights_finite``: a run can diverge, e.g.
  through an infinite gradient, a save or two before its loss does).
* **sampler epochs** – every sampler under the training dataloader learns the epoch at each epoch start.
  After a resume under several processes the trainer reaches only accelerate's shard wrapper
  (``BatchSamplerShard`` forwards no ``set_epoch``), so the per-epoch seeded order would restart at
  epoch 0's; here the epoch is set on the samplers themselves.
* **loss-owned gradients across processes** – DDP averages the gradients of the model it wraps, not those
  of trainable parameters that live in the loss (a training-only MLP head); they are averaged here, so
  every process applies the same update and the run equals one process holding the global batch.
* **LoRA checkpoints** – a model training LoRA adapters (``model.lora``) saves the adapter in each checkpoint;
  resume and the best-model load restore it in place (:func:`embedkit.modeling.load_lora_checkpoint`).
* **one gradient norm** – ``max_grad_norm`` clips the encoder and the loss-owned parameters together, as the
  SimCSE reference code (whose MLP is part of the model) does; the trainer alone clips ``model.parameters()``.
* **the loss's hardness profile** – an InfoNCE-style loss (``hardness``, :class:`embedkit.losses.contrastive.
  HardnessMeter`) records which share of its gradient on the negatives the top-k negatives take; each training
  log adds ``hardness@k``, the mean over the rows since the last log (over every process), to the trackers and
  ``results.json``'s log history.
* **saves that fail in one line, rotation that spares a user's file** – a checkpoint save is refused before it
  starts when the disk clearly lacks the room (estimated from the model's and the optimizer's size); a save that
  fails anyway (a full disk: torch's ``inline_container.cc`` error; read-only, permission) removes the incomplete
  checkpoint and ends in one line naming the previous intact one. ``save_total_limit`` rotation runs once the new
  checkpoint's manifest exists, and never deletes a checkpoint holding a file embedkit did not write.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from sentence_transformers import SentenceTransformerTrainer
from transformers import TrainerCallback

from embedkit import distributed
from embedkit.errors import EmbedkitError, NonFiniteLossError
from embedkit.log import log
from embedkit.modeling import load_lora_checkpoint, lora_encoder, tensors_digest
from embedkit.outputs import free_bytes, fs_error, is_write_failure, size_text, tensor_bytes
from embedkit.training.checkpoints import (
    COMPLETE_MARKER,
    METHOD_STATE_FILE,
    checkpoint_foreign,
    complete_checkpoints,
    latest_complete,
    manifest_of,
    rotate,
    write_manifest,
)

__all__ = ["COMPLETE_MARKER", "METHOD_STATE_FILE", "EmbedkitTrainer", "latest_checkpoint", "load_method_state"]


def _losses(loss: torch.nn.Module | dict[str, torch.nn.Module]) -> list[tuple[str, torch.nn.Module]]:
    """(key prefix, module) of a loss, or of each loss of a multi-task run's dict (prefix ``<source>.``)."""
    return [(f"{k}.", v) for k, v in loss.items()] if isinstance(loss, dict) else [("", loss)]


def method_state(loss: torch.nn.Module | dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """Everything in the loss module's state dict except the model being trained (a dict of losses: each
    loss's, keyed ``<source>.<key>``)."""
    return {
        prefix + k: v.detach().cpu().contiguous().clone()
        for prefix, module in _losses(loss)
        for k, v in module.state_dict().items()
        if not k.startswith("model.")
    }


def load_method_state(loss: torch.nn.Module | dict[str, torch.nn.Module], checkpoint: str | Path) -> None:
    """Restore :func:`method_state` from a checkpoint folder into ``loss`` (in place)."""
    file = Path(checkpoint) / METHOD_STATE_FILE
    if not file.exists():
        return
    state = load_file(str(file))
    missing = [k for k in method_state(loss) if k not in state]
    if missing:
        raise RuntimeError(f"{file}: method state lacks {missing}; was the checkpoint made by another method?")
    for prefix, module in _losses(loss):
        module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=False)


def loss_own_parameters(loss: torch.nn.Module | dict[str, torch.nn.Module]) -> list[torch.nn.Parameter]:
    """Trainable parameters of the loss outside ``model.*`` (e.g. a training-only head)."""
    return [p for _, module in _losses(loss) for n, p in module.named_parameters()
            if not n.startswith("model.") and p.requires_grad]


def hardness_logs(loss: torch.nn.Module | dict[str, torch.nn.Module], device: torch.device | str = "cpu"
                  ) -> dict[str, float]:
    """``hardness@k``: the mean of the loss's (each loss's, in a multi-task run) recorded hardness profile over the
    rows since the last call, over every process; the meters start again. Empty for a loss without one."""
    meters = [m for _, module in _losses(loss) if (m := getattr(module, "hardness", None)) is not None]
    if not meters:
        return {}
    ks = meters[0].ks
    flat = torch.zeros(len(ks) + 1, dtype=torch.float64)
    for meter in meters:
        sums, rows = meter.take()
        flat += torch.tensor([*sums, rows], dtype=torch.float64)
    if distributed.world_size() > 1:
        flat = flat.to(device)  # the trainer's device: what the process group's backend reduces
        dist.all_reduce(flat)  # every process logs, with the same meters: the same collective call everywhere
        flat = flat.cpu()
    rows = flat[-1].item()
    return {f"hardness@{k}": round(flat[i].item() / rows, 4) for i, k in enumerate(ks)} if rows else {}


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """All-reduce the gradients of ``params`` to their mean over processes (no-op in one process)."""

    size = distributed.world_size()
    if size == 1 or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(size)
    offset = 0
    for p, g in zip(params, grads, strict=True):
        p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
        offset += g.numel()


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """A content hash of a method state (to check that every process holds the same one)."""
    return tensors_digest(state)


def method_state_digests(state: dict[str, torch.Tensor]) -> list[str]:
    """:func:`state_digest` of this process's method state, gathered from every process (rank order)."""

    mine = state_digest(state)
    size = distributed.world_size()
    if size == 1:
        return [mine]
    out: list[str | None] = [None] * size
    dist.all_gather_object(out, mine)
    return [str(d) for d in out]


def all_finite(loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every process (so that all of them stop at the same step)."""

    bad = (~torch.isfinite(loss.detach())).any().to(torch.float32).reshape(1)
    if distributed.world_size() > 1:
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return not bool(bad.item())


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint with the highest step whose manifest exists in ``folder``, or ``None`` (unverified;
    ``--resume`` verifies with :func:`embedkit.training.checkpoints.newest_intact`)."""
    return latest_complete(folder)


def tensors_finite(tensors) -> bool:
    """Whether every floating tensor of ``tensors`` is free of NaN and ±inf."""
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def checkpoint_weights_finite(checkpoint: Path) -> bool:
    """The manifest's ``weights_finite`` (recorded at save time); for a checkpoint saved before manifests
    recorded it, its safetensors files are read and checked."""
    recorded = manifest_of(checkpoint).get("weights_finite")
    if recorded is not None:
        return bool(recorded)
    return all(tensors_finite(load_file(str(f)).values()) for f in sorted(checkpoint.rglob("*.safetensors")))


def last_good_checkpoint(folder: str | Path) -> tuple[Path | None, list[str]]:
    """The newest complete checkpoint in ``folder`` whose weights are finite, and the newer ones whose are not."""
    diverged = []
    for checkpoint in complete_checkpoints(folder) if os.path.isdir(folder) else []:
        if checkpoint_weights_finite(checkpoint):
            return checkpoint, diverged
        diverged.append(checkpoint.name)
    return None, diverged


def set_sampler_epoch(loader: object, epoch: int) -> list[object]:
    """Call ``set_epoch(epoch)`` on every sampler below ``loader`` (through ``batch_sampler`` / ``sampler``
    links, e.g. DataLoaderShard → BatchSamplerShard → DefaultBatchSampler → SeedableRandomSampler); returns
    the samplers it reached."""
    reached, seen, todo = [], {id(loader)}, [loader]
    while todo:
        node = todo.pop()
        for attr in ("batch_sampler", "sampler"):
            child = getattr(node, attr, None)
            if child is None or id(child) in seen:
                continue
            seen.add(id(child))
            if hasattr(child, "set_epoch"):
                child.set_epoch(epoch)
                reached.append(child)
            todo.append(child)
    return reached


class SamplerEpochCallback(TrainerCallback):
    """At each epoch start, set the epoch on the training samplers (see :func:`set_sampler_epoch`)."""

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        if train_dataloader is not None:
            # state.epoch is the progress so far (1.33 when resuming in the second epoch); floor = this epoch.
            set_sampler_epoch(train_dataloader, int(state.epoch + 1e-6) if state.epoch else 0)


def save_failed(folder: Path, err: BaseException) -> EmbedkitError:
    """One line for a checkpoint save that failed for the filesystem: the incomplete ``folder`` is removed (when
    it holds only what the trainer writes) and the line names the checkpoint a ``--resume`` continues from."""
    removed = ""
    if folder.is_dir() and not (folder / COMPLETE_MARKER).is_file() and not checkpoint_foreign(folder):
        shutil.rmtree(folder, ignore_errors=True)
        removed = f"the incomplete {folder.name} was removed; "
    previous = latest_complete(folder.parent) if folder.parent.is_dir() else None
    hint = removed + (f"{previous.name} is intact: free space (or make the folder writable), then run the same "
                      "embedkit train ... --resume to continue from it" if previous is not None else
                      "no earlier checkpoint was saved, so the run starts again from step 0 once the problem "
                      "is fixed")
    return fs_error(err, folder, "saving it", f"checkpoint {folder}", hint)


class CheckpointStateCallback(TrainerCallback):
    """After the trainer has written a checkpoint: the loss's own state, then the manifest, last; then the
    rotation of older checkpoints (``limit``: the run's ``save_total_limit``, which the trainer itself is not
    given: its rotation would run before the manifest and delete checkpoints holding a user's files)."""

    def __init__(self, loss: torch.nn.Module) -> None:
        self.loss = loss
        self.limit: int | None = None
        self.before_error: Callable[[], None] = lambda: None  # the trainer closes its progress bars

    def on_save(self, args, state, control, model=None, **kwargs):
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        method = method_state(self.loss)
        digests = method_state_digests(method)  # collective: every process takes part
        if args.should_save and os.path.isdir(folder):
            try:
                if method:
                    save_file(method, os.path.join(folder, METHOD_STATE_FILE))
                finite = tensors_finite([*(model.parameters() if model is not None else ()), *method.values()])
                write_manifest(folder, global_step=state.global_step, method_state=sorted(method),
                               method_state_sha256_per_rank=digests, weights_finite=finite)
            except Exception as err:
                if not is_write_failure(err):
                    raise
                self.before_error()
                raise save_failed(Path(folder), err) from None
            for name, foreign in rotate(args.output_dir, self.limit, state.best_model_checkpoint):
                log(f"{name} holds files embedkit did not write ({', '.join(foreign[:3])}); kept, not rotated away")


class EmbedkitTrainer(SentenceTransformerTrainer):
    """The sentence-transformers trainer plus method-state checkpoints and a loss guard."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.add_callback(SamplerEpochCallback())
        self.checkpoint_state = CheckpointStateCallback(self.loss)
        self.checkpoint_state.before_error = self._close_progress_bars
        self.add_callback(self.checkpoint_state)

    def train(self, *args, **kwargs):
        # The trainer's own rotation (save_total_limit) deletes whole checkpoint folders before their manifest is
        # written; the callback rotates instead, after it, sparing a checkpoint that holds a user's file.
        limit = self.args.save_total_limit
        self.checkpoint_state.limit, self.args.save_total_limit = limit, None
        try:
            out = super().train(*args, **kwargs)
        finally:
            self.args.save_total_limit = limit
        best = self.state.best_model_checkpoint
        if limit == 1 and best is not None and self.args.should_save:  # as the trainer ends with limit 1
            for name, foreign in rotate(self.args.output_dir, 1, best, keep_newest=False):
                log(f"{name} holds files embedkit did not write ({', '.join(foreign[:3])}); kept")
        return out

    def _run_epoch(self, *args, **kwargs):
        # transformers takes an optimizer step before it compares the step with max_steps, so a run resumed from
        # its final checkpoint (killed after saving it, before it finished) would train one step past max_steps.
        if 0 < self.args.max_steps <= self.state.global_step:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def get_resumed_dataloader(self, dataloader: Any, num_batches: int) -> Any:
        """A streamed training set (``data.train.streaming``) already starts past the rows the resumed steps
        trained on (:func:`embedkit.training.run.setup` skips them, row by row, without tokenising): the
        dataloader as it is. The trainer still restores the RNG states after the first batch is fetched, as it
        does after skipping batches, so the dropout masks continue where they stopped."""
        import datasets

        if isinstance(self.train_dataset, datasets.IterableDataset):
            return dataloader
        return super().get_resumed_dataloader(dataloader, num_batches)

    def checkpoint_bytes(self) -> int:
        """About what one checkpoint takes (a lower bound): the saved model (the adapter alone under LoRA) and
        the optimizer's two float32 moments per trainable parameter, as AdamW keeps."""
        target = getattr(self.model, "_orig_mod", self.model)
        trainable = [p for p in target.parameters() if p.requires_grad] + loss_own_parameters(self.loss)
        saved = tensor_bytes(trainable) if lora_encoder(target) is not None else tensor_bytes(target.state_dict())
        return saved + (0 if self.args.save_only_model else 2 * 4 * sum(p.numel() for p in trainable))

    def _save_checkpoint(self, model, trial) -> None:
        folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
        needed = self.checkpoint_bytes()
        free = free_bytes(folder) if self.args.should_save else None
        short = torch.tensor([1.0 if free is not None and free < needed else 0.0], device=self.args.device)
        if distributed.world_size() > 1:
            dist.all_reduce(short, op=dist.ReduceOp.MAX)  # every process stops at the same save
        if short.item():
            self._close_progress_bars()  # so that the error starts its own line
            previous = latest_complete(folder.parent) if folder.parent.is_dir() else None
            where = f"only {size_text(free)} free on the disk of {folder.parent}" if free is not None else (
                "the disk of the primary process is too full")
            raise EmbedkitError(
                f"checkpoint {folder}: needs about {size_text(needed)}, {where}; not started, so "
                + (f"{previous.name} is intact: free space, then run the same embedkit train ... --resume to "
                   "continue from it" if previous is not None else "no checkpoint exists yet: free space or choose "
                   "an output.dir on another disk, then start the run again"))
        try:
            super()._save_checkpoint(model, trial)
        except Exception as err:
            if not is_write_failure(err):
                raise
            self._close_progress_bars()
            raise save_failed(folder, err) from None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: the hardness profile since the previous one
            logs = {**logs, **hardness_logs(self.loss, self.args.device)}
        return super().log(logs, start_time)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        self.check_finite(model, out[0] if return_outputs else out)
        return out

    def check_finite(self, model, loss: torch.Tensor) -> None:
        """The loss guard: a NaN or infinite training loss stops the run before the optimizer sees it."""
        if model.training and not all_finite(loss):
            last, diverged = last_good_checkpoint(self.args.output_dir)
            kept = f"the last good checkpoint is {last}" if last else (
                f"no checkpoint with finite weights was saved in {self.args.output_dir}" if diverged else
                f"no checkpoint was saved in {self.args.output_dir}")
            if diverged:
                kept += f" ({', '.join(diverged)} {'holds' if len(diverged) == 1 else 'hold'} non-finite weights)"
            self._close_progress_bars()  # so that the error starts its own line
            value = loss.item() if loss.numel() == 1 else "not finite"
            where = "" if not torch.isfinite(loss.detach()).all() else " on another process"
            raise NonFiniteLossError(
                f"loss is {value}{where} at step {self.state.global_step + 1}; training stopped before that "
                f"update, {kept}, and no final model was written"
            )

    def _close_progress_bars(self) -> None:
        for callback in self.callback_handler.callbacks:
            for name in ("training_bar", "prediction_bar"):
                bar = getattr(callback, name, None)
                if bar is not None and hasattr(bar, "close"):
                    bar.close()
                    setattr(callback, name, None)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        # DeepSpeed reduces the gradients of every parameter its optimizer holds, the loss's included.
        if self.accelerator.sync_gradients and not self.is_deepspeed_enabled:
            average_gradients(loss_own_parameters(self.loss))
        return loss

    def _load_from_checkpoint(self, checkpoint_path: str, model=None) -> None:
        # A LoRA checkpoint holds the adapter, not the encoder: restore it in place (resume, best model).
        target = getattr(self.model, "_orig_mod", self.model)
        if lora_encoder(target) is not None:
            load_lora_checkpoint(target, checkpoint_path)
            return
        super()._load_from_checkpoint(checkpoint_path)

    def _clip_grad_norm(self, model):
        own = loss_own_parameters(self.loss)
        if not own or self.is_deepspeed_enabled or self._has_mixed_mesh_grads(model):
            return super()._clip_grad_norm(model)  # DeepSpeed clips every parameter its optimizer holds
        return self.accelerator.clip_grad_norm_([*model.parameters(), *own], self.args.max_grad_norm)

