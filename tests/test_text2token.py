"""Text2Token: vocabulary heads, data-driven and model-derived targets, the KL loss and its stages,
`embedkit inspect`, and a short end-to-end run on the tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from embedkit.methods.text2token.loss import Text2TokenLoss, stage_callback, token_kl
from embedkit.methods.text2token.targets import (
    STOPWORDS,
    DataTargets,
    ModelTargets,
    TokenFilter,
    TokenTable,
    cached_document_frequencies,
    count_document_frequencies,
    idf,
)
from embedkit.methods.text2token.vocab_head import HEAD_FILE, build_vocab_head, input_embedding, load_head, save_head

TOY = ["cat dog", "cat fish", "bird", "cat cat bird"]
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings of the sentences are compared, and the cat sleeps!",
    "the of and to",  # stopwords only: no data-driven target
]
BOOSTED = "piano"


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture(scope="module")
def tiny_mlm_path(tmp_path_factory, minilm_path) -> str:
    """A tiny BertForMaskedLM (MLM head in the checkpoint) whose head bias strongly favours one token."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    tok = AutoTokenizer.from_pretrained(minilm_path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    model = BertForMaskedLM(config)
    with torch.no_grad():
        model.cls.predictions.bias[tok.convert_tokens_to_ids(BOOSTED)] = 30.0
    path = tmp_path_factory.mktemp("tiny-mlm")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def st_model(path: str, pooling: str = "mean"):
    from embedkit.modeling import build_model
    from embedkit.recipe import ModelSection

    return build_model(ModelSection(name=path, pooling=pooling, max_seq_length=32))


def data_targets(tokenizer, corpus, **kw) -> DataTargets:
    whole = kw.get("whole_words", "off") != "off"
    table = TokenTable(tokenizer)
    freqs = count_document_frequencies(corpus, tokenizer, table.size, whole_words=whole)
    return DataTargets(table, freqs, **kw)


# ----------------------------------------------------------------------------------------------------------
# Data-driven targets


@pytest.mark.parametrize("options", [
    {}, {"whole_words": "first"}, {"whole_words": "spread"}, {"term_frequency": True}, {"formula": "plain"},
])
def test_data_targets_are_distributions_over_the_texts_own_tokens(tokenizer, options):
    builder = data_targets(tokenizer, TEXTS + TOY, **options)
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    targets, valid = builder(enc["input_ids"], enc["attention_mask"])
    assert valid.tolist() == [True, True, False]
    assert torch.allclose(targets[valid].sum(1), torch.ones(2))
    assert (targets >= 0).all() and targets[2].sum() == 0
    stop_ids = {tokenizer.convert_tokens_to_ids(w) for w in ("the", "over", "of", "are", "and")}
    punct_ids = {tokenizer.convert_tokens_to_ids(w) for w in (".", ",", "!")}
    for row in range(2):
        support = set(torch.nonzero(targets[row]).flatten().tolist())
        own = set(enc["input_ids"][row][enc["attention_mask"][row].bool()].tolist())
        assert support and support <= own, "mass outside the text's own tokens"
        assert not support & set(tokenizer.all_special_ids)
        assert not support & stop_ids and not support & punct_ids
    fox, cat = tokenizer.convert_tokens_to_ids("fox"), tokenizer.convert_tokens_to_ids("cat")
    assert targets[0, fox] > 0 and targets[1, cat] > 0


def test_whole_word_pieces_share_the_words_weight(tokenizer):
    pieces = tokenizer.tokenize("embeddings")
    assert len(pieces) > 1, "test premise: a word split into pieces"
    ids = tokenizer.convert_tokens_to_ids(pieces)
    enc = tokenizer(["embeddings"], return_tensors="pt")
    first, _ = data_targets(tokenizer, TOY + ["embeddings"], whole_words="first")(enc["input_ids"])
    spread, _ = data_targets(tokenizer, TOY + ["embeddings"], whole_words="spread")(enc["input_ids"])
    assert first[0, ids[0]] == pytest.approx(1.0)
    assert spread[0, ids].tolist() == pytest.approx([1.0 / len(ids)] * len(ids))


