"""The forgetting report (docs/continual.md): the packaged MiniLM fine-tuned on TREC QA with and without replay of
STS-B train pairs + distillation to the starting model, scored on TREC QA dev and the STS suite, over seeds.

    python eval/forgetting_report.py --data-dir ../shared/data [--rows base,plain,coconut] [--seeds 42,43,44]

Rows:

- ``base``: the packaged all-MiniLM-L6-v2, not trained (no seed);
- ``plain``: ``recipes/retrieval-trecqa-minilm.yaml`` as shipped (the retrieval report's ``filter`` row);
- ``coconut``: ``recipes/coconut-trecqa-minilm.yaml``: the same recipe plus ``data.replay`` (8 STS-B train pairs a
  step) and the ``distill`` term (1 − cosine to the frozen starting model, weight 1);
- ``pairs`` / ``pairs-coconut``: the two recipes without mined negatives (``data.train.mine=null``), the setting in
  which the retrieval report saw STS fall.

Both training rows run the same :data:`STEPS` steps as the retrieval report (eval/retrieval_report.py, whose
selection check, scoring and table helpers this script reuses): the checkpoint is selected on MAP over the recipe's
seeded 15% of the TREC QA *training* questions held out of training, and every model, the base included, is scored
by the same code on sets never selected on: TREC QA dev MAP / MRR@10 and the STS suite (SentEval "all"), with the
average over the tasks the run's training rows do not hold (the replayed STS-B train pairs count as training rows:
docs/evaluation.md#overlap-between-training-and-evaluation-data) and STS-B test on its own.

Each run's record is written to ``<work>/<row>.seed<N>.json`` as it finishes and is not run again, so an
interrupted report resumes. The table gives mean ± (max − min) / 2 over the seeds, then the goal of issue #29:
the STS average within 0.3 of the base while keeping at least 80% of the plain row's MAP gain.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "eval"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import retrieval_report as rr  # noqa: E402  (the retrieval report's helpers: same scoring, same table rules)

RETRIEVAL, COCONUT = ROOT / "recipes" / "retrieval-trecqa-minilm.yaml", ROOT / "recipes" / "coconut-trecqa-minilm.yaml"
# row → (recipe, overrides); "pairs": without mined negatives (the retrieval report's row that loses STS)
RECIPES: dict[str, tuple[Path, list[str]]] = {
    "plain": (RETRIEVAL, []), "coconut": (COCONUT, []),
    "pairs": (RETRIEVAL, ["data.train.mine=null"]), "pairs-coconut": (COCONUT, ["data.train.mine=null"]),
}
ROWS = ["base", *RECIPES]
STEPS = rr.STEPS


def run_row(name: str, seed: int | None, data_dir: str, work: Path) -> dict[str, Any]:
    if name == "base":
        return rr.run_row(name, None, None, data_dir, work)
    from sentence_transformers import SentenceTransformer

    from embedkit import train

    recipe, overrides = RECIPES[name]
    out_dir = work / f"seed{seed}" / name
    overrides = [*overrides, f"training.seed={seed}"]
    rr.check_selection(recipe, overrides, data_dir)
    started = time.time()
    results = train(str(recipe), [*overrides, f"output.dir={out_dir}", "eval.suite=none", "eval.rerank=[]",
                                  "eval.before=false", f"training.max_steps={STEPS}", "training.save_total_limit=1"],
                    data_dir=data_dir, overwrite=True).results
    seconds = time.time() - started
    started = time.time()
    model = SentenceTransformer(str(out_dir), device="cpu")
    scores = rr.score(model, data_dir, results.get("overlap") or {})
    history = [h for h in results["train"]["log_history"] if "loss_distill" in h]
    return {"row": name, "seed": seed, "seconds": round(seconds, 1), "eval_seconds": round(time.time() - started, 1),
            "steps": results["train"]["global_step"], "best_checkpoint": results["train"]["best_checkpoint"],
            "selection": rr.selection_record(results), "replay": results["train"].get("replay"),
            "distill_first_last": [history[0]["loss_distill"], history[-1]["loss_distill"]] if history else None,
            "overlap_flagged": [k for k, v in (results.get("overlap") or {}).items() if v.get("flagged")], **scores}


def stsb(r: dict[str, Any]) -> float:
    return r["full"]["sts_tasks"]["STSBenchmark"]


def table(groups: list[tuple[str, list[dict[str, Any]]]]) -> str:
    head = ("| row | seeds | selected step | selection MAP | dev MAP | dev MRR@10 | STS avg | STS clean avg (tasks) | "
            "STS-B test | train s | eval s |")
    lines = [head, "|---|---|---|" + "--:|" * 8]
    for name, runs in groups:
        clean_n = {len(r["full"].get("sts_clean_tasks") or []) for r in runs}
        lines.append("| " + " | ".join([
            name, rr.seeds_cell(runs), rr.steps_cell(runs), rr.cell(runs, lambda r: r["selection"]["best"]),
            rr.cell(runs, lambda r: r["full"]["map"]), rr.cell(runs, lambda r: r["full"]["mrr@10"]),
            rr.cell(runs, lambda r: r["full"]["sts_avg"]),
            rr.cell(runs, lambda r: r["full"]["sts_avg_clean"]) + (f" ({'/'.join(map(str, sorted(clean_n)))})"
                                                                    if runs else ""),
            rr.cell(runs, stsb), rr.cell(runs, lambda r: r["seconds"] or None, 0),
            rr.cell(runs, lambda r: r["eval_seconds"], 0)]) + " |")
    lines += goal_lines(dict(groups))
    return "\n".join(lines)


def goal_lines(groups: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Issue #29's goal for each pair of rows (without / with replay + distill), per seed and on the means: STS avg
    within 0.3 of the base, ≥ 80% of the MAP gain kept."""
    out = []
    for without, with_ in (("plain", "coconut"), ("pairs", "pairs-coconut")):
        out += _goal(groups.get("base") or [], groups.get(without) or [], groups.get(with_) or [], with_)
    return out


