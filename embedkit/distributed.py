"""Where this process sits in a multi-process run: the one reader of rank and world size, the one rule for the
rows a process owns in a gathered batch, and the one broadcast from rank 0.

Rank and world size are the process group's once one is up (``torch.distributed``, which the trainer's
accelerate state initialises), and before that the launcher's (``RANK`` / ``WORLD_SIZE``, which ``torchrun`` and
``accelerate launch`` set before any group exists: recipe validation and the first log lines run then). Outside a
launcher: rank 0 of 1. Under a launcher the two agree by construction.

accelerate's ``PartialState`` does not serve here: asking it initialises a process group as a side effect and
imports torch, and this module is read on torch-free paths (validation, logging). torch is never imported here:
a process group can only be up when ``torch.distributed`` is already imported, so it is looked up in
``sys.modules``.

This is a foundation module (docs/architecture.md): losses, data, training and logging import it; it imports
nothing of embedkit.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def _group() -> Any:
    """``torch.distributed`` when a default process group is up, else ``None``."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist
    return None


def _env(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:  # a malformed launcher variable: as outside a launcher
        return default


def rank() -> int:
    """This process's rank: the process group's, else the launcher's ``RANK``, else 0."""
    dist = _group()
    return dist.get_rank() if dist is not None else max(_env("RANK", 0), 0)


def world_size() -> int:
    """The number of processes: the process group's, else the launcher's ``WORLD_SIZE``, else 1."""
    dist = _group()
    return dist.get_world_size() if dist is not None else max(_env("WORLD_SIZE", 1), 1)


def is_main() -> bool:
    """Rank 0 (or the only process): the one that prints, writes the output folder and evaluates."""
    return rank() == 0


def local_rows(n_local: int, of_rank: int | None = None) -> slice:
    """The rows this process owns in a batch gathered from every process in rank order (each holding
    ``n_local`` rows): ``rank·n_local … (rank+1)·n_local``. In one process: ``0 … n_local``. ``of_rank``: the
    rows of that process instead (a caller that was handed its rank, e.g. the replayed rows' stream).

    Every loss that scores its local anchors against gathered candidates finds each anchor's own positive (its
    label, its own hard negative, its unmasked cell) at ``local_rows(n).start + i`` by this rule."""
    start = (rank() if of_rank is None else of_rank) * n_local
    return slice(start, start + n_local)


def connected() -> bool:
    """Whether a process group of several processes is up, so that collectives reach the other processes. Under a
    launcher, before the trainer brings the group up (dataset preparation), this is false while
    :func:`world_size` already says how many processes there are: work done then is done by every process."""
    dist = _group()
    return dist is not None and dist.get_world_size() > 1


def broadcast_object(obj: Any, group: Any = None) -> Any:
    """Rank 0's ``obj`` on every process (a picklable object; every process must call it). Without a process
    group of several processes (:func:`connected`), ``obj`` itself. ``group``: a ``torch.distributed`` group to use
    instead of the default one (e.g. a gloo group with a longer timeout, created by every process beforehand)."""
    if not connected():
        return obj
    dist = _group()
    box = [obj if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]
