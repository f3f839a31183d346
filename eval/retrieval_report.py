"""The retrieval report (docs/retrieval.md): the base model and five fine-tuning settings of
``recipes/retrieval-trecqa-minilm.yaml``, same steps, scored the same way, over one or more seeds.

    python eval/retrieval_report.py --data-dir ../shared/data [--rows base,pairs,...] [--seeds 1,2,3] [-o report.json]

Rows (each a set of recipe overrides; the recipe's own settings are "filter"):

- ``base``: the packaged all-MiniLM-L6-v2, not trained (no seed);
- ``pairs``: (question, answer) pairs only, in-batch negatives (``data.train.mine`` off);
- ``mined``: + 3 mined hard negatives per pair, no false-negative filter;
- ``filter``: + the positive-aware filter (0.95 of the row's positive score): the recipe as shipped;
- ``lora``: the recipe with LoRA (r 16, alpha 32, all linear layers, merged at the end; learning rate 2e-4);
- ``matryoshka``: the recipe with ``training.matryoshka_dims: [384, 128, 64]``.

Every training row is the recipe as shipped plus its overrides and ``training.seed``: the checkpoint is selected
on MAP over the recipe's seeded 15% of the TREC QA *training* questions held out of training
(``data.dev.split_from_train``; the slice does not depend on ``training.seed``), recorded as ``selection``. A row
whose recipe would select on anything but a held-out slice is refused (:func:`check_selection`). Every row runs
the same number of steps (:data:`STEPS`), whatever its row count.

Every model, the base included, is then scored by the same code, on sets never selected on: TREC QA dev MAP and
MRR@10 (:func:`embedkit.evaluation.ranking.score_rerank`, questions with a positive and a negative) and the STS
suite average (SentEval "all" setting) with its average over the tasks the row's training data does not hold
(``avg_clean``: :func:`embedkit.evaluation.overlap.annotate_sts` on the run's own ``results.json`` ``overlap``),
each also at 128 and 64 dimensions (first d coordinates, then normalised). The run's ``eval.suite`` is ``none``
and its ``eval.rerank`` empty, so that no model is scored twice.

Each run's record is written to ``<work>/<row>.seed<N>.json`` (the base: ``base.json``) as soon as it finishes, and
a run whose record exists is not run again, so an interrupted report resumes. The table gives, per row, the mean
over the seeds found for it and the spread, **(max − min) / 2** (half the range), with the number of seeds.
Wall time: ``train s`` is the training run (mining, the selection evaluations and saving included), ``eval s`` the
scoring.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RECIPE = ROOT / "recipes" / "retrieval-trecqa-minilm.yaml"
DIMS = [128, 64]
STEPS = 36  # the length of the earlier report (4 epochs of 270 rows); the same for every row and seed
ROWS: dict[str, list[str] | None] = {
    "base": None,
    "pairs": ["data.train.mine=null"],
    "mined": ["data.train.mine.max_score_ratio=null"],
    "filter": [],
    "lora": ["model.lora.r=16", "model.lora.alpha=32", "model.lora.merge=true", "training.learning_rate=2.0e-4"],
    "matryoshka": ["training.matryoshka_dims=[384, 128, 64]"],
}


def check_selection(recipe_path: Path, overrides: list[str], data_dir: str) -> Any:
    """The recipe with ``overrides``, refused unless every dev set it selects on is a slice held out of a training
    file (``split_from_train``): the report's test scores come from sets never selected on."""
    from embedkit.validate import load_recipe

    recipe = load_recipe(recipe_path, overrides, data_dir=data_dir, check_data=False)
    dev = recipe.data.dev
    sets = dev if isinstance(dev, list) else [dev] if dev is not None else []
    bad = [str(d.path) for d in sets if d.kind != "stsb" and d.split_from_train is None]
    if bad:
        raise SystemExit(f"{recipe_path.name} {' '.join(overrides)}: selects on {', '.join(bad)}, not on a slice "
                         "held out of training (data.dev.split_from_train); the report would test on it")
    return recipe


def selection_record(results: dict[str, Any]) -> dict[str, Any]:
    """What chose the checkpoint (``results.json`` ``dev``, role *selection*): the selected score and the final
    model's scores on the selection set(s). Never a test score."""
    dev = results.get("dev") or {}
    best = (results.get("train") or {}).get("best_dev") or {}
    return {"role": dev.get("role"), "name": dev.get("name"), "metric": dev.get("metric"),
            "rule": dev.get("rule"), "best": best.get("value"), "after": dev.get("after"),
            "split_from_train": {k: {f: v[f] for f in ("share", "seed", "unit", "held_out", "of") if f in v}
                                 for k, v in (dev.get("split_from_train") or {}).items()}}


def sts_record(sts: dict[str, Any], overlap: dict[str, Any]) -> dict[str, Any]:
    """The STS suite's average, its average over the tasks the training data does not hold (the library's
    :func:`~embedkit.evaluation.overlap.annotate_sts`), and every task's Spearman."""
    from embedkit.evaluation.overlap import annotate_sts

    annotate_sts(sts, overlap)
    return {"sts_avg": sts["avg"], "sts_avg_clean": sts["avg_clean"], "sts_clean_tasks": sts["avg_clean_tasks"],
            "sts_tasks": {t: v["spearman"] for t, v in sts["tasks"].items()}}


