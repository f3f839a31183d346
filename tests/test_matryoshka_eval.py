"""Matryoshka evaluation and encoding: ``embedkit eval --dims``, ``evaluate(dims=...)``, ``encode(dim=...)``,
``embedkit encode --dim``. Every score at a dimension equals truncate-then-normalise-then-cosine computed
directly with ``SentenceTransformer.encode``."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from scipy.stats import spearmanr
from test_eval_data import make_sts_dir

import embedkit
from embedkit.cli import main
from embedkit.errors import EmbedkitError

DIMS = [32, 12, 5]  # the tiny BERT is 32 wide


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root, _ = make_sts_dir(tmp_path_factory.mktemp("stsdata"), n_extra=20)
    return root


def _direct(model, s1: list[str], s2: list[str], gold: list[float], dim: int) -> float:
    """100 × Spearman of the cosine of the first ``dim`` coordinates, normalised after truncation."""
    a = model.encode(s1, convert_to_numpy=True).astype(np.float64)[:, :dim]
    b = model.encode(s2, convert_to_numpy=True).astype(np.float64)[:, :dim]
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    return 100 * spearmanr((a * b).sum(1), gold).statistic


def test_sts_scores_at_each_dim_equal_direct_truncate_normalise_cosine(spread_model_path, data_root):
    from sentence_transformers import SentenceTransformer

    from embedkit.data.sts import read_sts_year, read_stsb

    res = embedkit.evaluate(spread_model_path, suite="sts", data_dir=data_root, dims=DIMS, geometry=True)
    full = embedkit.evaluate(spread_model_path, suite="sts", data_dir=data_root)
    assert res["tasks"] == full["tasks"]  # the full-width scores are unchanged by asking for dims
    assert list(res["dims"]) == [str(d) for d in DIMS]
    model = SentenceTransformer(spread_model_path, device="cpu")
    stsb = read_stsb(data_root / "sts" / "stsbenchmark" / "sts-test.csv")
    sts12 = read_sts_year(data_root / "sts" / "STS12")
    for d in DIMS:
        at = res["dims"][str(d)]
        assert at["dim"] == d and set(at["tasks"]) == set(full["tasks"])
        for name, pairs in (("STSBenchmark", stsb), ("STS12", sts12)):
            expected = _direct(model, pairs.sentences1, pairs.sentences2, pairs.scores, d)
            assert at["tasks"][name]["spearman"] == pytest.approx(expected, abs=1e-4), (name, d)
        assert at["avg"] == pytest.approx(np.mean([t["spearman"] for t in at["tasks"].values()]))
        assert set(at["geometry"]) >= {"alignment", "uniformity", "anisotropy"}
    assert res["dims"]["32"]["tasks"] == full["tasks"]  # the full width through the same path
    # truncation matters: the smallest prefix scores differently from the full vector
    assert res["dims"]["5"]["tasks"]["STSBenchmark"] != full["tasks"]["STSBenchmark"]


def test_geometry_at_each_dim_uses_truncated_unit_vectors(spread_model_path, data_root):
    from sentence_transformers import SentenceTransformer

    from embedkit.data.sts import read_stsb
    from embedkit.evaluation.geometry import sample_sentences

    geo = embedkit.evaluate(spread_model_path, suite="geometry", data_dir=data_root, dims=[8])
    pairs = read_stsb(data_root / "sts" / "stsbenchmark" / "sts-test.csv")
    sample = sample_sentences(pairs.sentences1 + pairs.sentences2, 2000, 0)
    z = SentenceTransformer(spread_model_path, device="cpu").encode(sample, convert_to_numpy=True)[:, :8]
    z = z.astype(np.float64) / np.linalg.norm(z, axis=1, keepdims=True)
    cos = (z @ z.T)[np.triu_indices(len(z), k=1)]
    assert geo["dims"]["8"]["anisotropy"] == pytest.approx(cos.mean(), abs=1e-5)


def test_encode_dim_truncates_then_normalises(spread_model_path):
    from sentence_transformers import SentenceTransformer

    from embedkit.encoding import encode

    model = SentenceTransformer(spread_model_path, device="cpu")
    texts = ["a b c", "the kappa of mu", "a b c", "number 7"]
    ref = model.encode(texts, convert_to_numpy=True)
    raw = encode(model, texts, dim=12)
    np.testing.assert_allclose(raw, ref[:, :12], atol=1e-6)
    unit = encode(model, texts, dim=12, normalize=True)
    np.testing.assert_allclose(unit, ref[:, :12] / np.linalg.norm(ref[:, :12], axis=1, keepdims=True), atol=1e-6)
    assert not np.allclose(unit, encode(model, texts, normalize=True)[:, :12])  # normalise-then-truncate differs
    for bad, why in ((0, "positive"), (-3, "positive"), (33, r"larger than the model's embedding dimension \(32\)")):
        with pytest.raises(EmbedkitError, match=why):
            encode(model, texts, dim=bad)


def test_cli_eval_dims_writes_results_and_a_table_per_dim(spread_model_path, data_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["eval", spread_model_path, "--data-dir", str(data_root), "--output", str(out), "--dims", "32,8",
                 "--no-chart"]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert list(results["sts"]["dims"]) == ["32", "8"]
    assert "first 8 coordinates, then normalised" in printed and "first 32 coordinates" in printed
    avg8 = results["sts"]["dims"]["8"]["avg"]
    assert f"{avg8:10.2f}" in printed


@pytest.mark.parametrize(("dims", "message"), [
    ("0,8", "distinct positive dimensions"),
    ("8,8", "distinct positive dimensions"),
    ("a,8", "comma-separated integers"),
    ("64", r"dims 64: larger than the model's embedding dimension \(32\)"),
])
def test_cli_eval_bad_dims_is_one_line(spread_model_path, data_root, tmp_path, capsys, dims, message):
    out = tmp_path / "bad"
    assert main(["eval", spread_model_path, "--data-dir", str(data_root), "--output", str(out),
                 f"--dims={dims}"]) == 2
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]  # (loading progress bars may come before it)
    assert last.startswith("embedkit: error:") and "Traceback" not in err
    assert re.search(message, last), err
    assert not (out / "results.json").exists()


def test_cli_encode_dim(spread_model_path, tmp_path, capsys):
    from sentence_transformers import SentenceTransformer

    texts = tmp_path / "t.txt"
    texts.write_text("one two\nthree four five\nsix\n", encoding="utf-8")
    out = tmp_path / "e.npy"
    assert main(["encode", spread_model_path, str(texts), "-o", str(out), "--dim", "10", "--normalize"]) == 0
    emb = np.load(out)
    ref = SentenceTransformer(spread_model_path, device="cpu").encode(["one two", "three four five", "six"])[:, :10]
    np.testing.assert_allclose(emb, ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-6)
    assert "3 x 10 float32" in capsys.readouterr().out
    for bad in ("0", "33"):
        assert main(["encode", spread_model_path, str(texts), "-o", str(tmp_path / f"b{bad}.npy"),
                     "--dim", bad]) == 2
        assert "--dim" in capsys.readouterr().err
        assert not (tmp_path / f"b{bad}.npy").exists()
