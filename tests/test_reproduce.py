"""Paper recipes carry their published numbers (``target:``), validated; ``eval/reproduce.py --dry-run`` plans them."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from embedkit.errors import RecipeError
from embedkit.recipe import RECIPES_DIR, TARGET_TASKS
from embedkit.validate import load_recipe

ROOT = Path(__file__).resolve().parent.parent

# The published STS averages (reference-facts.md) each paper recipe must carry.
PAPER_TARGETS = {
    "simcse-unsup-bert-base": 76.25,
    "simcse-sup-bert-base": 81.57,
    "esimcse-unsup-bert-base": 78.27,
    "debcse-unsup-bert-base": 80.33,
}
# Paper recipes whose published number is a retrieval average (benchmark, metric, value).
RETRIEVAL_TARGETS = {"contriever-bert-base": ("BEIR", "ndcg@10", 37.7)}


def load_script():
    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "eval" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_lists_every_paper_recipe_with_its_target_average():
    proc = subprocess.run([sys.executable, str(ROOT / "eval" / "reproduce.py"), "--dry-run"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    listed, retrieval = {}, {}
    for line in proc.stdout.splitlines()[1:]:
        name, method, model, avg = line.split()[:4]
        assert model == "bert-base-uncased" and method in name, line
        if name in RETRIEVAL_TARGETS:
            benchmark, metric, value = line.split()[3:6]
            retrieval[name] = (benchmark, metric, float(value))
        else:
            listed[name] = float(avg)
    assert listed == PAPER_TARGETS
    assert retrieval == RETRIEVAL_TARGETS


def test_bert_base_recipes_have_a_target_or_say_why_not():
    for file in sorted(RECIPES_DIR.glob("*-bert-base.yaml")):
        recipe = load_recipe(file, check_data=False)
        if file.stem in PAPER_TARGETS:
            assert recipe.target is not None and recipe.target.avg == PAPER_TARGETS[file.stem], file.name
            assert recipe.target.source and recipe.target.protocol
        elif file.stem in RETRIEVAL_TARGETS:
            ret = recipe.target.retrieval
            assert (ret.benchmark, ret.metric, ret.avg) == RETRIEVAL_TARGETS[file.stem]
            assert recipe.target.source and recipe.target.protocol
        else:
            assert recipe.target is None
            assert "# No target block:" in file.read_text(encoding="utf-8"), f"{file.name}: say why it has no target"


def test_target_tasks_are_the_suite_tasks():
    from embedkit.evaluation import TASKS

    assert TARGET_TASKS == TASKS


def _with_target(tmp_path: Path, target: str) -> Path:
    text = (RECIPES_DIR / "simcse-unsup-bert-base.yaml").read_text(encoding="utf-8")
    text = text[: text.index("target:")] + target
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), start=1) if needle in line)


def test_unknown_task_name_fails_with_file_line_key(tmp_path):
    path = _with_target(tmp_path, 'target:\n  source: "x"\n  protocol: "y"\n  tasks:\n    STS12: 70.0\n'
                                  '    STS-17: 71.0\n')
    with pytest.raises(RecipeError) as err:
        load_recipe(path, check_data=False)
    line = _line_of(path, "STS-17")
    assert re.search(rf"{re.escape(str(path))}:{line}: target\.tasks\.STS-17", str(err.value)), str(err.value)
    assert "STSBenchmark" in str(err.value)  # says which names are allowed


@pytest.mark.parametrize("value", ['"68.40"', "n/a", "true", ".nan"])
def test_non_number_fails_with_file_line_key(tmp_path, value):
    path = _with_target(tmp_path, f'target:\n  source: "x"\n  protocol: "y"\n  tasks:\n    STS12: {value}\n')
    with pytest.raises(RecipeError) as err:
        load_recipe(path, check_data=False)
    line = _line_of(path, "STS12:")
    assert re.search(rf"{re.escape(str(path))}:{line}: target\.tasks(\.STS12)?", str(err.value)), str(err.value)


def test_avg_must_match_the_published_tasks(tmp_path):
    tasks = "".join(f"    {t}: 70.00\n" for t in TARGET_TASKS)
    path = _with_target(tmp_path, f'target:\n  source: "x"\n  protocol: "y"\n  tasks:\n{tasks}  avg: 75.00\n')
    with pytest.raises(RecipeError, match=r"r\.yaml:\d+: target: .*not the mean"):
        load_recipe(path, check_data=False)
    path = _with_target(tmp_path, 'target:\n  source: "x"\n  protocol: "y"\n')
    with pytest.raises(RecipeError, match="avg"):
        load_recipe(path, check_data=False)


def test_comparison_rows_are_measured_minus_target():
    reproduce = load_script()
    recipe = load_recipe(RECIPES_DIR / "simcse-unsup-bert-base.yaml", check_data=False)
    sts = {"tasks": {t: {"spearman": 70.0} for t in TARGET_TASKS}, "avg": 70.0}
    rows = {task: (want, got, diff) for task, want, got, diff in reproduce.compare(recipe.target, sts)}
    assert rows["STS12"] == pytest.approx((68.40, 70.0, 1.60))
    assert rows["avg"] == pytest.approx((76.25, 70.0, -6.25))
    table = reproduce.format_comparison("simcse-unsup-bert-base", list(reproduce.compare(recipe.target, sts)))
    assert "+1.60" in table and "-6.25" in table


def _beir(folder: Path) -> Path:
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text('{"_id": "d1", "text": "one"}\n', encoding="utf-8")
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "first"}\n', encoding="utf-8")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n", encoding="utf-8")
    return folder


def test_beir_folders_become_the_recipes_retrieval_evaluation(tmp_path):
    script = load_script()
    with pytest.raises(SystemExit, match="no BEIR folder"):
        script.beir_folders(tmp_path)
    made = [_beir(tmp_path / "scifact"), _beir(tmp_path / "nfcorpus")]
    (tmp_path / "notes").mkdir()
    found = script.beir_folders(tmp_path)
    assert found == sorted(made)
    recipe = load_recipe(RECIPES_DIR / "contriever-bert-base.yaml", script.retrieval_overrides(found),
                            check_data=False)
    assert [(Path(e.path), e.split) for e in recipe.eval.retrieval] == [(f, "test") for f in sorted(made)]


def test_retrieval_comparison_averages_the_measured_datasets():
    script = load_script()
    recipe = load_recipe(RECIPES_DIR / "contriever-bert-base.yaml", check_data=False)
    rows = script.compare_retrieval(recipe.target.retrieval, {
        "scifact-test": {"ndcg@10": 60.0, "mrr@10": 1.0}, "nfcorpus-test": {"ndcg@10": 30.0}})
    assert rows[:2] == [("nfcorpus-test", None, 30.0, None), ("scifact-test", None, 60.0, None)]
    label, want, got, diff = rows[2]
    assert label == "BEIR avg (2)" and want == 37.7 and got == 45.0 and diff == pytest.approx(7.3)
