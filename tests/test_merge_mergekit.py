"""``embedkit merge`` through mergekit (issue 27, item 3): ``average`` and ``task-arithmetic`` equal mergekit's
``linear`` and ``task_arithmetic`` (they now run through it); every mergekit method merges the tiny model into a
loadable folder whose merge.json records mergekit's method, parameters and version; one model and a base is a
single task vector scaled by λ; parameters are checked before any model loads, in one line; without mergekit the
error names the extra. Also the progress bars of ``merge`` and ``data diagnose`` (item 6): ``--no-progress`` on
both, and no carriage return on a stderr that is not a terminal."""

from __future__ import annotations

import json
from importlib.metadata import version

import pytest
import torch
from test_merging import _assert_bit_equal, _save_variant, _weights

from embedkit.cli import main
from embedkit.merging import MERGEKIT_METHODS, METHODS, merge

mergekit = pytest.importorskip("mergekit", reason="the merge extra: pip install 'embedkit[merge]'")


@pytest.fixture(scope="module")
def folders(tiny_model_path, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("mergekit-inputs")
    return {"base": _save_variant(tiny_model_path, root / "base", None),
            "a": _save_variant(tiny_model_path, root / "a", 1),
            "b": _save_variant(tiny_model_path, root / "b", 2, scale=0.05),
            "c": _save_variant(tiny_model_path, root / "c", 3, scale=0.03)}


def _mergekit(states: dict[int, dict[str, torch.Tensor]], method: str, parameters: dict, base: int | None = None
              ) -> dict[str, torch.Tensor]:
    """mergekit's own in-memory merge of the state dicts (float64 inside, float32 out), no embedkit in between."""
    from mergekit.merge_methods import merge_state_dicts

    return merge_state_dicts(states, method, parameters=parameters, base=base, dtype=torch.float64,
                             out_dtype=torch.float32)


def _close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=atol, msg=name)


def test_average_and_task_arithmetic_equal_mergekit_linear_and_task_arithmetic(folders):
    """The proof behind deleting embedkit's own copies: on the tiny model, embedkit's soup and task arithmetic equal
    mergekit's linear and task_arithmetic (and the formulas, in float64) within 1e-6 in every tensor."""
    a, b, base = _weights(folders["a"]), _weights(folders["b"]), _weights(folders["base"])
    soup = merge([folders["a"], folders["b"]], "average", weights=[1, 3]).state_dict()
    _close(soup, _mergekit({0: a, 1: b}, "linear", {"weight": {0: 1.0, 1: 3.0}}))
    arith = merge([folders["a"], folders["b"]], "task-arithmetic", base=folders["base"],
                  lambdas=[0.5, -0.2]).state_dict()
    _close(arith, _mergekit({0: a, 1: b, 2: base}, "task_arithmetic", {"weight": {0: 0.5, 1: -0.2}}, base=2))
    for name in base:
        if base[name].is_floating_point():
            ta, tb, t0 = a[name].double(), b[name].double(), base[name].double()
            torch.testing.assert_close(soup[name], (0.25 * ta + 0.75 * tb).float(), rtol=0, atol=1e-6)
            torch.testing.assert_close(arith[name], (t0 + 0.5 * (ta - t0) - 0.2 * (tb - t0)).float(), rtol=0,
                                       atol=1e-6)
    # mergekit's names give the same models through embedkit.
    _close(merge([folders["a"], folders["b"]], "linear", weights=[1, 3]).state_dict(), soup, atol=0)
    _close(merge([folders["a"], folders["b"]], "task_arithmetic", base=folders["base"], weights=[0.5, -0.2]
                 ).state_dict(), arith, atol=0)


def test_one_model_and_a_base_is_one_task_vector_scaled_by_lambda(folders, tmp_path, capsys):
    a, base = _weights(folders["a"]), _weights(folders["base"])
    got = merge([folders["a"]], "task-arithmetic", base=folders["base"], lambdas=[0.7]).state_dict()
    for name in base:
        if base[name].is_floating_point():
            want = base[name].double() + 0.7 * (a[name].double() - base[name].double())
            torch.testing.assert_close(got[name], want.float(), rtol=0, atol=1e-6)
    _assert_bit_equal(merge([folders["a"]], "task-arithmetic", base=folders["base"], lambdas=[1.0]).state_dict(), a)
    out = tmp_path / "scaled"
    assert main(["merge", folders["a"], "--method", "task-arithmetic", "--base", folders["base"], "--lambdas", "0.7",
                 "-o", str(out), "--no-progress"]) == 0
    record = json.loads((out / "merge.json").read_text(encoding="utf-8"))
    assert [m["weight"] for m in record["models"]] == [0.7] and record["base"]
    assert "1 model merged by task-arithmetic" in capsys.readouterr().out
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "| 1 |" in card and "| 2 |" not in card


