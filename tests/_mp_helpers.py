"""Helpers for tests that train in other processes: tiny recipes, the CLI in a subprocess, ``torchrun``,
SIGKILL right after the first complete checkpoint, an injected NaN loss, and weight comparisons.

Import from a test module with ``from _mp_helpers import ...`` (pytest puts ``tests/`` on ``sys.path``).

**Covering a new method** takes one entry in :data:`TRAIN_DATA` (the function that writes a small training
file in the columns the method reads; give extra recipe keys in :data:`METHOD_PARAMS` if the defaults do
not fit a 48-row run), then its name in the ``parametrize`` lists of ``test_distributed.py`` /
``test_resume.py``. Method state (anything of the loss outside ``model.*``: heads, momentum encoders,
queues) is compared automatically through the checkpoints' ``embedkit_method_state.safetensors``.

Run as a script, this file is a thin wrapper around ``embedkit`` with two test-only switches (used under a
plain ``python`` or under ``torchrun``)::

    python tests/_mp_helpers.py [--sigkill-after-save] [--nan-at-step N] embedkit train RECIPE ...

``--sigkill-after-save`` kills the process with SIGKILL from the trainer's ``on_save`` callback, i.e. right
after the first checkpoint (and its completion marker) is on disk; ``--nan-at-step N`` multiplies the loss
of optimizer step N by NaN, below the loss guard, so the guard sees what a diverging run would produce.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve()

# ----------------------------------------------------------------------------------------------------------
# Training data per method: one small file in the columns the method reads.

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def write_sentences(folder: Path, n: int = 48) -> Path:
    """``n`` distinct sentences, one a line (single-column methods)."""
    path = Path(folder) / "sentences.txt"
    lines = [f"the {WORDS[i % 12]} of {WORDS[(i * 7) % 12]} is number {i}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_triples(folder: Path, n: int = 48) -> Path:
    """``n`` (anchor, positive, hard negative) rows as CSV with a header (supervised SimCSE and the like)."""
    path = Path(folder) / "triples.csv"
    rows = ["sent0,sent1,hard_neg"]
    for i in range(n):
        a, b = WORDS[i % 12], WORDS[(i * 5 + 3) % 12]
        rows.append(f"the {a} sees {b} number {i},a {a} is looking at {b} {i},the {b} never met any {a} {i + 7}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def write_query_passages(folder: Path, n: int = 48) -> Path:
    """``n`` (query, passage, two negatives) rows as CSV with a header (``contrastive``); every fourth query is
    asked twice (two rows, two passages) and the first negative of a row is often another row's passage, so
    ``no_duplicates`` has rows to keep apart."""
    path = Path(folder) / "query_passages.csv"
    rows = ["query,passage,neg_a,neg_b"]

    def words(i: int) -> tuple[int, str, str]:
        q = i - 1 if i % 4 == 1 else i
        return q, WORDS[q % 12], WORDS[(q * 5 + 3) % 12]

    def passage(i: int) -> str:
        _, a, b = words(i)
        return f"the {a} meets {b} at place {i}"

    for i in range(n):
        q, a, b = words(i)
        negative = passage((i + 3) % n) if i % 2 else f"a {b} and a {a} parted at {i + 5}"
        rows.append(f"where does the {a} meet {b} {q},{passage(i)},{negative},no {a} was seen near {b} {i + 5}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def write_scored_pairs(folder: Path, n: int = 48) -> Path:
    """``n`` (sentence1, sentence2, score) rows as CSV with a header (CoSENT)."""
    path = Path(folder) / "pairs.csv"
    rows = ["s1,s2,score"] + [f"the {WORDS[i % 12]} runs {i},a {WORDS[(i * 5) % 12]} walks {i},{(i * 7) % 6}"
                              for i in range(n)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def write_documents(folder: Path, n: int = 8, sentences: int = 4) -> Path:
    """``n`` blank-line separated documents of ``sentences`` sentences each (``ccp``: with its default window of
    2, 10 rows a document, so most batches hold several rows of one document)."""
    path = Path(folder) / "documents.txt"
    docs = [" ".join(f"The {WORDS[(d * 5 + j) % 12]} of story {d} moves {j} steps." for j in range(sentences))
            for d in range(n)]
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


TRAIN_DATA: dict[str, Callable[[Path], Path]] = {
    "simcse-unsup": write_sentences,
    "simcse-sup": write_triples,
    "esimcse": write_sentences,
    "contriever": write_sentences,
    "debcse": write_sentences,
    "text2token": write_sentences,
    "cosent": write_scored_pairs,
    "contrastive": write_query_passages,
    "ccp": write_documents,
    "st-loss": write_query_passages,  # with MultipleNegativesRankingLoss (METHOD_PARAMS)
    "self-pairs": write_sentences,
}
"""Method name → writer of a small training file for it. Add one line per new method."""

METHOD_PARAMS: dict[str, dict[str, Any]] = {
    "esimcse": {"queue_size": 16},
    "contriever": {"queue_size": 16},
    # Re-mine every 5 steps: rows drawn at step 5 are live at the step-8 checkpoint, re-drawn again at 10.
    "debcse": {"k": 4, "views": ["crop"], "remine_every": 5, "temperature": 0.5},
    # Stage 2 (model-derived targets) starts at step 6, before the step-8 checkpoint.
    "text2token": {"stage2_step": 6, "mixture": 0.5, "infonce_weight": 0.1, "temperature": 0.5},
    "st-loss": {"loss": "MultipleNegativesRankingLoss", "kwargs": {"scale": 20.0}},
    # Every one-to-one pair of the random tiny model (no threshold, no surface filter: the sentences differ in a
    # word or two); mined again at steps 4 and 8, so the step-8 checkpoint falls on a round boundary.
    "self-pairs": {"k": 3, "threshold": None, "max_surface_similarity": None, "remine_every": 4, "temperature": 0.5},
}
"""Method name → extra ``method:`` keys for tiny runs (e.g. a queue size that fits a 48-row dataset)."""


def spread_tiny_model(src: str, dst: Path, initializer_range: float = 0.2, seed: int = 0) -> str:
    """The tiny BERT at ``src`` (same config and tokenizer) re-initialised with a wider weight spread.

    With the default init (std 0.02) every sentence gets almost the same [CLS] vector, the contrastive
    gradients are near zero and Adam turns float rounding into visible weight differences; comparisons of
    two training set-ups need sentences the model can tell apart."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    config = BertConfig.from_pretrained(src)
    config.initializer_range = initializer_range
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(str(dst))
    AutoTokenizer.from_pretrained(src).save_pretrained(str(dst))
    return str(dst)


