"""CoSENT (Su, 2022, https://kexue.fm/archives/8847) as a composable loss: sentence-transformers'
``CoSENTLoss`` computation on the views, so GradCache, gathering, Matryoshka and extra terms apply to it."""

from __future__ import annotations

from sentence_transformers.base.losses.merged_forward import embed_columns
from sentence_transformers.losses import CoSENTLoss as _STCoSENTLoss
from torch import Tensor, nn

from embedkit.losses.common import gather_no_grad
from embedkit.losses.objective import ComposedLoss, ViewBatch


class CoSENTLoss(ComposedLoss):
    """CoSENT on scored pairs: every pair with a higher gold score must get a higher cosine,

        L = log(1 + Σ_{s_ij > s_kl} exp(λ (cos_kl − cos_ij)))

    over the pairs of the (global, with ``gather_across_devices``) batch; the arithmetic is
    sentence-transformers' ``CoSENTLoss.compute_loss_from_embeddings``, and the plain encoder pass is its
    ``embed_columns`` (so the numbers are those of sentence-transformers' loss).

    Args:
        model: the SentenceTransformer being trained.
        scale: λ (20).
        gather_across_devices: rank the pairs of every process together.
        mini_batch_size: GradCache mini-batch (None: the plain pass).

    Example::

        loss = CoSENTLoss(model, scale=20.0)
        # dataset columns: sentence1, sentence2, score
    """

    def __init__(self, model: nn.Module, scale: float = 20.0, gather_across_devices: bool = True,
                 mini_batch_size: int | None = None) -> None:
        super().__init__(model, None, gather_across_devices, mini_batch_size)
        self.scale = scale
        object.__setattr__(self, "_st", _STCoSENTLoss(model, scale=scale))  # its arithmetic, not its model

    def get_config_dict(self) -> dict:
        """As sentence-transformers' CoSENTLoss reports itself (model cards), and what was composed onto it."""
        return {**self._st.get_config_dict(), **super().get_config_dict()}

    def plan(self, features: list[dict[str, Tensor]], labels: Tensor | None = None) -> ViewBatch:
        # Scored pairs are not (anchor, positive) pairs: no pair terms.
        return ViewBatch(list(features), labels, pair=None)

    def encode(self, columns: list[dict[str, Tensor]]) -> list[Tensor]:
        return embed_columns(self.model, columns)

    def score(self, views: list[Tensor], batch: ViewBatch) -> Tensor:
        labels = batch.labels
        if self.gather_across_devices:
            views = [self.gather(v) for v in views]
            labels = gather_no_grad(labels.reshape(-1), True)
        return self._st.compute_loss_from_embeddings(views, labels)
