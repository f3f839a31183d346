"""Hard negatives for (anchor, positive) pairs: ``embedkit data mine`` and the recipe hook ``data.train.mine``.

Both run :func:`embedkit.mining.mine_negatives` (the package's one mining engine) and write three files, renamed
into place together once all three are written (:mod:`embedkit.outputs`): ``FILE.jsonl`` (one object a line:
``anchor``, ``positive``, ``negative_1`` … ``negative_k``; a recipe reads it with ``data.train.path: FILE.jsonl``),
``FILE.stats.json`` (counts and score quantiles) and ``FILE.png`` (histogram of positive, kept-negative and
dropped-negative scores). ``-o`` may not be an input, and ``--overwrite`` replaces ``FILE.stats.json`` and
``FILE.png`` only when they are an earlier mine's. Under ``torchrun`` every process encodes its shard of the
texts; rank 0 writes.

A training run mines once, with the starting model, into ``<output.dir>/mined/train.jsonl``; ``--resume`` reads
that file back instead of mining again, so the rows are bit-for-bit those the run started with.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from embedkit.cliargs import add_no_progress, number_or_off
from embedkit.data.heldout import remove_heldout, split_heldout
from embedkit.data.ranking import read_rerank
from embedkit.data.sources import TrainData, read_corpus, read_local, read_pairs, read_train_source
from embedkit.data.sts import sha256_file
from embedkit.distributed import is_main
from embedkit.errors import DataError, EmbedkitError, RecipeError
from embedkit.log import log
from embedkit.model_ref import check_model, load_model
from embedkit.outputs import FileSet, check_file_output, writing
from embedkit.paths import atomic_path, expand, resolve_data_dir
from embedkit.recipe import MineSection, Recipe, mine_window
from embedkit.validate import heldout_devs, load_recipe_with_data

MINED_DIR = "mined"  # inside a run's output folder
MINED_FILE = "train.jsonl"


def sidecars(output: Path) -> tuple[Path, Path]:
    """``<output>.stats.json`` and ``<output>.png`` next to a mined ``<output>`` (``x.jsonl`` → ``x.stats.json``)."""
    stem = output.with_suffix("") if output.suffix == ".jsonl" else output
    return stem.with_name(stem.name + ".stats.json"), stem.with_name(stem.name + ".png")


def corpus_texts(settings: MineSection, train_path: str | None, train_format: str, data_dir: Path | None,
                 held_out: frozenset[str] = frozenset()) -> list[str] | None:
    """The candidate texts beyond the positives: the ``corpus`` file, and for a reranking file (unless
    ``candidates: false``) every candidate answer it lists but those of the ``held_out`` questions (a
    ``split_from_train`` selection slice); ``None`` when the pool of positives is all."""
    texts: list[str] = []
    if settings.corpus is not None:
        texts += read_corpus(expand(settings.corpus, data_dir))
    if train_path is not None and train_format == "rerank" and settings.candidates is not False:
        texts += [a for q in read_rerank(train_path).queries if q.query not in held_out
                  for a in (*q.positives, *q.negatives)]
    return texts or None


def recipe_key(key: str) -> str:
    """How a message names a :class:`MineSection` setting in a recipe (``data.train.mine.<key>``)."""
    return key


def cli_flag(key: str) -> str:
    """How a message names a :class:`MineSection` setting on ``embedkit data mine``'s command line."""
    return "--" + key.replace("_", "-")