# ----------------------------------------------------------------------------------------------------------
# Recipes and processes


def write_recipe(
    folder: Path,
    model_path: str,
    method: str,
    out_dir: Path,
    training: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
    method_params: dict[str, Any] | None = None,
    name: str = "recipe.yaml",
    objective: dict[str, Any] | None = None,
    output: dict[str, Any] | None = None,
    dev: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    replay: dict[str, Any] | None = None,
) -> Path:
    """A recipe for a short run of ``method`` on the tiny model: no dev set, no final evaluation, a loss
    logged at every step, a checkpoint at the end. ``training`` / ``model`` / ``method_params`` override keys;
    ``objective`` is the recipe's objective section (extra terms). ``output``: keys of the output section
    besides ``dir``; ``None``: ``keep_checkpoints: all``, so that tests read a finished run's training state (its
    optimizer and method state), ``{}``: the defaults. ``dev``: the ``data.dev`` section (default none); ``train``: keys
    of ``data.train`` besides ``path`` (``{"streaming": True}``); ``replay``: the ``data.replay`` section (default
    none)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = TRAIN_DATA[method](folder)
    recipe = {
        "model": {"name": str(model_path), "pooling": "cls", "mlp_only_train": True, "max_seq_length": 16,
                  **(model or {})},
        "data": {"train": {"path": str(data), **(train or {})}, "dev": dev, **({"replay": replay} if replay else {})},
        "method": {"name": method, **METHOD_PARAMS.get(method, {}), **(method_params or {})},
        "training": {"batch_size": 8, "max_steps": 4, "logging_steps": 1, "learning_rate": 1e-3,
                     "save_total_limit": None, "seed": 7, **(training or {})},
        "eval": {"before": False, "suite": "none"},
        "output": {"dir": str(out_dir), **({"keep_checkpoints": "all"} if output is None else output)},
    }
    if objective is not None:
        recipe["objective"] = objective
    path = folder / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def child_env(tmp: Path, threads: int = 1) -> dict[str, str]:
    """Environment for training subprocesses: offline, ``threads`` BLAS threads each (the same in every run
    that is compared), and ``TMPDIR`` inside the test's folder (torchrun leaves ``torchelastic_*`` there)."""
    tmpdir = Path(tmp) / "tmpdir"
    tmpdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    env.update({
        "TMPDIR": str(tmpdir), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p),
    })
    return env


