"""``evaluate(model, suite=...)``: load the model, load the data, encode every unique sentence once, score,
and return a dictionary that records how the numbers were made (protocol, data hashes, model hash,
package versions, time)."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from embedkit.errors import EmbedkitError
from embedkit.evaluation.provenance import model_info, package_versions
from embedkit.log import progress as progress_line
from embedkit.model_ref import load_model

if TYPE_CHECKING:
    pass

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
    """
    if suite not in SUITES:
        raise EmbedkitError(f"suite {suite!r}: expected one of {', '.join(SUITES)}")
    started = time.perf_counter()
    if suite == "mteb":
        from embedkit.evaluation.mteb_eval import run_mteb

        return run_mteb(model, data_dir=data_dir, batch_size=batch_size, source=source, autocast=autocast,
                        progress=progress, model_path=model_path, **kw)
    if kw:
        raise EmbedkitError(f"evaluate(suite={suite!r}): unexpected arguments {sorted(kw)}")

    from embedkit.encoding import resolve_autocast
    from embedkit.evaluation import sts as sts_suite
    from embedkit.evaluation.core import unit_table
    from embedkit.evaluation.geometry import geometry_scores

    tasks = ("STSBenchmark",) if suite == "geometry" else sts_suite.TASKS
    data = sts_suite.load_suite(data_dir, source, tasks)  # data first: a bad folder fails before the model loads
    st_model, spec = load_model(model)
    spec = spec or model_path
    mode = resolve_autocast(autocast, st_model.device)
    sentences = data.sentences()
    progress_line(f"encoding {len(sentences)} unique sentences (batch {batch_size}, autocast {mode})", progress)
    t0 = time.perf_counter()
    table = unit_table(st_model, sentences, batch_size=batch_size, autocast=mode)
    encode_seconds = time.perf_counter() - t0

    provenance = {
        "data": {"source": data.source, "dir": data.root, "files": data.files},
        "model": model_info(st_model, spec),
        "encoding": {"unique_sentences": len(sentences), "batch_size": batch_size, "autocast": mode,
                     "device": str(st_model.device), "seconds": round(encode_seconds, 2)},
        "versions": package_versions(),
    }
    if data.deviations:
        provenance["deviations"] = data.deviations
    if suite == "geometry":
        out = {"protocol": "wang-isola-2020", **geometry_scores(data.tasks["STSBenchmark"], table), **provenance}
    else:
        out = {"protocol": sts_suite.PROTOCOL, "setting": sts_suite.SETTING_DESCRIPTIONS["all"],
               **sts_suite.score_suite(data, table), **provenance}
        if geometry:
            out["geometry"] = geometry_scores(data.tasks["STSBenchmark"], table)
    out["seconds"] = round(time.perf_counter() - started, 2)
    return out
