"""The self-mined pairs report (docs/mine-pairs.md): the base model, unsupervised SimCSE, pairs mined once by the
base model + ``contrastive``, and ``self-pairs`` (mined again every 50 steps by the model being trained), on the
same 3,200 Brown sentences and steps, over one or more seeds.

    python eval/self_pairs_report.py --data-dir ../shared/data [--rows base,simcse,mined,self] [--seeds 42,43,44]

Rows:

- ``base``: the packaged all-MiniLM-L6-v2, not trained (no seed);
- ``simcse``: ``recipes/simcse-unsup-brown-minilm.yaml`` as shipped (dropout positives);
- ``mined``: the same recipe trained with ``contrastive`` (τ 0.05) on the pairs that ``embedkit data mine-pairs``
  (defaults: k 4, threshold 1.2, surface filter 0.9) finds among the recipe's 3,200 sentences with the base model,
  mined once into ``<work>/mined.jsonl``;
- ``self``: ``recipes/self-pairs-brown-minilm.yaml`` as shipped.

Every trained row: 200 steps of batch 32, lr 2e-5, checkpoint selected on STS-B dev every 50 steps (the recipes'
own selection), ``training.seed`` the seed. Every model, the base included, is then scored by the same code on
sets never selected on: the STS suite average (SentEval "all" setting, 7 tasks) and TREC QA dev reranking MAP and
MRR@10 (:func:`embedkit.evaluation.ranking.score_rerank`). Each run's record is written to
``<work>/<row>.seed<N>.json`` (the base: ``base.json``) as soon as it finishes, and a run whose record exists is not
run again (``eval/retrieval_report.py``'s :func:`report_main`), so an interrupted report resumes. The table gives
the mean over the seeds found and the sample standard deviation (± sd), with the number of seeds.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SIMCSE = ROOT / "recipes" / "simcse-unsup-brown-minilm.yaml"
SELF = ROOT / "recipes" / "self-pairs-brown-minilm.yaml"
ROWS = ["base", "simcse", "mined", "self"]


def corpus_file(data_dir: str, work: Path) -> Path:
    """The 3,200 training sentences of the SimCSE recipe (the same rows every recipe here trains on), one a line."""
    from embedkit.validate import load_recipe_with_data

    path = work / "brown3200.txt"
    if not path.exists():
        _, data = load_recipe_with_data(SIMCSE, [], data_dir=data_dir)
        texts = [str(t).replace("\n", " ") for t in next(iter(data.columns.values()))]
        tmp = path.with_suffix(".partial")
        tmp.write_text("\n".join(texts) + "\n", encoding="utf-8")
        tmp.replace(path)
    return path


def mined_pairs(data_dir: str, work: Path) -> Path:
    """``embedkit data mine-pairs`` with its defaults and the base model on the 3,200 sentences (once)."""
    from embedkit.cli import main

    out = work / "mined.jsonl"
    if not out.exists():
        code = main(["data", "mine-pairs", str(corpus_file(data_dir, work)), "--model",
                     "sentence-transformers/all-MiniLM-L6-v2", "-o", str(out), "--no-progress"])
        if code != 0:
            raise SystemExit(f"data mine-pairs exited with {code}")
    return out


def score(model: Any, data_dir: str) -> dict[str, Any]:
    """STS suite average (and each task) and TREC QA dev MAP / MRR@10."""
    from embedkit.data.ranking import read_rerank
    from embedkit.evaluation import evaluate
    from embedkit.evaluation.ranking import score_rerank

    rr = score_rerank(model, read_rerank(Path(data_dir) / "rerank" / "trecqa" / "dev.csv"))
    sts = evaluate(model, "sts", data_dir=data_dir)
    return {"sts_avg": sts["avg"], "sts_tasks": {t: v["spearman"] for t, v in sts["tasks"].items()},
            "map": rr["map"], "mrr@10": rr["mrr@10"]}


def recipe_and_overrides(name: str, data_dir: str, work: Path) -> tuple[Path, list[str]]:
    if name == "simcse":
        return SIMCSE, []
    if name == "self":
        return SELF, []
    pairs = mined_pairs(data_dir, work)
    return SIMCSE, [f'data.train={{path: "{pairs}", columns: [anchor, positive]}}',
                    "method={name: contrastive, temperature: 0.05}"]


def run_row(name: str, seed: int | None, data_dir: str, work: Path) -> dict[str, Any]:
    from sentence_transformers import SentenceTransformer

    if name == "base":
        from retrieval_report import base_record  # a sibling script: on sys.path when this file runs

        return base_record(SIMCSE, data_dir, score)
    from embedkit import train

    recipe, overrides = recipe_and_overrides(name, data_dir, work)
    out_dir = work / f"seed{seed}" / name
    started = time.time()
    results = train(str(recipe), [*overrides, f"training.seed={seed}", f"output.dir={out_dir}", "eval.suite=none",
                                  "eval.before=false", "training.save_total_limit=1"],
                    data_dir=data_dir, overwrite=True).results
    seconds = time.time() - started
    started = time.time()
    model = SentenceTransformer(str(out_dir), device="cpu")
    record = {"row": name, "seed": seed, "seconds": round(seconds, 1), **score(model, data_dir),
              "eval_seconds": round(time.time() - started, 1), "steps": results["train"]["global_step"],
              "best_checkpoint": results["train"]["best_checkpoint"],
              "selection_stsb_dev": (results["train"].get("best_dev") or {}).get("value")}
    if name == "mined":
        record["train_rows"] = sum(1 for _ in open(mined_pairs(data_dir, work), encoding="utf-8"))
    return record


def cell(runs: list[dict[str, Any]], get: Callable[[dict[str, Any]], Any], digits: int = 2) -> str:
    """``mean ± sd`` (sample standard deviation) over the runs; the value alone for one run."""
    vals = [float(v) for v in (get(r) for r in runs) if v is not None]
    if not vals:
        return "–"
    mean = sum(vals) / len(vals)
    return f"{mean:.{digits}f}" if len(vals) == 1 else f"{mean:.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def table(groups: list[tuple[str, list[dict[str, Any]]]]) -> str:
    """A Markdown table, one line per row: mean ± sd over its seeds."""
    from retrieval_report import seeds_cell, steps_cell  # a sibling script: on sys.path when this file runs

    lines = ["| row | seeds | selected step | STS avg | TREC QA dev MAP | TREC QA dev MRR@10 | train s | eval s |",
             "|---|---|---|" + "--:|" * 5]
    for name, runs in groups:
        lines.append("| " + " | ".join([
            name, seeds_cell(runs), steps_cell(runs), cell(runs, lambda r: r["sts_avg"]),
            cell(runs, lambda r: r["map"]), cell(runs, lambda r: r["mrr@10"]),
            cell(runs, lambda r: r["seconds"] or None, 0), cell(runs, lambda r: r["eval_seconds"], 0)]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from retrieval_report import report_main

    return report_main(__doc__, ROWS, run_row, table, Path("runs/self-pairs-report"), argv)


if __name__ == "__main__":
    sys.exit(main())
