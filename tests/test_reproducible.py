"""Same seed and data, same folds and (on CPU) the same stage-1 predictions.

Stage 1, fold 0, and its student, of the session's tiny main job (conftest.py; kernels of the main
job) and the same trained again in this process, in another output folder (its own step store,
holding a copy of the session's stage 0), with every setting no key holds changed: the data and
encoder files copied elsewhere (keys hold contents, not paths) and the students' threshold (soft
targets use none; a section that is off: tests/test_steps.py). Every file of both steps comes
out byte-equal (their ``done.json`` but its seconds), so those settings do leave every output
file alone. Tolerance elsewhere: max |a - b| <= 1e-5 (on this CPU bit-identical; the slack allows
for another thread count or oneDNN path). The tiny runs train without XLA;
``test_xla_training_is_reproducible`` checks the XLA-compiled model (the pipeline's default) the
same way. The one twin retrain of the suite: the students' and distilled copies' leakage tests
compare two trainings too, and rely on this.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata as metadata
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from tiny_run import N_FOLDS

from core.config import Settings
from core.io import read_json
from core.runs import steps
from core.runs.folder import PACKAGES, RunMismatchError, make_folds, open_run, weights_sha256

pytestmark = pytest.mark.slow  # trains and reads the session's tiny run

TOLERANCE = 1e-5
HAS_XLA_SETTING = "stage1_jit_compile" in {f.name for f in dataclasses.fields(Settings)}


def with_stage0(settings: Settings, output_dir) -> Settings:
    """``settings`` writing to ``output_dir``, whose store holds a copy of their stage 0."""
    moved = dataclasses.replace(settings, output_dir=output_dir)
    if settings.uses_stage0:
        shutil.copytree(steps.ref(settings, "stage0").dir, steps.ref(moved, "stage0").dir)
    return moved


@pytest.fixture(scope="module")
def twin_runs(tiny, tiny_job, tmp_path_factory):
    from core.training import engine, students

    tmp = tmp_path_factory.mktemp("twin")
    moved = {
        name: shutil.copytree(src, tmp / name) if src.is_dir() else shutil.copy(src, tmp / name)
        for name, src in (("train.txt", tiny.train_path), ("test.txt", tiny.test_path))
        + (("bert", tiny.bert_dir),)
    }
    settings = dataclasses.replace(
        with_stage0(tiny_job.settings, tmp / "outputs"),
        train_path=moved["train.txt"],
        test_path=moved["test.txt"],
        bert_dir=moved["bert"],
        students_threshold=0.3,  # soft targets: no threshold
    )
    assert steps.ref(settings, "students", 0).key == steps.ref(tiny_job.settings, "students", 0).key
    twin = settings.output_dir / "runs" / "twin"
    inputs = engine.prepare(settings, twin)
    summary = engine.train_stage1(settings, 0, twin, inputs)
    students.train_student(settings, 0, twin, inputs)
    first = read_json(tiny_job.run_dir / "stage1" / "fold0" / "done.json")
    return {
        "tiny": tiny,
        "settings": tiny_job.settings,
        "runs": [tiny_job.run_dir, twin],
        "summaries": [first, summary],
    }


@pytest.mark.parametrize("section", ["stage1", "students"])
def test_settings_no_key_holds_leave_every_file_byte_equal(twin_runs, section):
    a, b = (run / section / "fold0" for run in twin_runs["runs"])
    names = sorted(p.name for p in a.iterdir() if p.is_file() and not p.name.startswith("notebook"))
    assert names == sorted(
        p.name for p in b.iterdir() if p.is_file() and not p.name.startswith("notebook")
    )
    assert {"oof.csv", "test.csv", "weights.h5", "history.json"} <= set(names)
    for name in names:
        if name == "done.json":  # the same summary but its wall time
            da, db = (
                {k: v for k, v in read_json(d / name).items() if k != "seconds"} for d in (a, b)
            )
            assert da == db
        elif name == steps.KEY_FILE:  # the same key; made of the same recipe
            assert read_json(a / name) == read_json(b / name)
        elif name == steps.RECORD:  # the files' sizes and hashes: done.json's differ
            da, db = (
                {k: v for k, v in read_json(d / name)["files"].items() if k != "done.json"}
                for d in (a, b)
            )
            assert da == db
        else:
            assert (a / name).read_bytes() == (b / name).read_bytes(), f"{section}: {name}"


def test_same_seed_same_folds(twin_runs):
    a, b = (pd.read_csv(run / "folds.csv") for run in twin_runs["runs"])
    pd.testing.assert_frame_equal(a, b)
    assert a["fold"].tolist() == make_folds(120, N_FOLDS, 2020).tolist()
    assert a["row"].tolist() == list(range(120))


def test_another_seed_other_folds():
    assert not np.array_equal(make_folds(120, 3, 2020), make_folds(120, 3, 2021))


@pytest.mark.parametrize("name", ["oof.csv", "test.csv"])
def test_same_stage1_predictions(twin_runs, name):
    a, b = (pd.read_csv(run / "stage1" / "fold0" / name) for run in twin_runs["runs"])
    assert a["id"].tolist() == b["id"].tolist()
    diff = float(np.abs(a["pred"] - b["pred"]).max())
    assert diff <= TOLERANCE, f"{name}: max abs difference {diff:.3g} > {TOLERANCE}"
    assert a["pred"].std() > 0  # a constant prediction would match trivially


def test_same_summary(twin_runs):
    a, b = twin_runs["summaries"]
    assert a["val_auc"] == pytest.approx(b["val_auc"], abs=1e-6)
    assert {k: v for k, v in a.items() if k not in ("seconds", "val_auc")} == {
        k: v for k, v in b.items() if k not in ("seconds", "val_auc")
    }


def test_run_json_records_what_the_run_is(twin_runs):
    tiny = twin_runs["tiny"]
    run = twin_runs["runs"][0]
    manifest = json.loads((run / "run.json").read_text(encoding="utf-8"))
    assert {
        "train_path",
        "train_sha256",
        "n_rows",
        "n_folds",
        "seed",
        "maxlen",
        "bert_dir",
        "bert_sha256",
        "python",
        "packages",
    } <= set(manifest)
    assert manifest["train_sha256"] == hashlib.sha256(tiny.train_path.read_bytes()).hexdigest()
    assert manifest["bert_sha256"] == weights_sha256(tiny.bert_dir)
    assert (manifest["n_rows"], manifest["n_folds"], manifest["seed"], manifest["maxlen"]) == (
        120,
        N_FOLDS,
        2020,
        20,
    )
    assert manifest["packages"] == {name: metadata.version(name) for name in PACKAGES}
    params = json.loads((run / "stage1" / "params.json").read_text(encoding="utf-8"))
    expected = {"lr": 1e-3, "epochs": 2, "patience": 1, "batch_size": 16}
    assert expected.items() <= params.items()
    twin = json.loads((twin_runs["runs"][1] / "run.json").read_text(encoding="utf-8"))
    paths = ("train_path", "test_path", "bert_dir")  # elsewhere in the twin; the same contents
    assert {k: v for k, v in twin.items() if k not in paths} == {
        k: v for k, v in manifest.items() if k not in paths
    }


def test_other_seed_in_the_same_run_folder_is_refused(twin_runs):
    s = twin_runs["settings"]
    other = Settings(
        train_path=s.train_path, test_path=s.test_path, bert_dir=s.bert_dir, n_folds=3, seed=7
    )
    with pytest.raises(RunMismatchError, match=r"seed: was 2020, now 7"):
        open_run(twin_runs["runs"][0], other, np.arange(120))


def test_train_seed_changes_the_model_not_the_folds(twin_runs, tmp_path):
    """Another ``train_seed`` trains another model on the same folds (what a seed ensemble
    needs); ``train_seed`` = ``seed`` is the default run (the twin above)."""
    from core.training import engine

    settings = with_stage0(twin_runs["settings"], tmp_path / "outputs")
    settings = dataclasses.replace(settings, train_seed=7)
    run, default = tmp_path / "run", twin_runs["runs"][0]
    engine.train_stage1(settings, 0, run)
    folds = [pd.read_csv(r / "folds.csv") for r in (run, default)]
    pd.testing.assert_frame_equal(*folds)
    ours, base = (pd.read_csv(r / "stage1" / "fold0" / "oof.csv") for r in (run, default))
    assert ours["row"].tolist() == base["row"].tolist()
    diff = float(np.abs(ours["pred"] - base["pred"]).max())
    assert diff > 1e-3, f"train_seed=7 gave the default model (max abs difference {diff:.3g})"
    assert json.loads((run / "stage1" / "params.json").read_text())["train_seed"] == 7


@pytest.mark.skipif(not HAS_XLA_SETTING, reason="no jit_compile setting")
def test_xla_training_is_reproducible_in_one_process():
    """A dense model with dropout, compiled by
    ``core.model.classifier.compile_model(jit_compile=True)`` as ``build_model`` compiles the
    classifier (the classifier shows the same: stage-1 fold 0 of the tiny run differs by up to ~0.05
    between two runs in one process)."""
    from tensorflow import keras

    from core.model.optimizer import compile_model

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((32, 8)).astype(np.float32), (np.arange(32) % 2)[:, None]
    preds = []
    for _ in range(2):
        keras.utils.set_random_seed(2020)
        model = keras.Sequential(
            [
                keras.Input((8,)),
                keras.layers.Dense(16, activation="relu"),
                keras.layers.Dropout(0.5),
                keras.layers.Dense(1, activation="sigmoid"),
            ]
        )
        compile_model(model, "bce", lr=1e-2, jit_compile=True)
        model.fit(x, y.astype(np.float32), batch_size=8, epochs=2, shuffle=False, verbose=0)
        preds.append(model.predict(x, verbose=0).ravel())
    diff = float(np.abs(preds[0] - preds[1]).max())
    assert diff <= TOLERANCE, f"max abs difference {diff:.3g} > {TOLERANCE}"
