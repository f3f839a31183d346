"""Contrastive losses, one module per paper, in the sentence-transformers ``losses/`` convention, and the
shared machinery that composes them (:mod:`embedkit.losses.objective`, :mod:`embedkit.losses.terms`).

Imported lazily: :mod:`embedkit.losses.terms` (term schemas) must load without torch for recipe validation.
"""

from __future__ import annotations

__all__ = ["InfoNCELoss", "SimCSELoss", "SupervisedSimCSELoss"]


def __getattr__(name: str):
    if name in __all__:
        from embedkit.losses import contrastive

        return getattr(contrastive, name)
    raise AttributeError(name)
