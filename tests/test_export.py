"""``embedkit export``: ONNX / OpenVINO serving folders (fp32 and int8) that load with embedkit's loader on their
backend and give the torch model's embeddings; eval and encode read them; bad combinations and a missing
backend are one line with the pip command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_eval_data import make_sts_dir

from embedkit.cli import main
from embedkit.errors import EmbedkitError

pytest.importorskip("onnx", reason='pip install "embedkit[export]"')
pytest.importorskip("onnxruntime", reason='pip install "embedkit[export]"')

SENTENCES = ["A man is playing a guitar.", "hello world", "The quick brown fox jumps over the lazy dog, again and "
             "again, until the dog finally gets up and leaves.", "x", "Two dogs run through a field of tall grass."]


def _torch_embeddings(path: str, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device="cpu").encode(texts, convert_to_numpy=True)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def exported(tiny_model_path, tmp_path_factory) -> dict[str, Path]:
    """The tiny model exported once per format (ONNX fp32, ONNX int8, OpenVINO when installed)."""
    from embedkit.export import export

    root = tmp_path_factory.mktemp("exported")
    out = {"onnx": export(tiny_model_path, root / "onnx", "onnx"),
           "onnx-int8": export(tiny_model_path, root / "onnx-int8", "onnx", "int8")}
    try:
        import openvino  # noqa: F401
    except ImportError:
        pass
    else:
        out["openvino"] = export(tiny_model_path, root / "openvino", "openvino")
    return out


def test_onnx_fp32_folder_layout_and_equal_embeddings(tiny_model_path, exported):
    from embedkit.backends import backend_of
    from embedkit.model_ref import load_model

    out = exported["onnx"]
    # sentence-transformers' backend layout: the weights only in onnx/model.onnx, the rest of the folder as saved
    assert (out / "onnx" / "model.onnx").is_file() and not (out / "model.safetensors").exists()
    assert [m["type"] for m in json.loads((out / "modules.json").read_text())][0].endswith("Transformer")
    marker = json.loads((out / "export.json").read_text())
    assert marker["format"] == "onnx" and marker["file"] == "onnx/model.onnx" and marker["quantize"] is None
    model, spec = load_model(str(out))
    assert backend_of(model) == "onnx" and spec == str(out)
    assert type(model[0].auto_model).__name__ == "OnnxEncoder"  # really onnxruntime, not torch weights
    got = model.encode(SENTENCES, convert_to_numpy=True)
    np.testing.assert_allclose(got, _torch_embeddings(tiny_model_path, SENTENCES), atol=1e-4, rtol=0)


def test_onnx_int8_is_quantized_and_agrees(tiny_model_path, exported):
    import onnx

    from embedkit.export import cpu_target
    from embedkit.model_ref import load_model

    out = exported["onnx-int8"]
    file = out / "onnx" / f"model_qint8_{cpu_target()}.onnx"
    assert file.is_file() and not (out / "onnx" / "model.onnx").exists()
    ops = {node.op_type for node in onnx.load(str(file)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} & ops  # int8 matrix products, not an fp32 copy
    assert file.stat().st_size < 0.6 * (exported["onnx"] / "onnx" / "model.onnx").stat().st_size
    got = load_model(str(out))[0].encode(SENTENCES, convert_to_numpy=True)
    ref = _torch_embeddings(tiny_model_path, SENTENCES)
    assert _cos(got, ref).min() > 0.99
    assert np.abs(got - ref).max() > 1e-6  # it did change the numbers: the int8 file is the one loaded


def test_openvino_fp32_equal_embeddings(tiny_model_path, exported):
    if "openvino" not in exported:
        pytest.skip('OpenVINO not installed (pip install "embedkit[export]")')
    from embedkit.model_ref import load_model

    out = exported["openvino"]
    assert (out / "openvino" / "openvino_model.xml").is_file() and (out / "openvino" / "openvino_model.bin").is_file()
    assert not (out / "onnx").exists() and not (out / "model.safetensors").exists()
    model = load_model(str(out))[0]
    assert type(model[0].auto_model).__name__ == "OpenVinoEncoder"
    got = model.encode(SENTENCES, convert_to_numpy=True)
    np.testing.assert_allclose(got, _torch_embeddings(tiny_model_path, SENTENCES), atol=1e-4, rtol=0)


def test_encode_and_eval_commands_read_an_exported_folder(tiny_model_path, exported, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    npy = tmp_path / "emb.npy"
    assert main(["encode", str(exported["onnx"]), str(texts), "-o", str(npy)]) == 0
    np.testing.assert_allclose(np.load(npy), _torch_embeddings(tiny_model_path, SENTENCES), atol=1e-4, rtol=0)

    root, _ = make_sts_dir(tmp_path / "sts", n_extra=5)
    results = {}
    for name, folder in (("torch", tiny_model_path), ("onnx", exported["onnx"])):
        assert main(["eval", str(folder), "--data-dir", str(root), "-o", str(tmp_path / name), "--no-chart"]) == 0
        results[name] = json.loads((tmp_path / name / "results.json").read_text())["sts"]
    onnx_sts, torch_sts = results["onnx"], results["torch"]
    for task, scores in torch_sts["tasks"].items():
        assert onnx_sts["tasks"][task]["spearman"] == pytest.approx(scores["spearman"], abs=1e-3), task
    assert onnx_sts["model"]["backend"] == "onnx" and "backend" not in torch_sts["model"]
    assert onnx_sts["model"]["weights_sha256"] != torch_sts["model"]["weights_sha256"]


def test_refusals_are_one_line(tiny_model_path, exported, tmp_path, capsys, monkeypatch):
    import embedkit.backends as ex

    cases = [
        (["--format", "tflite"], "--format 'tflite': expected one of onnx, openvino"),
        (["--format", "onnx", "--quantize", "int4"], "--quantize 'int4': expected int8"),
        (["--format", "openvino", "--quantize", "int8"], "calibration set"),
    ]
    for extra, expected in cases:
        assert main(["export", tiny_model_path, *extra, "-o", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("embedkit: error: ") and expected in err, err
        assert not (tmp_path / "x").exists()
    # an existing folder is kept unless --overwrite
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert main(["export", tiny_model_path, "--format", "onnx", "-o", str(taken)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err and (taken / "keep.txt").exists()
    # the model's own folder is never the output, even with --overwrite
    assert main(["export", tiny_model_path, "--format", "onnx", "-o", tiny_model_path, "--overwrite"]) == 2
    assert f"-o {tiny_model_path}: is the model {tiny_model_path}" in capsys.readouterr().err
    # nor a folder inside it, nor a training run's folder
    assert main(["export", tiny_model_path, "--format", "onnx", "-o", str(Path(tiny_model_path) / "onnx-out")]) == 2
    assert "lies inside the model" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / ".embedkit-run.json").write_text("{}")
    assert main(["export", tiny_model_path, "--format", "onnx", "-o", str(run / "exported")]) == 2
    assert "training run folder" in capsys.readouterr().err and not (run / "exported").exists()
    # a missing backend names the pip command
    real = ex.find_spec
    monkeypatch.setattr(ex, "find_spec", lambda name: None if name == "onnxruntime" else real(name))
    assert main(["export", tiny_model_path, "--format", "onnx", "-o", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "onnxruntime" in err and 'pip install "embedkit[export]"' in err, err
    with pytest.raises(EmbedkitError, match="pip install"):  # loading an exported folder without its backend too
        from embedkit.model_ref import load_model

        load_model(str(exported["onnx"]))
    # an exported folder is not exported again
    monkeypatch.setattr(ex, "find_spec", real)
    assert main(["export", str(exported["onnx"]), "--format", "onnx", "-o", str(tmp_path / "z")]) == 2
    assert "already an exported" in capsys.readouterr().err


def test_a_recipe_cannot_train_an_exported_folder(exported, tmp_path, capsys):
    from test_bad_inputs_models import _recipe

    recipe = _recipe(tmp_path, str(exported["onnx"]))
    assert main(["check", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{recipe}:3: model.name: {exported['onnx']} is an exported onnx serving " \
        "folder (embedkit export); training needs the torch model" in err, err


def test_overwrite_replaces_only_its_own_folder(tiny_model_path, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert main(["export", tiny_model_path, "--format", "onnx", "-o", str(out)]) == 0
    assert "onnx fp32 (onnx/model.onnx)" in capsys.readouterr().out
    manifest = json.loads((out / ".embedkit-output.json").read_text())
    assert manifest["command"] == "export" and "onnx/model.onnx" in manifest["files"]
    # its own output is replaced with --overwrite, as a whole (the fp32 file goes with the old folder)
    assert main(["export", tiny_model_path, "--format", "onnx", "--quantize", "int8", "-o", str(out),
                 "--overwrite"]) == 0
    assert not (out / "onnx" / "model.onnx").exists() and list((out / "onnx").glob("model_qint8_*.onnx"))
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder or lock left beside it
    # a folder holding files export did not write is never replaced, even with --overwrite
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert main(["export", tiny_model_path, "--format", "onnx", "-o", str(mine), "--overwrite"]) == 2
    assert "did not write (notes.txt)" in capsys.readouterr().err and (mine / "notes.txt").read_text() == "mine"
    # a failure while exporting leaves the earlier output as it was
    import embedkit.export as ex

    def broken(*args, **kwargs):
        raise RuntimeError("converter crashed")

    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    monkeypatch.setattr(ex, "_quantize_dynamic", broken)
    with pytest.raises(RuntimeError, match="converter crashed"):
        ex.export(tiny_model_path, out, "onnx", "int8", overwrite=True)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out", "mine"] or \
        sorted(p.name for p in tmp_path.iterdir()) == ["mine", "out"]


def test_cpu_target_from_flags():
    from embedkit.export import cpu_target

    assert cpu_target({"avx2", "avx512f", "avx512_vnni"}, "x86_64") == "avx512_vnni"
    assert cpu_target({"avx2", "avx512f"}, "x86_64") == "avx512"
    assert cpu_target({"avx2"}, "x86_64") == "avx2"
    assert cpu_target(set(), "aarch64") == "arm64"


@pytest.mark.slow
def test_minilm_onnx_equals_torch_on_sts_sentences(minilm_path, data_dir, tmp_path):
    """The real model: ONNX fp32 embeddings equal torch's within 1e-4 on 400 STS-B test sentences."""
    from embedkit.data.sts import read_stsb
    from embedkit.encoding import encode
    from embedkit.export import export
    from embedkit.model_ref import load_model

    pairs = read_stsb(data_dir / "sts" / "stsbenchmark" / "sts-test.csv")
    texts = list(dict.fromkeys(pairs.sentences1 + pairs.sentences2))[:400]
    out = export(minilm_path, tmp_path / "minilm-onnx", "onnx")
    got = encode(load_model(str(out))[0], texts)
    np.testing.assert_allclose(got, _torch_embeddings(minilm_path, texts), atol=1e-4, rtol=0)
