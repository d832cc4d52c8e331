"""The students trained, on the tiny slice (a random BERT, one epoch per stage, no stage 0):

* leakage: the training file with fold 0's labels flipped gives fold 0's student the same
  pseudo-labels and the same predictions, to the bit, while the other folds' students change
  (first: the tiny student is bit-for-bit reproducible on this CPU, else the check would be
  empty). With one epoch per model no epoch is chosen, so the check is exact; with more, fold 0's
  labels would choose which epoch is kept, the teacher's and the student's, as for stage 1;
* a student killed with SIGKILL mid-training is emptied and trained again, never half reused;
* the main job with configs/pseudo-labels.yaml's setting runs every notebook, the ensemble blends
  the students, the report and the runs table show them; 02b_students by hand finds the main
  job's stored student and the main job reuses one made by hand.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
from tiny_run import make_tiny_inputs, subprocess_env

from core.config import CONFIG_FILE, ROOT, Settings
from core.io import read_json
from core.runs import steps
from core.runs.folder import make_folds

pytestmark = pytest.mark.slow  # end to end: training, papermill runs and subprocesses

N_FOLDS = 3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    extra = {"stage0_epochs": 0, "students_enabled": True}
    return make_tiny_inputs(tmp_path_factory.mktemp("students"), extra=extra)


def train(settings: Settings, run_dir: Path, folds=range(N_FOLDS)) -> None:
    """Stage 1, then the students, of ``folds``, in this process."""
    from core.training import engine, students

    inputs = engine.prepare(settings, run_dir)
    for k in folds:
        engine.train_stage1(settings, k, run_dir, inputs)
    for k in folds:
        students.train_student(settings, k, run_dir, inputs)


def poison(train_path: Path, out: Path, fold: int, settings: Settings) -> Path:
    """A copy of the training file with every label of ``fold``'s rows flipped."""
    rows = train_path.read_text(encoding="utf-8").split("\n")[0::2]
    rows = [r for r in rows if r.strip()]
    folds = make_folds(len(rows), settings.n_folds, settings.seed)
    flipped = [(f"{1 - int(r[0])}{r[1:]}" if folds[i] == fold else r) for i, r in enumerate(rows)]
    assert sum(a != b for a, b in zip(rows, flipped, strict=True)) == (folds == fold).sum() > 0
    out.write_text("".join(f"{r}\n\n" for r in flipped), encoding="utf-8")
    return out


def student_files(run_dir: Path, fold: int) -> dict:
    d = run_dir / "students" / f"fold{fold}"
    return {
        "pseudo": (d / "pseudo_labels.csv").read_bytes(),
        "test": (d / "test.csv").read_bytes(),
        "oof_pred": pd.read_csv(d / "oof.csv")["pred"].tolist(),
        "oof_rows": pd.read_csv(d / "oof.csv")["row"].tolist(),
        "teacher_test": (run_dir / "stage1" / f"fold{fold}" / "test.csv").read_bytes(),
    }


