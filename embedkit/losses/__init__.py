"""Contrastive losses, one module per paper, in the sentence-transformers ``losses/`` convention."""

from embedkit.losses.contrastive import SimCSELoss, SupervisedSimCSELoss

__all__ = ["SimCSELoss", "SupervisedSimCSELoss"]
