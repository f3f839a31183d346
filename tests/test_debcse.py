"""DebCSE-style debiasing: surface measures, propensity weighting, mining, selection, false-negative
masking, determinism, the training method and ``embedkit data diagnose``."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from embedkit.methods.debcse import debias as db
from embedkit.methods.debcse.similarity import (
    edit_distance,
    jaccard,
    length_ratio,
    normalized_edit_distance,
    pair_surface,
    tokens,
)


def brown(data_dir, n: int) -> list[str]:
    with open(data_dir / "corpora" / "brown.txt", encoding="utf-8") as fh:
        lines = [line.strip() for line in fh if line.strip()]
    return lines[:n]


@pytest.fixture(scope="module")
def tiny_model(tiny_model_path):
    from embedkit.modeling import build_model
    from embedkit.recipe import ModelSection

    return build_model(ModelSection(name=tiny_model_path, pooling="mean", max_seq_length=32))


# ---------------------------------------------------------------------------------------------------------
# Surface measures and views


def test_surface_measures_on_known_pairs():
    a, b = tokens("The cat sat on the mat."), tokens("the cat sat")
    assert a == ["the", "cat", "sat", "on", "the", "mat", "."]
    assert jaccard(a, b) == pytest.approx(3 / 6)
    assert edit_distance(a, b) == 4
    assert normalized_edit_distance(a, b) == pytest.approx(4 / 7)
    assert length_ratio(a, b) == pytest.approx(3 / 7)
    assert edit_distance(["x", "y"], ["y", "x"]) == 2
    assert normalized_edit_distance(a, a) == 0 and jaccard(a, a) == 1 and length_ratio(a, a) == 1


def _dp_edit_distance(a, b) -> int:
    """Reference: the textbook dynamic programme, one row at a time."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, start=1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def _bitparallel_edit_distance(a, b) -> int:
    """Reference: embedkit's former pure-Python edit distance (Myers 1999 / Hyyrö 2003, Python ints as bit
    vectors), kept here only to show that rapidfuzz gives the very same numbers."""
    if len(a) < len(b):
        a, b = b, a
    m = len(b)
    if m == 0:
        return len(a)
    peq: dict = {}
    for i, token in enumerate(b):
        peq[token] = peq.get(token, 0) | (1 << i)
    mask, last = (1 << m) - 1, 1 << (m - 1)
    pv, mv, score = mask, 0, m
    for token in a:
        eq = peq.get(token, 0)
        xv = eq | mv
        xh = ((((eq & pv) + pv) & mask) ^ pv) | eq
        ph = (mv | ~(xh | pv)) & mask
        mh = pv & xh
        if ph & last:
            score += 1
        elif mh & last:
            score -= 1
        ph = ((ph << 1) | 1) & mask
        mh = (mh << 1) & mask
        pv = (mh | ~(xv | ph)) & mask
        mv = ph & xv
    return score


def _reference_normalized(a, b) -> float:
    longest = max(len(a), len(b))
    return _bitparallel_edit_distance(a, b) / longest if longest else 0.0


def _random_token_pairs(n: int, seed: int = 0) -> tuple[list[list[str]], list[list[str]]]:
    """Token lists over a small vocabulary of one- and several-character tokens, lengths 0 to 80 (so both
    sides of 64 tokens, and many empty lists)."""
    vocab = ["the", "a", ".", ",", "cat", "sat", "mat", "on", "x", "xx", "don't", "1961", "Ü", "über"]
    rng = np.random.default_rng(seed)

    def draw() -> list[str]:
        length = int(rng.choice([0, rng.integers(0, 14), rng.integers(0, 81)], p=[0.1, 0.6, 0.3]))
        return [vocab[i] for i in rng.integers(0, rng.integers(1, len(vocab) + 1), length)]

    return [draw() for _ in range(n)], [draw() for _ in range(n)]