def score(model: Any, data_dir: str, overlap: dict[str, Any]) -> dict[str, Any]:
    """TREC QA dev MAP / MRR@10 and the STS average (and clean average), at full width and at each of :data:`DIMS`."""
    from embedkit.data.ranking import read_rerank
    from embedkit.evaluation import evaluate
    from embedkit.evaluation.ranking import score_rerank

    dev = read_rerank(Path(data_dir) / "rerank" / "trecqa" / "dev.csv")
    rr = score_rerank(model, dev, dims=DIMS)
    sts = evaluate(model, "sts", data_dir=data_dir, dims=DIMS)
    out = {"full": {"map": rr["map"], "mrr@10": rr["mrr@10"], **sts_record(sts, overlap)}}
    for d in DIMS:
        out[str(d)] = {"map": rr["dims"][str(d)]["map"], "mrr@10": rr["dims"][str(d)]["mrr@10"],
                       "sts_avg": sts["dims"][str(d)]["avg"]}
    return out


def train_rows(out_dir: Path, overrides: list[str], data_dir: str) -> int:
    """The rows the run trained on: the mined file's rows (those that kept k negatives), else the training data's
    (the held-out slice excluded)."""
    from embedkit.validate import load_recipe_with_data

    stats = out_dir / "mined" / "train.stats.json"
    if stats.exists():
        return int(json.loads(stats.read_text(encoding="utf-8"))["rows"])
    return len(load_recipe_with_data(RECIPE, overrides, data_dir=data_dir)[1])


def run_row(name: str, seed: int | None, overrides: list[str] | None, data_dir: str, work: Path) -> dict[str, Any]:
    from embedkit.modeling import build_model

    if overrides is None:  # the starting model, built as the recipe builds it (same pooling, max length)
        from embedkit.evaluation.core import load_dev, score_dev

        recipe = check_selection(RECIPE, [], data_dir)
        model = build_model(recipe.model)
        started = time.time()
        sel = score_dev(model, load_dev(recipe.data.dev, data_dir))  # the slice's score; nothing is selected
        scores = score(model, data_dir, {})
        return {"row": name, "seed": None, "seconds": 0.0, "eval_seconds": round(time.time() - started, 1),
                "steps": 0, "selection": {"role": "selection set, not selected on", "metric": recipe.data.dev.metric,
                                          "best": sel[recipe.data.dev.metric], "after": sel}, **scores}
    from sentence_transformers import SentenceTransformer

    from embedkit import train

    out_dir = work / f"seed{seed}" / name
    overrides = [*overrides, f"training.seed={seed}"]
    check_selection(RECIPE, overrides, data_dir)
    started = time.time()
    results = train(str(RECIPE), [*overrides, f"output.dir={out_dir}", "eval.suite=none", "eval.rerank=[]",
                                  "eval.before=false", f"training.max_steps={STEPS}", "training.save_total_limit=1"],
                    data_dir=data_dir, overwrite=True).results
    seconds = time.time() - started
    started = time.time()
    model = SentenceTransformer(str(out_dir), device="cpu")
    scores = score(model, data_dir, results.get("overlap") or {})
    return {"row": name, "seed": seed, "seconds": round(seconds, 1), "eval_seconds": round(time.time() - started, 1),
            "steps": results["train"]["global_step"], "train_rows": train_rows(out_dir, overrides, data_dir),
            "best_checkpoint": results["train"]["best_checkpoint"], "selection": selection_record(results),
            "overlap_flagged": [k for k, v in (results.get("overlap") or {}).items() if v.get("flagged")], **scores}


# --- seeds: mean ± (max − min) / 2 ------------------------------------------------------------------------------


def spread(values: Sequence[float | None]) -> tuple[float, float] | None:
    """Mean and half the range of the values (``None`` when there is none)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    return sum(vals) / len(vals), (max(vals) - min(vals)) / 2


def cell(runs: list[dict[str, Any]], get: Callable[[dict[str, Any]], Any], digits: int = 2) -> str:
    """``mean ± spread`` over the runs (just the value for one run)."""
    s = spread([get(r) for r in runs])
    if s is None:
        return "–"
    return f"{s[0]:.{digits}f}" if len(runs) == 1 else f"{s[0]:.{digits}f} ± {s[1]:.{digits}f}"


def seeds_cell(runs: list[dict[str, Any]]) -> str:
    seeds = [r["seed"] for r in runs if r.get("seed") is not None]
    return ",".join(str(s) for s in seeds) if seeds else "–"


def steps_cell(runs: list[dict[str, Any]]) -> str:
    """The step of each seed's selected checkpoint (``checkpoint-N``), in seed order."""
    steps = [str(r["best_checkpoint"]).rsplit("-", 1)[-1] for r in runs if r.get("best_checkpoint")]
    return ",".join(steps) if steps else "–"


