"""``embedkit data diagnose``: what the pairs a recipe trains on look like, before and after DebCSE-style
debiasing — length differences and surface/semantic similarity of positives and negatives, duplicate rate,
and the share of in-batch negatives scoring above the positive (likely false negatives).

"Before" is what the recipe's method trains on as it stands: for one-column methods the plain dropout
positive (the sentence itself) with in-batch negatives; for pair/triple data the given columns. "After" is
what the ``debcse`` method builds from the same anchors (with the recipe's ``method`` keys when the recipe
is a debcse recipe, else the defaults). Similarities are under the recipe's model as a frozen reference.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from embedkit.cliargs import add_no_progress, add_renamed
from embedkit.data.sources import read_train_source
from embedkit.errors import DataError, EmbedkitError
from embedkit.methods import get_method
from embedkit.methods.debcse import DebCSEParams, build_reference
from embedkit.methods.debcse.debias import MinedRows, batch_statistics, debias, identity_rows, unique_texts
from embedkit.methods.debcse.similarity import pair_surface, tokens
from embedkit.outputs import OutputFolder, open_folder, writing
from embedkit.paths import atomic_path, expand, resolve_data_dir
from embedkit.validate import load_recipe_with_data

PNG_NAME = "diagnose.png"
JSON_NAME = "diagnose.json"


def _texts_of(recipe: Any, train_data: Any, roles: tuple[str, ...], max_samples: int | None) -> dict[str, list]:
    if train_data is None:
        method = get_method(recipe.method.name)
        train_data = read_train_source(recipe.data.train, recipe.method.name, roles, method.column_types())
    columns = dict(zip(roles, train_data.columns.values(), strict=False))
    if max_samples:
        columns = {k: list(v[:max_samples]) for k, v in columns.items()}
    return columns


def _given_rows(columns: dict[str, list], model: Any, batch_size: int, progress: bool | None = False) -> Any:
    """MinedRows for data that already holds (anchor, positive[, negative]) columns."""
    from embedkit.mining import unit_vectors

    names = [c for c in columns if isinstance(columns[c][0], str)][:3]
    allt = [str(t) for c in names for t in columns[c]]
    texts, _ = unique_texts(allt)
    uid = {t: i for i, t in enumerate(texts)}
    table = unit_vectors(model, texts, batch_size, show_progress_bar=progress).half()
    anchor = [str(t) for t in columns[names[0]]]
    positive = [str(t) for t in columns[names[1]]]
    negative = [str(t) for t in columns[names[2]]] if len(names) > 2 else None
    ids = np.stack([
        [uid[t] for t in anchor], [uid[t] for t in positive],
        [uid[t] for t in negative] if negative is not None else [-1] * len(anchor),
    ], axis=1).astype(np.int64)
    return MinedRows(anchor, positive, negative, ids, table, table_texts=texts,
                     stats={"rows": len(anchor), "unique_sentences": len(texts)})


def pair_measures(rows: Any, measure: str = "mean") -> dict[str, dict[str, np.ndarray]]:
    """Surface, semantic and length measures of each row's positive (and hard negative) pair."""

    ref = rows.table.float()
    ids = rows.ids
    anchor_toks = [tokens(t) for t in rows.anchor]
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, col, texts in (("positive", 1, rows.positive), ("negative", 2, rows.negative)):
        if texts is None or (ids[:, col] < 0).all():
            continue
        m = pair_surface(anchor_toks, [tokens(t) for t in texts], measure)  # type: ignore[arg-type]
        m["semantic"] = (ref[ids[:, 0]] * ref[ids[:, col]]).sum(-1).double().numpy()
        out[name] = m
    return out


