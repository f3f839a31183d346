"""Output of ``embedkit eval``: the terminal table, ``results.json`` (written atomically) and the PNG chart."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from embedkit.evaluation.sts import PROTOCOL, SETTINGS, TASKS
from embedkit.paths import atomic_path


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf → null, tuples → lists, paths → str."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Serialise first, write ``<path>.partial``, then rename over ``path``: a reader never sees half a file."""
    path = Path(path)
    text = json.dumps(_clean(obj), indent=2, allow_nan=False, default=str)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    return path


def _fmt(x: Any, width: int = 8) -> str:
    if isinstance(x, (int, float)) and math.isfinite(x):
        return f"{x:{width}.2f}"
    return f"{'–':>{width}}"


def _diff(x: Any, width: int = 8) -> str:
    if isinstance(x, (int, float)) and math.isfinite(x):
        return f"{x:+{width}.2f}"
    return f"{'–':>{width}}"


def sts_table(res: dict[str, Any], other: dict[str, Any] | None = None, labels: tuple[str, str] = ("A", "B")) -> str:
    """The main table (100 × Spearman, "all" setting; Pearson and pair counts), then the other settings apart.

    With ``other`` (``--compare``): columns A, B and B − A for Spearman.
    """
    lines = [f"STS suite, protocol {res.get('protocol', PROTOCOL)}: cosine, 100 × Spearman; STS12-16 in the "
             "'all' setting (subsets concatenated); STS-B and SICK-R test"]
    tasks = [t for t in TASKS if t in res.get("tasks", {})] or list(res.get("tasks", {}))
    if other is None:
        lines.append(f"{'task':<14}{'pairs':>7}{'spearman':>10}{'pearson':>10}")
        for t in tasks:
            s = res["tasks"][t]
            lines.append(f"{t:<14}{s.get('n', ''):>7}{_fmt(s.get('spearman'), 10)}{_fmt(s.get('pearson'), 10)}")
        lines.append(f"{'STS avg':<14}{'':>7}{_fmt(res.get('avg'), 10)}")
    else:
        a, b = labels
        lines.append(f"A = {a}, B = {b}")
        lines.append(f"{'task':<14}{'pairs':>7}{'A':>12}{'B':>12}{'B - A':>10}")
        for t in tasks:
            sa, sb = res["tasks"][t], other["tasks"].get(t, {})
            d = (sb.get("spearman") - sa.get("spearman")) if sb.get("spearman") is not None else None
            lines.append(f"{t:<14}{sa.get('n', ''):>7}{_fmt(sa.get('spearman'), 12)}{_fmt(sb.get('spearman'), 12)}"
                         f"{_diff(d, 10)}")
        lines.append(f"{'STS avg':<14}{'':>7}{_fmt(res.get('avg'), 12)}{_fmt(other.get('avg'), 12)}"
                     f"{_diff(other.get('avg', float('nan')) - res.get('avg', float('nan')), 10)}")
    settings = res.get("settings") or {}
    if settings:
        lines.append("Other SentEval settings (NOT comparable with the table above; do not mix):")
        for name in SETTINGS:
            if name in settings:
                row = "  ".join(f"{t} {_fmt(settings[name]['tasks'][t]['spearman'], 0)}" for t in tasks
                                if t in settings[name]["tasks"])
                extra = (f"   [B: avg {_fmt(other['settings'][name]['avg'], 0)}]"
                         if other and "settings" in other else "")
                lines.append(f"  {name:<6} avg {_fmt(settings[name]['avg'], 0)}: {row}{extra}")
    for note in res.get("deviations", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def geometry_table(geo: dict[str, Any]) -> str:
    """One line per geometry number."""
    return "\n".join([
        "Geometry (Wang & Isola 2020; unit vectors; lower alignment/uniformity is better):",
        f"  alignment  {geo['alignment']:.4f}  ({geo['positives']['n']} STS-B pairs, {geo['positives']['rule']})",
        f"  uniformity {geo['uniformity']:.4f}  ({geo['sentences']['n']} sentences, t = 2)",
        f"  anisotropy {geo['anisotropy']:.4f}  (mean cosine of distinct-sentence pairs)",
    ])


def mteb_table(run: dict[str, Any]) -> str:
    """mteb main scores (× 100 for reading; the files keep mteb's 0–1 scale)."""
    lines = [f"MTEB ({run['model_name']} @ revision {run['revision'][:12]}): main score × 100, seconds in mteb"]
    for name, t in run["tasks"].items():
        others = [f"{k} {100 * v:.2f}" for k, v in (t.get("metrics") or {}).items() if k != t.get("main_metric")]
        seconds = f"{t['evaluation_time']:.1f}" if t.get("evaluation_time") is not None else ""
        lines.append(f"  {name:<20}{t.get('type') or '':<20}{_fmt(100 * t['main_score'], 8)}  "
                     f"{t.get('main_metric') or '':<16}{seconds:>8}  ({t['source']} data)"
                     + (f"; {', '.join(others)}" if others else ""))
    if run.get("results_dir"):
        lines.append(f"  results: {run['results_dir']}")
    return "\n".join(lines)


def ranking_table(results: dict[str, Any]) -> str:
    """Reranking (MAP, MRR@10) and retrieval (nDCG@10, Recall@100, MRR@10) scores × 100, one row per set."""
    lines = []
    for kind, metrics, heads in (
        ("rerank", ("map", "mrr@10"), ("MAP", "MRR@10")),
        ("retrieval", ("ndcg@10", "recall@100", "mrr@10"), ("nDCG@10", "Recall@100", "MRR@10")),
    ):
        sets = results.get(kind) or {}
        if not sets:
            continue
        count = "questions" if kind == "rerank" else "queries"
        lines.append(f"{'Reranking' if kind == 'rerank' else 'Retrieval':<28}" + "".join(f"{h:>12}" for h in heads)
                     + f"{count:>11}{'seconds':>9}")
        for name, v in sets.items():
            lines.append(f"  {name:<26}" + "".join(f"{v[m]:>12.2f}" for m in metrics) + f"{v[count]:>11}"
                         + f"{v['seconds']:>9.1f}")
            for dim, at in v.get("dims", {}).items():  # Matryoshka: first `dim` coordinates, then normalised
                lines.append(f"    {'first ' + dim + ' dims':<24}" + "".join(f"{at[m]:>12.2f}" for m in metrics))
    return "\n".join(lines)


def render_chart(path: str | os.PathLike, res: dict[str, Any], other: dict[str, Any] | None = None,
                 labels: tuple[str, str] = ("A", "B")) -> Path:
    """A bar chart of the 7 tasks and the average (two bars per task with ``other``, labelled with B − A).

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend change); written to a temporary
    file and renamed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tasks = [t for t in TASKS if t in res["tasks"]]
    names = tasks + ["Avg"]
    va = [res["tasks"][t]["spearman"] for t in tasks] + [res["avg"]]
    fig = Figure(figsize=(10, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xs = list(range(len(names)))
    if other is None:
        bars = ax.bar(xs, va, color="#4C72B0", width=0.6)
        for bar, v in zip(bars, va, strict=True):
            ax.annotate(f"{v:.2f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
    else:
        vb = [other["tasks"].get(t, {}).get("spearman", float("nan")) for t in tasks] + [other["avg"]]
        w = 0.38
        ax.bar([x - w / 2 for x in xs], va, width=w, color="#4C72B0", label=labels[0])
        bars = ax.bar([x + w / 2 for x in xs], vb, width=w, color="#DD8452", label=labels[1])
        for bar, a, b in zip(bars, va, vb, strict=True):
            top = max(a, b) if math.isfinite(b) else a
            ax.annotate(f"{b - a:+.2f}", (bar.get_x(), top), ha="center", va="bottom", fontsize=8,
                        color="#2a7f2a" if b >= a else "#b22222")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xticks(xs)
    ax.set_xticklabels(names, fontsize=9)
    ax.set_ylabel("100 × Spearman (cosine)")
    low = min([v for v in va if math.isfinite(v)] + [0.0])
    ax.set_ylim(min(low, 0.0), 100)
    suffix = f" — {labels[1]} − {labels[0]} above bars" if other else ""
    ax.set_title(f"STS, {res.get('protocol', PROTOCOL)} ('all' setting){suffix}", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
