"""``embedkit push`` end to end against a Hub-compatible server on loopback (tests/hub_server.py).

A tiny model is really trained (4 steps), scored on two small pair files with the STS scorer, pushed,
downloaded back with ``snapshot_download`` and loaded with ``SentenceTransformer``. Only loopback connections
are allowed while these tests run.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import guard_loopback
from hub_server import HubServer

TOKEN = "hf_embedkitTestToken0123456789abcdefXYZ"
REPO = "tester/tiny-simcse"
SENTENCES = ["a cat sits on the mat", "the stock market fell today", "a kitten rests on a rug"]


# ---------------------------------------------------------------------------------------------------------
# Fixtures


def _pair_file(path: Path, seed: int) -> Path:
    """An STS-B-format file (tab-separated, score in column 5) of word-overlap pairs with graded gold scores."""
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(40):
        a = [words[j] for j in rng.choice(12, size=6, replace=False)]
        keep = i % 6
        b = a[:keep] + [w for w in words if w not in a][: 6 - keep]
        lines.append("\t".join(["toy", "test", "2024", str(i), f"{keep * 5 / 6:.3f}", " ".join(a), " ".join(b)]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained_output(tmp_path_factory, tiny_model_path) -> Path:
    """A real training output folder (4 SimCSE steps on a tiny BERT), with STS-style scores in results.json."""
    import huggingface_hub.constants
    from sentence_transformers import SentenceTransformer

    from embedkit.data.sts import read_stsb
    from embedkit.evaluation.core import score_pairs
    from embedkit.training.run import train

    root = tmp_path_factory.mktemp("hub-train")
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    sentences = root / "sentences.txt"
    sentences.write_text("\n".join(f"the {words[i % 12]} of {words[(i * 7) % 12]} is number {i}"
                                   for i in range(96)) + "\n", encoding="utf-8")
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"name": tiny_model_path, "pooling": "cls", "mlp_only_train": True, "max_seq_length": 32},
        "data": {"train": {"path": str(sentences)}, "dev": None},
        "method": {"name": "simcse-unsup", "temperature": 0.05},
        "training": {"batch_size": 16, "max_steps": 4, "eval_steps": 2, "learning_rate": 1e-4},
        "output": {"dir": str(root / "out"), "license": "mit", "keep_checkpoints": "all"},  # optimizer state too
        "eval": {"suite": "none"},
    }), encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        # Training saves a sentence-transformers card, which looks up the Hub unless offline: stay offline.
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        outside = guard_loopback(mp)
        train(str(recipe))
        assert outside == [], f"non-loopback connections attempted while training: {outside}"
    out = root / "out"

    # Score the trained model on two pair files, in the shape evaluation writes under results["sts"].
    model = SentenceTransformer(str(out), device="cpu", local_files_only=True)
    data = root / "pairs"
    data.mkdir()
    tasks, files = {}, {}
    for name, seed in (("toy-a", 1), ("toy-b", 2)):
        pairs = read_stsb(_pair_file(data / f"{name}.csv", seed), name=name)
        tasks[name] = {**score_pairs(model, pairs), "n": len(pairs)}
        files.update(pairs.files)
    results = json.loads((out / "results.json").read_text())
    results["sts"] = {"protocol": "embedkit-test-pairs", "tasks": tasks,
                      "avg": float(np.mean([t["spearman"] for t in tasks.values()])),
                      "data": {"source": "local", "dir": str(data), "files": files}}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return out


@pytest.fixture()
def loopback_only(monkeypatch):
    outside = guard_loopback(monkeypatch)
    yield outside
    assert outside == [], f"non-loopback connections attempted: {outside}"


@pytest.fixture()
def hub(tmp_path, monkeypatch, loopback_only):
    """The fake Hub, with HF_ENDPOINT / HF_TOKEN pointing at it."""
    import huggingface_hub.constants

    with HubServer(tmp_path / "hub", TOKEN) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        # Online towards the fake Hub even for someone who works with HF_HUB_OFFLINE=1 exported (huggingface_hub
        # read it at import, so its constant is set too).
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        # huggingface_hub read HF_ENDPOINT at import: its own background calls must go to the fake Hub too.
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", server.url)
        monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            server.url + "/{repo_id}/resolve/{revision}/{filename}")
        yield server


@pytest.fixture()
def hf_logs(caplog):
    """Capture huggingface_hub's and embedkit's logs at DEBUG."""
    caplog.set_level(logging.DEBUG)
    lib = logging.getLogger("huggingface_hub")
    lib.addHandler(caplog.handler)
    old = lib.level
    lib.setLevel(logging.DEBUG)
    yield caplog
    lib.removeHandler(caplog.handler)
    lib.setLevel(old)


def _copy_output(src: Path, dst: Path) -> Path:
    return Path(shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints", "logs")))


def _encode(path: str | Path) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    return model.encode(SENTENCES, convert_to_numpy=True)


# ---------------------------------------------------------------------------------------------------------
# End to end


def test_push_download_load_identical(trained_output, hub, tmp_path, capfd, hf_logs):
    from huggingface_hub import ModelCard, snapshot_download

    from embedkit.hub import HubError, push

    url = push(trained_output, REPO)
    assert url == f"{hub.url}/{REPO}"

    # What the server holds: model files, card, recipe and results; no checkpoints, logs or optimizer state.
    remote = hub.state.files(REPO)
    assert {"README.md", "model.safetensors", "modules.json", "config.json", "tokenizer.json", "recipe.yaml",
            "results.json", "1_Pooling/config.json"} <= set(remote)
    assert not [p for p in remote if p.startswith(("checkpoints/", "logs/")) or "optimizer" in p
                or "rng_state" in p or "tfevents" in p or "method_state" in p]
    assert remote["model.safetensors"] == (trained_output / "model.safetensors").read_bytes()

    local = snapshot_download(REPO, endpoint=hub.url, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(_encode(local), _encode(trained_output))

    card = ModelCard.load(Path(local) / "README.md")
    data = card.data
    assert data.library_name == "sentence-transformers"
    assert data.pipeline_tag == "sentence-similarity"
    assert data.license == "mit"
    assert {"sentence-transformers", "simcse-unsup"} <= set(data.tags)
    results = json.loads((trained_output / "results.json").read_text())
    expected = {name: round(s["spearman"], 2) for name, s in results["sts"]["tasks"].items()}
    got = {r.dataset_name: r.metric_value for r in data.eval_results}
    assert got == expected
    assert all(r.metric_type == "spearman" and r.metric_config == "embedkit-test-pairs" for r in data.eval_results)
    assert "@inproceedings{gao2021simcse" in card.text  # the method's BibTeX
    for digest in results["sts"]["data"]["files"].values():  # data hashes in the STS table
        assert digest in card.text
    assert "simcse-unsup" in card.text and "max_steps: 4" in card.text  # the resolved recipe

    # The token went to the server on every request, and nowhere else.
    assert hub.state.requests and all(ok for _, _, ok in hub.state.requests)
    for path, blob in remote.items():
        assert TOKEN.encode() not in blob, path
    for file in Path(local).rglob("*"):
        if file.is_file():
            assert TOKEN.encode() not in file.read_bytes(), file
    captured = capfd.readouterr()
    assert "published" in captured.out
    assert TOKEN not in captured.out + captured.err + hf_logs.text

    # --private never publishes into an existing public repository.
    with pytest.raises(HubError, match="already exists and is public"):
        push(trained_output, REPO, private=True)


def test_cli_push_private_branch(trained_output, hub, capfd):
    from embedkit.cli import main

    rc = main(["push", str(trained_output), "tester/tiny-branch", "--private", "--branch", "dev",
               "--commit-message", "first tiny model"])
    assert rc == 0
    repo = hub.state.repos["tester/tiny-branch"]
    assert repo["private"] is True
    assert "README.md" in hub.state.files("tester/tiny-branch", "dev")
    assert set(hub.state.files("tester/tiny-branch", "main")) == {".gitattributes"}
    out = capfd.readouterr().out
    assert f"{hub.url}/tester/tiny-branch/tree/dev" in out


def test_wrong_token_is_one_clear_error(trained_output, hub, monkeypatch, capfd, hf_logs):
    from embedkit.cli import main

    wrong = "hf_wrongTokenForTheTestServer000000"
    monkeypatch.setenv("HF_TOKEN", wrong)
    rc = main(["push", str(trained_output), REPO])
    captured = capfd.readouterr()
    assert rc == 2
    err_lines = [line for line in captured.err.splitlines() if line.startswith("embedkit: error:")]
    assert len(err_lines) == 1, captured.err
    assert "401" in err_lines[0] and "HF_TOKEN" in err_lines[0] and "nothing was published" in err_lines[0]
    assert "published" not in captured.out
    assert REPO not in hub.state.repos
    assert any(not ok for _, _, ok in hub.state.requests)
    for secret in (wrong, TOKEN):
        assert secret not in captured.out + captured.err + hf_logs.text


class _NoSleep:
    """Stands in for the ``time`` module inside huggingface_hub's HTTP retry loop: retries without waiting."""

    def __getattr__(self, name):
        return getattr(time, name)

    @staticmethod
    def sleep(seconds):
        return None


