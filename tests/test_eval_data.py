"""Hand-built STS folders (the layout of ../shared/data/sts) and the suite's aggregation rules checked against
hand-computed values. Other test_eval_* modules import :func:`make_sts_dir` from here."""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
import pytest

from embedkit.errors import DataError
from embedkit.evaluation import sts

WORDS = ("cat dog bird fish horse cow sheep goat lion tiger bear wolf fox deer frog snake owl duck swan crow "
         "runs sleeps eats jumps swims flies sings walks reads writes red blue green small large old young").split()

# Per subset of each STS year: (gold, designed cosine) per pair; None gold = an empty gold line (no score).
SUBSET_A = [(1.0, 0.1), (2.0, 0.2), (3.0, 0.3)]
SUBSET_B = [(4.0, 0.9), (None, -0.95), (5.0, 0.8)]  # the middle pair has no gold and must be skipped


def _sentence(tag: str, k: int) -> str:
    rng = np.random.default_rng(zlib.crc32(f"{tag}/{k}".encode()))
    words = [WORDS[i] for i in rng.choice(len(WORDS), size=3 + (k % 5), replace=False)]
    return f"The {' '.join(words)} ({tag} {k})."


def make_sts_dir(root: Path, n_extra: int = 0) -> tuple[Path, dict[str, np.ndarray]]:
    """Write a small data folder with all 7 tasks (and SICK train/trial); returns (root, design table).

    The design table maps every sentence to a 2-d unit vector such that each pair's cosine is the designed
    one: sentence 1 → (1, 0), sentence 2 → (c, √(1 − c²)). ``n_extra`` adds more scored pairs to STS-B and
    SICK (useful for real models; the hand-computed tests use 0).
    """
    table: dict[str, np.ndarray] = {}

    def pair(tag: str, k: int, cos: float) -> tuple[str, str]:
        s1, s2 = _sentence(tag + "a", k), _sentence(tag + "b", k)
        table[s1] = np.array([1.0, 0.0])
        table[s2] = np.array([cos, math.sqrt(1 - cos * cos)])
        return s1, s2

    base = root / "sts"
    for year in sts.TASKS[:5]:
        folder = base / year
        folder.mkdir(parents=True)
        for subset, rows in (("A", SUBSET_A), ("B", SUBSET_B)):
            inputs, golds = [], []
            for k, (gold, cos) in enumerate(rows):
                s1, s2 = pair(f"{year}{subset}", k, cos)
                inputs.append(f"{s1}\t{s2}")
                golds.append("" if gold is None else f"{gold:g}")
            (folder / f"STS.input.{subset}.txt").write_text("\n".join(inputs) + "\n", encoding="utf-8")
            (folder / f"STS.gs.{subset}.txt").write_text("\n".join(golds) + "\n", encoding="utf-8")

    stsb_rows = [(0.5, 0.05), (1.5, 0.4), (2.5, 0.3), (3.5, 0.7), (4.5, 0.95)]
    stsb_rows += [(float(k % 5) + 0.25, 0.5) for k in range(n_extra)]
    lines = []
    for k, (gold, cos) in enumerate(stsb_rows):
        s1, s2 = pair("stsb", k, cos)
        extra = "\tsource-a\tsource-b" if k == 1 else ""  # some real lines carry trailing columns
        lines.append(f"main-captions\tMSRvid\t2012test\t{k:04d}\t{gold}\t{s1}\t{s2}{extra}")
    (base / "stsbenchmark").mkdir()
    (base / "stsbenchmark" / "sts-test.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")

    (base / "sick").mkdir()
    header = "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment"
    sick_parts = {"SICK_test_annotated.txt": [(1.2, 0.1), (4.8, 0.2), (3.0, 0.6), (2.0, 0.5)],
                  "SICK_train.txt": [(1.0, 0.9), (5.0, 0.1)], "SICK_trial.txt": [(2.5, 0.3), (3.5, 0.4)]}
    sick_parts["SICK_test_annotated.txt"] += [(1.0 + (k % 4), 0.5) for k in range(n_extra)]
    for fname, rows in sick_parts.items():
        body = [header]
        for k, (gold, cos) in enumerate(rows):
            s1, s2 = pair(fname, k, cos)
            body.append(f"{k + 1}\t{s1}\t{s2}\t{gold}\tNEUTRAL")
        (base / "sick" / fname).write_text("\n".join(body) + "\n", encoding="utf-8")
    return root, table


def test_all_setting_concatenates_subsets_and_skips_empty_gold(tmp_path):
    root, table = make_sts_dir(tmp_path)
    data = sts.load_suite(root, source="local")
    sts12 = data.tasks["STS12"]
    assert len(sts12) == 5  # 3 + 3 pairs, one without gold skipped
    assert sts12.subsets == {"A": (0, 3), "B": (3, 5)}
    res = sts.score_suite(data, table)
    # "all": gold 1..5 against cosines .1 .2 .3 .9 .8 → rank differences 0,0,0,1,1 → 1 − 6·2/(5·24) = 0.9
    assert res["tasks"]["STS12"]["spearman"] == pytest.approx(90.0, abs=1e-9)
    assert res["tasks"]["STS12"]["n"] == 5
    # Pearson: Σdx·dy = 2.1, Σdx² = 10, Σdy² = 0.532
    assert res["tasks"]["STS12"]["pearson"] == pytest.approx(100 * 2.1 / math.sqrt(10 * 0.532), abs=1e-9)
    # per subset: A perfectly ranked (+1), B reversed (−1, n = 2)
    assert res["subsets"]["STS12"]["A"]["spearman"] == pytest.approx(100.0)
    assert res["subsets"]["STS12"]["B"]["spearman"] == pytest.approx(-100.0)
    assert res["subsets"]["STS12"]["B"]["n"] == 2


