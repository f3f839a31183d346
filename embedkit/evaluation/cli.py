"""``embedkit eval``: the STS suite, geometry, reranking and retrieval, MTEB and leaderboard submission files
from the command line.

Every run writes, in ``--output`` (default ``eval-results/<model>``): ``results.json`` (last, atomically: its
presence marks a finished run), ``sts.png`` (the chart of the tasks that ran), for a training output folder
``dev-curve.png`` (its dev metric over the training steps) and, with ``--mteb`` (or ``--as-mteb`` for the
``--rerank`` / ``--retrieval`` sets), mteb's results tree under ``mteb/``.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

from embedkit.cliargs import add_no_progress, add_renamed
from embedkit.data.ranking import RerankSet, read_beir, read_rerank
from embedkit.errors import DataError, EmbedkitError
from embedkit.evaluation.overlap import (
    annotate_sts,
    flagged,
    from_beir,
    from_rerank,
    is_recipe,
    overlap_report,
    summary_line,
)
from embedkit.evaluation.provenance import package_versions
from embedkit.evaluation.ranking import score_set
from embedkit.log import log, progress
from embedkit.model_ref import check_model, embedding_dim, load_model, require_hub
from embedkit.outputs import OutputFolder, check_target, open_folder, resolve_output, writing

SUITE_CHOICES = ("sts", "geometry", "none")


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``eval`` sub-command."""
    p = subparsers.add_parser(
        "eval", help="evaluate a model: STS suite (SentEval protocol), geometry, MTEB",
        description="Evaluate a sentence-embedding model. Default: the 7-task STS suite (STS12-16 'all' setting, "
                    "STS-B test, SICK-R test; 100 x Spearman of cosine).",
    )
    p.add_argument("model", help="model folder, packaged model or Hub id")
    p.add_argument("--compare", metavar="MODEL_B", help="also evaluate MODEL_B and show both, with MODEL - MODEL_B "
                                                          "(what changed from B, e.g. a base)")
    p.add_argument("--data-dir", help="local public-data folder (default: $EMBEDKIT_DATA, data/public, ../shared/data)")
    p.add_argument("--source", choices=("auto", "local", "hub"), default="auto",
                   help="where the STS data comes from (auto: the local folder when there is one, else the Hub)")
    p.add_argument("--suite", choices=SUITE_CHOICES, default=None,
                   help="sts (default), geometry only, or none (with --mteb: default none)")
    p.add_argument("--geometry", action="store_true", help="add alignment / uniformity / anisotropy to the STS run")
    p.add_argument("--tasks", metavar="TASK[,TASK...]",
                   help="run only these STS suite tasks (STS12..STS16, STSBenchmark or STSB, SICK-R or SICKR; any "
                        "case); the average is then over them")
    p.add_argument("--max-seq-length", type=int, metavar="N",
                   help="cut sentences at N tokens for the STS suite (default: the model's own maximum, e.g. 512, "
                        "not the training length, as SentEval)")
    add_no_progress(p)
    p.add_argument("-o", "--output", help="output folder (default: eval-results/<model name>)")
    p.add_argument("--batch-size", type=int, default=128, help="sentences encoded per batch (default 128)")
    p.add_argument("--task", metavar="DOMAIN", help="a model with experts (docs/experts.md): evaluate through this "
                   "domain's expert (default: the model's learned router, else its default route)")
    p.add_argument("--autocast", choices=("none", "bf16", "auto"), default="none",
                   help="bf16 autocast (auto: only where the hardware has bf16); default none")
    p.add_argument("--no-chart", action="store_true",
                   help="do not draw sts.png (nor dev-curve.png for a training output)")
    p.add_argument("--dims", metavar="D[,D...]",
                   help="Matryoshka: also every score at these truncated dimensions (first D coordinates, then "
                        "normalised), e.g. 384,128,64")
    p.add_argument("--train-data", metavar="RECIPE|FILE",
                   help="the training data (a recipe, or a data file) whose overlap with the evaluation sets to "
                        "measure and mark (default: a training output folder's own measurement)")
    g = p.add_argument_group("reranking and retrieval (docs/evaluation.md)")
    g.add_argument("--rerank", metavar="FILE", action="append", default=[],
                   help="a reranking CSV (qtext,label,atext): MAP and MRR@10; may be repeated")
    g.add_argument("--retrieval", metavar="DIR", action="append", default=[],
                   help="a BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv): nDCG@10, Recall@100, MRR@10; "
                        "may be repeated")
    g.add_argument("--split", default="test", help="the qrels split of the --retrieval folders (default: test)")
    g.add_argument("--as-mteb", action="store_true",
                   help="also score the --rerank/--retrieval sets as local mteb tasks (mteb's layout under mteb/)")
    g = p.add_argument_group("MTEB")
    g.add_argument("--mteb", metavar="TASK[,TASK...]",
                   help="run these MTEB tasks with mteb.evaluate; 'offline': every task that runs from the local "
                        "data folder (STS12-16, STSBenchmark, SICK-R, MR, SUBJ, SICK-E, TRECQA-dev)")
    g.add_argument("--mteb-benchmark", metavar="NAME", help="run an MTEB benchmark, e.g. 'MTEB(eng, v2)'")
    g.add_argument("--reuse-mteb-cache", action="store_true",
                   help="let mteb reuse cached results for the same model name + revision (default: recompute)")
    g.add_argument("--submission", metavar="DIR", help="write leaderboard submission files (results tree + ModelMeta)")
    g.add_argument("--model-name", help="organization/model_name for mteb (default: the card's name or local/<folder>)")
    g.add_argument("--mteb-revision",
                   help="the model revision mteb records (default: SHA-256 of the weights)")
    add_renamed(g, "--revision", "--mteb-revision", "mteb_revision")
    g.add_argument("--license", help="model license for the ModelMeta (default: the training recipe's)")
    g.add_argument("--languages", default="eng-Latn", help="ModelMeta languages, comma-separated ISO codes")
    g.add_argument("--training-code", metavar="URL", help="public training code link for the ModelMeta")
    g.add_argument("--training-data", metavar="URL", help="public training data link for the ModelMeta")
    p.set_defaults(func=run_cli)