def test_dropped_connection_then_rerun_completes(trained_output, hub, monkeypatch, capfd):
    import huggingface_hub.utils._http as hf_http

    from embedkit.hub import HubError, push

    monkeypatch.setattr(hf_http, "time", _NoSleep())
    hub.state.drop_commits = True
    with pytest.raises(HubError) as info:
        push(trained_output, REPO)
    message = str(info.value)
    assert "\n" not in message
    assert "connection" in message and "run the same push again" in message and "nothing was published" in message
    assert hub.state.dropped >= 1
    # The empty repository this push created is deleted again, and the line says so.
    assert f"the empty repository {REPO} that this push created was deleted again" in message
    assert REPO not in hub.state.repos and hub.state.deleted == [REPO]
    assert "published" not in capfd.readouterr().out

    hub.state.drop_commits = False
    url = push(trained_output, REPO)
    assert url.endswith(REPO)
    remote = hub.state.files(REPO)
    assert remote["model.safetensors"] == (trained_output / "model.safetensors").read_bytes()
    assert "README.md" in remote


def test_dropped_connection_keeps_a_repo_it_did_not_create(trained_output, hub, monkeypatch, tmp_path):
    """Only a repository this push created is deleted; one that existed before stays, with its files."""
    import huggingface_hub.utils._http as hf_http

    from embedkit.hub import HubError, push

    monkeypatch.setattr(hf_http, "time", _NoSleep())
    push(trained_output, REPO)
    before = hub.state.files(REPO)
    changed = _copy_output(trained_output, tmp_path / "out")
    (changed / "notes.txt").write_text("a second commit\n")
    hub.state.drop_commits = True
    with pytest.raises(HubError) as info:
        push(changed, REPO)
    assert "deleted" not in str(info.value) and "remains" not in str(info.value)
    assert hub.state.deleted == [] and hub.state.files(REPO) == before