def test_smoothing_keeps_a_distribution_with_full_support(tokenizer):
    builder = data_targets(tokenizer, TOY, smoothing=0.1)
    enc = tokenizer(["cat dog"], return_tensors="pt")
    targets, _ = builder(enc["input_ids"])
    assert targets.sum().item() == pytest.approx(1.0, abs=1e-5)
    special = torch.tensor(tokenizer.all_special_ids)
    assert (targets[0, special] == 0).all()
    non_special = torch.ones(targets.shape[1], dtype=torch.bool)
    non_special[special] = False
    assert (targets[0, non_special] > 0).all()
    cat = tokenizer.convert_tokens_to_ids("cat")
    assert targets[0, cat] > 0.9 * 0.3  # most mass stays on the text's tokens


def test_idf_vectors_equal_the_stated_formulas_and_scikit_learns_smooth_idf(tokenizer, data_dir):
    from scipy import sparse
    from sklearn.feature_extraction.text import TfidfTransformer

    with open(data_dir / "corpora" / "brown.txt", encoding="utf-8") as fh:
        corpus = [line.strip() for line in fh if line.strip()][:3000]
    vocab = len(tokenizer)
    freqs = count_document_frequencies(corpus, tokenizer, vocab)
    n, df = freqs.n_docs, freqs.token_df
    assert n == 3000 and (df == 0).any() and (df > 0).any()
    smooth, plain = idf(df, n, "smooth"), idf(df, n, "plain")
    # A direct computation of each stated formula, entry by entry (math.log, not numpy).
    np.testing.assert_allclose(smooth, [math.log((1 + n) / (1 + d)) + 1 for d in df.tolist()], rtol=1e-15, atol=0)
    np.testing.assert_allclose(plain, [math.log(n / max(d, 1)) for d in df.tolist()], rtol=1e-15, atol=1e-15)
    # scikit-learn fitted on the corpus' own binary documents × tokens matrix: the same float64 numbers.
    docs = [sorted(set(ids)) for ids in tokenizer(corpus, add_special_tokens=False)["input_ids"]]
    indptr = np.cumsum([0] + [len(d) for d in docs])
    matrix = sparse.csr_matrix((np.ones(indptr[-1]), np.concatenate(docs), indptr), shape=(n, vocab))
    np.testing.assert_array_equal(smooth, TfidfTransformer(smooth_idf=True).fit(matrix).idf_)
    # The scalar path (whole words, one document frequency at a time) gives the vector's numbers.
    for i in (int(np.argmin(df)), int(np.argmax(df)), int(np.flatnonzero(df == 1)[0])):
        assert idf(int(df[i]), n, "smooth") == smooth[i] and idf(int(df[i]), n, "plain") == plain[i]


def test_idf_matches_a_hand_computation(tokenizer):
    ids = {w: tokenizer.convert_tokens_to_ids(w) for w in ("cat", "dog", "fish", "bird")}
    freqs = count_document_frequencies(TOY, tokenizer, len(tokenizer))
    hand_df = {"cat": 3, "dog": 1, "fish": 1, "bird": 2}  # 'cat' twice in one text counts once
    assert freqs.n_docs == 4
    assert {w: int(freqs.token_df[i]) for w, i in ids.items()} == hand_df
    smooth = idf(freqs.token_df, 4, "smooth")
    plain = idf(freqs.token_df, 4, "plain")
    for word, i in ids.items():
        assert smooth[i] == pytest.approx(math.log(5 / (1 + hand_df[word])) + 1)
        assert plain[i] == pytest.approx(math.log(4 / hand_df[word]))
    # The target of "cat dog" is the two IDFs, normalised.
    builder = DataTargets(TokenTable(tokenizer), freqs)
    targets, _ = builder(tokenizer(["cat dog"], return_tensors="pt")["input_ids"])
    a, b = math.log(5 / 4) + 1, math.log(5 / 2) + 1
    assert targets[0, ids["cat"]].item() == pytest.approx(a / (a + b), rel=1e-5)
    assert targets[0, ids["dog"]].item() == pytest.approx(b / (a + b), rel=1e-5)


