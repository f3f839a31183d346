"""Reproduce the paper recipes: train each, evaluate it on the STS suite, and print the published target next to
the measured number, per task.

Every recipe with a ``target:`` block (the published numbers, the protocol, the source table) is a paper recipe.
A full run needs a GPU and the Hub (bert-base-uncased, the training sets); the STS data comes from ``--data-dir``
(or ``$EMBEDKIT_DATA``) when given, else from the Hub.

    python eval/reproduce.py --dry-run                     # validate every paper recipe and print the plan
    python eval/reproduce.py                               # train + evaluate every paper recipe
    python eval/reproduce.py simcse-unsup-bert-base --data-dir ../shared/data [key.sub=value ...]
    python eval/reproduce.py contriever-bert-base --beir /path/to/beir   # a retrieval target: BEIR folders in DIR

``--dry-run`` validates each recipe (schema, method keys, target) without the data and model checks that need
the Hub, and prints one line per recipe: name, method, model, data, target average.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from embedkit.recipe import RECIPES_DIR, TARGET_TASKS  # noqa: E402
from embedkit.validate import load_recipe  # noqa: E402


def paper_recipes(folder: Path = RECIPES_DIR) -> list[Path]:
    """The shipped recipes that carry a ``target:`` block (read without validating)."""
    import yaml

    out = []
    for file in sorted(folder.glob("*.yaml")):
        raw = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        if isinstance(raw, dict) and raw.get("target") is not None:
            out.append(file)
    return out


def _data(recipe: Any) -> str:
    src = recipe.data.train
    if src.hub and not src.path:
        return f"hub:{src.hub}" + (f"/{src.data_files}" if src.data_files else "") + f" ({src.split})"
    return src.path or ""


def plan(recipes: list[str], overrides: list[str] | None = None) -> list[dict[str, Any]]:
    """Validate each recipe (no data or Hub check) and return one row per recipe for the plan."""
    rows = []
    for name in recipes:
        recipe = load_recipe(name, overrides, check_data=False)
        target = recipe.target
        rows.append({
            "recipe": Path(name).stem, "method": recipe.method.name, "model": recipe.model.name,
            "data": _data(recipe), "target_avg": target.avg if target else None,
            "target_retrieval": target.retrieval.model_dump() if target and target.retrieval else None,
            "target_tasks": dict(target.tasks) if target else {}, "source": target.source if target else None,
        })
    return rows


def format_plan(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'recipe':28} {'method':14} {'model':20} {'target avg':>10}  data"]
    for r in rows:
        avg = f"{r['target_avg']:.2f}" if r["target_avg"] is not None else "-"
        if r.get("target_retrieval"):  # e.g. "BEIR ndcg@10 37.70" in place of an STS average
            ret = r["target_retrieval"]
            avg = f"{ret['benchmark']} {ret['metric']} {ret['avg']:.2f}"
        lines.append(f"{r['recipe']:28} {r['method']:14} {r['model']:20} {avg:>10}  {r['data']}")
    return "\n".join(lines)


def compare(target: Any, sts: dict[str, Any]) -> list[tuple[str, float | None, float | None, float | None]]:
    """(task, target, measured, measured − target) per STS task and for the average."""
    out = []
    tasks = sts.get("tasks", {})
    for task in (*TARGET_TASKS, "avg"):
        want = target.avg if task == "avg" else target.tasks.get(task)
        got = sts.get("avg") if task == "avg" else tasks.get(task, {}).get("spearman")
        diff = got - want if got is not None and want is not None else None
        out.append((task, want, got, diff))
    return out


def beir_folders(root: Path, split: str = "test") -> list[Path]:
    """The BEIR dataset folders directly inside ``root`` (each with corpus.jsonl, queries.jsonl, qrels/<split>.tsv)."""
    found = sorted(d for d in root.iterdir()
                   if (d / "corpus.jsonl").is_file() and (d / "qrels" / f"{split}.tsv").is_file())
    if not found:
        raise SystemExit(f"error: {root}: no BEIR folder (corpus.jsonl, queries.jsonl, qrels/{split}.tsv) inside")
    return found


def retrieval_overrides(folders: list[Path], split: str = "test") -> list[str]:
    """The override that makes a run score ``folders`` after training (``eval.retrieval``)."""
    entries = ", ".join(f'{{path: "{f}", split: {split}}}' for f in folders)
    return [f"eval.retrieval=[{entries}]"]


def compare_retrieval(target: Any, retrieval: dict[str, Any]) -> list[tuple]:
    """(row, target, measured, diff): each dataset's score of the target's metric, then the average over them."""
    metric, rows = target.metric, []
    scores = [(name, res[metric]) for name, res in sorted(retrieval.items()) if metric in res]
    rows += [(name, None, score, None) for name, score in scores]
    got = sum(v for _, v in scores) / len(scores) if scores else None
    label = f"{target.benchmark} avg ({len(scores)})"
    rows.append((label, target.avg, got, got - target.avg if got is not None else None))
    return rows


def format_comparison(name: str, rows: list[tuple]) -> str:
    def f(x: float | None, sign: bool = False) -> str:
        return "-" if x is None else (f"{x:+.2f}" if sign else f"{x:.2f}")

    lines = [f"{name}", f"  {'task':14} {'target':>8} {'measured':>9} {'diff':>7}"]
    for task, want, got, diff in rows:
        lines.append(f"  {task:14} {f(want):>8} {f(got):>9} {f(diff, True):>7}")
    return "\n".join(lines)


def reproduce(recipes: list[str], overrides: list[str], data_dir: str | None, out: Path | None,
              beir: Path | None = None) -> int:
    from embedkit import train

    reports = {}
    for name in recipes:
        recipe = load_recipe(name, overrides, data_dir, check_data=False)
        wants_beir = recipe.target is not None and recipe.target.retrieval is not None
        if wants_beir and beir is None:
            print(f"{name}: its target is a {recipe.target.retrieval.benchmark} retrieval average; give --beir DIR "
                  "(a folder of BEIR dataset folders) to measure it")
            return 2
        run_overrides = overrides + (retrieval_overrides(beir_folders(beir)) if wants_beir else [])
        recipe = load_recipe(name, run_overrides, data_dir)  # the full check, data and Hub included
        if (recipe.target is not None and (recipe.target.tasks or recipe.target.avg is not None)
                and recipe.eval.suite != "sts"):
            print(f"{name}: eval.suite is {recipe.eval.suite!r}; the targets are STS numbers: set eval.suite: sts")
            return 2
        results = train(name, run_overrides, data_dir=data_dir)
        rows = []
        if recipe.target is not None and (recipe.target.tasks or recipe.target.avg is not None):
            rows += compare(recipe.target, results.get("sts", {}))
        if wants_beir:
            rows += compare_retrieval(recipe.target.retrieval, results.get("retrieval", {}))
        reports[Path(name).stem] = {"target": recipe.target.model_dump() if recipe.target else None,
                                    "rows": rows, "output": recipe.output.dir}
        print(format_comparison(Path(name).stem, rows), flush=True)
    print()
    for stem, report in reports.items():
        print(format_comparison(stem, report["rows"]))
    if out is not None:
        out.write_text(json.dumps(reports, indent=2, default=str), encoding="utf-8")
        print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("args", nargs="*", metavar="RECIPE | key.sub=value",
                        help="recipes (default: every shipped recipe with a target) and overrides for all of them")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the plan; train nothing")
    parser.add_argument("--data-dir", help="local public-data folder (STS suite, STS-B dev)")
    parser.add_argument("--out", type=Path, help="also write the comparison as JSON here")
    parser.add_argument("--beir", type=Path,
                        help="folder of BEIR dataset folders, for a recipe with a retrieval target")
    args = parser.parse_args(argv)
    overrides = [a for a in args.args if "=" in a]
    recipes = [a for a in args.args if "=" not in a] or [str(p) for p in paper_recipes()]
    from embedkit.errors import EmbedkitError

    try:
        if args.dry_run:
            print(format_plan(plan(recipes, overrides)))
            return 0
        return reproduce(recipes, overrides, args.data_dir, args.out, args.beir)
    except EmbedkitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