def test_dropped_connection_and_failed_cleanup_names_the_empty_repo(trained_output, hub, monkeypatch):
    import huggingface_hub.utils._http as hf_http

    from embedkit.hub import HubError, push

    monkeypatch.setattr(hf_http, "time", _NoSleep())
    hub.state.drop_commits = True
    hub.state.fail_deletes = True
    with pytest.raises(HubError) as info:
        push(trained_output, REPO)
    message = str(info.value)
    assert "\n" not in message and TOKEN not in message
    assert "nothing was published" in message
    assert f"the empty repository {REPO} that this push created remains on the Hub" in message
    assert "HTTP" in message or "500" in message
    assert set(hub.state.files(REPO)) == {".gitattributes"}


@pytest.mark.parametrize("repo_id", ["alice", "alice/b/c", "alice/--x", "alice/x..y", "-alice/x", "alice/x.git",
                                     "alice/" + "x" * 97, "alice/with space", ""])
def test_repo_id_rule_is_huggingface_hubs(repo_id):
    from embedkit.hub import HubError, check_repo_id

    with pytest.raises(HubError, match=r"^REPO_ID .*: expected namespace/name, e\.g\. alice/simcse-minilm"):
        check_repo_id(repo_id)
    assert check_repo_id("alice/simcse-minilm_v1.2") == "alice/simcse-minilm_v1.2"