def test_stopword_list_is_small_lowercase_and_filters_tokens(tokenizer):
    assert 100 < len(STOPWORDS) < 300 and all(w == w.lower() for w in STOPWORDS)
    keep = TokenFilter(extra_stopwords=("Cat",)).keep_mask(TokenTable(tokenizer))
    for word in ("the", "cat", ".", "[CLS]"):
        assert not keep[tokenizer.convert_tokens_to_ids(word)], word
    assert keep[tokenizer.convert_tokens_to_ids("dog")]


def test_document_frequency_cache_beside_corpus_then_fallbacks(tokenizer, tmp_path):
    corpus = tmp_path / "data" / "corpus.txt"
    corpus.parent.mkdir()
    corpus.write_text("\n".join(TOY), encoding="utf-8")
    fallback = tmp_path / "out" / "cache"
    f1, file1, hit1 = cached_document_frequencies(TOY, tokenizer, len(tokenizer), True, corpus, [fallback])
    assert not hit1 and file1.parent == corpus.parent and file1.name.startswith("corpus.txt.text2token-df-")
    f2, file2, hit2 = cached_document_frequencies(TOY, tokenizer, len(tokenizer), True, corpus, [fallback])
    assert hit2 and file2 == file1
    assert np.array_equal(f1.token_df, f2.token_df) and f1.word_df_multi == f2.word_df_multi
    # Another corpus gets another key; a read-only corpus folder falls back to the next folder.
    other = TOY + ["dog"]
    corpus.parent.chmod(0o555)
    try:
        f3, file3, hit3 = cached_document_frequencies(other, tokenizer, len(tokenizer), True, corpus, [fallback])
    finally:
        corpus.parent.chmod(0o755)
    assert not hit3 and file3.parent == fallback and f3.n_docs == 5
    # Nowhere writable: no cache, no failure.
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    corpus.parent.chmod(0o555)
    try:
        f4, file4, _ = cached_document_frequencies(other + ["fish"], tokenizer, len(tokenizer), False, corpus,
                                                   [blocker / "sub"])
    finally:
        corpus.parent.chmod(0o755)
    assert file4 is None and f4.n_docs == 6


# ----------------------------------------------------------------------------------------------------------
# The KL objective


def test_kl_is_zero_when_prediction_equals_target_and_gradient_checks():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, dtype=torch.float64)
    p = torch.softmax(logits, dim=-1)
    assert token_kl(p, torch.log_softmax(logits, -1)).item() == pytest.approx(0.0, abs=1e-12)
    # A sparse target (zeros allowed) against another prediction: positive, and the hand formula.
    sparse = torch.zeros(3, 7, dtype=torch.float64)
    sparse[:, :2] = 0.5
    z = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    kl = token_kl(sparse, torch.log_softmax(z, -1))
    hand = sum(0.5 * (math.log(0.5) - torch.log_softmax(z, -1)[i, j].item()) for i in range(3) for j in range(2)) / 3
    assert kl.item() == pytest.approx(hand) and kl.item() > 0
    # Gradient: autograd's numerical check, and the closed form (softmax(z) − p) / B.
    assert torch.autograd.gradcheck(lambda x: token_kl(sparse, torch.log_softmax(x, -1)), (z,))
    (grad,) = torch.autograd.grad(kl, z)
    assert torch.allclose(grad, (torch.softmax(z, -1) - sparse) / 3)
    # Rows without a target do not count.
    valid = torch.tensor([True, False, True])
    assert token_kl(sparse, torch.log_softmax(z, -1), valid).item() == pytest.approx(
        token_kl(sparse[valid], torch.log_softmax(z[valid], -1)).item())


# ----------------------------------------------------------------------------------------------------------
# Vocabulary heads


def test_mlm_head_from_checkpoint_matches_bert_for_masked_lm(tiny_mlm_path):
    from transformers import BertForMaskedLM

    model = st_model(tiny_mlm_path)
    head = build_vocab_head(model)
    assert head.kind == "mlm" and "pretrained MLM head" in head.source
    reference = BertForMaskedLM.from_pretrained(tiny_mlm_path).eval()
    h = torch.randn(4, 32)
    with torch.no_grad():
        assert torch.allclose(head(h), reference.cls(h), atol=1e-5)
    # The decoder is the live input embedding matrix, not a copy, and is not in the head's state.
    assert head.decoder().data_ptr() == input_embedding(model).weight.data_ptr()
    assert "decoder_weight" not in dict(head.named_parameters())


