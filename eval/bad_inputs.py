"""Every bad input we know of, through the real command line: the message a user sees, how long it took, and
whether anything was left behind. Prints the Markdown table of docs/reliability.md.

Each case runs ``python -m embedkit.cli ...`` in a fresh process (imports included in the time, as a user
waits for them) inside its own temporary folder, on a tiny random BERT with the packaged MiniLM tokenizer.
"Wrote" compares the folder's files (names and bytes) before and after; the lock files are not counted.
The Hub is pointed at a loopback port where nothing listens (no traffic leaves the machine).

    python eval/bad_inputs.py [--only NAME,...] [--markdown docs/reliability-table.md]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEAD_HUB = "http://127.0.0.1:9"  # discard port: connection refused at once


@dataclass
class Case:
    name: str
    what: str
    setup: Callable[[Path, str], list[str]]  # (folder, tiny model) -> argv after `embedkit`
    expect_rc: int = 2
    env: dict[str, str] | None = None
    # For a command that is meant to succeed: checks what it wrote (raises AssertionError when wrong) and returns
    # the line the table shows; the case's own files must stay as they were, new files are allowed.
    verify: Callable[[Path], str] | None = None


def recipe(folder: Path, model: str, /, **sections: str) -> Path:
    """A small valid recipe; ``sections`` replace whole lines (``model=``, ``data=``, ...)."""
    data = folder / "sentences.txt"
    if not data.exists():
        data.write_text("".join(f"sentence number {i} about topic {i % 7}\n" for i in range(64)), encoding="utf-8")
    lines = {
        "description": "description: tiny",
        "model": f"model: {{name: {model}, max_seq_length: 16}}",
        "data": f"data: {{train: {{path: {data}}}, dev: null}}",
        "method": "method: {name: simcse-unsup}",
        "training": "training: {batch_size: 8, max_steps: 2, save_steps: 1, learning_rate: 1e-4}",
        "eval": "eval: {before: false, suite: none}",
        "output": f"output: {{dir: {folder / 'out'}}}",
    }
    lines.update(sections)
    path = folder / "r.yaml"
    path.write_text("\n".join(lines.values()) + "\n", encoding="utf-8")
    return path


def run_cli(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_ENDPOINT": DEAD_HUB, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    full_env.pop("HF_HUB_OFFLINE", None)  # online towards the dead Hub, unless the case asks for offline mode
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "embedkit.cli", *argv], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=600)


def finished_run(folder: Path, model: str) -> Path:
    path = recipe(folder, model)
    proc = run_cli(["train", str(path)], folder)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return path


def _c(name: str, what: str, expect_rc: int = 2, env: dict[str, str] | None = None,
       verify: Callable[[Path], str] | None = None):
    def wrap(fn: Callable[[Path, str], list[str]]) -> Case:
        case = Case(name, what, fn, expect_rc, env, verify)
        CASES.append(case)
        return case
    return wrap


CASES: list[Case] = []

# Recipes -------------------------------------------------------------------------------------------------


@_c("unknown-key", "misspelled key (`lerning_rate`)")
def _(f, m):
    return ["train", str(recipe(f, m, training="training: {lerning_rate: 1e-4}"))]


@_c("wrong-type", "string where a number belongs (`batch_size: eight`)")
def _(f, m):
    return ["train", str(recipe(f, m, training="training: {batch_size: eight}"))]


@_c("unknown-method", "unknown method name")
def _(f, m):
    return ["check", str(recipe(f, m, method="method: {name: simcse-unsupp}"))]


@_c("method-param", "method parameter out of range (`temperature: -1`)")
def _(f, m):
    return ["check", str(recipe(f, m, method="method: {name: simcse-unsup, temperature: -1}"))]


@_c("yaml-syntax", "YAML syntax error")
def _(f, m):
    path = recipe(f, m)
    path.write_text(path.read_text() + "training: [unclosed\n")
    return ["check", str(path)]


@_c("yaml-unsafe", "YAML tag that would run code (`!!python/object/apply`)")
def _(f, m):
    path = recipe(f, m)
    path.write_text(path.read_text() + "extra: !!python/object/apply:os.system ['echo pwned']\n")
    return ["check", str(path)]


@_c("alias-bomb", "342-byte YAML alias bomb (billion laughs)")
def _(f, m):
    bomb = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n' + "".join(
        f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    (f / "bomb.yaml").write_text(bomb)
    return ["check", str(f / "bomb.yaml")]


@_c("huge-recipe", "recipe file of 2 MiB")
def _(f, m):
    path = recipe(f, m)
    path.write_text(path.read_text() + "# " + "x" * (2 << 20) + "\n")
    return ["check", str(path)]


@_c("recipe-not-utf8", "recipe that is not UTF-8 (Latin-1 byte in the description)")
def _(f, m):
    path = recipe(f, m)
    path.write_bytes(path.read_bytes().replace(b"description: tiny", b"description: caf\xe9"))
    return ["check", str(path)]


@_c("duplicate-key", "duplicate key in a mapping")
def _(f, m):
    path = recipe(f, m, training="training:\n  batch_size: 8\n  max_steps: 2\n  batch_size: 16")
    return ["check", str(path)]


@_c("recipe-lookalike", "missing recipe path that ends like a shipped recipe (`some/dir/quickstart.yaml`)")
def _(f, m):
    return ["check", "some/dir/quickstart.yaml"]


@_c("recipe-missing", "recipe file that does not exist")
def _(f, m):
    return ["check", str(f / "nope.yaml")]


# Data ----------------------------------------------------------------------------------------------------


@_c("data-missing", "missing data file")
def _(f, m):
    return ["check", str(recipe(f, m, data="data: {train: {path: /no/such-file.txt}, dev: null}"))]


@_c("data-empty", "empty training file")
def _(f, m):
    (f / "empty.txt").write_text("\n\n")
    return ["check", str(recipe(f, m, data=f"data: {{train: {{path: {f / 'empty.txt'}}}, dev: null}}"))]


@_c("jsonl-malformed", "JSONL with a broken line")
def _(f, m):
    (f / "d.jsonl").write_text('{"text": "fine"}\n{"text": broken\n')
    return ["check", str(recipe(f, m, data=f"data: {{train: {{path: {f / 'd.jsonl'}}}, dev: null}}"))]


@_c("csv-fields", "CSV row with more fields than the header")
def _(f, m):
    (f / "d.csv").write_text("text\nfine\n\"a\",\"b\"\n")
    return ["check", str(recipe(f, m, data=f"data: {{train: {{path: {f / 'd.csv'}}}, dev: null}}"))]


@_c("data-not-utf8", "data file with a non-UTF-8 byte deep in the file")
def _(f, m):
    body = "".join(f"sentence {i}\n" for i in range(20000)).encode() + b"caf\xe9\n"
    (f / "d.txt").write_bytes(body)
    return ["check", str(recipe(f, m, data=f"data: {{train: {{path: {f / 'd.txt'}}}, dev: null}}"))]


@_c("cosent-score-word", "CoSENT CSV with a score of `high`")
def _(f, m):
    (f / "p.csv").write_text("sentence1,sentence2,score\na cat,a dog,0.5\na car,a bus,high\n")
    return ["check", str(recipe(f, m, method="method: {name: cosent}",
                                data=f"data: {{train: {{path: {f / 'p.csv'}}}, dev: null}}"))]


@_c("explicit-path-hub-fallback", "explicit missing data path in a recipe with a Hub fallback")
def _(f, m):
    return ["train", "quickstart", "data.train.path=/no/such-file.txt", f"output.dir={f / 'out'}"]


# Output folder -------------------------------------------------------------------------------------------


@_c("outdir-file", "output.dir is an existing file")
def _(f, m):
    (f / "out").write_text("a file")
    return ["train", str(recipe(f, m))]


@_c("outdir-nonempty", "output.dir holds files, no flag")
def _(f, m):
    (f / "out").mkdir()
    (f / "out" / "notes.txt").write_text("mine")
    return ["train", str(recipe(f, m))]


@_c("overwrite-cwd-bad-model", "`output.dir=. --overwrite model.name=/no/such/model` (the issue's command)")
def _(f, m):
    (f / "notes.txt").write_text("mine")
    return ["train", str(recipe(f, m)), "output.dir=.", "--overwrite", "model.name=/no/such/model"]


@_c("overwrite-cwd", "`output.dir=. --overwrite` with a good recipe")
def _(f, m):
    (f / "notes.txt").write_text("mine")
    return ["train", str(recipe(f, m)), "output.dir=.", "--overwrite"]


@_c("overwrite-home", "`--overwrite` of the home folder (`output.dir=~/`; HOME is a temporary folder here)")
def _(f, m):
    (f / "home").mkdir()
    (f / "home" / "thesis.tex").write_text("years of work")
    ENV["HOME"] = str(f / "home")
    return ["train", str(recipe(f, m)), "output.dir=~/", "--overwrite"]


@_c("overwrite-foreign", "--overwrite of a folder embedkit did not create")
def _(f, m):
    (f / "out").mkdir()
    (f / "out" / "notes.txt").write_text("mine")
    return ["train", str(recipe(f, m)), "--overwrite"]


@_c("overwrite-extra-file", "--overwrite of a finished run that also holds a user's file")
def _(f, m):
    path = finished_run(f, m)
    (f / "out" / "my_notes.md").write_text("mine")
    return ["train", str(path), "--overwrite"]


@_c("overwrite-failing", "--overwrite of a finished run by a run that fails (model missing)")
def _(f, m):
    return ["train", str(finished_run(f, m)), "--overwrite", "model.name=/no/such/model"]


@_c("locked", "second run while another holds the folder")
def _(f, m):
    path = recipe(f, m)
    (f / "out").mkdir()
    code = ("import sys,time; from pathlib import Path; from embedkit.training.rundir import RunFolder; "
            "o=Path(sys.argv[1]); r=RunFolder(o,o); r.lock(o); print('ok',flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(f / "out")], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    holder.stdout.readline()
    HOLDERS.append(holder)
    return ["train", str(path)]


@_c("resume-finished", "--resume of a finished run", expect_rc=0)
def _(f, m):
    return ["train", str(finished_run(f, m)), "--resume"]


@_c("resume-nothing", "--resume with no complete checkpoint")
def _(f, m):
    (f / "out" / "checkpoints" / "checkpoint-1").mkdir(parents=True)
    return ["train", str(recipe(f, m)), "--resume"]


@_c("resume-changed", "--resume with another batch size")
def _(f, m):
    path = finished_run(f, m)
    (f / "out" / "results.json").unlink()
    return ["train", str(path), "--resume", "training.batch_size=4"]


@_c("resume-and-overwrite", "--resume and --overwrite together")
def _(f, m):
    return ["train", str(finished_run(f, m)), "--resume", "--overwrite"]


# Models --------------------------------------------------------------------------------------------------


@_c("model-missing-check", "missing local model path (`check`)")
def _(f, m):
    return ["check", str(recipe(f, m)), "model.name=/no/such/model"]


@_c("model-missing-train", "missing local model path (`train`)")
def _(f, m):
    return ["train", str(recipe(f, m)), "model.name=/no/such/model"]


@_c("model-missing-eval", "missing local model path (`eval`)")
def _(f, m):
    return ["eval", "/no/such/model"]


@_c("model-missing-encode", "missing local model path (`encode`)")
def _(f, m):
    (f / "t.txt").write_text("hello\n")
    return ["encode", "/no/such/model", str(f / "t.txt"), "-o", str(f / "e.npy")]


@_c("model-not-a-model", "model.name is a folder but not a model")
def _(f, m):
    (f / "folder").mkdir()
    (f / "folder" / "readme.txt").write_text("hi")
    return ["check", str(recipe(f, m)), f"model.name={f / 'folder'}"]


@_c("model-remote-code", "model with custom code, trust_remote_code off (`train`)")
def _(f, m):
    model = f / "custom"
    shutil.copytree(m, model)
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_custom.CustomModel"}
    (model / "config.json").write_text(json.dumps(config))
    return ["train", str(recipe(f, str(model)))]


@_c("hub-unreachable", "Hub model id with no network, HF_HUB_OFFLINE unset")
def _(f, m):
    return ["check", str(recipe(f, m)), "model.name=someone/some-model"]


@_c("hub-unreachable-eval", "`eval` of a Hub id with no network")
def _(f, m):
    return ["eval", "someone/some-model"]


# Numbers checked for what they will do ---------------------------------------------------------------------


def multitask_recipe(folder: Path, model: str, sts: str = "", dev: str = "null") -> Path:
    """Two cosent sources of 32 scored pairs each; ``sts`` adds keys to the first source (``weight: 1e30``)."""
    for name in ("sts", "para"):
        (folder / f"{name}.csv").write_text("sentence1,sentence2,score\n" + "".join(
            f"{name} sentence {i} about {i % 5},another {name} sentence {i} about {i % 3},{(i % 6) / 5}\n"
            for i in range(32)), encoding="utf-8")
    extra = f", {sts}" if sts else ""
    return recipe(folder, model, method="method: {name: multitask, sampler: round_robin}", data=(
        f"data:\n  train:\n  - {{name: sts, path: {folder / 'sts.csv'}, method: {{name: cosent}}{extra}}}\n"
        f"  - {{name: para, path: {folder / 'para.csv'}, method: {{name: cosent}}}}\n  dev: {dev}"))


def rerank_file(path: Path, flip: bool = False) -> Path:
    """A small reranking CSV (4 questions, one positive and two negatives each)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("qtext,label,atext\n" + "".join(
        f"question {q},{int((i == 0) != flip)},answer {q}.{i} about {q * i}\n" for q in range(4) for i in range(3)),
        encoding="utf-8")
    return path


