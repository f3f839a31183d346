"""ESimCSE: unsupervised SimCSE with word-repetition positives and a momentum-encoder negative queue."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from embedkit.methods.base import Method, MethodParams, add_row_ids, register, training_head

ESIMCSE_CITATION = """@inproceedings{wu2022esimcse,
  title = {{ESimCSE}: Enhanced Sample Building Method for Contrastive Learning of Unsupervised Sentence Embedding},
  author = {Wu, Xing and Gao, Chaochen and Zang, Liangjun and Han, Jizhong and Wang, Zhongyuan and Hu, Songlin},
  booktitle = {Proceedings of the 29th International Conference on Computational Linguistics (COLING)},
  year = {2022}
}"""


class ESimCSEParams(MethodParams):
    temperature: float = Field(0.05, gt=0)
    repetition: Literal["subword", "word", "none"] = Field(
        "subword", description="subword: on token ids (reference default); word: on whitespace words; none: off"
    )
    dup_rate: float = Field(0.32, ge=0, lt=1, description="k ~ U{0 … min(max_dup, ⌊dup_rate·L⌋) − 1}")
    max_dup: int = Field(10, ge=1)
    static: bool = Field(
        False, description="one augmentation per sentence for the whole run, drawn from (seed, row id), as the "
        "reference code draws it once in preprocessing (esimcse-unsup-bert-base.yaml); false: a new draw each step"
    )
    queue_size: int | None = Field(None, ge=0, description="None: 2.5 × global batch size; 0: no momentum queue")
    momentum: float = Field(0.995, ge=0, le=1)
    momentum_init: Literal["copy", "random"] = Field(
        "copy", description="copy: the key encoder starts as the pretrained encoder; random: a fresh seeded BERT "
        "initialisation, as the reference code (it builds the key encoder before the checkpoint loads)"
    )


def default_queue_size(method: Method) -> int:
    """2.5 × the global batch size (``training.batch_size``; 160 for the paper's batch of 64)."""
    return int(round(2.5 * method.ctx.recipe.training.batch_size))


@register
class ESimCSE(Method):
    """ESimCSE: the positive is the sentence with some (sub-)words repeated; a momentum encoder's keys of past
    batches are extra negatives."""

    name = "esimcse"
    params_cls = ESimCSEParams
    column_roles = ("text",)
    paper = "Wu et al., ESimCSE (COLING 2022), arXiv:2109.04380"
    citation = ESIMCSE_CITATION
    composable = True
    streams = True

    @classmethod
    def stream_refusals(cls, recipe: Any, params: Any) -> list[tuple[tuple, str]]:
        out = super().stream_refusals(recipe, params)
        if recipe.data.train.streaming and params.repetition == "word":
            out.append((("method", "repetition"), "word repetition keeps every raw sentence in memory, indexed by "
                        "row; a stream gives each row once: use subword (the reference default) or none"))
        return out

    def prepare_dataset(self, dataset: Any) -> Any:
        if self.params.repetition == "word":  # only word repetition re-reads the raw sentences
            self._texts = list(dataset["text"])
        return add_row_ids(dataset)

    def build_loss(self):
        from embedkit.augment import SubwordRepetition, WordRepetition, position_limit, special_token_ids
        from embedkit.losses.momentum import KeyQueue, MomentumEncoder
        from embedkit.methods.esimcse.loss import ESimCSELoss

        p, model = self.params, self.ctx.model
        seed = self.ctx.recipe.training.seed
        repetition = None
        if p.repetition == "subword":
            tok = model.tokenizer
            repetition = SubwordRepetition(
                special_token_ids(tok), tok.pad_token_id or 0, p.dup_rate, p.max_dup, p.static, seed,
                max_length=position_limit(model),
            )
        elif p.repetition == "word":
            texts = getattr(self, "_texts", None)
            if texts is None:
                raise RuntimeError("esimcse word repetition: prepare_dataset must run before build_loss")
            repetition = WordRepetition(texts, model.preprocess, p.dup_rate, p.max_dup, p.static, seed)
        size = default_queue_size(self) if p.queue_size is None else p.queue_size
        head = training_head(self)
        encoder = queue = None
        if size > 0:
            encoder = MomentumEncoder(model, p.momentum, p.momentum_init, seed=seed)
            queue = KeyQueue(size, model.get_embedding_dimension(), "empty",
                             gather_across_devices=self.ctx.recipe.training.gather_across_devices)
        return ESimCSELoss(model, p.temperature, head=head, repetition=repetition, momentum_encoder=encoder,
                           queue=queue)

    def callbacks(self, loss) -> list:
        from embedkit.losses.momentum import momentum_callbacks

        return momentum_callbacks(loss)
