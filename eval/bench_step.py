"""One SimCSE training step, taken apart: forward + backward and optimizer time, eager against the levers.

Runs the packaged all-MiniLM-L6-v2 on Brown sentences (batch 64, both views in one forward pass, max length 32)
and prints seconds per step for each variant and its ratio to ``eager`` (foreach AdamW, no compilation):

* ``fused``: AdamW with ``fused=True`` (the transformers default optimizer, ``adamw_torch_fused``);
* ``compile``: the model under ``torch.compile(dynamic=True)`` (compile time reported separately).

Each variant runs in its own subprocess so that compiled code and allocator state do not leak between them.

    python eval/bench_step.py --data-dir ../shared/data [--steps 6] [--threads 2] [--variants eager,fused,compile]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from bench_train import MODEL, brown_sentences, run_child  # same model and sentences as the whole-run benchmark

BATCH, MAX_LEN = 64, 32


def child(variant: str, data_dir: Path, steps: int, threads: int) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    from embedkit.modeling import resolve_model_path

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = SentenceTransformer(resolve_model_path(MODEL), device="cpu")
    model.max_seq_length = MAX_LEN
    model.train()
    lines = brown_sentences(data_dir, BATCH * (3 + steps))
    fused = variant == "fused"
    opt = torch.optim.AdamW(model.parameters(), lr=3e-5, fused=fused, foreach=not fused)
    forward = torch.compile(model, dynamic=True) if variant == "compile" else model
    labels = torch.arange(BATCH)

    def step(i: int) -> tuple[float, float]:
        batch = lines[i * BATCH:(i + 1) * BATCH]
        features = model.preprocess(batch + batch)  # both views in one forward pass
        start = time.perf_counter()
        emb = torch.nn.functional.normalize(forward(features)["sentence_embedding"], dim=-1)
        loss = torch.nn.functional.cross_entropy(emb[:BATCH] @ emb[BATCH:].T * 20, labels)
        loss.backward()
        mid = time.perf_counter()
        opt.step()
        opt.zero_grad()
        return mid - start, time.perf_counter() - mid

    start = time.perf_counter()
    for i in range(3):  # warm-up (and compilation)
        step(i)
    warmup = time.perf_counter() - start
    fb = op = 0.0
    for i in range(3, 3 + steps):
        a, b = step(i)
        fb, op = fb + a, op + b
    return {"variant": variant, "fwd_bwd": fb / steps, "optimizer": op / steps, "warmup": warmup}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("EMBEDKIT_DATA", "../shared/data"))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default="eager,fused,compile")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, Path(args.data_dir), args.steps, args.threads)))
        return
    rows = [run_child(__file__, ["--child", variant, "--data-dir", args.data_dir, "--steps", str(args.steps),
                                 "--threads", str(args.threads)]) for variant in args.variants.split(",")]
    base = next((r for r in rows if r["variant"] == "eager"), rows[0])
    base_total = base["fwd_bwd"] + base["optimizer"]
    print(f"batch {BATCH} (x2 views), max length {MAX_LEN}, {args.threads} threads, {args.steps} timed steps\n")
    print(f"{'variant':<10}{'fwd+bwd s':>11}{'optim s':>9}{'step s':>8}{'speed-up':>10}{'warm-up s':>11}")
    for r in rows:
        total = r["fwd_bwd"] + r["optimizer"]
        print(f"{r['variant']:<10}{r['fwd_bwd']:>11.3f}{r['optimizer']:>9.3f}{total:>8.3f}"
              f"{base_total / total:>10.2f}{r['warmup']:>11.1f}")


if __name__ == "__main__":
    main()
