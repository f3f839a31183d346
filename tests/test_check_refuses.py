"""``embedkit check`` refuses everything ``embedkit train`` refuses before its first step, from the shared validation:
one line naming the recipe file, line and key (or the data file and line), exit status 2, without loading any
model weights (the loaders are patched to fail) and without writing anything.

Each case below was passed by ``check`` and refused by ``train`` only after the model had loaded (a LoRA target
typo and a prompt that leaves no room for the text were not refused at all). The Hub-dataset checks run against a
dead loopback port, the fake Hub of tests/hub_server.py, and HF_HUB_OFFLINE with a cache of the test's own.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import guard_loopback

from embedkit import model_ref
from embedkit.cli import main
from embedkit.errors import RecipeError

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


# ---------------------------------------------------------------------------------------------------------
# Helpers and fixtures


def _sentences(folder: Path) -> Path:
    path = folder / "sentences.txt"
    path.write_text("".join(f"the {WORDS[i % 12]} of {WORDS[(i * 7) % 12]} is number {i}\n" for i in range(64)),
                    encoding="utf-8")
    return path


def _pairs(folder: Path, n: int) -> Path:
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps({"anchor": f"question {i}", "positive": f"answer {i}"}) + "\n"
                            for i in range(n)), encoding="utf-8")
    return path


def _rerank(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "dev.csv"
    path.write_text("qtext,label,atext\nq1,1,a1\nq1,0,a2\nq2,1,a3\nq2,0,a4\n", encoding="utf-8")
    return path


def _beir(folder: Path, qrels: str) -> Path:
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "text": f"document {i}"}) + "\n"
                                                 for i in range(4)), encoding="utf-8")
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": f"query {i}"}) + "\n"
                                                  for i in range(2)), encoding="utf-8")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels, encoding="utf-8")
    return folder


def write_recipe(folder: Path, model_name: str, /, **sections: Any) -> Path:
    """A small valid recipe (block-style YAML: every key on its own line); ``sections`` update its sections."""
    recipe: dict[str, Any] = {
        "model": {"name": model_name, "pooling": "mean", "max_seq_length": 16},
        "data": {"train": {"path": str(_sentences(folder))}, "dev": None},
        "method": {"name": "simcse-unsup"},
        "training": {"batch_size": 8, "max_steps": 2},
        "eval": {"before": False, "suite": "none"},
        "output": {"dir": str(folder / "out")},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **value}
        else:
            recipe[key] = value
    path = folder / "r.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture()
def no_weights(monkeypatch):
    """Loading a model's weights fails the test: sentence-transformers, transformers' from_pretrained and
    embedkit's model builder all raise."""
    import sentence_transformers
    import transformers

    import embedkit.modeling

    def loaded(*args, **kwargs):
        raise AssertionError("a model's weights were loaded")

    monkeypatch.setattr(sentence_transformers.SentenceTransformer, "__init__", loaded)
    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(loaded))
    monkeypatch.setattr(embedkit.modeling, "build_model", loaded)


@pytest.fixture()
def fresh_probe(monkeypatch):
    monkeypatch.setattr(model_ref, "_PROBES", {})
    monkeypatch.setattr(model_ref, "_HUB_CHECKED", set())


@pytest.fixture()
def online(monkeypatch, fresh_probe):
    import huggingface_hub.constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return guard_loopback(monkeypatch)


@pytest.fixture()
def dead_hub(monkeypatch, online) -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", url)
    return url


