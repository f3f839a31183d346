"""MTEB air-gapped: mteb.evaluate on local STS task classes, equal to the STS suite; results in mteb's layout
under an explicit cache; weights-hash revisions so a retrained model never shows a stale score; submission
files; unknown task names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_eval_data import make_sts_dir

import embedkit
from embedkit.cli import main
from embedkit.errors import EmbedkitError


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root, _ = make_sts_dir(tmp_path_factory.mktemp("stsdata"), n_extra=20)
    return root


@pytest.fixture(scope="module")
def mteb_mod(tmp_path_factory):
    from embedkit.evaluation.mteb_eval import import_mteb

    return import_mteb(tmp_path_factory.mktemp("mteb-default-cache"))


def test_local_tasks_subclass_mteb_sts_and_read_local_files(mteb_mod, data_root):
    from mteb.abstasks.sts import AbsTaskSTS

    from embedkit.evaluation.mteb_tasks import local_task

    task = local_task("SICK-R", data_root / "sts")
    assert isinstance(task, AbsTaskSTS) and isinstance(task, type(mteb_mod.get_task("SICK-R")))
    assert task.metadata == mteb_mod.get_task("SICK-R").metadata  # same name, dataset revision, main score
    task.load_data()
    assert task.dataset["test"].column_names == ["sentence1", "sentence2", "score"]
    assert len(task.dataset["test"]) == 2 + 2 + 24  # mteb's SICK-R: train + trial + test


def test_mteb_equals_suite_writes_layout_and_never_reuses_a_stale_score(tiny_model_path, data_root, tmp_path,
                                                                       mteb_mod):
    from sentence_transformers import SentenceTransformer

    model_dir = tmp_path / "model"
    SentenceTransformer(tiny_model_path, device="cpu").save_pretrained(str(model_dir))
    cache = tmp_path / "cache"
    suite = embedkit.evaluate(str(model_dir), data_dir=data_root)
    run = embedkit.evaluate(str(model_dir), suite="mteb", tasks="STSBenchmark,STS12,SICK-R-test", data_dir=data_root,
                            cache_dir=cache, batch_size=8)
    for name, task in (("STSBenchmark", "STSBenchmark"), ("STS12", "STS12"), ("SICK-R-test", "SICK-R")):
        assert 100 * run["tasks"][name]["main_score"] == pytest.approx(suite["tasks"][task]["spearman"], abs=1e-3)
        assert run["tasks"][name]["source"] == "local"
    first_rev = run["revision"]
    assert first_rev == suite["model"]["weights_sha256"] and run["model_name"] == "local/model"
    rev_dir = cache / "results" / "local__model" / first_rev
    assert {p.name for p in rev_dir.glob("*.json")} >= {"STSBenchmark.json", "STS12.json", "model_meta.json"}
    saved = json.loads((rev_dir / "STSBenchmark.json").read_text())
    assert saved["task_name"] == "STSBenchmark"
    assert saved["scores"]["test"][0]["main_score"] == pytest.approx(run["tasks"]["STSBenchmark"]["main_score"])

    # "retrain": different weights saved under the same folder name, same cache, reuse allowed
    retrained = SentenceTransformer(str(model_dir), device="cpu")
    import torch

    with torch.no_grad():
        for p in retrained.parameters():
            p.add_(0.05 * torch.randn_like(p))
    retrained.save_pretrained(str(model_dir))
    again = embedkit.evaluate(str(model_dir), suite="mteb", tasks="STSBenchmark", data_dir=data_root,
                              cache_dir=cache, reuse_cache=True)
    assert again["revision"] != first_rev
    fresh = embedkit.evaluate(str(model_dir), data_dir=data_root)["tasks"]["STSBenchmark"]["spearman"]
    assert 100 * again["tasks"]["STSBenchmark"]["main_score"] == pytest.approx(fresh, abs=1e-3)
    assert fresh != pytest.approx(suite["tasks"]["STSBenchmark"]["spearman"], abs=1e-3)


def test_cli_submission_files(tiny_model_path, data_root, tmp_path, capsys):
    out, sub = tmp_path / "out", tmp_path / "submission"
    rc = main(["eval", tiny_model_path, "--data-dir", str(data_root), "--output", str(out), "--mteb", "STSBenchmark",
               "--submission", str(sub), "--model-name", "someone/tiny-test", "--license", "mit",
               "--training-code", "https://example.org/code"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert "sts" not in results and -1 <= results["mteb"]["STSBenchmark"]["main_score"] <= 1  # mteb scale
    rev = results["mteb_run"]["revision"]
    meta = json.loads((sub / "results" / "someone__tiny-test" / rev / "model_meta.json").read_text())
    assert meta["name"] == "someone/tiny-test" and meta["revision"] == rev and meta["license"] == "mit"
    assert meta["embed_dim"] == 32 and meta["n_parameters"] > 0 and meta["languages"] == ["eng-Latn"]
    assert meta["public_training_code"] == "https://example.org/code" and meta["open_weights"] is True
    assert (sub / "results" / "someone__tiny-test" / rev / "STSBenchmark.json").is_file()
    assert "ModelMeta(" in (sub / "model_meta.py").read_text()
    assert "someone/tiny-test" in (sub / "README.md").read_text()
    assert (out / "mteb" / "results" / "someone__tiny-test" / rev / "STSBenchmark.json").is_file()
    # an existing non-empty submission folder is refused, before any work
    assert main(["eval", tiny_model_path, "--data-dir", str(data_root), "--output", str(out), "--mteb",
                 "STSBenchmark", "--submission", str(sub)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_unknown_mteb_task_and_benchmark(tiny_model_path, data_root, mteb_mod):
    from embedkit.evaluation.mteb_eval import resolve_tasks

    with pytest.raises(EmbedkitError, match=r"unknown MTEB task 'STSBenchmarkk'.*Did you mean: 'STSBenchmark'"):
        resolve_tasks(["STSBenchmarkk"], None, data_root)
    with pytest.raises(EmbedkitError, match="unknown MTEB benchmark"):
        resolve_tasks([], "No Such Benchmark", data_root)
    with pytest.raises(EmbedkitError, match="has no local data"):
        resolve_tasks(["Banking77Classification"], None, data_root, source="local")


def test_import_mteb_never_creates_home_cache(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}
    env.pop("MTEB_CACHE", None)
    code = ("from embedkit.evaluation.mteb_eval import import_mteb; import sys; "
            "m = import_mteb(sys.argv[1]); m.ResultCache(); print(m.evaluate.__module__)")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "explicit")], env=env, check=True,
                   capture_output=True, timeout=300)
    assert not (home / ".cache" / "mteb").exists()
    assert (tmp_path / "explicit").is_dir()
    assert Path(tmp_path / "explicit").exists()


def test_weights_hash_is_reused_only_while_the_weights_are_unchanged(tiny_model_path):
    """The hash is remembered per model (eval asks for it once per suite), but an in-place update, a
    load_state_dict or a swapped tensor must give a new one."""
    import torch
    from sentence_transformers import SentenceTransformer

    from embedkit.modeling import tensors_digest, weights_hash

    model = SentenceTransformer(tiny_model_path, device="cpu")
    first = weights_hash(model)
    assert first == weights_hash(model) == tensors_digest(model.state_dict())
    param = next(model.parameters())
    with torch.no_grad():
        param[0, 0] += 1.0  # in place, same storage
    second = weights_hash(model)
    assert second != first and second == tensors_digest(model.state_dict())
    with torch.no_grad():
        param[0, 0] -= 1.0
    assert weights_hash(model) == tensors_digest(model.state_dict())
    other = SentenceTransformer(tiny_model_path, device="cpu")
    with torch.no_grad():
        next(other.parameters()).mul_(2.0)
    model.load_state_dict(other.state_dict())
    assert weights_hash(model) == tensors_digest(other.state_dict()) != first


# ---------------------------------------------------------------------------------------------------------
# The model description (ModelMeta)

META_FIELDS = ("use_instructions", "release_date", "license", "n_parameters", "embed_dim")


@pytest.mark.slow  # the real all-MiniLM-L6-v2
def test_packaged_minilm_gets_mtebs_registry_entry(minilm_path, data_root, tmp_path, mteb_mod):
    """`embedkit eval <packaged MiniLM> --mteb ... --submission`: the model_meta.json it writes is mteb's own
    registry entry (compared with mteb.get_model_meta now, not with copied values), results sit under the
    registered revision, mteb's results API reads the folder, and its README says to run mteb submit-results."""
    registered = mteb_mod.get_model_meta("sentence-transformers/all-MiniLM-L6-v2")
    sub = tmp_path / "submission"
    assert main(["eval", minilm_path, "--data-dir", str(data_root), "--output", str(tmp_path / "out"),
                 "--mteb", "STSBenchmark", "--submission", str(sub)]) == 0
    folder = sub / "results" / "sentence-transformers__all-MiniLM-L6-v2" / registered.revision
    written = json.loads((folder / "model_meta.json").read_text())
    expected = registered.to_dict()
    assert {k: written[k] for k in META_FIELDS} == {k: expected[k] for k in META_FIELDS}
    assert written["use_instructions"] is False and written["training_datasets"] == expected["training_datasets"]
    loaded = mteb_mod.ResultCache(cache_path=sub).load_results(
        models=["sentence-transformers/all-MiniLM-L6-v2"], tasks=["STSBenchmark"], include_remote=False)
    (model_result,) = loaded.model_results
    score = json.loads((tmp_path / "out" / "results.json").read_text())["mteb"]["STSBenchmark"]["main_score"]
    assert model_result.task_results[0].get_score() == pytest.approx(score, abs=1e-6)  # mteb rounds on load
    readme = (sub / "README.md").read_text()
    assert f"mteb submit-results --output-folder {sub} --models sentence-transformers/all-MiniLM-L6-v2" in readme
    assert "is in mteb's model registry" in readme and "two pull requests" not in readme