def _slug(spec: str) -> str:
    name = Path(spec.rstrip("/")).name or spec
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "model"


def parse_dims(text: str) -> list[int]:
    """``384,128,64`` → ``[384, 128, 64]``: distinct positive integers (the model's width is checked once it
    loads)."""
    try:
        dims = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise EmbedkitError(f"--dims {text!r}: expected comma-separated integers, e.g. 384,128,64") from None
    if not dims or any(d <= 0 for d in dims) or len(set(dims)) != len(dims):
        raise EmbedkitError(f"--dims {text!r}: expected distinct positive dimensions, e.g. 384,128,64")
    return dims


def _check_args(args: argparse.Namespace) -> str:
    # scipy comes with these (the whole CLI's parser imports this module: keep it light)
    from embedkit.evaluation.mteb_eval import LOCAL_ONLY, parse_task_list, require_hub_for_mteb
    from embedkit.evaluation.sts import LAYOUT, resolve_tasks, sts_root

    wants_mteb = bool(args.mteb or args.mteb_benchmark)
    wants_ranking = bool(args.rerank or args.retrieval)
    suite = args.suite or ("none" if wants_mteb or wants_ranking else "sts")
    if args.batch_size <= 0:
        raise EmbedkitError(f"--batch-size must be positive, got {args.batch_size}")
    if args.submission and not wants_mteb:
        raise EmbedkitError("--submission needs MTEB results: add --mteb TASK[,TASK...] or --mteb-benchmark NAME")
    if args.compare and suite != "sts":
        raise EmbedkitError("--compare works with the STS suite (drop --suite/--mteb, or run them separately)")
    if args.geometry and suite != "sts":
        raise EmbedkitError("--geometry adds to the STS suite; for geometry alone use --suite geometry")
    if suite == "none" and not wants_mteb and not wants_ranking:
        raise EmbedkitError("--suite none without --mteb, --rerank or --retrieval: nothing to evaluate")
    if args.tasks is not None:
        if suite != "sts":
            raise EmbedkitError("--tasks selects tasks of the STS suite (for MTEB tasks use --mteb TASK[,TASK...])")
        args.tasks = list(resolve_tasks(args.tasks))
    if args.max_seq_length is not None:
        if args.max_seq_length <= 0:
            raise EmbedkitError(f"--max-seq-length: expected a positive number of tokens, got {args.max_seq_length}")
        if suite == "none":
            raise EmbedkitError("--max-seq-length sets the STS suite's encoding length: it needs the STS or geometry "
                                "suite")
    if args.as_mteb and not wants_ranking:
        raise EmbedkitError("--as-mteb scores the --rerank/--retrieval sets with mteb: give one of them")
    if args.as_mteb and wants_mteb:
        raise EmbedkitError("--as-mteb with --mteb: run them separately (each writes its own mteb results)")
    args.dims = parse_dims(args.dims) if getattr(args, "dims", None) is not None else None
    if args.dims and ((suite == "none" and not wants_ranking) or args.compare):
        raise EmbedkitError("--dims applies to the STS suite, geometry, --rerank and --retrieval of one model (mteb "
                            "encodes through its own wrapper; run --compare apart)")

    if args.train_data and not (Path(args.train_data).is_file() or is_recipe(args.train_data)):
        raise EmbedkitError(f"--train-data {args.train_data}: no such file (expected a recipe or a training data file)")
    # Everything that can fail cheaply fails here, before any model loads: the models (first: no import needed),
    # the data folder, the Hub.
    check_model(args.model, what="model", trust_flag=None)
    if args.compare:
        check_model(args.compare, what="--compare", trust_flag=None)

    try:
        root = sts_root(args.data_dir) if args.source != "hub" else None
    except DataError:  # a folder without STS data still serves the local-only mteb tasks (MR, SUBJ, TRECQA-dev)
        if suite != "none" or args.mteb_benchmark or not set(parse_task_list(args.mteb)) <= set(LOCAL_ONLY):
            raise
        root = None
    if suite != "none" and root is None and args.source != "local":
        require_hub("the STS data", f"pass --data-dir (or set $EMBEDKIT_DATA) to a local folder ({LAYOUT})")
    if wants_mteb:

        # Without importing mteb (seconds): the line lists the local task names, so a misspelt one shows.
        require_hub_for_mteb(args.mteb, args.mteb_benchmark, root, args.source, data_dir=args.data_dir)
    return suite


