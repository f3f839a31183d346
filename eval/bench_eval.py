"""Benchmark: embedkit's STS suite against mteb.evaluate and a naive loop, same model, same 7 tasks, one process.

    python eval/bench_eval.py [--model PATH] [--data-dir ../shared/data] [--batch-size 128] [--json out.json]

(a) ``embedkit.evaluate(model, "sts")``: every unique sentence once, tokenised once, batched by length.
(b) ``mteb.evaluate`` on the same tasks read from the local folder (embedkit's local mteb task classes;
    SICK-R as ``SICK-R-test``, the SentEval test split, so the data is identical), no result cache.
(c) A naive loop: per task, ``model.encode`` on each column separately, cosine, Spearman.

The model is loaded once, before the clocks start; each timing includes reading the data files. Prints the
wall time of each, the ratios, and the 7 scores side by side (they should agree within 0.01).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np


def _naive(model, data_dir: str, batch_size: int) -> dict[str, float]:
    from scipy.stats import spearmanr

    from embedkit.evaluation.sts import TASKS, load_local, sts_root

    root = sts_root(data_dir)
    out = {}
    for name in TASKS:
        pairs = load_local(root, (name,)).tasks[name]
        a = model.encode(pairs.sentences1, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
        b = model.encode(pairs.sentences2, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
        out[name] = 100 * float(spearmanr((a * b).sum(axis=1), pairs.scores).statistic)
    return out


def _mteb(model, data_dir: str, batch_size: int) -> dict[str, float]:
    from embedkit.evaluation.mteb_eval import import_mteb
    from embedkit.evaluation.mteb_tasks import SENTEVAL_SICK, local_task
    from embedkit.evaluation.sts import TASKS, sts_root

    mteb = import_mteb()
    from mteb.models import ModelMeta, SentenceTransformerEncoderWrapper

    root = sts_root(data_dir)
    names = [n if n != "SICK-R" else SENTEVAL_SICK for n in TASKS]
    tasks = [local_task(n, root) for n in names]
    wrapper = SentenceTransformerEncoderWrapper(model)
    wrapper.mteb_model_meta = ModelMeta.create_empty(overwrites={"name": "bench/model", "revision": "bench"})
    result = mteb.evaluate(wrapper, tasks, cache=None, encode_kwargs={"batch_size": batch_size},
                           show_progress_bar=False, co2_tracker=False, overwrite_strategy="always")
    scores = {r.task_name: 100 * float(r.get_score()) for r in result.task_results}
    return {n: scores[m] for n, m in zip(TASKS, names, strict=True)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--data-dir", default=os.environ.get("EMBEDKIT_DATA", "../shared/data"))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--json", help="also write the measurements here")
    args = parser.parse_args(argv)

    os.environ.setdefault("MTEB_CACHE", os.path.join(tempfile.gettempdir(), "embedkit-bench-mteb"))
    import torch

    from embedkit.evaluation import evaluate
    from embedkit.evaluation.mteb_eval import import_mteb
    from embedkit.evaluation.runner import load_model, package_versions
    from embedkit.evaluation.sts import TASKS

    import_mteb()  # import cost outside the clocks
    model, spec = load_model(args.model)
    model.encode(["warm up the kernels"] * 8, batch_size=8)
    print(f"model {spec}; torch threads {torch.get_num_threads()}; batch size {args.batch_size}", flush=True)

    timings, scores = {}, {}
    t0 = time.perf_counter()
    res = evaluate(model, "sts", data_dir=args.data_dir, batch_size=args.batch_size, model_path=spec)
    timings["embedkit"] = time.perf_counter() - t0
    scores["embedkit"] = {t: res["tasks"][t]["spearman"] for t in TASKS}
    print(f"(a) embedkit suite: {timings['embedkit']:.1f} s ({res['encoding']['unique_sentences']} unique sentences)",
          flush=True)

    t0 = time.perf_counter()
    scores["mteb"] = _mteb(model, args.data_dir, args.batch_size)
    timings["mteb"] = time.perf_counter() - t0
    print(f"(b) mteb.evaluate: {timings['mteb']:.1f} s", flush=True)

    t0 = time.perf_counter()
    scores["naive"] = _naive(model, args.data_dir, args.batch_size)
    timings["naive"] = time.perf_counter() - t0
    print(f"(c) naive loop: {timings['naive']:.1f} s", flush=True)

    print()
    print(f"{'method':<10}{'wall s':>9}{'vs embedkit':>13}")
    for name, secs in timings.items():
        print(f"{name:<10}{secs:>9.1f}{secs / timings['embedkit']:>12.2f}x")
    print()
    print(f"{'task':<14}{'embedkit':>10}{'mteb':>10}{'naive':>10}")
    for t in TASKS:
        print(f"{t:<14}" + "".join(f"{scores[m][t]:>10.2f}" for m in ("embedkit", "mteb", "naive")))
    avgs = {m: float(np.mean(list(s.values()))) for m, s in scores.items()}
    print(f"{'avg':<14}" + "".join(f"{avgs[m]:>10.2f}" for m in ("embedkit", "mteb", "naive")))
    worst = max(abs(scores[m][t] - scores["embedkit"][t]) for m in ("mteb", "naive") for t in TASKS)
    print(f"\nlargest score difference from embedkit: {worst:.4f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"seconds": timings, "scores": scores, "avg": avgs, "max_abs_diff": worst,
                       "batch_size": args.batch_size, "threads": torch.get_num_threads(),
                       "unique_sentences": res["encoding"]["unique_sentences"], "versions": package_versions()},
                      fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