def test_a_registered_name_on_other_weights_is_refused(tiny_model_path, data_root, mteb_mod):
    from embedkit.evaluation.mteb_eval import run_mteb

    with pytest.raises(EmbedkitError, match=r"mteb registers that model, and this model .* is not known to be its "
                                            r"weights"):
        run_mteb(tiny_model_path, "STSBenchmark", data_dir=data_root,
                 model_name="sentence-transformers/all-MiniLM-L6-v2")


def test_trained_model_meta_is_derived_from_the_model_and_its_recipe(tiny_model_path, tmp_path, mteb_mod):
    """An unregistered model: mteb's from_sentence_transformer_model, completed from the training folder."""
    from sentence_transformers import SentenceTransformer

    from embedkit.evaluation.mteb_eval import build_model_meta

    folder = tmp_path / "trained"
    model = SentenceTransformer(tiny_model_path, device="cpu")
    model.save_pretrained(str(folder))
    assert model.prompts == {"query": "", "document": ""}  # sentence-transformers' default: not instructions
    base = "sentence-transformers/all-MiniLM-L6-v2"
    recipe = {"model": {"name": base}, "output": {"license": None},
              "data": {"train": {"path": "{data_dir}/sts/stsbenchmark/sts-train.csv"}}}
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (folder / "results.json").write_text(json.dumps({"finished": "2026-11-30T18:02:11+00:00"}))
    meta = build_model_meta(model, "alice/tiny", None, path=str(folder), spec=str(folder), weights_sha256="f" * 64)
    registered_base = mteb_mod.get_model_meta(base)
    assert meta.name == "alice/tiny" and meta.revision == "f" * 64
    assert meta.adapted_from == base
    assert meta.training_datasets == {"STSBenchmark"} | set(registered_base.training_datasets)
    assert meta.license == registered_base.license  # recipe says null: the base model's
    assert meta.release_date == "2026-11-30"  # the run's day, from results.json
    assert meta.use_instructions is False
    assert meta.n_parameters == sum(p.numel() for p in model.parameters())
    assert (meta.embed_dim, meta.max_tokens) == (32, model.max_seq_length)
    assert meta.reference == "https://huggingface.co/alice/tiny" and meta.open_weights is True

    # A run that measured its overlap (results.json "overlap") is described by the measurement: STS-B train holds
    # STS12-16 test pairs, so those tasks are not zero-shot for it; a clean set (MR) is not listed.
    (folder / "results.json").write_text(json.dumps({"finished": "2026-11-30T18:02:11+00:00", "overlap": {
        **{t: {"flagged": True, "role": "test"} for t in ("STS12", "STS13", "STS14", "STS15", "STS16")},
        "STSBenchmark-dev": {"flagged": False, "role": "selection"}, "MR": {"flagged": False, "role": "test"}}}))
    measured = build_model_meta(model, "alice/tiny", None, path=str(folder), spec=str(folder), weights_sha256="f" * 64)
    assert measured.training_datasets == ({"STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark"}
                                          | set(registered_base.training_datasets))

    model.prompts = {"query": "query: ", "document": ""}
    recipe["output"]["license"] = "mit"
    prompted = build_model_meta(model, "local/tiny", None, recipe=recipe, weights_sha256="f" * 64)
    assert prompted.use_instructions is True and prompted.license == "mit" and prompted.reference is None
