"""``embedkit data …`` sub-commands (found by ``embedkit.cli`` through :func:`add_cli`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _diagnose(args: argparse.Namespace) -> int:
    from embedkit.data.diagnose import JSON_NAME, PNG_NAME, diagnose, format_table

    out = args.out or f"diagnose-{Path(args.recipe).stem}"
    summary = diagnose(args.recipe, args.overrides, data_dir=args.data_dir, out_dir=out,
                       max_samples=args.max_samples or None, batch_size=args.batch_size, draw=not args.no_plot)
    print(f"{args.recipe}: method {summary['method']}, reference {summary['reference']}, "
          f"{summary['before']['rows']} rows, batch {summary['batch_size']}, seed {summary['seed']}")
    print(f"after debiasing, positives: {summary['after_positive_kinds']}; "
          f"hard negatives: {summary['after_negative_kinds'] or 'none'}")
    print(format_table(summary["before"], summary["after"]))
    written = [JSON_NAME] if args.no_plot else [PNG_NAME, JSON_NAME]
    print(f"wrote {', '.join(str(Path(out) / w) for w in written)}")
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``embedkit data diagnose RECIPE [--out DIR]``."""
    p = subparsers.add_parser("data", help="inspect training data")
    sub = p.add_subparsers(dest="data_command", required=True)
    d = sub.add_parser(
        "diagnose",
        help="length/surface/semantic histograms of the pairs a recipe trains on, before and after debiasing",
    )
    d.add_argument("recipe", help="recipe file, or the name of a shipped recipe")
    d.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override recipe fields")
    d.add_argument("--data-dir", help="local public-data folder")
    d.add_argument("--out", help="folder for diagnose.png and diagnose.json (default: ./diagnose-<recipe name>)")
    d.add_argument("--max-samples", type=int, default=2000,
                   help="diagnose the first N training rows (default 2000; 0: all)")
    d.add_argument("--batch-size", type=int, help="batch size of the simulated batches (default: the recipe's)")
    d.add_argument("--no-plot", action="store_true", help="numbers only, no PNG")
    d.set_defaults(func=_diagnose)