def _refused(capsys, argv: list[str]) -> str:
    """Run the command line; it must exit 2 with one ``embedkit: error:`` line, which is returned."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("embedkit: error: ") and "\n" not in err, err
    return err.removeprefix("embedkit: error: ")


# ---------------------------------------------------------------------------------------------------------
# Every refusal of train's setup, now at validation: check and train give the same line, before any weights load


def _lora_typo(f: Path, m: str) -> Path:
    return write_recipe(f, m, model={"lora": {"r": 4, "target_modules": ["query", "vlaue"]}})


def _lora_norm(f: Path, m: str) -> Path:
    return write_recipe(f, m, model={"lora": {"r": 4, "target_modules": ["query", "LayerNorm"]}})


def _long_prompt(f: Path, m: str) -> Path:
    prompt = "represent this sentence for searching relevant passages about anything at all: "
    return write_recipe(f, m, model={"prompts": {"query": prompt}, "prompt_columns": {"text": "query"}})


def _beir_dev(f: Path, m: str) -> Path:
    folder = _beir(f / "beir", "q0\td0\t1\nq1\td9\t1\n")
    return write_recipe(f, m, data={"train": {"path": str(_sentences(f))},
                                    "dev": {"kind": "retrieval", "path": str(folder), "split": "test"}})


def _beir_eval(f: Path, m: str) -> Path:
    folder = _beir(f / "beir", "q0\td0\t1\nq9\td1\t1\n")
    return write_recipe(f, m, eval={"retrieval": [{"path": str(folder), "split": "test"}]})


def _small_source(f: Path, m: str) -> Path:
    return write_recipe(f, m, data={"train": [
        {"name": "text", "path": str(_sentences(f)), "method": {"name": "simcse-unsup"}},
        {"name": "qa", "path": str(_pairs(f, 4)), "method": {"name": "contrastive"}}], "dev": None},
        method={"name": "multitask"})


def _same_dev_names(f: Path, m: str) -> Path:
    a, b = _rerank(f / "a" / "trecqa"), _rerank(f / "b" / "trecqa")
    return write_recipe(f, m, data={"train": {"path": str(_sentences(f))}, "dev": [
        {"kind": "rerank", "path": str(a)}, {"kind": "rerank", "path": str(b)}]})


def _matryoshka(f: Path, m: str) -> Path:
    return write_recipe(f, m, training={"matryoshka_dims": [64, 16]})


def _save_steps(f: Path, m: str) -> Path:
    return write_recipe(f, m, data={"train": {"path": str(_sentences(f))},
                                    "dev": {"kind": "rerank", "path": str(_rerank(f / "trecqa"))}},
                        training={"eval_steps": 2, "save_steps": 3})


def _remine_workers(f: Path, m: str) -> Path:
    return write_recipe(f, m, method={"name": "debcse", "remine_every": 10}, training={"dataloader_workers": 1})


def _one_sentence(f: Path, m: str) -> Path:
    same = f / "same.txt"
    same.write_text("the same sentence\n" * 20, encoding="utf-8")
    return write_recipe(f, m, method={"name": "debcse"}, data={"train": {"path": str(same)}, "dev": None})


def _reference(f: Path, m: str) -> Path:
    return write_recipe(f, m, method={"name": "debcse", "reference": str(f / "no-such-model")})


def _output_holds_a_run(f: Path, m: str) -> Path:
    out = f / "out"
    out.mkdir()
    (out / ".embedkit-run.json").write_text(json.dumps({"entries": [".embedkit-run.json", "results.json"]}))
    (out / "results.json").write_text("{}")
    return write_recipe(f, m)


CASES = {
    "lora-target-typo": (_lora_typo, r"model\.lora\.target_modules\.1: 'vlaue' matches no module of the model \(did "
                                     r"you mean 'value'\?\)"),
    "lora-target-norm": (_lora_norm, r"model\.lora\.target_modules\.1: 'LayerNorm' names layers LoRA cannot adapt"),
    "prompt-too-long": (_long_prompt, r"model\.prompts\.query: the prompt takes 14 tokens \(special tokens included\) "
                                      r"of model\.max_seq_length 16, leaving 2 for the text; expected at least 8"),
    "beir-dev-qrels": (_beir_dev, r"data\.dev\.path: .*qrels/test\.tsv:3: corpus-id 'd9' is not in corpus\.jsonl"),
    "beir-eval-qrels": (_beir_eval, r"eval\.retrieval\.0\.path: .*qrels/test\.tsv:3: query-id 'q9' is not in "
                                    r"queries\.jsonl"),
    "multitask-small-source": (_small_source, r"data\.train\.1\.path: source 'qa' has 4 rows, fewer than one global "
                                              r"batch \(8\)"),
    "dev-same-name": (_same_dev_names, r"data\.dev\.1\.path: this dev set is named 'trecqa-dev' like data\.dev\.0"),
    "matryoshka-too-wide": (_matryoshka, r"training\.matryoshka_dims: 64 is larger than the model's embedding "
                                         r"dimension 32"),
    "save-steps": (_save_steps, r"training\.save_steps: 3 is not a multiple of training\.eval_steps \(2\)"),
    "debcse-remine-workers": (_remine_workers, r"method\.remine_every: re-mining every N steps needs "
                                               r"training\.dataloader_workers: 0"),
    "debcse-one-sentence": (_one_sentence, r"data\.train\.path: DebCSE mines .* the training set has 1, it needs at "
                                           r"least 2"),
    "debcse-reference": (_reference, r"method\.reference: .*no-such-model does not exist"),
}


@pytest.mark.parametrize("command", ["check", "train"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_check_refuses_what_train_refuses_without_loading_weights(case, command, tmp_path, tiny_model_path,
                                                                  no_weights, capsys):
    build, expected = CASES[case]
    recipe = build(tmp_path, tiny_model_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    err = _refused(capsys, [command, str(recipe)])
    assert re.match(rf"{re.escape(str(recipe))}:\d+: {expected}", err), err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


def test_output_folder_holding_a_run_is_refused_by_check_as_by_train(tmp_path, tiny_model_path, no_weights, capsys):
    recipe = _output_holds_a_run(tmp_path, tiny_model_path)
    out = tmp_path / "out"
    for command in ("check", "train"):
        assert _refused(capsys, [command, str(recipe)]) == (
            f"output.dir {out} already holds files; use --resume to continue that run, --overwrite to replace it, "
            "or choose another output.dir")
    # check takes train's flags and refuses what train refuses with them
    # a finished run (results.json) without checkpoints, as output.keep_checkpoints: none leaves it: --resume
    # leaves it as it is, so check --resume says valid
    assert main(["check", str(recipe), "--resume"]) == 0
    assert _refused(capsys, ["check", str(recipe), "--resume", "--overwrite"]).startswith("--resume and --overwrite")
    (out / "notes.md").write_text("mine")
    assert "holds files that embedkit did not write (notes.md)" in _refused(capsys, ["check", str(recipe),
                                                                                    "--overwrite"])
    (out / "notes.md").unlink()
    assert main(["check", str(recipe), "--overwrite"]) == 0  # an embedkit run: --overwrite may replace it
    assert sorted(p.name for p in out.iterdir()) == [".embedkit-run.json", "results.json"]


def test_a_good_recipe_with_every_model_file_check_is_valid_without_weights(tmp_path, tiny_model_path, no_weights,
                                                                            capsys):
    recipe = write_recipe(tmp_path, tiny_model_path, model={
        "lora": {"r": 4, "target_modules": ["query", "value", "attention.output.dense"]},
        "prompts": {"query": "query: "}, "prompt_columns": {"text": "query"}},
        training={"matryoshka_dims": [32, 16]})
    assert main(["check", str(recipe)]) == 0, capsys.readouterr().err
    assert "valid" in capsys.readouterr().out


def test_bf16_on_a_gpu_without_it_is_refused_at_validation(tmp_path, tiny_model_path, monkeypatch, no_weights):
    import torch

    from embedkit.validate import load_recipe

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    with pytest.raises(RecipeError, match=r"r\.yaml:\d+: training\.precision: bf16 needs a GPU with bf16 .*Tesla T4"):
        load_recipe(write_recipe(tmp_path, tiny_model_path, training={"precision": "bf16"}))


def test_bf16_trains_on_a_cpu(tmp_path, tiny_model_path):
    """transformers refused bf16 in one process without a GPU (its check is for a bf16 GPU) unless told it runs
    on the CPU; the run now says so."""
    import torch

    from embedkit.training.run import train

    if torch.cuda.is_available():
        pytest.skip("a CPU test")
    result = train(str(write_recipe(tmp_path, tiny_model_path, training={"precision": "bf16", "max_steps": 1})))
    assert result.results["train"]["precision"] == "bf16" and result.results["train"]["global_step"] == 1


def test_eval_mteb_unknown_task_is_refused_at_validation(tmp_path, tiny_model_path, no_weights, capsys):
    recipe = write_recipe(tmp_path, tiny_model_path, eval={"mteb": ["NoSuchTask"]})
    err = _refused(capsys, ["check", str(recipe)])
    assert re.match(rf"{re.escape(str(recipe))}:\d+: eval\.mteb: unknown MTEB task 'NoSuchTask'", err), err


# ---------------------------------------------------------------------------------------------------------
# Hub datasets: probed at validation, with the file:line of their key


def test_stsb_dev_from_a_dead_hub_is_refused_at_check(dead_hub, tmp_path, tiny_model_path, no_weights, capsys):
    recipe = write_recipe(tmp_path, tiny_model_path, data={"train": {"path": str(_sentences(tmp_path))},
                                                           "dev": {"path": None}})
    for command in ("check", "train"):
        err = _refused(capsys, [command, str(recipe)])
        assert re.match(rf"{re.escape(str(recipe))}:\d+: data\.dev\.hub sentence-transformers/stsb: the Hugging "
                        rf"Face Hub \({re.escape(dead_hub)}\) is unreachable", err), err
        assert "--data-dir" in err and "data.dev: null" in err and "HF_HUB_OFFLINE=1" in err


def test_hub_dataset_is_asked_for_at_check(tmp_path, tiny_model_path, monkeypatch, online, no_weights, capsys):
    """Against the fake Hub: a dataset the Hub does not have is refused by check (file:line of data.train.hub),
    one it has passes; each is one info request."""
    import huggingface_hub.constants
    from hub_server import HubServer

    token = "hf_embedkitCheckToken0123456789abcdef"
    with HubServer(tmp_path / "hub", token) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", token)
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
        hub.state.datasets["tester/pairs"] = {"train.jsonl": hub.state.put_blob(b'{"text": "a"}\n')}
        missing = write_recipe(tmp_path, tiny_model_path, data={"train": {"hub": "tester/paris"}, "dev": None})
        err = _refused(capsys, ["check", str(missing)])
        assert re.match(rf"{re.escape(str(missing))}:\d+: data\.train\.hub tester/paris: no such dataset on the Hub "
                        rf"\({re.escape(hub.url)}\)", err), err
        good = write_recipe(tmp_path, tiny_model_path, data={"train": {"hub": "tester/pairs"}, "dev": None})
        assert main(["check", str(good)]) == 0, capsys.readouterr().err
        asked = [path for method, path, _ in hub.state.requests if path.startswith("/api/datasets/")]
        assert asked == ["/api/datasets/tester/paris", "/api/datasets/tester/pairs"]


@pytest.fixture()
def offline(monkeypatch, fresh_probe, tmp_path):
    """HF_HUB_OFFLINE=1, a datasets cache of the test's own; any Hub request fails the test."""
    import huggingface_hub.constants
    import huggingface_hub.utils

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cache = tmp_path / "datasets-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    import datasets.config  # it read its cache folder at import

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)

    def no_session():
        raise AssertionError("offline mode must not ask the Hub")

    monkeypatch.setattr(huggingface_hub.utils, "get_session", no_session)
    return cache


