"""Batch samplers. The rule-keeping ones are ``DefaultBatchSampler`` subclasses, so the trainer seeds them and
sets their epoch; each builds every step's *global* batch and yields it as ``world_size`` consecutive
per-process batches, of which accelerate hands process r every world_size-th one (its share of the step).
:func:`default_batch_sampler` is sentence-transformers' default order in flat memory."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from types import SimpleNamespace
from typing import Any

import torch
from sentence_transformers import DefaultBatchSampler
from sentence_transformers.base.sampler import NoDuplicatesBatchSampler
from torch.utils.data import Sampler

from embedkit.log import log

BLOCK = 65_536  # indices turned into Python ints at a time


class FlatRandomSampler(Sampler[int]):
    """The order the trainer's default sampler gives, a block of indices at a time.

    sentence-transformers' default batches draw from a ``RandomSampler``, which accelerate replaces with its
    ``SeedableRandomSampler``: each epoch it seeds the generator with ``seed + epoch`` and yields from
    ``torch.randperm(n).tolist()``, a list of n Python ints (~36 bytes a row, about 360 MB at 10M rows) held for
    the whole epoch. This keeps the int64 permutation (8 bytes a row) and converts :data:`BLOCK` indices at a time:
    the same rows in the same order (a test compares them with the library's, epoch by epoch). It is no
    ``RandomSampler``, so accelerate keeps it; the epoch is set as on the library's (``set_epoch``, and one more
    after each full pass).
    """

    def __init__(self, data_source: Any, seed: int) -> None:
        self.data_source = data_source
        self.seed = seed
        self.epoch = 0
        self.generator = torch.Generator()

    def __len__(self) -> int:
        return len(self.data_source)

    def __iter__(self) -> Iterator[int]:
        self.generator.manual_seed(self.seed + self.epoch)
        yield from _in_blocks(torch.randperm(len(self.data_source), generator=self.generator))
        self.set_epoch(self.epoch + 1)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


def _in_blocks(indices: torch.Tensor) -> Iterator[int]:
    for block in indices.split(BLOCK):
        yield from block.tolist()


def default_batch_sampler(dataset, batch_size: int, drop_last: bool, valid_label_columns=None, generator=None,
                          seed: int = 0) -> DefaultBatchSampler:
    """sentence-transformers' default (``BatchSamplers.BATCH_SAMPLER``: a ``DefaultBatchSampler`` over a
    ``RandomSampler``, which accelerate seeds with the trainer's ``data_seed``; embedkit sets it to ``seed``), with
    :class:`FlatRandomSampler` underneath: the same batches in flat memory."""
    return DefaultBatchSampler(FlatRandomSampler(dataset, seed=seed), batch_size=batch_size,
                               drop_last=drop_last, valid_label_columns=valid_label_columns, generator=generator,
                               seed=seed)


class GlobalBatchSampler(DefaultBatchSampler):
    """A sampler whose rule (length grouping, no duplicates) holds for the global batch, not one process's share.

    The trainer builds a batch sampler with the per-process batch (``batch_size``) and accelerate shards its
    output round-robin: process r trains on batches r, r + W, r + 2W, … (W = ``world_size``), and the loss then
    gathers the W batches of a step into one global batch. A rule applied to per-process batches therefore does
    not hold across processes (two processes' shares can hold the same question). A subclass instead builds the
    global batches (:meth:`global_batches`, ``global_batch = batch_size × world_size`` rows each) and this class
    yields each as W consecutive slices of ``batch_size`` rows, so step k's global batch is batch k of one
    process with ``batch_size × W`` rows (docs/distributed.md). ``batch_size`` stays the per-process size:
    accelerate's shard reads it. ``world_size`` is passed by whoever builds the factory (``functools.partial``).
    """

    def __init__(self, dataset, batch_size: int, drop_last: bool, valid_label_columns=None, generator=None,
                 seed: int = 0, *, world_size: int = 1) -> None:
        if world_size < 1:
            raise ValueError(f"world_size must be at least 1, got {world_size}")
        if world_size > 1 and not drop_last:  # the trainer sets it under several processes (equal shares)
            raise ValueError("several processes need drop_last: a short last global batch cannot be split evenly")
        super().__init__(dataset, batch_size, drop_last, valid_label_columns, generator, seed)
        self.world_size = world_size
        self.num_rows = len(dataset)

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def global_batches(self) -> Iterator[list[int]]:
        """This epoch's global batches (``global_batch`` rows; the last may be short only with ``drop_last`` off
        and one process)."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[list[int]]:
        b = self.batch_size
        for rows in self.global_batches():
            for r in range(self.world_size):
                yield rows[r * b:(r + 1) * b]

    def global_len(self) -> int:
        """Global batches an epoch."""
        n, g = self.num_rows, self.global_batch
        return n // g if self.drop_last else -(-n // g)

    def __len__(self) -> int:
        return self.global_len() * self.world_size