def test_tied_head_without_mlm_weights(tiny_model_path):
    model = st_model(tiny_model_path)
    head = build_vocab_head(model)
    assert head.kind == "tied"
    assert head.decoder().data_ptr() == input_embedding(model).weight.data_ptr()
    assert sorted(head.state_dict()) == ["bias", "logit_scale"]
    frozen = build_vocab_head(model, "tied", freeze=True)
    assert not any(p.requires_grad for p in frozen.parameters())
    with pytest.raises(Exception, match="pretrained"):
        build_vocab_head(model, "pretrained")


def test_decoder_lm_head_is_read_untied_from_lm_head_weight(tiny_model_path, tmp_path):
    from safetensors.torch import save_file

    model = st_model(tiny_model_path)
    emb = input_embedding(model).weight
    lm = torch.randn_like(emb)
    save_file({"lm_head.weight": lm.contiguous()}, str(tmp_path / "model.safetensors"))
    config = model[0].auto_model.config
    config._name_or_path, config.tie_word_embeddings = str(tmp_path), False
    head = build_vocab_head(model, "pretrained")
    assert head.kind == "lm" and torch.equal(head.decoder(), lm)
    assert head.decoder().data_ptr() != emb.data_ptr()
    h = torch.randn(2, emb.shape[1])
    with torch.no_grad():
        assert torch.allclose(head(h), h @ lm.T)


def _tiny_masked_lm(family: str, tokenizer):
    """A tiny randomly initialised masked-LM of ``family`` over the MiniLM vocabulary, its vocabulary bias
    drawn at random (so that a head which drops or misplaces the bias is caught), and the family's own head
    as a function of a last hidden state."""
    import transformers as T

    vocab = tokenizer.vocab_size
    small = {"vocab_size": vocab, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 64, "max_position_embeddings": 128}
    if family == "electra":  # the generator's dense maps hidden 32 to embedding size 16
        model = T.ElectraForMaskedLM(T.ElectraConfig(embedding_size=16, **small))
        own = lambda m, h: m.generator_lm_head(m.generator_predictions(h))  # noqa: E731
    elif family == "deberta-v2":
        model = T.DebertaV2ForMaskedLM(T.DebertaV2Config(**small))
        own = lambda m, h: m.cls(h)  # noqa: E731
    elif family == "deberta-v2-nonlegacy":  # no decoder module: the head multiplies by the word embeddings
        model = T.DebertaV2ForMaskedLM(T.DebertaV2Config(legacy=False, **small))
        own = lambda m, h: m.lm_predictions(h, m.deberta.embeddings.word_embeddings)  # noqa: E731
    elif family == "modernbert":  # dense and LayerNorm without bias
        ids = {k: getattr(tokenizer, f"{k}_token_id") for k in ("pad", "cls", "sep")}
        model = T.ModernBertForMaskedLM(T.ModernBertConfig(
            vocab_size=vocab, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
            pad_token_id=ids["pad"], bos_token_id=ids["cls"], eos_token_id=ids["sep"], cls_token_id=ids["cls"],
            sep_token_id=ids["sep"]))
        own = lambda m, h: m.decoder(m.head(h))  # noqa: E731
    else:
        raise ValueError(family)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") and param.shape == (vocab,):
                param.normal_()
    return model.eval(), own


@pytest.fixture(scope="module", params=["electra", "deberta-v2", "deberta-v2-nonlegacy", "modernbert"])
def other_mlm(request, tmp_path_factory, tokenizer):
    """(family, folder, the masked-LM model, its own head) for families the old key tables did not know."""
    torch.manual_seed(0)
    model, own = _tiny_masked_lm(request.param, tokenizer)
    path = tmp_path_factory.mktemp(f"tiny-{request.param}")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return request.param, str(path), model, own


