"""``embedkit data mine-pairs``: the ratio margin of Artetxe & Schwenk (2019) equals a hand computation, the
candidates are one-to-one from both directions, near-duplicates and pairs under the threshold are dropped, the
three files are written together and train as pairs, and bad options are one line before a model loads."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from embedkit.cli import main
from embedkit.mining import margin_pairs, surface_similarity


def _unit(rows: list[list[float]]) -> torch.Tensor:
    t = torch.tensor(rows, dtype=torch.float32)
    return t / t.norm(dim=1, keepdim=True)


def test_margin_equals_the_formula_by_hand():
    """Bitext, k=2: margin(x, y) = cos(x, y) / ((mean of x's 2 best cosines + mean of y's 2 best) / 2)."""
    x = _unit([[1, 0.1, 0], [0, 1, 0.2], [0.3, 0.2, 1]])
    y = _unit([[0.9, 0.2, 0.1], [0.1, 1, 0.1], [0.2, 0.1, 1], [0.6, 0.6, 0.1]])
    found = margin_pairs(x, y, k=2, backend="torch")
    cos = (x @ y.T).numpy().astype(np.float64)
    fx = np.sort(cos, axis=1)[:, -2:].mean(1)  # each source row's 2 nearest targets
    fy = np.sort(cos.T, axis=1)[:, -2:].mean(1)  # each target row's 2 nearest sources
    hand = cos / ((fx[:, None] + fy[None, :]) / 2)
    np.testing.assert_allclose(found.source_knn_mean, fx, rtol=1e-6)
    np.testing.assert_allclose(found.target_knn_mean, fy, rtol=1e-6)
    for s, t, c, m in zip(found.source, found.target, found.cosine, found.margin):
        assert m == pytest.approx(hand[s, t], rel=1e-5) and c == pytest.approx(cos[s, t], rel=1e-5)
    # the candidates: every (x, y) with y among x's 2 nearest or x among y's 2 nearest, each once, best first
    fwd = {(s, t) for s in range(3) for t in np.argsort(-cos[s])[:2]}
    bwd = {(s, t) for t in range(4) for s in np.argsort(-cos[:, t])[:2]}
    assert sorted(zip(found.source.tolist(), found.target.tolist())) == sorted(fwd | bwd)
    assert list(found.margin) == sorted(found.margin, reverse=True)
    # one-to-one: greedy by margin, no row twice, and the best candidate first
    kept = found.one_to_one()
    assert kept[0] == 0 and len(set(found.source[kept])) == len(kept) == len(set(found.target[kept])) == 3
    free = found.one_to_one(np.arange(len(found.source)) != 0)  # the best pair barred: its rows pair elsewhere
    assert 0 not in free and len(free) == 3


def test_margin_discounts_a_hub():
    """A target near every source (a 'hub') has the highest cosine to x0 but not the highest margin."""
    x = _unit([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])
    hub = [0.6, 0.55, 0.55, 0.19]  # cosine 0.6 / 0.55 / 0.55 to the three sources
    y = _unit([hub, [0.58, 0, 0, 0.81], [0, 1, 0, 0.05], [0, 0.05, 1, 0]])
    cos = (x @ y.T).numpy()
    assert cos[0].argmax() == 0  # by cosine x0 pairs with the hub
    found = margin_pairs(x, y, k=2, backend="torch")
    kept = found.one_to_one()
    pairs = dict(zip(found.source[kept].tolist(), found.target[kept].tolist()))
    assert pairs[0] == 1  # by margin with its own partner


def test_one_corpus_pairs_are_unordered_and_never_self():
    v = _unit([[1, 0, 0], [0.95, 0.1, 0], [0, 1, 0], [0.1, 0.95, 0], [0, 0, 1], [0, 0.1, 0.95]])
    found = margin_pairs(v, None, k=1, backend="torch")
    kept = found.one_to_one()
    pairs = {(int(s), int(t)) for s, t in zip(found.source[kept], found.target[kept])}
    assert pairs == {(0, 1), (2, 3), (4, 5)}  # each once, smaller row first, nobody paired with itself
    rows = [r for p in pairs for r in p]
    assert len(rows) == len(set(rows))


def test_surface_similarity_folds_case_and_space():
    sim = surface_similarity(["The  Cat sat.", "abc"], ["the cat sat.", "xyz"])
    assert sim[0] == pytest.approx(1.0) and sim[1] == pytest.approx(0.0)


def _noisy(sentence: str, rng: random.Random) -> str:
    """Word-order noise: two adjacent words swapped (a sentence of one word is kept)."""
    words = sentence.split()
    if len(words) > 2:
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


SENTENCES = [f"{a} {b} the {c} near the {d}" for a, b, c, d in zip(
    ["the dog", "a child", "my aunt", "the pilot", "an actor", "the chef", "a farmer", "the nurse", "a student",
     "the mayor", "our coach", "a tourist"],
    ["watched", "painted", "carried", "repaired", "found", "sold", "moved", "cleaned", "opened", "counted",
     "followed", "described"],
    ["red boat", "old piano", "blue kite", "broken clock", "silver key", "tall ladder", "wooden crate", "paper map",
     "glass jar", "small drum", "green tent", "iron gate"],
    ["river", "station", "market", "bridge", "school", "harbour", "garden", "library", "castle", "factory", "temple",
     "airport"])]


def test_bitext_mining_finds_the_true_pairs(tmp_path, spread_model_path, capsys):
    rng = random.Random(0)
    src, tgt = tmp_path / "a.txt", tmp_path / "b.txt"
    src.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    noisy = [_noisy(s, rng) for s in SENTENCES]
    order = list(range(len(noisy)))
    rng.shuffle(order)
    tgt.write_text("\n".join(noisy[i] for i in order) + "\n", encoding="utf-8")
    out = tmp_path / "pairs.jsonl"
    assert main(["data", "mine-pairs", str(src), str(tgt), "--model", spread_model_path, "-o", str(out),
                 "--k", "3", "--threshold", "1.0", "--max-surface-similarity", "none", "--no-progress"]) == 0, \
        capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    truth = dict(zip(SENTENCES, noisy))
    correct = sum(truth[r["anchor"]] == r["positive"] for r in rows)
    assert len(rows) >= 8 and correct / len(rows) >= 0.9, (correct, len(rows))
    stats = json.loads((tmp_path / "pairs.stats.json").read_text())
    assert stats["pairs"] == len(rows) and stats["texts"] == {"source": 12, "target": 12}
    assert (tmp_path / "pairs.png").stat().st_size > 1000
    assert [r["margin"] for r in rows] == sorted((r["margin"] for r in rows), reverse=True)
    assert all(r["margin"] >= 1.0 for r in rows)


def test_paraphrase_mining_drops_near_duplicates_and_trains(tmp_path, spread_model_path, capsys):
    corpus = tmp_path / "corpus.txt"
    texts = SENTENCES + [s.upper() + "  " for s in SENTENCES[:4]]  # surface duplicates of four sentences
    corpus.write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "para.jsonl"
    assert main(["data", "mine-pairs", str(corpus), "--model", spread_model_path, "-o", str(out), "--k", "2",
                 "--threshold", "0", "--top", "5", "--no-progress"]) == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    stats = json.loads((tmp_path / "para.stats.json").read_text())
    assert len(rows) == 5 and stats["dropped_beyond_top"] == stats["one_to_one"] - 5
    assert stats["dropped_near_duplicate"] >= 4  # each upper-case copy is its original's nearest neighbour
    assert all(r["anchor"].casefold().strip() != r["positive"].casefold().strip() for r in rows)
    # the output is a pairs file a recipe trains on
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""\
model: {{name: {spread_model_path}, pooling: mean, max_seq_length: 16}}
data: {{train: {{path: {out}, columns: [anchor, positive]}}, dev: null}}
method: {{name: contrastive}}
training: {{batch_size: 4, max_steps: 1, logging_steps: 1}}
eval: {{before: false, suite: none}}
output: {{dir: {tmp_path / "run"}}}
""", encoding="utf-8")
    assert main(["train", str(recipe)]) == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "model.safetensors").is_file() or list((tmp_path / "run").glob("*.safetensors"))


@pytest.mark.parametrize("extra, expected", [
    (["--k", "0"], "--k 0: expected at least 1"),
    (["--top", "0"], "--top 0: expected at least 1"),
    (["--threshold", "nan"], "--threshold nan: expected a finite number"),
    (["--max-surface-similarity", "1.5"], "--max-surface-similarity 1.5: expected a number in (0, 1]"),
    (["--k", "20"], "distinct non-empty text(s); the margin needs --k 20 neighbours besides the text itself"),
])
def test_refusals_are_one_line_before_a_model_loads(tmp_path, capsys, extra, expected):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    out = tmp_path / "o.jsonl"
    assert main(["data", "mine-pairs", str(corpus), "--model", "no-such/model", "-o", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert not out.exists()


def test_an_existing_output_needs_overwrite(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    out = tmp_path / "o.jsonl"
    out.write_text("mine\n")
    assert main(["data", "mine-pairs", str(corpus), "--model", "no-such/model", "-o", str(out)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err and out.read_text() == "mine\n"
    assert main(["data", "mine-pairs", str(corpus), "--model", "x", "-o", str(tmp_path / "o.txt")]) == 2
    assert "expected a file name ending in .jsonl" in capsys.readouterr().err