def _driver_args(embedkit_args: list[str], sigkill_after_save: bool, nan_at_step: int | None) -> list[str]:
    hooks = (["--sigkill-after-save"] if sigkill_after_save else []) + (
        ["--nan-at-step", str(nan_at_step)] if nan_at_step else [])
    return [str(HERE), *hooks, "embedkit", *embedkit_args]


def run_embedkit(
    args: list[str], tmp: Path, *, sigkill_after_save: bool = False, nan_at_step: int | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """``embedkit ARGS`` in a fresh single process (through this file's driver)."""
    cmd = [sys.executable, *_driver_args(args, sigkill_after_save, nan_at_step)]
    return subprocess.run(cmd, env=child_env(tmp), cwd=str(tmp), capture_output=True, text=True, timeout=timeout)


def run_torchrun(
    args: list[str], tmp: Path, nproc: int = 2, *, nan_at_step: int | None = None, timeout: float = 300,
) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node NPROC`` running ``embedkit ARGS`` (gloo on CPU)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           *_driver_args(args, False, nan_at_step)]
    return subprocess.run(cmd, env=child_env(tmp), cwd=str(tmp), capture_output=True, text=True, timeout=timeout)


def run_in_process(recipe: Path) -> dict[str, Any]:
    """``embedkit.training.run.train(recipe)`` in this process (a single-process reference run)."""
    from embedkit.training.run import train

    return train(str(recipe))


def check_ok(proc: subprocess.CompletedProcess, what: str) -> None:
    """Fail with the tail of the output when a subprocess did not succeed."""
    if proc.returncode != 0:
        tail = (proc.stdout[-3000:] + "\n---stderr---\n" + proc.stderr[-6000:])
        raise AssertionError(f"{what} exited with {proc.returncode}:\n{tail}")


# ----------------------------------------------------------------------------------------------------------
# Reading results


def load_tensors(folder: Path, skip: tuple[str, ...] = ("checkpoints", "logs")) -> dict[str, Any]:
    """Every tensor of every ``*.safetensors`` file under ``folder`` (not under ``skip``), keyed
    ``relative/file.safetensors:tensor``."""
    from safetensors.torch import load_file

    folder = Path(folder)
    out = {}
    for file in sorted(folder.rglob("*.safetensors")):
        rel = file.relative_to(folder)
        if rel.parts[0] in skip or any(part.startswith(".") for part in rel.parts):
            continue
        for key, value in load_file(str(file)).items():
            out[f"{rel}:{key}"] = value
    return out


def final_weights(out_dir: Path) -> dict[str, Any]:
    """The saved final model of a run (all modules' safetensors, not the checkpoints)."""
    weights = load_tensors(out_dir)
    if not weights:
        raise AssertionError(f"{out_dir}: no final model weights")
    return weights


def checkpoint_dirs(out_dir: Path) -> list[Path]:
    """The run's checkpoint folders, by step."""
    folders = Path(out_dir, "checkpoints").glob("checkpoint-*")
    return sorted(folders, key=lambda p: int(p.name.rsplit("-", 1)[1]))


