"""SimCSE, unsupervised (dropout positives) and supervised (NLI triples with hard negatives)."""

from __future__ import annotations

from pydantic import Field

from embedkit.methods.base import Method, MethodParams, register, training_head

SIMCSE_CITATION = """@inproceedings{gao2021simcse,
  title = {{SimCSE}: Simple Contrastive Learning of Sentence Embeddings},
  author = {Gao, Tianyu and Yao, Xingcheng and Chen, Danqi},
  booktitle = {Empirical Methods in Natural Language Processing (EMNLP)},
  year = {2021}
}"""


class SimCSEUnsupParams(MethodParams):
    temperature: float = Field(0.05, gt=0)


class SimCSESupParams(MethodParams):
    temperature: float = Field(0.05, gt=0)
    hard_negative_weight: float = Field(0.0, description="log α added to each anchor's own hard negative")


@register
class SimCSEUnsup(Method):
    """Unsupervised SimCSE: each sentence is its own positive under a second dropout mask."""

    name = "simcse-unsup"
    params_cls = SimCSEUnsupParams
    column_roles = ("text",)
    paper = "Gao et al., SimCSE (EMNLP 2021), arXiv:2104.08821"
    citation = SIMCSE_CITATION
    composable = True
    streams = True

    def build_loss(self):
        from embedkit.losses.contrastive import SimCSELoss

        return SimCSELoss(self.ctx.model, self.params.temperature, head=training_head(self))


@register
class SimCSESup(Method):
    """Supervised SimCSE on (anchor, positive, hard negative) triples."""

    name = "simcse-sup"
    params_cls = SimCSESupParams
    column_roles = ("anchor", "positive", "negative")
    paper = "Gao et al., SimCSE (EMNLP 2021), arXiv:2104.08821"
    citation = SIMCSE_CITATION
    composable = True

    def build_loss(self):
        from embedkit.losses.contrastive import SupervisedSimCSELoss

        return SupervisedSimCSELoss(
            self.ctx.model, self.params.temperature, self.params.hard_negative_weight, head=training_head(self)
        )
