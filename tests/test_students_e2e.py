"""The students trained, on the tiny slice (a random BERT):

* leakage: the training file with fold 0's labels flipped gives fold 0's student the same
  pseudo-labels and the same training, epoch by epoch (its losses to the bit; every epoch's
  validation AUC exactly one minus the clean one, so every epoch's model is the same), while
  fold 1's teacher passes other pseudo-labels on. Fold 0's labels do choose which epoch is kept,
  as for stage 1: the students train three epochs here, so that choice is exercised;
* the session's tiny main job (students and distillation on) runs every notebook, the ensemble
  blends the students, the report and the runs table show them; 02b_students by hand finds the
  main job's stored student and the main job reuses one made by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from tiny_run import LEAKAGE_EPOCHS, N_FOLDS, papermill

from core.config import CONFIG_FILE, Settings
from core.io import read_json
from core.runs import steps

pytestmark = pytest.mark.slow  # end to end: training, papermill runs and subprocesses


def student_files(run_dir: Path, fold: int) -> dict:
    d = run_dir / "students" / f"fold{fold}"
    return {
        "pseudo": (d / "pseudo_labels.csv").read_bytes(),
        "test": (d / "test.csv").read_bytes(),
        "oof_pred": pd.read_csv(d / "oof.csv")["pred"].tolist(),
        "teacher_test": (run_dir / "stage1" / f"fold{fold}" / "test.csv").read_bytes(),
        "history": read_json(d / "history.json"),
    }


def test_poisoning_fold_0s_labels_leaves_fold_0s_student_training_unchanged(leakage):
    a, b = (student_files(leakage[r], 0) for r in ("clean", "poisoned"))
    assert a["teacher_test"] == b["teacher_test"] and a["pseudo"] == b["pseudo"]
    assert len(a["history"]["loss"]) == LEAKAGE_EPOCHS
    assert a["history"]["loss"] == b["history"]["loss"]  # the same training, to the bit
    # Every epoch's model scores fold 0 alike: only the labels it is scored against flipped.
    flipped = [1 - v for v in a["history"]["val_auc"]]
    assert b["history"]["val_auc"] == pytest.approx(flipped, abs=1e-9)
    assert len(set(a["oof_pred"])) > 1  # a constant prediction would match trivially
    oof = [pd.read_csv(leakage[r] / "students" / "fold0" / "oof.csv")["label"] for r in leakage]
    assert (oof[0] != oof[1]).all()
    summary = read_json(leakage["poisoned"] / "students" / "fold0" / "done.json")
    assert summary["n_pseudo"] == 40 and summary["n_train"] == 120 - summary["n_valid"]


def test_fold_0s_labels_choose_its_students_epoch(leakage):
    """The one way fold 0's labels reach its student: the epoch kept is the best on fold 0."""
    for run in leakage.values():
        done = read_json(run / "students" / "fold0" / "done.json")
        aucs = read_json(run / "students" / "fold0" / "history.json")["val_auc"]
        assert done["best_epoch"] == 1 + aucs.index(max(aucs))
        assert done["val_auc"] == pytest.approx(max(aucs), abs=1e-6)


def test_poisoning_fold_0s_labels_changes_what_the_other_folds_teach_their_students(leakage):
    """The control: fold 1's teacher trained on fold 0's rows, so its pseudo-labels differ."""
    from core.training.students import pseudo_labels

    settings = Settings()  # soft targets: the teacher's scores
    teachers = [leakage[r] / "stage1" / "fold1" for r in ("clean", "poisoned")]
    test_ids = pd.read_csv(teachers[0] / "test.csv")["id"].to_numpy()
    a, b = (pseudo_labels(settings, t, test_ids)["target"] for t in teachers)
    assert not a.equals(b)


# -- the main job and the notebook by hand --------------------------------------------------------


def test_the_main_job_blends_and_reports_the_students(tiny_job):
    from core.runs import catalog, table

    settings, run_dir = tiny_job.settings, tiny_job.run_dir
    for k in range(N_FOLDS):
        assert (run_dir / "students" / f"fold{k}" / "done.json").is_file()
        assert (run_dir / "notebooks" / f"02b_students-students-fold{k}.html").is_file()
    results = read_json(run_dir / "ensemble" / "results.json")
    headline, names = results["headline"], [c["candidate"] for c in results["candidates"]]
    assert "students fold mean" in names and "weighted blend of stage1+students" in names
    assert "students_oof_auc" in headline and headline["final"] in names
    assert set(headline["final_stages"]) <= {"stage1", "stage2", "students", "distill"}
    assert "students" in pd.read_csv(run_dir / "ensemble" / "fold_auc.csv").columns
    page = (run_dir / "index.html").read_text(encoding="utf-8")
    assert "students, pooled out-of-fold AUC" in page and "students validation AUC" in page
    for k in range(N_FOLDS):
        auc = read_json(run_dir / "students" / f"fold{k}" / "done.json")["val_auc"]
        assert f"{auc:.4f}" in page
    row = catalog.read_run(run_dir, settings.output_dir)
    assert row.extras["students"] == headline["students_oof_auc"]
    assert "students_enabled=True" in table.settings_text(row.changed)


def test_the_notebook_by_hand_reuses_the_main_jobs_student(tiny_job, tmp_path):
    settings, run_dir = tiny_job.settings, tiny_job.run_dir
    step = steps.ref(settings, "students", 0)
    assert (run_dir / "students" / "fold0").resolve() == step.dir.resolve()
    before = {p.name: p.stat().st_mtime_ns for p in step.dir.iterdir()}
    out = tmp_path / "out.ipynb"
    proc = papermill("notebooks/02b_students.ipynb", out, "-f", run_dir / CONFIG_FILE, fold=0)
    assert proc.returncode == 0, proc.stderr[-3000:]
    executed = out.read_text(encoding="utf-8")
    assert "already computed" in executed and "reused" in executed and str(run_dir) in executed
    assert {p.name: p.stat().st_mtime_ns for p in step.dir.iterdir()} == before


def test_the_main_job_reuses_a_student_made_by_hand(tiny_job, tmp_path):
    """Another student setting (same teachers): fold 1 by hand, then the main job's part."""
    from core.pipeline.job import resolve_settings, run_pipeline
    from core.runs.folder import default_run_dir

    settings = tiny_job.settings
    config = tmp_path / "variant.yaml"
    values = {**settings.changed(), "students_weight": 0.5, "students_target": "hard"}
    values = {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}
    config.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in values.items()), "utf-8")
    proc = papermill("notebooks/02b_students.ipynb", tmp_path / "out.ipynb", "-f", config, fold=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    variant = resolve_settings(str(config), [])
    run_dir = default_run_dir(variant)
    assert steps.ref(variant, "stage1", 1) == steps.ref(settings, "stage1", 1)  # one teacher
    done = steps.ref(variant, "students", 1).marker
    stamp = done.stat().st_mtime_ns
    assert run_pipeline(variant, only="students", folds=[1]) == run_dir
    assert done.stat().st_mtime_ns == stamp  # reused, not recomputed
    pseudo = pd.read_csv(run_dir / "students" / "fold1" / "pseudo_labels.csv")
    assert set(pseudo["target"]) <= {0.0, 1.0}  # hard targets
