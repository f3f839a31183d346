"""Training-set scale benchmark: validation and training cost from 10k to 10M rows.

Generates (seeded) a one-sentence-a-line corpus at each size (default 10k, 100k, 1M, 10M rows, ~120 bytes a
line) and a pairs CSV (``anchor,positive``, default 1M rows), then measures, each in its own process:

* ``embedkit check`` with an empty data cache (``cold``: the file is converted) and again (``warm``: found in the
  cache): wall time and peak RSS;
* ``embedkit train`` for 20 steps (``training.max_steps``) with an empty cache (``cold``: the first run) and
  again (``warm``): the time until validation returned, the time to the first optimizer step (from process
  start), peak RSS, and the median step time of steps 5-20.

The recipe is ``simcse-unsup-brown-minilm`` (the packaged all-MiniLM-L6-v2, batch 32, max length 32) over the
generated file, every row trained on (``data.train.max_samples`` null), no dev set and no final evaluation; the
pairs file trains ``contrastive`` (in-batch negatives, ``no_duplicates`` off: the sampler is not what is
measured). It prints the table and each figure's ratio to the first (smallest) row.

    python eval/bench_scale.py [--sizes 10k,100k,1M,10M] [--pairs 1M] [--torchrun 2] [--workdir /tmp/bench-scale]
                               [--keep]

``--torchrun N`` trains each corpus once more (warm) under torchrun with N processes and sums their peak RSS.
Peak RSS is ``VmHWM`` (:func:`peak_rss_mb`); it counts the memory-mapped data pages a process touched, shared or not.
At the last step each training process also reads its proportional set size and the resident / proportional size
of its mappings of the Arrow cache (:func:`memory_now`): the Pss of two processes sum to what they hold together,
a shared data page counted once.

The corpora and the cache live under ``--workdir`` (10M rows: ~1.2 GB of text and ~1.3 GB of cache) and are
deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

T0 = time.time()  # the child's start (the interpreter's own start-up, ~50 ms, is not counted)
RECIPE = "simcse-unsup-brown-minilm"
COMMON = ["data.dev=null", "eval.before=false", "eval.suite=none", "data.train.max_samples=null"]
STEPS = 20


def parse_size(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def size_name(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1_000}k" if n % 1_000 == 0 else str(n)


def generate(path: Path, rows: int, pairs: bool = False, seed: int = 0) -> None:
    """``rows`` distinct sentences of 8-24 words from a seeded 5,000-word vocabulary (a line number makes each
    unique); ``pairs``: a CSV of (sentence, a reordering of its words)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlucmfwypvbgkqjxz"))
    vocab = ["".join(rng.choice(letters, size=int(k))) for k in rng.integers(2, 10, size=5000)]
    block = 100_000
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w", encoding="utf-8") as fh:
        if pairs:
            fh.write("anchor,positive\n")
        for start in range(0, rows, block):
            n = min(block, rows - start)
            lengths = rng.integers(8, 25, size=n)
            words = rng.integers(0, len(vocab), size=int(lengths.sum())).tolist()
            out, at = [], 0
            for i, k in enumerate(lengths.tolist()):
                w = [vocab[j] for j in words[at:at + k]]
                at += k
                text = f"{' '.join(w)} {start + i}"
                out.append(f"{text},{' '.join(reversed(w))} {start + i}" if pairs else text)
            fh.write("\n".join(out) + "\n")
    os.replace(tmp, path)


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux: ``VmHWM``, the peak of this program's own address space.
    ``ru_maxrss`` is not used there: Linux carries it across ``exec``, so a child started by a parent that had
    grown (this script, after generating a 10M-row corpus: ~200 MB) reports at least the parent's size."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 2**20)


def memory_now(cache: str | None) -> dict:
    """Now: this process's proportional set size (``Pss``: a page shared by k processes counts 1/k, so the Pss of
    processes sum to what they hold together) and the resident and proportional size of its mappings of files
    under ``cache`` (the Arrow data). Linux only; {} elsewhere."""
    out = {"pss_mb": 0.0, "data_rss_mb": 0.0, "data_pss_mb": 0.0}
    try:
        with open("/proc/self/smaps", encoding="utf-8", errors="replace") as fh:
            in_data = False
            for line in fh:
                field = line.split()
                if not field:
                    continue
                if not field[0].endswith(":") or "-" in field[0]:  # a mapping's header line: range perms ... path
                    in_data = bool(cache) and len(field) >= 6 and field[5].startswith(cache)
                elif field[0] == "Pss:":
                    out["pss_mb"] += int(field[1]) / 1024
                    if in_data:
                        out["data_pss_mb"] += int(field[1]) / 1024
                elif field[0] == "Rss:" and in_data:
                    out["data_rss_mb"] += int(field[1]) / 1024
    except OSError:
        return {}
    return out