def table(groups: list[tuple[str, list[dict[str, Any]]]]) -> str:
    """A Markdown table, one line per row: mean ± (max − min)/2 over its seeds."""
    head = ("| row | seeds | selected step | selection MAP (held-out train slice) | dev MAP | dev MRR@10 | STS avg | "
            "STS clean avg | MAP @128 | MAP @64 | STS @128 | STS @64 | train rows | train s | eval s |")
    lines = [head, "|---|---|---|" + "--:|" * 12]
    for name, runs in groups:
        lines.append("| " + " | ".join([
            name, seeds_cell(runs), steps_cell(runs), cell(runs, lambda r: r["selection"]["best"]),
            cell(runs, lambda r: r["full"]["map"]), cell(runs, lambda r: r["full"]["mrr@10"]),
            cell(runs, lambda r: r["full"]["sts_avg"]), cell(runs, lambda r: r["full"]["sts_avg_clean"]),
            cell(runs, lambda r: r["128"]["map"]), cell(runs, lambda r: r["64"]["map"]),
            cell(runs, lambda r: r["128"]["sts_avg"]), cell(runs, lambda r: r["64"]["sts_avg"]),
            cell(runs, lambda r: r.get("train_rows"), 0), cell(runs, lambda r: r["seconds"] or None, 0),
            cell(runs, lambda r: r["eval_seconds"], 0)]) + " |")
    return "\n".join(lines)


def base_record(recipe: Path, data_dir: str, score: Callable[[Any, str], dict[str, Any]]) -> dict[str, Any]:
    """The ``base`` row of a report: the recipe's starting model, built as the recipe builds it (its pooling and
    max length), not trained, scored by ``score(model, data_dir)``."""
    from embedkit.modeling import build_model
    from embedkit.validate import load_recipe

    model = build_model(load_recipe(recipe, [], data_dir=data_dir, check_data=False).model)
    started = time.time()
    return {"row": "base", "seed": None, "seconds": 0.0, **score(model, data_dir),
            "eval_seconds": round(time.time() - started, 1)}


def record_path(work: Path, name: str, seed: int | None) -> Path:
    return work / (f"{name}.json" if seed is None else f"{name}.seed{seed}.json")


def collect(work: Path, names: list[str]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Every finished run of the named rows in ``work`` (each seed found), in row order."""
    groups = []
    for name in names:
        runs = [json.loads(p.read_text(encoding="utf-8")) for p in
                sorted(work.glob(f"{name}.json")) + sorted(work.glob(f"{name}.seed*.json"))]
        groups.append((name, sorted(runs, key=lambda r: r.get("seed") or 0)))
    return groups


def report_main(doc: str, rows: list[str], run_row: Callable[[str, int | None, str, Path], dict[str, Any]],
                table: Callable[[list[tuple[str, list[dict[str, Any]]]]], str], work: Path,
                argv: list[str] | None = None, seedless: Sequence[str] = ("base",)) -> int:
    """The command line of a report script: run the chosen rows for each seed (seed by seed, rows in order:
    ``run_row(name, seed, data_dir, work)``; a ``seedless`` row once, seed ``None``), write each run's record as
    it finishes and skip a run whose record exists; print the table of every finished run of the chosen rows."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="the public-data folder (sts/, rerank/trecqa)")
    parser.add_argument("--rows", default=",".join(rows), help=f"comma-separated subset of {', '.join(rows)}")
    parser.add_argument("--seeds", default="42", help="comma-separated training.seed values (default: the recipe's 42)")
    parser.add_argument("--work", type=Path, default=work, help="output folders and each run's record")
    parser.add_argument("--table-only", action="store_true", help="run nothing: the table of the finished runs")
    parser.add_argument("-o", "--output", type=Path, help="also write every finished run of the rows as JSON here")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.rows.split(",") if n.strip()]
    unknown = [n for n in names if n not in rows]
    if unknown:
        parser.error(f"unknown row(s) {', '.join(unknown)}; expected some of {', '.join(rows)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    args.work.mkdir(parents=True, exist_ok=True)
    todo = [(n, None) for n in names if n in seedless] + [(n, s) for s in seeds for n in names if n not in seedless]
    for name, seed in [] if args.table_only else todo:
        path = record_path(args.work, name, seed)
        if path.exists():
            print(f"{path}: done before, skipped", flush=True)
            continue
        record = run_row(name, seed, args.data_dir, args.work)
        tmp = path.with_suffix(".json.partial")
        tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")
        tmp.replace(path)
        print(table([(name, [record])]).splitlines()[-1], flush=True)
    groups = collect(args.work, names)
    if args.output:
        args.output.write_text(json.dumps({n: r for n, r in groups}, indent=2), encoding="utf-8")
    print()
    print(table(groups))
    return 0


def main(argv: list[str] | None = None) -> int:
    return report_main(__doc__, list(ROWS),
                       lambda name, seed, data_dir, work: run_row(name, seed, ROWS[name], data_dir, work),
                       table, Path("runs/retrieval-report"), argv)


if __name__ == "__main__":
    sys.exit(main())