def test_mlm_head_of_other_families_equals_the_checkpoints_own_head(other_mlm):
    family, path, reference, own = other_mlm
    model = st_model(path)
    head = build_vocab_head(model, "pretrained")
    assert head.kind == "mlm" and type(reference).__name__ in head.source
    h = torch.randn(4, 32)
    with torch.no_grad():
        torch.testing.assert_close(head(h), own(reference, h), rtol=0, atol=1e-6)
        # and on the masked-LM model's own last hidden state: its logits
        ids = model.tokenizer(["The cat sat on the mat."], return_tensors="pt")["input_ids"]
        captured = {}
        hook = reference.base_model.register_forward_hook(lambda _m, _a, out: captured.update(h=out[0]))
        logits = reference(input_ids=ids).logits
        hook.remove()
        torch.testing.assert_close(head(captured["h"]), logits, rtol=0, atol=1e-5)
    # The checkpoints tie their decoder to the input embeddings: the head uses the live matrix, no copy.
    assert head.decoder().data_ptr() == input_embedding(model).weight.data_ptr()


def test_other_family_head_survives_save_load_and_frozen_copy(other_mlm, tmp_path):
    family, path, _, _ = other_mlm
    model = st_model(path)
    head = build_vocab_head(model)
    with torch.no_grad():
        head.bias.add_(0.5)
        head.transform.norm.weight.mul_(1.5)
    save_head(head, tmp_path / HEAD_FILE)
    loaded, meta = load_head(model, tmp_path / HEAD_FILE)
    frozen = head.frozen_copy(input_embedding(model))
    h = torch.randn(3, 32)
    with torch.no_grad():
        assert torch.equal(loaded(h), head(h)) and torch.equal(frozen(h), head(h))
    assert meta["act"] == "gelu" and not any(p.requires_grad for p in frozen.parameters())


def test_checkpoint_without_mlm_weights_says_why_it_gets_the_tied_head(tiny_model_path, caplog):
    model = st_model(tiny_model_path)  # a BertModel checkpoint: BertForMaskedLM would start its head at random
    with caplog.at_level("WARNING", logger="embedkit.methods.text2token.vocab_head"):
        head = build_vocab_head(model)
    assert head.kind == "tied"
    assert "no pretrained head" in caplog.text and "cls.predictions" in caplog.text and "missing" in caplog.text
    with pytest.raises(Exception, match="no complete MLM head"):
        build_vocab_head(model, "pretrained")


def test_family_without_a_masked_lm_class_says_so(tokenizer, tmp_path, caplog):
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    GPT2Model(GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=32, n_layer=1, n_head=2,
                         n_positions=64)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with caplog.at_level("WARNING", logger="embedkit.methods.text2token.vocab_head"):
        head = build_vocab_head(st_model(str(tmp_path)))
    assert head.kind == "tied" and "does not load as a masked-LM model" in caplog.text


# ----------------------------------------------------------------------------------------------------------
# Model-derived targets, stages, training


def make_loss(model_path, corpus, **kw):
    import copy

    model = st_model(model_path)
    head = build_vocab_head(model)
    table = TokenTable(model.tokenizer, head.vocab_size)
    freqs = count_document_frequencies(corpus, model.tokenizer, head.vocab_size)
    frozen = copy.deepcopy(model)
    keep = torch.from_numpy(TokenFilter().keep_mask(table))
    mt = ModelTargets(frozen, head.frozen_copy(input_embedding(frozen)), kw.pop("mode", "positions"), top_k=5,
                      keep=keep)
    return Text2TokenLoss(model, head, DataTargets(table, freqs), mt, **kw), model


@pytest.mark.parametrize("mode", ["positions", "pooled", "template"])
def test_model_targets_are_top_k_renormalised(tiny_mlm_path, mode):
    loss, model = make_loss(tiny_mlm_path, TEXTS, mode=mode)
    feats = model.preprocess(TEXTS)
    targets = loss.model_targets(feats)
    assert torch.allclose(targets.sum(1), torch.ones(len(TEXTS)))
    assert ((targets > 0).sum(1) <= 5).all()
    removed = ~loss.model_targets.keep
    assert (targets[:, removed] == 0).all()
    if mode == "pooled":  # the boosted bias dominates the embedding's prediction
        assert targets[:, model.tokenizer.convert_tokens_to_ids(BOOSTED)].min() > 0.5