class LengthGroupedBatchSampler(GlobalBatchSampler):
    """Random batches of similar length, so dynamic padding pads little.

    Each epoch: a seeded random permutation of the rows is cut into groups of ``group_batches`` global batches;
    inside a group rows are sorted by length (characters of the first text column) and cut into global batches;
    then the order of all batches is shuffled. Which rows meet in a batch stays random up to the length
    bucket, and the same seed and epoch give the same batches on every process; each process's share of a
    global batch is a slice of it, so the shares are of similar length too.
    """

    group_batches = 16

    def __init__(self, dataset, batch_size: int, drop_last: bool, valid_label_columns=None, generator=None,
                 seed: int = 0, *, world_size: int = 1) -> None:
        super().__init__(dataset, batch_size, drop_last, valid_label_columns, generator, seed, world_size=world_size)
        label_columns = set(valid_label_columns or [])
        text_column = next(c for c in dataset.column_names if c not in label_columns)
        self.lengths = [len(t) for t in dataset[text_column]]

    def global_batches(self) -> Iterator[list[int]]:
        gen = torch.Generator()
        gen.manual_seed(int(self.seed) + int(self.epoch))
        perm = torch.randperm(len(self.lengths), generator=gen).tolist()
        size = self.global_batch
        group = size * self.group_batches
        batches = []
        for start in range(0, len(perm), group):
            rows = sorted(perm[start : start + group], key=self.lengths.__getitem__)
            batches += [rows[i : i + size] for i in range(0, len(rows), size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == size]
        order = torch.randperm(len(batches), generator=gen).tolist()
        yield from (batches[i] for i in order)


class NoDuplicateTextsBatchSampler(GlobalBatchSampler, NoDuplicatesBatchSampler):
    """Global batches in which no row's anchor or positive text equals a text of another row of the batch.

    A contrastive loss scores each anchor against every other row's positive and negatives, gathered from every
    process; a second row that holds the anchor's own text or its positive (the same question asked twice, one
    passage answering two questions, a mined negative that is another row's positive) would be a false
    negative. The rule therefore holds for the global batch (:class:`GlobalBatchSampler`), whatever the number
    of processes. Negatives may repeat across rows (a repeated negative is still a negative). Key columns are
    ``key_columns`` (``anchor``, ``positive``); every other text column counts as a negative.

    sentence-transformers' ``NoDuplicatesBatchSampler`` does the greedy pass (one seeded shuffle per epoch,
    ``seed + epoch``; a row that conflicts waits for a later batch); this subclass gives it the rule above (the
    library's own rule also keeps two rows with the same negative apart), the texts read once and the global
    batch size. An epoch is always exactly ``len(self)`` batches, the count the trainer's step arithmetic and
    ``--resume`` position assume: rows that fit in no batch of this epoch without a duplicate wait for the next
    epoch's shuffle, and when ``drop_last`` leaves the pass short, a further seeded pass fills up (as the
    library does).
    """

    key_columns = ("anchor", "positive")
    extra_passes = 2

    def __init__(self, dataset, batch_size: int, drop_last: bool, valid_label_columns=None, generator=None,
                 seed: int = 0, *, world_size: int = 1) -> None:
        super().__init__(dataset, batch_size, drop_last, valid_label_columns, generator, seed, world_size=world_size)
        if self.generator is None:  # never the global RNG: the order must follow from seed and epoch alone
            self.generator = torch.Generator()
        columns = [c for c in self.dataset.column_names if c != "dataset_name"]
        keyed = [("k", c) for c in columns if c in self.key_columns] + [
            ("n", c) for c in columns if c not in self.key_columns]
        values = [self.dataset[c] for _, c in keyed]
        self._told = False  # the note on rows left for a later epoch, once
        self._values = [frozenset((kind, text) for (kind, _), text in zip(keyed, row, strict=True))
                        for row in zip(*values, strict=True)]

    @staticmethod
    def _conflicts(row: frozenset, batch: set) -> bool:
        """A row's key text may meet no text of the batch; its negatives may meet no key text of the batch."""
        return any(("k", text) in batch or (kind == "k" and ("n", text) in batch) for kind, text in row)

    def global_batches(self) -> Iterator[list[int]]:
        self.generator.manual_seed(int(self.seed) + int(self.epoch))
        expected, count, rows = self.global_len(), 0, 0
        if not self._values:
            return
        # The library's pass reads its batch size from the object it runs on: a view with the global batch
        # (this sampler's own batch_size must stay the per-process size that accelerate's shard reads).
        view = SimpleNamespace(dataset=self.dataset, generator=self.generator, batch_size=self.global_batch,
                               drop_last=self.drop_last)
        for _ in range(1 + self.extra_passes):
            for batch in NoDuplicatesBatchSampler._iter_one_pass(view, self._values.__getitem__, self._conflicts):
                yield batch
                count, rows = count + 1, rows + len(batch)
                if count == expected:
                    if rows < len(self._values) and not self._told:
                        self._told = True
                        log(f"no_duplicates: {len(self._values) - rows} of {len(self._values)} rows fit in no batch "
                            f"of epoch {self.epoch} without a duplicate and wait for a later epoch (many rows share "
                            "an anchor or positive; a smaller batch keeps more)")
                    return


def sampler_for_processes(sampler: Any, world_size: int) -> Any:
    """The batch-sampler factory the trainer is given: a :class:`GlobalBatchSampler` subclass bound to
    ``world_size`` (so it builds global batches), anything else (``None``, a factory, a library sampler) as is."""
    if isinstance(sampler, type) and issubclass(sampler, GlobalBatchSampler):
        return partial(sampler, world_size=world_size)
    return sampler