def test_edit_distance_equals_reference_implementations_on_random_token_lists():
    left, right = _random_token_pairs(4000)
    assert sum(1 for a in left if not a) > 100  # empty lists are well represented
    for a, b in zip(left, right, strict=True):
        expected = _bitparallel_edit_distance(a, b)
        assert edit_distance(a, b) == expected == _dp_edit_distance(a, b) == edit_distance(b, a)
        assert normalized_edit_distance(a, b) == _reference_normalized(a, b)  # exactly, not approximately
    assert edit_distance([], []) == 0 and normalized_edit_distance([], []) == 0.0
    assert edit_distance(["the", "cat"], []) == 2 and normalized_edit_distance([], ["cat"]) == 1.0


def test_pair_surface_edit_distance_equals_reference_exactly(data_dir):
    left, right = _random_token_pairs(3000, seed=1)
    lines = [tokens(t) for t in brown(data_dir, 600)]
    left += lines[:300]
    right += lines[300:]
    measures = pair_surface(left, right, "edit")
    expected = np.array([_reference_normalized(a, b) for a, b in zip(left, right, strict=True)])
    np.testing.assert_array_equal(measures["edit_distance"], expected)
    np.testing.assert_array_equal(measures["surface"], 1.0 - expected)
    assert measures["edit_distance"].dtype == np.float64 and measures["edit_distance"].shape == (len(left),)
    assert pair_surface([], [], "mean")["edit_distance"].shape == (0,)


def test_parallel_surface_measures_equal_serial():
    left = [tokens(f"w{i % 7} x{i % 3} y z{i}") for i in range(40)]
    right = [tokens(f"w{i % 5} x{i % 3} y") for i in range(40)]
    serial = db.parallel_pair_surface(left, right, "mean", workers=1)
    parallel = db.parallel_pair_surface(left, right, "mean", workers=2, min_pairs=1)
    assert serial.keys() == parallel.keys()
    for key in serial:
        np.testing.assert_array_equal(serial[key], parallel[key])


def test_views_change_length_and_are_seeded():
    params = db.DebiasParams()
    text = "one two three four five six seven eight nine ten eleven twelve"
    views = db.make_views([text] * 20, params, seed=3)
    assert len(views) == 3
    for kind, vs in zip(params.views, views, strict=True):
        lengths = [len(v.split()) for v in vs]
        if kind == "repeat":
            assert all(n > 12 for n in lengths)
        else:
            assert all(1 <= n < 12 for n in lengths)
        assert len(set(vs)) > 1, kind  # different draws for different rows
    assert views == db.make_views([text] * 20, params, seed=3)
    assert views != db.make_views([text] * 20, params, seed=4)


# ---------------------------------------------------------------------------------------------------------
# Propensity


def test_propensity_weights_recover_known_distribution():
    """Pairs uniform over [0, 1]² are drawn with a known bin-dependent propensity; the estimated propensity
    must match it, and reweighting must give back the population (uniform bins, mean surface 0.5) or any
    given target distribution."""
    rng = np.random.default_rng(0)
    s_bins, l_bins = 5, 4
    true = np.outer(np.arange(1, s_bins + 1) ** 2, np.arange(1, l_bins + 1)).astype(float)
    surface, ratio = rng.random(400_000), rng.random(400_000)
    accept = true[db.bin_index(surface, s_bins), db.bin_index(ratio, l_bins)] / true.max()
    drawn = rng.random(surface.size) < accept
    s, r = surface[drawn], ratio[drawn]
    assert s.mean() > 0.6  # the draw is strongly biased towards high surface similarity

    prop = db.Propensity.fit(s, r, s_bins, l_bins, smoothing=0.0)
    np.testing.assert_allclose(prop.probs, true / true.sum(), atol=0.003)

    w = prop.weights(s, r)
    assert w.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(db.bin_histogram(s, r, w, (s_bins, l_bins)), 1 / (s_bins * l_bins), atol=1e-9)
    assert np.average(s, weights=w) == pytest.approx(0.5, abs=0.005)
    assert np.average(r, weights=w) == pytest.approx(0.5, abs=0.005)

    target = rng.dirichlet(np.ones(s_bins * l_bins)).reshape(s_bins, l_bins)
    w_t = prop.weights(s, r, target=target)
    np.testing.assert_allclose(db.bin_histogram(s, r, w_t, (s_bins, l_bins)), target, atol=1e-9)

    clipped = prop.weights(s, r, max_weight=2.0)
    assert clipped.max() <= 2.0 and clipped.max() < w.max()


