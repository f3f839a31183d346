"""Where embedkit finds local data: ``--data-dir``, ``$EMBEDKIT_DATA``, or a folder beside the project.

Recipes refer to public sets as ``{data_dir}/sts/stsbenchmark/...``; this module resolves ``{data_dir}``.
It also holds :func:`atomic_path`, the one way embedkit writes a result file. Nothing here touches the network.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ENV_VAR = "EMBEDKIT_DATA"
# Folders tried, in order, when neither --data-dir nor $EMBEDKIT_DATA is given: `data/public` is where
# `data/fetch_public.py` writes; `../shared/data` is the layout of the public-data folder beside a checkout.
DEFAULT_CANDIDATES = ("data/public", "../shared/data")


def resolve_data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """Return the local public-data folder, or ``None`` when there is none.

    Order: ``explicit`` (``--data-dir``), then ``$EMBEDKIT_DATA``, then :data:`DEFAULT_CANDIDATES` relative
    to the current directory. An explicit folder or variable that does not exist is returned as is, so the
    caller's error can name it.
    """
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    for cand in DEFAULT_CANDIDATES:
        path = Path(cand)
        if path.is_dir():
            return path
    return None


def expand(path: str, data_dir: Path | None) -> str:
    """Substitute ``{data_dir}`` and ``~`` in a path string taken from a recipe."""
    if "{data_dir}" in path:
        if data_dir is None:
            raise FileNotFoundError(
                f"'{path}' refers to {{data_dir}}, but no data folder is set: pass --data-dir or set "
                f"${ENV_VAR} to a folder laid out like ../shared/data"
            )
        path = path.replace("{data_dir}", str(data_dir))
    return os.path.expanduser(path)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield ``<path>.partial`` to write; on success it is renamed over ``path``, on failure removed, so a
    reader never sees half a file (and an upload skips ``*.partial`` leftovers of a killed process)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