def run_cli(args: argparse.Namespace) -> int:
    """Run ``embedkit eval``; results.json is written only when everything succeeded."""
    started = time.perf_counter()
    suite = _check_args(args)  # before the imports below (scipy, ~1 s): a bad argument answers at once
    out = Path(args.output) if args.output else Path("eval-results") / (
        _slug(args.model) + (f"-vs-{_slug(args.compare)}" if args.compare else ""))
    folder = _check_output(out, args)
    with folder:
        return _run(args, suite, folder, started)


def _check_output(out: Path, args: argparse.Namespace) -> OutputFolder:
    """Where eval writes, checked before any model loads (:mod:`embedkit.outputs`): never a training run's folder
    or an input, nor a folder holding files eval did not write; eval's own folder is updated on every run."""
    inputs = [("model", m) for m in (args.model, args.compare) if m and Path(m).expanduser().exists()]
    inputs += [("--rerank file", f) for f in args.rerank] + [("--retrieval folder", d) for d in args.retrieval]
    if args.submission:
        check_target(resolve_output(args.submission, "--submission"), "--submission", args.submission, inputs,
                     folder=True)
    return open_folder(out, command="eval", flag="--output", overwrite=None, swap=False, inputs=inputs,
                       owned=("mteb",), legacy=_earlier_eval)


def _earlier_eval(folder: Path) -> set[str]:
    """The files of an eval folder written before eval recorded them: its results.json has eval's arguments."""
    try:
        data = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    if not (isinstance(data, dict) and "arguments" in data and "versions" in data):
        return set()
    return {name for name in ("results.json", "sts.png", "dev-curve.png") if (folder / name).is_file()}