def test_push_refuses_offline_mode_at_once(trained_output, monkeypatch, loopback_only):
    from embedkit.hub import HubError, push

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # were a request sent, it would stay on loopback
    started = time.perf_counter()
    with pytest.raises(HubError, match="HF_HUB_OFFLINE .* is set: publishing needs the Hub; unset it"):
        push(trained_output, REPO, token=TOKEN)
    assert time.perf_counter() - started < 3


# ---------------------------------------------------------------------------------------------------------
# Safety checks (no network: they refuse before any request)


def test_refuses_token_in_a_file(trained_output, hub, tmp_path):
    from embedkit.hub import HubError, push

    out = _copy_output(trained_output, tmp_path / "out")
    (out / "notes").mkdir()
    (out / "notes" / "env.txt").write_text(f"HF_TOKEN={TOKEN}\n")
    with pytest.raises(HubError, match=r"notes/env.txt: contains the Hub token") as info:
        push(out, REPO)
    assert TOKEN not in str(info.value)
    assert hub.state.requests == []


def test_home_paths_redacted_in_card_refused_elsewhere(trained_output, hub, tmp_path, monkeypatch):
    from huggingface_hub import ModelCard

    from embedkit.hub import HubError, prepare_upload, push

    home = tmp_path / "home" / "alice"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    out = _copy_output(trained_output, tmp_path / "out")
    results = json.loads((out / "results.json").read_text())
    results["recipe"]["model"]["name"] = f"{home}/models/tiny-bert"
    (out / "results.json").write_text(json.dumps(results))
    (out / "recipe.yaml").write_text(f"model:\n  name: {home}/models/tiny-bert\n")

    prepared = prepare_upload(out, tmp_path / "staged", REPO, TOKEN)
    assert str(home) not in prepared.card and "~/models/tiny-bert" in prepared.card
    assert ModelCard(prepared.card).data.base_model is None  # a local path is not a Hub base model
    for rel in ("results.json", "recipe.yaml"):
        assert str(home) not in (prepared.folder / rel).read_text()
    assert str(home) in (out / "recipe.yaml").read_text()  # the output folder itself is left untouched

    (out / "eval_notes.md").write_text(f"scores\nread from {home}/data/sts\n")
    with pytest.raises(HubError, match=r"eval_notes.md:2: contains a path in your home folder"):
        push(out, REPO)
    assert hub.state.requests == []


def test_excludes_training_state_and_refuses_stray_large_file(trained_output, hub, tmp_path):
    from embedkit.hub import HubError, push, select_files

    keep, skipped = select_files(trained_output)
    assert "model.safetensors" in keep and "README.md" not in keep
    assert any(p.startswith("checkpoints/") and p.endswith("optimizer.pt") for p in skipped)
    assert any(p.startswith("logs/") for p in skipped)
    assert not [p for p in keep if p.startswith(("checkpoints/", "logs/"))]

    out = _copy_output(trained_output, tmp_path / "out")
    (out / "extra").mkdir()
    (out / "extra" / "state.bin").write_bytes(np.random.default_rng(0).bytes(2 * 2**20))
    with pytest.raises(HubError, match=r"extra/state.bin: 2.0 MB, over the 1 MB limit"):
        push(out, REPO, max_file_mb=1)  # model.safetensors (4 MB) is weights: allowed over the limit
    assert hub.state.requests == []


