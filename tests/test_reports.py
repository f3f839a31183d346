"""The report scripts (eval/retrieval_report.py, eval/multitask_report.py): every training row selects on a slice held
out of training, never on the TREC QA dev file it reports; seeds give mean ± (max − min)/2; a finished run's record
is kept and not run again."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _script(name: str) -> Any:
    if str(ROOT / "eval") not in sys.path:  # multitask_report imports its sibling as a script does
        sys.path.insert(0, str(ROOT / "eval"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "eval" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ret, mt = _script("retrieval_report"), _script("multitask_report")


@pytest.mark.parametrize("recipe,rows", [(ret.RECIPE, [o for o in ret.ROWS.values() if o is not None]),
                                         (mt.RECIPE, list(mt.TRAINED.values()))])
def test_every_training_row_selects_on_a_held_out_slice(tmp_path: Path, recipe: Path, rows: list[list[str]]):
    for overrides in rows:
        loaded = ret.check_selection(recipe, [*overrides, "training.seed=3"], str(tmp_path))
        dev = loaded.data.dev if isinstance(loaded.data.dev, list) else [loaded.data.dev]
        ranking = [d for d in dev if d.kind == "rerank"]
        assert ranking and all(d.split_from_train == 0.15 and d.path.endswith("trecqa/train.csv") for d in ranking)
        assert loaded.training.seed == 3


def test_a_row_selecting_on_the_reported_dev_file_is_refused(tmp_path: Path):
    on_dev = 'data.dev={kind: rerank, path: "{data_dir}/rerank/trecqa/dev.csv", metric: map}'
    with pytest.raises(SystemExit, match="trecqa/dev.csv.*held out of training"):
        ret.check_selection(ret.RECIPE, [on_dev], str(tmp_path))


def test_cell_is_the_mean_plus_minus_half_the_range():
    runs = [{"x": 80.0}, {"x": 82.0}, {"x": 81.5}]
    assert ret.spread([r["x"] for r in runs]) == pytest.approx((81.1666667, 1.0))
    assert ret.cell(runs, lambda r: r["x"]) == "81.17 ± 1.00"
    assert ret.cell(runs[:1], lambda r: r["x"]) == "80.00"  # one seed: no spread shown
    assert ret.cell(runs, lambda r: None) == "–"


def test_finished_runs_are_kept_and_not_run_again(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    calls: list[tuple[str, int | None]] = []

    def run_row(name: str, seed: int | None, data_dir: str, work: Path) -> dict[str, Any]:
        calls.append((name, seed))
        return {"row": name, "seed": seed, "value": float(seed or 0)}

    def table(groups: list[tuple[str, list[dict[str, Any]]]]) -> str:
        return "\n".join(f"{n} {ret.seeds_cell(rs)} {ret.cell(rs, lambda r: r['value'])}" for n, rs in groups)

    argv = ["--data-dir", str(tmp_path), "--work", str(tmp_path / "w"), "--rows", "base,a", "--seeds", "1,3"]
    assert ret.report_main("doc", ["base", "a"], run_row, table, tmp_path, argv) == 0
    assert calls == [("base", None), ("a", 1), ("a", 3)]  # the base once, without a seed
    assert json.loads((tmp_path / "w" / "a.seed3.json").read_text())["value"] == 3.0
    (tmp_path / "w" / "a.seed3.json").unlink()  # as if the run had crashed before its record
    out = tmp_path / "all.json"
    again = [*argv, "--seeds", "1,2,3", "-o", str(out)]  # the last --seeds counts
    assert ret.report_main("doc", ["base", "a"], run_row, table, tmp_path, again) == 0
    assert calls[3:] == [("a", 2), ("a", 3)]
    assert capsys.readouterr().out.rstrip().endswith("a 1,2,3 2.00 ± 1.00")
    assert [r["seed"] for r in json.loads(out.read_text())["a"]] == [1, 2, 3]
