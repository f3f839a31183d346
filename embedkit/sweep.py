"""``embedkit sweep``: a grid of recipe overrides × seeds, each cell an ordinary training run, one table and one
chart over all of them (docs/sweep.md).

``embedkit sweep RECIPE key=v1,v2 [key2=w1,w2 ...] [--seeds N] [--parallel N] [--table-only] -o DIR``

* **Grid.** Each ``key=values`` is one axis; its values are split on the commas outside brackets and quotes
  (``model.pooling=mean,cls``; ``training.matryoshka_dims=[384,128],[384,64]`` is two values), and each value is
  read as YAML, as a ``train`` override is. An axis with one value is a fixed override of every cell. The cells
  are every combination of the axes' values (the product, in the order given) times the seeds.
* **Seeds.** ``--seeds N``: ``training.seed`` = the recipe's seed + 0 … N−1 (``--seeds 42,7``: those seeds).
* **Every cell is validated before any run starts**, with what ``embedkit check`` runs (the recipe, its data,
  the model's files, the run folder with the flags the cell will train with): a bad key or value is one line
  naming the cell.
* **Each cell is an ordinary run folder** ``DIR/runs/<key=value_…_seed=S>``, trained by :func:`embedkit.train`
  with every guarantee of ``embedkit train``. A rerun of the same command skips finished cells (``results.json``;
  a finished cell whose recipe differs from the cell's now is refused, not reused), resumes stopped ones from
  their newest intact checkpoint (``--resume``) and restarts those stopped before their first checkpoint
  (``--overwrite`` of its own run folder).
* **Outputs** (DIR is a report folder of :mod:`embedkit.outputs`, updated on each rerun): ``sweep.csv`` and
  ``sweep.md`` (one row per setting: mean ± sample standard deviation over its seeds), ``runs.csv`` (one row per
  run), ``sweep.json`` (the grid and every run's scores) and ``sweep.png`` (uniformity against tolerance, the
  STS average as colour; drawn when the runs have geometry, i.e. ``eval.suite: sts``).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import itertools
import json
import math
import multiprocessing
import os
import re
import statistics
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedkit.cliargs import add_no_progress
from embedkit.errors import EmbedkitError, RecipeError
from embedkit.log import log
from embedkit.outputs import open_folder
from embedkit.recipe import parse_override, parse_recipe
from embedkit.training import checkpoints, rundir
from embedkit.training.run import SETUP_CHECKS, check_reserve, train
from embedkit.validate import load_recipe_with_data

COMMAND = "sweep"
RUNS = "runs"  # DIR/runs/<cell>: the run folders (a subfolder the sweep manages whole)
SEED_KEY = "training.seed"
# The numbers collected from each run's results.json: (column, how to read it, label in sweep.md).
METRICS = ("sts_avg", "dev", "alignment", "uniformity", "tolerance")
LABELS = {"sts_avg": "STS avg", "dev": "dev", "alignment": "alignment", "uniformity": "uniformity",
          "tolerance": "tolerance"}
_OPEN, _CLOSE = "[{(", "]})"


# ---------------------------------------------------------------------------------------------------------
# The grid


def split_values(text: str) -> list[str]:
    """``v1,v2,...`` split on the commas outside brackets (``[]``, ``{}``, ``()``) and quotes; each value
    stripped of surrounding spaces. ``"0.02,0.05"`` → ``["0.02", "0.05"]``; ``"[1,2],[3]"`` → ``["[1,2]", "[3]"]``."""
    values, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
        elif ch == "," and depth == 0:
            values.append(text[start:i].strip())
            start = i + 1
    values.append(text[start:].strip())
    return values


@dataclass(frozen=True)
class Axis:
    """One ``key=v1,v2`` of the command line: a dotted recipe key and the values (as written) it takes."""

    key: str
    values: tuple[str, ...]


def parse_axis(spec: str) -> Axis:
    """``method.temperature=0.02,0.05`` → ``Axis("method.temperature", ("0.02", "0.05"))``; one line naming the
    spec when it is not ``key=value[,value...]`` with distinct, non-empty values."""
    if "=" not in spec:
        raise RecipeError(f"sweep {spec!r}: expected key.path=value[,value...]")
    key, text = spec.split("=", 1)
    parse_override(f"{key}=")  # the key path, checked as an override's
    values = split_values(text)
    if any(v == "" for v in values):
        raise RecipeError(f"sweep {spec!r}: an empty value; separate the values of {key} with single commas "
                          "(a value holding a comma goes in brackets or quotes)")
    parsed = [parse_override(f"{key}={v}")[1] for v in values]
    dup = next((v for i, v in enumerate(values) if any(parsed[i] == p for p in parsed[:i])), None)
    if dup is not None:
        raise RecipeError(f"sweep {spec!r}: {key} takes the value {dup} twice; each value makes its own runs")
    return Axis(key, tuple(values))


def parse_grid(specs: Sequence[str], seeds: Sequence[int] | None) -> list[Axis]:
    """The axes of the command line, with the refusals that need no recipe: a key given twice, ``output.dir``
    (the sweep sets it), ``training.seed`` together with ``--seeds``."""
    axes = [parse_axis(s) for s in specs]
    keys = [a.key for a in axes]
    twice = next((k for i, k in enumerate(keys) if k in keys[:i]), None)
    if twice:
        raise RecipeError(f"sweep: {twice} is given twice; give all its values in one {twice}=v1,v2,...")
    if "output.dir" in keys:
        raise RecipeError("sweep output.dir: the sweep puts each run in <-o DIR>/runs/<cell>; choose DIR with -o")
    if SEED_KEY in keys and seeds is not None:
        raise RecipeError(f"sweep {SEED_KEY} and --seeds: choose one (--seeds N runs every setting N times)")
    return axes


def parse_seeds(text: str | None) -> tuple[int, list[int]] | None:
    """``--seeds``: ``N`` (the recipe's seed + 0 … N−1: returned as ``(N, [])``) or a list ``42,7`` (``(0,
    [42, 7])``); ``None`` when not given."""
    if text is None:
        return None
    parts = split_values(text)
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise RecipeError(f"--seeds {text}: expected a count N (the recipe's seed + 0 … N−1) or seeds a,b,c") from None
    if len(numbers) == 1:
        if numbers[0] < 1:
            raise RecipeError(f"--seeds {text}: expected at least 1 seed")
        return numbers[0], []
    if len(set(numbers)) != len(numbers):
        raise RecipeError(f"--seeds {text}: a seed given twice")
    return 0, numbers


_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]+")


def _short_keys(axes: Sequence[Axis]) -> dict[str, str]:
    """How a folder name spells each varied key: its last part, or the whole dotted path when two keys share it."""
    last = [a.key.rsplit(".", 1)[-1] for a in axes]
    return {a.key: (n if last.count(n) == 1 else a.key) for a, n in zip(axes, last)}


@dataclass(frozen=True)
class Cell:
    """One run of the grid: the value of every axis, the seed, and its folder's name under ``DIR/runs``."""

    settings: tuple[tuple[str, str], ...]  # (key, value as written), every axis, fixed ones included
    seed: int | None  # None: the recipe's own (or an axis') seed
    name: str
    label: str  # the varied settings without the seed: the row of sweep.md this run belongs to

    def overrides(self, runs: Path) -> list[str]:
        seed = [f"{SEED_KEY}={self.seed}"] if self.seed is not None else []
        return [f"{k}={v}" for k, v in self.settings] + seed + [f"output.dir={runs / self.name}"]