def test_refuses_a_model_that_does_not_load(trained_output, hub, tmp_path):
    from embedkit.errors import EmbedkitError
    from embedkit.hub import HubError, push

    out = _copy_output(trained_output, tmp_path / "out")
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(HubError, match="the model does not load from the files to upload"):
        push(out, REPO)
    (out / "results.json").unlink()
    with pytest.raises(EmbedkitError, match="out: neither results.json .* nor merge.json"):
        push(out, REPO)
    assert hub.state.requests == []


def test_a_folder_without_sentence_transformers_card_gets_the_one_it_renders(trained_output, tmp_path):
    from huggingface_hub import ModelCard

    from embedkit.card import BEGIN
    from embedkit.hub import prepare_upload

    out = _copy_output(trained_output, tmp_path / "out")
    (out / "README.md").unlink()
    prepared = prepare_upload(out, tmp_path / "staged", REPO, TOKEN)
    assert "## Model Details" in prepared.card and prepared.card.count(BEGIN) == 1  # sentence-transformers' + ours
    assert f'SentenceTransformer("{REPO}")' in prepared.card
    assert len(ModelCard(prepared.card).data.eval_results) == prepared.eval_results == 2  # the two STS pair files


def test_no_token_is_a_clear_error(trained_output, monkeypatch, tmp_path):
    import huggingface_hub.constants

    from embedkit.hub import HubError, push

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # offline mode is refused first: this test is about tokens
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(HubError, match="no Hugging Face token: set HF_TOKEN"):
        push(trained_output, REPO)


# ---------------------------------------------------------------------------------------------------------
# The card on its own


def test_card_with_full_sts_suite_and_mteb(tmp_path, monkeypatch):
    """The card reproduces whatever results.json holds: 7 STS tasks, protocol, hashes, MTEB."""
    from huggingface_hub import ModelCard

    from embedkit.card import build_card

    monkeypatch.setenv("HOME", "/home/alice")
    names = ["STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark", "SICK-R"]
    rng = np.random.default_rng(7)
    tasks = {n: {"spearman": float(rng.uniform(60, 90)), "pearson": float(rng.uniform(60, 90)), "n": 100 + i}
             for i, n in enumerate(names)}
    results = {
        "recipe": {"model": {"name": "sentence-transformers/all-MiniLM-L6-v2"},
                   "data": {"train": {"hub": "sentence-transformers/all-nli", "split": "train"}},
                   "method": {"name": "simcse-sup", "temperature": 0.05}, "output": {"license": "apache-2.0"}},
        "method": {"name": "simcse-sup", "paper": "Gao et al. 2021", "citation": "@inproceedings{x,\n title={y}\n}"},
        "sts": {"protocol": "senteval-sts-all", "tasks": tasks, "avg": float(np.mean([t["spearman"] for t in
                                                                                         tasks.values()])),
                "data": {"source": "local", "dir": "/home/alice/data/sts",
                         "files": {"/home/alice/data/sts/STS12/a.txt": "f" * 64}},
                "deviations": ["SICK-R holds 9927 pairs"]},
        "mteb": {"tasks": {"STSBenchmark": {"main_score": float(rng.uniform(0.5, 0.9)), "split": "test"}, "odd": 3}},
        "hardware": "1 x H100", "seconds": 3725.0, "versions": {"torch": "2.13.0"},
    }
    text = build_card(results, "alice/minilm-simcse")
    card = ModelCard(text)
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert card.data.datasets == ["sentence-transformers/all-nli"]
    assert card.data.license == "apache-2.0"
    sts_entries = [r for r in card.data.eval_results if r.task_type == "sentence-similarity"]
    assert [r.dataset_name for r in sts_entries] == names
    assert [r.metric_value for r in sts_entries] == [round(tasks[n]["spearman"], 2) for n in names]
    assert {r.metric_config for r in sts_entries} == {"senteval-sts-all"}
    main = results["mteb"]["tasks"]["STSBenchmark"]["main_score"]
    (mteb_entry,) = [r for r in card.data.eval_results if r not in sts_entries]  # "odd" has no main score
    assert (mteb_entry.task_name, mteb_entry.dataset_split, mteb_entry.metric_value) == \
        ("MTEB STSBenchmark", "test", round(100 * main, 2))
    assert f"| **Avg** | **{results['sts']['avg']:.2f}** |" in text
    assert f"| STSBenchmark | {main:.4f} |" in text
    assert "`STS12/a.txt` | `" + "f" * 64 in text and "/home/alice" not in text and "under `~/data/sts`" in text
    assert "- SICK-R holds 9927 pairs" in text
    assert 'SentEval "all" setting' in text and "1 h 2 min 5 s" in text

    bare = build_card({"recipe": {}, "method": {"name": "m"}}, "alice/x")
    assert ModelCard(bare).data.eval_results is None
    assert "No evaluation was recorded" in bare


