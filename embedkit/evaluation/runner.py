"""``evaluate(model, suite=...)``: load the model, load the data, encode every unique sentence once, score,
and return a dictionary that records how the numbers were made (protocol, data hashes, model hash,
package versions, time)."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from embedkit.errors import EmbedkitError
from embedkit.evaluation import sts as sts_suite
from embedkit.evaluation.geometry import geometry_scores
from embedkit.evaluation.mteb_eval import run_mteb
from embedkit.evaluation.provenance import model_info, package_versions
from embedkit.log import progress as progress_line
from embedkit.model_ref import embedding_dim, load_model

SUITES = ("sts", "geometry", "mteb")


def evaluate(
    model: Any,
    suite: str = "sts",
    data_dir: str | os.PathLike | None = None,
    batch_size: int = 128,
    *,
    source: str = "auto",
    autocast: str | None = None,
    geometry: bool = False,
    progress: bool = False,
    model_path: str | None = None,
    dims: list[int] | None = None,
    **kw: Any,
) -> dict[str, Any]:
    """Evaluate ``model`` (a SentenceTransformer, a folder, a packaged model or a Hub id) on a suite.

    * ``sts``: STS12–16 ("all" setting), STS-B test, SICK-R test; returns ``{"protocol", "tasks", "avg",
      "settings", "subsets", "data", "model", "versions", "seconds", ...}``. With ``geometry=True`` also
      ``"geometry"`` (alignment / uniformity / anisotropy on STS-B test), from the same embeddings.
    * ``geometry``: only the geometry numbers (encodes STS-B test alone).
    * ``mteb``: runs :func:`embedkit.evaluation.mteb_eval.run_mteb` with ``tasks`` / ``benchmark`` and the
      other keyword arguments it takes.

    ``data_dir``: the local data folder (default: ``$EMBEDKIT_DATA`` or ``../shared/data``); ``source``:
    ``auto`` | ``local`` | ``hub``; ``autocast``: ``none`` (default) | ``bf16`` | ``auto``; ``model_path``:
    where an already loaded ``model`` was saved (recorded in the results; names the model for mteb).

    ``dims`` (Matryoshka, e.g. ``[384, 128, 64]``; ``sts`` and ``geometry``): every score also at each
    truncated dimension, under ``"dims": {"128": {"dim": 128, "tasks", "avg", ...}}``. The texts are encoded
    once; each dimension keeps the first ``d`` coordinates, then normalises
    (:func:`embedkit.encoding.truncate`). A dimension outside 1..the model's is refused before encoding.
    """
    if suite not in SUITES:
        raise EmbedkitError(f"suite {suite!r}: expected one of {', '.join(SUITES)}")
    started = time.perf_counter()
    if suite == "mteb":
        if dims:
            raise EmbedkitError("dims: mteb encodes through its own wrapper; evaluate Matryoshka dimensions with the "
                                "sts or geometry suite")

        return run_mteb(model, data_dir=data_dir, batch_size=batch_size, source=source, autocast=autocast,
                        progress=progress, model_path=model_path, **kw)
    if kw:
        raise EmbedkitError(f"evaluate(suite={suite!r}): unexpected arguments {sorted(kw)}")

    from embedkit.encoding import check_dim, encode, resolve_autocast, truncate

    tasks = ("STSBenchmark",) if suite == "geometry" else sts_suite.TASKS
    data = sts_suite.load_suite(data_dir, source, tasks)  # data first: a bad folder fails before the model loads
    st_model, spec = load_model(model)
    spec = spec or model_path
    for d in dims or ():
        check_dim(d, embedding_dim(st_model), "dims")
    mode = resolve_autocast(autocast, st_model.device)
    sentences = data.sentences()
    progress_line(f"encoding {len(sentences)} unique sentences (batch {batch_size}, autocast {mode})", progress)
    t0 = time.perf_counter()
    raw = encode(st_model, sentences, batch_size, autocast=mode, dtype=np.float64)  # once, for every dimension
    encode_seconds = time.perf_counter() - t0

    def scores(dim: int | None) -> dict[str, Any]:
        """Every score of the suite on unit vectors of the first ``dim`` coordinates (all with ``None``)."""
        table = dict(zip(sentences, truncate(raw, dim, normalize=True), strict=True))
        if suite == "geometry":
            return {"protocol": "wang-isola-2020", **geometry_scores(data.tasks["STSBenchmark"], table)}
        out = {"protocol": sts_suite.PROTOCOL, "setting": sts_suite.SETTING_DESCRIPTIONS["all"],
               **sts_suite.score_suite(data, table)}
        if geometry:
            out["geometry"] = geometry_scores(data.tasks["STSBenchmark"], table)
        return out

    provenance = {
        "data": {"source": data.source, "dir": data.root, "files": data.files},
        "model": model_info(st_model, spec),
        "encoding": {"unique_sentences": len(sentences), "batch_size": batch_size, "autocast": mode,
                     "device": str(st_model.device), "seconds": round(encode_seconds, 2)},
        "versions": package_versions(),
    }
    if data.deviations:
        provenance["deviations"] = data.deviations
    out = {**scores(None), **provenance}
    if dims:
        out["dims"] = {str(d): {"dim": d, **scores(d)} for d in dims}
    out["seconds"] = round(time.perf_counter() - started, 2)
    return out
