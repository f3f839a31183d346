"""Pairs per second of DebCSE's surface measures on real Brown sentences.

    python eval/bench_surface.py [--pairs 50000] [--repeats 3]

Each of the first sentences of ``corpora/brown.txt`` is paired with random other Brown sentences (seeded), the
pairs tokenised once with :func:`embedkit.methods.debcse.similarity.tokens`; the script then times the token edit
distance alone (``normalized_edit_distance`` per pair) and the whole
:func:`embedkit.methods.debcse.similarity.pair_surface`, and
prints the best of ``--repeats`` runs as pairs per second.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from embedkit.methods.debcse.similarity import normalized_edit_distance, pair_surface, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", default=os.environ.get("EMBEDKIT_DATA", "/work/shared/data"))
    args = parser.parse_args()
    lines = [t.strip() for t in (Path(args.data) / "corpora" / "brown.txt").read_text("utf-8").splitlines()]
    toks = [tokens(t) for t in lines if t]
    rng = np.random.default_rng(0)
    left_idx = np.arange(args.pairs) % len(toks)
    right_idx = rng.integers(0, len(toks), args.pairs)
    left = [toks[i] for i in left_idx]
    right = [toks[i] for i in right_idx]
    mean_len = np.mean([len(t) for t in left + right])
    print(f"{args.pairs} Brown pairs, {mean_len:.1f} tokens per sentence on average")

    def best(fn) -> float:
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return args.pairs / min(times)

    edit = best(lambda: [normalized_edit_distance(a, b) for a, b in zip(left, right)])
    whole = best(lambda: pair_surface(left, right, "mean"))
    print(f"normalized_edit_distance: {edit:,.0f} pairs/s")
    print(f"pair_surface (all measures): {whole:,.0f} pairs/s")


if __name__ == "__main__":
    main()
