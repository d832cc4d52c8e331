"""The tiny end-to-end world the slow tests share (helpers; the fixtures are in conftest.py).

``make_tiny_inputs(folder)`` writes the first rows of the competition files (same format: a row,
then a blank line) and a tiny random BERT folder, and returns settings for them: 2 folds, batches
of 16, one epoch of stage 0 and of stage 2, two of stage 1 (and of the students and distilled
copies: early stopping and the schedule's decay have two epochs to act on), lr 1e-3 so an epoch
learns something, XLA off (it compiles every batch shape anew: slower on tiny data;
test_reproducible checks the XLA path), and float32 (``precision: auto`` would take another
numeric path on a bf16 host; tests/test_precision.py covers the others). ``output_dir`` is
``folder / "outputs"``; the shared world lives in ``outputs/test-<uuid>`` of the repository
instead (conftest.py), because commands such as predict and export only write inside the
repository's ``outputs/``.

The rest are the helpers several test modules use: running a notebook or a command as a user
does, copying a finished output folder (runs and stored steps) for a test that damages it,
poisoning a fold's labels, and running Python that cannot import this repository.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from fakes import TINY_VOCAB, write_random_bert_dir

from core.config import ROOT, Settings
from core.io import IN_FLIGHT

TRAIN = ROOT / "data" / "train_shuffle.txt"
TEST = ROOT / "data" / "test_handout.txt"
N_FOLDS = 2  # the tiny runs' folds
# Modules an exported model must load without (it is served outside this repository).
BANNED = ("core", "keras_bert", "keras_self_attention", "tf_keras")


@dataclass
class TinyInputs:
    train_path: Path
    test_path: Path
    bert_dir: Path
    output_dir: Path
    settings: Settings


@dataclass
class TinyJob:
    """A finished tiny main job: its settings, run folder and what it printed."""

    settings: Settings
    run_dir: Path
    printed: str

    @property
    def outputs(self) -> Path:
        return Path(self.settings.output_dir)


def first_rows(path: Path, n: int) -> str:
    """The first ``n`` rows of a competition-format file, in that format (row, blank line)."""
    lines = path.read_text(encoding="utf-8").split("\n")
    rows = lines[0::2][:n]
    assert len(rows) == n and all(r.strip() for r in rows), f"{path} has fewer than {n} rows"
    return "".join(f"{r}\n\n" for r in rows)


def make_tiny_inputs(folder: Path, n_train: int = 120, n_test: int = 40, extra=()) -> TinyInputs:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    train, test = folder / "train.txt", folder / "test.txt"
    train.write_text(first_rows(TRAIN, n_train), encoding="utf-8")
    test.write_text(first_rows(TEST, n_test), encoding="utf-8")
    bert = folder / "bert"
    if not (bert / "vocab.txt").exists():
        write_random_bert_dir(bert, TINY_VOCAB)
    values = {
        "train_path": str(train),
        "test_path": str(test),
        "bert_dir": str(bert),
        "output_dir": str(folder / "outputs"),
        "n_folds": N_FOLDS,
        "precision": "float32",
        "stage0_epochs": 1,
        "stage0_jit_compile": False,
        "stage1_epochs": 2,
        "stage1_lr": 1e-3,
        "stage1_batch_size": 16,
        "stage1_jit_compile": False,
        "stage2_lr": 1e-3,
        "stage2_epochs": 1,
        **dict(extra),
    }
    return TinyInputs(train, test, bert, folder / "outputs", Settings(**values))


def small_settings(folder: Path, output_dir: Path | None = None, **values) -> Settings:
    """Settings over the first 30 training and 10 test rows and a tiny random BERT folder,
    written into ``folder`` (for key and store tests that train nothing); float32, so keys are
    the same on every host; ``values`` override."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.txt").write_text(first_rows(TRAIN, 30), encoding="utf-8")
    (folder / "test.txt").write_text(first_rows(TEST, 10), encoding="utf-8")
    write_random_bert_dir(folder / "bert", TINY_VOCAB)
    return Settings(
        train_path=folder / "train.txt",
        test_path=folder / "test.txt",
        bert_dir=folder / "bert",
        output_dir=output_dir or folder / "outputs",
        precision="float32",
        **values,
    )


