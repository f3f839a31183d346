"""Length-grouped batches: every row once per epoch, deterministic per (seed, epoch), less padding; under several
processes the samplers' rules hold for the global batch, and two processes' shares make one process's batch."""

from __future__ import annotations

import random

import datasets
import pytest
import torch

from embedkit.data.samplers import LengthGroupedBatchSampler, sampler_for_processes


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


# ----------------------------------------------------------------------------------------------------------
# Several processes: the sampler's rule holds for the global batch (docs/distributed.md)


def shares(factory, dataset, world: int, global_batch: int, epoch: int = 0) -> list[list[list[int]]]:
    """Every process's batches of one epoch, built as the trainer builds them: ``factory`` called with the
    per-process batch, then accelerate's own sharding for process r of ``world`` (simulated ranks, no torchrun)
    and the epoch set as the trainer sets it."""
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader

    from embedkit.training.trainer import set_sampler_epoch

    out = []
    for rank in range(world):
        sampler = factory(dataset, batch_size=global_batch // world, drop_last=True, valid_label_columns=["score"],
                          generator=torch.Generator(), seed=3)
        plain = DataLoader(list(range(len(dataset))), batch_sampler=sampler, collate_fn=list)
        loader = prepare_data_loader(plain, num_processes=world, process_index=rank, put_on_device=False,
                                     use_seedable_sampler=True, data_seed=3)
        loader.set_epoch(epoch)  # as transformers' epoch loop does, then embedkit's epoch callback
        set_sampler_epoch(loader, epoch)
        out.append(list(loader))
    return out


def steps(per_rank: list[list[list[int]]]) -> list[list[int]]:
    """The global batch of each step: the processes' batches of that step, in rank order."""
    assert len({len(batches) for batches in per_rank}) == 1, "every process takes the same number of steps"
    return [sum(step, []) for step in zip(*per_rank, strict=True)]


def question_rows(n: int = 96, questions: int = 32):
    """TREC-QA-like rows: each of ``questions`` questions asked n / questions times, each with its own answer."""
    return datasets.Dataset.from_dict({"anchor": [f"question {i % questions}" for i in range(n)],
                                       "positive": [f"answer {i}" for i in range(n)]})


@pytest.mark.parametrize("epoch", [0, 1])
def test_no_duplicates_holds_across_processes_and_two_shares_make_the_one_process_batch(epoch: int) -> None:
    """Two processes of 8 rows: each step's global batch of 16 repeats no question, and equals batch k of one
    process with the global batch of 16 (same seed and epoch), as the contrastive method's sampler is built."""
    from embedkit.methods.base import TrainContext
    from embedkit.methods.contrastive import Contrastive, ContrastiveParams

    ds = question_rows()

    def factory(world: int):
        method = Contrastive(TrainContext(recipe=None, model=None, params=ContrastiveParams(no_duplicates=True),
                                          world_size=world))
        return sampler_for_processes(method.batch_sampler(), world)

    one, two = steps(shares(factory(1), ds, 1, 16, epoch)), steps(shares(factory(2), ds, 2, 16, epoch))
    assert len(one) == len(two) == 96 // 16
    for batch in two:
        questions = [ds[i]["anchor"] for i in batch]
        assert len(batch) == 16 and len(set(questions)) == 16, sorted(questions)
    assert two == one


def test_length_groups_are_global_batches_under_several_processes() -> None:
    """Length grouping under two processes: step k's global batch is batch k of one process with the global
    batch (the rule of docs/distributed.md), and each process's share is a slice of similar lengths."""

    rng = random.Random(0)
    ds = datasets.Dataset.from_dict({"text": ["w" * rng.randint(1, 200) for _ in range(1000)]})
    one = steps(shares(sampler_for_processes(LengthGroupedBatchSampler, 1), ds, 1, 64))
    two = steps(shares(sampler_for_processes(LengthGroupedBatchSampler, 2), ds, 2, 64))
    assert len(one) == 1000 // 64 and two == one


def _trainer_batches(tmp_path, batch_sampler, n: int, epochs: int = 2) -> tuple[type, list[list[int]]]:
    """The row indices the trainer's own training dataloader (prepared by accelerate) yields, epoch by epoch as the
    trainer sets them, and the type of the sampler under its batches."""
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from tiny_model import tiny_bert, training_model

    model = training_model(tiny_bert(tmp_path / "tiny"), "mean")
    ds = datasets.Dataset.from_dict({"anchor": [str(i) for i in range(n)], "positive": [str(i) for i in range(n)]})
    args = SentenceTransformerTrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8,
                                                seed=5, data_seed=5, use_cpu=True, report_to="none",
                                                batch_sampler=batch_sampler)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds,
                                         loss=MultipleNegativesRankingLoss(model))
    loader = trainer.get_train_dataloader()
    rows = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        rows.append([i for batch in loader.batch_sampler for i in batch])
    return type(loader.batch_sampler.sampler), rows


def test_the_default_batches_are_the_library_default_order_in_flat_memory(tmp_path) -> None:
    """Through the trainer and accelerate, as training builds them: the same rows in the same order as
    sentence-transformers' default batch sampler, epoch by epoch, drawn by embedkit's sampler (accelerate does not
    swap it for its own ``SeedableRandomSampler``, whose ``randperm(n).tolist()`` holds the epoch as Python ints)."""
    from sentence_transformers.training_args import BatchSamplers

    from embedkit.data.samplers import FlatRandomSampler, default_batch_sampler

    library_type, library = _trainer_batches(tmp_path / "a", BatchSamplers.BATCH_SAMPLER, 203)
    flat_type, flat = _trainer_batches(tmp_path / "b", default_batch_sampler, 203)
    assert library_type is not FlatRandomSampler and flat_type is FlatRandomSampler
    assert flat == library and library[0] != library[1] and sorted(library[0]) == list(range(203))


def test_flat_random_sampler_holds_no_list_of_the_epoch() -> None:
    """The library's sampler turns the whole permutation into Python ints before yielding the first; this one a
    block at a time. Measured with tracemalloc, which sees Python objects (the list) but not torch's tensors."""
    import tracemalloc
    from itertools import islice

    from accelerate.data_loader import SeedableRandomSampler

    from embedkit.data.samplers import BLOCK, FlatRandomSampler

    def peak_first_rows(sampler) -> int:
        tracemalloc.start()
        list(islice(iter(sampler), 100))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    n = 2_000_000
    library = peak_first_rows(SeedableRandomSampler(range(n), data_seed=0))
    flat = peak_first_rows(FlatRandomSampler(range(n), seed=0))
    assert library > 8 * n  # the list's pointers alone: 8 bytes a row
    assert flat < 64 * BLOCK  # one block: its list and its ints (~40 bytes an index), whatever n is
