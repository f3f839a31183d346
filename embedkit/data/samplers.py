"""Batch samplers. Each is a ``DefaultBatchSampler`` subclass, so the trainer seeds it, sets its epoch and
shards its batches across processes (every process takes every world_size-th batch of the same order)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from sentence_transformers import DefaultBatchSampler


class LengthGroupedBatchSampler(DefaultBatchSampler):
    """Random batches of similar length, so dynamic padding pads little.

    Each epoch: a seeded random permutation of the rows is cut into groups of ``group_batches`` batches;
    inside a group rows are sorted by length (characters of the first text column) and cut into batches;
    then the order of all batches is shuffled. Which rows meet in a batch stays random up to the length
    bucket, and the same seed and epoch give the same batches on every process.
    """

    group_batches = 16

    def __init__(self, dataset, batch_size: int, drop_last: bool, valid_label_columns=None, generator=None,
                 seed: int = 0) -> None:
        super().__init__(dataset, batch_size, drop_last, valid_label_columns, generator, seed)
        label_columns = set(valid_label_columns or [])
        text_column = next(c for c in dataset.column_names if c not in label_columns)
        self.lengths = [len(t) for t in dataset[text_column]]

    def _batches(self) -> list[list[int]]:
        gen = torch.Generator()
        gen.manual_seed(int(self.seed) + int(self.epoch))
        perm = torch.randperm(len(self.lengths), generator=gen).tolist()
        size = self.batch_size
        group = size * self.group_batches
        batches = []
        for start in range(0, len(perm), group):
            rows = sorted(perm[start : start + group], key=self.lengths.__getitem__)
            batches += [rows[i : i + size] for i in range(0, len(rows), size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == size]
        order = torch.randperm(len(batches), generator=gen).tolist()
        return [batches[i] for i in order]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._batches()

    def __len__(self) -> int:
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)
