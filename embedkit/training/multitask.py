"""Multi-task training (``data.train`` a list of sources, ``method: multitask``; docs/multitask.md).

Each source becomes one dataset of a ``DatasetDict`` and one loss of a dict of losses, sentence-transformers'
multi-dataset training: its trainer routes a batch to the loss of the source the batch came from. What embedkit
adds here:

* :class:`TaskBatchSampler`, the multi-dataset batch sampler. It decides the source of each *optimizer step*
  (the global batch) and hands every process its share of that step from the same source, so a step never mixes
  sources across processes (sentence-transformers' own samplers pick a source per per-device batch, so two
  processes of one step could train on different sources). Its order is a pure function of the seed, the epoch
  and the position in the epoch: a resumed run (the trainer replays the epoch up to its step) gets the batches
  the uninterrupted run got, and two processes get the halves of the batch one process gets.
* :class:`MultiTaskTrainer`: each source's loss times its ``weight``, the per-source losses logged separately
  (``loss_<name>``: the mean over that source's steps since the last log), and the ``mixed`` baseline (rows of all
  sources in one batch, each source's loss on its own rows, weighted sum). A source's in-batch negatives in a
  ``mixed`` step are its own rows only; the steps in which a source has fewer than 2 rows (where an in-batch loss
  has no negative) are counted and logged (``mixed_short_<name>``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from itertools import accumulate
from typing import Any

import torch
import torch.distributed as dist
from sentence_transformers.base.sampler import MultiDatasetDefaultBatchSampler
from torch.utils.data import ConcatDataset

from embedkit import distributed
from embedkit.data.sources import read_train_source
from embedkit.errors import DataError
from embedkit.experts import drop_inactive_gradients, set_route
from embedkit.log import log
from embedkit.losses.objective import compose
from embedkit.methods import bound_method
from embedkit.methods.base import TrainContext
from embedkit.methods.multitask import MultiTrainData
from embedkit.recipe import Recipe, task_recipes
from embedkit.training.trainer import EmbedkitTrainer


def _generator(*keys: int) -> torch.Generator:
    """A generator seeded from integers (seed, epoch, source, round): independent streams, same on every process."""
    digest = hashlib.sha256(":".join(map(str, keys)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def step_schedule(rule: str, steps: list[int], weights: list[float], seed: int, epoch: int) -> list[int]:
    """The source of each step of one epoch (indices into the sources).

    ``steps[i]`` is how many full global batches source i holds. Rules:

    * ``proportional`` (sentence-transformers' PROPORTIONAL): every batch of every source once, in a seeded random
      order: source i gets ``steps[i]`` of the epoch's ``Σ steps`` steps.
    * ``round_robin`` (ROUND_ROBIN): sources in turn, 0, 1, …, K−1, 0, 1, …, until the smallest runs out:
      ``K · min(steps)`` steps.
    * ``balanced`` (CoDiEmb's per-task step balancing, our reading): the epoch keeps ``Σ steps`` steps, but source
      i gets the share ``w_i / Σ w`` of them, whatever its size (a small source's batches are drawn again from a
      fresh shuffle when it runs out), spread evenly: each step goes to the source whose steps lag its share most,
      ``argmax_i (t + 1) · w_i / Σ w − n_i`` (``n_i`` its steps so far, ``t`` the step; ties to the lower index).
    """
    if rule == "round_robin":
        return list(range(len(steps))) * min(steps)
    total = sum(steps)
    if rule == "proportional":
        order = [i for i, n in enumerate(steps) for _ in range(n)]
        perm = torch.randperm(len(order), generator=_generator(seed, epoch, -1)).tolist()
        return [order[j] for j in perm]
    if rule == "balanced":
        share = [w / sum(weights) for w in weights]
        taken = [0] * len(steps)
        out = []
        for t in range(total):
            lag = [(t + 1) * s - n for s, n in zip(share, taken, strict=True)]
            i = max(range(len(lag)), key=lambda k: (round(lag[k], 9), -k))
            taken[i] += 1
            out.append(i)
        return out
    raise ValueError(f"unknown single-task rule {rule!r}")


class TaskBatchSampler(MultiDatasetDefaultBatchSampler):
    """Single-task batches (or, with ``rule="mixed"``, batches of the pooled rows) over the sources of a
    ``ConcatDataset``, one seeded order per epoch.

    Each step is one global batch of ``batch_size × world_size`` rows, yielded as ``world_size`` consecutive
    per-process batches of ``batch_size`` (accelerate gives process r every world_size-th batch: r's share of the
    step). Source i's rows are a seeded permutation per (epoch, round) cut into global batches; a source's last
    rows that do not fill a global batch wait for the next round's shuffle. :func:`step_schedule` orders the
    sources. The children ``batch_samplers`` the trainer builds are not used (a source's batches are drawn here).
    """

    def __init__(self, dataset: ConcatDataset, batch_samplers: list, generator: torch.Generator | None = None,
                 seed: int = 0, *, rule: str = "balanced", weights: list[float] | None = None,
                 world_size: int = 1) -> None:
        super().__init__(dataset, batch_samplers, generator, seed)
        self.rule = rule
        self.world_size = world_size
        self.sizes = [len(d) for d in dataset.datasets]
        self.offsets = [0, *accumulate(self.sizes)][:-1]
        self.weights = list(weights) if weights is not None else [1.0] * len(self.sizes)
        self.global_batch = self.batch_size * world_size
        self.steps = [n // self.global_batch for n in self.sizes]

    def schedule(self) -> list[int]:
        """The source of each step of the current epoch (``mixed``: -1 for every step)."""
        if self.rule == "mixed":
            return [-1] * (sum(self.sizes) // self.global_batch)
        return step_schedule(self.rule, self.steps, self.weights, int(self.seed), int(self.epoch))

    def _rows(self, source: int) -> Iterator[int]:
        """Source ``source``'s rows (global indices) for this epoch: seeded shuffles, one round after another."""
        rounds = 0
        while True:
            perm = torch.randperm(self.sizes[source], generator=_generator(self.seed, self.epoch, source, rounds))
            usable = self.steps[source] * self.global_batch  # whole global batches only
            yield from (self.offsets[source] + j for j in perm[:usable].tolist())
            rounds += 1

    def __iter__(self) -> Iterator[list[int]]:
        b, g = self.batch_size, self.global_batch
        if self.rule == "mixed":
            perm = torch.randperm(sum(self.sizes), generator=_generator(self.seed, self.epoch, -2)).tolist()
            steps = [perm[t * g:(t + 1) * g] for t in range(len(perm) // g)]
        else:
            streams = [self._rows(i) for i in range(len(self.sizes))]
            steps = [[next(streams[i]) for _ in range(g)] for i in self.schedule()]
        for rows in steps:
            for r in range(self.world_size):
                yield rows[r * b:(r + 1) * b]

    def __len__(self) -> int:
        return len(self.schedule()) * self.world_size


class MixedCollator:
    """The ``mixed`` baseline's collator: a batch's rows grouped by source, each group collated by the trainer's
    own collator (sources have different columns), and each source's row count; the trainer scores each group
    with its source's loss."""

    def __init__(self, base: Any) -> None:
        self.base = base

    def __getattr__(self, name: str) -> Any:  # valid_label_columns, tokenizer, ...: the base collator's
        return getattr(self.base, name)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        groups: dict[str, list[dict[str, Any]]] = {}
        for row in features:
            groups.setdefault(row["dataset_name"], []).append(row)
        return {"tasks": {name: self.base(rows) for name, rows in groups.items()},
                "rows": {name: len(rows) for name, rows in groups.items()}}


class MultiTaskTrainer(EmbedkitTrainer):
    """:class:`EmbedkitTrainer` for a dict of per-source losses: source weights, per-source loss logs, ``mixed``.

    ``mixed``: each source's loss sees only that source's rows of the batch, so its in-batch negatives are its own
    rows (never another source's texts). A source with one row in a step has none: InfoNCE over one row without
    hard negatives scores the positive against itself alone and is 0 with no gradient, CoSENT has no pair of
    pairs (0); with no row the source is not scored. Such steps (< 2 rows) are counted per source, logged as
    ``mixed_short_<name>`` (steps of the log window) and, at the end, written to the ``summary`` entries
    (``train.tasks[i].mixed_short_steps`` in results.json) and said in one line."""

    short_rows = 2  # fewer rows than this: no in-batch negative

    def __init__(self, *args: Any, task_weights: dict[str, float], mixed: bool = False,
                 summary: list[dict[str, Any]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.task_weights = task_weights
        self.mixed = mixed
        self.summary = summary if summary is not None else []
        self._task_sums: dict[str, list[float]] = {name: [0.0, 0.0] for name in task_weights}  # sum, steps
        self._short: dict[str, int] = dict.fromkeys(task_weights, 0)  # mixed: short steps since the last log
        if mixed:
            self.data_collator = MixedCollator(self.data_collator)

    def _weighted(self, name: str, loss: torch.Tensor) -> torch.Tensor:
        weight = self.task_weights[name]
        return loss if weight == 1.0 else loss * weight  # weight 1: the source's loss bit for bit

    def _record(self, name: str, loss: torch.Tensor) -> None:
        sums = self._task_sums[name]
        sums[0] += float(loss.detach())
        sums[1] += 1

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.mixed:
            return self._mixed_loss(model, inputs, return_outputs)
        name = inputs.get("dataset_name")
        set_route(model, name)  # model.experts: enforced routing, the batch's source's expert (no-op without)
        out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        loss = out[0] if return_outputs else out
        if model.training and name is not None:
            self._record(name, loss)
        loss = self._weighted(name, loss) if name is not None else loss
        return (loss, out[1]) if return_outputs else loss

    def _mixed_loss(self, model, inputs, return_outputs):
        if model.training:
            rows = inputs.get("rows", {})
            for name in self._short:
                self._short[name] += rows.get(name, 0) < self.short_rows
        total = None
        for name, group in inputs["tasks"].items():
            group = dict(group)
            group.pop("dataset_name", None)
            features, labels = self.collect_features(group)
            set_route(model, name)  # model.experts: this source's rows through its own expert
            loss_fn = self.loss[name]
            if model == self.model_wrapped and hasattr(loss_fn, "model") and loss_fn.model != model:
                loss_fn = self.override_model_in_loss(loss_fn, model)
            loss = loss_fn(features, labels)
            if isinstance(loss, dict):
                loss = torch.stack(list(loss.values())).sum()
            if model.training:
                self._record(name, loss)
            loss = self._weighted(name, loss)
            total = loss if total is None else total + loss
        assert total is not None
        self.check_finite(model, total)
        return (total, {}) if return_outputs else total

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        drop_inactive_gradients(model)  # model.experts: no update of another domain's expert (no-op without)
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # training logs: each source's mean loss over its steps since the last log
            names = list(self._task_sums)
            flat = torch.tensor([v for n in names for v in self._task_sums[n]], dtype=torch.float64)
            if distributed.world_size() > 1:
                dist.all_reduce(flat)  # every process logs (the trainer's own loss is gathered there too)
            logs = dict(logs)
            for k, name in enumerate(names):
                total, steps = flat[2 * k].item(), flat[2 * k + 1].item()
                if steps:
                    logs[f"loss_{name}"] = round(total / steps, 4)
                self._task_sums[name] = [0.0, 0.0]
            if self.mixed:  # one process (mixed is refused under several)
                logs.update({f"mixed_short_{name}": n for name, n in self._short.items()})
                self._short = dict.fromkeys(self._short, 0)
        return super().log(logs, start_time)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        out = super().train(*args, **kwargs)
        if self.mixed:  # totals from the log history (a resumed run restores it) and the steps since its last log
            history = self.state.log_history
            for entry in self.summary:
                name = entry["name"]
                entry["mixed_short_steps"] = int(sum(h.get(f"mixed_short_{name}", 0) for h in history)
                                                 + self._short.get(name, 0))
            said = ", ".join(f"{e['name']} in {e['mixed_short_steps']}" for e in self.summary)
            log(f"mixed: steps in which a source had fewer than {self.short_rows} rows of the batch (no in-batch "
                f"negative: its loss there is 0 unless its rows carry their own negatives): {said} of "
                f"{self.state.global_step}")
        return out


@dataclass
class Tasks:
    """What :func:`build_tasks` made: the datasets, the losses and how the trainer is to draw batches."""

    dataset: Any  # datasets.DatasetDict, one split per source
    losses: dict[str, torch.nn.Module]
    train_data: MultiTrainData
    sampler: Any  # the multi-dataset batch sampler factory
    prompts: dict[str, dict[str, str]]
    weights: dict[str, float]
    mixed: bool
    summary: list[dict[str, Any]] = field(default_factory=list)
    router_mapping: dict[str, dict[str, str]] = field(default_factory=dict)  # model.experts: source → its expert

    def batch_sampler(self) -> None:
        return None

    def callbacks(self, loss: Any) -> list:
        return []  # source methods with callbacks are refused at validation

    def make_trainer(self, **kwargs: Any) -> MultiTaskTrainer:
        return MultiTaskTrainer(task_weights=self.weights, mixed=self.mixed, summary=self.summary, **kwargs)


def build_tasks(recipe: Recipe, train_data: MultiTrainData | None, model: Any, world_size: int, rank: int,
                data_dir: str | None) -> Tasks:
    """Each source's dataset (columns named after its method's roles) and composed loss, and the sampler."""
    import datasets

    global_batch = recipe.training.batch_size
    parts = dict(train_data.parts) if train_data is not None else {}
    splits, losses, prompts, weights, summary = {}, {}, {}, {}, []
    for src, view in task_recipes(recipe):
        method_cls, params = bound_method(view.method)
        data = parts.get(src.name)
        if data is None:  # a Hub source: read now, as a single-source run reads it
            data = read_train_source(view.data.train, view.method.name, method_cls.roles(), method_cls.column_types,
                                     method_cls.column_problem)
        roles = method_cls.roles(len(data.columns))  # a method may take any number of negative columns
        dataset = data.to_dataset(roles)
        if len(dataset) < global_batch:
            raise DataError(f"data.train source {src.name!r}: {len(dataset)} rows, fewer than one global batch "
                            f"({global_batch}); lower training.batch_size or add rows")
        parts[src.name] = data
        ctx = TrainContext(recipe=view, model=model, params=params, world_size=world_size, rank=rank,
                           extras={"data_dir": data_dir})
        method = method_cls(ctx)
        splits[src.name] = dataset
        losses[src.name] = compose(method.build_loss(), view, model)
        weights[src.name] = float(src.weight)
        own = method_cls.training_prompts(view, dataset.column_names)
        if own:
            prompts[src.name] = own
        summary.append({"name": src.name, "method": view.method.name, "rows": len(dataset), "weight": src.weight,
                        "batches_per_epoch": len(dataset) // global_batch})
    rule = recipe.method.model_dump()["sampler"]
    if rule == "mixed":  # what the baseline trains each source on (docs/multitask.md)
        total = sum(len(d) for d in splits.values())
        log("mixed: each source's loss sees only its own rows of a batch (its in-batch negatives are its rows); "
            "rows of a batch of " + f"{global_batch} on average: " + ", ".join(
                f"{name} {global_batch * len(d) / total:.1f}" for name, d in splits.items()))
    sampler = partial(TaskBatchSampler, rule=rule, weights=list(weights.values()), world_size=world_size)
    # A weight acts once: balanced gives it as a share of the steps; the other samplers multiply the loss by it.
    loss_weights = {name: 1.0 for name in weights} if rule == "balanced" else weights
    # model.experts: every column of a source is tokenised and encoded under its own domain's route
    # (sentence-transformers' per-dataset router_mapping: the task rides in the features, through GradCache too).
    routes = {name: dict.fromkeys(d.column_names, name) for name, d in splits.items()} if recipe.model.experts else {}
    return Tasks(datasets.DatasetDict(splits), losses, MultiTrainData(parts), sampler, prompts, loss_weights,
                 rule == "mixed", summary, routes)
