"""Same seed and data, same folds and (on CPU) the same stage-1 predictions.

Two independent run folders train stage 1, fold 0, on the tiny slice (one epoch, lr 1e-3) with
``core.training.engine.train_stage1``, one after the other in this process. Tolerance for the
predictions: max |a - b| <= 1e-5 (on this CPU they come out bit-identical; the slack allows for
another thread count or oneDNN path). The twin runs train without XLA;
``test_xla_training_is_reproducible`` checks the XLA-compiled model (the pipeline's default) the
same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata as metadata
import json

import numpy as np
import pandas as pd
import pytest
from tiny_run import make_tiny_inputs

from core.config import Settings
from core.runs.folder import PACKAGES, RunMismatchError, make_folds, open_run, weights_sha256

pytestmark = pytest.mark.slow  # end to end: papermill runs and subprocesses

TOLERANCE = 1e-5
HAS_XLA_SETTING = "stage1_jit_compile" in {f.name for f in dataclasses.fields(Settings)}


@pytest.fixture(scope="module")
def twin_runs(tmp_path_factory):
    from core.training import engine

    tmp = tmp_path_factory.mktemp("repro")
    tiny = make_tiny_inputs(tmp / "data")
    settings = Settings(
        train_path=tiny.train_path,
        test_path=tiny.test_path,
        bert_dir=tiny.bert_dir,
        n_folds=3,
        stage0_epochs=0,
        stage1_epochs=1,
        stage1_lr=1e-3,
        stage1_batch_size=16,
        stage1_jit_compile=False,
        output_dir=tmp,
    )
    runs = [tmp / "a" / "run", tmp / "b" / "run"]
    # Two output folders, two step stores: the second training is not a reuse of the first.
    summaries = [
        engine.train_stage1(dataclasses.replace(settings, output_dir=run.parent), 0, run)
        for run in runs
    ]
    return {"tiny": tiny, "settings": settings, "runs": runs, "summaries": summaries}


def test_same_seed_same_folds(twin_runs):
    a, b = (pd.read_csv(run / "folds.csv") for run in twin_runs["runs"])
    pd.testing.assert_frame_equal(a, b)
    assert a["fold"].tolist() == make_folds(120, 3, 2020).tolist()
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
        3,
        2020,
        20,
    )
    assert manifest["packages"] == {name: metadata.version(name) for name in PACKAGES}
    params = json.loads((run / "stage1" / "params.json").read_text(encoding="utf-8"))
    expected = {"lr": 1e-3, "epochs": 1, "patience": 1, "batch_size": 16}
    assert expected.items() <= params.items()
    twin = json.loads((twin_runs["runs"][1] / "run.json").read_text(encoding="utf-8"))
    assert twin == manifest


def test_other_seed_in_the_same_run_folder_is_refused(twin_runs):
    s = twin_runs["settings"]
    other = Settings(
        train_path=s.train_path, test_path=s.test_path, bert_dir=s.bert_dir, n_folds=3, seed=7
    )
    with pytest.raises(RunMismatchError, match=r"seed: was 2020, now 7"):
        open_run(twin_runs["runs"][0], other, np.arange(120))


@pytest.mark.parametrize("train_seed", [2020, 7])
def test_train_seed_changes_the_model_not_the_folds(twin_runs, tmp_path, train_seed):
    """``train_seed`` = ``seed`` is the default run; another value trains another model on the
    same folds (what a seed ensemble needs)."""
    from core.training import engine

    settings = dataclasses.replace(
        twin_runs["settings"], train_seed=train_seed, output_dir=tmp_path
    )
    run, default = tmp_path / "run", twin_runs["runs"][0]
    engine.train_stage1(settings, 0, run)
    folds = [pd.read_csv(r / "folds.csv") for r in (run, default)]
    pd.testing.assert_frame_equal(*folds)
    ours, base = (pd.read_csv(r / "stage1" / "fold0" / "oof.csv") for r in (run, default))
    assert ours["row"].tolist() == base["row"].tolist()
    diff = float(np.abs(ours["pred"] - base["pred"]).max())
    if train_seed == 2020:
        assert diff <= TOLERANCE
    else:
        assert diff > 1e-3, f"train_seed=7 gave the default model (max abs difference {diff:.3g})"
    assert json.loads((run / "stage1" / "params.json").read_text())["train_seed"] == train_seed


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
