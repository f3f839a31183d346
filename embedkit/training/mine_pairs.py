"""Training pairs mined from unlabelled text: ``embedkit data mine-pairs``.

    embedkit data mine-pairs CORPUS [CORPUS2] --model M -o OUT.jsonl [--k 4] [--threshold 1.2] [--top N]

One corpus gives paraphrase mining (each sentence against the others); two give bitext mining (each sentence of
the first against the second, the case of Artetxe & Schwenk 2019 and of the self-mining papers). Every text is
encoded once (sharded under ``torchrun``, as ``data mine``). The candidates are each text's ``--k`` nearest
neighbours on the other side, both directions, scored by the ratio margin (:func:`embedkit.mining.margin_pairs`).
Then, in this order: pairs whose two texts are near-identical on the surface are dropped
(``--max-surface-similarity``: rapidfuzz's normalised Indel similarity of the case- and space-folded texts,
default 0.9); each text is kept in one pair at most, best margin first (so a text whose nearest neighbour was
its own near-copy pairs with its next candidate); pairs under ``--threshold`` are dropped; the best ``--top``
are kept. Three files are written together (:mod:`embedkit.outputs`): ``OUT.jsonl`` (``anchor``, ``positive``,
``margin``, ``cosine``; a recipe trains on it with ``columns: [anchor, positive]``), ``OUT.stats.json``
(settings, counts, score quantiles) and ``OUT.png`` (the margins of the one-to-one pairs, kept and dropped, with
the threshold).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from embedkit.cliargs import add_no_progress, number_or_off
from embedkit.data.sources import read_corpus
from embedkit.data.sts import sha256_file
from embedkit.distributed import is_main
from embedkit.errors import DataError, EmbedkitError
from embedkit.model_ref import check_model, load_model
from embedkit.outputs import check_file_output, writing
from embedkit.paths import atomic_path
from embedkit.recipe import PAIR_MINING_DEFAULTS
from embedkit.version import __version__

DEFAULTS = PAIR_MINING_DEFAULTS


def sidecars(output: Path) -> tuple[Path, Path]:
    """``OUT.stats.json`` and ``OUT.png`` beside ``OUT.jsonl``."""
    stem = output.with_suffix("") if output.suffix == ".jsonl" else output
    return stem.with_name(stem.name + ".stats.json"), stem.with_name(stem.name + ".png")


def owns_sidecar(side: Path, output: Path) -> bool:
    """Whether ``side`` is one ``mine-pairs`` wrote with ``output``: the stats file names this command, and the
    chart's checksum is the one it recorded."""
    stats_path, _ = sidecars(output)
    try:
        stats = json.loads(stats_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(stats, dict) or stats.get("command") != "data mine-pairs":
        return False
    return side == stats_path or (side.is_file() and stats.get("files", {}).get(side.name) == sha256_file(side))


def _unique(texts: list[str]) -> list[str]:
    """The texts once each (first occurrence order), empty lines out: a repeated sentence is not its paraphrase."""
    return list(dict.fromkeys(t for t in texts if t.strip()))


def _quantiles(values: np.ndarray) -> dict[str, float] | None:
    if not values.size:
        return None
    q = np.quantile(values, [0.0, 0.1, 0.5, 0.9, 1.0])
    return {name: round(float(v), 4) for name, v in zip(("min", "p10", "p50", "p90", "max"), q)}


def mine_pairs(model: Any, source: list[str], target: list[str] | None, k: int, threshold: float | None,
               top: int | None, max_surface_similarity: float | None, batch_size: int = 128,
               progress: bool | None = False) -> tuple[list[dict[str, Any]], dict[str, Any], np.ndarray, np.ndarray]:
    """The kept pairs (best margin first), the counts, and the candidates' margins kept / dropped (for the
    chart). ``source`` / ``target``: the unique texts (``target=None``: paraphrase mining within ``source``)."""
    from embedkit.mining import ensure_process_group, margin_pairs, unit_vectors

    ensure_process_group()
    src_vec = unit_vectors(model, source, batch_size, show_progress_bar=progress)
    tgt_vec = None if target is None else unit_vectors(model, target, batch_size, show_progress_bar=progress)
    found = margin_pairs(src_vec, tgt_vec, k)
    other = source if target is None else target
    a = [source[i] for i in found.source]
    b = [other[j] for j in found.target]
    from embedkit.mining import select_margin_pairs  # torch: only once the command runs

    chosen, below, near_dup, kept, beyond_top = select_margin_pairs(found, a, b, threshold, top,
                                                                    max_surface_similarity)
    rows = [{"anchor": a[i], "positive": b[i], "margin": round(float(found.margin[i]), 6),
             "cosine": round(float(found.cosine[i]), 6)} for i in kept]
    stats = {
        "texts": {"source": len(source), **({"target": len(target)} if target is not None else {})},
        "candidates": len(a), "dropped_near_duplicate": int(near_dup.sum()),
        "one_to_one": len(chosen), "dropped_below_threshold": int(below.sum()),
        "dropped_beyond_top": int(beyond_top.size), "pairs": len(rows),
        "margin": {"kept": _quantiles(found.margin[kept]), "one_to_one": _quantiles(found.margin[chosen])},
        "cosine": {"kept": _quantiles(found.cosine[kept])},
    }
    return rows, stats, found.margin[kept], found.margin[np.setdiff1d(chosen, kept)]


def plot(kept: np.ndarray, dropped: np.ndarray, threshold: float | None, path: Path, title: str) -> None:
    """Histogram of the margins of the one-to-one pairs, kept and dropped, with the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.concatenate([kept, dropped]) if kept.size + dropped.size else np.zeros(1)
    bins = np.linspace(values.min(), max(values.max(), values.min() + 1e-3), 41)
    fig, ax = plt.subplots(figsize=(9, 5.2))
    for label, v, colour in (("kept", kept, "#2ca02c"), ("dropped (below the threshold or beyond --top)", dropped,
                                                          "#d62728")):
        if v.size:
            ax.hist(v, bins=bins, alpha=0.35, color=colour, label=f"{label}: n={v.size:,}")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2, label=f"threshold {threshold:g}")
    ax.set_xlabel("ratio margin: cos(x, y) / mean cosine of x's and y's k nearest neighbours")
    ax.set_ylabel("candidate pairs")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=9, loc="upper right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------
# Command line


def _check_options(args: argparse.Namespace) -> None:
    if Path(args.output).suffix != ".jsonl":
        raise EmbedkitError(f"--output {args.output!r}: expected a file name ending in .jsonl")
    if args.k < 1:
        raise EmbedkitError(f"--k {args.k}: expected at least 1 neighbour")
    if args.top is not None and args.top < 1:
        raise EmbedkitError(f"--top {args.top}: expected at least 1 pair")
    if args.threshold is not None and not np.isfinite(args.threshold):
        raise EmbedkitError(f"--threshold {args.threshold}: expected a finite number (a margin, 1 = as close as the "
                            "neighbours)")
    s = args.max_surface_similarity
    if s is not None and not 0 < s <= 1:
        raise EmbedkitError(f"--max-surface-similarity {s}: expected a number in (0, 1], or 'none'")
    if args.batch_size < 1:
        raise EmbedkitError(f"--batch-size {args.batch_size}: expected at least 1")


def _read(path: str, flag: str) -> list[str]:
    try:
        texts = _unique(read_corpus(path))
    except FileNotFoundError:
        raise EmbedkitError(f"{flag} {path}: file not found") from None
    except DataError as err:
        raise EmbedkitError(str(err)) from None
    return texts


def _run(args: argparse.Namespace) -> int:
    _check_options(args)
    source = _read(args.corpus, "CORPUS")
    target = _read(args.corpus2, "CORPUS2") if args.corpus2 else None
    need = args.k + 1 if target is None else args.k  # a text is never its own neighbour within one corpus
    for flag, path, texts in (("CORPUS", args.corpus, source), ("CORPUS2", args.corpus2, target)):
        if texts is not None and len(texts) < need:
            raise EmbedkitError(f"{flag} {path}: {len(texts)} distinct non-empty text(s); the margin needs --k "
                                f"{args.k} neighbours {'besides the text itself' if target is None else 'on each side'}"
                                f", so at least {need}: lower --k or add texts")
    inputs = [("corpus", p) for p in (args.corpus, args.corpus2) if p] + [("model", args.model)]
    output = check_file_output(args.output, overwrite=args.overwrite, inputs=inputs, sidecars=sidecars,
                               owns=owns_sidecar, command="embedkit data mine-pairs")
    check_model(args.model, what="--model", trust_flag=None)
    model, _ = load_model(args.model)
    rows, stats, kept, dropped = mine_pairs(model, source, target, args.k, args.threshold, args.top,
                                            args.max_surface_similarity, args.batch_size, args.progress)
    if not rows:
        raise EmbedkitError(f"data mine-pairs: no pair kept of {stats['candidates']:,} candidates "
                            f"({stats['dropped_near_duplicate']:,} near-duplicates, "
                            f"{stats['dropped_below_threshold']:,} below --threshold {args.threshold}); lower "
                            "--threshold; nothing was written")
    if not is_main():
        return 0
    settings = {"model": args.model, "corpus": args.corpus, "corpus2": args.corpus2, "k": args.k,
                "threshold": args.threshold, "top": args.top, "max_surface_similarity": args.max_surface_similarity}
    out = Path(args.output).expanduser()
    title = (f"pairs mined with {args.model} ({'bitext' if target is not None else 'paraphrase'}, ratio margin, "
             f"k={args.k})\n{len(rows):,} of {stats['candidates']:,} candidates kept")
    with output, writing(output.path, "writing the mined pairs", f"--output {args.output}"):
        stats_path, png_path = sidecars(output.path)
        jsonl = output.files.path(output.path)
        with open(jsonl, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        png = output.files.path(png_path)
        plot(kept, dropped, args.threshold, png, title)
        record = {"command": "data mine-pairs", "embedkit": __version__, "settings": settings, **stats,
                  "files": {output.path.name: sha256_file(jsonl), png_path.name: sha256_file(png)}}
        output.files.path(stats_path).write_text(json.dumps(record, indent=2), encoding="utf-8")
        output.commit()
    stats_path, png_path = sidecars(out)
    margin = stats["margin"]["kept"]
    print(f"{len(rows):,} pairs kept of {stats['candidates']:,} candidates ({stats['dropped_near_duplicate']:,} "
          f"near-duplicates; {stats['one_to_one']:,} one-to-one, {stats['dropped_below_threshold']:,} of them below "
          "the threshold, "
          f"{stats['dropped_beyond_top']:,} beyond --top); kept margin median {margin['p50']:.3f}")
    print(f"{out}: {len(rows):,} pairs; {stats_path}; {png_path}")
    return 0


def add_cli(data_commands: argparse._SubParsersAction) -> None:
    """Register ``embedkit data mine-pairs`` under the ``data`` command group."""
    d = data_commands.add_parser(
        "mine-pairs", help="paraphrase (one corpus) or bitext (two) pairs by the ratio margin, filtered",
        description="Writes OUTPUT.jsonl (anchor, positive, margin, cosine), OUTPUT.stats.json and OUTPUT.png.")
    d.add_argument("corpus", help="texts: one a line, or a csv/tsv/jsonl 'text' column, or a reranking CSV")
    d.add_argument("corpus2", nargs="?", help="a second corpus: bitext mining between the two")
    d.add_argument("--model", required=True, help="model folder, packaged model or Hub id")
    d.add_argument("-o", "--output", required=True, help="OUTPUT.jsonl")
    d.add_argument("--k", type=int, default=DEFAULTS["k"], help="neighbours for the margin (default 4)")
    d.add_argument("--threshold", type=float, default=DEFAULTS["threshold"],
                   help="keep pairs with margin at least this (default 1.2; see docs/mine-pairs.md)")
    d.add_argument("--top", type=int, help="keep at most the N best pairs")
    d.add_argument("--max-surface-similarity", type=number_or_off(), default=DEFAULTS["max_surface_similarity"],
                   help="drop pairs whose folded texts are at least this similar (Indel, 0-1; default 0.9; 'none')")
    d.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], help="encoding batch size")
    d.add_argument("--overwrite", action="store_true", help="replace OUTPUT and its two files if they exist")
    add_no_progress(d)
    d.set_defaults(func=_run)
