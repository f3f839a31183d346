"""Method ``ccp`` (context positives): the document builder pairs only sentences of one document, within the
window, every such pair; the loss never uses a same-document sentence as an in-batch negative (its gradient is
zero, moving it leaves the loss unchanged, while a cross-document candidate counts), equals a direct masked
InfoNCE, across processes too (gathered document ids); GradCache equals the plain path; bad input is refused
with file:line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from _mp_helpers import assert_gradcache_equals_one_pass, assert_hub_refused
from tiny_model import training_model

from embedkit import distributed
from embedkit.errors import RecipeError
from embedkit.losses import contrastive as contrastive_mod
from embedkit.methods.ccp.documents import build_rows, read_documents, split_sentences
from embedkit.methods.ccp.loss import ContextPositivesLoss
from embedkit.validate import load_recipe, load_recipe_with_data

TAU = 0.05


def tagged_paragraphs(path: Path, sizes: list[int]) -> Path:
    """Blank-line separated documents; sentence j of document d reads 'Document d says thing j.'"""
    blocks = [" ".join(f"Document {d} says thing {j}." for j in range(n)) for d, n in enumerate(sizes)]
    path.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return path


def tag(sentence: str) -> tuple[int, int]:
    d, j = re.fullmatch(r"Document (\d+) says thing (\d+)\.", sentence).groups()
    return int(d), int(j)


# ---------------------------------------------------------------------------------------------------------
# The data builder


@pytest.mark.parametrize("window", [1, 2, 5])
def test_rows_pair_only_one_documents_sentences_within_the_window_and_all_of_them(tmp_path, window):
    sizes = [2, 7, 3, 9]
    data, skipped = build_rows(tagged_paragraphs(tmp_path / "docs.txt", sizes), "paragraph", window)
    cols = data.columns
    assert list(cols) == ["anchor", "positive", "label"] and skipped == 0
    got = set()
    for a, p, doc in zip(cols["anchor"], cols["positive"], cols["label"], strict=True):
        (da, i), (dp, j) = tag(a), tag(p)
        assert da == dp == doc, f"a positive from another document: {a!r} / {p!r} (id {doc})"
        assert 1 <= abs(i - j) <= window
        got.add((doc, i, j))
    expected = {(d, i, j) for d, n in enumerate(sizes) for i in range(n) for j in range(n)
                if 1 <= abs(i - j) <= window}
    assert got == expected and len(cols["anchor"]) == len(expected), "every in-window pair, once"


def test_line_and_chunk_layouts(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("Document 0 says thing 0. Document 0 says thing 1.\n\nDocument 1 says thing 0. "
                    "Document 1 says thing 1. Document 1 says thing 2.\n", encoding="utf-8")
    line_docs = read_documents(path, "line")
    assert [(d.line, len(d.sentences)) for d in line_docs] == [(1, 2), (3, 3)]

    path.write_text("".join(f"s{i}\n" for i in range(7)), encoding="utf-8")
    chunks = read_documents(path, "chunk", chunk_lines=3, split=False)
    # 3 + 3, and the one-line remainder joins the chunk before it (it has no context of its own)
    assert [(d.line, d.sentences) for d in chunks] == [(1, ["s0", "s1", "s2"]), (4, ["s3", "s4", "s5", "s6"])]
    data, _ = build_rows(path, "chunk", 1, chunk_lines=3, split=False)
    for a, p, doc in zip(*data.columns.values()):
        assert (int(a[1:]) < 3) == (int(p[1:]) < 3) == (doc == 0)


def test_a_repeated_sentence_is_not_its_own_positive(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("Same here. Other one. Same here.\n", encoding="utf-8")
    data, _ = build_rows(path, "line", 2)
    pairs = list(zip(data.columns["anchor"], data.columns["positive"]))
    assert ("Same here.", "Same here.") not in pairs
    assert sorted(pairs) == sorted([("Same here.", "Other one."), ("Other one.", "Same here."),
                                    ("Other one.", "Same here."), ("Same here.", "Other one.")])


def test_splitter_keeps_abbreviations_and_initials():
    text = ('Mr. J. M. Cheshire of Griffin said Gov. Price Daniel signed it. "It is done!" he said. Was it? '
            "The U.S. team won 3-1.  Then (as planned) they left.")
    assert split_sentences(text) == [
        "Mr. J. M. Cheshire of Griffin said Gov. Price Daniel signed it.", '"It is done!" he said.', "Was it?",
        "The U.S. team won 3-1.", "Then (as planned) they left."]
    assert split_sentences("no capital after. the dot") == ["no capital after. the dot"]


# ---------------------------------------------------------------------------------------------------------
# The loss


def embeddings(n: int = 8, dim: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(n, dim, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(2))


DOCS = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2])


def direct(a: torch.Tensor, p: torch.Tensor, docs: torch.Tensor, rows: range | None = None) -> torch.Tensor:
    """The docstring's formula term by term: anchor i against its own positive and every other document's."""
    a, p = F.normalize(a, dim=-1), F.normalize(p, dim=-1)
    rows = rows if rows is not None else range(a.shape[0])
    total = a.new_zeros(())
    for i in rows:
        logits = torch.stack([a[i] @ p[j] / TAU for j in range(p.shape[0]) if j == i or docs[j] != docs[i]])
        own = a[i] @ p[i] / TAU
        total = total - (own - torch.logsumexp(logits, 0))
    return total / len(rows)


def ccp_value(a: torch.Tensor, p: torch.Tensor, docs: torch.Tensor) -> torch.Tensor:
    loss = ContextPositivesLoss(torch.nn.Identity(), TAU)
    batch = loss.plan([{}, {}], docs)
    return loss.score([a, p], batch)


def test_loss_equals_a_direct_masked_infonce():
    a, p = embeddings()
    ours = ccp_value(a, p, DOCS)
    ref = direct(a, p, DOCS)
    assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-12)
    for g1, g2 in zip(torch.autograd.grad(ours, (a, p)), torch.autograd.grad(ref, (a, p)), strict=True):
        torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)
    # the mask is applied: plain InfoNCE over the same batch differs
    plain = contrastive_mod.info_nce(a, p, TAU)
    assert abs(float(plain.detach()) - float(ours.detach())) > 1e-3


def test_with_every_row_from_another_document_it_is_mnrl():
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    a, p = embeddings(seed=3)
    st = MultipleNegativesRankingLoss(torch.nn.Identity(), scale=1 / TAU).compute_loss_from_embeddings([a, p], None)
    assert float(ccp_value(a, p, torch.arange(8))) == pytest.approx(float(st), rel=1e-12)


def test_a_same_document_sentence_is_never_a_negative():
    """Row 2's positive is from anchor 0's document (0): moving it leaves ℓ_0 unchanged and its gradient from
    ℓ_0 is exactly zero; row 1's positive (document 1) is a negative of anchor 0 and moves ℓ_0."""
    a, p = embeddings()
    loss = ContextPositivesLoss(torch.nn.Identity(), TAU)
    docs = DOCS

    def anchor0(p_: torch.Tensor) -> torch.Tensor:  # ℓ_0 alone: the batch of anchor 0 against every candidate
        batch = loss.plan([{}, {}], docs)
        batch.extra["documents"] = docs[:1]
        return loss.score([a[:1], p_], batch)

    base = anchor0(p)
    grad = torch.autograd.grad(base, p)[0]
    same = [j for j in range(8) if docs[j] == docs[0] and j != 0]
    other = [j for j in range(8) if docs[j] != docs[0]]
    assert same == [2, 5] and other
    for j in same:
        assert torch.count_nonzero(grad[j]) == 0, f"same-document candidate {j} got a gradient"
        moved = p.detach().clone()
        moved[j] = torch.randn(6, dtype=torch.float64) * 5
        assert float(anchor0(moved)) == float(base), "moving a same-document sentence changed the loss"
    for j in other:
        assert grad[j].abs().max() > 1e-6
        moved = p.detach().clone()
        moved[j] = a[0].detach()  # a cross-document candidate as close to the anchor as can be
        assert float(anchor0(moved)) > float(base) + 1e-3