# ---------------------------------------------------------------------------------------------------------
# The quickstart's card, end to end


@pytest.mark.slow  # a real (2-step) training run with mteb: about 30 s here
def test_quickstart_card_is_sentence_transformers_card_plus_embedkit_and_arrives_whole(
        tiny_model_path, tmp_path, monkeypatch, hub):
    """The quickstart recipe (tiny model, 2 steps by override, STS suite and two MTEB tasks on a small local data
    folder) writes a README.md that holds sentence-transformers' sections, embedkit's, the recipe as executed and
    model-index entries for STS and MTEB; training looks nothing up on the Hub; the push delivers it named for
    the repository."""
    import huggingface_hub.constants
    from huggingface_hub import ModelCard
    from test_eval_data import make_sts_dir

    from embedkit.hub import push
    from embedkit.training.run import train

    data, _ = make_sts_dir(tmp_path / "data", n_extra=30)
    stsb = data / "sts" / "stsbenchmark"
    for name in ("sts-train.csv", "sts-dev.csv"):
        shutil.copy(stsb / "sts-test.csv", stsb / name)
    base = Path(shutil.copytree(tiny_model_path, tmp_path / "base"))
    (base / "README.md").write_text("---\nlanguage: en\nlicense: mit\n---\n\n# tiny base\n")  # inherited
    out = tmp_path / "quickstart"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # online, yet nothing is looked up
    results = train("quickstart", [f"model.name={base}", "training.max_steps=2", "training.eval_steps=1",
                                   "training.batch_size=8", f"output.dir={out}", "eval.suite=sts",
                                   "eval.mteb=[STSBenchmark,STS12]"], data_dir=str(data))
    assert hub.state.requests == []  # the loopback guard (hub fixture) saw no other connection either

    text = (out / "README.md").read_text()
    card = ModelCard(text)
    front = yaml.safe_load(text.split("---\n")[1])
    # sentence-transformers' generated sections, from the model card data embedkit set before training
    for section in ("## Model Details", "### Full Model Architecture", "## Training Details",
                    "### Training Hyperparameters", "### Training Logs", "### Framework Versions"):
        assert section in text, section
    assert "* Size: 35 training samples" in text and "embedkit.methods.cosent.loss.CoSENTLoss" in text
    assert {"loss:CoSENTLoss", "dataset_size:35", "embedkit", "cosent"} <= set(front["tags"])
    assert (front["license"], front["language"]) == ("mit", ["en"])  # the base model's
    assert "model_name" not in front
    # embedkit's sections, the recipe as executed (the override shows), the method's citation
    for section in ("## How embedkit made this model", "### Evaluation protocol", "### STS (protocol",
                    "### MTEB", "### Recipe as executed"):
        assert section in text, section
    executed = text[text.index("### Recipe as executed"):]
    assert "max_steps: 2" in executed and "max_steps: 64" not in text
    assert 'this run overrode "' in text and '"training.max_steps=2"' in text
    assert "@online{su2022cosent" in text
    # model-index: one entry per STS task (× 100, 2 decimals) and per MTEB task, next to the dev evaluator's
    sts = {r.dataset_name: r.metric_value for r in card.data.eval_results if r.task_type == "sentence-similarity"}
    assert sts == {n: round(s["spearman"], 2) for n, s in results["sts"]["tasks"].items()}
    mteb = {r.task_name: r.metric_value for r in card.data.eval_results if r.source_name == "MTEB"}
    assert mteb == {f"MTEB {n}": round(100 * t["main_score"], 2) for n, t in results["mteb"]["tasks"].items()}
    assert len(mteb) == 2 and any(r.task_type == "dev" for r in card.data.eval_results)

    # Pushed through the loopback Hub: the card arrives named for the repository, with mteb's files.
    repo = "tester/quickstart-tiny"
    push(out, repo)
    remote = hub.state.files(repo)
    rev = results["mteb"]["revision"]
    assert f"mteb/results/local__quickstart/{rev}/STSBenchmark.json" in remote
    arrived = remote["README.md"].decode()
    got = ModelCard(arrived).data
    assert f'SentenceTransformer("{repo}")' in arrived and "\n# quickstart-tiny\n" in arrived
    assert yaml.safe_load(arrived.split("---\n")[1])["model-index"][0]["name"] == "quickstart-tiny"
    assert {(r.task_name, r.dataset_name, r.metric_value) for r in got.eval_results} == \
        {(r.task_name, r.dataset_name, r.metric_value) for r in card.data.eval_results}
    assert arrived.count("## How embedkit made this model") == 1 and "max_steps: 2" in arrived
    for blob in remote.values():
        assert TOKEN.encode() not in blob