def _n(count: int, noun: str) -> str:
    """``1 row``, ``2 rows``, ``1,000 rows``."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def unreachable_rows(pairs: TrainData, settings: MineSection, corpus: Sequence[str] | None,
                     name: Callable[[str], str] = recipe_key) -> str | None:
    """Why too few rows can get ``num_negatives`` negatives whatever the model (counted on the texts, before a
    model loads), or ``None``. A row needs ``range_min + num_negatives`` candidates once its anchor's own text
    and labelled positives are removed from the pool (the positives plus the corpus, as
    :func:`embedkit.mining.mine_negatives` builds it)."""
    anchors, positives = (list(map(str, v)) for v in pairs.columns.values())
    need = settings.range_min + settings.num_negatives
    pool = {*(corpus or ()), *positives}
    labelled: dict[str, set[str]] = {}
    for a, p in zip(anchors, positives):
        labelled.setdefault(a, set()).add(p)
    # The labelled positives are all in the pool; the anchor's own text is too when some row's positive is it.
    free = {a: len(pool) - len(ps) - (a in pool and a not in ps) for a, ps in labelled.items()}
    able = sum(free[a] >= need for a in anchors)
    if able and able >= settings.min_rows_kept * len(anchors):
        return None
    n = len(anchors)
    if n == 1:
        cause = "there is one pair"
    elif len(set(zip(anchors, positives))) == 1:
        cause = f"the {n:,} rows are one pair repeated"
    elif all(a == p for a, p in zip(anchors, positives)):
        cause = "every row's anchor and positive are the same text"
    elif len(labelled) == 1:
        cause = "every row has the same anchor, so each positive is one of its labelled positives"
    else:
        cause = f"{_n(n, 'row')} give {_n(len(pool), 'distinct candidate text')}"
    share = "" if not able else f" (fewer than {name('min_rows_kept')} {settings.min_rows_kept:g} of them)"
    most = max(free.values(), default=0)
    return (f"{able:,} of {_n(n, 'row')} can get {_n(settings.num_negatives, 'negative')} whatever the model"
            f"{share}: {cause}; once an anchor's own text and labelled positives leave the pool (the positives"
            f"{' and the corpus' if corpus else ''}, {_n(len(pool), 'distinct text')}), at most "
            f"{_n(most, 'candidate')} {'remains' if most == 1 else 'remain'} for a row, and {name('range_min')} + "
            f"{name('num_negatives')} = {need} are needed; give more pairs or a {name('corpus')}, or ask for fewer "
            "negatives")


def too_few_kept(stats: dict[str, Any], settings: MineSection, name: Callable[[str], str] = recipe_key
                 ) -> str | None:
    """Why the mined rows are too few to use (none, or fewer than ``min_rows_kept`` of the input rows), from the
    counts of :func:`embedkit.mining.mine_negatives`; ``None`` when enough rows kept ``num_negatives``."""
    rows, n, k = stats["rows"], stats["rows_in"], stats["num_negatives"]
    if rows and rows >= settings.min_rows_kept * n:
        return None
    filters = [f"{name('max_score_ratio')} {settings.max_score_ratio:g}"] if settings.max_score_ratio is not None \
        else []
    filters += [f"{name('margin')} {settings.margin:g}"] if settings.margin is not None else []
    share = "" if not rows else f", fewer than {name('min_rows_kept')} {settings.min_rows_kept:g} of them"
    return (f"{rows:,} of {_n(n, 'row')} kept {_n(k, 'negative')}{share}: of "
            f"{_n(stats['candidates_considered'], 'candidate')} in ranks [{stats['range_min']}, {stats['range_max']}) "
            f"the false-negative filter ({', '.join(filters) or 'off'}) dropped {stats['dropped_by_filter']:,}, "
            f"leaving {_n(stats['rows_short'], 'row')} with fewer than {k}; relax the filter, widen "
            f"{name('range_max')} or lower {name('num_negatives')}"
            + (f" (or lower {name('min_rows_kept')} to accept them)" if rows else ""))


def run_mining(model: Any, pairs: TrainData, settings: MineSection, corpus: list[str] | None,
               progress: bool | None = False) -> Any:
    """Mine (every process of a ``torchrun`` group takes part) and return the :class:`HardNegatives`;
    ``progress``: an encoding bar (``None``: when stderr is a terminal)."""
    from embedkit.mining import ensure_process_group, mine_negatives

    ensure_process_group()
    anchors, positives = (list(map(str, v)) for v in pairs.columns.values())
    return mine_negatives(model, anchors, positives, settings, corpus, progress=progress)


def summary(stats: dict[str, Any]) -> str:
    """One log line of the counts."""
    s = stats
    pos, kept = s["scores"]["positive"], s["scores"]["negative_kept"]
    return (f"mined {s['num_negatives']} negatives for {s['rows']}/{s['rows_in']} rows ({s['anchors']} anchors, "
            f"{s['unique_texts']} texts encoded once, corpus {s['corpus']}): {s['candidates_considered']} candidates "
            f"in ranks [{s['range_min']}, {s['range_max']}), {s['dropped_labelled_positive']} labelled positives "
            f"removed, {s['dropped_by_filter']} dropped by the false-negative filter, {s['rows_short']} rows short "
            f"of k dropped; median positive {pos['p50']:.3f}" + (f", kept negative {kept['p50']:.3f}" if kept else ""))


def write_mined(mined: Any, output: Path, title: str, extra: dict[str, Any] | None = None,
                files: FileSet | None = None) -> None:
    """The three files (jsonl, stats, png), written together: each under a temporary name, all three renamed into
    place once written (by the caller when it passes ``files``). The stats record the SHA-256 of the other two
    (``files``), so a later ``--overwrite`` knows them as this command's own."""
    stats_path, png_path = sidecars(output)
    columns = mined.columns()
    names = list(columns)
    group = files if files is not None else FileSet()
    try:
        jsonl = group.path(output)
        with open(jsonl, "w", encoding="utf-8") as fh:
            for i in range(len(mined.anchors)):
                fh.write(json.dumps({c: columns[c][i] for c in names}, ensure_ascii=False) + "\n")
        png = group.path(png_path)
        plot(mined, png, title)
        record = {output.name: sha256_file(jsonl), png_path.name: sha256_file(png)}
        group.path(stats_path).write_text(json.dumps({**mined.stats, **(extra or {}), "files": record}, indent=2),
                                          encoding="utf-8")
        if files is None:
            group.commit()
    finally:
        if files is None:
            group.discard()