# Each mergekit method: the models it is given (a, b, c: fine-tunes of base) and its parameters.
CASES = {
    "linear": (["a", "b"], None, []), "task_arithmetic": (["a", "b"], "base", ["lambda=0.8"]),
    "ties": (["a", "b"], "base", ["density=0.5"]), "dare_ties": (["a", "b"], "base", ["density=0.5"]),
    "dare_linear": (["a", "b"], "base", ["density=0.5"]), "breadcrumbs": (["a", "b"], "base", ["density=0.8"]),
    "breadcrumbs_ties": (["a", "b"], "base", ["density=0.8", "gamma=0.05"]),
    "della": (["a", "b"], "base", ["density=0.5", "epsilon=0.1"]),
    "della_linear": (["a", "b"], "base", ["density=0.5", "epsilon=0.1"]),
    "sce": (["a", "b"], "base", ["select_topk=0.5"]), "model_stock": (["a", "b"], "base", []),
    "slerp": (["a", "b"], None, ["t=0.3"]), "nuslerp": (["a", "b"], "base", []),
    "multislerp": (["a", "b", "c"], None, []), "karcher": (["a", "b", "c"], None, []),
    "nearswap": (["a", "b"], None, ["t=0.001"]), "arcee_fusion": (["a", "b"], None, []),
    "ram": (["a", "b"], "base", []), "ramplus_tl": (["a", "b"], "base", []),
}


def test_every_mergekit_method_is_offered_and_has_a_case():
    assert set(CASES) == set(MERGEKIT_METHODS)
    assert {"average", "task-arithmetic", "delta"} <= set(METHODS)


@pytest.mark.parametrize("method", sorted(CASES))
def test_each_mergekit_method_merges_the_tiny_model(folders, tmp_path, method, capfd):
    """Through the command line: a loadable folder of finite weights that differ from the first input (the
    method did something), whose merge.json records mergekit's method, parameters and version."""
    from sentence_transformers import SentenceTransformer

    names, base, params = CASES[method]
    out = tmp_path / method
    args = ["merge", *(folders[n] for n in names), "--method", method, "-o", str(out)]
    args += ["--base", folders[base]] if base else []
    for p in params:
        args += ["--param", p]
    assert main(args) == 0, capfd.readouterr().err
    assert "\r" not in capfd.readouterr().err  # stderr is not a terminal: no bar
    model = SentenceTransformer(str(out), device="cpu")
    state = model.state_dict()
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
    first = _weights(folders[names[0]])
    assert any(not torch.equal(state[k], first[k]) for k in first if first[k].is_floating_point())
    emb = model.encode(["a merged model encodes"], convert_to_tensor=True)
    assert torch.isfinite(emb).all()
    record = json.loads((out / "merge.json").read_text(encoding="utf-8"))
    kit = record["mergekit"]
    assert kit["method"] == method and kit["version"] == version("mergekit")
    for p in params:
        key, value = p.split("=")
        assert kit["parameters"][key] == pytest.approx(float(value))
    assert record["method"] == method and len(record["models"]) == len(names)
    assert f"--method {method}" in (out / "README.md").read_text(encoding="utf-8")


def test_mergekit_methods_by_their_formulas(folders):
    """Where a method reduces to a known rule: slerp t=0 is its first model; DARE with density 1 drops nothing
    (task arithmetic); TIES with density 1 and one model is that model's task vector, scaled by λ."""
    a, b, base = (_weights(folders[n]) for n in ("a", "b", "base"))
    pair = [folders["a"], folders["b"]]
    _close(merge(pair, "slerp", params={"t": "0"}).state_dict(), a)
    _close(merge(pair, "slerp", params={"t": "1"}).state_dict(), b)
    arith = merge(pair, "task_arithmetic", base=folders["base"]).state_dict()
    _close(merge(pair, "dare_linear", base=folders["base"], params={"density": "1"}).state_dict(), arith)
    one = merge([folders["a"]], "ties", base=folders["base"], params={"lambda": "0.5"}).state_dict()
    for name in base:
        if base[name].is_floating_point():
            want = base[name].double() + 0.5 * (a[name].double() - base[name].double())
            torch.testing.assert_close(one[name], want.float(), rtol=0, atol=1e-6)


