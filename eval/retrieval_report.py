"""The retrieval report (docs/retrieval.md): the base model and five fine-tuning settings of
``recipes/retrieval-trecqa-minilm.yaml``, one seed each, same steps, scored the same way.

    python eval/retrieval_report.py --data-dir ../shared/data [--rows base,pairs,...] [-o report.json]

Rows (each a set of recipe overrides; the recipe's own settings are "filter"):

- ``base``: the packaged all-MiniLM-L6-v2, not trained;
- ``pairs``: (question, answer) pairs only, in-batch negatives (``data.train.mine`` off);
- ``mined``: + 3 mined hard negatives per pair, no false-negative filter;
- ``filter``: + the positive-aware filter (0.95 of the row's positive score): the recipe as shipped;
- ``lora``: the recipe with LoRA (r 16, alpha 32, all linear layers, merged at the end; learning rate 2e-4);
- ``matryoshka``: the recipe with ``training.matryoshka_dims: [384, 128, 64]``.

Every training row runs the same number of steps (:data:`STEPS`, the recipe's own), whatever its row count.
Every model, the base included, is scored by the same code after training: TREC QA dev MAP and MRR@10
(:func:`embedkit.evaluation.ranking.score_rerank`, questions with a positive and a negative) and the STS suite
average (SentEval "all" setting), each also at 128 and 64 dimensions (first d coordinates, then normalised). The
run's ``eval.suite`` is set to ``none`` so that no row is scored twice. Wall time is the training run's, mining
included, evaluation excluded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RECIPE = ROOT / "recipes" / "retrieval-trecqa-minilm.yaml"
DIMS = [128, 64]
STEPS = 36  # the recipe's own length (270 rows after mining, batches of 32 without duplicates, 4 epochs)
ROWS: dict[str, list[str] | None] = {
    "base": None,
    "pairs": ["data.train.mine=null"],
    "mined": ["data.train.mine.max_score_ratio=null"],
    "filter": [],
    "lora": ["model.lora.r=16", "model.lora.alpha=32", "model.lora.merge=true", "training.learning_rate=2.0e-4"],
    "matryoshka": ["training.matryoshka_dims=[384, 128, 64]"],
}


def score(model: Any, data_dir: str) -> dict[str, Any]:
    """TREC QA dev MAP / MRR@10 and the STS average, at full width and at each of :data:`DIMS`."""
    from embedkit.data.ranking import read_rerank
    from embedkit.evaluation import evaluate
    from embedkit.evaluation.ranking import score_rerank

    dev = read_rerank(Path(data_dir) / "rerank" / "trecqa" / "dev.csv")
    rr = score_rerank(model, dev, dims=DIMS)
    sts = evaluate(model, "sts", data_dir=data_dir, dims=DIMS)
    out = {"full": {"map": rr["map"], "mrr@10": rr["mrr@10"], "sts_avg": sts["avg"]}}
    for d in DIMS:
        out[str(d)] = {"map": rr["dims"][str(d)]["map"], "mrr@10": rr["dims"][str(d)]["mrr@10"],
                       "sts_avg": sts["dims"][str(d)]["avg"]}
    return out


def run_row(name: str, overrides: list[str] | None, data_dir: str, work: Path) -> dict[str, Any]:
    from embedkit.modeling import build_model
    from embedkit.validate import load_recipe

    if overrides is None:  # the starting model, built as the recipe builds it (same pooling, max length)
        recipe = load_recipe(RECIPE, data_dir=data_dir, check_data=False)
        return {"row": name, "seconds": 0.0, "steps": 0, **score(build_model(recipe.model), data_dir)}
    from sentence_transformers import SentenceTransformer

    from embedkit import train

    out_dir = work / name
    started = time.time()
    results = train(str(RECIPE), [*overrides, f"output.dir={out_dir}", "eval.suite=none", "eval.before=false",
                                  f"training.max_steps={STEPS}", "training.save_total_limit=1"], data_dir=data_dir)
    seconds = time.time() - started
    model = SentenceTransformer(str(out_dir), device="cpu")
    return {"row": name, "seconds": round(seconds, 1), "steps": results["train"]["global_step"],
            "best_checkpoint": results["train"]["best_checkpoint"], **score(model, data_dir)}


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'row':11} {'MAP':>6} {'MRR@10':>7} {'STS avg':>8} | {'MAP@128':>8} {'MAP@64':>7} "
            f"{'STS@128':>8} {'STS@64':>7} | {'steps':>5} {'seconds':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        f = r["full"]
        lines.append(f"{r['row']:11} {f['map']:6.2f} {f['mrr@10']:7.2f} {f['sts_avg']:8.2f} | "
                     f"{r['128']['map']:8.2f} {r['64']['map']:7.2f} {r['128']['sts_avg']:8.2f} "
                     f"{r['64']['sts_avg']:7.2f} | {r['steps']:5d} {r['seconds']:8.1f}")
    return "\n".join(lines)


def report_main(doc: str, rows: list[str], run_row: Callable[[str, str, Path], dict[str, Any]],
                table: Callable[[list[dict[str, Any]]], str], work: Path, argv: list[str] | None = None) -> int:
    """The command line of a report script: run the chosen rows in order (``run_row(name, data_dir, work)``),
    print each row as it finishes and the whole table at the end, and optionally save the rows as JSON."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="the public-data folder (sts/, rerank/trecqa)")
    parser.add_argument("--rows", default=",".join(rows), help=f"comma-separated subset of {', '.join(rows)}")
    parser.add_argument("--work", type=Path, default=work, help="output folders")
    parser.add_argument("-o", "--output", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.rows.split(",") if n.strip()]
    unknown = [n for n in names if n not in rows]
    if unknown:
        parser.error(f"unknown row(s) {', '.join(unknown)}; expected some of {', '.join(rows)}")
    done = []
    for name in names:
        done.append(run_row(name, args.data_dir, args.work))
        print(table(done[-1:]).splitlines()[-1], flush=True)
        if args.output:
            args.output.write_text(json.dumps(done, indent=2), encoding="utf-8")
    print()
    print(table(done))
    return 0


def main(argv: list[str] | None = None) -> int:
    return report_main(__doc__, list(ROWS), lambda name, data_dir, work: run_row(name, ROWS[name], data_dir, work),
                       table, Path("runs/retrieval-report"), argv)


if __name__ == "__main__":
    sys.exit(main())