def expand(axes: Sequence[Axis], seeds: Sequence[int | None]) -> list[Cell]:
    """Every combination of the axes' values (the first axis varies slowest), each with every seed (fastest)."""
    varied = [a for a in axes if len(a.values) > 1]
    short = _short_keys(varied)
    cells, names = [], {}
    for combo in itertools.product(*(a.values for a in axes)):
        settings = tuple(zip((a.key for a in axes), combo))
        shown = [f"{short[k]}={v}" for k, v in settings if k in short]
        label = ", ".join(shown) or "recipe"
        for seed in seeds:
            parts = shown + ([f"seed={seed}"] if seed is not None else [])
            name = _UNSAFE.sub("_", "_".join(parts) or "run").strip("._") or "run"
            if len(name) > 120:  # a file name's limit is 255 bytes; keep it readable and unique
                name = name[:100] + "-" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]
            if name in names:
                raise RecipeError(f"sweep: the cells {names[name]} and {', '.join(parts)} get the same folder name "
                                  f"{name}; write the values so they differ in letters, digits or . _ + = -")
            names[name] = ", ".join(parts)
            cells.append(Cell(settings, seed, name, label))
    return cells


# ---------------------------------------------------------------------------------------------------------
# The cells' states and their validation


NEW, FINISHED, RESUME, RESTART = "new", "finished", "resume", "restart"


