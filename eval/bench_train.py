"""Training-speed benchmark: embedkit's SimCSE against sentence-transformers' own, side by side.

Every configuration runs in its own subprocess (so peak memory is its own) on the same model (the packaged
all-MiniLM-L6-v2), the same Brown sentences, batch 64, max length 32, the same seed and number of steps:

* ``st-baseline``: sentence-transformers' unsupervised SimCSE: ``MultipleNegativesRankingLoss`` (scale 20) on
  a dataset whose two columns hold the same sentence, ``SentenceTransformerTrainer`` with default settings;
* ``embedkit``: ``simcse-unsup`` with its default settings (both views in one forward pass);
* ``embedkit+group``, ``embedkit+workers``, ``embedkit+bf16``, ``embedkit+group+bf16``: each speed option on
  (length-grouped batches, 2 dataloader worker processes, bf16 autocast).

It prints sentences/s, peak memory (max RSS) and STS-B dev after the steps for each, the ratios to the baseline,
training throughput as a fraction of this CPU's matrix-multiply ceiling, peak memory for batch 512 plain vs
GradCache (``training.mini_batch_size``), and encoding speed against ``SentenceTransformer.encode``.

    python eval/bench_train.py --data-dir ../shared/data [--steps 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
CONFIGS = {
    "st-baseline": {},
    "embedkit": {},
    "embedkit+group": {"training.group_by_length": True},
    "embedkit+workers": {"training.dataloader_workers": 2},
    "embedkit+bf16": {"training.precision": "bf16"},
    "embedkit+group+bf16": {"training.group_by_length": True, "training.precision": "bf16"},
}


def brown_sentences(data_dir: Path, n: int, seed: int = 0) -> list[str]:
    import random

    lines = [s.strip() for s in (data_dir / "corpora" / "brown.txt").read_text(encoding="utf-8").splitlines()]
    lines = [s for s in lines if s]
    random.Random(seed).shuffle(lines)
    return lines[:n]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def dev_spearman(model, data_dir: Path) -> float:
    from embedkit.data.sts import read_stsb
    from embedkit.evaluation.core import score_pairs

    return score_pairs(model, read_stsb(data_dir / "sts" / "stsbenchmark" / "sts-dev.csv"))["spearman"]


def run_baseline(sentences: list[str], args: argparse.Namespace, workdir: Path) -> dict:
    import datasets
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers import SentenceTransformerTrainingArguments as Args
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    from embedkit.modeling import resolve_model_path

    model = SentenceTransformer(resolve_model_path(MODEL), device="cpu")
    model.max_seq_length = 32
    ds = datasets.Dataset.from_dict({"anchor": sentences, "positive": sentences})
    targs = Args(output_dir=str(workdir), per_device_train_batch_size=64, max_steps=args.steps, seed=42,
                 save_strategy="no", report_to="none", disable_tqdm=True, logging_steps=10**6)
    trainer = SentenceTransformerTrainer(model=model, args=targs, train_dataset=ds,
                                         loss=MultipleNegativesRankingLoss(model, scale=20.0))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "model": model}


def run_embedkit(sentences: list[str], args: argparse.Namespace, workdir: Path, overrides: dict,
                 batch: int = 64) -> dict:
    import yaml

    from embedkit.training.run import train

    data = workdir / "sentences.txt"
    data.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    recipe = {
        "description": "bench", "model": {"name": MODEL, "max_seq_length": 32},
        "data": {"train": {"path": str(data)}, "dev": None}, "method": {"name": "simcse-unsup"},
        "training": {"batch_size": batch, "max_steps": args.steps, "seed": 42, "save_steps": 10**6,
                     "logging_steps": 10**6},
        "eval": {"before": False, "suite": "none"}, "output": {"dir": str(workdir / "out")},
    }
    path = workdir / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    results = train(str(path), [f"{k}={v}" for k, v in overrides.items()])
    runtime = next(e["train_runtime"] for e in results["train"]["log_history"] if "train_runtime" in e)
    from sentence_transformers import SentenceTransformer

    return {"seconds": runtime, "model": SentenceTransformer(str(workdir / "out"), device="cpu")}


def child(args: argparse.Namespace) -> None:
    """One configuration, in this process; prints one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    data_dir = Path(args.data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.child.startswith("memory:"):
            _, batch, mini = args.child.split(":")
            over = {"training.mini_batch_size": int(mini)} if int(mini) else {}
            sentences = brown_sentences(data_dir, int(batch) * args.memory_steps)
            mem_args = argparse.Namespace(**{**vars(args), "steps": args.memory_steps})
            out = run_embedkit(sentences, mem_args, work, over, batch=int(batch))
            print(json.dumps({"config": args.child, "peak_mb": peak_rss_mb(), "seconds": out["seconds"]}))
            return
        if args.child == "encode":
            print(json.dumps(bench_encode(data_dir, args)))
            return
        sentences = brown_sentences(data_dir, 64 * args.steps)
        if args.child == "st-baseline":
            out = run_baseline(sentences, args, work)
        else:
            out = run_embedkit(sentences, args, work, CONFIGS[args.child])
        n = 64 * args.steps
        print(json.dumps({
            "config": args.child, "sentences_per_s": n / out["seconds"], "seconds": out["seconds"],
            "peak_mb": peak_rss_mb(), "dev": dev_spearman(out["model"], data_dir),
            "tokens": count_tokens(out["model"], sentences),
        }))


def count_tokens(model, sentences: list[str]) -> int:
    """Non-padding tokens the training saw (each sentence is encoded twice)."""
    enc = model.tokenizer(sentences, truncation=True, max_length=32)
    return 2 * sum(len(ids) for ids in enc["input_ids"])


def bench_encode(data_dir: Path, args: argparse.Namespace) -> dict:
    from sentence_transformers import SentenceTransformer

    from embedkit.encoding import encode
    from embedkit.modeling import resolve_model_path

    sentences = brown_sentences(data_dir, 10_000, seed=1)
    model = SentenceTransformer(resolve_model_path(MODEL), device="cpu")
    model.max_seq_length = 128
    start = time.perf_counter()
    model.encode(sentences, batch_size=128)
    st = time.perf_counter() - start
    start = time.perf_counter()
    encode(model, sentences, batch_size=128)  # what `embedkit encode` runs
    ours = time.perf_counter() - start
    return {"config": "encode", "st_seconds": st, "embedkit_seconds": ours}


def matmul_ceiling(threads: int) -> dict:
    """Best GFLOP/s of square products (2048×2048) in fp32 and bf16 on ``threads`` threads.

    On CPUs without AVX-512-BF16/AMX, bf16 products are emulated and can be ~500× slower than fp32 (0.3
    GFLOP/s on the AVX2 development machine), so each dtype is first timed at 256×256 and only moved up to
    2048 when that takes under a second."""
    import torch

    torch.set_num_threads(threads)
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        for n in (256, 2048):
            a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
            a @ b  # warm-up
            best = 0.0
            for _ in range(5 if n == 2048 else 3):
                start = time.perf_counter()
                a @ b
                best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
            if 2 * 2048**3 / (best * 1e9) > 1.0:  # a 2048 product would take over a second: keep the small size
                break
        out[str(dtype).split(".")[-1]] = best
    return out


def run_child(script: str, argv: list[str]) -> dict:
    """``python SCRIPT ARGV`` in a fresh process; its last JSON line (its own peak memory, its own threads)."""
    proc = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("EMBEDKIT_DATA", "../shared/data"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--memory-steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--force-bf16", action="store_true", help="run the bf16 configurations on any CPU")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    def spawn(name: str) -> dict:
        return run_child(__file__, ["--child", name, "--data-dir", args.data_dir, "--steps", str(args.steps),
                                    "--threads", str(args.threads), "--memory-steps", str(args.memory_steps)])

    ceiling = matmul_ceiling(args.threads)
    # MiniLM-L6 without embeddings: ~10.6M weights → 6 FLOPs per weight per token (forward + backward).
    flops_per_token = 6 * 10.6e6
    print(f"matmul ceiling on {args.threads} threads: fp32 {ceiling['float32']:.0f} GFLOP/s, "
          f"bf16 {ceiling['bfloat16']:.0f} GFLOP/s")
    names = [n for n in args.configs.split(",") if n]
    if ceiling["bfloat16"] < ceiling["float32"] and not args.force_bf16:
        skipped = [n for n in names if "bf16" in n]
        names = [n for n in names if "bf16" not in n]
        if skipped:
            print(f"skipped {', '.join(skipped)}: bf16 is slower than fp32 on this CPU (no AVX-512-BF16/AMX); "
                  "precision 'auto' picks fp32 here (--force-bf16 runs them anyway)")
    rows = [spawn(name) for name in names]
    base = next((r for r in rows if r["config"] == "st-baseline"), None)
    if rows and base is None:
        raise SystemExit("the table needs st-baseline among --configs")
    if rows:
        print(f"\n{args.steps} steps, batch 64, max length 32, {args.threads} threads; sent/s counts training "
              "sentences (each is encoded twice, once per view)\n")
        print(f"{'config':<22}{'sent/s':>8}{'ratio':>7}{'peak MB':>9}{'STS-B dev':>11}{'Δdev':>7}{'% fp32 ceil':>12}")
    for r in rows:  # empty when --configs ''
        gflops = r["tokens"] / r["seconds"] * flops_per_token / 1e9
        print(f"{r['config']:<22}{r['sentences_per_s']:>8.1f}{r['sentences_per_s'] / base['sentences_per_s']:>7.2f}"
              f"{r['peak_mb']:>9.0f}{r['dev']:>11.2f}{r['dev'] - base['dev']:>+7.2f}"
              f"{100 * gflops / ceiling['float32']:>11.0f}%")
    if not args.skip_memory:
        plain, cached = spawn("memory:512:0"), spawn("memory:512:64")
        print(f"\nbatch 512, {args.memory_steps} steps: plain peak {plain['peak_mb']:.0f} MB, "
              f"GradCache (mini-batch 64) peak {cached['peak_mb']:.0f} MB "
              f"({cached['seconds'] / plain['seconds']:.2f}x the time)")
    enc = spawn("encode")
    print(f"\nencode 10,000 Brown sentences: SentenceTransformer.encode {enc['st_seconds']:.1f} s, "
          f"embedkit {enc['embedkit_seconds']:.1f} s (ratio {enc['st_seconds'] / enc['embedkit_seconds']:.2f})")


if __name__ == "__main__":
    main()
