"""Contriever-style training: MoCo with random-crop + token-deletion views and queue-only negatives."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from embedkit.methods.base import Method, MethodParams, add_row_ids, register

CONTRIEVER_CITATION = """@article{izacard2022contriever,
  title = {Unsupervised Dense Information Retrieval with Contrastive Learning},
  author = {Izacard, Gautier and Caron, Mathilde and Hosseini, Lucas and Riedel, Sebastian and Bojanowski, Piotr
            and Joulin, Armand and Grave, Edouard},
  journal = {Transactions on Machine Learning Research},
  year = {2022}
}"""


class ContrieverParams(MethodParams):
    temperature: float = Field(0.05, gt=0)
    queue_size: int = Field(131072, gt=0)
    momentum: float = Field(0.9995, ge=0, le=1)
    crop_min: float = Field(0.1, gt=0, le=1, description="smallest crop, as a fraction of the text's tokens")
    crop_max: float = Field(0.5, gt=0, le=1, description="largest crop, as a fraction of the text's tokens")
    deletion: float = Field(0.1, ge=0, lt=1, description="probability of deleting each token of a crop")
    normalize: bool = Field(False, description="cosine instead of the dot product (Contriever: dot product)")
    queue_init: Literal["random", "empty"] = Field("random", description="random unit vectors, as MoCo/Contriever")
    key_encoder_dropout: bool = Field(
        True, description="the momentum (key) encoder runs with dropout on during training, as the reference code "
        "does (its key encoder follows the train mode); false: dropout off, as MoCo's eval-mode keys"
    )

    @model_validator(mode="after")
    def _crop_order(self) -> ContrieverParams:
        if self.crop_min > self.crop_max:
            raise ValueError(f"crop_min ({self.crop_min}) must not exceed crop_max ({self.crop_max})")
        return self


@register
class Contriever(Method):
    """Contriever: two independent random crops (with token deletion) of each text are query and key; the
    key goes through a momentum encoder; negatives come from the queue of past keys only."""

    name = "contriever"
    params_cls = ContrieverParams
    column_roles = ("text",)
    paper = "Izacard et al., Unsupervised Dense Information Retrieval with Contrastive Learning (TMLR 2022), " \
            "arXiv:2112.09118"
    citation = CONTRIEVER_CITATION
    composable = True
    streams = True

    def prepare_dataset(self, dataset: Any) -> Any:
        return add_row_ids(dataset)

    def build_loss(self):
        from embedkit.augment import CropAndDelete, special_token_ids
        from embedkit.losses.momentum import KeyQueue, MoCoLoss, MomentumEncoder

        p, model = self.params, self.ctx.model
        t = self.ctx.recipe.training
        tok = model.tokenizer
        views = CropAndDelete(special_token_ids(tok), tok.pad_token_id or 0, p.crop_min, p.crop_max, p.deletion,
                              seed=t.seed)
        encoder = MomentumEncoder(model, p.momentum, "copy", seed=t.seed, dropout=p.key_encoder_dropout)
        queue = KeyQueue(p.queue_size, model.get_embedding_dimension(), p.queue_init, seed=t.seed,
                         gather_across_devices=t.gather_across_devices)
        return MoCoLoss(model, encoder, queue, views, p.temperature, normalize=p.normalize)

    def callbacks(self, loss) -> list:
        from embedkit.losses.momentum import momentum_callbacks

        return momentum_callbacks(loss)
