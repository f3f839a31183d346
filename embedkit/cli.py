"""``embedkit`` command line: a thin dispatcher; each sub-command calls one function of the package."""

from __future__ import annotations

import argparse
import sys

from embedkit.cliargs import add_no_progress
from embedkit.data import cache
from embedkit.encode import add_cli as add_encode
from embedkit.errors import EmbedkitError
from embedkit.evaluation.cli import add_cli as add_eval
from embedkit.evaluation.overlap import add_cli as add_overlap
from embedkit.export import add_cli as add_export
from embedkit.hub import add_cli as add_push
from embedkit.merging import add_cli as add_merge
from embedkit.methods.debcse.diagnose import add_cli as add_diagnose
from embedkit.methods.text2token.inspect import add_cli as add_inspect
from embedkit.outputs import filesystem_fault
from embedkit.recipe import copy_recipe, list_recipes, recipe_to_yaml
from embedkit.sweep import add_cli as add_sweep
from embedkit.training.mine import add_cli as add_mine
from embedkit.training.mine_pairs import add_cli as add_mine_pairs
from embedkit.training.run import SETUP_CHECKS, check_reserve, train
from embedkit.validate import load_recipe, load_recipe_with_data
from embedkit.version import __version__


def _train(args: argparse.Namespace) -> int:
    train(args.recipe, args.overrides, data_dir=args.data_dir, resume=args.resume, overwrite=args.overwrite,
          progress=args.progress)
    return 0


def _check(args: argparse.Namespace) -> int:
    with cache.until_accepted():  # a converted training file is kept in the data cache only if not refused
        recipe, data = load_recipe_with_data(args.recipe, args.overrides, data_dir=args.data_dir,
                                             checks=SETUP_CHECKS)
        check_reserve(recipe, data, resume=args.resume, overwrite=args.overwrite)  # what train refuses: output.dir
    rows = f", {len(data)} training rows" if data is not None else ""
    print(f"{args.recipe}: valid (method {recipe.method.name}{rows})")
    return 0


def _recipes(args: argparse.Namespace) -> int:
    if args.recipes_command == "cp":
        print(f"copied {args.name} to {copy_recipe(args.name, args.dest, args.overwrite)}")
        return 0
    if args.recipes_command == "show":  # as results/recipe.yaml records it; the data is not read
        recipe = load_recipe(args.recipe, args.overrides, data_dir=args.data_dir, check_data=False)
        sys.stdout.write(recipe_to_yaml(recipe))
        return 0
    for name, desc in list_recipes():
        short = desc if len(desc) <= 88 else desc[:87].rstrip() + "…"
        print(f"{name:<32} {short}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: one static table of commands. Each module below registers the commands it runs
    with ``add_cli``; none of them imports torch or another heavy library at module level, so a bad recipe is
    still reported in well under 3 seconds."""

    parser = argparse.ArgumentParser(prog="embedkit", description="Train and evaluate sentence embeddings.")
    parser.add_argument("--version", action="version", version=f"embedkit {__version__}",
                        help="print embedkit's version and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="run a recipe end to end")
    p.add_argument("recipe", help="recipe file, or the name of a shipped recipe")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override recipe fields")
    p.add_argument("--data-dir", help="local public-data folder (default: $EMBEDKIT_DATA, data/public, ../shared/data)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest intact checkpoint in output.dir (a finished run is left as is)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier embedkit run in output.dir, once the new run has finished")
    add_no_progress(p, "training (outside a terminal: no plain progress lines either)")
    p.set_defaults(func=_train)

    p = sub.add_parser("check", help="validate a recipe and its data without training (refuses what train refuses)")
    p.add_argument("recipe", help="recipe file, or the name of a shipped recipe")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override recipe fields")
    p.add_argument("--data-dir", help="local public-data folder (default: $EMBEDKIT_DATA, data/public, ../shared/data)")
    p.add_argument("--resume", action="store_true", help="check output.dir as train --resume would")
    p.add_argument("--overwrite", action="store_true", help="check output.dir as train --overwrite would")
    p.set_defaults(func=_check)

    p = sub.add_parser("recipes", help="list the shipped recipes; copy one (cp) or print one resolved (show)")
    p.set_defaults(func=_recipes)
    rsub = p.add_subparsers(dest="recipes_command", metavar="{cp,show}", help="without one: list them")
    q = rsub.add_parser("cp", help="copy a shipped recipe to edit it")
    q.add_argument("name", help="a shipped recipe's name (embedkit recipes lists them)")
    q.add_argument("dest", help="file to write, or a folder (existing, or ending with /) to write NAME.yaml in")
    q.add_argument("--overwrite", action="store_true", help="replace DEST if it exists (default: refuse)")
    q = rsub.add_parser("show", help="print the resolved recipe (every default filled in, overrides applied), "
                        "as a run records it in results/recipe.yaml; reads no data")
    q.add_argument("recipe", help="recipe file, or the name of a shipped recipe")
    q.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override recipe fields")
    q.add_argument("--data-dir", help="local public-data folder, as train takes it (show reads no data: "
                   "{data_dir} stays as written)")

    add_sweep(sub)      # sweep (a grid of overrides × seeds, one table and chart)
    add_eval(sub)       # eval
    add_encode(sub)     # encode
    add_push(sub)       # push
    add_merge(sub)      # merge (model soups, task arithmetic, delta-guided fusion)
    add_export(sub)     # export (ONNX / OpenVINO serving folder, optionally int8)
    add_inspect(sub)    # inspect (Text2Token's vocabulary head, any BERT-like model)
    data = sub.add_parser("data", help="inspect training data").add_subparsers(dest="data_command", required=True)
    add_diagnose(data)  # data diagnose (DebCSE's pair statistics, any recipe)
    add_mine(data)      # data mine (hard negatives for pairs, or a recipe's training data)
    add_mine_pairs(data)  # data mine-pairs (paraphrase / bitext pairs by the ratio margin)
    add_overlap(data)   # data overlap (training rows seen in each evaluation set)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``embedkit`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    # Overrides may follow options (`train R --data-dir D key=v`); argparse stops filling a `nargs="*"`
    # positional once an option appears, so collect the leftovers that look like overrides here.
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return args.func(args)
    except EmbedkitError as err:
        print(f"embedkit: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("embedkit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        return 0
    except (OSError, RuntimeError) as err:  # a filesystem fault no command converted: still one line
        fault = filesystem_fault(err)
        if fault is None:
            raise
        print(f"embedkit: error: {fault}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
