"""Training progress and experiment trackers: what the trainer reports, and where.

In a terminal the trainer draws its tqdm bar; anywhere else (a log file, a pipe, a job scheduler) a bar's
carriage returns pile up into one unreadable line, so the bar is off and :class:`PlainProgress` writes one plain
line every ``training.logging_steps`` steps instead. ``training.report_to`` names transformers' own tracker
integrations; :func:`tracker_env` points the ones that would otherwise write elsewhere at the output folder.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from transformers import TrainerCallback

from embedkit.encoding import quiet_bars, show_bars  # noqa: F401 (where training's callers import them)
from embedkit.log import LOGGER
from embedkit.recipe import tracker_installed


def duration(seconds: float) -> str:
    """``40 s``, ``3 min``, ``2 h 05 min``: a rough remaining time."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes:02d} min"


class PlainProgress(TrainerCallback):
    """``step 10/64 (16%), 4.2 s/step, eta 4 min`` on stderr every ``logging_steps`` steps and at the last: the
    progress a bar would show, as lines a log file keeps readable (no carriage returns)."""

    def __init__(self) -> None:
        self._start: tuple[float, int] | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = (time.monotonic(), state.global_step)  # a resumed run counts its speed from here

    def on_step_end(self, args, state, control, **kwargs):
        step, total = state.global_step, state.max_steps
        if not state.is_world_process_zero or self._start is None or not total:
            return
        if step % max(args.logging_steps, 1) and step != total:
            return
        began, first = self._start
        done = step - first
        per_step = (time.monotonic() - began) / done if done > 0 else 0.0
        LOGGER.info(f"step {step}/{total} ({100 * step / total:.0f}%), {per_step:.2f} s/step, "
                    f"eta {duration(per_step * (total - step))}", extra={"to_stderr": True})


def resolve_trackers(report_to: str | list[str]) -> list[str]:
    """``training.report_to`` as the trainer's list: ``auto`` is TensorBoard when it is installed, else none."""
    if report_to == "auto":
        return ["tensorboard"] if tracker_installed("tensorboard") else []
    return list(report_to)


def describe_trackers(trackers: list[str], report_to: str | list[str], work: Path) -> str:
    """The line the run starts with: which trackers get the losses and dev scores, and where."""
    if not trackers:
        why = " (tensorboard is not installed)" if report_to == "auto" else ""
        return f"experiment tracking: none{why}; training.report_to names trackers"
    where = {"tensorboard": f"tensorboard in {work / 'logs'}",
             "mlflow": f"mlflow in {os.environ.get('MLFLOW_TRACKING_URI') or work / 'mlruns'}",
             "wandb": f"wandb ({os.environ.get('WANDB_MODE', 'online')}"
                      f"{', ' + str(work / 'wandb') if 'WANDB_DIR' not in os.environ else ''})"}
    auto = " (auto: installed; training.report_to: [] turns it off)" if report_to == "auto" else ""
    return f"experiment tracking: {', '.join(where.get(t, t) for t in trackers)}{auto}"


@contextmanager
def tracker_env(trackers: list[str], work: Path) -> Iterator[None]:
    """While training: MLflow writes a local file store ``<output>/mlruns`` and wandb its files under the output
    folder, unless the user chose otherwise (``MLFLOW_TRACKING_URI`` or ``mlflow.set_tracking_uri``, which
    takes precedence over the variable, ``WANDB_DIR``). Only variables not set already are set, and only while
    training. Nothing here reads or prints a token."""
    added = {}
    if "wandb" in trackers:
        added["WANDB_DIR"] = str(work)  # wandb writes its own wandb/ folder in it
    if "mlflow" in trackers:
        added["MLFLOW_TRACKING_URI"] = (work / "mlruns").resolve().as_uri()
        added["MLFLOW_ALLOW_FILE_STORE"] = "true"  # mlflow 3 refuses a file store without it
    added = {k: v for k, v in added.items() if k not in os.environ}
    if "WANDB_DIR" in added:
        (work / "wandb").mkdir(parents=True, exist_ok=True)
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)