def test_model_target_cache_equals_on_the_fly(tiny_mlm_path, tmp_path):
    loss, model = make_loss(tiny_mlm_path, TEXTS)
    feats = model.preprocess(TEXTS)
    live = loss.model_targets(feats)
    file = loss.model_targets.precompute(TEXTS, model.preprocess, "m.safetensors", [tmp_path], meta={"k": "v"})
    assert file == tmp_path / "m.safetensors" and len(loss.model_targets.cache) == len(TEXTS)
    assert torch.allclose(loss.model_targets(feats), live, atol=1e-6)
    loss.model_targets.cache = {}
    loss.model_targets.precompute(TEXTS, model.preprocess, "m.safetensors", [tmp_path], meta={"k": "v"})
    assert torch.allclose(loss.model_targets(feats), live, atol=1e-6)


def test_stage_switch_happens_at_the_configured_step(tiny_model_path):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    loss, model = make_loss(tiny_model_path, TEXTS, stage2_step=3)
    model.train()
    feats = model.preprocess(TEXTS)
    stages = []
    for _ in range(5):
        loss([dict(feats)])
        stages.append(int(loss.last["stage"]))
    assert stages == [1, 1, 1, 2, 2] and int(loss.step) == 5
    # In stage 2 (λ = 1) the target is the frozen model's, for every text (even the stopword-only one).
    target, valid = loss.targets(dict(feats))
    assert valid.all() and torch.allclose(target, loss.model_targets(dict(feats)))
    # Under the trainer, the callback sets the step from the global step (also after a resume).
    cb = stage_callback(loss)
    args = TrainingArguments(output_dir="unused", report_to="none")
    state, control = TrainerState(), TrainerControl()
    cb.on_train_begin(args, state, control)
    state.global_step = 2
    cb.on_step_begin(args, state, control)
    loss([dict(feats)])
    assert int(loss.step) == 2 and loss.last["stage"] == 1.0
    state.global_step = 3
    cb.on_step_begin(args, state, control)
    loss([dict(feats)])
    assert int(loss.step) == 3 and loss.last["stage"] == 2.0
    # A mixture keeps both: mass on the text's own tokens and on the model's.
    loss.mixture = 0.5
    mixed, _ = loss.targets(dict(feats))
    data, ok = loss.data_targets(feats["input_ids"], feats["attention_mask"])
    model_t = loss.model_targets(dict(feats))
    assert torch.allclose(mixed[ok], 0.5 * data[ok] + 0.5 * model_t[ok])


def test_short_run_on_the_tiny_model_lowers_the_kl(tiny_model_path, sentences_file):
    corpus = sentences_file.read_text().split("\n")[:-1]
    loss, model = make_loss(tiny_model_path, corpus, temperature=0.5)
    torch.manual_seed(0)
    held_out = model.preprocess(corpus[-16:])

    def eval_kl() -> float:
        model.eval()
        with torch.no_grad():
            target, valid = loss.data_targets(held_out["input_ids"], held_out["attention_mask"])
            log_q = torch.log_softmax(loss.head(model(dict(held_out))["sentence_embedding"]) / 0.5, -1)
            return token_kl(target, log_q, valid).item()

    before = eval_kl()
    optimizer = torch.optim.Adam(loss.parameters(), lr=1e-2)
    model.train()
    for step in range(10):
        start = (step * 8) % 80
        value = loss([model.preprocess(corpus[start : start + 8])])
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    after = eval_kl()
    assert after < before - 1.0, (before, after)