def _goal(base: list[dict[str, Any]], plain: list[dict[str, Any]], coco: list[dict[str, Any]],
          name: str) -> list[str]:
    if not (base and plain and coco):
        return []
    b = base[0]["full"]
    by_seed = {r["seed"]: r for r in plain}
    out = ["", f"{name}:"]
    for r in coco:
        p = by_seed.get(r["seed"])
        if p is None:
            continue
        gain, kept = p["full"]["map"] - b["map"], r["full"]["map"] - b["map"]
        ps, cs = p["full"]["sts_avg"] - b["sts_avg"], r["full"]["sts_avg"] - b["sts_avg"]
        out.append(f"seed {r['seed']}: MAP gain kept {kept:+.2f} of {gain:+.2f} ({kept / gain:.0%}); STS avg − base: "
                   f"without {ps:+.2f}, with {cs:+.2f}; STS-B test − base: without {stsb(p) - stsb(base[0]):+.2f}, "
                   f"with {stsb(r) - stsb(base[0]):+.2f}")
    mean = rr.spread
    pm, cm = mean([r["full"]["map"] for r in plain])[0], mean([r["full"]["map"] for r in coco])[0]
    cs, ps = (mean([r["full"]["sts_avg"] for r in rows])[0] for rows in (coco, plain))
    share = (cm - b["map"]) / (pm - b["map"])
    met = abs(cs - b["sts_avg"]) <= 0.3 and share >= 0.8
    out.append(f"means: MAP gain kept {share:.0%} (goal ≥ 80%), STS avg − base {cs - b['sts_avg']:+.2f} (goal within "
               f"0.3): goal {'met' if met else 'not met'}; without replay the STS avg − base is "
               f"{ps - b['sts_avg']:+.2f} ({'within' if abs(ps - b['sts_avg']) <= 0.3 else 'beyond'} 0.3)")
    return out


def main(argv: list[str] | None = None) -> int:
    return rr.report_main(__doc__, ROWS, run_row, table, Path("runs/forgetting-report"), argv)


if __name__ == "__main__":
    sys.exit(main())