def owns_sidecar(side: Path, output: Path) -> bool:
    """Whether ``side`` (``OUT.stats.json`` or ``OUT.png``) is one that ``data mine`` wrote with ``output``: the
    stats file is mine's (its counts), the chart matches the checksum the stats recorded (a stats file from before
    the record vouches for the chart written with it)."""
    stats_path, _ = sidecars(output)
    try:
        stats = json.loads(stats_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(stats, dict) or not {"rows_in", "num_negatives", "scores"} <= set(stats):
        return False
    if side == stats_path:
        return True
    record = stats.get("files")
    if record is None:
        return True
    return side.is_file() and isinstance(record, dict) and record.get(side.name) == sha256_file(side)


def plot(mined: Any, path: Path, title: str) -> None:
    """Histogram of the positive, kept-negative and dropped-negative cosines (one panel)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [("positive (anchor, positive)", mined.positive_scores, "#2ca02c"),
              ("kept negative (written)", mined.negative_scores.ravel(), "#1f77b4"),
              ("dropped by the false-negative filter", mined.dropped_scores, "#d62728")]
    finite = [np.asarray(v, dtype=float)[np.isfinite(v)] for _, v, _ in series]
    lo = min((v.min() for v in finite if v.size), default=0.0)
    hi = max((v.max() for v in finite if v.size), default=1.0)
    bins = np.linspace(lo, hi if hi > lo else lo + 1e-3, 41)
    fig, ax = plt.subplots(figsize=(9, 5.2))
    for (label, _, colour), values in zip(series, finite):
        if values.size:  # each series as shares of itself: the dropped candidates outnumber the rows many times
            weights = np.full(values.size, 100.0 / values.size)
            ax.hist(values, bins=bins, weights=weights, alpha=0.25, color=colour)
            ax.hist(values, bins=bins, weights=weights, histtype="step", linewidth=1.8, color=colour,
                    label=f"{label}: n={values.size:,}, median {np.median(values):.3f}")
    ax.set_xlabel("cosine similarity to the anchor (mining model)")
    ax.set_ylabel("% of the series")
    ax.set_ylim(top=ax.get_ylim()[1] * 1.3)  # room for the legend above the peaks
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=9, loc="upper left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def title_of(model_name: str, s: MineSection, rows: int, rows_in: int) -> str:
    filt = []
    if s.max_score_ratio is not None:
        filt.append(f"max_score_ratio {s.max_score_ratio}")
    if s.margin is not None:
        filt.append(f"margin {s.margin}")
    high = mine_window(s)[1]
    return (f"hard negatives mined with {model_name}\nk={s.num_negatives}, ranks [{s.range_min}, {high}), "
            f"{', '.join(filt) or 'no false-negative filter'}, {s.sampling_strategy} (seed {s.seed}); "
            f"{rows}/{rows_in} rows kept")


def read_mined(path: Path, k: int) -> TrainData:
    """A mined file written by :func:`write_mined`, as training columns."""
    names = ["anchor", "positive", *(f"negative_{i}" for i in range(1, k + 1))]
    return read_local(str(path), "jsonl", names, kind="mined")


# ----------------------------------------------------------------------------------------------------------
# Training: data.train.mine


def mine_for_training(recipe: Recipe, train_data: TrainData | None, model: Any, work: Path,
                      data_dir: str | None) -> TrainData:
    """The training rows with ``negative_1`` … ``negative_k`` added, mined with ``model`` (the starting model)
    into ``work/mined/train.jsonl``, or read back from there when a resumed run finds it (same settings)."""

    src = recipe.data.train
    settings = src.mine
    assert settings is not None
    if settings.seed is None:
        settings = settings.model_copy(update={"seed": recipe.training.seed})
    output = work / MINED_DIR / MINED_FILE
    stats_path, _ = sidecars(output)
    if train_data is None:  # a Hub dataset: (anchor, positive) columns
        train_data = read_train_source(src, recipe.method.name, ("anchor", "positive"), ("text", "text"))
    wanted = {"settings": settings.model_dump(mode="json"), "data_sha256": train_data.sha256}
    if output.is_file() and stats_path.is_file():
        saved = json.loads(stats_path.read_text(encoding="utf-8"))
        if {k: saved.get(k) for k in wanted} == wanted:
            log(f"reusing the negatives mined at the start of this run: {output}")
            mined = read_mined(output, settings.num_negatives)
            return TrainData(mined.columns, f"{train_data.description} + {settings.num_negatives} mined negatives "
                             f"({output})", train_data.sha256)
    resolved = resolve_data_dir(data_dir)
    local = None  # the reranking file whose candidates join the corpus (not when the Hub copy stood in)
    if src.path is not None and src.format == "rerank":
        try:
            local = expand(src.path, resolved)
        except FileNotFoundError:
            local = None
    held_out: frozenset[str] = frozenset()
    for dev, _ in heldout_devs(recipe, local if local and Path(local).is_file() else None, resolved):
        held_out |= split_heldout(local, dev.kind, dev.split_from_train, dev.split_seed).queries
    corpus = corpus_texts(settings, local if local and Path(local).is_file() else None, src.format, resolved, held_out)
    reason = unreachable_rows(train_data, settings, corpus)
    if reason:
        raise DataError(f"data.train.mine: {reason}")
    mined = run_mining(model, train_data, settings, corpus)
    log(summary(mined.stats))
    if is_main():
        write_mined(mined, output, title_of(recipe.model.name, settings, mined.stats["rows"],
                                            mined.stats["rows_in"]), extra=wanted)
    reason = too_few_kept(mined.stats, settings)
    if reason:
        raise DataError(f"data.train.mine: {reason} (see {stats_path})")
    return TrainData(mined.columns(), f"{train_data.description} + {settings.num_negatives} mined negatives",
                     train_data.sha256)


# ----------------------------------------------------------------------------------------------------------
# Command line: embedkit data mine


OFF = "off"  # --max-score-ratio none: the filter off (None would mean "not given")

FLAGS = ("num_negatives", "range_min", "range_max", "max_score_ratio", "margin", "sampling_strategy", "seed",
         "batch_size", "corpus", "candidates", "min_rows_kept")


def _settings(args: argparse.Namespace, base: MineSection | None) -> MineSection:
    values = base.model_dump() if base is not None else {}
    values.update({k: getattr(args, k) for k in FLAGS if getattr(args, k) is not None})
    if values.get("max_score_ratio") == OFF:
        values["max_score_ratio"] = None
    try:
        return MineSection.model_validate(values)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        flag = f"--{key.replace('_', '-')}: " if key else ""
        got = f" (got {first['input']!r})" if key and "input" in first else ""
        raise EmbedkitError(f"data mine: {flag}{first['msg']}{got}") from None


def _check_output(output: str) -> None:
    if Path(output).suffix != ".jsonl":
        raise EmbedkitError(f"--output {output!r}: expected a file name ending in .jsonl")


def _local(ref: str | None) -> list[str]:
    return [ref] if ref and Path(ref).expanduser().exists() else []


def _mine(args: argparse.Namespace) -> int:
    _check_output(args.output)
    if args.overwrite is False and Path(args.output).expanduser().exists() and not Path(args.output).is_dir():
        raise EmbedkitError(f"--output {args.output}: already exists; pass --overwrite to replace it")  # at once
    held_out: frozenset[str] = frozenset()  # questions of a data.dev.split_from_train slice
    if args.recipe is not None:
        recipe, train_data = load_recipe_with_data(args.recipe, args.overrides, data_dir=args.data_dir,
                                                   check_data=False)
        src = recipe.data.train
        if isinstance(src, list):
            raise EmbedkitError(f"{args.recipe}: data.train lists {len(src)} sources; mining reads one: give it one "
                                "with the overrides data.train={...} method={...}, or use --pairs FILE")
        settings = _settings(args, src.mine)
        if settings.candidates and src.format != "rerank":
            raise EmbedkitError("--candidates: the recipe's data.train is not format: rerank")
        data_dir = resolve_data_dir(args.data_dir)
        if src.path is not None:
            try:
                path = expand(src.path, data_dir)
            except FileNotFoundError as err:
                raise RecipeError(f"data.train.path: {err}") from None
            pairs = read_pairs(path, src.format if src.format in ("rerank", "csv", "tsv", "jsonl") else "auto")
            train_path, fmt = path, ("rerank" if pairs.description.startswith("rerank:") else src.format)
        else:
            pairs = read_train_source(src, recipe.method.name, ("anchor", "positive"), ("text", "text"))
            train_path, fmt = None, src.format
        for dev, key in heldout_devs(recipe, train_path, data_dir):  # the selection slice is not mined for
            held = split_heldout(train_path, dev.kind, dev.split_from_train, dev.split_seed)
            held_out |= held.queries
            pairs = TrainData(remove_heldout(pairs.columns, held), f"{pairs.description} less the "
                              f"{held.record['held_out']} {held.record['unit']}s held out by {key}", pairs.sha256)
        model_name = args.model or recipe.model.name
        seed = settings.seed if settings.seed is not None else recipe.training.seed
    else:
        if args.overrides:
            raise EmbedkitError(f"unrecognized arguments: {' '.join(args.overrides)} (overrides need --recipe)")
        if args.model is None:
            raise EmbedkitError("--model: required with --pairs (a model folder, packaged model or Hub id)")
        settings = _settings(args, None)
        pairs = read_pairs(args.pairs)
        fmt = "rerank" if pairs.description.startswith("rerank:") else "auto"
        if settings.candidates and fmt != "rerank":
            raise EmbedkitError(f"--candidates: {args.pairs} is not a reranking CSV (qtext,label,atext)")
        train_path, data_dir, model_name, seed = args.pairs, resolve_data_dir(args.data_dir), args.model, settings.seed
        recipe = None
    settings = settings.model_copy(update={"seed": seed if seed is not None else 42})
    corpus = corpus_texts(settings, train_path, fmt, data_dir, held_out)  # bad input fails before the model loads
    reason = unreachable_rows(pairs, settings, corpus, cli_flag)
    if reason:
        raise EmbedkitError(f"data mine: {reason}; nothing was written")
    inputs = [("input", p) for p in _local(train_path)] + [("recipe", p) for p in _local(args.recipe)]
    if settings.corpus is not None:
        inputs += [("corpus", p) for p in _local(expand(settings.corpus, data_dir))]
    inputs += [("model", p) for p in _local(model_name)]
    target = check_file_output(args.output, overwrite=args.overwrite, inputs=inputs, sidecars=sidecars,
                               owns=owns_sidecar, command="embedkit data mine")

    check_model(model_name, what="--model" if args.model else "model.name", trust_flag=None)
    if recipe is not None and args.model is None:
        from embedkit.modeling import build_model

        model = build_model(recipe.model)  # the recipe's pooling and max_seq_length, as training starts with
    else:
        model, _ = load_model(model_name)
    mined = run_mining(model, pairs, settings, corpus, args.progress)
    reason = too_few_kept(mined.stats, settings, cli_flag)
    if reason:
        raise EmbedkitError(f"data mine: {reason}; nothing was written")
    if is_main():
        extra = {"settings": settings.model_dump(mode="json"), "data_sha256": pairs.sha256, "model": model_name,
                 "input": pairs.description}
        with target, writing(target.path, "writing the mined files", f"--output {args.output}"):
            write_mined(mined, target.path, title_of(model_name, settings, mined.stats["rows"],
                                                     mined.stats["rows_in"]), extra, files=target.files)
            target.commit()
        output = Path(args.output).expanduser()
        stats_path, png_path = sidecars(output)
        print(summary(mined.stats))
        print(f"{output}: {mined.stats['rows']} rows; {stats_path}; {png_path}")
    return 0


def add_cli(data_commands: argparse._SubParsersAction) -> None:
    """Register ``embedkit data mine`` under the ``data`` command group."""
    d = data_commands.add_parser(
        "mine", help="hard negatives for (anchor, positive) pairs, with a positive-aware false-negative filter",
        description="Writes OUTPUT.jsonl (anchor, positive, negative_1..k), OUTPUT.stats.json and OUTPUT.png.")
    src = d.add_mutually_exclusive_group(required=True)
    src.add_argument("--pairs", help="csv/tsv/jsonl with anchor,positive columns, or a reranking CSV "
                     "(qtext,label,atext)")
    src.add_argument("--recipe", help="a recipe: its training data, model and data.train.mine settings")
    d.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override recipe fields (with --recipe)")
    d.add_argument("--model", help="model folder, packaged model or Hub id (default: the recipe's)")
    d.add_argument("--corpus", help="candidate texts (txt one a line; csv/tsv/jsonl 'text' column; a reranking CSV)")
    d.add_argument("--candidates", action=argparse.BooleanOptionalAction, default=None,
                   help="reranking input: add all its candidate answers to the corpus (default: yes)")
    d.add_argument("--num-negatives", type=int, help="negatives per row (default 3)")
    d.add_argument("--range-min", type=int, help="skip this many of the most similar candidates (default 0)")
    d.add_argument("--range-max", type=int, help="take candidates ranked above this (default range-min + 10 k)")
    d.add_argument("--max-score-ratio", type=number_or_off(OFF),
                   help="drop candidates above this fraction of the row's positive score (default 0.95; 'none': off)")
    d.add_argument("--margin", type=float, help="also drop candidates above positive - margin")
    d.add_argument("--sampling-strategy", choices=("top", "random"), help="top (default) or seeded random")
    d.add_argument("--seed", type=int, help="seed of random sampling (default: the recipe's training.seed, or 42)")
    d.add_argument("--batch-size", type=int, help="encoding batch size (default 128)")
    d.add_argument("--min-rows-kept", type=float, metavar="SHARE",
                   help="fail unless this share of the rows keeps k negatives (default 0.5; 0: any share, but never "
                        "no row)")
    d.add_argument("--data-dir", help="local public-data folder (default: $EMBEDKIT_DATA, data/public, ../shared/data)")
    d.add_argument("-o", "--output", required=True, help="the mined file, FILE.jsonl")
    d.add_argument("--overwrite", action="store_true", help="replace FILE.jsonl if it exists (default: refuse)")
    add_no_progress(d)
    d.set_defaults(func=_mine)
