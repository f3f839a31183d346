"""embedkit: train and evaluate sentence embedding models from YAML recipes.

Python API::

    from embedkit import load_recipe, train
    results = train("recipes/quickstart.yaml", ["training.max_steps=50"])
"""

from __future__ import annotations

from embedkit.errors import DataError, EmbedkitError, RecipeError
from embedkit.evaluation import evaluate as _evaluate
from embedkit.training.run import train as _train
from embedkit.validate import load_recipe
from embedkit.version import __version__


def train(recipe: str, overrides: list[str] | None = None, **kwargs):
    """Run a recipe end to end; see :func:`embedkit.training.run.train`."""

    return _train(recipe, overrides, **kwargs)


def evaluate(model, suite: str = "sts", **kwargs):
    """Evaluate a model (a SentenceTransformer or a path); see :func:`embedkit.evaluation.evaluate`."""

    return _evaluate(model, suite=suite, **kwargs)


__all__ = ["train", "evaluate", "load_recipe", "EmbedkitError", "RecipeError", "DataError", "__version__"]
