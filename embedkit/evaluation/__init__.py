"""Evaluation: the STS suite under the SentEval protocol, MTEB (also air-gapped), embedding geometry.

Python API::

    from embedkit.evaluation import evaluate
    res = evaluate("path/to/model", suite="sts", data_dir="../shared/data")
    res["tasks"]["STSBenchmark"]["spearman"], res["avg"]

Heavy imports (torch, sentence-transformers, mteb) happen inside the functions, so importing this package
is cheap.
"""

from __future__ import annotations

import os
from typing import Any

# The STS suite's tasks, as every report names them (the recipe's target tasks): from a light module, so that
# importing this package (the CLI's parser does) does not load scipy.
from embedkit.recipe import TARGET_TASKS as TASKS


def evaluate(
    model: Any,
    suite: str = "sts",
    data_dir: str | os.PathLike | None = None,
    batch_size: int = 128,
    **kw: Any,
) -> dict[str, Any]:
    """Evaluate a SentenceTransformer or a model path on ``suite`` (``sts``, ``geometry`` or ``mteb``).

    See :func:`embedkit.evaluation.runner.evaluate` for the keyword arguments and the returned dictionary.
    """
    from embedkit.evaluation.runner import evaluate as _evaluate

    return _evaluate(model, suite=suite, data_dir=data_dir, batch_size=batch_size, **kw)


__all__ = ["evaluate", "TASKS"]
