"""The output cases of docs/reliability.md ("Outputs: every command that writes"), through eval/bad_inputs.py's
machinery: each case runs ``python -m embedkit.cli ...`` in a fresh process in its own temporary folder, on the
tiny random BERT, and the table says whether the folder was left as it was.

The read-only cases write under ``/sys``, where the kernel refuses every new file even to root (the tests run as
root, for whom ``chmod`` changes nothing). The full-disk case is simulated: a ``sitecustomize`` makes torch's
writer raise, for the second checkpoint, the error it raises on a full disk.

    python eval/bad_outputs.py [--only NAME,...] [--markdown FILE]
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bad_inputs as bi  # noqa: E402
from bad_inputs import ENV, ROOT, _c, finished_run, recipe  # noqa: E402

FIRST = len(bi.CASES)
READ_ONLY = Path("/sys/embedkit-out")  # sysfs: creating a file there fails with EACCES, for root too


def pairs(f: Path) -> Path:
    path = f / "p.jsonl"
    path.write_text("".join(f'{{"anchor": "question {i}", "positive": "answer {i}"}}\n' for i in range(16)),
                    encoding="utf-8")
    return path


def texts(f: Path) -> Path:
    path = f / "t.txt"
    path.write_text("one\ntwo\n", encoding="utf-8")
    return path


@_c("out-merge-into-run", "`merge RUN/checkpoints/checkpoint-1 RUN/checkpoints/checkpoint-2 -o RUN --overwrite`")
def _(f, m):
    finished_run(f, m)
    ck = f / "out" / "checkpoints"
    return ["merge", str(ck / "checkpoint-1"), str(ck / "checkpoint-2"), "-o", str(f / "out"), "--overwrite"]


@_c("out-merge-cwd", "`merge A B -o . --overwrite` in a model folder that holds the user's thesis.md")
def _(f, m):
    shutil.copytree(m, f, dirs_exist_ok=True)
    (f / "thesis.md").write_text("years of work")
    return ["merge", m, m, "-o", ".", "--overwrite"]


@_c("out-merge-in-input", "`merge A B -o A/merged` (inside an input)")
def _(f, m):
    model = shutil.copytree(m, f / "a")
    return ["merge", str(model), m, "-o", str(f / "a" / "merged")]


@_c("out-merge-foreign", "`merge ... -o OUT --overwrite`, OUT an earlier merge plus a user's file in 1_Pooling/")
def _(f, m):
    proc = bi.run_cli(["merge", m, m, "-o", str(f / "merged")], f)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (f / "merged" / "1_Pooling" / "notes.txt").write_text("mine")
    return ["merge", m, m, "-o", str(f / "merged"), "--overwrite"]


@_c("out-mine-input", "`data mine --pairs p.jsonl -o p.jsonl --overwrite`")
def _(f, m):
    return ["data", "mine", "--pairs", str(pairs(f)), "--model", m, "-o", str(f / "p.jsonl"), "--overwrite"]


@_c("out-mine-sidecars", "`data mine -o m.jsonl --overwrite` (new m.jsonl) beside the user's m.stats.json, m.png")
def _(f, m):
    (f / "m.stats.json").write_text('{"my": 1}')
    (f / "m.png").write_bytes(b"my chart")
    return ["data", "mine", "--pairs", str(pairs(f)), "--model", m, "-o", str(f / "m.jsonl"), "--overwrite"]


@_c("out-eval-into-run", "`eval RUN --rerank rr.csv -o RUN`")
def _(f, m):
    finished_run(f, m)
    (f / "rr.csv").write_text("qtext,label,atext\nq ?,1,a\nq ?,0,b\n")
    return ["eval", str(f / "out"), "--rerank", str(f / "rr.csv"), "-o", str(f / "out")]


@_c("out-eval-foreign", "`eval -o DIR`, DIR holding the user's summary.md")
def _(f, m):
    (f / "rr.csv").write_text("qtext,label,atext\nq ?,1,a\nq ?,0,b\n")
    (f / "ev").mkdir()
    (f / "ev" / "summary.md").write_text("mine")
    return ["eval", m, "--rerank", str(f / "rr.csv"), "-o", str(f / "ev")]


@_c("out-encode-in-model", "`encode MODEL t.txt -o MODEL/e.npy`")
def _(f, m):
    model = shutil.copytree(m, f / "model")
    return ["encode", str(model), str(texts(f)), "-o", str(model / "e.npy")]


@_c("out-diagnose-into-run", "`data diagnose RECIPE -o RUN`")
def _(f, m):
    path = finished_run(f, m)
    return ["data", "diagnose", str(path), "-o", str(f / "out")]


@_c("out-overwrite-checkpoint-note", "`train --overwrite` of a run with the user's note in checkpoints/checkpoint-2/")
def _(f, m):
    path = finished_run(f, m)
    (f / "out" / "checkpoints" / "checkpoint-2" / "note.md").write_text("mine")
    return ["train", str(path), "--overwrite"]


@_c("out-run-in-run", "`train` with output.dir inside a finished run's folder")
def _(f, m):
    return ["train", str(finished_run(f, m)), f"output.dir={f / 'out' / 'again'}"]


@_c("out-dangling-link", "`check` of a recipe whose output.dir is a dangling symbolic link")
def _(f, m):
    (f / "out").symlink_to(f / "unmounted" / "runs")
    return ["check", str(recipe(f, m))]


@_c("out-link-loop", "`train` with output.dir a symbolic link to itself")
def _(f, m):
    (f / "out").symlink_to(f / "out")
    return ["train", str(recipe(f, m))]


@_c("ro-train", "`train` with output.dir on a filesystem that refuses new files (/sys)")
def _(f, m):
    return ["train", str(recipe(f, m)), f"output.dir={READ_ONLY / 'run'}"]


@_c("ro-merge", "`merge` into /sys")
def _(f, m):
    return ["merge", m, m, "-o", str(READ_ONLY / "merged")]


@_c("ro-mine", "`data mine` into /sys")
def _(f, m):
    return ["data", "mine", "--pairs", str(pairs(f)), "--model", m, "-o", str(READ_ONLY / "m.jsonl")]


@_c("ro-encode", "`encode` into /sys")
def _(f, m):
    return ["encode", m, str(texts(f)), "-o", str(READ_ONLY / "e.npy")]


SITE = '''import torch
_save = torch.save
def _full(obj, f, *args, **kwargs):
    if "checkpoint-2" in str(f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")
    return _save(obj, f, *args, **kwargs)
torch.save = _full
'''


@_c("disk-full-checkpoint", "disk full while checkpoint-2 is saved (simulated: torch's inline_container.cc error); "
    "checkpoint-1 stays")
def _(f, m):
    site = f.parent / f"{f.name}-site"  # outside the case folder: not part of what the run leaves behind
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITE)
    ENV.update(PYTHONPATH=f"{site}:{ROOT}", PYTHONDONTWRITEBYTECODE="1")
    path = recipe(f, m, training="training: {batch_size: 8, max_steps: 3, save_steps: 1, learning_rate: 1e-4}")
    return ["train", str(path)]


MINE = [case.name for case in bi.CASES[FIRST:]]

if __name__ == "__main__":
    if "--only" not in sys.argv:
        sys.argv += ["--only", ",".join(MINE)]
    bi.main()
