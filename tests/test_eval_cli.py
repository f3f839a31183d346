"""``embedkit eval`` and ``embedkit.evaluate`` end to end on a tiny random model and hand-built STS files:
results.json shape and provenance, the chart, --compare, the fast encoder against model.encode, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import spearmanr
from test_eval_data import make_sts_dir

import embedkit
from embedkit.cli import main
from embedkit.errors import EmbedkitError
from embedkit.evaluation import TASKS
from embedkit.evaluation.report import write_json_atomic


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root, _ = make_sts_dir(tmp_path_factory.mktemp("stsdata"), n_extra=20)
    return root


@pytest.fixture(scope="module")
def tiny_b(tmp_path_factory, minilm_path):
    from tiny_model import tiny_bert

    return tiny_bert(tmp_path_factory.mktemp("tiny-b"), tokenizer_from=minilm_path, seed=1)


def test_fast_encoder_matches_model_encode(tiny_model_path):
    from sentence_transformers import SentenceTransformer

    from embedkit.encoding import embed

    model = SentenceTransformer(tiny_model_path, device="cpu")
    sents = [f"sentence number {i} " + "word " * (i % 17) for i in range(70)] + ["", "   padded  "]
    ref = model.encode(sents, batch_size=16, convert_to_numpy=True)
    got = embed(model, sents, batch_size=16)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-5)
    chunked = embed(model, sents, batch_size=8, chunk_size=20)  # 4 preprocessing chunks, the last one short
    np.testing.assert_allclose(chunked, ref, atol=1e-5)
    with pytest.raises(EmbedkitError, match="chunk_size must be at least batch_size"):
        embed(model, sents, batch_size=16, chunk_size=8)


def test_token_batches_cover_every_row_once_within_the_token_budget():
    import torch

    from embedkit.encoding import TOKENS_PER_ROW, _token_batches

    lengths = torch.tensor([3, 40, 7, 7, 200, 12, 3, 5, 64, 9] * 7)
    batches = _token_batches(lengths, batch_size=4)
    budget = 4 * TOKENS_PER_ROW
    seen = torch.cat(batches).tolist()
    assert sorted(seen) == list(range(len(lengths)))
    widths = [int(lengths[b].max()) for b in batches]
    assert widths == sorted(widths, reverse=True)  # longest first
    for b, w in zip(batches, widths, strict=True):
        assert len(b) * w <= budget or len(b) == 1  # a single row may exceed it (it cannot be split)
    assert max(len(b) for b in batches) > 4  # short rows share a batch beyond batch_size rows


def test_evaluate_api_shape_and_matches_independent_computation(tiny_model_path, data_root):
    res = embedkit.evaluate(tiny_model_path, suite="sts", data_dir=data_root, batch_size=8)
    assert res["protocol"] == "senteval-sts-all"
    assert list(res["tasks"]) == list(TASKS)
    for scores in res["tasks"].values():
        assert set(scores) == {"spearman", "pearson", "n"} and isinstance(scores["n"], int)
    assert res["avg"] == pytest.approx(np.mean([t["spearman"] for t in res["tasks"].values()]))
    assert set(res["settings"]) == {"wmean", "mean"}
    assert res["data"]["source"] == "local" and len(res["data"]["files"]) == 5 * 4 + 2
    assert all(len(h) == 64 for h in res["data"]["files"].values())
    assert len(res["model"]["weights_sha256"]) == 64 and res["model"]["path"]
    assert {"torch", "sentence-transformers", "mteb"} <= set(res["versions"])
    assert res["seconds"] > 0
    # independent path: model.encode on each column, cosine, scipy Spearman
    from sentence_transformers import SentenceTransformer

    from embedkit.data.sts import read_stsb

    model = SentenceTransformer(tiny_model_path, device="cpu")
    pairs = read_stsb(data_root / "sts" / "stsbenchmark" / "sts-test.csv")
    a = model.encode(pairs.sentences1, normalize_embeddings=True)
    b = model.encode(pairs.sentences2, normalize_embeddings=True)
    expected = 100 * spearmanr((a * b).sum(1), pairs.scores).statistic
    assert res["tasks"]["STSBenchmark"]["spearman"] == pytest.approx(expected, abs=1e-4)


def test_geometry_suite(tiny_model_path, data_root):
    geo = embedkit.evaluate(tiny_model_path, suite="geometry", data_dir=data_root)
    assert geo["positives"]["n"] == 5  # STS-B pairs scored above 4 in the hand-built file
    assert 0 <= geo["alignment"] <= 4 and geo["uniformity"] <= 0 and -1 <= geo["anisotropy"] <= 1


def test_cli_writes_results_chart_and_compare(tiny_model_path, tiny_b, data_root, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["eval", tiny_model_path, "--compare", tiny_b, "--data-dir", str(data_root), "--output", str(out),
               "--geometry", "--batch-size", "16"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "STS avg" in printed and "A - B" in printed and "NOT comparable" in printed and "alignment" in printed
    results = json.loads((out / "results.json").read_text())
    assert set(results["sts"]["tasks"]) == set(TASKS) and "geometry" in results["sts"]
    diff = results["compare"]["difference_a_minus_b"]  # what changed from B (--compare) to A (MODEL)
    for task in TASKS:
        b, a = results["compare"]["sts"]["tasks"][task]["spearman"], results["sts"]["tasks"][task]["spearman"]
        assert diff[task] == pytest.approx(a - b)
    assert results["compare"]["model"]["weights_sha256"] != results["sts"]["model"]["weights_sha256"]
    assert (out / "sts.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("*.partial"))


def test_bad_input_gives_one_line_and_no_results(tiny_model_path, data_root, tmp_path, capsys):
    cases = [
        (["eval", tiny_model_path, "--data-dir", str(tmp_path / "missing")], "folder not found"),
        (["eval", str(tmp_path / "no-model"), "--data-dir", str(data_root)], "does not exist"),
        (["eval", tiny_model_path, "--data-dir", str(data_root), "--submission", str(tmp_path / "s")], "--mteb"),
    ]
    for argv, expected in cases:
        out = tmp_path / "out"
        assert main(argv + ["--output", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("embedkit: error:") and expected in err and "\n" not in err
        assert not (out / "results.json").exists()


def test_malformed_file_fails_before_results(tiny_model_path, tmp_path, capsys):
    root, _ = make_sts_dir(tmp_path / "d")
    (root / "sts" / "stsbenchmark" / "sts-test.csv").write_text("a\tb\tc\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["eval", tiny_model_path, "--data-dir", str(root), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "sts-test.csv:1: expected at least 7 tab-separated columns" in err
    assert not out.exists() or not (out / "results.json").exists()


def test_missing_model_path_in_api(data_root, tmp_path):
    with pytest.raises(EmbedkitError, match="does not exist"):
        embedkit.evaluate(str(tmp_path / "nope"), data_dir=data_root)
    with pytest.raises(EmbedkitError, match="suite 'bogus'"):
        embedkit.evaluate(str(tmp_path / "nope"), suite="bogus")


def test_results_json_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    write_json_atomic(target, {"a": float("nan"), "b": 1.5})
    assert json.loads(target.read_text()) == {"a": None, "b": 1.5}

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("embedkit.evaluation.report.os.replace", boom)
    with pytest.raises(OSError):
        write_json_atomic(tmp_path / "other.json", {"x": 1})
    assert not (tmp_path / "other.json").exists() and not list(tmp_path.glob("*.partial"))