def test_across_processes_the_document_ids_are_gathered(monkeypatch):
    """Rank 1 of 2 holds rows 4..7 of the global batch: with the positives and document ids of both processes
    gathered, its loss is the direct formula over the global batch for those rows; same-document candidates
    held by the other process (rows 0 and 2 for anchor 5, document 0) are masked too."""
    a, p = embeddings()
    local = slice(4, 8)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(contrastive_mod, "gather_no_grad", lambda x, enabled=True: torch.cat([DOCS[:4], x]))
    loss = ContextPositivesLoss(torch.nn.Identity(), TAU)
    monkeypatch.setattr(loss, "gather", lambda x: torch.cat([p[:4], x]))
    batch = loss.plan([{}, {}], DOCS[local])
    mask = loss.same_document_mask(batch)
    assert mask.shape == (4, 8) and mask[1].nonzero().flatten().tolist() == [0, 2]  # anchor 5: document 0
    assert not mask[torch.arange(4), torch.arange(4, 8)].any(), "an anchor's own positive is never masked"
    ours = loss.score([a[local], p[local]], batch)
    assert float(ours) == pytest.approx(float(direct(a, p, DOCS, rows=range(4, 8))), rel=1e-12)


@pytest.fixture()
def model(tiny_model_path):
    return training_model(tiny_model_path, "mean")


def test_gradcache_equals_plain(model):
    anchors = [f"sentence {i} of document {i % 3}" for i in range(10)]
    positives = [f"a neighbour of sentence {i} in document {i % 3}" for i in range(10)]
    features = [model.tokenize(anchors), model.tokenize(positives)]
    docs = torch.tensor([i % 3 for i in range(10)])

    assert_gradcache_equals_one_pass(model, lambda **k: ContextPositivesLoss(model, TAU, **k), features, docs)