@pytest.fixture(scope="module")
def leakage(tiny, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("leakage")
    clean = dataclasses.replace(tiny.settings, output_dir=tmp / "clean")
    twin = dataclasses.replace(tiny.settings, output_dir=tmp / "twin")
    poisoned_path = poison(tiny.train_path, tmp / "poisoned.txt", 0, tiny.settings)
    poisoned = dataclasses.replace(
        tiny.settings, output_dir=tmp / "poisoned", train_path=poisoned_path
    )
    runs = {
        name: s.output_dir / "runs" / name
        for name, s in (("clean", clean), ("twin", twin), ("poisoned", poisoned))
    }
    train(clean, runs["clean"])
    train(twin, runs["twin"], folds=[0])  # another step store: trained again, not reused
    train(poisoned, runs["poisoned"])
    return runs, clean


def test_the_tiny_student_is_reproducible(leakage):
    runs, _ = leakage
    assert student_files(runs["twin"], 0) == student_files(runs["clean"], 0)
    preds = student_files(runs["clean"], 0)["oof_pred"]
    assert len(set(preds)) > 1  # a constant prediction would match trivially


def test_poisoning_fold_0s_labels_leaves_fold_0s_student_unchanged(leakage):
    runs, clean = leakage
    a, b = student_files(runs["clean"], 0), student_files(runs["poisoned"], 0)
    assert a == b  # its teacher's scores, its targets, its test and out-of-fold predictions
    # The fold-0 labels did change: fold 0's validation rows carry the flipped labels.
    oof = [pd.read_csv(r / "students" / "fold0" / "oof.csv")["label"] for r in runs.values()]
    assert (oof[0] != oof[2]).all()
    summary = read_json(runs["poisoned"] / "students" / "fold0" / "done.json")
    assert summary["n_pseudo"] == 40 and summary["n_train"] == 120 - summary["n_valid"]


@pytest.mark.parametrize("fold", [1, 2])
def test_poisoning_fold_0s_labels_changes_the_other_folds_students(leakage, fold):
    runs, _ = leakage
    a, b = student_files(runs["clean"], fold), student_files(runs["poisoned"], fold)
    assert a["teacher_test"] != b["teacher_test"]  # their teachers trained on fold 0's rows
    assert a["pseudo"] != b["pseudo"] and a["test"] != b["test"]
    assert a["oof_pred"] != b["oof_pred"]


# -- kill -9 ------------------------------------------------------------------------------------


def _train_student_fold0(settings: Settings, run_dir: Path) -> None:
    from core.training import students

    students.train_student(settings, 0, run_dir)


def test_a_student_killed_mid_training_is_redone_not_half_reused(tiny, tmp_path):
    from core.training import engine, students

    # Many epochs, every one run: the kill lands after the first checkpoint, before the last.
    settings = dataclasses.replace(
        tiny.settings, output_dir=tmp_path / "outputs", students_epochs=40, stage1_patience=40
    )
    run_dir = settings.output_dir / "runs" / "killed"
    engine.train_stage1(settings, 0, run_dir)
    step = steps.ref(settings, "students", 0)
    ctx = multiprocessing.get_context("spawn")
    victim = ctx.Process(target=_train_student_fold0, args=(settings, run_dir))
    victim.start()
    deadline = time.time() + 240
    try:
        while not (step.dir / "weights.h5").exists():
            assert victim.is_alive(), f"the student ended early ({victim.exitcode})"
            assert time.time() < deadline, "the student never saved a checkpoint"
            time.sleep(0.05)
        assert not step.done(), "the student finished before the kill: give it more epochs"
    finally:
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(30)
    assert not step.done() and not (step.dir / "oof.csv").exists()
    assert (step.dir / "pseudo_labels.csv").is_file()  # what it had written survives the kill
    (step.dir / "half-written.h5").write_bytes(b"half")
    summary = students.train_student(settings, 0, run_dir)  # the lock died with its holder
    assert step.done() and summary["epochs_run"] == 40
    assert not (step.dir / "half-written.h5").exists()  # emptied before it was trained again
    assert (run_dir / "students" / "fold0").resolve() == step.dir.resolve()
    assert read_json(step.dir / steps.KEY_FILE) == steps.recipe(settings, "students", 0)


# -- the main job and the notebook by hand --------------------------------------------------------


@pytest.fixture(scope="module")
def repo_outputs():
    path = ROOT / "outputs" / f"test-{uuid.uuid4().hex[:12]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def job(tiny, repo_outputs):
    """The tiny main job with the students on (two folds, no stage 0)."""
    from core.pipeline.job import run_pipeline

    settings = dataclasses.replace(tiny.settings, output_dir=repo_outputs, n_folds=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", subprocess_env()["PATH"])
        run_dir = run_pipeline(settings)
    return settings, run_dir


def papermill(notebook: str, out: Path, *args: str, **params) -> subprocess.CompletedProcess:
    words = [str(Path(sys.executable).parent / "papermill"), notebook, str(out), *args]
    for key, value in params.items():
        words += ["-p", key, str(value)]
    return subprocess.run(
        words, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600
    )


def test_the_main_job_blends_and_reports_the_students(job):
    from core.runs import table

    settings, run_dir = job
    for k in range(2):
        assert (run_dir / "students" / f"fold{k}" / "done.json").is_file()
        assert (run_dir / "notebooks" / f"02b_students-students-fold{k}.html").is_file()
    results = read_json(run_dir / "ensemble" / "results.json")
    headline, names = results["headline"], [c["candidate"] for c in results["candidates"]]
    assert "students fold mean" in names and "weighted blend of stage1+students" in names
    assert "students_oof_auc" in headline and headline["final"] in names
    assert set(headline["final_stages"]) <= {"stage1", "stage2", "students"}
    assert "students" in pd.read_csv(run_dir / "ensemble" / "fold_auc.csv").columns
    page = (run_dir / "index.html").read_text(encoding="utf-8")
    assert "students, pooled out-of-fold AUC" in page and "students validation AUC" in page
    for k in range(2):
        auc = read_json(run_dir / "students" / f"fold{k}" / "done.json")["val_auc"]
        assert f"{auc:.4f}" in page
    row = table.read_run(run_dir, settings.output_dir)
    assert row.extras["students"] == headline["students_oof_auc"]
    assert "students_enabled=True" in table.settings_text(row.changed)


def test_the_notebook_by_hand_reuses_the_main_jobs_student(job, tmp_path):
    settings, run_dir = job
    step = steps.ref(settings, "students", 0)
    assert (run_dir / "students" / "fold0").resolve() == step.dir.resolve()
    before = {p.name: p.stat().st_mtime_ns for p in step.dir.iterdir()}
    out = tmp_path / "out.ipynb"
    proc = papermill("notebooks/02b_students.ipynb", out, "-f", str(run_dir / CONFIG_FILE), fold=0)
    assert proc.returncode == 0, proc.stderr[-3000:]
    executed = out.read_text(encoding="utf-8")
    assert "already computed" in executed and "reused" in executed and str(run_dir) in executed
    assert {p.name: p.stat().st_mtime_ns for p in step.dir.iterdir()} == before


def test_the_main_job_reuses_a_student_made_by_hand(job, tmp_path):
    """Another student setting (same teachers): fold 1 by hand, then the main job's part."""
    from core.pipeline.job import resolve_settings, run_pipeline
    from core.runs.folder import default_run_dir

    settings, _ = job
    config = tmp_path / "variant.yaml"
    values = {**settings.changed(), "students_weight": 0.5, "students_target": "hard"}
    values = {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}
    config.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in values.items()), "utf-8")
    proc = papermill(
        "notebooks/02b_students.ipynb", tmp_path / "out.ipynb", "-f", str(config), fold=1
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    variant = resolve_settings(str(config), [])
    run_dir = default_run_dir(variant)
    assert steps.ref(variant, "stage1", 1) == steps.ref(settings, "stage1", 1)  # one teacher
    done = steps.ref(variant, "students", 1).marker
    stamp = done.stat().st_mtime_ns
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", subprocess_env()["PATH"])
        assert run_pipeline(variant, only="students", folds=[1]) == run_dir
    assert done.stat().st_mtime_ns == stamp  # reused, not recomputed
    pseudo = pd.read_csv(run_dir / "students" / "fold1" / "pseudo_labels.csv")
    assert set(pseudo["target"]) <= {0.0, 1.0}  # hard targets
