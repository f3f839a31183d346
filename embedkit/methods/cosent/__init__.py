"""CoSENT: supervised fine-tuning on scored pairs (e.g. STS-B train, SICK relatedness)."""

from __future__ import annotations

from pydantic import Field

from embedkit.methods.base import Method, MethodParams, register

COSENT_CITATION = """@online{su2022cosent,
  title = {CoSENT: A more efficient sentence vector scheme than Sentence-BERT},
  author = {Su, Jianlin},
  year = {2022},
  url = {https://kexue.fm/archives/8847}
}"""


class CoSENTParams(MethodParams):
    scale: float = Field(20.0, gt=0, description="λ in log(1 + Σ exp(λ(cos_kl − cos_ij)))")


@register
class CoSENT(Method):
    """Pairs with a gold similarity; every pair with a higher gold score must get a higher cosine.

    The loss is sentence-transformers' ``CoSENTLoss`` arithmetic (:class:`embedkit.methods.cosent.loss.CoSENTLoss`):
    ``log(1 + Σ_{s_ij > s_kl} exp(λ (cos_kl − cos_ij)))`` over the pairs of the batch.
    """

    name = "cosent"
    params_cls = CoSENTParams
    column_roles = ("sentence1", "sentence2")
    label_role = "score"
    in_batch_negatives = False
    paper = "Su, CoSENT (2022), https://kexue.fm/archives/8847"
    citation = COSENT_CITATION
    composable = True

    @classmethod
    def has_positives(cls, params) -> bool:
        return False  # scored pairs, not positives

    def build_loss(self):
        from embedkit.methods.cosent.loss import CoSENTLoss

        return CoSENTLoss(self.ctx.model, scale=self.params.scale)