def test_selection_prefers_rare_bins_over_plain_sampling():
    """On synthetic candidates where high-surface positives dominate the pool, IPW positives are lexically
    more different than positives drawn without the propensity correction."""
    rng = np.random.default_rng(1)
    n, c = 2000, 10
    surface = np.where(rng.random((n, c)) < 0.85, rng.uniform(0.8, 1.0, (n, c)), rng.uniform(0.0, 0.4, (n, c)))
    ratio = np.where(surface > 0.8, rng.uniform(0.85, 1.0, (n, c)), rng.uniform(0.2, 0.7, (n, c)))
    kind = np.full((n, c), db.NEIGHBOUR)
    cands = db.Candidates(kind=kind, ref=np.tile(np.arange(c), (n, 1)), semantic=np.full((n, c), 0.8),
                          surface=surface, jaccard=surface, edit_distance=1 - surface, length_ratio=ratio,
                          length_diff=np.zeros((n, c)))
    params = db.DebiasParams(hard_negatives=False, max_weight=100.0)
    with_ipw = db.select_pairs(cands, params, seed=0)
    without = db.select_pairs(cands, params.model_copy(update={"ipw": False}), seed=0)
    ar = np.arange(n)
    low_with = (surface[ar, with_ipw.positive] < 0.5).mean()
    low_without = (surface[ar, without.positive] < 0.5).mean()
    assert low_without == pytest.approx(0.15, abs=0.03)
    assert low_with > 0.4
    assert ratio[ar, with_ipw.positive].mean() < ratio[ar, without.positive].mean() - 0.1


# ---------------------------------------------------------------------------------------------------------
# Mining and selection on real text


def test_top_k_neighbours_matches_brute_force():
    from embedkit.mining import top_k_neighbours

    g = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(50, 8, generator=g), dim=-1)
    idx, scores = top_k_neighbours(emb, k=5, chunk_size=7, backend="torch")
    full = emb @ emb.T
    full.fill_diagonal_(float("-inf"))
    ref_scores, ref_idx = full.topk(5, dim=1)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(scores, ref_scores)
    assert not (idx == torch.arange(50).unsqueeze(1)).any()


def test_chosen_positives_differ_in_surface_and_length_on_brown(data_dir, tiny_model):
    sentences = brown(data_dir, 300)
    params = db.DebiasParams(k=8, positive_min_semantic=0.0)
    rows, (mined, cands) = db.debias(tiny_model, sentences, params, seed=0, device="cpu")
    plain = db.identity_rows(sentences, mined.embeddings, mined.texts)
    from embedkit.methods.debcse.diagnose import pair_measures

    chosen, dropout = pair_measures(rows)["positive"], pair_measures(plain)["positive"]
    assert dropout["surface"].mean() == 1.0 and dropout["length_ratio"].mean() == 1.0
    assert chosen["surface"].mean() < 0.8
    assert chosen["length_ratio"].mean() < 0.9
    assert (chosen["length_diff"] != 0).mean() > 0.5
    assert chosen["surface"].mean() == pytest.approx(rows.pairs["positive_surface"].mean())
    # Hard negatives are never the anchor itself, and the table ids point at the right texts.
    assert all(n != a for a, n in zip(rows.anchor, rows.negative, strict=True))
    for i in range(0, 300, 37):
        assert rows.table_texts[rows.ids[i, 0]] == rows.anchor[i]
        assert rows.table_texts[rows.ids[i, 1]] == rows.positive[i]
        assert rows.table_texts[rows.ids[i, 2]] == rows.negative[i]


