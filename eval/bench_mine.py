"""Benchmark: embedkit's hard-negative mining against ``sentence_transformers.util.mine_hard_negatives``, same
model, same input, same settings, one process.

    python eval/bench_mine.py [--model NAME] [--data-dir ../shared/data] [--brown 2000] [--rounds 3]
                              [--trec-rounds 2] [--st-batch-size 32] [--json out.json]

Inputs: (a) TREC QA train: every (question, answer of label 1) pair, the corpus = every candidate answer of the
file (label 0 too); (b) the first ``--brown`` Brown sentences as self-pairs (anchor = positive: the pool of
positives is the corpus and each sentence's own text is its labelled positive).

Settings (both sides): 3 negatives, the top 30 candidates, ``sampling_strategy="top"``, n-tuple rows. Mining
``embedkit`` way = :func:`embedkit.mining.mine_negatives` (what ``embedkit data mine`` runs); sentence-transformers
way = ``mine_hard_negatives(..., output_format="n-tuple", use_faiss=False)``. The false-negative filter is
``max_score_ratio=0.95`` for embedkit and ``relative_margin=0.05`` for sentence-transformers: the same threshold
``p − 0.05·|p|`` when a question has one positive. With several positives sentence-transformers takes the
question's lowest positive score for every one of its rows, embedkit each row's own, so the TREC QA rows with the
filter on are compared both in full and on questions with one positive only.

The two are timed interleaved (the order alternates by round), the model loaded once before any clock starts;
best of the rounds. Overlap = share of the negatives of the rows both kept that are the same texts (as sets).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

K, RANGE_MAX, RATIO = 3, 30, 0.95


def embedkit_mine(model: Any, anchors: list[str], positives: list[str], corpus: list[str] | None, filt: bool,
                  encoder: Any = None) -> dict[tuple[str, str], list[str]]:
    from embedkit.mining import mine_negatives
    from embedkit.recipe import MineSection

    settings = MineSection(num_negatives=K, range_max=RANGE_MAX, max_score_ratio=RATIO if filt else None, seed=0)
    mined = mine_negatives(model, anchors, positives, settings, corpus, encoder=encoder, backend="torch")
    return {(a, p): n for a, p, n in zip(mined.anchors, mined.positives, mined.negatives)}


def st_mine(model: Any, anchors: list[str], positives: list[str], corpus: list[str] | None, filt: bool,
            batch_size: int, cache: str | None = None) -> dict[tuple[str, str], list[str]]:
    import datasets
    from sentence_transformers.util import mine_hard_negatives

    ds = datasets.Dataset.from_dict({"anchor": anchors, "positive": positives})
    out = mine_hard_negatives(ds, model, corpus=corpus, range_max=RANGE_MAX, num_negatives=K,
                              relative_margin=1 - RATIO if filt else None, sampling_strategy="top",
                              output_format="n-tuple", batch_size=batch_size, use_faiss=False, verbose=False,
                              cache_folder=cache)
    cols = [f"negative_{i}" for i in range(1, K + 1)]
    return {(r["anchor"], r["positive"]): [r[c] for c in cols] for r in out}


def overlap(a: dict, b: dict, only: set | None = None) -> dict[str, Any]:
    keys_a = {k for k in a if only is None or k[0] in only}
    keys_b = {k for k in b if only is None or k[0] in only}
    both = keys_a & keys_b
    same = sum(len(set(a[k]) & set(b[k])) for k in both)
    return {"rows_embedkit": len(keys_a), "rows_st": len(keys_b), "rows_both": len(both),
            "negatives_same": same, "negatives_compared": K * len(both),
            "overlap": round(same / (K * len(both)), 4) if both else None,
            "same_order_rows": sum(a[k] == b[k] for k in both)}


def timed(fn, *args, **kwargs) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def bench(name: str, model: Any, anchors: list[str], positives: list[str], corpus: list[str] | None, rounds: int,
          st_batch: int, single: set | None = None) -> dict[str, Any]:
    """Timed rounds with the filter on, then the overlaps with it on and off (off from cached embeddings)."""
    import tempfile

    import torch

    times: dict[str, list[float]] = {"embedkit": [], "sentence_transformers": []}
    results: dict[str, Any] = {}
    for r in range(rounds):
        order = ["embedkit", "sentence_transformers"] if r % 2 == 0 else ["sentence_transformers", "embedkit"]
        for who in order:
            if who == "embedkit":
                t, results[who] = timed(embedkit_mine, model, anchors, positives, corpus, True)
            else:
                t, results[who] = timed(st_mine, model, anchors, positives, corpus, True, st_batch)
            times[who].append(round(t, 2))
            print(f"[{name}] round {r + 1} {who}: {t:.1f} s", flush=True)
    best = {k: min(v) for k, v in times.items()}
    out: dict[str, Any] = {
        "rows_in": len(anchors), "unique_anchors": len(set(anchors)), "corpus": len(set((corpus or []) + positives)),
        "seconds": times, "best": best, "speedup": round(best["sentence_transformers"] / best["embedkit"], 2),
        "overlap_filter": overlap(results["embedkit"], results["sentence_transformers"]),
    }
    if single is not None:
        out["overlap_filter_one_positive_questions"] = overlap(results["embedkit"], results["sentence_transformers"],
                                                               single)
    # Filter off: both sides from one set of embeddings (each side's own encoder, cached), untimed.
    with tempfile.TemporaryDirectory() as cache:
        st_nofilter = st_mine(model, anchors, positives, corpus, False, st_batch, cache)
    from embedkit.mining import unit_vectors

    texts = list(dict.fromkeys([*anchors, *positives, *(corpus or [])]))
    table = unit_vectors(model, texts, 128, "cpu")
    row = {t: i for i, t in enumerate(texts)}

    def cached(ts: list[str]) -> torch.Tensor:
        return table[[row[t] for t in ts]]

    ours_nofilter = embedkit_mine(model, anchors, positives, corpus, False, encoder=cached)
    out["overlap_no_filter"] = overlap(ours_nofilter, st_nofilter)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--brown", type=int, default=2000, help="Brown sentences as self-pairs (0: skip)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds on Brown")
    parser.add_argument("--trec-rounds", type=int, default=2, help="timed rounds on TREC QA (0: skip)")
    parser.add_argument("--st-batch-size", type=int, default=32, help="mine_hard_negatives' batch_size (its default)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    import sentence_transformers

    from embedkit.data.ranking import read_rerank
    from embedkit.model_ref import load_model

    model, _ = load_model(args.model)
    from embedkit.encoding import encode

    encode(model, ["warm-up sentence"] * 4)  # first forward passes (allocations) before any clock
    model.encode(["warm-up sentence"] * 4)
    report: dict[str, Any] = {
        "model": args.model, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{args.threads} torch threads", "torch": torch.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "settings": {"num_negatives": K, "range_max": RANGE_MAX, "max_score_ratio": RATIO, "relative_margin": 1 - RATIO,
                     "sampling": "top", "st_batch_size": args.st_batch_size, "embedkit_batch_size": 128},
    }
    if args.brown:
        lines = Path(args.data_dir, "corpora", "brown.txt").read_text(encoding="utf-8").splitlines()
        sents = list(dict.fromkeys(s.strip() for s in lines if s.strip()))[: args.brown]
        report["brown"] = bench("brown", model, sents, sents, None, args.rounds, args.st_batch_size)
        print(json.dumps(report["brown"], indent=1), flush=True)
    if args.trec_rounds:
        trec = read_rerank(Path(args.data_dir, "rerank", "trecqa", "train.csv"))
        anchors, positives = trec.pairs()
        corpus = trec.candidates()
        single = {q.query for q in trec.queries if len(q.positives) == 1}
        report["trecqa"] = bench("trecqa", model, anchors, positives, corpus, args.trec_rounds, args.st_batch_size,
                                 single)
        print(json.dumps(report["trecqa"], indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
