"""``embedkit encode``: rows equal SentenceTransformer.encode in file order (repeats included), column choice,
normalisation, and one-line errors that leave no output file behind."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embedkit.cli import main


@pytest.fixture()
def texts() -> list[str]:
    base = [f"a sentence number {i} " + "word " * (i % 11) for i in range(40)]
    return base + [base[3], base[0], "  spaced   out  "]  # repeats must still get their own rows


def test_encode_text_file_matches_model_encode(tiny_model_path, tmp_path, texts, capsys):
    from sentence_transformers import SentenceTransformer

    src = tmp_path / "in.txt"
    src.write_text("\n".join(texts[:20]) + "\n\n" + "\n".join(texts[20:]) + "\n", encoding="utf-8")  # a blank line
    out = tmp_path / "out" / "emb.npy"
    assert main(["encode", tiny_model_path, str(src), "-o", str(out), "--batch-size", "8"]) == 0
    got = np.load(out)
    model = SentenceTransformer(tiny_model_path, device="cpu")
    ref = model.encode([t.strip() for t in texts], batch_size=8, convert_to_numpy=True)
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert f"{len(texts)} x {ref.shape[1]} float32 ({len(set(texts))} distinct texts)" in capsys.readouterr().out
    assert not list(out.parent.glob("*.partial"))


def test_encode_jsonl_column_and_normalize(tiny_model_path, tmp_path, texts):
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    out = tmp_path / "emb.npy"
    assert main(["encode", tiny_model_path, str(src), "--column", "text", "-o", str(out), "--normalize"]) == 0
    got = np.load(out)
    assert got.shape[0] == len(texts)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(got[40], got[3])  # a repeated text gets the same row

    # Two columns and no --column: which one is meant cannot be guessed.
    assert main(["encode", tiny_model_path, str(src), "-o", str(tmp_path / "x.npy")]) == 2
    assert not (tmp_path / "x.npy").exists()


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda d, m: [m, str(d / "missing.txt"), "-o", str(d / "e.npy")], "missing.txt: input data file not found"),
        (lambda d, m: [m, str(d / "ok.txt"), "-o", str(d / "e.txt")], "expected a file name ending in .npy"),
        (lambda d, m: [m, str(d / "empty.txt"), "-o", str(d / "e.npy")], "empty.txt: the input set is empty"),
        (lambda d, m: [m, str(d / "bad.jsonl"), "-o", str(d / "e.npy")], "bad.jsonl:2: not valid JSON"),
        (lambda d, m: [str(d / "no-model"), str(d / "ok.txt"), "-o", str(d / "e.npy")], "no-model"),
        (lambda d, m: [m, str(d / "ok.txt"), "-o", str(d / "e.npy"), "--batch-size", "0"], "--batch-size"),
        (lambda d, m: [m, str(d / "ok.txt"), "-o", str(d / "e.npy"), "--column", "text2"], "do not exist"),
    ],
)
def test_encode_bad_input_is_one_line_and_writes_nothing(tiny_model_path, tmp_path, capsys, make_args, message):
    (tmp_path / "ok.txt").write_text("one\ntwo\n", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": \n', encoding="utf-8")
    assert main(["encode", *make_args(tmp_path, tiny_model_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("embedkit: error:") and message in err and "\n" not in err
    assert not list(tmp_path.glob("e.*"))