def _run(args: argparse.Namespace, suite: str, folder: OutputFolder, started: float) -> int:
    from embedkit.evaluation.core import ranking_names
    from embedkit.evaluation.mteb_eval import run_mteb
    from embedkit.evaluation.report import (
        dev_history,
        geometry_table,
        load_training_results,
        mteb_table,
        ranking_table,
        render_chart,
        render_training_chart,
        sts_table,
        write_json_atomic,
    )
    from embedkit.evaluation.runner import evaluate

    out = folder.out
    common = dict(data_dir=args.data_dir, batch_size=args.batch_size, source=args.source, autocast=args.autocast,
                  progress=True, max_seq_length=args.max_seq_length,
                  show_progress_bar=args.progress)  # None: a bar when stderr is a terminal
    results: dict[str, Any] = {"arguments": {k: v for k, v in vars(args).items() if k != "func"}}
    # Reranking files and BEIR folders are read in full before the model loads: a bad row fails at once.

    # Sets whose derived names clash (x/trecqa/dev.csv, y/trecqa/dev.csv) are told apart by their folders.
    names = ranking_names([("rerank", f, "test") for f in args.rerank]
                          + [("retrieval", d, args.split) for d in args.retrieval])
    ranking_sets = [read_rerank(f, name=n) for f, n in zip(args.rerank, names)] + [
        read_beir(d, args.split, name=n) for d, n in zip(args.retrieval, names[len(args.rerank):])]
    from embedkit.experts import choose_route, router_of

    model, spec = load_model(args.model)
    how = choose_route(model, args.task, spec)  # a model with experts: the domain's route (docs/experts.md)
    if how:
        log(f"evaluating {how}")
    if suite == "sts":
        results["sts"] = evaluate(model, "sts", geometry=args.geometry, model_path=spec, dims=args.dims,
                                  tasks=args.tasks, **common)
    elif suite == "geometry":
        results["geometry"] = evaluate(model, "geometry", model_path=spec, dims=args.dims, **common)
    if args.compare:
        model_b, spec_b = load_model(args.compare)
        choose_route(model_b, args.task if router_of(model_b) is not None else None, spec_b)
        other = evaluate(model_b, "sts", model_path=spec_b, tasks=args.tasks, **common)
        # What changed from B (--compare, e.g. the base) to A (MODEL): A − B, as the table and the chart show it.
        diff = {t: s["spearman"] - other["tasks"][t]["spearman"] for t, s in results["sts"]["tasks"].items()
                if t in other["tasks"]}
        diff["avg"] = results["sts"]["avg"] - other["avg"]
        results["compare"] = {"model": other["model"], "sts": other, "difference_a_minus_b": diff}
    if ranking_sets:
        results.update(_score_ranking(model, ranking_sets, args))
    if args.mteb or args.mteb_benchmark or args.as_mteb:
        extra = _mteb_ranking_tasks(args, names) if args.as_mteb else None
        run = run_mteb(
            model, args.mteb, args.mteb_benchmark, extra_tasks=extra, data_dir=args.data_dir, cache_dir=out / "mteb",
            batch_size=args.batch_size, source=args.source, autocast=args.autocast, model_name=args.model_name,
            revision=args.mteb_revision, reuse_cache=args.reuse_mteb_cache, submission=args.submission,
            languages=[s.strip() for s in args.languages.split(",") if s.strip()], license=args.license,
            training_code=args.training_code, training_data=args.training_data, progress=True, model_path=spec,
        )
        results["mteb"] = run.pop("tasks")
        results["mteb_run"] = run
    _overlap(results, args, ranking_sets)
    results["versions"] = package_versions()
    results["seconds"] = round(time.perf_counter() - started, 2)

    chart = None
    other = results.get("compare", {}).get("sts")
    labels = (_slug(args.model), _slug(args.compare)) if args.compare else ("A", "B")
    shown = Path(folder.shown)  # the files as the user named their folder; written through folder.files
    with writing(out, "writing the results", f"--output {folder.shown}"):
        if "sts" in results and not args.no_chart:
            render_chart(folder.files.path(out / "sts.png"), results["sts"], other, labels)
            chart = shown / "sts.png"
            results["chart"] = str(chart)
        training = load_training_results(args.model) if Path(args.model).is_dir() and not args.no_chart else None
        history = dev_history(training) if training else None
        if history:  # a training output folder: its dev metric over the steps, from the trainer's log
            render_training_chart(folder.files.path(out / "dev-curve.png"), history, _slug(args.model))
            curve = shown / "dev-curve.png"
            results["training_chart"] = str(curve)
            chart = f"{chart}, {curve}" if chart else str(curve)
        write_json_atomic(folder.files.path(out / "results.json"), results)  # last: its presence marks a finished run
        folder.commit()
    path = shown / "results.json"

    if "sts" in results:
        print(sts_table(results["sts"], other, labels))
        if "geometry" in results["sts"]:
            print(geometry_table(results["sts"]["geometry"]))
        for dim, res in results["sts"].get("dims", {}).items():
            print(f"\n--- Matryoshka: first {dim} coordinates, then normalised ---")
            print(sts_table(res))
            if "geometry" in res:
                print(geometry_table(res["geometry"]))
    if "geometry" in results:
        print(geometry_table(results["geometry"]))
        for dim, res in results["geometry"].get("dims", {}).items():
            print(f"\n--- Matryoshka: first {dim} coordinates, then normalised ---")
            print(geometry_table(res))
    if "rerank" in results or "retrieval" in results:
        print(ranking_table(results))
    if "mteb" in results:
        print(mteb_table({"tasks": results["mteb"], **results["mteb_run"]}))
        if results["mteb_run"].get("submission"):
            print(f"submission files: {results['mteb_run']['submission']['dir']} (see its README.md)")
    overlap = results.get("overlap") or {}
    for name in flagged(overlap):
        if name in results.get("sts", {}).get("tasks", {}) or any(name in results.get(k, {}) for k in
                                                                  ("rerank", "retrieval")):
            print(f"overlap: {summary_line(name, overlap[name])}")
    print(f"results: {path}" + (f"; chart: {chart}" if chart else ""))
    return 0