def subprocess_env() -> dict:
    """Environment for child processes: this venv's python first on PATH, repo importable, and
    without pytest's PYTEST_CURRENT_TEST (under it ipykernel leaves fd 2 uncaptured, so a child
    would not show what a user's does)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH", "")] if p)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def command(module: str, *args, env: dict | None = None, timeout: float = 300):
    """``python -m <module> *args`` from the repository root, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=ROOT,
        env=env or subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def papermill(notebook: str | Path, out: Path, *args, **params) -> subprocess.CompletedProcess:
    """``papermill <notebook> <out> *args -p KEY VALUE …`` from the repository root."""
    words = [*map(str, args)]
    for key, value in params.items():
        words += ["-p", key, str(value)]
    return command("papermill", notebook, out, *words, timeout=600)


def run_job(settings: Settings, **options) -> tuple[Path, str]:
    """``core.pipeline.job.run_pipeline`` in this process: the run folder and what it printed
    (shown again on stdout, so pytest reports it when a test fails)."""
    from core.pipeline.job import run_pipeline

    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            run_dir = run_pipeline(settings, **options)
    finally:
        sys.stdout.write(printed.getvalue())
    return run_dir, printed.getvalue()


def copy_outputs(job: TinyJob, dst: Path) -> TinyJob:
    """A copy of the job's output folder (its runs and its step store; the runs' links into the
    store are relative, so they stay inside the copy), for a test that changes or damages it.
    Files another worker is writing at that moment (``core.io``'s hidden temporaries) stay out."""
    shutil.copytree(job.outputs, dst, symlinks=True, ignore=shutil.ignore_patterns(*IN_FLIGHT))
    settings = replace(job.settings, output_dir=dst)
    return TinyJob(settings, dst / job.run_dir.relative_to(job.outputs), job.printed)


def fold_files(run_dir: Path, stage: str, fold: int) -> dict[str, Path]:
    d = Path(run_dir) / stage / f"fold{fold}"
    weights = "weights.h5" if stage == "stage1" else "head.h5"
    return {n: d / n for n in ("oof.csv", "test.csv", "history.json", "done.json", weights)}


def clean_and_poisoned(base: Settings, tmp: Path, fold: int = 0) -> dict[str, Settings]:
    """``base`` on its training file and on a copy with ``fold``'s labels flipped (``poison``),
    each with an output folder of its own under ``tmp``: the two sides of a leakage test."""
    poisoned = poison(base.train_path, tmp / "poisoned.txt", fold, base)
    return {
        "clean": replace(base, output_dir=tmp / "clean"),
        "poisoned": replace(base, output_dir=tmp / "poisoned", train_path=poisoned),
    }


LEAKAGE_EPOCHS = 3  # the leakage runs' students and copies: epochs, all run (patience as many)


def train_leakage(base: Settings, folder: Path) -> dict[str, Path]:
    """Folds 0 and 1 of ``base`` without stage 0, trained in this process on its training file
    and on a copy with fold 0's labels flipped: the teachers (stage 1) of one epoch, so fold 0's
    labels choose nothing there, then fold 0's student and distilled copy of ``LEAKAGE_EPOCHS``
    epochs (fold 1's teacher, which learned fold 0's labels, is the control: what it passes on
    differs between the sides). Returns each side's run folder."""
    from core.training import distill, engine, students

    base = replace(
        base,
        stage0_epochs=0,
        stage1_epochs=1,
        stage1_patience=LEAKAGE_EPOCHS,
        students_enabled=True,
        students_epochs=LEAKAGE_EPOCHS,
        distill_enabled=True,
        distill_epochs=LEAKAGE_EPOCHS,
    )
    Path(folder).mkdir(parents=True, exist_ok=True)
    runs = {}
    for side, settings in clean_and_poisoned(base, folder).items():
        run_dir = runs[side] = Path(settings.output_dir) / "runs" / "x"
        inputs = engine.prepare(settings, run_dir)
        for k in (0, 1):
            engine.train_stage1(settings, k, run_dir, inputs)
        students.train_student(settings, 0, run_dir, inputs)
        distill.train_fold_copy(settings, 0, run_dir, inputs)
    return runs


