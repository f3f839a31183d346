"""Bad model references and outputs: one line naming what is wrong, fast, before any heavy import, nothing written.

Model folders that are not models, models with their own code, missing paths, an unreachable Hub (HF_ENDPOINT on
a loopback port: no traffic leaves 127.0.0.1), ``encode -o`` on a folder or an existing file, ``inspect ""``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _mp_helpers import run_timed
from conftest import guard_loopback

from embedkit import model_ref
from embedkit.cli import main
from embedkit.errors import EmbedkitError

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "sentence_transformers")


# ---------------------------------------------------------------------------------------------------------
# Helpers


def _recipe(tmp_path: Path, model: str, trust: bool = False) -> Path:
    data = tmp_path / "train.txt"
    data.write_text("".join(f"sentence number {i}\n" for i in range(8)), encoding="utf-8")
    path = tmp_path / "r.yaml"
    path.write_text(
        "description: bad model test\n"
        "model:\n"
        f"  name: {json.dumps(model)}\n"
        f"  trust_remote_code: {'true' if trust else 'false'}\n"
        f"data:\n  train: {{path: {json.dumps(str(data))}}}\n  dev: null\n"
        "method: {name: simcse-unsup}\n"
        f"output: {{dir: {json.dumps(str(tmp_path / 'out'))}}}\n",
        encoding="utf-8",
    )
    return path


def _fake_model(folder: Path, **config) -> Path:
    """A folder that looks like a transformers model (config.json + weights file) without being loadable."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", **config}), encoding="utf-8")
    (folder / "model.safetensors").write_bytes(b"not really weights")
    return folder


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("embedkit: error:") and "\n" not in err, err
    return err


@pytest.fixture()
def fresh_probe(monkeypatch):
    """No Hub probe or Hub-id check remembered from another test."""
    monkeypatch.setattr(model_ref, "_PROBES", {})
    monkeypatch.setattr(model_ref, "_HUB_CHECKED", set())


@pytest.fixture()
def loopback_only(monkeypatch):
    """Refuse (and record) any connection or name lookup that is not for 127.0.0.1."""
    return guard_loopback(monkeypatch)


@pytest.fixture()
def online(monkeypatch):
    """Online mode, whatever the caller's environment says (HF_HUB_OFFLINE=1 is common offline)."""
    import huggingface_hub.constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


