"""Augmentations: ESimCSE repetition (sub-word and word), Contriever cropping and deletion, batch rebuilding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedkit.augment import (
    CropAndDelete,
    SubwordRepetition,
    WordRepetition,
    apply_indices,
    crop_indices,
    deletion_indices,
    repeat_words,
    repetition_bound,
    repetition_indices,
)

CLS, SEP, PAD = 101, 102, 0
SPECIAL = {CLS, SEP, PAD, 100, 103}


def batch(rows: list[list[int]]) -> dict[str, torch.Tensor]:
    """A right-padded batch like a BERT tokenizer makes: [CLS] tokens [SEP] PAD…"""
    width = max(len(r) for r in rows) + 2
    ids = torch.full((len(rows), width), PAD)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        seq = [CLS, *r, SEP]
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids), "modality": "text"}


def real_tokens(features: dict[str, torch.Tensor], r: int) -> list[int]:
    return features["input_ids"][r][features["attention_mask"][r].bool()].tolist()


def undo_repetition(original: list[int], augmented: list[int]) -> list[int]:
    """Which positions of ``original`` were doubled in ``augmented``; fails unless ``augmented`` is
    ``original`` with some tokens duplicated in place (tokens of ``original`` have no adjacent repeats)."""
    doubled, j = [], 0
    for i, tok in enumerate(original):
        assert augmented[j] == tok, f"position {i}: expected {tok}, got {augmented[j]} in {augmented}"
        j += 1
        if j < len(augmented) and augmented[j] == tok:
            doubled.append(i)
            j += 1
    assert j == len(augmented), f"extra tokens at the end: {augmented[j:]}"
    return doubled


def test_repetition_bound_matches_the_paper_rule():
    assert repetition_bound(32, 0.32) == 10  # min(10, ⌊10.24⌋)
    assert repetition_bound(64, 0.32) == 10  # capped at 10
    assert repetition_bound(10, 0.32) == 3
    assert repetition_bound(3, 0.32) == 0  # ⌊0.96⌋ = 0: no repetition


@pytest.mark.parametrize("length", [3, 4, 7, 12, 20, 40, 64])
def test_repetition_indices_duplicate_in_place_within_bounds(length):
    special = [True] + [False] * (length - 2) + [True]
    bound = repetition_bound(length, 0.32)
    seen_k = set()
    for seed in range(300):
        out = repetition_indices(special, 0.32, np.random.default_rng(seed))
        assert sorted(out) == out, "order kept"
        counts = np.bincount(out, minlength=length)
        assert set(counts.tolist()) <= {1, 2}, "each token kept once or duplicated once"
        assert counts[0] == 1 and counts[-1] == 1, "special tokens never duplicated"
        k = len(out) - length
        assert 0 <= k <= max(bound - 1, 0)
        seen_k.add(k)
    # k is uniform on {0 … bound − 1}: every value shows up in 300 draws.
    assert seen_k == set(range(max(bound, 1)))


def test_subword_repetition_on_a_batch():
    rows = [list(range(1000, 1030)), [2000, 2001, 2002], list(range(3000, 3012))]
    features = batch(rows)
    rep = SubwordRepetition(SPECIAL, PAD, dup_rate=0.32, seed=7)
    out = rep(features, torch.tensor([0, 1, 2]))
    assert set(out) == set(features) and out["modality"] == "text"
    assert out["input_ids"].shape[1] >= features["input_ids"].shape[1]
    total = 0
    for r in range(len(rows)):
        orig, aug = real_tokens(features, r), real_tokens(out, r)
        doubled = undo_repetition(orig, aug)
        assert all(orig[i] not in SPECIAL for i in doubled)
        assert len(doubled) <= max(repetition_bound(len(orig), 0.32) - 1, 0)
        total += len(doubled)
        # padding after the real tokens, token types follow the tokens
        n = len(aug)
        assert out["attention_mask"][r, n:].sum() == 0 and (out["input_ids"][r, n:] == PAD).all()
        assert (out["token_type_ids"][r] == 0).all()
    assert total > 0, "some tokens were repeated"
    assert real_tokens(out, 1) == real_tokens(features, 1)  # L = 5: ⌊1.6⌋ = 1 → k = 0


def test_dynamic_repetition_changes_across_epochs_static_does_not():
    rows = [list(range(1000 + 40 * i, 1030 + 40 * i)) for i in range(8)]
    features, ids = batch(rows), torch.arange(8)
    dynamic = SubwordRepetition(SPECIAL, PAD, seed=1)
    static = SubwordRepetition(SPECIAL, PAD, seed=1, static=True)
    d1, s1 = dynamic(features, ids)["input_ids"], static(features, ids)["input_ids"]
    assert torch.equal(d1, dynamic(features, ids)["input_ids"]), "same draw → same views (reproducible)"
    dynamic.advance()
    static.advance()  # next epoch
    d2, s2 = dynamic(features, ids)["input_ids"], static(features, ids)["input_ids"]
    assert not torch.equal(d1, d2)
    assert torch.equal(s1, s2)
    # static: the view belongs to the sentence (row id), not to its position in the batch
    perm = torch.tensor([3, 1, 7, 0, 2, 6, 5, 4])
    permuted = {k: v[perm] if isinstance(v, torch.Tensor) else v for k, v in features.items()}
    s3 = static(permuted, ids[perm])
    for pos, row in enumerate(perm.tolist()):
        assert real_tokens(s3, pos) == s1[row][s1[row] != PAD].tolist()
    # another seed gives other views
    assert not torch.equal(s1, SubwordRepetition(SPECIAL, PAD, seed=2, static=True)(features, ids)["input_ids"])


def test_repetition_respects_max_length_and_keeps_sep():
    features = batch([list(range(1000, 1030))])
    out = None
    for seed in range(50):
        out = SubwordRepetition(SPECIAL, PAD, seed=seed, max_length=32)(features, torch.tensor([0]))
        if out["input_ids"].shape[1] == 32:
            break
    assert out["input_ids"].shape[1] == 32
    assert real_tokens(out, 0)[-1] == SEP and real_tokens(out, 0)[0] == CLS


def test_repeat_words():
    text = "one two three four five six seven eight nine ten eleven twelve"
    seen = set()
    for seed in range(200):
        out = repeat_words(text, 0.32, np.random.default_rng(seed))
        doubled = undo_repetition(text.split(), out.split())
        assert len(doubled) <= repetition_bound(12, 0.32) - 1
        seen.add(len(doubled))
    assert seen == {0, 1, 2}
    assert repeat_words("just two", 0.32, np.random.default_rng(0)) == "just two"


def test_word_repetition_tokenises_the_repeated_text():
    texts = ["alpha beta gamma delta epsilon zeta eta theta iota kappa", "one two three four five six seven eight"]
    calls = []

    def tokenize(batch_texts):
        calls.append(batch_texts)
        return {"input_ids": torch.ones(len(batch_texts), 3, dtype=torch.long), "modality": "text"}

    rep = WordRepetition(texts, tokenize, seed=0)
    out = rep({"input_ids": torch.zeros(2, 3, dtype=torch.long)}, torch.tensor([1, 0]))
    assert out["input_ids"].shape == (2, 3)
    undo_repetition(texts[1].split(), calls[0][0].split())
    undo_repetition(texts[0].split(), calls[0][1].split())
    with pytest.raises(ValueError, match="row id"):
        rep({"input_ids": torch.zeros(2, 3, dtype=torch.long)}, None)


def test_crop_indices():
    n = 40
    special = [True] + [False] * n + [True]
    lengths = set()
    for seed in range(200):
        out = crop_indices(special, np.random.default_rng(seed), 0.1, 0.5)
        assert out[0] == 0 and out[-1] == n + 1, "specials kept"
        content = out[1:-1]
        assert content == list(range(content[0], content[0] + len(content))), "contiguous span"
        assert 4 <= len(content) <= 20  # ⌊0.1·40⌋ … ⌊0.5·40⌋
        lengths.add(len(content))
    assert len(lengths) > 8
    # a one-token text still keeps one token
    assert crop_indices([True, False, True], np.random.default_rng(0)) == [0, 1, 2]


def test_deletion_indices():
    special = [True] + [False] * 1000 + [True]
    out = deletion_indices(special, np.random.default_rng(0), p=0.1)
    assert out[0] == 0 and out[-1] == 1001 and out == sorted(out)
    assert 60 < 1002 - len(out) < 140  # about 10% of 1000 deleted
    assert deletion_indices(special, np.random.default_rng(0), p=0.0) == list(range(1002))


def test_crop_and_delete_views_are_independent_and_resumable():
    features = batch([list(range(1000 + 50 * i, 1040 + 50 * i)) for i in range(4)])
    ids = torch.arange(4)
    views = CropAndDelete(SPECIAL, PAD, seed=0)
    v0, v1 = views(features, ids, view=0), views(features, ids, view=1)
    assert not torch.equal(v0["input_ids"], v1["input_ids"])
    for r in range(4):
        orig, crop = real_tokens(features, r), real_tokens(v0, r)
        assert crop[0] == CLS and crop[-1] == SEP
        inner = crop[1:-1]
        assert all(t in orig for t in inner) and inner == sorted(inner)  # a sub-sequence of the original
        assert len(inner) <= 20
    # a fresh augmenter whose counter is restored draws the same views
    views.advance()
    later = views(features, ids, view=0)["input_ids"]
    restored = CropAndDelete(SPECIAL, PAD, seed=0)
    restored.load_state_dict(views.state_dict())
    assert torch.equal(restored(features, ids, view=0)["input_ids"], later)
    assert not torch.equal(later, v0["input_ids"])


def test_apply_indices_gathers_every_token_feature():
    features = {"input_ids": torch.tensor([[5, 6, 7, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 0]]),
                "token_type_ids": torch.tensor([[0, 1, 1, 0]])}
    out = apply_indices(features, [[0, 1, 1, 2]], pad_id=0)
    assert out["input_ids"].tolist() == [[5, 6, 6, 7]]
    assert out["token_type_ids"].tolist() == [[0, 1, 1, 1]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1]]