def cell_state(out: Path) -> str:
    """What a rerun does with the run folder ``out``: ``finished`` (``results.json``: skip it), ``resume`` (an
    intact checkpoint: ``--resume``), ``restart`` (a run stopped before its first complete checkpoint:
    ``--overwrite`` of its own folder), ``new`` (absent or empty)."""
    if (out / rundir.RESULTS).is_file():
        return FINISHED
    work = rundir.resume_work(out)
    if (work / rundir.CHECKPOINTS).is_dir() and checkpoints.latest_complete(work / rundir.CHECKPOINTS) is not None:
        return RESUME
    if out.is_dir() and any(p.name not in (rundir.LOCK, rundir.OWNER) for p in out.iterdir()):
        return RESTART
    return NEW


@dataclass
class Planned:
    cell: Cell
    out: Path
    state: str
    overrides: list[str]


def _check_finished(cell: Cell, out: Path, recipe: Any) -> None:
    """A finished run is reused only when it ran the cell's recipe now (else the table would mix settings)."""
    # The recipe as the run was given it (its marker), compared as `train --resume` compares it: results.json
    # holds it after training resolved what the recipe left to the model (pooling: null -> "mean", ...).
    saved = (rundir.read_marker(out) or {}).get("recipe")
    if not isinstance(saved, dict):
        try:
            saved = json.loads((out / rundir.RESULTS).read_text(encoding="utf-8")).get("recipe")
        except (OSError, ValueError):
            saved = None
    if not isinstance(saved, dict):
        raise RecipeError(f"sweep cell {cell.name}: {out / rundir.RESULTS} cannot be read; remove {out} to run the "
                          "cell again")
    current = recipe.model_dump(mode="json")
    changed = [d for d in rundir.recipe_differences(saved, current) if not d.startswith("output.dir")]
    if changed:
        raise RecipeError(f"sweep cell {cell.name}: {out} finished with another recipe ({'; '.join(changed[:3])}); "
                          "remove that run folder to run the cell again, or choose another -o")


def plan(recipe: Any, cells: Sequence[Cell], runs: Path, overrides: Sequence[str] = (),
         data_dir: str | None = None) -> list[Planned]:
    """Validate every cell as ``embedkit check`` would with the flags it will train with; nothing is written.
    The first problem is raised, prefixed with the cell it was found in."""
    planned = []
    for cell in cells:
        out = runs / cell.name
        state = cell_state(out)
        cell_overrides = [*overrides, *cell.overrides(runs)]
        try:
            resolved, data = load_recipe_with_data(recipe, cell_overrides, data_dir=data_dir, checks=SETUP_CHECKS)
            if state == FINISHED:
                _check_finished(cell, out, resolved)
            else:
                check_reserve(resolved, data, resume=state == RESUME, overwrite=state == RESTART)
        except RecipeError as err:
            text = str(err)
            if text.startswith("sweep cell"):
                raise
            raise RecipeError(f"sweep cell {cell.name}: {text}") from None
        planned.append(Planned(cell, out, state, cell_overrides))
    return planned