@_c("seed-negative", "`training.seed=-1` (numpy seeds with 0 .. 2**32-1)")
def _(f, m):
    return ["train", str(recipe(f, m)), "training.seed=-1"]


@_c("seed-too-large", "`training.seed=4294967296`")
def _(f, m):
    return ["check", str(recipe(f, m)), "training.seed=4294967296"]


@_c("lr-inf", "`learning_rate: .inf`")
def _(f, m):
    return ["check", str(recipe(f, m, training="training: {batch_size: 8, learning_rate: .inf}"))]


@_c("method-param-nan", "`temperature: .nan`")
def _(f, m):
    return ["check", str(recipe(f, m, method="method: {name: simcse-unsup, temperature: .nan}"))]


@_c("source-weight-huge", "multi-task source `weight: 1e30` (infinite gradient norms, clipped to no-op updates)")
def _(f, m):
    return ["train", str(multitask_recipe(f, m, "weight: 1e30"))]


@_c("source-weight-inf", "multi-task source `weight: .inf` (ended in \"loss is nan\")")
def _(f, m):
    return ["train", str(multitask_recipe(f, m, "weight: .inf"))]


@_c("dev-weight-inf", "dev set `weight: .inf` (selection score inf/inf = NaN)")
def _(f, m):
    dev = rerank_file(f / "dev" / "dev.csv")
    return ["train", str(multitask_recipe(f, m, dev=f"[{{kind: rerank, path: {dev}, weight: .inf}}]"))]


