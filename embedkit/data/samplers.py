"""Batch samplers. Each is a ``DefaultBatchSampler`` subclass, so the trainer seeds it, sets its epoch and
shards its batches across processes (every process takes every world_size-th batch of the same order)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from sentence_transformers import DefaultBatchSampler
from sentence_transformers.base.sampler import NoDuplicatesBatchSampler

from embedkit.log import log


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


class NoDuplicateTextsBatchSampler(NoDuplicatesBatchSampler):
    """Batches in which no row's anchor or positive text equals a text of another row of the batch.

    A contrastive loss scores each anchor against every other row's positive and negatives; a second row that
    holds the anchor's own text or its positive (the same question asked twice, one passage answering two
    questions, a mined negative that is another row's positive) would be a false negative. Negatives may repeat
    across rows (a repeated negative is still a negative). Key columns are ``key_columns`` (``anchor``,
    ``positive``); every other text column counts as a negative.

    sentence-transformers' ``NoDuplicatesBatchSampler`` does the greedy pass (one seeded shuffle per epoch,
    ``seed + epoch``; a row that conflicts waits for a later batch); this subclass gives it the rule above (the
    library's own rule also keeps two rows with the same negative apart) and the texts read once. An epoch is
    always exactly ``len(self)`` batches, the count the trainer's step arithmetic and ``--resume`` position
    assume: rows that fit in no batch of this epoch without a duplicate wait for the next epoch's shuffle, and
    when ``drop_last`` leaves the pass short, a further seeded pass fills up (as the library does).
    """

    key_columns = ("anchor", "positive")
    extra_passes = 2

    def __init__(self, dataset, batch_size: int, drop_last: bool, valid_label_columns=None, generator=None,
                 seed: int = 0) -> None:
        super().__init__(dataset, batch_size, drop_last, valid_label_columns, generator, seed)
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

    def __iter__(self) -> Iterator[list[int]]:
        self.generator.manual_seed(int(self.seed) + int(self.epoch))
        expected, count, rows = len(self), 0, 0
        if not self._values:
            return
        for _ in range(1 + self.extra_passes):
            for batch in self._iter_one_pass(self._values.__getitem__, self._conflicts):
                yield batch
                count, rows = count + 1, rows + len(batch)
                if count == expected:
                    if rows < len(self._values) and not self._told:
                        self._told = True
                        log(f"no_duplicates: {len(self._values) - rows} of {len(self._values)} rows fit in no batch "
                            f"of epoch {self.epoch} without a duplicate and wait for a later epoch (many rows share "
                            "an anchor or positive; a smaller batch keeps more)")
                    return