# ---------------------------------------------------------------------------------------------------------
# Running


def run_cell(recipe: Any, overrides: list[str], state: str, data_dir: str | None, threads: int | None = None,
             progress: bool | None = False) -> str | None:
    """Train one cell (skipped when finished); returns ``None``, or the one-line error that stopped it. Runs in
    the sweep's process or, under ``--parallel``, in a worker process of its own (``threads``: torch's threads
    there, the cores shared between the workers)."""
    if state == FINISHED:
        return None
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    try:
        train(recipe, overrides, data_dir=data_dir, resume=state == RESUME, overwrite=state == RESTART,
              progress=progress)
    except EmbedkitError as err:
        return str(err).splitlines()[0]
    except Exception as err:  # one cell's failure must not lose the others: reported at the end
        return f"{type(err).__name__}: {err}".splitlines()[0]
    return None


def run_all(recipe: Any, planned: Sequence[Planned], data_dir: str | None, parallel: int = 1,
            progress: bool | None = False) -> dict[str, str]:
    """Train every unfinished cell, one at a time or ``parallel`` worker processes at once; returns the cells
    that failed → their error (the others go on)."""
    todo = [p for p in planned if p.state != FINISHED]
    for p in planned:
        if p.state == FINISHED:
            log(f"sweep: {p.cell.name} finished earlier; skipped")
    failed: dict[str, str] = {}
    recipe_arg = os.fspath(recipe) if isinstance(recipe, os.PathLike) else recipe
    if not todo:
        return failed
    workers = max(1, min(parallel, len(todo)))
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None
    log(f"sweep: {len(todo)} runs, {workers} at a time" + (
        f" ({threads} torch thread{'s' * (threads != 1)} each)" if threads else ""))
    # Every run in a fresh spawned process of its own, one at a time too: it starts from the same clean process
    # as a run of its own would (no forked torch state), and its memory goes back when it ends (runs in one
    # process held on to about 3.5 GB each with all-MiniLM-L6-v2: the fifth of a 15-run sweep was killed for
    # memory on a 24 GB machine).
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1) as pool:
        futures = {pool.submit(run_cell, recipe_arg, p.overrides, p.state, data_dir, threads,
                               progress if workers == 1 else False): p for p in todo}
        for i, (future, p) in enumerate(futures.items(), 1):
            if workers == 1:
                log(f"sweep: run {i}/{len(todo)}: {p.cell.name} ({p.state})")
            try:
                error = future.result()
            except Exception as err:  # the worker process died (killed, out of memory)
                error = f"its worker process failed ({type(err).__name__}: {err})".splitlines()[0]
            if error:
                log(f"sweep: {p.cell.name} failed: {error}")
                failed[p.cell.name] = error
            else:
                log(f"sweep: {p.cell.name} done")
    return failed


# ---------------------------------------------------------------------------------------------------------
# Collecting


def scores_of(results: dict[str, Any]) -> dict[str, float | None]:
    """The numbers a sweep compares, from one run's ``results.json`` (``None`` where the run has none): the STS
    suite's average, the selection set's final score, and the STS-B geometry (alignment, uniformity, tolerance)."""
    sts = results.get("sts") if isinstance(results.get("sts"), dict) else {}
    geo = sts.get("geometry") if isinstance(sts.get("geometry"), dict) else {}
    dev = results.get("dev") if isinstance(results.get("dev"), dict) else {}
    after, metric = dev.get("after"), dev.get("metric")
    out: dict[str, float | None] = {
        "sts_avg": sts.get("avg"),
        "dev": after.get(metric) if isinstance(after, dict) and metric else None,
        **{k: geo.get(k) for k in ("alignment", "uniformity", "tolerance")},
    }
    return {k: (float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None) for k, v in out.items()}