def test_random_methods_are_seeded(folders):
    pair = [folders["a"], folders["b"]]
    runs = [merge(pair, "dare_ties", base=folders["base"], params={"density": "0.5"}, seed=s).state_dict()
            for s in (0, 0, 1)]
    _assert_bit_equal(runs[0], runs[1])
    assert any(not torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


@pytest.mark.parametrize(("extra", "message"), [
    (["--method", "ties", "--base", "{base}", "--param", "dencity=0.5"],
     "--param dencity: ties takes no such parameter (its parameters: density, int8_mask, lambda, normalize,"),
    (["--method", "ties", "--base", "{base}", "--param", "density=half"], "--param density=half: expected a number"),
    (["--method", "ties", "--base", "{base}", "--param", "density=0.5,0.5,0.5"],
     "--param density: 3 values for 2 models"),
    (["--method", "ties", "--base", "{base}", "--param", "normalize=maybe"],
     "--param normalize=maybe: expected true or false"),
    (["--method", "ties", "--base", "{base}", "--param", "lambda=1,2"], "--param lambda: one value for all models"),
    (["--method", "ties", "--base", "{base}", "--param", "density"], "--param density: expected KEY=VALUE"),
    (["--method", "ties"], "--method ties: needs --base BASE"),
    (["--method", "linear", "--base", "{base}"], "--base: linear does not use a base model"),
    (["--method", "slerp", "--base", "{base}"],
     "--method slerp: Merge method requires exactly 2 inputs; got 3 (2 models and --base)"),
    (["--method", "nearswap"], "--method nearswap: needs --param t=VALUE"),
    (["--method", "average", "--param", "normalize=false"], "--param: average takes no mergekit parameters"),
    (["--method", "delta", "--base", "{base}", "--param", "x=1"], "--param: delta takes no mergekit parameters"),
    (["--method", "ties", "--base", "{base}", "--param", "weight=1"], "--param weight: use --weights W1,W2,..."),
    (["--method", "ties", "--base", "{base}", "--seed", "3"], "--seed: ties is not random"),
    (["--method", "slerp", "--weights", "1,2"], "--weights: slerp takes no per-model weight"),
])
def test_parameters_are_checked_before_any_model_loads(folders, tmp_path, capsys, monkeypatch, extra, message):
    """Two missing model folders: every refusal here comes before the models are even looked for."""
    import embedkit.merging as merging

    def no_loading(*_, **__):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(merging, "load_model", no_loading)
    extra = [e.format(**folders) for e in extra]
    args = ["merge", str(tmp_path / "m1"), str(tmp_path / "m2"), "-o", str(tmp_path / "out"), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("embedkit: error:") and message in err and len(err.splitlines()) == 1, err


def test_without_mergekit_the_error_names_the_extra(folders, tmp_path, capsys, monkeypatch):
    import importlib.metadata as metadata

    real = metadata.version

    def version(name: str) -> str:
        if name == "mergekit":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "version", version)
    assert main(["merge", folders["a"], folders["b"], "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert 'pip install "embedkit[merge]"' in err and len(err.splitlines()) == 1, err
    # delta is embedkit's own rule: it needs no mergekit.
    assert main(["merge", folders["a"], folders["b"], "--method", "delta", "--base", folders["base"],
                 "-o", str(tmp_path / "fused"), "--no-progress"]) == 0


def test_merge_json_records_mergekit_and_push_renders_the_card_again(folders, tmp_path):
    from embedkit.merging import model_card, read_record

    out = tmp_path / "ties"
    merge([folders["a"], folders["b"]], "ties", base=folders["base"], params={"density": "0.5"}, output=out)
    record = read_record(out)
    assert record["mergekit"]["parameters"] == {"density": 0.5, "weight": [1.0, 1.0]}  # weight: 1 each unless given
    assert record["mergekit"]["method"] == "ties" and record["mergekit"]["version"]
    card = str(model_card(record, "me/ties-merge"))
    assert "TIES" in card and "density=0.5" in card and "mergekit" in card


# ---------------------------------------------------------------------------------------------------------
# Progress (item 6): merge and data diagnose


@pytest.mark.parametrize("argv", [["merge", "a", "b", "-o", "x"], ["data", "diagnose", "r.yaml"]])
def test_no_progress_on_merge_and_diagnose(argv):
    from embedkit.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(argv).progress is None  # a bar when stderr is a terminal
    assert parser.parse_args([*argv, "--no-progress"]).progress is False


def test_merge_progress_counts_models_and_tensors_and_no_carriage_return_off_a_terminal(folders, tmp_path, capfd):
    assert main(["merge", folders["a"], folders["b"], "-o", str(tmp_path / "quiet")]) == 0
    assert "\r" not in capfd.readouterr().err  # not a terminal: neither embedkit's bars nor transformers' loading
    model = merge([folders["a"], folders["b"]], "average", progress=True)  # forced: the bars are drawn
    err = capfd.readouterr().err
    assert "loading:   0%|          | 0/2 " in err and " models/s]" in err, err
    assert f"merging:   0%|          | 0/{len(model.state_dict())} " in err and " tensors/s]" in err, err


def test_diagnose_writes_no_carriage_return_off_a_terminal(tmp_path, sentences_file, tiny_model_path, capfd):
    from test_debcse import _write_recipe

    recipe = _write_recipe(tmp_path, sentences_file, tiny_model_path, "k: 4", steps=1)
    argv = ["data", "diagnose", recipe, "-o", str(tmp_path / "diag"), "--max-samples", "32", "--batch-size", "16",
            "--no-chart"]
    assert main(argv) == 0
    assert "\r" not in capfd.readouterr().err
    from embedkit.methods.debcse.diagnose import diagnose

    diagnose(recipe, max_samples=32, batch_size=16, progress=True)  # forced: the encoding bar is drawn
    assert "encoding" in capfd.readouterr().err