@_c("matryoshka-weight-inf", "`matryoshka_weights: [1, .inf]`")
def _(f, m):
    return ["check", str(recipe(f, m, training="training: {batch_size: 8, matryoshka_dims: [32, 16], "
                                               "matryoshka_weights: [1, .inf]}"))]


def merge_inputs(folder: Path, model: str, change: str = "noise") -> tuple[str, str]:
    """Two sentence-transformers folders of the tiny model: ``a`` as it is, ``b`` changed (``noise``: seeded
    noise on every float tensor; ``nan``: one NaN; ``cased``: a tokenizer that keeps case)."""
    import torch
    from sentence_transformers import SentenceTransformer

    a = SentenceTransformer(model, device="cpu")
    a.save(str(folder / "a"), create_model_card=False)
    b = SentenceTransformer(model, device="cpu")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, tensor in b.state_dict().items():
            if tensor.is_floating_point() and change == "noise":
                tensor.add_(torch.randn(tensor.shape, generator=gen) * 0.02)
            elif tensor.is_floating_point() and change == "nan" and name.endswith("word_embeddings.weight"):
                tensor[0, 0] = float("nan")
    b.save(str(folder / "b"), create_model_card=False)
    if change == "cased":
        config = json.loads((folder / "b" / "tokenizer_config.json").read_text())
        config["do_lower_case"] = False
        (folder / "b" / "tokenizer_config.json").write_text(json.dumps(config))
        tok = json.loads((folder / "b" / "tokenizer.json").read_text())
        tok["normalizer"]["lowercase"] = False
        (folder / "b" / "tokenizer.json").write_text(json.dumps(tok))
    return str(folder / "a"), str(folder / "b")


