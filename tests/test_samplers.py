"""Length-grouped batches: every row once per epoch, deterministic per (seed, epoch), less padding."""

from __future__ import annotations

import random

import datasets

from embedkit.data.samplers import LengthGroupedBatchSampler


def make(n: int = 1000, seed: int = 3, drop_last: bool = False) -> LengthGroupedBatchSampler:
    rng = random.Random(0)
    texts = ["w" * rng.randint(1, 200) for _ in range(n)]
    ds = datasets.Dataset.from_dict({"text": texts})
    return LengthGroupedBatchSampler(ds, batch_size=32, drop_last=drop_last, seed=seed)


def test_covers_every_row_once_and_is_deterministic():
    a, b = make(), make()
    batches = list(a)
    assert sorted(i for batch in batches for i in batch) == list(range(1000))
    assert batches == list(b) and len(batches) == len(a)
    a.set_epoch(1)
    assert list(a) != batches  # a new epoch reshuffles


def test_batches_have_similar_lengths_but_random_order():
    sampler = make()
    padded = sum(len(b) * max(sampler.lengths[i] for i in b) for b in sampler)
    plain = [list(range(1000))[i : i + 32] for i in range(0, 1000, 32)]
    padded_plain = sum(len(b) * max(sampler.lengths[i] for i in b) for b in plain)
    assert padded < 0.75 * padded_plain
    first_rows = [b[0] for b in sampler]
    assert first_rows != sorted(first_rows)


def test_drop_last_gives_full_batches():
    sampler = make(n=1000, drop_last=True)
    assert all(len(b) == 32 for b in sampler) and len(list(sampler)) <= len(sampler)