# --- the child: one embedkit command, instrumented ----------------------------------------------------------


def child(command: str, argv: list[str]) -> None:
    """Run ``embedkit <command> argv`` and print one JSON line with what was measured."""
    from embedkit.cli import main

    record: dict = {}
    if command == "train":
        from transformers import TrainerCallback

        import embedkit.training.run as run
        from embedkit.training import trainer as trainer_mod

        stamps: list[float] = []

        class Timer(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                stamps.append(time.time())
                if state.global_step == args.max_steps:  # the data and the model are all still held here
                    record.update(memory_now(os.environ.get("EMBEDKIT_CACHE")))

        original_init = trainer_mod.EmbedkitTrainer.__init__

        def init(self, *a, **k):
            original_init(self, *a, **k)
            self.add_callback(Timer())

        trainer_mod.EmbedkitTrainer.__init__ = init
        original_load = run.load_recipe_with_data

        def load(*a, **k):
            out = original_load(*a, **k)
            record["validated_s"] = time.time() - T0
            return out

        run.load_recipe_with_data = load
    rc = main([command, *argv])
    record["rc"] = rc
    record["wall_s"] = time.time() - T0
    if command == "train" and stamps:
        record["first_step_s"] = stamps[0] - T0
        steps = [b - a for a, b in zip(stamps, stamps[1:])]  # steps[i]: the time of step i + 2
        window = steps[3:STEPS - 1]  # steps 5..20
        record["median_step_s"] = statistics.median(window) if window else None
        record["steps"] = len(stamps)
    record["rss_mb"] = peak_rss_mb()
    print("BENCH " + json.dumps(record), flush=True)


def run_child(command: str, argv: list[str], env: dict, processes: int = 1) -> dict:
    """One instrumented child (``processes`` > 1: under torchrun, and its ranks' figures are summed or maxed)."""
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    proc = subprocess.run([*launcher, __file__, "--child", command, *argv], env=env, capture_output=True, text=True)
    # Each process prints one "BENCH {json}"; under torchrun two processes' lines can share a line of the output.
    decoder, text = json.JSONDecoder(), proc.stdout
    outs = [decoder.raw_decode(text, i + 6)[0] for i in range(len(text)) if text.startswith("BENCH ", i)]
    if len(outs) != processes or any(o.get("rc") for o in outs):
        sys.exit(f"embedkit {command} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    if processes == 1:
        return outs[0]
    return {"rss_mb": sum(o["rss_mb"] for o in outs), "rss_mb_each": [o["rss_mb"] for o in outs],
            "first_step_s": max(o["first_step_s"] for o in outs),
            **{k: sum(o.get(k, 0.0) for o in outs) for k in ("pss_mb", "data_rss_mb", "data_pss_mb")}}


def measure(path: Path, work: Path, extra: list[str], cold_train: bool, processes: int = 0) -> dict:
    """check with an empty cache, check again; train with an empty cache (the first run: the file is converted
    and the overlap with the evaluation sets measured), train again (everything found in the cache); with
    ``processes``, the warm training once more under torchrun with that many processes."""
    cache = work / "cache"
    env = {**os.environ, "EMBEDKIT_CACHE": str(cache), "TOKENIZERS_PARALLELISM": "false"}
    base = [RECIPE, f"data.train.path={path}", *COMMON, *extra]
    train_args = [*base, f"training.max_steps={STEPS}", f"output.dir={work / 'out'}", "--overwrite"]
    shutil.rmtree(cache, ignore_errors=True)
    row: dict = {}
    cold = run_child("check", base, env)
    warm = run_child("check", base, env)
    row.update(check_cold_s=cold["wall_s"], check_cold_mb=cold["rss_mb"], check_warm_s=warm["wall_s"],
               check_warm_mb=warm["rss_mb"])
    if cold_train:
        shutil.rmtree(cache, ignore_errors=True)
        c = run_child("train", train_args, env)
        row.update(first_step_cold_s=c["first_step_s"], train_cold_mb=c["rss_mb"])
    t = run_child("train", train_args, env)
    row.update(validated_s=t["validated_s"], first_step_s=t["first_step_s"], train_mb=t["rss_mb"],
               median_step_s=t["median_step_s"], train_pss_mb=t.get("pss_mb"), data_rss_mb=t.get("data_rss_mb"))
    if processes > 1:
        d = run_child("train", train_args, env, processes)
        row.update(train_procs_mb=d["rss_mb"], train_procs_mb_each=d["rss_mb_each"], train_procs_pss_mb=d.get("pss_mb"),
                   procs_data_rss_mb=d.get("data_rss_mb"), procs_data_pss_mb=d.get("data_pss_mb"))
    shutil.rmtree(work / "out", ignore_errors=True)
    return row


COLUMNS = [("check_cold_s", "check cold s"), ("check_cold_mb", "check cold MB"), ("check_warm_s", "check warm s"),
           ("check_warm_mb", "check warm MB"), ("first_step_cold_s", "1st step cold s"),
           ("train_cold_mb", "train cold MB"), ("validated_s", "train: valid. s"),
           ("first_step_s", "1st step warm s"), ("train_mb", "train warm MB"), ("median_step_s", "median step s"),
           ("train_pss_mb", "train Pss MB"), ("data_rss_mb", "data Rss MB"), ("train_procs_mb", "torchrun MB, sum"),
           ("train_procs_pss_mb", "torchrun Pss sum"), ("procs_data_rss_mb", "trun data Rss"),
           ("procs_data_pss_mb", "trun data Pss")]


def table(rows: dict[str, dict]) -> str:
    keys = [k for k, _ in COLUMNS if any(k in r for r in rows.values())]
    head = f"{'rows':<10}" + "".join(f"{dict(COLUMNS)[k]:>17}" for k in keys)
    lines = [head]
    first = next(iter(rows.values()))
    for name, r in rows.items():
        lines.append(f"{name:<10}" + "".join(f"{r[k]:>17.2f}" if k in r else f"{'-':>17}" for k in keys))
    lines.append("ratio to the first row")
    for name, r in rows.items():
        lines.append(f"{name:<10}" + "".join(
            f"{r[k] / first[k]:>16.2f}x" if k in r and first.get(k) else f"{'-':>17}" for k in keys))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10k,100k,1M,10M", help="corpus sizes (rows), comma-separated")
    parser.add_argument("--pairs", default="1M", help="rows of the pairs file ('0': none)")
    parser.add_argument("--workdir", default="/tmp/bench-scale")
    parser.add_argument("--no-cold-train", action="store_true", help="skip the train run with an empty cache")
    parser.add_argument("--keep", action="store_true", help="keep the generated files and the cache")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--torchrun", type=int, default=0, metavar="N",
                        help="also train (warm) under torchrun with N processes; their peak RSS summed")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1:])
        return
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    jobs = [(size_name(parse_size(s)), parse_size(s), False) for s in args.sizes.split(",") if s.strip()]
    if parse_size(args.pairs):
        jobs.append((f"{size_name(parse_size(args.pairs))} pairs", parse_size(args.pairs), True))
    try:
        for name, rows, pairs in jobs:
            path = work / (f"pairs-{name.split()[0]}.csv" if pairs else f"corpus-{name}.txt")
            if not path.is_file():
                start = time.time()
                generate(path, rows, pairs)
                print(f"generated {path} ({path.stat().st_size / 1e6:.0f} MB) in {time.time() - start:.0f} s",
                      flush=True)
            extra = ["method.name=contrastive", "method.no_duplicates=false"] if pairs else []
            results[name] = {"rows": rows, **measure(path, work, extra, not args.no_cold_train,
                                                       0 if pairs else args.torchrun)}
            print(f"{name}: {json.dumps(results[name])}", flush=True)
            if not args.keep:
                path.unlink()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(table({k: {kk: v for kk, v in r.items() if kk not in ("rows", "train_procs_mb_each")}
                 for k, r in results.items()}))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