def summarise(rows: Any, batch: dict[str, Any], measures: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """The numbers printed and written to diagnose.json for one side (before or after)."""
    texts = rows.anchor
    counts: dict[str, int] = {}
    for t in texts:
        counts[t] = counts.get(t, 0) + 1
    s: dict[str, Any] = {
        "rows": len(texts),
        "corpus_duplicate_rate": sum(c for c in counts.values() if c > 1) / max(len(texts), 1),
    }
    for name, m in measures.items():
        s[name] = {
            "surface_mean": float(np.mean(m["surface"])),
            "jaccard_mean": float(np.mean(m["jaccard"])),
            "edit_distance_mean": float(np.mean(m["edit_distance"])),
            "length_ratio_mean": float(np.mean(m["length_ratio"])),
            "abs_length_diff_mean": float(np.mean(np.abs(m["length_diff"]))),
            "same_length_share": float(np.mean(m["length_diff"] == 0)),
            "semantic_mean": float(np.mean(m["semantic"])),
            "identical_share": float(np.mean(np.asarray(m["edit_distance"]) == 0)),
        }
    s["in_batch"] = {k: (float(v) if isinstance(v, (int, float, np.floating)) else v) for k, v in batch.items()
                     if not isinstance(v, np.ndarray)}
    s["in_batch"]["surface_mean"] = float(np.mean(batch["surface"])) if len(batch["surface"]) else math.nan
    s["in_batch"]["semantic_mean"] = float(np.mean(batch["semantic"])) if len(batch["semantic"]) else math.nan
    return s


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


TABLE = (
    ("rows", ("rows",)),
    ("corpus duplicate rate", ("corpus_duplicate_rate",)),
    ("positives: identical to anchor", ("positive", "identical_share")),
    ("positives: surface similarity", ("positive", "surface_mean")),
    ("positives: token Jaccard", ("positive", "jaccard_mean")),
    ("positives: norm. edit distance", ("positive", "edit_distance_mean")),
    ("positives: length ratio", ("positive", "length_ratio_mean")),
    ("positives: |length diff| tokens", ("positive", "abs_length_diff_mean")),
    ("positives: same length", ("positive", "same_length_share")),
    ("positives: semantic (ref cos)", ("positive", "semantic_mean")),
    ("hard negatives: surface", ("negative", "surface_mean")),
    ("hard negatives: semantic", ("negative", "semantic_mean")),
    ("in-batch negatives: surface", ("in_batch", "surface_mean")),
    ("in-batch negatives: semantic", ("in_batch", "semantic_mean")),
    ("in-batch: exact duplicates", ("in_batch", "duplicate_share")),
    ("in-batch: above positive (FN)", ("in_batch", "above_positive_share")),
    ("in-batch: ≥ threshold", ("in_batch", "above_threshold_share")),
    ("in-batch: masked", ("in_batch", "masked_share")),
    ("in-batch: above positive, kept", ("in_batch", "above_positive_after_mask_share")),
)


def format_table(before: dict[str, Any], after: dict[str, Any], labels: tuple[str, str] = ("before", "after")) -> str:
    """The before/after table as printed by the CLI (``labels``: its two column heads)."""

    def get(d: dict, path: tuple) -> Any:
        for p in path:
            if not isinstance(d, dict) or p not in d:
                return None
            d = d[p]
        return d

    lines = [f"{'':34} {labels[0][:10]:>10} {labels[1][:10]:>10}"]
    for label, path in TABLE:
        lines.append(f"{label:34} {_fmt(get(before, path)):>10} {_fmt(get(after, path)):>10}")
    return "\n".join(lines)


def plot(before_m: dict, after_m: dict, before_b: dict, after_b: dict, path: Path, title: str) -> None:
    """Six panels: positives' length difference, surface and semantic; negatives' surface and semantic;
    duplicate and false-negative shares. Written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    colours = {"before": "#888888", "after": "#1f77b4"}

    def hist(ax, series: dict[str, np.ndarray], bins, title_: str, xlabel: str) -> None:
        for label, values in series.items():
            values = np.asarray(values, dtype=float)
            values = values[np.isfinite(values)]
            if len(values):
                colour = "#ff7f0e" if "hard" in label else colours.get(label.split()[0])
                ax.hist(values, bins=bins, alpha=0.55, density=True, label=f"{label} (n={len(values)})",
                        color=colour)
        ax.set_title(title_)
        ax.set_xlabel(xlabel)
        ax.legend(fontsize=8)

    diff_b = before_m["positive"]["length_diff"]
    diff_a = after_m["positive"]["length_diff"]
    lo = int(min(diff_b.min(initial=0), diff_a.min(initial=0))) - 1
    hi = int(max(diff_b.max(initial=0), diff_a.max(initial=0))) + 2
    hist(axes[0, 0], {"before": diff_b, "after": diff_a}, np.arange(lo, hi) - 0.5,
         "positives: length difference", "len(positive) − len(anchor), tokens")
    unit = np.linspace(0, 1, 26)
    hist(axes[0, 1], {"before": before_m["positive"]["surface"], "after": after_m["positive"]["surface"]}, unit,
         "positives: surface similarity", "surface similarity")
    hist(axes[0, 2], {"before": before_m["positive"]["semantic"], "after": after_m["positive"]["semantic"]},
         np.linspace(-0.2, 1, 31), "positives: semantic similarity", "reference cosine")
    neg_surface = {"before in-batch": before_b["surface"], "after in-batch (kept)": after_b["surface_kept"]}
    neg_semantic = {"before in-batch": before_b["semantic"], "after in-batch (kept)": after_b["semantic_kept"]}
    if "negative" in after_m:
        neg_surface["after hard"] = after_m["negative"]["surface"]
        neg_semantic["after hard"] = after_m["negative"]["semantic"]
    hist(axes[1, 0], neg_surface, unit, "negatives: surface similarity", "surface similarity")
    hist(axes[1, 1], neg_semantic, np.linspace(-0.2, 1, 31), "negatives: semantic similarity", "reference cosine")
    ax = axes[1, 2]
    names = ["duplicates", "above positive", "masked", "above pos., kept"]
    keys = ["duplicate_share", "above_positive_share", "masked_share", "above_positive_after_mask_share"]
    x = np.arange(len(names))
    ax.bar(x - 0.2, [100 * before_b[k] for k in keys], 0.4, label="before", color=colours["before"])
    ax.bar(x + 0.2, [100 * after_b[k] for k in keys], 0.4, label="after", color=colours["after"])
    ax.set_xticks(x, names, fontsize=8)
    ax.set_ylabel("% of in-batch negatives")
    ax.set_title("in-batch negatives: duplicates, likely FN")
    ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def diagnose(recipe_path: str, overrides: list[str] | None = None, data_dir: str | None = None,
             out_dir: str | None = None, max_samples: int | None = 2000, batch_size: int | None = None,
             draw: bool = True, progress: bool | None = False) -> dict[str, Any]:
    """Compute (and plot) the before/after diagnostics of a recipe's training pairs; returns the summary.
    ``progress``: bars while encoding (``None``: when stderr is a terminal; otherwise the libraries' own bars, such
    as transformers' weight loading, are off too)."""
    from embedkit.encoding import quiet_bars, show_bars

    with quiet_bars(not show_bars(progress)):
        return _diagnose_quietly(recipe_path, overrides, data_dir, out_dir, max_samples, batch_size, draw, progress)


def _diagnose_quietly(recipe_path: str, overrides: list[str] | None, data_dir: str | None, out_dir: str | None,
                      max_samples: int | None, batch_size: int | None, draw: bool, progress: bool | None
                      ) -> dict[str, Any]:
    from embedkit.modeling import build_model

    recipe, train_data = load_recipe_with_data(recipe_path, overrides, data_dir)
    if isinstance(recipe.data.train, list):
        raise EmbedkitError(f"{recipe_path}: data.train lists {len(recipe.data.train)} sources; data diagnose reads "
                            "one: give it one with the overrides data.train={...} method={...} (docs/multitask.md)")
    method_cls = get_method(recipe.method.name)
    method_params = {k: v for k, v in recipe.method.model_dump().items() if k != "name"}
    params = DebCSEParams.model_validate(method_params) if recipe.method.name == "debcse" else DebCSEParams()
    columns = _texts_of(recipe, train_data, method_cls.roles(), max_samples)
    text_cols = [c for c in columns if columns[c] and isinstance(columns[c][0], str)]
    if not text_cols:
        raise DataError(f"{recipe_path}: the training data has no text column to diagnose")
    anchors = [str(t) for t in columns[text_cols[0]]]
    if len(set(anchors)) < 2:
        raise DataError(f"{recipe_path}: need at least 2 distinct training sentences, got {len(set(anchors))}")
    seed = recipe.training.seed
    batch_size = batch_size or recipe.training.batch_size
    folder = _check_output(out_dir, recipe_path, recipe, data_dir) if out_dir is not None else None

    if params.reference in ("initial", "current"):
        model = build_model(recipe.model)
    else:
        model = build_reference(params.reference, recipe.model.max_seq_length)
    after_rows, (mined, _cands) = debias(
        model, anchors, params, seed, batch_size=params.mining_batch_size, chunk_size=params.mining_chunk_size,
        backend=params.mining_backend, device=params.mining_device, progress=progress,
    )
    if len(text_cols) >= 2:
        before_rows = _given_rows({c: columns[c] for c in text_cols}, model, params.mining_batch_size, progress)
    else:
        before_rows = identity_rows(anchors, mined.embeddings, mined.texts)
    cutoffs = after_rows.stats["cutoffs"]  # as training resolves them (relative: from this reference's kNN cosines)
    if params.mode == "mask-only":
        after_rows = identity_rows(anchors, mined.embeddings, mined.texts)
        after_rows.stats["cutoffs"] = cutoffs

    margin, threshold = cutoffs["false_negative_margin"], cutoffs["false_negative"]
    before_b = batch_statistics_plain(before_rows, batch_size, seed, margin, threshold, params.surface_measure)
    after_b = _batch_stats(after_rows, batch_size, seed, margin, threshold, params.surface_measure)
    before_m = pair_measures(before_rows, params.surface_measure)
    after_m = pair_measures(after_rows, params.surface_measure)
    summary = {
        "recipe": str(recipe_path), "method": recipe.method.name, "reference": recipe.model.name,
        "batch_size": batch_size, "seed": seed, "max_samples": max_samples,
        "debcse": params.model_dump(mode="json"),
        "cutoffs": cutoffs,
        "after_positive_kinds": after_rows.stats.get("positive_kinds"),
        "after_positive_shares": shares(after_rows.stats.get("positive_kinds") or {}),
        "after_negative_kinds": after_rows.stats.get("negative_kinds"),
        "before": summarise(before_rows, before_b, before_m),
        "after": summarise(after_rows, after_b, after_m),
    }
    if folder is not None:
        with folder, writing(folder.out, "writing the diagnostics", f"-o {folder.shown}"):
            if draw:
                title = (f"{Path(recipe_path).name}: {len(anchors)} rows, batch {batch_size}, "
                         f"reference {recipe.model.name}")
                plot(before_m, after_m, before_b, after_b, folder.files.path(folder.out / PNG_NAME), title)
            folder.files.path(folder.out / JSON_NAME).write_text(json.dumps(summary, indent=2, default=str),
                                                                 encoding="utf-8")
            folder.commit()
    return summary


def _check_output(out_dir: str | os.PathLike, recipe_path: str, recipe: Any, data_dir: str | None) -> OutputFolder:
    """The output folder, checked before the model loads (:mod:`embedkit.outputs`): never an input or a training
    run's folder, nor a folder holding files diagnose did not write; its own folder is updated on every run."""
    paths = [("recipe", recipe_path), ("model", recipe.model.name)]
    train_path = getattr(recipe.data.train, "path", None)
    if train_path:
        try:
            paths.append(("training data", expand(train_path, resolve_data_dir(data_dir))))
        except FileNotFoundError:
            pass
    inputs = [(label, p) for label, p in paths if Path(p).expanduser().exists()]

    def earlier(folder: Path) -> set[str]:  # a folder of diagnose's from before it recorded its files
        try:
            summary = json.loads((folder / JSON_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return set()
        if not (isinstance(summary, dict) and "cutoffs" in summary):
            return set()
        return {name for name in (PNG_NAME, JSON_NAME) if (folder / name).is_file()}

    return open_folder(out_dir, command="data diagnose", flag="-o", overwrite=None, swap=False, inputs=inputs,
                       legacy=earlier)


def _batch_stats(rows: Any, batch_size: int, seed: int, margin: float, threshold: float | None, measure: str
                 ) -> dict[str, Any]:
    return batch_statistics(rows, batch_size, seed, margin, threshold, measure=measure)  # type: ignore[arg-type]


def batch_statistics_plain(rows: Any, batch_size: int, seed: int, margin: float, threshold: float | None,
                           measure: str) -> dict[str, Any]:
    """Batch statistics of plain training: nothing is masked, so every in-batch negative is kept."""
    stats = _batch_stats(rows, batch_size, seed, margin, threshold, measure)
    stats["semantic_kept"] = stats["semantic"]
    stats["surface_kept"] = stats["surface"]
    stats["would_mask_share"] = stats["masked_share"]
    stats["masked_share"] = 0.0
    stats["above_positive_after_mask_share"] = stats["above_positive_share"]
    return stats


def shares(counts: dict[str, int]) -> dict[str, float]:
    """Each kind's fraction of the total (positives by kind: identity, view, neighbour)."""
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()} if total else {}


MASKED_WARN = 0.10  # more in-batch negatives masked than this: the threshold is likely too low for the space


def cutoff_report(summary: dict[str, Any]) -> list[str]:
    """The lines that show a mis-set cut-off before training: the cut-offs in force and the reference's
    neighbour cosines, the share of positives of each kind, and the share of in-batch negatives masked."""
    cut = summary["cutoffs"]
    spread = cut.get("neighbour_percentiles") or {}
    fn = cut["false_negative"]
    lines = [
        f"cut-offs ({cut['mode']}): positive ≥ {cut['positive_min']:.3f}, hard negative ≤ {cut['negative_max']:.3f}, "
        f"mask ≥ {'off' if fn is None else f'{fn:.3f}'}; reference top-K neighbour cosines "
        + ", ".join(f"{k} {v:.3f}" for k, v in spread.items()),
    ]
    pos = summary.get("after_positive_shares") or {}
    if pos:
        lines.append("positives by kind: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in pos.items()))
    after = summary["after"]["in_batch"]
    masked = float(after.get("masked_share") or 0.0)
    above = after.get("above_threshold_share")
    lines.append(f"in-batch negatives masked: {100 * masked:.1f}%"
                 + (f" ({100 * above:.1f}% at or above the mask cut-off)" if above is not None else ""))
    if masked > MASKED_WARN:
        hint = ("set method.cutoffs: relative (cut-offs from this reference's own similarity distribution)"
                if cut["mode"] == "absolute" else "raise method.false_negative_percentile")
        lines.append(f"warning: {100 * masked:.0f}% of in-batch negatives are masked: the cut-offs look too low for "
                     f"this reference space; {hint}")
    return lines


def _diagnose(args: argparse.Namespace) -> int:
    out = args.output or f"diagnose-{Path(args.recipe).stem}"
    summary = diagnose(args.recipe, args.overrides, data_dir=args.data_dir, out_dir=out,
                       max_samples=args.max_samples or None, batch_size=args.batch_size, draw=not args.no_chart,
                       progress=args.progress)
    print(f"{args.recipe}: method {summary['method']}, reference {summary['reference']}, "
          f"{summary['before']['rows']} rows, batch {summary['batch_size']}, seed {summary['seed']}")
    method = summary["method"]
    if method == "debcse":
        labels, what = ("before", "after"), "after debiasing"
    else:  # the recipe's own pairs; DebCSE's would-be pairs only beside them, for comparison
        labels, what = (method, "debcse"), "DebCSE's debiasing (its defaults) would give"
        print(f"{method} trains on the pairs in column '{method}'; column 'debcse' shows what DebCSE would make of "
              "the same sentences, for comparison")
    print(f"{what}, positives: {summary['after_positive_kinds']}; "
          f"hard negatives: {summary['after_negative_kinds'] or 'none'}")
    for line in cutoff_report(summary):
        print(line)
    print(format_table(summary["before"], summary["after"], labels))
    written = [JSON_NAME] if args.no_chart else [PNG_NAME, JSON_NAME]
    print(f"wrote {', '.join(str(Path(out) / w) for w in written)}")
    return 0


def add_cli(data_commands: argparse._SubParsersAction) -> None:
    """Register ``embedkit data diagnose RECIPE [-o DIR]`` under the ``data`` command group."""
    d = data_commands.add_parser(
        "diagnose",
        help="length/surface/semantic histograms of the pairs a recipe trains on (beside them: DebCSE's debiased "
             "pairs; for a debcse recipe, before and after debiasing)",
    )
    d.add_argument("recipe", help="recipe file, or the name of a shipped recipe")
    d.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override recipe fields")
    d.add_argument("--data-dir", help="local public-data folder (default: $EMBEDKIT_DATA, data/public, ../shared/data)")
    d.add_argument("-o", "--output",
                   help="folder for diagnose.png and diagnose.json (default: ./diagnose-<recipe name>)")
    d.add_argument("--max-samples", type=int, default=2000,
                   help="diagnose the first N training rows (default 2000; 0: all)")
    d.add_argument("--batch-size", type=int, help="batch size of the simulated batches (default: the recipe's)")
    d.add_argument("--no-chart", action="store_true", help="numbers only, no PNG")
    add_renamed(d, "--no-plot", "--no-chart", "no_chart", flag=True)
    add_no_progress(d)
    d.set_defaults(func=_diagnose)