# ---------------------------------------------------------------------------------------------------------
# Recipes: the rows reach the dataset; bad input is refused with file:line


def recipe(tmp: Path, model: str, data: Path, method: dict | None = None, train: dict | None = None) -> Path:
    raw = {
        "model": {"name": model, "max_seq_length": 16},
        "data": {"train": {"path": str(data), **(train or {})}, "dev": None},
        "method": {"name": "ccp", **(method or {})},
        "training": {"batch_size": 4, "max_steps": 2},
        "eval": {"before": False, "suite": "none"},
        "output": {"dir": str(tmp / "out")},
    }
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def test_recipe_rows_become_anchor_positive_label_columns(tmp_path, tiny_model_path):
    from embedkit.methods import get_method
    from embedkit.training.run import build_dataset

    data = tagged_paragraphs(tmp_path / "docs.txt", [3, 4])
    rec, train_data = load_recipe_with_data(recipe(tmp_path, tiny_model_path, data, {"window": 1}))
    dataset, _ = build_dataset(rec, train_data, get_method("ccp"))
    assert dataset.column_names == ["anchor", "positive", "label"]
    assert len(dataset) == 2 * 2 + 2 * 3
    assert all(tag(r["anchor"])[0] == tag(r["positive"])[0] == r["label"] for r in dataset)


@pytest.mark.parametrize("content,method,match", [
    ("\n\n  \n", {}, r"docs.txt: the training set is empty"),
    ("One sentence. And two.\n\nA lonely one.\n\nBack to. Two here.\n", {},
     r"docs.txt:3: document 2 has one sentence, so no context positive.*method.short_documents: skip"),
    ("Twice. Twice.\n", {"documents": "line"}, r"docs.txt:1: document 1 has 2 sentences but no two distinct ones"),
    ("Alone.\n\nAlso alone.\n", {"short_documents": "skip"}, r"none of its 2 document\(s\) has two distinct"),
])
def test_bad_documents_are_refused_with_file_and_line(tmp_path, tiny_model_path, content, method, match):

    data = tmp_path / "docs.txt"
    data.write_text(content, encoding="utf-8")
    path = recipe(tmp_path, tiny_model_path, data, method)
    with pytest.raises(RecipeError, match=rf"^{path}:\d+: data.train.path: .*{match}") as err:
        load_recipe(path)
    assert "\n" not in str(err.value)


def test_short_documents_skip_leaves_them_out_and_says_so(tmp_path, tiny_model_path, capsys):

    data = tmp_path / "docs.txt"
    data.write_text("One sentence. And two.\n\nA lonely one.\n", encoding="utf-8")
    _, train_data = load_recipe_with_data(recipe(tmp_path, tiny_model_path, data, {"short_documents": "skip"}))
    assert train_data.columns["label"] == [0, 0]
    assert "1 document(s) with fewer than two distinct sentences left out" in capsys.readouterr().err


def test_not_utf8_names_the_line(tmp_path, tiny_model_path):

    data = tmp_path / "docs.txt"
    data.write_bytes(b"Fine one. Fine two.\n\nBad \xff byte. Here.\n")
    with pytest.raises(RecipeError, match=r"docs.txt:3: byte 0xff at offset \d+ is not valid UTF-8"):
        load_recipe(recipe(tmp_path, tiny_model_path, data))


@pytest.mark.parametrize("method,train,match", [
    ({"documents": "chunk"}, {}, r"method.documents: documents: chunk needs method.chunk_lines"),
    ({"chunk_lines": 5}, {}, r"method.chunk_lines: only read with documents: chunk"),
    ({"documents": "line", "split_sentences": False}, {}, r"method.split_sentences: documents: line with "),
    ({}, {"format": "csv"}, r"data.train.format: method 'ccp' reads a text file of documents"),
    ({}, {"columns": ["text"]}, r"data.train.columns: method 'ccp' reads plain text"),
    ({"window": 0}, {}, r"method.window: Input should be greater than or equal to 1"),
    ({"documents": "pages"}, {}, r"method.documents: Input should be 'line', 'paragraph' or 'chunk'"),
])
def test_options_ccp_cannot_honour_are_refused_with_file_line_key(tmp_path, tiny_model_path, method, train, match):

    data = tagged_paragraphs(tmp_path / "docs.txt", [3])
    path = recipe(tmp_path, tiny_model_path, data, method, train)
    with pytest.raises(RecipeError, match=rf"{path}:\d+: {match}"):
        load_recipe(path)


def test_a_hub_dataset_is_refused(tmp_path, tiny_model_path):

    path = recipe(tmp_path, tiny_model_path, tmp_path / "unused.txt")
    assert_hub_refused(path, "method 'ccp' builds its rows from a local")