# ---------------------------------------------------------------------------------------------------------
# A merge output (``embedkit merge``: merge.json and its card, no results.json)


@pytest.fixture(scope="module")
def merged_output(tmp_path_factory, tiny_model_path, spread_model_path) -> Path:
    from embedkit.merging import merge

    out = tmp_path_factory.mktemp("hub-merge") / "soup"
    merge([tiny_model_path, spread_model_path], "average", weights=[1, 3], output=out)
    assert (out / "merge.json").is_file() and not (out / "results.json").exists()
    return out


def test_a_merge_output_is_published_with_its_card_and_record(merged_output, hub, tmp_path, capfd):
    from huggingface_hub import ModelCard, snapshot_download

    from embedkit.cli import main

    repo = "tester/tiny-soup"
    assert main(["push", str(merged_output), repo, "--dry-run"]) == 0  # checks and prints the card, uploads nothing
    printed = capfd.readouterr().out
    assert hub.state.requests == [] and repo not in hub.state.repos
    assert "\n# tiny-soup\n" in printed and f'SentenceTransformer("{repo}")' in printed
    assert "embedkit merge --method average" in printed and "| 0.25 |" in printed and "| 0.75 |" in printed

    assert main(["push", str(merged_output), repo]) == 0
    remote = hub.state.files(repo)
    assert {"README.md", "merge.json", "model.safetensors", "modules.json", "1_Pooling/config.json"} <= set(remote)
    assert remote["model.safetensors"] == (merged_output / "model.safetensors").read_bytes()
    assert json.loads(remote["merge.json"]) == json.loads((merged_output / "merge.json").read_text())
    card = remote["README.md"].decode()
    assert card.strip() in printed  # the card the dry run showed
    data = ModelCard(card).data
    assert data.library_name == "sentence-transformers" and {"merge", "merge-average", "embedkit"} <= set(data.tags)
    local = snapshot_download(repo, endpoint=hub.url, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(_encode(local), _encode(merged_output))


def test_a_folder_that_is_neither_a_run_nor_a_merge_is_one_line(merged_output, tmp_path, loopback_only):
    from embedkit.hub import HubError, push

    out = Path(shutil.copytree(merged_output, tmp_path / "bare"))
    (out / "merge.json").unlink()
    with pytest.raises(HubError, match=r"bare: neither results.json .* nor merge.json"):
        push(out, REPO, dry_run=True)
    (out / "merge.json").write_text('{"method": "average"}', encoding="utf-8")
    with pytest.raises(HubError, match=r"merge.json: expected the record `embedkit merge` writes .*models"):
        push(out, REPO, dry_run=True)
