"""Encoding-speed benchmark for serving: torch fp32 against the ``embedkit export`` formats, side by side.

One process, one model (default: the packaged all-MiniLM-L6-v2), 10,000 Brown sentences (seed 1, as
``bench_train.py``'s encoding line), max length 128, batch 128, ``--threads`` threads for every backend. The
model is exported first (ONNX fp32, ONNX dynamic int8, OpenVINO fp32 where installed) into a temp folder, every
variant is loaded once, then the variants run in interleaved rounds (A B C ... A B C ...: a VM's speed drifts,
and interleaving spreads the drift over all of them); each variant's best round counts.

Variants:

* ``torch fp32 / ST.encode``: ``SentenceTransformer.encode``, the baseline every ratio is to;
* ``torch fp32 / embedkit``: the same model through embedkit's encoder (what ``embedkit encode`` runs);
* ``onnx fp32``, ``onnx int8``, ``openvino fp32``: the exported folders loaded by embedkit
  (:func:`embedkit.model_ref.load_model`), through embedkit's encoder; ``onnx int8 / ST.encode`` too, to show
  what the backend alone gives.

Then the STS suite average (SentEval protocol, the 7 tasks; ``embedkit.evaluate``) of each model, and each
variant's agreement with torch on the 10k embeddings (minimum cosine). Prints a Markdown table.

    python eval/bench_encode.py --data-dir ../shared/data [--rounds 3] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import MODEL, brown_sentences  # noqa: E402  (eval/ scripts share the sentence sample)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("EMBEDKIT_DATA", "../shared/data"))
    parser.add_argument("--model", default=MODEL, help="model folder, packaged model or Hub id")
    parser.add_argument("--n", type=int, default=10_000, help="sentences to encode (default 10,000)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--skip-sts", action="store_true", help="speed only")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    import embedkit
    from embedkit.encoding import encode
    from embedkit.export import cpu_target, export
    from embedkit.model_ref import load_model, resolve_model_path

    torch.set_num_threads(args.threads)
    data_dir = Path(args.data_dir)
    sentences = brown_sentences(data_dir, args.n, seed=1)
    source = resolve_model_path(args.model)
    workdir = Path(tempfile.mkdtemp(prefix="bench-encode-"))
    formats = [("onnx fp32", "onnx", None), ("onnx int8", "onnx", "int8")]
    try:
        import openvino  # noqa: F401

        formats.append(("openvino fp32", "openvino", None))
    except ImportError:
        print("openvino not installed: its row is skipped", file=sys.stderr)

    models: dict[str, object] = {"torch fp32": SentenceTransformer(source, device="cpu")}
    export_seconds = {}
    for name, fmt, quantize in formats:
        start = time.perf_counter()
        folder = export(source, workdir / name.replace(" ", "-"), fmt, quantize)
        export_seconds[name] = time.perf_counter() - start
        models[name] = load_model(str(folder))[0]
    for model in models.values():
        model.max_seq_length = args.max_seq_length

    def st_encode(model):
        return lambda: model.encode(sentences, batch_size=args.batch_size, convert_to_numpy=True)

    def ours(model):
        return lambda: encode(model, sentences, args.batch_size)

    variants = {"torch fp32 / ST.encode": ("torch fp32", st_encode(models["torch fp32"])),
                "torch fp32 / embedkit": ("torch fp32", ours(models["torch fp32"]))}
    for name, _, _ in formats:
        variants[name] = (name, ours(models[name]))
    variants["onnx int8 / ST.encode"] = ("onnx int8", st_encode(models["onnx int8"]))

    best = {v: float("inf") for v in variants}
    emb: dict[str, np.ndarray] = {}
    for r in range(args.rounds):
        for v, (_, run) in variants.items():
            start = time.perf_counter()
            out = run()
            seconds = time.perf_counter() - start
            best[v] = min(best[v], seconds)
            emb.setdefault(v, np.asarray(out, dtype=np.float32))
            print(f"round {r + 1} {v}: {seconds:.1f} s", file=sys.stderr, flush=True)

    ref = emb["torch fp32 / ST.encode"]

    def min_cos(a: np.ndarray) -> float:
        return float(((a * ref).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(ref, axis=1)).min())

    sts = {}
    if not args.skip_sts:
        for name, model in models.items():
            start = time.perf_counter()
            sts[name] = embedkit.evaluate(model, suite="sts", data_dir=str(data_dir))["avg"]
            print(f"STS {name}: {sts[name]:.2f} ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)

    base = best["torch fp32 / ST.encode"]
    rows = []
    for v, (model_name, _) in variants.items():
        rows.append({"variant": v, "seconds": best[v], "sent_per_s": args.n / best[v], "ratio": base / best[v],
                     "min_cos_vs_torch": min_cos(emb[v]), "sts_avg": sts.get(model_name),
                     "sts_delta": (sts[model_name] - sts["torch fp32"]) if sts else None})
    load = open("/proc/loadavg").read().split()[:3] if Path("/proc/loadavg").exists() else []
    meta = {"model": args.model, "n": args.n, "rounds": args.rounds, "threads": args.threads,
            "batch_size": args.batch_size, "max_seq_length": args.max_seq_length, "int8_target": cpu_target(),
            "export_seconds": export_seconds, "loadavg_at_end": load, "torch": torch.__version__}
    print(f"\n{args.n:,} Brown sentences, max length {args.max_seq_length}, batch {args.batch_size}, "
          f"{args.threads} threads, best of {args.rounds} interleaved rounds; int8 preset {cpu_target()}; "
          f"load average at the end {' '.join(load)}\n")
    print("| variant | s | sent/s | × ST.encode (torch fp32) | min cos vs torch | STS avg | Δ STS |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        s_avg = f"{row['sts_avg']:.2f}" if row["sts_avg"] is not None else "-"
        delta = f"{row['sts_delta']:+.2f}" if row["sts_delta"] is not None else "-"
        print(f"| {row['variant']} | {row['seconds']:.1f} | {row['sent_per_s']:.0f} | {row['ratio']:.2f} | "
              f"{row['min_cos_vs_torch']:.4f} | {s_avg} | {delta} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