def test_offline_hub_dataset_must_be_in_the_datasets_cache(offline, tmp_path, tiny_model_path, no_weights, capsys):
    """HF_HUB_OFFLINE: a Hub dataset that the datasets cache does not hold is refused by check (training failed
    after the model load); one laid out as datasets caches it passes, and datasets itself finds it there."""
    from datasets.load import CachedDatasetModuleFactory

    recipe = write_recipe(tmp_path, tiny_model_path, data={"train": {"hub": "Someone/MyData"}, "dev": None})
    err = _refused(capsys, ["check", str(recipe)])
    assert re.match(rf"{re.escape(str(recipe))}:\d+: data\.train\.hub Someone/MyData: not in the local datasets "
                    rf"cache \({re.escape(str(offline))}\), and HF_HUB_OFFLINE is set", err), err
    with pytest.raises(FileNotFoundError):
        CachedDatasetModuleFactory("Someone/MyData").get_module()

    (offline / "Someone___my_data" / "default" / "0.0.0" / "0123abcd").mkdir(parents=True)
    assert main(["check", str(recipe)]) == 0, capsys.readouterr().err
    assert CachedDatasetModuleFactory("Someone/MyData").get_module().builder_kwargs["repo_id"] == "Someone/MyData"


def test_packaged_dataset_builders_are_not_hub_datasets(offline):
    model_ref.check_hub_dataset("json", "data.train.hub json", "unused")  # datasets' own builder: nothing asked