@_c("merge-weights-overflow", "`merge --weights 1e308,1e308` (Σ w = inf: wrote a model of zeros)")
def _(f, m):
    return ["merge", *merge_inputs(f, m), "--weights", "1e308,1e308", "-o", str(f / "soup")]


@_c("merge-weights-nan", "`merge --weights nan,1`")
def _(f, m):
    return ["merge", *merge_inputs(f, m), "--weights", "nan,1", "-o", str(f / "soup")]


@_c("merge-lambdas-overflow", "`merge --method task-arithmetic --lambdas 1e300` (wrote inf/NaN weights; the "
                              "result is known once the weights are read)")
def _(f, m):
    a, b = merge_inputs(f, m)
    return ["merge", b, b, "--method", "task-arithmetic", "--base", a, "--lambdas", "1e300", "-o", str(f / "sum")]


@_c("merge-nan-input", "`merge` of a model holding a NaN weight (read with the weights)")
def _(f, m):
    return ["merge", *merge_inputs(f, m, "nan"), "-o", str(f / "soup")]


@_c("merge-casing", "`merge` of tokenizers with one vocabulary, one lower-cased and one cased (was merged; "
                    "compared once the models are loaded, as the vocabularies are)")
def _(f, m):
    return ["merge", *merge_inputs(f, m, "cased"), "-o", str(f / "soup")]


