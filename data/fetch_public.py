"""Fetch the public STS sets from the HuggingFace Hub into ``data/public`` in the SentEval layout.

For machines with the Hub. embedkit reads the written folder like ``../shared/data`` (it is one of the default
data folders, or pass ``--data-dir data/public``):

    python data/fetch_public.py [--out data/public]

Writes ``sts/STS12..STS16/STS.input.all.txt`` + ``STS.gs.all.txt`` (each year's subsets already concatenated,
as the "all" setting uses them), ``sts/stsbenchmark/sts-{train,dev,test}.csv`` and two SICK files named by what
they hold:

* ``sts/sick/SICK_test_annotated.txt``: SemEval-2014's test pairs only (SentEval's SICK-R), the rows of the `sick`
  dataset whose ``SemEval_set`` is TEST (its documented schema; that release keeps 4,906 of SemEval's 4,927 test
  pairs, and embedkit's loader records the difference);
* ``sts/sick/SICK_all_semeval2014.txt``: mteb's SICK-R, all 9,927 SemEval pairs (train + trial + test, no split
  labels), which the local mteb SICK-R task reads; the SentEval suite refuses it as a test split.

Files are written to a temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

# (Hub dataset, split) for each folder; scores are kept on their original scale.
STS_YEARS = {f"STS{y}": (f"mteb/sts{y}-sts", "test") for y in (12, 13, 14, 15, 16)}
STSB = {"train": ("sentence-transformers/stsb", "train"), "dev": ("sentence-transformers/stsb", "validation"),
        "test": ("sentence-transformers/stsb", "test")}
SICK_TEST = ("RobZamp/sick", "test")  # embedkit.evaluation.sts.HUB_SICK_TEST: has the SemEval split of each pair
SICK_ALL = ("mteb/sickr-sts", "test")  # mteb's SICK-R: train + trial + test in one split
SICK_HEADER = "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment"


def _clean(text: str) -> str:
    return " ".join(str(text).split())  # tabs/newlines inside a sentence would break the TSV layout


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".partial")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def fetch(out: Path, load_dataset=None) -> list[Path]:
    """Download and write every set; returns the files written."""
    if load_dataset is None:
        from datasets import load_dataset
    written = []
    for year, (name, split) in STS_YEARS.items():
        ds = load_dataset(name, split=split)
        folder = out / "sts" / year
        pairs = zip(ds["sentence1"], ds["sentence2"])
        _write(folder / "STS.input.all.txt", [f"{_clean(a)}\t{_clean(b)}" for a, b in pairs])
        _write(folder / "STS.gs.all.txt", [f"{float(s):g}" for s in ds["score"]])
        written += [folder / "STS.input.all.txt", folder / "STS.gs.all.txt"]
    for part, (name, split) in STSB.items():
        ds = load_dataset(name, split=split)
        # sentence-transformers/stsb scores are in [0, 1]; the STS-B files hold 0-5.
        rows = [f"main\tstsb\t{split}\t{i:04d}\t{5 * float(s):.3f}\t{_clean(a)}\t{_clean(b)}"
                for i, (a, b, s) in enumerate(zip(ds["sentence1"], ds["sentence2"], ds["score"]))]
        path = out / "sts" / "stsbenchmark" / f"sts-{part}.csv"
        _write(path, rows)
        written.append(path)
    ds = load_dataset(SICK_TEST[0], split=SICK_TEST[1])
    columns = set(getattr(ds, "column_names", None) or ds.keys())
    a, b, score = list(ds["sentence_A"]), list(ds["sentence_B"]), list(ds["relatedness_score"])
    ids = list(ds["pair_ID"]) if "pair_ID" in columns else list(range(1, len(a) + 1))
    rows = range(len(a))
    if "SemEval_set" in columns:  # the SemEval split of each pair: keep the test pairs whatever split this is
        rows = [i for i, s in enumerate(ds["SemEval_set"]) if str(s).strip().upper() == "TEST"]
    lines = [SICK_HEADER] + [f"{ids[i]}\t{_clean(a[i])}\t{_clean(b[i])}\t{float(score[i]):g}\tNA" for i in rows]
    test = out / "sts" / "sick" / "SICK_test_annotated.txt"
    _write(test, lines)
    ds = load_dataset(SICK_ALL[0], split=SICK_ALL[1])
    lines = [SICK_HEADER] + [f"{i}\t{_clean(a)}\t{_clean(b)}\t{float(s):g}\tNA" for i, (a, b, s) in
                             enumerate(zip(ds["sentence1"], ds["sentence2"], ds["score"]))]
    union = out / "sts" / "sick" / "SICK_all_semeval2014.txt"
    _write(union, lines)
    return written + [test, union]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/public", type=Path)
    args = parser.parse_args()
    for path in fetch(args.out):
        print(path)


if __name__ == "__main__":
    main()
