"""``embedkit merge``: each rule equals a direct computation on the tensors; two copies of one model merge to that
model bit for bit (each method); λ = 0 gives the base bit for bit; delta keeps an untouched parameter at the
base; mismatched inputs are refused in one line; the output is a loadable model folder whose card lists the
inputs and weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from embedkit.cli import main
from embedkit.merging import MergeError, display_name, merge, merge_state_dicts, merge_tensor

UNTOUCHED = "0.model.encoder.layer.1.output.dense.bias"  # no fine-tuned model moves it


def _save_variant(src: str, dst: Path, seed: int | None, scale: float = 0.02) -> str:
    """The tiny model with seeded noise added to every float tensor but UNTOUCHED (``seed=None``: unchanged)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(src, device="cpu")
    if seed is not None:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, tensor in model.state_dict().items():
                if tensor.is_floating_point() and name != UNTOUCHED:
                    tensor.add_(torch.randn(tensor.shape, generator=gen) * scale)
    model.save(str(dst), create_model_card=False)
    return str(dst)


@pytest.fixture(scope="module")
def folders(tiny_model_path, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("merge-inputs")
    return {"base": _save_variant(tiny_model_path, root / "base", None),
            "a": _save_variant(tiny_model_path, root / "a", 1),
            "b": _save_variant(tiny_model_path, root / "b", 2, scale=0.05)}


def _weights(folder: str | Path) -> dict[str, torch.Tensor]:
    from sentence_transformers import SentenceTransformer

    return {k: v.clone() for k, v in SentenceTransformer(str(folder), device="cpu").state_dict().items()}


def _assert_bit_equal(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    differ = [k for k in want if got[k].dtype != want[k].dtype or not torch.equal(got[k], want[k])]
    assert not differ, differ[:5]


@pytest.mark.parametrize(("method", "extra"), [("average", {}), ("task-arithmetic", {}), ("delta", {}),
                                               ("delta", {"granularity": "tensor"}),
                                               ("average", {"weights": [0.3, 0.7]}),
                                               ("task-arithmetic", {"lambdas": [0.25, 0.75]})])
def test_two_copies_of_one_model_merge_to_that_model_exactly(folders, tmp_path, method, extra):
    copy = shutil.copytree(folders["a"], tmp_path / "a-copy")
    base = folders["base"] if method != "average" else None
    model = merge([folders["a"], str(copy)], method, base=base, **extra)
    _assert_bit_equal(model.state_dict(), _weights(folders["a"]))


def test_task_arithmetic_with_lambda_zero_is_the_base_exactly(folders):
    model = merge([folders["a"], folders["b"]], "task-arithmetic", base=folders["base"], lambdas=[0.0])
    _assert_bit_equal(model.state_dict(), _weights(folders["base"]))


def test_each_rule_equals_a_direct_computation(folders):
    a, b, base = _weights(folders["a"]), _weights(folders["b"]), _weights(folders["base"])
    soup = merge([folders["a"], folders["b"]], "average", weights=[1, 3]).state_dict()
    arith = merge([folders["a"], folders["b"]], "task-arithmetic", base=folders["base"], lambdas=[0.5, -0.2]
                  ).state_dict()
    per_tensor = merge_state_dicts([a, b], "delta", base=base, granularity="tensor")
    fused = merge([folders["a"], folders["b"]], "delta", base=folders["base"]).state_dict()  # through the API
    for name in base:
        if not base[name].is_floating_point():
            assert torch.equal(soup[name], a[name]) and torch.equal(fused[name], a[name])  # copied from the first
            continue
        ta, tb, t0 = a[name].double(), b[name].double(), base[name].double()
        torch.testing.assert_close(soup[name], (0.25 * ta + 0.75 * tb).float(), rtol=0, atol=1e-7)
        torch.testing.assert_close(arith[name], (t0 + 0.5 * (ta - t0) - 0.2 * (tb - t0)).float(), rtol=0, atol=1e-7)
        da, db = (ta - t0).abs(), (tb - t0).abs()
        want = torch.where(da + db > 0, (da * ta + db * tb) / (da + db).clamp_min(1e-300), t0)
        torch.testing.assert_close(fused[name], want.float(), rtol=0, atol=1e-7)
        na, nb = torch.linalg.vector_norm(ta - t0), torch.linalg.vector_norm(tb - t0)
        want_t = (na * ta + nb * tb) / (na + nb) if na + nb > 0 else t0
        torch.testing.assert_close(per_tensor[name], want_t.float(), rtol=0, atol=1e-7)
    # The element rule really weights by movement: where only b moved far, the result sits near b.
    name = "0.model.embeddings.word_embeddings.weight"
    assert not torch.equal(fused[name], soup[name])


def test_delta_keeps_an_untouched_parameter_at_the_base(folders):
    fused = merge([folders["a"], folders["b"]], "delta", base=folders["base"]).state_dict()
    base, a = _weights(folders["base"]), _weights(folders["a"])
    assert UNTOUCHED in base and torch.equal(a[UNTOUCHED], base[UNTOUCHED])  # the fixture left it alone
    assert torch.equal(fused[UNTOUCHED], base[UNTOUCHED])
    assert torch.isfinite(fused[UNTOUCHED]).all()


def test_delta_rule_on_small_tensors():
    b = torch.tensor([1.0, 2.0, 3.0, 4.0])
    t1 = torch.tensor([1.0, 4.0, 3.0, 0.0])  # moved elements 1 (+2) and 3 (-4)
    t2 = torch.tensor([1.0, 2.0, 6.0, 6.0])  # moved elements 2 (+3) and 3 (+2)
    got = merge_tensor([t1, t2], b)
    # element 0: nobody moved -> base; 1, 2: only one model moved -> that model; 3: (4·0 + 2·6) / 6 = 2
    assert torch.equal(got, torch.tensor([1.0, 4.0, 6.0, 2.0]))
    ids = torch.arange(4)
    assert torch.equal(merge_tensor([ids, ids + 7], ids), ids)  # integers: the first's


def test_output_folder_loads_and_its_card_lists_inputs_and_weights(folders, tmp_path):
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "soup"
    merged = merge([folders["a"], folders["b"]], "average", weights=[1, 3], output=out)
    loaded = SentenceTransformer(str(out), device="cpu")
    _assert_bit_equal(loaded.state_dict(), merged.state_dict())
    assert (out / "model.safetensors").exists() and not list(out.glob("*.bin"))
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "--method average" in card and "merge" in card.split("---")[1]
    for folder, weight in ((folders["a"], "0.25"), (folders["b"], "0.75")):
        assert Path(folder).name in card
        assert f"| {weight} |" in card
    record = json.loads((out / "merge.json").read_text(encoding="utf-8"))
    assert [m["weight"] for m in record["models"]] == [0.25, 0.75]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_cli_end_to_end_and_overwrite(folders, tmp_path, capsys):
    out = tmp_path / "fused"
    args = ["merge", folders["a"], folders["b"], "--method", "delta", "--base", folders["base"], "-o", str(out)]
    assert main(args) == 0
    assert "2 models merged by delta" in capsys.readouterr().out
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "Base: `" in card and "wᵢ = mᵢ / Σⱼ mⱼ" in card and "kept as the base" in card
    first = _weights(out)
    assert main(args) == 2  # exists: refused, untouched
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main([*args[:3], "--method", "average", "--base", folders["base"], "-o", str(out), "--overwrite"]) == 2
    assert "average does not use a base model" in capsys.readouterr().err
    assert main(["merge", folders["a"], folders["b"], "-o", str(out), "--overwrite"]) == 0
    _assert_bit_equal(_weights(out), merge([folders["a"], folders["b"]]).state_dict())
    assert not torch.equal(first["0.model.pooler.dense.weight"], _weights(out)["0.model.pooler.dense.weight"])


def _other_arch(tmp_path: Path, minilm_path: str) -> str:
    from tiny_model import tiny_bert

    return _save_variant(tiny_bert(tmp_path / "wide-hf", tokenizer_from=minilm_path, hidden=48), tmp_path / "wide",
                         None)


def _other_pooling(folders: dict[str, str], tmp_path: Path) -> str:
    dst = Path(shutil.copytree(folders["b"], tmp_path / "cls"))
    cfg = json.loads((dst / "1_Pooling" / "config.json").read_text())
    cfg["pooling_mode"] = "cls"
    (dst / "1_Pooling" / "config.json").write_text(json.dumps(cfg))
    return str(dst)


def _other_vocab(folders: dict[str, str], tmp_path: Path) -> str:
    dst = Path(shutil.copytree(folders["b"], tmp_path / "vocab"))
    tok = json.loads((dst / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = tok["model"]["vocab"]
    vocab["to"], vocab["was"] = vocab["was"], vocab["to"]  # same size, two ids swapped
    (dst / "tokenizer.json").write_text(json.dumps(tok), encoding="utf-8")
    return str(dst)


@pytest.mark.parametrize(("make", "method", "message"), [
    (lambda f, t, m: [f["a"], _other_arch(t, m)], "average", "a different architecture from"),
    (lambda f, t, m: [f["a"], _other_pooling(f, t)], "average", "pooling_mode='cls'"),
    (lambda f, t, m: [f["a"], _other_vocab(f, t)], "average", "tokenizer vocabulary differs"),
    (lambda f, t, m: [f["a"]], "average", "expected 2 or more models, got 1"),
    (lambda f, t, m: [f["a"], f["b"]], "delta", "needs --base BASE"),
    (lambda f, t, m: [f["a"], f["b"]], "task-arithmetic", "needs --base BASE"),
    (lambda f, t, m: [f["a"], str(t / "missing")], "average", "missing does not exist"),
])
def test_refusals_are_one_line_naming_the_input(folders, tmp_path, minilm_path, capsys, make, method, message):
    models = make(folders, tmp_path, minilm_path)
    out = tmp_path / "out"
    assert main(["merge", *models, "--method", method, "-o", str(out)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("embedkit:")]
    assert len(errors) == 1 and message in errors[0], errors
    err = errors[0]
    if len(models) > 1 and "--base" not in err:
        assert Path(models[1]).name in err  # names the offending input
    assert not out.exists()


@pytest.mark.parametrize(("extra", "message"), [
    (["--weights", "1,2,3"], "--weights: 3 given for 2 models"),
    (["--weights", "1,-1"], "non-negative"),
    (["--method", "task-arithmetic", "--lambdas", "1,2,3"], "--lambdas: 3 given for 2 models"),
    (["--lambdas", "0.5"], "only task-arithmetic takes"),
    (["--granularity", "tensor"], "only delta has a granularity"),
])
def test_argument_refusals(folders, tmp_path, capsys, extra, message):
    args = ["merge", folders["a"], folders["b"], "-o", str(tmp_path / "out"), *extra]
    if "task-arithmetic" in extra:
        args += ["--base", folders["base"]]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_base_with_another_architecture_is_refused(folders, tmp_path, minilm_path):
    with pytest.raises(MergeError, match=r"^base .*wide: a different architecture"):
        merge([folders["a"], folders["b"]], "delta", base=_other_arch(tmp_path, minilm_path))


def test_output_guards_and_an_uncached_hub_id(folders, tmp_path, monkeypatch, capsys):
    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "todo.txt").write_text("keep me", encoding="utf-8")
    cases = [
        (["merge", folders["a"], folders["b"], "-o", folders["b"], "--overwrite"], "is the input"),
        (["merge", folders["a"], folders["b"], "-o", str(precious), "--overwrite"], "did not write (todo.txt)"),
    ]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cases.append((["merge", folders["a"], "nobody-here/no-such-model", "-o", str(tmp_path / "o")],
                  "nobody-here/no-such-model is not a local folder and not in the local Hugging Face cache"))
    for args, message in cases:
        assert main(args) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("embedkit:")]
        assert len(errors) == 1 and message in errors[0], errors
    assert (precious / "todo.txt").read_text(encoding="utf-8") == "keep me"
    assert (Path(folders["b"]) / "model.safetensors").exists() and not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------------------
# LoRA adapter folders (a ``model.lora`` output without ``merge: true``)

LORA_TARGETS = ("query", "value")


def _lora_adapter(src: str, dst: Path, seed: int) -> str:
    """The tiny model with a rank-4 LoRA adapter (α = 8) on query and value, A and B seeded random (B ≠ 0, as
    after training), saved as sentence-transformers saves a LoRA run: adapter files in place of the weights."""
    from sentence_transformers import SentenceTransformer

    from embedkit.modeling import add_lora
    from embedkit.recipe import LoraSection

    model = SentenceTransformer(src, device="cpu")
    add_lora(model, LoraSection(r=4, alpha=8, dropout=0.0, target_modules=list(LORA_TARGETS)))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen))
    model.save(str(dst), create_model_card=False)
    assert (dst / "adapter_config.json").is_file() and not (dst / "model.safetensors").exists()
    return str(dst)


def _applied(model) -> dict[str, torch.Tensor]:
    """Each LoRA target layer of the encoder as the matrix it applies, read from its outputs: W = f(I) − f(0)
    (a LoRA layer's base weight plus (α/r)·B·A, or a plain layer's weight), whatever peft's wrapping."""
    encoder = model[0].auto_model
    out = {}
    for name, module in encoder.named_modules():
        if name.endswith(LORA_TARGETS) and "." in name:
            module.eval()
            eye = torch.eye(encoder.config.hidden_size)
            with torch.no_grad():
                out[name.removeprefix("base_model.model.")] = (module(eye) - module(torch.zeros_like(eye))).T
    assert len(out) == 2 * encoder.config.num_hidden_layers
    return out


def test_lora_adapters_fold_into_full_weights_before_merging(folders, tiny_model_path, tmp_path, peft_gate):
    """Averaging two adapters' A and B apart gives the update mean(B)·mean(A), not the mean of the B·A updates:
    each adapter is folded into its base first, so the merged ΔW is the mean of the inputs' ΔW."""
    from sentence_transformers import SentenceTransformer

    base = _applied(SentenceTransformer(folders["base"], device="cpu"))
    ad1, ad2 = (_lora_adapter(tiny_model_path, tmp_path / f"adapter-{s}", s) for s in (1, 2))
    deltas = [{k: w - base[k] for k, w in _applied(SentenceTransformer(ad, device="cpu")).items()} for ad in (ad1, ad2)]
    want = {k: (deltas[0][k] + deltas[1][k]) / 2 for k in base}
    assert min(float(torch.linalg.norm(d)) for d in deltas[0].values()) > 1.0  # updates far above the tolerance

    out = tmp_path / "soup"
    merged = merge([ad1, ad2], "average", output=out)
    got = _applied(merged)
    for key in base:
        torch.testing.assert_close(got[key] - base[key], want[key], rtol=0, atol=1e-5)
    assert not any("lora_" in k or "base_layer" in k for k in merged.state_dict())  # plain weights

    # The output is full weights that load without peft, and the card and merge.json say what was folded.
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    import transformers.integrations.peft as hf_peft

    def no_peft(**_):
        raise AssertionError("a merge of folded adapters must load without peft")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hf_peft, "check_peft_version", no_peft)
        reloaded = _applied(SentenceTransformer(str(out), device="cpu"))
    for key in base:
        torch.testing.assert_close(reloaded[key], got[key], rtol=0, atol=0)
    record = json.loads((out / "merge.json").read_text(encoding="utf-8"))
    assert [m["lora_base"] for m in record["models"]] == [display_name(tiny_model_path)] * 2
    assert f"input 2 on `{display_name(tiny_model_path)}`" in (out / "README.md").read_text(encoding="utf-8")

    # Task arithmetic from the base: b + λ·ΣΔWᵢ, the same mean update with the default λ = 1/2.
    arith = _applied(merge([ad1, ad2], "task-arithmetic", base=folders["base"]))
    for key in base:
        torch.testing.assert_close(arith[key] - base[key], want[key], rtol=0, atol=1e-5)