def poison(train_path: Path, out: Path, fold: int, settings: Settings) -> Path:
    """A copy of the training file with every label of ``fold``'s rows flipped."""
    from core.runs.folder import make_folds

    rows = [r for r in train_path.read_text(encoding="utf-8").split("\n")[0::2] if r.strip()]
    folds = make_folds(len(rows), settings.n_folds, settings.seed)
    flipped = [(f"{1 - int(r[0])}{r[1:]}" if folds[i] == fold else r) for i, r in enumerate(rows)]
    assert sum(a != b for a, b in zip(rows, flipped, strict=True)) == (folds == fold).sum() > 0
    out.write_text("".join(f"{r}\n\n" for r in flipped), encoding="utf-8")
    return out


def clean_python(code: str, stdin: str, cwd: Path) -> dict:
    """Run ``code`` in a fresh interpreter that cannot import this repository (``-I``: no
    PYTHONPATH, no current folder on sys.path) and return the JSON it prints last."""
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    done = subprocess.run(
        [sys.executable, "-I", "-c", code],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def first_cells(notebook: str, params: dict) -> dict:
    """Run a notebook's parameters cell, the cell papermill injects for ``params`` (``-p``) and
    the first code cell after them, in this process, as its kernel would; return the namespace.
    What a notebook checks before any work is then tested without starting a kernel."""
    import nbformat

    from core.parameters import INJECTED_HEADER

    nb = nbformat.read(ROOT / "notebooks" / f"{notebook}.ipynb", as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    parameters = nb.cells[at].source
    first = code[code.index(parameters) + 1]
    injected = INJECTED_HEADER + "\n" + "".join(f"{k} = {v!r}\n" for k, v in params.items())
    namespace: dict = {"In": []}
    for source in (parameters, injected, first):
        namespace["In"].append(source)
        exec(compile(source, f"{notebook}.ipynb", "exec"), namespace)
    return namespace


def fake_run(outputs: Path, name: str, bert_dir: Path, finished: bool = True) -> Path:
    """A run folder as core.serving.predict reads it, without trained folds (every test stops
    before)."""
    run = outputs / "runs" / name
    (run / "ensemble").mkdir(parents=True)
    from core.config import resolve
    from core.weights.google_ckpt import weights_sha256

    run_json = {
        "train_path": str(resolve("data/train_shuffle.txt")),
        "n_folds": 3,
        "seed": 2020,
        "maxlen": 20,
        "bert_dir": str(bert_dir),
    }  # as a run records them
    if bert_dir.is_dir():
        run_json["bert_sha256"] = weights_sha256(bert_dir)
    (run / "run.json").write_text(json.dumps(run_json))
    if finished:
        (run / "ensemble" / "results.json").write_text(json.dumps({"headline": {}}))
    return run


def finished_run(outputs: Path, bert_dir: Path, n_folds: int = 2) -> Path:
    """A finished run as core.serving.predict reads it: every fold's weights (random, untrained)."""
    from core.io import write_json
    from core.model.classifier import build_head_model, build_model, copy_head_weights

    run = fake_run(outputs, "done", bert_dir)
    model = build_model(bert_dir, bert_trainable=False)
    head = build_head_model(model.get_layer("head_avg").input_shape[-1])
    copy_head_weights(model, head)
    for fold in range(n_folds):
        (run / "stage1" / f"fold{fold}").mkdir(parents=True)
        (run / "stage2" / f"fold{fold}").mkdir(parents=True)
        model.save_weights(str(run / "stage1" / f"fold{fold}" / "weights.h5"))
        head.save_weights(str(run / "stage2" / f"fold{fold}" / "head.h5"))
    write_json(run / "run.json", {**json.loads((run / "run.json").read_text()), "n_folds": n_folds})
    return run