def method_state(checkpoint: Path) -> dict[str, Any]:
    """The loss's own state saved with a checkpoint (empty when the method keeps none)."""
    from safetensors.torch import load_file

    from embedkit.training.trainer import METHOD_STATE_FILE

    file = Path(checkpoint) / METHOD_STATE_FILE
    return load_file(str(file)) if file.exists() else {}


def marker(checkpoint: Path) -> dict[str, Any]:
    """The completion marker of a checkpoint."""
    from embedkit.training.trainer import COMPLETE_MARKER

    return json.loads((Path(checkpoint) / COMPLETE_MARKER).read_text(encoding="utf-8"))


def results(out_dir: Path) -> dict[str, Any]:
    """A finished run's ``results.json``."""
    return json.loads((Path(out_dir) / "results.json").read_text(encoding="utf-8"))


def step_losses(out_dir: Path) -> dict[int, float]:
    """Training loss per logged step, from ``results.json``."""
    history = results(out_dir)["train"]["log_history"]
    return {h["step"]: h["loss"] for h in history if "loss" in h}


def max_abs_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Largest absolute difference between two equally keyed tensor dicts (fails on differing keys)."""
    if sorted(a) != sorted(b):
        raise AssertionError(f"different tensors: {sorted(set(a) ^ set(b))}")
    worst = 0.0
    for key in a:
        if a[key].shape != b[key].shape:
            raise AssertionError(f"{key}: shape {tuple(a[key].shape)} vs {tuple(b[key].shape)}")
        if a[key].numel():
            worst = max(worst, (a[key].double() - b[key].double()).abs().max().item())
    return worst


# The key bias of self-attention adds the same amount to every score of a query, so softmax cancels it and
# its exact gradient is zero: what it receives is float rounding, which differs between the two set-ups
# and which Adam scales up to ~lr-sized steps. Nothing else the encoder computes depends on it.
ZERO_GRADIENT = ("attention.self.key.bias",)
UPDATE_TOL = 0.02  # of a weight's own update, for the few Adam-amplified elements (see weights_apart)


def weights_apart(w1: dict[str, Any], w2: dict[str, Any], start: dict[str, Any],
                  tol: float) -> list[tuple[float, str]]:
    """The tensors (at most three, worst last) of two runs' final weights that are more than ``tol`` apart
    beyond what float noise explains: ``|w1 − w2|`` less ``UPDATE_TOL`` × the weight's own update
    ``|w1 − start|``, at its largest. Empty: the runs agree.

    Why the allowance: where Adam's m / sqrt(v) meets a near-zero gradient (float noise; e.g. 3e-8 against a
    tensor median of 3e-2), it turns the noise into a visible step whose size depends on the summation order
    (one process vs an all-reduce), so a handful of elements end 1e-5–1e-4 apart. A wrong gather, batch split or
    route moves weights by the whole update, not by a percent of it. ``start`` is keyed as the starting model's
    folder (``model.safetensors:name``); a routed model's keys (``route_0_Transformer/model.safetensors:name``)
    are matched by their file name and tensor. Tensors in ``ZERO_GRADIENT`` are not compared."""

    def beyond(k: str) -> float:
        base = start.get(k, start.get(k.rsplit("/", 1)[-1]))
        allowed = UPDATE_TOL * (w1[k] - base).abs() if base is not None else 0.0
        return ((w1[k] - w2[k]).abs() - allowed).max().item()

    if sorted(w1) != sorted(w2):
        raise AssertionError(f"different tensors: {sorted(set(w1) ^ set(w2))}")
    return [a for a in sorted((beyond(k), k) for k in w1 if not k.endswith(ZERO_GRADIENT)) if a[0] >= tol][-3:]


def bitwise_equal(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Keys whose tensors differ in any bit (empty list: identical)."""
    import torch

    if sorted(a) != sorted(b):
        return sorted(set(a) ^ set(b))
    return [k for k in a if not torch.equal(a[k], b[k])]