# ---------------------------------------------------------------------------------------------------------
# What the model's files say equals what the loaded model says


def test_model_files_agree_with_the_loaded_model(tiny_model_path, minilm_path, tmp_path):
    from sentence_transformers import SentenceTransformer

    from embedkit import model_files

    folder = model_files.transformer_folder(tiny_model_path)
    model = SentenceTransformer(tiny_model_path, device="cpu")
    for prompt in ("query: ", "represent this sentence for searching relevant passages: "):
        assert model_files.prompt_tokens(folder, prompt) == len(model.tokenizer(prompt)["input_ids"])
    # The safetensors headers and the meta-device module tree name the same adaptable layers.
    from_header = model_files._checkpoint_modules(folder)
    from_meta = model_files._meta_modules(folder)
    assert from_header is not None and from_meta is not None
    assert {n for n, ok in from_header.items() if ok} == {n for n, ok in from_meta.items() if ok}
    assert model_files.lora_target_problems(from_meta, ["vlaue"])[0][1].startswith("'vlaue' matches no module")
    # Embedding widths: the packaged sentence-transformers folder as saved (pooling kept) and rebuilt.
    assert model_files.embedding_width(minilm_path, None) == 384
    assert model_files.embedding_width("sentence-transformers/all-MiniLM-L6-v2", "cls") == 384
    assert model_files.embedding_width(tiny_model_path, "mean") == 32
    assert model_files.transformer_folder(minilm_path) == Path(minilm_path)