def mean_sd(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """Mean and sample standard deviation (n − 1; ``None`` for one value) of the values present, and their count."""
    present = [v for v in values if v is not None]
    if not present:
        return None, None, 0
    sd = statistics.stdev(present) if len(present) > 1 else None
    return statistics.fmean(present), sd, len(present)


@dataclass
class Row:
    """One setting of the grid (a row of sweep.md): its runs' scores over the seeds."""

    label: str
    settings: tuple[tuple[str, str], ...]
    runs: list[dict[str, Any]] = field(default_factory=list)  # {"name", "seed", "scores"} of each finished run
    missing: list[str] = field(default_factory=list)  # runs without results.json

    def stat(self, metric: str) -> tuple[float | None, float | None, int]:
        return mean_sd([r["scores"][metric] for r in self.runs])


def collect(planned: Sequence[Planned]) -> list[Row]:
    rows: dict[str, Row] = {}
    for p in planned:
        row = rows.setdefault(p.cell.label, Row(p.cell.label, p.cell.settings))
        try:
            results = json.loads((p.out / rundir.RESULTS).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            row.missing.append(p.cell.name)
            continue
        seed = (results.get("recipe") or {}).get("training", {}).get("seed")
        row.runs.append({"name": p.cell.name, "seed": seed, "scores": scores_of(results),
                         "steps": (results.get("train") or {}).get("global_step"),
                         "seconds": results.get("seconds")})
    return list(rows.values())


def _varied(axes: Sequence[Axis]) -> list[str]:
    return [a.key for a in axes if len(a.values) > 1]


def _num(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _digits(metric: str) -> int:
    return 2 if metric in ("sts_avg", "dev") else 4


def table_csv(rows: Sequence[Row], keys: Sequence[str]) -> str:
    """sweep.csv: one line per setting; for each score its mean, sample sd and number of runs."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*keys, "runs", *(f"{m}_{s}" for m in METRICS for s in ("mean", "sd"))])
    for row in rows:
        values = dict(row.settings)
        stats = [row.stat(m) for m in METRICS]
        writer.writerow([*(values[k] for k in keys), len(row.runs),
                         *(x for mean, sd, _ in stats for x in (_num(mean, 6), _num(sd, 6)))])
    return buf.getvalue()


def runs_csv(rows: Sequence[Row], keys: Sequence[str]) -> str:
    """runs.csv: one line per finished run."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*keys, "seed", "run", *METRICS, "steps", "seconds"])
    for row in rows:
        values = dict(row.settings)
        for run in row.runs:
            writer.writerow([*(values[k] for k in keys), run["seed"], f"{RUNS}/{run['name']}",
                             *(_num(run["scores"][m], 6) for m in METRICS), run["steps"], run["seconds"]])
    return buf.getvalue()


def table_md(rows: Sequence[Row], keys: Sequence[str], title: str) -> str:
    """sweep.md: one row per setting, each score as mean ± sample sd over its seeds (the run count in a column)."""
    shown = [m for m in METRICS if any(row.stat(m)[2] for row in rows)]
    lines = [f"# {title}", "",
             "Each score: mean ± sample standard deviation (n − 1) over the setting's runs (seeds); a single run "
             "shows its value. STS avg: the 7-task STS suite's Spearman × 100; dev: the selection set's final "
             "score; alignment, uniformity (Wang & Isola 2020) and tolerance (Wang & Liu 2021) on STS-B test "
             "(docs/sweep.md).", "",
             "| " + " | ".join([*keys, "runs", *(LABELS[m] for m in shown)]) + " |",
             "|" + "|".join([":--"] * len(keys) + ["--:"] * (1 + len(shown))) + "|"]
    for row in rows:
        values = dict(row.settings)
        cells = []
        for m in shown:
            mean, sd, n = row.stat(m)
            d = _digits(m)
            cells.append("–" if mean is None else f"{mean:.{d}f}" + (f" ± {sd:.{d}f}" if sd is not None else ""))
        runs = f"{len(row.runs)}" + (f" ({len(row.missing)} not finished)" if row.missing else "")
        lines.append("| " + " | ".join([*(f"`{values[k]}`" for k in keys), runs, *cells]) + " |")
    return "\n".join(lines) + "\n"


def sweep_figure(rows: Sequence[Row], title: str) -> Any | None:
    """Uniformity (x) against tolerance (y), one point per setting (mean over its seeds, bars: sample sd), the
    STS average as colour, each point labelled with its setting (Wang & Liu 2021, Fig. 3's axes). ``None`` when
    no run has the three numbers."""
    points = []
    for row in rows:
        (u, usd, nu), (t, tsd, nt), (s, _, ns) = (row.stat(m) for m in ("uniformity", "tolerance", "sts_avg"))
        if nu and nt and ns:
            points.append((row.label, u, usd or 0.0, t, tsd or 0.0, s))
    if not points:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 5.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs, xe, ys, ye, cs = ([p[i] for p in points] for i in (1, 2, 3, 4, 5))
    ax.errorbar(xs, ys, xerr=xe, yerr=ye, fmt="none", ecolor="#999999", elinewidth=1, zorder=1)
    dots = ax.scatter(xs, ys, c=cs, cmap="viridis", s=70, edgecolors="black", linewidths=0.5, zorder=2)
    middle = (min(xs) + max(xs)) / 2
    for label, x, _, y, _, _ in points:  # a label right of its dot, or left of it in the right half (kept inside)
        right = len(points) > 1 and x > middle
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(-6 if right else 6, 5), fontsize=8,
                    ha="right" if right else "left")
    fig.colorbar(dots, ax=ax).set_label("STS avg (Spearman × 100)")
    ax.set_xlabel("uniformity (log E exp(−2‖f(x) − f(y)‖²); lower: more uniform)")
    ax.set_ylabel("tolerance (mean cosine of STS-B pairs scored ≥ 4)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(0.15)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------------
# The command


@dataclass
class SweepResult:
    output_dir: Path
    rows: list[Row]
    failed: dict[str, str]


def sweep(recipe: Any, grid: Sequence[str], output: str | os.PathLike, *, seeds: str | int | None = None,
          parallel: int = 1, data_dir: str | None = None, progress: bool | None = None,
          table_only: bool = False) -> SweepResult:
    """Run the grid ``grid`` (``["method.temperature=0.02,0.05", ...]``) of ``recipe`` × ``seeds`` into
    ``output`` (see the module docstring); returns the rows of sweep.md and the cells that failed. Every refusal
    (a bad spec, a cell the recipe validation refuses, an output folder that is not the sweep's) comes before
    any run starts. ``table_only``: train nothing; the tables and chart of the runs finished so far (a row
    counts its unfinished runs)."""
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise RecipeError(f"--parallel {parallel}: expected a number of runs at a time, 1 or more")
    seed_spec = parse_seeds(str(seeds) if seeds is not None else None)
    axes = parse_grid(grid, seed_spec)
    if seed_spec is None:
        seed_list: list[int | None] = [None]
    elif seed_spec[1]:
        seed_list = list(seed_spec[1])
    else:
        fixed = [f"{a.key}={a.values[0]}" for a in axes if len(a.values) == 1]
        base = parse_recipe(recipe, fixed)[0].training.seed
        seed_list = [base + i for i in range(seed_spec[0])]
    cells = expand(axes, seed_list)
    source = [("recipe", os.fspath(recipe))] if isinstance(recipe, (str, os.PathLike)) and Path(recipe).exists() \
        else []
    folder = open_folder(output, command=COMMAND, overwrite=None, swap=False, inputs=source, owned=(RUNS,))
    runs = folder.out / RUNS
    planned = plan(recipe, cells, runs, data_dir=data_dir)  # every cell checked before any run starts
    title = f"embedkit sweep: {Path(os.fspath(recipe)).stem if isinstance(recipe, (str, os.PathLike)) else 'recipe'}"
    with folder:
        counts = {s: sum(p.state == s for p in planned) for s in (NEW, RESUME, RESTART, FINISHED)}
        log(f"sweep: {len(planned)} runs in {runs}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
        failed = {} if table_only else run_all(recipe, planned, data_dir, parallel, progress)
        rows = collect(planned)
        keys = _varied(axes)
        with open(folder.files.path(folder.out / "sweep.csv"), "w", encoding="utf-8", newline="") as f:
            f.write(table_csv(rows, keys))
        with open(folder.files.path(folder.out / "runs.csv"), "w", encoding="utf-8", newline="") as f:
            f.write(runs_csv(rows, keys))
        folder.files.path(folder.out / "sweep.md").write_text(table_md(rows, keys, title), encoding="utf-8")
        record = {"recipe": os.fspath(recipe) if isinstance(recipe, (str, os.PathLike)) else "<dict>",
                  "grid": {a.key: list(a.values) for a in axes}, "seeds": seed_list, "spread": "sample sd (n - 1)",
                  "settings": [{"label": r.label, "settings": dict(r.settings), "runs": r.runs,
                                "not_finished": r.missing} for r in rows],
                  "failed": failed}
        folder.files.path(folder.out / "sweep.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
        fig = sweep_figure(rows, title)
        if fig is not None:
            fig.savefig(folder.files.path(folder.out / "sweep.png"), format="png")
        folder.commit()
    sys.stdout.write(table_md(rows, keys, title))
    log(f"sweep: tables in {folder.out} (sweep.md, sweep.csv, runs.csv, sweep.json"
        + (", sweep.png)" if fig is not None else "; no sweep.png: no run has STS geometry)"))
    if failed:
        raise EmbedkitError(f"sweep: {len(failed)} of {len(planned)} runs failed ("
                            + "; ".join(f"{n}: {e}" for n, e in list(failed.items())[:3])
                            + "); run the same command again to retry them (finished runs are skipped)")
    return SweepResult(folder.out, rows, failed)


def _cli(args: argparse.Namespace) -> int:
    sweep(args.recipe, args.overrides, args.output, seeds=args.seeds, parallel=args.parallel,
          data_dir=args.data_dir, progress=args.progress, table_only=args.table_only)
    return 0


def add_cli(sub: Any) -> None:
    p = sub.add_parser("sweep", help="train a grid of recipe overrides × seeds, each an ordinary run; one table "
                       "and one chart over them (docs/sweep.md)")
    p.add_argument("recipe", help="recipe file, or the name of a shipped recipe")
    p.add_argument("overrides", nargs="*", metavar="key.sub=v1,v2",
                   help="an axis of the grid: its values split on commas outside brackets and quotes, each read as "
                        "YAML; one value: a fixed override of every run")
    p.add_argument("-o", "--output", required=True,
                   help="the sweep's folder: runs/<cell>/ (each an ordinary run folder), sweep.md, sweep.csv, "
                        "runs.csv, sweep.json, sweep.png; rerun into it to finish or extend the sweep")
    p.add_argument("--seeds", help="N: every setting with training.seed = the recipe's seed + 0 … N−1; or a list "
                   "42,7,13 (default: the recipe's seed only)")
    p.add_argument("--parallel", type=int, default=1,
                   help="runs at a time (default 1); every run trains in a spawned process of its own")
    p.add_argument("--data-dir", help="local public-data folder (default: $EMBEDKIT_DATA, data/public, ../shared/data)")
    p.add_argument("--table-only", action="store_true",
                   help="train nothing: the tables and chart of the runs finished so far")
    add_no_progress(p, "training (under --parallel: never)")
    p.set_defaults(func=_cli)
