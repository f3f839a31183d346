"""embedkit: train and evaluate sentence embedding models from YAML recipes.

Python API (a notebook needs nothing else)::

    import embedkit

    result = embedkit.train("quickstart", training={"max_steps": 2}, output={"dir": "/tmp/run"})
    result.model.encode(["a sentence"])          # the trained SentenceTransformer
    result.scores, result.output_dir             # results.json's scores, the output folder

    recipe = embedkit.load_recipe("recipes/quickstart.yaml")   # or a dict of sections, as a file holds them
    embedkit.train(recipe, {"training.max_steps": 2, "output.dir": "/tmp/run2"})
    embedkit.evaluate(result.model, suite="sts")

``recipe`` is a file, a shipped recipe's name, a dict of sections or a :class:`Recipe`; overrides are a list of
``"key.sub=value"`` strings (as on the command line) or a dict ``{"key.sub": value}``; keyword sections
(``training={...}``) set their keys one by one.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import Any

from embedkit.errors import DataError, EmbedkitError, RecipeError
from embedkit.evaluation import evaluate as _evaluate
from embedkit.recipe import Recipe
from embedkit.training.run import TrainResult, train
from embedkit.validate import load_recipe
from embedkit.version import __version__


def evaluate(model: Any, suite: str = "sts", **kwargs: Any) -> dict[str, Any]:
    """Evaluate a model (a SentenceTransformer or a path); keyword arguments (``data_dir``, ``batch_size``,
    ``tasks``, ...) go to :func:`embedkit.evaluation.evaluate`."""

    return _evaluate(model, suite=suite, **kwargs)


def _submodules() -> list[str]:
    return [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]


def __getattr__(name: str) -> ModuleType:
    """A submodule on first access (``embedkit.merging.merge(...)`` after a bare ``import embedkit``): the
    package imports only what the names above need, so torch loads when a submodule that uses it is first used."""
    if not name.startswith("_") and name in _submodules():
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_submodules()))


__all__ = ["train", "TrainResult", "evaluate", "load_recipe", "Recipe", "EmbedkitError", "RecipeError", "DataError",
           "__version__"]