def test_a_folder_read_at_validation_is_not_parsed_again_by_training(tmp_path, tiny_model_path, monkeypatch):
    """Validation reads a BEIR folder in full (its qrels against its corpus); the run's own read of the unchanged
    folder reuses it, and a changed file is read again."""
    from embedkit.data import ranking
    from embedkit.evaluation.core import load_dev
    from embedkit.validate import load_recipe

    folder = _beir(tmp_path / "beir", "q0\td0\t1\n")
    recipe = write_recipe(tmp_path, tiny_model_path, data={"train": {"path": str(_sentences(tmp_path))},
                                                           "dev": {"kind": "retrieval", "path": str(folder),
                                                                   "split": "test"}})
    calls = []
    real = ranking._read_beir
    monkeypatch.setattr(ranking, "_read_beir", lambda *a: calls.append(a) or real(*a))
    dev = load_dev(load_recipe(recipe).data.dev)
    assert len(calls) == 1 and dev.name == "beir-test" and dev.data.qrels == {"q0": {"d0": 1}}
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td2\t1\n", encoding="utf-8")
    assert load_dev(load_recipe(recipe).data.dev).data.qrels == {"q1": {"d2": 1}} and len(calls) == 2


def test_fp16_without_a_cuda_gpu_is_refused(tmp_path, tiny_model_path):
    """accelerate runs ``fp16`` on a CPU as plain fp32: an option not honoured is refused, never ignored."""
    import torch

    from embedkit.validate import load_recipe

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: fp16 is honoured there")
    recipe = tmp_path / "r.yaml"
    data = tmp_path / "s.txt"
    data.write_text("".join(f"sentence {i}\n" for i in range(8)), encoding="utf-8")
    recipe.write_text(f"model: {{name: {tiny_model_path}}}\ndata: {{train: {{path: {data}}}, dev: null}}\n"
                      "method: {name: simcse-unsup}\ntraining: {precision: fp16}\n"
                      f"output: {{dir: {tmp_path / 'o'}}}\n")
    with pytest.raises(RecipeError, match=r"r.yaml:4: training.precision: fp16 mixed precision needs a CUDA GPU"):
        load_recipe(str(recipe))
