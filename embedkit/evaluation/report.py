"""Output of ``embedkit eval``: the terminal table, ``results.json`` (written atomically) and the PNG chart."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from embedkit.evaluation.sts import PROTOCOL, SETTINGS, TASKS
from embedkit.paths import atomic_path
from embedkit.recipe import METRIC_LABELS as METRIC_KEYS


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


# ``eval A --compare B``: one convention for the table, the chart and results.json (difference_a_minus_b).
DIFFERENCE = "A - B = what changed from B to A (+: A scores higher)"


def sts_table(res: dict[str, Any], other: dict[str, Any] | None = None, labels: tuple[str, str] = ("A", "B")) -> str:
    """The main table (100 × Spearman, "all" setting; Pearson and pair counts), then the other settings apart.

    With ``other`` (``--compare``): columns A, B and A − B for Spearman: what changed from B (``--compare``, e.g.
    the base model) to A (the model evaluated), positive where A scores higher.
    """
    lines = [f"STS suite, protocol {res.get('protocol', PROTOCOL)}: cosine, 100 × Spearman; STS12-16 in the "
             "'all' setting (subsets concatenated); STS-B and SICK-R test"]
    tasks = [t for t in TASKS if t in res.get("tasks", {})] or list(res.get("tasks", {}))
    avg_name = "STS avg" if len(tasks) == len(TASKS) else f"avg ({len(tasks)} tasks)"
    seen = set(res.get("seen_in_training") or [])  # tasks the training data holds (evaluation/overlap.py)

    def name(t: str) -> str:
        return f"{t}*" if t in seen else t

    if other is None:
        lines.append(f"{'task':<14}{'pairs':>7}{'spearman':>10}{'pearson':>10}")
        for t in tasks:
            s = res["tasks"][t]
            lines.append(f"{name(t):<14}{s.get('n', ''):>7}{_fmt(s.get('spearman'), 10)}{_fmt(s.get('pearson'), 10)}")
        lines.append(f"{avg_name:<14}{'':>7}{_fmt(res.get('avg'), 10)}")
        if seen:
            lines.append(f"{'clean avg':<14}{'':>7}{_fmt(res.get('avg_clean'), 10)}   "
                         f"({len(res.get('avg_clean_tasks') or [])} tasks not seen in training)")
    else:
        a, b = labels
        lines.append(f"A = {a}, B = {b}; {DIFFERENCE}")
        lines.append(f"{'task':<14}{'pairs':>7}{'A':>12}{'B':>12}{'A - B':>10}")
        for t in tasks:
            sa, sb = res["tasks"][t], other["tasks"].get(t, {})
            d = (sa.get("spearman") - sb.get("spearman")) if sb.get("spearman") is not None else None
            lines.append(f"{t:<14}{sa.get('n', ''):>7}{_fmt(sa.get('spearman'), 12)}{_fmt(sb.get('spearman'), 12)}"
                         f"{_diff(d, 10)}")
        lines.append(f"{avg_name:<14}{'':>7}{_fmt(res.get('avg'), 12)}{_fmt(other.get('avg'), 12)}"
                     f"{_diff(res.get('avg', float('nan')) - other.get('avg', float('nan')), 10)}")
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
    encoding = res.get("encoding") or {}
    if encoding.get("truncation"):
        lines.append(f"sentence length: {encoding['truncation']}")
    for t in tasks:
        if t in seen:
            o = res["overlap"][t]
            lines.append(f"* {t}: {o['pairs_pct']:.1f}% of its pairs ({o['pairs_norm_pct']:.1f}% normalised) and "
                         f"{o['texts_pct']:.1f}% of its texts are in the training data: partly a training score")
    if res.get("avg_note"):
        lines.append(f"note: {res['avg_note']}")
    for note in res.get("deviations", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def geometry_table(geo: dict[str, Any]) -> str:
    """One line per geometry number."""
    return "\n".join([
        "Geometry (Wang & Isola 2020, Wang & Liu 2021; unit vectors; lower alignment/uniformity is better):",
        f"  alignment  {geo['alignment']:.4f}  ({geo['positives']['n']} STS-B pairs, {geo['positives']['rule']})",
        f"  uniformity {geo['uniformity']:.4f}  ({geo['sentences']['n']} sentences, t = 2)",
        *([f"  tolerance  {geo['tolerance']:.4f}  (mean cosine of {geo['tolerance_pairs']['n']} STS-B pairs, "
           f"{geo['tolerance_pairs']['rule']}; Wang & Liu 2021, higher: similar sentences stay close)"]
          if "tolerance" in geo else []),
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


def _axis_range(values: list[float], pad: float = 2.0) -> tuple[float, float]:
    """A y-range that shows the differences between ``values``: from a little under the lowest to a little over
    the highest, on whole multiples of 5 (72-85 → 65-90), kept inside 0-100 for scores that are."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 100.0
    lo, hi = min(finite) - pad, max(finite) + pad
    lo, hi = 5 * math.floor(lo / 5), 5 * math.ceil(hi / 5)
    if min(finite) >= 0:
        lo = max(lo, 0.0)
    if max(finite) <= 100:
        hi = min(hi, 100.0)
    return float(lo), float(hi)


