"""``contrastive``: InfoNCE / MultipleNegativesRanking on (anchor, positive, zero or more negatives) rows, the
retrieval fine-tuning method (query → relevant passage, with in-batch, cross-process and hard negatives)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from embedkit.methods.base import Method, MethodParams, register, training_head

CONTRASTIVE_CITATION = """@article{oord2018cpc,
  title = {Representation Learning with Contrastive Predictive Coding},
  author = {van den Oord, Aaron and Li, Yazhe and Vinyals, Oriol},
  journal = {arXiv preprint arXiv:1807.03748},
  year = {2018}
}
@article{henderson2017efficient,
  title = {Efficient Natural Language Response Suggestion for Smart Reply},
  author = {Henderson, Matthew and Al-Rfou, Rami and Strope, Brian and Sung, Yun-Hsuan and Lukacs, Laszlo and
            Guo, Ruiqi and Kumar, Sanjiv and Miklos, Balint and Kurzweil, Ray},
  journal = {arXiv preprint arXiv:1705.00652},
  year = {2017}
}
@inproceedings{karpukhin2020dense,
  title = {Dense Passage Retrieval for Open-Domain Question Answering},
  author = {Karpukhin, Vladimir and Oguz, Barlas and Min, Sewon and Lewis, Patrick and Wu, Ledell and
            Edunov, Sergey and Chen, Danqi and Yih, Wen-tau},
  booktitle = {Empirical Methods in Natural Language Processing (EMNLP)},
  year = {2020}
}"""


class ContrastiveParams(MethodParams):
    temperature: float = Field(
        0.05, gt=0, description="τ; sentence-transformers' MultipleNegativesRankingLoss scale is 1/τ (20 ⇔ 0.05)")
    hard_negative_weight: float = Field(
        0.0, description="log α added to the logits of each anchor's own negatives (0: α = 1, plain InfoNCE)")
    symmetric: bool = Field(
        False, description="also positive → anchor over the batch's anchors, averaged with anchor → candidates "
        "(MultipleNegativesSymmetricRankingLoss)")
    no_duplicates: bool = Field(
        False, description="keep rows whose anchor or positive equals another row's text out of one batch")


@register
class Contrastive(Method):
    """Rows of (anchor, positive, negative_1 … negative_k), any k ≥ 0: each anchor is scored against every
    positive and negative of the (global) batch; its own positive is the target (InfoNCE, in-batch negatives,
    hard negatives as in DPR). The loss is :class:`embedkit.methods.contrastive.loss.ContrastiveLoss`."""

    name = "contrastive"
    params_cls = ContrastiveParams
    column_roles = ("anchor", "positive")
    repeat_role = "negative"
    default_prompt_columns = {"anchor": "query", "positive": "document", "negative": "document"}
    paper = ("van den Oord et al. 2018 (InfoNCE), arXiv:1807.03748; Henderson et al. 2017 (in-batch negatives), "
             "arXiv:1705.00652; Karpukhin et al., DPR (EMNLP 2020), arXiv:2004.04906")
    citation = CONTRASTIVE_CITATION
    composable = True

    @classmethod
    def refusals(cls, recipe: Any, params: Any) -> list[tuple[tuple, str]]:
        out = super().refusals(recipe, params)
        if params.no_duplicates and recipe.training.group_by_length:
            out.append((("training", "group_by_length"),
                        "method.no_duplicates needs its own batch sampler; it cannot also group batches by length: "
                        "drop one of the two"))
        return out

    @classmethod
    def data_refusals(cls, recipe: Any, columns: list[str]) -> list[tuple[tuple, str]]:
        weight = recipe.method.hard_negative_weight
        if weight and len(columns) <= len(cls.column_roles):
            return [(("method", "hard_negative_weight"),
                     f"{weight} weighs each anchor's own negatives, and the rows have no negative column (the data "
                     f"gives {', '.join(map(str, columns))}) and data.train.mine is not set: add negative columns, "
                     "mine them with data.train.mine, or remove the key")]
        return []

    def build_loss(self):
        from embedkit.methods.contrastive.loss import ContrastiveLoss

        p = self.params
        return ContrastiveLoss(self.ctx.model, p.temperature, p.hard_negative_weight, p.symmetric,
                               head=training_head(self))

    def batch_sampler(self) -> Any:
        if not self.params.no_duplicates:
            return None
        from embedkit.data.samplers import NoDuplicateTextsBatchSampler

        return NoDuplicateTextsBatchSampler