@pytest.fixture()
def dead_hub(monkeypatch, fresh_probe, loopback_only, online) -> str:
    """HF_ENDPOINT on a loopback port where nothing listens: every connection is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("HF_ENDPOINT", url)
    return url


@pytest.fixture()
def offline(monkeypatch, fresh_probe, tmp_path):
    """HF_HUB_OFFLINE=1 with an empty Hugging Face cache of its own; any Hub request fails the test."""
    import huggingface_hub.constants
    import huggingface_hub.utils

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))

    def no_session():
        raise AssertionError("offline mode must not probe the Hub")

    monkeypatch.setattr(huggingface_hub.utils, "get_session", no_session)
    return cache


def _cache_model(cache: Path, repo_id: str, src: Path) -> Path:
    """Lay ``src``'s files out as huggingface_hub's cache holds a downloaded model (refs/main -> snapshot)."""
    import shutil

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    sha = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    shutil.copytree(src, repo / "snapshots" / sha)
    return repo / "snapshots" / sha


# ---------------------------------------------------------------------------------------------------------
# 9c: a folder that is not a model


@pytest.mark.parametrize("content", ["empty", "texts"])
def test_folder_that_is_not_a_model_in_check_and_train(tmp_path, capsys, content):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    if content == "texts":
        (folder / "notes.txt").write_text("hello\n")
        (folder / "readme.md").write_text("# hi\n")
    recipe = _recipe(tmp_path, str(folder))
    for command in ("check", "train"):
        started = time.perf_counter()
        assert main([command, str(recipe)]) == 2
        err = _one_error_line(capsys)
        assert time.perf_counter() - started < 3
        assert f"{recipe}:3: model.name: {folder} is a folder but not a model (expected config.json and weights" in err
        assert ("it is empty" if content == "empty" else "it holds notes.txt, readme.md") in err
    assert not (tmp_path / "out").exists()


def test_folder_that_is_not_a_model_in_encode_eval_inspect(tmp_path, capsys):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("one\n")
    src = tmp_path / "in.txt"
    src.write_text("one\ntwo\n")
    for argv in (["encode", str(folder), str(src), "-o", str(tmp_path / "e.npy")],
                 ["eval", str(folder), "--output", str(tmp_path / "ev")],
                 ["inspect", str(folder), "a text"]):
        assert main(argv) == 2
        err = _one_error_line(capsys)
        assert f"model: {folder} is a folder but not a model (expected config.json and weights" in err
    assert not (tmp_path / "e.npy").exists() and not (tmp_path / "ev").exists()


def test_config_without_weights_and_st_folder_without_transformer_weights(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(EmbedkitError, match=r"plain has config.json but no weights \(expected model.safetensors"):
        model_ref.check_model(str(plain))
    st = tmp_path / "st"
    (st / "0_Transformer").mkdir(parents=True)
    (st / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"}]))
    (st / "0_Transformer" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(EmbedkitError, match=r"transformer in 0_Transformer/\) has config.json but no weights"):
        model_ref.check_model(str(st))
    (st / "0_Transformer" / "model.safetensors").write_bytes(b"x")
    assert model_ref.check_model(str(st)) == str(st)
    (st / "modules.json").write_text("[{")
    with pytest.raises(EmbedkitError, match=r"modules.json:1: not valid JSON"):
        model_ref.check_model(str(st))


def test_real_models_pass(minilm_path, tiny_model_path):
    assert model_ref.check_model(minilm_path) == minilm_path  # sentence-transformers layout, transformer at top
    assert model_ref.check_model(tiny_model_path) == tiny_model_path  # plain transformers folder
    assert model_ref.check_model("sentence-transformers/all-MiniLM-L6-v2") == minilm_path  # packaged


# ---------------------------------------------------------------------------------------------------------
# 9d: a model with its own code while trust_remote_code is off


def test_custom_code_is_one_line_in_every_command(tmp_path, capsys):
    model = _fake_model(tmp_path / "custom", auto_map={"AutoModel": "modeling_x.XModel"})
    recipe = _recipe(tmp_path, str(model))
    for command in ("check", "train"):
        assert main([command, str(recipe)]) == 2
        err = _one_error_line(capsys)
        assert f"model.name: {model} ships its own model code (auto_map in config.json: modeling_x.XModel)" in err
        assert "set model.trust_remote_code: true in the recipe" in err
    src = tmp_path / "in.txt"
    src.write_text("one\n")
    for argv in (["encode", str(model), str(src), "-o", str(tmp_path / "e.npy")],
                 ["eval", str(model), "--output", str(tmp_path / "ev")],
                 ["inspect", str(model), "a text"]):
        assert main(argv) == 2
        err = _one_error_line(capsys)
        assert f"model: {model} ships its own model code" in err and "trust_remote_code is off" in err
        assert "model.trust_remote_code: true" in err  # where it can be turned on
    # With trust_remote_code the check lets it through (loading is then up to the model's code).
    assert main(["check", str(_recipe(tmp_path, str(model), trust=True))]) == 0


def test_unknown_model_type_names_the_flag(tmp_path, capsys):
    model = _fake_model(tmp_path / "odd", model_type="embedkit-made-up-arch")
    assert main(["check", str(_recipe(tmp_path, str(model)))]) == 2
    err = _one_error_line(capsys)
    assert "model_type 'embedkit-made-up-arch' in config.json is not one transformers" in err
    assert "set model.trust_remote_code: true" in err
    assert "bert" in model_ref.known_model_types() and "xlm-roberta" in model_ref.known_model_types()


# ---------------------------------------------------------------------------------------------------------
# 13: a missing model path, in every command, before the heavy imports


def test_missing_model_fails_fast_without_heavy_imports(tmp_path):
    """Each command, in a fresh interpreter: one line naming the path, under 3 s, torch never imported."""
    missing = tmp_path / "no-such-model"
    recipe = _recipe(tmp_path, str(missing))
    src = tmp_path / "in.txt"
    src.write_text("one\n")
    commands = {
        "check": ["check", str(recipe)],
        "train": ["train", str(recipe)],
        "eval": ["eval", str(missing), "--output", str(tmp_path / "ev")],
        "encode": ["encode", str(missing), str(src), "-o", str(tmp_path / "e.npy")],
        "inspect": ["inspect", str(missing), "a text"],
    }
    code = (
        "import json, sys; from embedkit.cli import main\n"
        "rc = main(json.loads(sys.argv[1]))\n"
        f"print(json.dumps([rc, [m for m in {HEAVY!r} if m in sys.modules]]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name, argv in commands.items():
        proc, cpu = run_timed([sys.executable, "-c", code, json.dumps(argv)], capture_output=True, text=True,
                              timeout=60, env=env, cwd=tmp_path)
        rc, heavy = json.loads(proc.stdout.strip().splitlines()[-1])
        err = proc.stderr.strip()
        assert rc == 2 and "\n" not in err and err.startswith("embedkit: error:"), (name, err)
        assert f"{missing} does not exist (expected a model folder, a packaged model or a Hub id)" in err, name
        assert heavy == [], f"{name} imported {heavy} before refusing"
        assert cpu < 3, (name, cpu)  # CPU seconds: a loaded machine does not change them
    assert not (tmp_path / "out").exists() and not (tmp_path / "e.npy").exists()


def test_model_ref_is_torch_free_and_modeling_reuses_it():
    code = ("import sys, embedkit.model_ref, embedkit.recipe; "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr[-500:]
    from embedkit import modeling

    assert modeling.PACKAGED_MODELS is model_ref.PACKAGED_MODELS
    assert modeling.resolve_model_path is model_ref.resolve_model_path


def test_model_file_and_bad_name(tmp_path, capsys):
    file = tmp_path / "model.bin"
    file.write_bytes(b"x")
    with pytest.raises(EmbedkitError, match=r"^model: .*model.bin is a file; expected a model folder"):
        model_ref.check_model(str(file))
    with pytest.raises(EmbedkitError, match=r"^model: not a/valid name does not exist"):
        model_ref.check_model("not a/valid name")  # cannot be a Hub id: it is a missing path


# ---------------------------------------------------------------------------------------------------------
# 15: an unreachable Hub is one line within seconds; HF_HUB_OFFLINE uses the cache without asking


def test_hub_model_with_dead_hub_is_one_line_fast(dead_hub, tmp_path, capsys):
    recipe = _recipe(tmp_path, "someone/some-model")
    started = time.perf_counter()
    assert main(["check", str(recipe)]) == 2
    err = _one_error_line(capsys)
    assert time.perf_counter() - started < 10
    assert f"model.name: someone/some-model is not a local folder, and the Hugging Face Hub ({dead_hub}) is " \
           "unreachable (" in err
    assert "pass a local model folder" in err
    src = tmp_path / "in.txt"
    src.write_text("one\n")
    started = time.perf_counter()
    assert main(["encode", "someone/some-model", str(src), "-o", str(tmp_path / "e.npy")]) == 2
    err = _one_error_line(capsys)
    assert time.perf_counter() - started < 10
    assert f"model: someone/some-model is not a local folder, and the Hugging Face Hub ({dead_hub})" in err


def test_hub_data_with_dead_hub_is_one_line_fast(dead_hub, tmp_path):
    from embedkit.data.sources import read_hub
    from embedkit.errors import DataError
    from embedkit.evaluation import sts
    from embedkit.evaluation.core import load_stsb_dev
    from embedkit.evaluation.mteb_eval import require_hub_for_mteb
    from embedkit.recipe import DevSection

    started = time.perf_counter()
    with pytest.raises(EmbedkitError, match=rf"^data.train.hub someone/data: the Hugging Face Hub \({dead_hub}\) "
                                            r"is unreachable .*use a local file in data.train.path.*HF_HUB_OFFLINE=1"):
        read_hub("someone/data", "train", None, None)
    with pytest.raises(EmbedkitError, match=r"^the STS data: the Hugging Face Hub .* is unreachable .*--data-dir"):
        sts.load_hub()
    with pytest.raises(DataError, match=r"STS-B dev is not available: hub sentence-transformers/stsb: the Hugging "
                                        r"Face Hub .* is unreachable .*HF_HUB_OFFLINE=1"):
        load_stsb_dev(DevSection(path=None), None)
    with pytest.raises(EmbedkitError, match=r"^--mteb Banking77Classification: the Hugging Face Hub .* "
                                            r"unreachable .*run from a local --data-dir"):
        require_hub_for_mteb("STS12,Banking77Classification", None, tmp_path, "auto")
    require_hub_for_mteb("STS12,STSBenchmark", None, tmp_path, "auto")  # local tasks need no Hub
    assert time.perf_counter() - started < 10


def test_quickstart_hub_fallback_with_dead_hub_fails_in_validation(dead_hub, tmp_path, monkeypatch, capsys):
    """No local data folder: the quickstart falls back to the Hub, which must answer; check and train say so."""
    monkeypatch.chdir(tmp_path)  # no data/public or ../shared/data here
    monkeypatch.delenv("EMBEDKIT_DATA", raising=False)
    for command in ("check", "train"):
        started = time.perf_counter()
        assert main([command, "quickstart", f"output.dir={tmp_path / 'out'}"]) == 2
        err = _one_error_line(capsys)
        assert time.perf_counter() - started < 10
        assert f"quickstart.yaml:13: data.train.hub sentence-transformers/stsb: the Hugging Face Hub ({dead_hub}) " \
               "is unreachable" in err
        assert "use a local file in data.train.path" in err and "HF_HUB_OFFLINE=1" in err
    assert not (tmp_path / "out").exists()


def test_eval_mteb_with_dead_hub_refuses_before_the_model_loads(dead_hub, tiny_model_path, capsys, tmp_path):
    started = time.perf_counter()
    assert main(["eval", tiny_model_path, "--mteb", "Banking77Classification", "--output", str(tmp_path / "o")]) == 2
    err = _one_error_line(capsys)
    assert time.perf_counter() - started < 10
    assert "--mteb Banking77Classification: the Hugging Face Hub" in err and "unreachable" in err
    assert "STS12-16, STSBenchmark and SICK-R run from a local --data-dir" in err
    assert not (tmp_path / "o").exists()


def test_silent_hub_times_out_once_per_process(monkeypatch, fresh_probe, loopback_only, online):
    """A server that accepts and never answers: the probe gives up after its timeout, and is not repeated."""
    import huggingface_hub.utils

    monkeypatch.setattr(model_ref, "HUB_PROBE_TIMEOUT", 0.5)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)  # connections queue up; nobody answers
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        monkeypatch.setenv("HF_ENDPOINT", url)
        started = time.perf_counter()
        with pytest.raises(EmbedkitError, match=rf"^x: the Hugging Face Hub \({url}\) is unreachable"):
            model_ref.require_hub("x")
        assert time.perf_counter() - started < 3

        calls = []
        monkeypatch.setattr(huggingface_hub.utils, "get_session", lambda: calls.append(1))
        with pytest.raises(EmbedkitError, match="is unreachable"):
            model_ref.require_hub("y")
        assert calls == []  # remembered for this process


def test_offline_mode_uses_the_cache_and_never_probes(offline, tiny_model_path, tmp_path, capsys):
    with pytest.raises(EmbedkitError, match=r"someone/tiny is not a local folder and not in the local Hugging Face "
                                            r"cache \(HF_HUB_OFFLINE is set"):
        model_ref.check_model("someone/tiny")
    _cache_model(offline, "someone/tiny", Path(tiny_model_path))
    assert model_ref.check_model("someone/tiny") == "someone/tiny"
    model_ref.require_hub("data")  # offline: nothing is asked, the caller uses the cache

    custom = _fake_model(tmp_path / "custom-src", auto_map={"AutoModel": "m.X"})
    _cache_model(offline, "someone/custom", custom)
    with pytest.raises(EmbedkitError, match=r"someone/custom ships its own model code"):
        model_ref.check_model("someone/custom")


def test_offline_cached_model_really_loads(tiny_model_path, tmp_path):
    """End to end in a fresh process: HF_HUB_OFFLINE=1 and a Hub id in the cache → encode works."""
    hf_home = tmp_path / "hf"
    _cache_model(hf_home / "hub", "someone/tiny", Path(tiny_model_path))
    src = tmp_path / "in.txt"
    src.write_text("one\ntwo\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1",
           "HF_ENDPOINT": "http://127.0.0.1:9"}
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run([sys.executable, "-m", "embedkit.cli", "encode", "someone/tiny", str(src), "-o",
                           str(tmp_path / "e.npy")], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-1000:]
    assert np.load(tmp_path / "e.npy").shape[0] == 2


def test_cached_model_with_dead_hub_suggests_offline_mode(dead_hub, monkeypatch, tiny_model_path, tmp_path):
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    _cache_model(cache, "someone/tiny", Path(tiny_model_path))
    with pytest.raises(EmbedkitError, match=r"someone/tiny: the Hugging Face Hub .* is unreachable .*; set "
                                            r"HF_HUB_OFFLINE=1 to load the copy in the local Hugging Face cache"):
        model_ref.check_model("someone/tiny")


def test_hub_model_checked_against_a_live_hub(tmp_path, monkeypatch, fresh_probe, loopback_only, online):
    """With the (fake, loopback) Hub answering: a missing repo and a custom-code config are refused."""
    from hub_server import HubServer

    token = "hf_embedkitBadInputsToken0123456789"
    with HubServer(tmp_path / "hub", token) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", token)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
        import huggingface_hub.constants

        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
        # huggingface_hub read HF_ENDPOINT at import: its own background calls must go to the fake Hub too.
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            hub.url + "/{repo_id}/resolve/{revision}/{filename}")
        blob = hub.state.put_blob(json.dumps({"model_type": "bert", "auto_map": {"AutoModel": "m.X"}}).encode())
        sha = hub.state.new_commit({"config.json": blob}, None, "custom")
        hub.state.repos["tester/custom"] = {"private": False, "branches": {"main": sha}}

        with pytest.raises(EmbedkitError, match=r"tester/missing is neither a local folder nor a model on the Hub"):
            model_ref.check_model("tester/missing")
        with pytest.raises(EmbedkitError, match=r"tester/custom ships its own model code \(auto_map in config.json: "
                                                r"m.X\).*model.trust_remote_code: true"):
            model_ref.check_model("tester/custom")
        assert model_ref.check_model("tester/custom", trust_remote_code=True) == "tester/custom"


# ---------------------------------------------------------------------------------------------------------
# 9e and 10: encode's output


def test_encode_output_folder_refused_before_reading_or_loading(tmp_path, capsys):
    folder = tmp_path / "emb.npy"  # a folder, even one named like the file
    folder.mkdir()
    started = time.perf_counter()
    # Neither the input (missing) nor the model (missing) is looked at: the output is refused first.
    assert main(["encode", str(tmp_path / "no-model"), str(tmp_path / "missing.txt"), "-o", str(folder)]) == 2
    err = _one_error_line(capsys)
    assert time.perf_counter() - started < 3
    assert f"--output {folder}: is a folder; expected a file name ending in .npy" in err
    assert list(folder.iterdir()) == []

    parent_file = tmp_path / "file"
    parent_file.write_text("x")
    assert main(["encode", str(tmp_path / "no-model"), str(tmp_path / "missing.txt"), "-o",
                 str(parent_file / "e.npy")]) == 2
    assert f"{parent_file} is a file, not a folder" in _one_error_line(capsys)


def test_encode_refuses_to_overwrite_without_flag(tiny_model_path, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("one\ntwo\nthree\n")
    out = tmp_path / "e.npy"
    out.write_bytes(b"precious")
    assert main(["encode", tiny_model_path, str(tmp_path / "missing.txt"), "-o", str(out)]) == 2
    err = _one_error_line(capsys)
    assert f"--output {out}: already exists; pass --overwrite to replace it" in err
    assert out.read_bytes() == b"precious"
    assert main(["encode", tiny_model_path, str(src), "-o", str(out), "--overwrite"]) == 0
    assert np.load(out).shape[0] == 3
    assert "replace OUTPUT if it exists" in _encode_help()


def _encode_help() -> str:
    from embedkit.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices["encode"].format_help()


# ---------------------------------------------------------------------------------------------------------
# 11a: inspect with an empty text


@pytest.mark.parametrize(("texts", "expected"), [
    ([""], "TEXT is empty; expected a text to inspect"),
    (["   "], "TEXT is whitespace only; expected a text to inspect"),
    (["a cat", " \t"], "TEXT 2 of 2 is whitespace only"),
])
def test_inspect_empty_text_is_refused(tiny_model_path, capsys, texts, expected):
    started = time.perf_counter()
    assert main(["inspect", tiny_model_path, *texts]) == 2
    err = _one_error_line(capsys)
    assert expected in err
    assert time.perf_counter() - started < 3