def test_same_seed_same_rows_and_batches(sentences_file, tiny_model):
    from sentence_transformers.base.sampler import DefaultBatchSampler
    from torch.utils.data import RandomSampler

    texts = sentences_file.read_text().split("\n")[:60]
    texts = [t for t in texts if t]
    params = db.DebiasParams(k=6, positive_min_semantic=0.0)
    a, cache = db.debias(tiny_model, texts, params, seed=5, device="cpu")
    b, _ = db.debias(tiny_model, texts, params, seed=5, device="cpu")
    c, _ = db.debias(tiny_model, texts, params, seed=6, device="cpu")
    assert a.digest() == b.digest()
    assert a.digest() != c.digest()
    # Re-drawing a later round from the cached (frozen-reference) mining: new rows, same ones every time.
    r1, _ = db.debias(tiny_model, texts, params, seed=5, round_=1, previous=cache)
    r1b, _ = db.debias(tiny_model, texts, params, seed=5, round_=1, previous=cache)
    assert r1.digest() == r1b.digest() != a.digest()

    import datasets

    from embedkit.methods.debcse import RowsHolder

    def batches(rows, seed):
        holder = RowsHolder()
        holder.rows = rows
        ds = datasets.Dataset.from_dict({"row": list(range(len(rows)))})
        ds.set_transform(holder.transform)
        # As the trainer builds its default sampler: a seeded RandomSampler in a DefaultBatchSampler.
        generator = torch.Generator().manual_seed(seed)
        sampler = DefaultBatchSampler(RandomSampler(ds, generator=generator), batch_size=8, drop_last=False)
        return [[tuple(ds[i]["label"]) + (ds[i]["positive"], ds[i]["negative"]) for i in batch] for batch in sampler]

    assert batches(a, 1) == batches(b, 1)
    assert batches(a, 1) != batches(c, 1)
    assert batches(a, 1) != batches(a, 2)


def test_mining_round_schedule():
    from embedkit.methods.debcse import round_at

    assert [round_at("epoch", e, 0) for e in (0.0, 0.5, 1.0, 1.37, 2.0)] == [0, 0, 1, 1, 2]
    assert [round_at(50, 0.0, s) for s in (0, 49, 50, 149, 150)] == [0, 0, 1, 2, 3]
    assert round_at("never", 3.0, 999) == 0


# ---------------------------------------------------------------------------------------------------------
# False-negative masking


def _unit(*rows):
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_false_negative_mask_removes_duplicates_and_near_duplicates():
    from embedkit.methods.debcse.loss import false_negative_mask

    # Table rows: 0 A, 1 positive of A (cos 0.8), 2 near-duplicate of A (cos 0.995), 3 unrelated U,
    # 4 B, 5 positive of B, 6 C, 7 positive of C.
    table = _unit([1, 0, 0, 0, 0], [0.8, 0.6, 0, 0, 0], [1, 0.1, 0, 0, 0], [0, 0, 1, 0, 0],
                  [0, 0, 0, 1, 0], [0, 0, 0.3, 1, 0], [0, 0, 0, 0, 1], [0, 0, 0.2, 0, 1])
    # Batch rows (anchor → positive): A → P_A, B → P_B, A → A (an exact duplicate of A, dropout positive),
    # C → P_C.
    anchors, positives = torch.tensor([0, 4, 0, 6]), torch.tensor([1, 5, 0, 7])
    mask = false_negative_mask(table, anchors, positives, margin=0.0, threshold=None)
    assert mask.tolist() == [
        [False, False, True, False],  # A: the duplicate row's positive is A itself
        [False, False, False, False],
        [False, False, False, False],  # A → A: P_A (0.8) is below its positive (1.0)
        [False, False, False, False],
    ]
    # Hard negatives: U, the near-duplicate of A, U, none (−1).
    negatives = torch.tensor([3, 2, 3, -1])
    both = false_negative_mask(table, anchors, positives, negatives, margin=0.0, threshold=None)
    assert both.shape == (4, 8)
    assert both[0, 4:].tolist() == [False, True, False, True]  # near-duplicate 0.995 > 0.8; missing one
    assert both[2, 4:].tolist() == [False, False, False, True]  # 0.995 < 1.0: kept by the margin rule ...
    near = false_negative_mask(table, anchors, positives, negatives, margin=0.0, threshold=0.95)
    assert near[2, 5] and near[0, 5]  # ... removed by the threshold
    assert near[1, :7].tolist() == [False] * 7
    # A margin keeps candidates that are only slightly above the positive.
    assert not false_negative_mask(table, anchors, positives, negatives, margin=0.2)[0, 5]
    # The anchor's own positive is never masked, whatever the rules say.
    everything = false_negative_mask(table, anchors, positives, negatives, margin=-2.0, threshold=-1.0)
    assert not everything[torch.arange(4), torch.arange(4)].any()
    assert everything.sum() == 4 * 8 - 4