# ----------------------------------------------------------------------------------------------------------
# Kill-and-resume


def kill_resume_compare(
    tmp: Path, model_path: str, method: str, training: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None, method_params: dict[str, Any] | None = None,
    objective: dict[str, Any] | None = None, keep_checkpoints: str | None = "all",
    train: dict[str, Any] | None = None,
    replay: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``method`` three ways and compare: uninterrupted; SIGKILLed right after its first checkpoint;
    that killed run resumed with ``embedkit train --resume``. Returns what the caller asserts on:
    ``killed`` (the killed run's return code, checkpoints, the files of its newest, and whether it left a final
    model), the two
    runs' ``final_weights`` mismatches (bitwise and max abs), last-checkpoint ``method_state`` mismatches,
    final ``global_step`` of each, and per-step losses after the resume point."""
    tmp = Path(tmp)
    training = {"max_steps": 12, "save_steps": 8, "batch_size": 8, **(training or {})}
    full_dir, cut_dir = tmp / "uninterrupted", tmp / "killed"
    # all: the finished runs' last checkpoints keep their method state, compared below; None: the default
    output = {"keep_checkpoints": keep_checkpoints} if keep_checkpoints else {}
    full = write_recipe(tmp / "full", model_path, method, full_dir, training, model, method_params,
                        objective=objective, output=output, train=train, replay=replay)
    cut = write_recipe(tmp / "cut", model_path, method, cut_dir, training, model, method_params, objective=objective,
                       output=output, train=train, replay=replay)

    check_ok(run_embedkit(["train", str(full)], tmp), "uninterrupted run")
    killed = run_embedkit(["train", str(cut)], tmp, sigkill_after_save=True)
    report: dict[str, Any] = {
        "killed": {
            "returncode": killed.returncode,
            "checkpoints": [p.name for p in checkpoint_dirs(cut_dir)],
            "checkpoint_files": sorted(p.name for p in checkpoint_dirs(cut_dir)[-1].iterdir())
            if checkpoint_dirs(cut_dir) else [],
            "results_json": (cut_dir / "results.json").exists(),
            "final_model": (cut_dir / "model.safetensors").exists(),
        }
    }
    resumed = run_embedkit(["train", str(cut), "--resume"], tmp)
    check_ok(resumed, "resumed run")
    report["resume_log"] = resumed.stdout
    a, b = final_weights(full_dir), final_weights(cut_dir)
    report["weights_bitwise_mismatch"] = bitwise_equal(a, b)
    report["weights_max_abs_diff"] = max_abs_diff(a, b)
    last_a, last_b = checkpoint_dirs(full_dir)[-1], checkpoint_dirs(cut_dir)[-1]
    report["last_checkpoints"] = (last_a.name, last_b.name)
    sa, sb = method_state(last_a), method_state(last_b)
    report["method_state_keys"] = sorted(sa)
    report["method_state_bitwise_mismatch"] = bitwise_equal(sa, sb)
    report["global_step"] = (results(full_dir)["train"]["global_step"], results(cut_dir)["train"]["global_step"])
    la, lb = step_losses(full_dir), step_losses(cut_dir)
    report["losses"] = (la, lb)
    return report


# ----------------------------------------------------------------------------------------------------------
# Driver (run as a script)


# Environment variable naming a folder: the driver records there the row ids (`label` column) each process trains on.
RECORD_LABELS = "EMBEDKIT_TEST_RECORD_LABELS"


def _install_hooks(sigkill_after_save: bool, nan_at_step: int | None) -> None:
    from sentence_transformers import SentenceTransformerTrainer
    from transformers import TrainerCallback

    from embedkit.training import trainer as tr

    if sigkill_after_save:
        class SigkillAfterSave(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                sys.stdout.flush()
                os.kill(os.getpid(), signal.SIGKILL)

        init = tr.EmbedkitTrainer.__init__

        def patched_init(self, *args, **kwargs):
            init(self, *args, **kwargs)
            self.add_callback(SigkillAfterSave())

        tr.EmbedkitTrainer.__init__ = patched_init

    record = os.environ.get(RECORD_LABELS)
    if record:  # each training step's `label` column (row ids), one JSON line per step, a file per process
        compute_loss = SentenceTransformerTrainer.compute_loss

        def recording(self, model, inputs, *args, **kwargs):
            if model.training and "label" in inputs:
                rank = os.environ.get("RANK", "0")
                with open(Path(record) / f"rank{rank}.jsonl", "a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"step": self.state.global_step + 1, "rows": inputs["label"].tolist()}) + "\n")
            return compute_loss(self, model, inputs, *args, **kwargs)

        SentenceTransformerTrainer.compute_loss = recording

    if nan_at_step:
        compute = SentenceTransformerTrainer.compute_loss

        def nan_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = compute(self, model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
            if model.training and self.state.global_step + 1 == nan_at_step:
                if return_outputs:
                    return out[0] * float("nan"), out[1]
                return out * float("nan")
            return out

        SentenceTransformerTrainer.compute_loss = nan_loss


def main(argv: list[str]) -> int:
    """``[--sigkill-after-save] [--nan-at-step N] embedkit EMBEDKIT_ARGS`` (not ``--``: torchrun eats it)."""
    import argparse

    if "embedkit" not in argv:
        raise SystemExit("usage: _mp_helpers.py [--sigkill-after-save] [--nan-at-step N] embedkit EMBEDKIT_ARGS")
    split = argv.index("embedkit")
    parser = argparse.ArgumentParser(prog="_mp_helpers.py")
    parser.add_argument("--sigkill-after-save", action="store_true")
    parser.add_argument("--nan-at-step", type=int)
    opts = parser.parse_args(argv[:split])
    _install_hooks(opts.sigkill_after_save, opts.nan_at_step)
    from embedkit.cli import main as embedkit_main

    return embedkit_main(argv[split + 1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


def run_timed(args: list[str], **kwargs: Any) -> tuple[subprocess.CompletedProcess, float]:
    """``subprocess.run(args, **kwargs)`` and the CPU seconds (user + system) the child used: what a "fast"
    refusal claims, measured so that a loaded machine does not change it (wall time would)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(args, **kwargs)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return proc, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def assert_hub_refused(path: Path, message: str) -> None:
    """The recipe at ``path`` with its training data swapped for a Hub dataset is refused at validation with
    ``path:line: data.train.hub: <message>``."""
    from embedkit.errors import RecipeError
    from embedkit.validate import load_recipe

    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    raw["data"]["train"] = {"hub": "someone/dataset"}
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    try:
        load_recipe(path)
    except RecipeError as e:
        assert re.match(rf"{re.escape(str(path))}:\d+: data\.train\.hub: {message}", str(e)), str(e)
    else:
        raise AssertionError(f"{path}: a Hub dataset was accepted")


def assert_gradcache_equals_one_pass(model: Any, make_loss: Callable[..., Any], features: list, target: Any,
                                     seed: int | None = None) -> None:
    """``make_loss(mini_batch_size=3)`` (GradCache) gives the loss and every parameter's gradient that
    ``make_loss(mini_batch_size=None)`` gives in one pass. ``seed``: torch's seed before each pass (the same dropout
    masks in both)."""
    import pytest
    import torch

    def run(loss_fn: Any) -> tuple[float, dict[str, Any]]:
        model.zero_grad()
        if seed is not None:
            torch.manual_seed(seed)
        out = loss_fn(features, target)
        out.backward()
        return out.item(), {n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None}

    plain = run(make_loss(mini_batch_size=None))
    cached = run(make_loss(mini_batch_size=3))
    assert plain[0] > 0 and cached[0] == pytest.approx(plain[0], abs=1e-5)
    assert len(plain[1]) > 10
    for name, g in plain[1].items():
        torch.testing.assert_close(cached[1][name], g, atol=1e-5, rtol=1e-4, msg=name)