def test_wmean_and_mean_settings_are_separate_and_hand_computed(tmp_path):
    root, table = make_sts_dir(tmp_path)
    res = sts.score_suite(sts.load_suite(root, source="local"), table)
    wmean, mean = res["settings"]["wmean"], res["settings"]["mean"]
    assert wmean["tasks"]["STS13"]["spearman"] == pytest.approx(100 * (3 * 1 + 2 * -1) / 5)  # weights = sizes
    assert mean["tasks"]["STS13"]["spearman"] == pytest.approx(0.0, abs=1e-9)  # (1 + −1) / 2
    # STS-B and SICK-R have no subsets: all three settings agree there
    for setting in (wmean, mean):
        assert setting["tasks"]["STSBenchmark"]["spearman"] == pytest.approx(res["tasks"]["STSBenchmark"]["spearman"])
    # the main average is the mean of the 7 "all" numbers, never of another setting
    assert res["avg"] == pytest.approx(np.mean([t["spearman"] for t in res["tasks"].values()]))
    assert res["avg"] != pytest.approx(wmean["avg"])


def test_stsb_and_sick_readers_hand_values(tmp_path):
    root, table = make_sts_dir(tmp_path)
    res = sts.score_suite(sts.load_suite(root, source="local"), table)
    # STS-B: gold .5 1.5 2.5 3.5 4.5 vs cos .05 .4 .3 .7 .95 → d = 0,1,1,0,0 → 0.9
    assert res["tasks"]["STSBenchmark"]["spearman"] == pytest.approx(90.0)
    # SICK-R test only (4 pairs): gold 1.2 4.8 3.0 2.0 vs cos .1 .2 .6 .5 → ranks 1 4 3 2 vs 1 2 4 3 → Σd² = 6
    assert res["tasks"]["SICK-R"]["n"] == 4
    assert res["tasks"]["SICK-R"]["spearman"] == pytest.approx(100 * (1 - 6 * 6 / (4 * 15)))


def test_sentences_are_used_exactly_as_written(tmp_path):
    root, _ = make_sts_dir(tmp_path)
    folder = root / "sts" / "STS12"
    (folder / "STS.input.A.txt").write_text("  Mixed CASE, spacing!\tSecond\tignored third column\n"
                                            "x\ty\nz\tw\n", encoding="utf-8")
    data = sts.load_suite(root, source="local")
    assert data.tasks["STS12"].sentences1[0] == "  Mixed CASE, spacing!"
    assert "  Mixed CASE, spacing!" in data.sentences()
    assert len(data.sentences()) == len(set(data.sentences()))


def test_data_dir_may_point_at_sts_folder_itself(tmp_path):
    root, _ = make_sts_dir(tmp_path)
    assert sts.sts_root(root) == root / "sts"
    assert sts.sts_root(root / "sts") == root / "sts"


def test_missing_data_folder_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"--data-dir .*nowhere: folder not found"):
        sts.load_suite(tmp_path / "nowhere", source="local")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no STS data inside"):
        sts.load_suite(tmp_path / "empty", source="local")


def test_malformed_lines_name_file_and_line(tmp_path):
    root, _ = make_sts_dir(tmp_path)
    gold = root / "sts" / "STS14" / "STS.gs.A.txt"
    gold.write_text("1\nabc\n3\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"STS14/STS\.gs\.A\.txt:2: expected a numeric gold score, got 'abc'"):
        sts.load_suite(root, source="local")
    gold.write_text("1\n2\n3\n", encoding="utf-8")
    (root / "sts" / "STS15" / "STS.input.B.txt").write_text("a\tb\nc\td\nno tab here\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"STS15/STS\.input\.B\.txt:3: expected two tab-separated sentences"):
        sts.load_suite(root, source="local")
    (root / "sts" / "STS15" / "STS.input.B.txt").write_text("a\tb\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"STS15/STS\.gs\.B\.txt: \d+ gold lines for 1 pairs"):
        sts.load_suite(root, source="local")


def test_hub_source_reads_mteb_copies_with_pinned_revisions():
    calls = []

    class FakeSplit(dict):
        _fingerprint = "fp"

        @property
        def column_names(self):
            return list(self)

    def loader(repo, revision, split):
        calls.append((repo, revision, split))
        if repo == sts.HUB_SICK_TEST[0]:  # SICK-R: the SemEval test split of a set that labels it
            return FakeSplit(sentence_A=["a"], sentence_B=["b"], relatedness_score=[3.0], SemEval_set=["TEST"])
        return FakeSplit(sentence1=["a", "b", "c"], sentence2=["d", "e", "f"], score=[1, 2, 3])

    data = sts.load_hub(loader=loader)
    assert [c[0] for c in calls] == [sts.HUB_SETS[t][0] for t in sts.TASKS[:-1]] + [sts.HUB_SICK_TEST[0]]
    assert all(split == "test" and len(rev) == 40 for _, rev, split in calls[:-1])
    assert data.source == "hub" and any("SICK-R" in d and "1 pairs" in d for d in data.deviations)

    def offline(repo, revision, split):
        raise ConnectionError("no route to host")

    with pytest.raises(DataError, match=r"STS12: could not load mteb/sts12-sts.*Offline\? Pass --data-dir"):
        sts.load_hub(loader=offline)