def test_info_nce_mask_keeps_unmasked_loss_and_drops_masked_terms():
    """The false-negative mask DebCSE hands to ``info_nce``: all-false changes nothing, true cells leave the
    denominator."""
    from embedkit.losses.contrastive import info_nce

    g = torch.Generator().manual_seed(0)
    a, p, n = (torch.randn(4, 6, generator=g) for _ in range(3))
    none = torch.zeros(4, 8, dtype=torch.bool)
    assert torch.allclose(info_nce(a, p, 0.05, [n], mask=none), info_nce(a, p, 0.05, [n]))
    mask = torch.zeros(4, 8, dtype=torch.bool)
    mask[0, 1] = mask[0, 6] = True
    logits = torch.cat([torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(x, dim=-1).T
                        for x in (p, n)], dim=1) / 0.05
    keep = [j for j in range(8) if not mask[0, j]]
    row0 = -(logits[0, 0] - torch.logsumexp(logits[0, keep], dim=0))
    rows = [-(logits[i, i] - torch.logsumexp(logits[i], dim=0)) for i in range(1, 4)]
    expected = (row0 + sum(rows)) / 4
    assert torch.allclose(info_nce(a, p, 0.05, [n], mask=mask), expected, atol=1e-5)


def test_masking_addon_for_dropout_positives(tiny_model):
    """Mask-only mode (plain unsupervised SimCSE): exact duplicates in the batch are masked via their ids."""
    from embedkit.methods.debcse.loss import DebCSELoss
    from embedkit.mining import unit_vectors

    texts = ["a red car", "the stock market fell", "a red car", "rain is coming"]
    uniq, _ = db.unique_texts(texts)
    rows = db.identity_rows(texts, unit_vectors(tiny_model, uniq, device="cpu"), uniq)
    assert rows.ids[0, 0] == rows.ids[2, 0]
    loss = DebCSELoss(tiny_model, dropout_positive=True, threshold=None, margin=0.0, reference=rows.table)
    features = [tiny_model.preprocess(texts)]
    value = loss(features, torch.as_tensor(rows.ids))
    assert torch.isfinite(value)
    # Exactly the two cross-duplicate cells (0, 2) and (2, 0) are masked, out of 16.
    assert loss.last_masked_fraction == pytest.approx(2 / 16)


# ---------------------------------------------------------------------------------------------------------
# The method end to end


def _write_recipe(tmp_path, train_path, model_path, method: str, steps: int, extra: str = "") -> str:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model: {{name: {model_path}, pooling: cls, mlp_only_train: true, max_seq_length: 32}}\n"
        f"data: {{train: {{path: {train_path}}}, dev: null}}\n"
        f"method: {{name: debcse, {method}}}\n"
        f"training: {{batch_size: 16, max_steps: {steps}, eval_steps: 1000, learning_rate: 5e-4, "
        f"logging_steps: 1, seed: 3{extra}}}\n"
        f"output: {{dir: {tmp_path / 'out'}}}\n",
        encoding="utf-8",
    )
    return str(recipe)


def test_short_training_run_loss_decreases(tmp_path, sentences_file, tiny_model_path, minilm_path):
    """Rows mined with the packaged MiniLM as frozen reference, the tiny model trained on them."""
    from embedkit.training.run import train

    method = f"reference: {minilm_path}, k: 4, views: [crop], remine_every: 3, false_negative_threshold: 0.9"
    recipe = _write_recipe(tmp_path, sentences_file, tiny_model_path, method, steps=24)
    results = train(recipe)
    losses = [h["loss"] for h in results["train"]["log_history"] if "loss" in h]
    assert len(losses) == 24 and all(np.isfinite(losses))
    assert np.mean(losses[-6:]) < np.mean(losses[:6]) - 0.1
    assert (tmp_path / "out" / "results.json").exists()