# Nothing produced that cannot be used --------------------------------------------------------------------


def pairs_file(folder: Path, rows: list[tuple[str, str]]) -> Path:
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps({"anchor": a, "positive": p}) + "\n" for a, p in rows), encoding="utf-8")
    return path


@_c("mine-one-pair", "`data mine` of one pair (wrote a 0-row file, exit 0)")
def _(f, m):
    return ["data", "mine", "--pairs", str(pairs_file(f, [("what is a cat", "a small feline")])), "--model", m,
            "-o", str(f / "m.jsonl")]


@_c("mine-one-anchor", "`data mine`: six pairs of one question (each answer is a labelled positive)")
def _(f, m):
    rows = [("what is a cat", f"answer number {i}") for i in range(6)]
    return ["data", "mine", "--pairs", str(pairs_file(f, rows)), "--model", m, "-o", str(f / "m.jsonl")]


@_c("mine-identical-texts", "`data mine`: anchor and positive the same text, three rows")
def _(f, m):
    rows = [(f"text {i}", f"text {i}") for i in range(3)]
    return ["data", "mine", "--pairs", str(pairs_file(f, rows)), "--model", m, "-o", str(f / "m.jsonl")]


@_c("mine-k-too-large", "`data mine --num-negatives 20` with 12 texts")
def _(f, m):
    rows = [(f"question {i}", f"answer {i}") for i in range(12)]
    return ["data", "mine", "--pairs", str(pairs_file(f, rows)), "--model", m, "--num-negatives", "20",
            "-o", str(f / "m.jsonl")]


