"""``ccp``: context positives. A sentence's positive is another sentence within a window of its own document;
its in-batch negatives come from other documents only (Wu et al., IJCAI 2022: contrastive context prediction).

The package holds the method (params, refusals), the data builder (:mod:`embedkit.methods.ccp.documents`: a text
file of documents → (anchor, positive, document id) rows, torch-free) and the loss
(:mod:`embedkit.methods.ccp.loss`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from embedkit.methods import bound_method
from embedkit.methods.base import Method, MethodParams, register, training_head
from embedkit.methods.ccp.documents import build_rows, cached_rows

if TYPE_CHECKING:
    from embedkit.data.sources import TrainData
    from embedkit.recipe import Recipe

CCP_CITATION = """@inproceedings{wu2022ccp,
  title = {Unsupervised Context Aware Sentence Representation Pretraining for Multi-lingual Dense Retrieval},
  author = {Wu, Ning and Liang, Yaobo and Ren, Houxing and Shou, Linjun and Duan, Nan and Gong, Ming and
            Jiang, Daxin},
  booktitle = {Proceedings of the Thirty-First International Joint Conference on Artificial Intelligence (IJCAI)},
  year = {2022},
  note = {arXiv:2206.03281}
}"""


class CCPParams(MethodParams):
    temperature: float = Field(0.05, gt=0, description="τ of the InfoNCE over the batch")
    window: int = Field(2, ge=1, description="a sentence's positives: the sentences at most this many places "
                                             "before or after it in its document")
    documents: Literal["line", "paragraph", "chunk"] = Field(
        "paragraph", description="how data.train.path holds documents: line (one a line), paragraph (blank-line "
        "separated), chunk (no boundaries: every chunk_lines consecutive lines are a pseudo-document)")
    chunk_lines: int | None = Field(None, ge=2, description="documents: chunk only: lines per pseudo-document")
    split_sentences: bool = Field(
        True, description="split each document's text into sentences (a small rule-based splitter); false: each "
        "non-blank line is one sentence")
    short_documents: Literal["error", "skip"] = Field(
        "error", description="a document with fewer than two distinct sentences: refuse the file (naming its "
        "line), or leave it out")


@register
class CCP(Method):
    """Rows of (anchor sentence, positive sentence, document id) built from a document file: each sentence is
    paired with every other sentence of its document within ``window`` places. The loss
    (:class:`embedkit.methods.ccp.loss.ContextPositivesLoss`) is InfoNCE over the (global) batch's positives,
    with the candidates from the anchor's own document masked out."""

    name = "ccp"
    params_cls = CCPParams
    column_roles = ("anchor", "positive")
    label_role = "label"  # the document id; sentence-transformers' collator hands a `label` column to the loss
    paper = ("Wu et al., Unsupervised Context Aware Sentence Representation Pretraining for Multi-lingual Dense "
             "Retrieval (IJCAI 2022), arXiv:2206.03281 (our reading: in-batch InfoNCE, same-document mask)")
    citation = CCP_CITATION
    composable = True
    streams = True  # streamed rows are built into the data cache a document at a time

    @classmethod
    def refusals(cls, recipe: Recipe, params: Any) -> list[tuple[tuple, str]]:
        out = super().refusals(recipe, params)
        src = recipe.data.train
        if src.path is None:
            out.append((("data", "train", "hub"), "method 'ccp' builds its rows from a local text file of "
                        "documents: set data.train.path"))
        if src.format not in ("auto", "text"):
            out.append((("data", "train", "format"), f"method 'ccp' reads a text file of documents (format text or "
                        f"auto), not {src.format!r}"))
        if src.columns is not None:
            out.append((("data", "train", "columns"), "method 'ccp' reads plain text (it builds the anchor, "
                        "positive and document columns itself): remove the key"))
        if src.mine is not None:
            out.append((("data", "train", "mine"), "method 'ccp' takes its negatives from other documents in "
                        "the batch; mined negatives are not supported: remove the section"))
        if params.documents == "chunk" and params.chunk_lines is None:
            out.append((("method", "documents"), "documents: chunk needs method.chunk_lines (the lines of a "
                        "pseudo-document, at least 2)"))
        if params.documents != "chunk" and params.chunk_lines is not None:
            out.append((("method", "chunk_lines"), f"only read with documents: chunk (this recipe has documents: "
                        f"{params.documents}): remove the key"))
        if params.documents == "line" and not params.split_sentences:
            out.append((("method", "split_sentences"), "documents: line with split_sentences: false makes every "
                        "document one sentence (no context positive): split the lines, or use documents: "
                        "paragraph or chunk"))
        return out

    @classmethod
    def read_train_file(cls, path: str, recipe: Recipe, notes: list[str]) -> TrainData:
        p = bound_method(recipe.method)[1]
        built = None
        if recipe.data.train.streaming:  # the rows to the data cache, a document at a time
            built = cached_rows(path, p.documents, p.window, p.chunk_lines, p.split_sentences, p.short_documents)
        data, skipped = built or build_rows(path, p.documents, p.window, p.chunk_lines, p.split_sentences,
                                            p.short_documents)
        if skipped:
            notes.append(f"{path}: {skipped} document(s) with fewer than two distinct sentences left out "
                         "(method.short_documents: skip)")
        return data

    def build_loss(self):
        from embedkit.methods.ccp.loss import ContextPositivesLoss

        return ContextPositivesLoss(self.ctx.model, self.params.temperature, head=training_head(self))