def _overlap(results: dict[str, Any], args: argparse.Namespace, ranking_sets: list[Any]) -> None:
    """``results["overlap"]`` from ``--train-data`` (measured now), else from a training output folder's own
    ``results.json``; the STS result then marks the tasks seen in training and gives the clean average."""
    from embedkit.evaluation.report import load_training_results

    if args.train_data:
        extra = [from_rerank(d) if isinstance(d, RerankSet) else from_beir(d) for d in ranking_sets]
        overlap, notes = overlap_report(args.train_data, data_dir=args.data_dir, extra_sets=extra)
        results["overlap_notes"] = notes
    else:
        training = load_training_results(args.model) if Path(args.model).is_dir() else None
        overlap = (training or {}).get("overlap")
    if not overlap:
        return
    results["overlap"] = overlap
    if "sts" in results:
        annotate_sts(results["sts"], overlap)


def _score_ranking(model: Any, sets: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    """``{"rerank": {name: scores}, "retrieval": {name: scores}}`` for the sets read from the arguments."""
    from embedkit.encoding import check_dim

    dims = getattr(args, "dims", None)
    for d in dims or []:
        check_dim(d, embedding_dim(model), "--dims")
    out: dict[str, Any] = {}
    for data in sets:
        progress(f"{'reranking' if isinstance(data, RerankSet) else 'retrieval'}: {data.name}", True)
        kind, scores = score_set(model, data, args.batch_size, args.autocast, dims=dims)
        scores["files"] = data.files
        out.setdefault(kind, {})[data.name] = scores
    return out


def _mteb_ranking_tasks(args: argparse.Namespace, names: list[str]) -> list[Any]:
    """The --rerank / --retrieval sets as local mteb tasks, under the names their own scores carry."""
    from embedkit.evaluation.mteb_eval import import_mteb

    import_mteb()  # sets mteb's cache folder before the task module imports mteb
    from embedkit.evaluation.mteb_tasks import local_rerank_task, local_retrieval_task

    return [local_rerank_task(f, n) for f, n in zip(args.rerank, names)] + [
        local_retrieval_task(d, args.split, n) for d, n in zip(args.retrieval, names[len(args.rerank):])]