@_c("mine-filter-drops-all", "`data mine --max-score-ratio 0.01` (the filter keeps no row; known once the texts "
                             "are encoded)")
def _(f, m):
    rows = [(f"question {i} about {i % 3}", f"answer {i}") for i in range(12)]
    return ["data", "mine", "--pairs", str(pairs_file(f, rows)), "--model", m, "--max-score-ratio", "0.01",
            "-o", str(f / "m.jsonl")]


@_c("mine-seed-negative", "`data mine --seed -1`")
def _(f, m):
    rows = [(f"question {i}", f"answer {i}") for i in range(12)]
    return ["data", "mine", "--pairs", str(pairs_file(f, rows)), "--model", m, "--seed", "-1",
            "-o", str(f / "m.jsonl")]


@_c("mine-margin-inf", "`data mine --margin inf`")
def _(f, m):
    rows = [(f"question {i}", f"answer {i}") for i in range(12)]
    return ["data", "mine", "--pairs", str(pairs_file(f, rows)), "--model", m, "--margin", "inf",
            "-o", str(f / "m.jsonl")]


def _two_results(f: Path) -> str:
    saved = json.loads((f / "res" / "results.json").read_text(encoding="utf-8"))["rerank"]
    assert sorted(saved) == ["x-trecqa-dev", "y-trecqa-dev"], sorted(saved)
    assert saved["x-trecqa-dev"]["map"] != saved["y-trecqa-dev"]["map"]
    return "results.json: rerank " + ", ".join(f"{k} (MAP {v['map']:.2f})" for k, v in sorted(saved.items()))


@_c("eval-same-derived-name", "`eval --rerank x/trecqa/dev.csv --rerank y/trecqa/dev.csv` (kept one result)",
    expect_rc=0, verify=_two_results)
def _(f, m):
    x, y = rerank_file(f / "x" / "trecqa" / "dev.csv"), rerank_file(f / "y" / "trecqa" / "dev.csv", flip=True)
    return ["eval", m, "--rerank", str(x), "--rerank", str(y), "--suite", "none", "-o", str(f / "res")]


@_c("eval-same-file-twice", "`eval --rerank r.csv --rerank ./r.csv`")
def _(f, m):
    rerank_file(f / "r.csv")
    return ["eval", m, "--rerank", "r.csv", "--rerank", "./r.csv", "--suite", "none", "-o", str(f / "res")]

# check refuses what train refuses before its first step (docs/reliability.md#check-and-train-refuse-the-same) --


def _beir(folder: Path) -> Path:
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "text": f"doc {i}"}) + "\n"
                                                 for i in range(4)))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": f"q {i}"}) + "\n"
                                                  for i in range(2)))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td9\t1\n")
    return folder


DEV_TRAINING = "training: {batch_size: 8, max_steps: 2, eval_steps: 1, save_steps: 1, learning_rate: 1e-4}"


def _rerank_file(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "dev.csv").write_text("qtext,label,atext\nq1,1,a1\nq1,0,a2\nq2,1,a3\nq2,0,a4\n")
    return folder / "dev.csv"


@_c("check-output-run", "`check` of a recipe whose output.dir holds a finished run (no flag)")
def _(f, m):
    path = finished_run(f, m)
    return ["check", str(path)]


@_c("check-lora-typo", "LoRA `target_modules: [query, vlaue]` (`check`; train ignored the typo)")
def _(f, m):
    model = f"model: {{name: {m}, max_seq_length: 16, lora: {{target_modules: [query, vlaue]}}}}"
    return ["check", str(recipe(f, m, model=model))]