def _save(fig: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def render_chart(path: str | os.PathLike, res: dict[str, Any], other: dict[str, Any] | None = None,
                 labels: tuple[str, str] = ("A", "B"), model_name: str | None = None) -> Path:
    """``sts.png``: :func:`sts_figure`, written to a temporary file and renamed."""
    return _save(sts_figure(res, other, labels, model_name), path)


def sts_figure(res: dict[str, Any], other: dict[str, Any] | None = None, labels: tuple[str, str] = ("A", "B"),
               model_name: str | None = None) -> Any:
    """A bar chart of the tasks that ran and their average, on a y-axis zoomed to the scores (the axis does not
    start at 0, and says so), the model's name in the title. The numbers are in the table and results.json, so
    the bars carry none; with ``other`` (``--compare``) two bars per task and A − B above each pair (green where A
    scores higher).

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend change).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tasks = [t for t in TASKS if t in res["tasks"]]
    avg_label = "Avg" if len(tasks) == len(TASKS) else f"Avg ({len(tasks)} tasks)"
    names = tasks + [avg_label]
    va = [res["tasks"][t]["spearman"] for t in tasks] + [res["avg"]]
    fig = Figure(figsize=(10, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xs = list(range(len(names)))
    colors = ["#4C72B0"] * len(tasks) + ["#2F4B7C"]  # the average a shade darker
    values = list(va)
    if other is None:
        ax.bar(xs, va, color=colors, width=0.6)
    else:
        vb = [other["tasks"].get(t, {}).get("spearman", float("nan")) for t in tasks] + [other["avg"]]
        values += vb
        w = 0.38
        ax.bar([x - w / 2 for x in xs], va, width=w, color="#4C72B0", label=labels[0])
        bars = ax.bar([x + w / 2 for x in xs], vb, width=w, color="#DD8452", label=labels[1])
        for bar, a, b in zip(bars, va, vb, strict=True):
            if not math.isfinite(b):
                continue
            ax.annotate(f"{a - b:+.2f}", (bar.get_x(), max(a, b)), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=8, color="#2a7f2a" if a >= b else "#b22222")
        ax.legend(loc="upper left", fontsize=8, ncols=2)
    lo, hi = _axis_range(values, pad=3.0 if other is not None else 2.0)
    ax.set_ylim(lo, hi)
    ax.set_xticks(xs)
    ax.set_xticklabels(names, fontsize=9)
    ax.set_ylabel("100 × Spearman (cosine)" + (f"; axis from {lo:g}" if lo > 0 else ""))
    name = model_name or (res.get("model") or {}).get("name") or "model"
    if other is not None:
        name = f"{labels[0]} vs {labels[1]} (A − B above the bars)"
    length = (res.get("encoding") or {}).get("max_seq_length")
    detail = f"SentEval 'all' setting{f', up to {length} tokens' if length else ''}"
    ax.set_title(f"STS: {name}\n{detail}", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    return fig


def dev_history(results: dict[str, Any]) -> dict[str, Any] | None:
    """The dev metric over training steps from a training ``results.json`` (``train.log_history``, the trainer's
    log): ``{"metric", "label", "steps", "values", "before", "best_step", "loss_steps", "losses"}``, or ``None``
    when the run evaluated no dev set during training."""
    train = results.get("train") or {}
    history = train.get("log_history") or []
    metric = (train.get("best_dev") or {}).get("metric")
    if metric is None:  # an older results.json: the first eval_<set>_<metric> the log holds
        keys = [k for row in history for k in row if k.startswith("eval_") and k.rsplit("_", 1)[-1] in METRIC_KEYS]
        metric = keys[0] if keys else None
    if metric is None:
        return None
    points = [(int(row["step"]), float(row[metric])) for row in history if metric in row and "step" in row]
    if not points:
        return None
    losses = [(int(row["step"]), float(row["loss"])) for row in history if "loss" in row and "step" in row]
    short = metric.rsplit("_", 1)[-1]
    dev = results.get("dev") or {}
    before = (dev.get("before") or {}).get(short)
    best = max(points, key=lambda p: p[1])
    kept = str(train.get("best_checkpoint") or "").rsplit("-", 1)[-1]
    if kept.isdigit() and int(kept) in {p[0] for p in points}:  # the checkpoint the trainer actually kept
        best = next(p for p in points if p[0] == int(kept))
    return {"metric": metric, "label": f"{dev.get('name') or metric[5:].rsplit('_', 1)[0]} "
                                       f"{METRIC_KEYS.get(short, short)}",
            "steps": [p[0] for p in points], "values": [p[1] for p in points],
            "before": float(before) if isinstance(before, (int, float)) else None, "best_step": best[0],
            "loss_steps": [p[0] for p in losses], "losses": [p[1] for p in losses]}


def load_training_results(folder: str | os.PathLike) -> dict[str, Any] | None:
    """What a training output folder says about its training: its ``results.json`` (with ``train.log_history``),
    else the newest ``checkpoints/checkpoint-N/trainer_state.json`` (an unfinished run); ``None`` for a folder
    that is not a training output."""
    folder = Path(folder)
    results = folder / "results.json"
    if results.is_file():
        try:
            data = json.loads(results.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if isinstance(data, dict) and (data.get("train") or {}).get("log_history"):
            return data
    states = sorted(folder.glob("checkpoints/checkpoint-*/trainer_state.json"),
                    key=lambda p: int(p.parent.name.rsplit("-", 1)[-1]) if p.parent.name.rsplit("-", 1)[-1].isdigit()
                    else -1)
    for state in reversed(states):
        try:
            data = json.loads(state.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        return {"train": {"log_history": data.get("log_history") or []}}
    return None


def render_training_chart(path: str | os.PathLike, history: dict[str, Any], model_name: str = "model") -> Path:
    """``dev-curve.png``: :func:`training_figure`, written to a temporary file and renamed."""
    return _save(training_figure(history, model_name), path)


def training_figure(history: dict[str, Any], model_name: str = "model") -> Any:
    """The dev metric at each evaluation step (the checkpoint kept marked, the starting model's score as a dashed
    line) and, below it, the training loss, from :func:`dev_history`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    has_loss = bool(history["losses"])
    fig = Figure(figsize=(9, 6.2 if has_loss else 4.4), dpi=100)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2 if has_loss else 1, 1, height_ratios=[2, 1] if has_loss else [1])
    ax = fig.add_subplot(grid[0])
    steps, values = history["steps"], history["values"]
    ax.plot(steps, values, marker="o", color="#4C72B0", label=f"{history['label']} (dev)")
    best = history["best_step"]
    best_value = values[steps.index(best)]
    ax.scatter([best], [best_value], s=160, marker="*", color="#DD8452", zorder=3,
               label=f"best: step {best}, {best_value:.2f}")
    if history["before"] is not None:
        ax.axhline(history["before"], color="#777777", linestyle="--", linewidth=1,
                   label=f"before training: {history['before']:.2f}")
    ax.margins(y=0.15)  # autoscaled to the curve (and the dashed line): a dev metric moves by tenths of a point
    ax.set_ylabel(history["label"])
    ax.set_title(f"{model_name}: {history['label']} during training", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    if has_loss:
        ax.tick_params(labelbottom=False)
        low = fig.add_subplot(grid[1], sharex=ax)
        low.plot(history["loss_steps"], history["losses"], color="#55A868", linewidth=1)
        low.set_ylabel("training loss")
        low.grid(alpha=0.3)
        low.set_xlabel("step")
    else:
        ax.set_xlabel("step")
    fig.tight_layout()
    return fig