def test_recipe_validation_and_shipped_recipes(tmp_path, data_dir, sentences_file):
    from embedkit.errors import RecipeError
    from embedkit.validate import load_recipe, load_recipe_with_data

    bad = _write_recipe(tmp_path, sentences_file, "x", "remine_every: 0", steps=1)
    with pytest.raises(RecipeError, match="remine_every"):
        load_recipe(bad)
    bad = _write_recipe(tmp_path, sentences_file, "x", "surface_bins: 5, surface_measur: mean", steps=1)
    with pytest.raises(RecipeError, match=r"recipe.yaml:3: method.surface_measur: unknown key"):
        load_recipe(bad)
    recipe, data = load_recipe_with_data("debcse-brown-minilm", data_dir=str(data_dir))
    assert recipe.method.name == "debcse" and len(data) == recipe.data.train.max_samples
    recipe = load_recipe("debcse-unsup-bert-base", check_data=False)
    assert recipe.model.name == "bert-base-uncased"


def test_diagnose_cli_writes_png_and_numbers(tmp_path, sentences_file, tiny_model_path, capsys):
    from embedkit.cli import main

    recipe = _write_recipe(tmp_path, sentences_file, tiny_model_path, "k: 4, positive_min_semantic: 0.0", steps=1)
    out = tmp_path / "diag"
    assert main(["data", "diagnose", recipe, "-o", str(out), "--max-samples", "64", "--batch-size", "16"]) == 0
    printed = capsys.readouterr().out
    assert "positives: surface similarity" in printed and "before" in printed
    assert (out / "diagnose.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "diagnose.json").read_text())
    before, after = summary["before"], summary["after"]
    assert before["rows"] == after["rows"] == 64
    assert before["positive"]["identical_share"] == 1.0
    assert after["positive"]["identical_share"] < 0.5
    assert after["positive"]["surface_mean"] < before["positive"]["surface_mean"]
    assert "negative" in after and "negative" not in before
    assert before["in_batch"]["masked_share"] == 0.0
    assert after["in_batch"]["above_positive_after_mask_share"] == 0.0


def test_diagnose_of_another_method_describes_its_pairs(tmp_path, sentences_file, tiny_model_path, capsys):
    """A simcse-unsup recipe trains on its own pairs: the report names them, not "after debiasing"."""
    from embedkit.cli import main

    recipe = _write_recipe(tmp_path, sentences_file, tiny_model_path, "k: 4", steps=1)
    assert main(["data", "diagnose", recipe, "method={name: simcse-unsup}", "-o", str(tmp_path / "diag"),
                 "--max-samples", "32", "--batch-size", "16", "--no-chart"]) == 0
    printed = capsys.readouterr().out
    assert "after debiasing" not in printed
    assert "simcse-unsup trains on the pairs in column 'simcse-unsup'" in printed
    assert re.search(r"^\s+simcse-uns\s+debcse$", printed, re.M), printed
    assert "DebCSE's debiasing (its defaults) would give, positives:" in printed


@pytest.mark.slow
def test_ipw_positives_are_lexically_different_with_pretrained_reference(data_dir, minilm_path):
    """With a real encoder the high-semantic pool is dominated by near-copies; IPW draws positives with lower
    surface similarity and wider length ratios than the same draw without the propensity correction."""
    from embedkit.modeling import build_model
    from embedkit.recipe import ModelSection

    model = build_model(ModelSection(name=minilm_path, max_seq_length=32))
    sentences = brown(data_dir, 300)
    params = db.DebiasParams(k=8)
    rows, cache = db.debias(model, sentences, params, seed=0, device="cpu")
    plain, _ = db.debias(model, sentences, params.model_copy(update={"ipw": False}), seed=0, previous=cache)
    assert rows.pairs["positive_surface"].mean() < plain.pairs["positive_surface"].mean() - 0.03
    assert rows.pairs["positive_length_ratio"].mean() < plain.pairs["positive_length_ratio"].mean() - 0.03
    assert rows.pairs["negative_surface"].mean() > plain.pairs["negative_surface"].mean()