def test_training_run_checkpoints_head_and_step_then_inspect(tiny_model_path, sentences_file, tmp_path, capsys):
    from embedkit.cli import main
    from embedkit.training.run import train

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model: {{name: {tiny_model_path}, pooling: mean, max_seq_length: 16}}\n"
        f"data: {{train: {{path: {sentences_file}}}, dev: null}}\n"
        "method: {name: text2token, stage2_step: 2, mixture: 0.5, infonce_weight: 0.1, temperature: 0.5}\n"
        "training: {batch_size: 8, max_steps: 4, eval_steps: 2, learning_rate: 1e-3, logging_steps: 1}\n"
        f"output: {{dir: {tmp_path / 'out'}, keep_checkpoints: all}}\n", encoding="utf-8")
    results = train(str(recipe))
    out = tmp_path / "out"
    assert results["train"]["global_step"] == 4
    marker = json.loads((out / "checkpoints" / "checkpoint-2" / "embedkit_checkpoint.json").read_text())
    assert {"step", "head.bias", "head.logit_scale"} <= set(marker["method_state"])
    from safetensors.torch import load_file

    state = load_file(str(out / "checkpoints" / "checkpoint-2" / "embedkit_method_state.safetensors"))
    assert int(state["step"]) == 2
    stages = [h["t2t_stage"] for h in results["train"]["log_history"] if "t2t_stage" in h]
    assert stages[:2] == [1.0, 1.0] and stages[2:] == [2.0, 2.0]
    # IDF cache: beside the corpus (its folder is writable here).
    assert list(Path(sentences_file).parent.glob("sentences.txt.text2token-df-*.safetensors"))
    # The trained head is saved beside the model (not as a module of it) and `inspect` uses it.
    assert (out / HEAD_FILE).is_file()
    modules = json.loads((out / "modules.json").read_text())
    assert all("text2token" not in m["path"] for m in modules)
    head, meta = load_head(st_model(str(out), pooling=None), out / HEAD_FILE)
    assert meta["temperature"] == "0.5" and head.kind == "tied"
    assert "text2token: stage 2 (model-derived targets, λ=0.5) from step 2" in capsys.readouterr().out
    assert main(["inspect", str(out), "a cat and a dog", "--top-k", "4"]) == 0
    printed = capsys.readouterr().out
    assert "(trained, from" in printed and "T=0.5" in printed
    assert len([line for line in printed.splitlines() if line.strip()[:2] in {"1.", "2.", "3.", "4."}]) == 4


# ----------------------------------------------------------------------------------------------------------
# inspect


def test_inspect_prints_top_tokens_for_a_bert_like_model(tiny_mlm_path, capsys):
    from embedkit.cli import main

    assert main(["inspect", tiny_mlm_path, "The cat sat on the mat.", "Stocks fell.", "--top-k", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "pretrained MLM head" in out[0]
    assert out[1] == "The cat sat on the mat." and out[5] == "Stocks fell."
    for first in (out[2], out[6]):  # the MLM bias boosted in the checkpoint must come first
        rank, token, prob = first.split()
        assert rank == "1." and token == BOOSTED and float(prob) > 0.9
    assert [line.split()[0] for line in out[2:5]] == ["1.", "2.", "3."]


def test_inspect_rejects_bad_arguments(tiny_mlm_path, capsys, tmp_path):
    from embedkit.cli import main

    assert main(["inspect", tiny_mlm_path, "x", "--top-k", "0"]) == 2
    assert "--top-k" in capsys.readouterr().err
    assert main(["inspect", tiny_mlm_path, "x", "--head", str(tmp_path / "missing.safetensors")]) == 2
    assert "head file not found" in capsys.readouterr().err


def test_save_and_load_head_round_trip(tiny_mlm_path, tmp_path):
    model = st_model(tiny_mlm_path)
    head = build_vocab_head(model)
    with torch.no_grad():
        head.bias.add_(1.0)
    save_head(head, tmp_path / HEAD_FILE, temperature=0.2)
    loaded, meta = load_head(model, tmp_path / HEAD_FILE)
    h = torch.randn(2, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(h), head(h))
    assert meta["kind"] == "mlm" and float(meta["temperature"]) == 0.2


def test_shipped_recipes_validate(data_dir):
    from embedkit.validate import load_recipe, load_recipe_with_data

    recipe, data = load_recipe_with_data("text2token-brown-minilm", data_dir=str(data_dir))
    assert recipe.method.name == "text2token" and len(data) > 50000
    assert recipe.model.name == "sentence-transformers/all-MiniLM-L6-v2"
    recipe = load_recipe("text2token-bert-base", check_data=False)
    assert recipe.model.name == "bert-base-uncased" and recipe.method.stage2_step is not None