@_c("check-prompt-long", "`model.prompts` leaving no room in max_seq_length (`check`; train embedded every text alike)")
def _(f, m):
    model = (f"model: {{name: {m}, max_seq_length: 16, prompt_columns: {{text: query}}, prompts: {{query: "
             "'represent this sentence for searching the relevant passages about anything at all: '}}")
    return ["check", str(recipe(f, m, model=model))]


@_c("check-beir-qrels", "BEIR dev qrels naming a document not in the corpus (`check`)")
def _(f, m):
    return ["check", str(recipe(f, m, data=f"data: {{train: {{path: {f / 'sentences.txt'}}}, dev: {{kind: retrieval, "
                                            f"path: {_beir(f / 'beir')}, split: test}}}}", training=DEV_TRAINING))]


@_c("check-multitask-small", "multi-task source smaller than one global batch (`check`)")
def _(f, m):
    recipe(f, m)
    (f / "p.jsonl").write_text("".join(json.dumps({"anchor": f"q {i}", "positive": f"a {i}"}) + "\n" for i in range(4)))
    data = (f"data: {{train: [{{name: text, path: {f / 'sentences.txt'}, method: {{name: simcse-unsup}}}}, "
            f"{{name: qa, path: {f / 'p.jsonl'}, method: {{name: contrastive}}}}], dev: null}}")
    return ["check", str(recipe(f, m, data=data, method="method: {name: multitask}"))]


@_c("check-dev-same-name", "two dev sets of one name (`a/trecqa/dev.csv`, `b/trecqa/dev.csv`; `check`)")
def _(f, m):
    a, b = _rerank_file(f / "a" / "trecqa"), _rerank_file(f / "b" / "trecqa")
    recipe(f, m)
    return ["check", str(recipe(f, m, data=f"data: {{train: {{path: {f / 'sentences.txt'}}}, dev: [{{kind: rerank, "
                                            f"path: {a}}}, {{kind: rerank, path: {b}}}]}}", training=DEV_TRAINING))]


@_c("check-matryoshka-wide", "Matryoshka dimension wider than the embedding (`check`)")
def _(f, m):
    return ["check", str(recipe(f, m, training="training: {batch_size: 8, max_steps: 2, matryoshka_dims: [64, 16]}"))]


@_c("check-save-steps", "save_steps not a multiple of eval_steps with a dev set (`check`; train: a traceback)")
def _(f, m):
    recipe(f, m)
    dev = _rerank_file(f / "trecqa")
    return ["check", str(recipe(f, m, data=f"data: {{train: {{path: {f / 'sentences.txt'}}}, dev: {{kind: rerank, "
                                            f"path: {dev}}}}}",
                                training="training: {batch_size: 8, max_steps: 4, eval_steps: 2, save_steps: 3}"))]


@_c("check-dev-hub", "STS-B dev from the Hub with no network (`check`)")
def _(f, m):
    recipe(f, m)
    return ["check", str(recipe(f, m, data=f"data: {{train: {{path: {f / 'sentences.txt'}}}, dev: {{path: null}}}}",
                                training=DEV_TRAINING))]


@_c("check-hub-data-offline", "Hub dataset not in the datasets cache, HF_HUB_OFFLINE=1 (`check`)")
def _(f, m):
    ENV.update(HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(f / "datasets-cache"))
    return ["check", str(recipe(f, m, data="data: {train: {hub: someone/some-data}, dev: null}"))]


@_c("check-mteb-task", "unknown `eval.mteb` task (`check`; imports mteb)")
def _(f, m):
    return ["check", str(recipe(f, m, eval="eval: {before: false, suite: none, mteb: [STSBenchmarkk]}"))]


@_c("check-debcse-reference", "DebCSE `method.reference` that does not exist (`check`)")
def _(f, m):
    return ["check", str(recipe(f, m, method=f"method: {{name: debcse, reference: {f / 'no-such-model'}}}"))]


# encode / inspect / push ---------------------------------------------------------------------------------


@_c("encode-out-folder", "`encode -o` names a folder")
def _(f, m):
    (f / "t.txt").write_text("hello\n")
    (f / "dir.npy").mkdir()
    return ["encode", m, str(f / "t.txt"), "-o", str(f / "dir.npy")]


@_c("encode-exists", "`encode` onto an existing file without --overwrite")
def _(f, m):
    (f / "t.txt").write_text("hello\n")
    (f / "e.npy").write_bytes(b"precious")
    return ["encode", m, str(f / "t.txt"), "-o", str(f / "e.npy")]


@_c("encode-suffix", "`encode -o` without .npy")
def _(f, m):
    (f / "t.txt").write_text("hello\n")
    return ["encode", m, str(f / "t.txt"), "-o", str(f / "e.txt")]


@_c("encode-column", "`encode` of a multi-column CSV without --column")
def _(f, m):
    (f / "t.csv").write_text("a,b\nx,y\n")
    return ["encode", m, str(f / "t.csv"), "-o", str(f / "e.npy")]


@_c("inspect-empty", "`inspect MODEL \"\"`")
def _(f, m):
    return ["inspect", m, ""]


@_c("push-no-folder", "`push` of a folder that does not exist")
def _(f, m):
    return ["push", str(f / "nope"), "alice/model"]


@_c("push-bad-repo", "`push` with a malformed repo id")
def _(f, m):
    return ["push", str(f), "not a repo id"]


HOLDERS: list[subprocess.Popen] = []
ENV: dict[str, str] = {}  # extra environment a case's setup asks for (cleared after each case)


def snapshot(folder: Path) -> dict[str, str]:
    skip = (".embedkit.lock",)
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(skip)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated case names")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from tiny_model import tiny_bert

    base = Path(tempfile.mkdtemp(prefix="embedkit-bad-"))
    model = tiny_bert(base / "tiny")
    wanted = set(args.only.split(",")) if args.only else None
    rows = ["| case | input | exit | message (first line) | seconds | left as it was |", "|---|---|---|---|---|---|"]
    for case in CASES:
        if wanted and case.name not in wanted:
            continue
        folder = base / case.name
        folder.mkdir()
        argv = case.setup(folder, model)
        before = snapshot(folder)
        start = time.perf_counter()
        proc = run_cli(argv, folder, {**(case.env or {}), **ENV})
        ENV.clear()
        seconds = time.perf_counter() - start
        for holder in HOLDERS:
            holder.kill()
        HOLDERS.clear()
        after = snapshot(folder)
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("embedkit:")] or \
            [ln for ln in proc.stdout.splitlines() if ln.startswith("[embedkit]")][-1:] or ["(no message)"]
        traceback = "Traceback" in proc.stderr
        ok = "yes" if before == after else f"no: {sorted(set(after) ^ set(before))[:3]}"
        verified = True
        if case.verify is not None and proc.returncode == case.expect_rc:
            try:
                lines = [case.verify(folder)]
            except (AssertionError, OSError, ValueError, KeyError) as err:
                lines, verified = [f"wrong output: {err}"], False
            kept = all(after.get(k) == v for k, v in before.items())
            new = len(set(after) - set(before))
            ok = f"yes (wrote {new} new file{'' if new == 1 else 's'})" if kept else ok
        message = lines[0].replace(str(folder), "<tmp>").replace(str(base), "<base>").replace("|", "\\|")
        flag = "" if proc.returncode == case.expect_rc and not traceback and verified else " **(unexpected)**"
        rows.append(f"| {case.name} | {case.what} | {proc.returncode}{flag} | `{message}` | {seconds:.1f} | {ok} |")
        print(rows[-1], flush=True)
    table = "\n".join(rows)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n", encoding="utf-8")
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
