"""core.runs.folder: fold assignment, the run folder's identity (run.json, folds.csv) and its
checks."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata as metadata
import json
import shlex

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import KFold

from core.config import CONFIG_FILE, Settings
from core.data.reviews import read_labelled
from core.runs import steps
from core.runs.folder import (
    RunMismatchError,
    default_run_dir,
    fold_command,
    make_folds,
    open_run,
    open_stage,
    record_settings,
    run_settings,
)

TEXTS = [
    "菜很好吃",
    "服务态度差",
    "环境干净卫生",
    "价格便宜",
    "味道一般",
    "老板热情",
    "不推荐",
    "下次再来",
    "量少价格贵",
    "强烈推荐",
    "鱼很新鲜",
    "汤太咸了",
    "性价比高",
]


def write_train(path, labels=None):
    """A train file in the competition format: ``label<TAB>text`` then a blank line, per row."""
    labels = labels if labels is not None else [i % 2 for i in range(len(TEXTS))]
    path.write_text("".join(f"{y}\t{t}\n\n" for y, t in zip(labels, TEXTS, strict=True)), "utf-8")
    return path


def kfold_assignment(n, k, seed):
    """Fold of every row, straight from sklearn."""
    out = np.full(n, -1)
    for fold, (_, valid) in enumerate(KFold(k, shuffle=True, random_state=seed).split(range(n))):
        out[valid] = fold
    return out


@pytest.fixture
def run_setup(tmp_path, tiny_bert_dir):
    train = write_train(tmp_path / "train.txt")
    settings = Settings(
        train_path=train, bert_dir=tiny_bert_dir, output_dir=tmp_path, n_folds=3, seed=7, maxlen=12
    )
    ids = read_labelled(train).ids
    return settings, ids, tmp_path / "runs" / "r1"


# ------------------------------------------------------------------ make_folds


@pytest.mark.parametrize("n, k, seed", [(10, 2, 0), (13, 3, 7), (101, 5, 2020), (5, 5, 1)])
def test_make_folds_matches_kfold(n, k, seed):
    folds = make_folds(n, k, seed)
    assert folds.shape == (n,)
    assert np.array_equal(folds, kfold_assignment(n, k, seed))
    # Every row in exactly one fold; fold sizes differ by at most one.
    assert set(folds.tolist()) == set(range(k))
    sizes = np.bincount(folds, minlength=k)
    assert sizes.sum() == n and sizes.max() - sizes.min() <= 1


def test_make_folds_depends_on_seed():
    assert not np.array_equal(make_folds(200, 5, 1), make_folds(200, 5, 2))
    assert np.array_equal(make_folds(200, 5, 1), make_folds(200, 5, 1))


# ------------------------------------------------------------------ open_run


def test_open_run_writes_identity_and_folds(run_setup):
    settings, ids, run_dir = run_setup
    folds = open_run(run_dir, settings, ids)
    assert np.array_equal(folds, kfold_assignment(len(TEXTS), 3, 7))

    manifest = json.loads((run_dir / "run.json").read_text("utf-8"))
    digest = hashlib.sha256(settings.train_path.read_bytes()).hexdigest()
    assert manifest["train_sha256"] == digest
    assert manifest["n_rows"] == len(TEXTS)
    assert (manifest["n_folds"], manifest["seed"], manifest["maxlen"]) == (3, 7, 12)
    assert len(manifest["bert_sha256"]) == 64
    packages = manifest["packages"]
    for name in ("tensorflow", "tf-keras", "keras-bert", "numpy", "scikit-learn"):
        assert packages[name] == metadata.version(name), name

    saved = pd.read_csv(run_dir / "folds.csv")
    assert list(saved.columns) == ["row", "id", "fold"]
    assert saved["row"].tolist() == list(range(len(TEXTS)))
    assert saved["id"].tolist() == ids.tolist()
    assert np.array_equal(saved["fold"].to_numpy(), folds)


def test_open_run_again_returns_the_same_folds(run_setup):
    settings, ids, run_dir = run_setup
    first = open_run(run_dir, settings, ids)
    before = (run_dir / "run.json").read_bytes(), (run_dir / "folds.csv").read_bytes()
    again = open_run(run_dir, dataclasses.replace(settings), ids)
    assert np.array_equal(first, again)
    after = (run_dir / "run.json").read_bytes(), (run_dir / "folds.csv").read_bytes()
    assert before == after


def test_changed_training_data_is_refused(run_setup):
    settings, ids, run_dir = run_setup
    open_run(run_dir, settings, ids)
    labels = [1 - (i % 2) for i in range(len(TEXTS))]  # same rows, labels flipped
    write_train(settings.train_path, labels)
    with pytest.raises(RunMismatchError) as info:
        open_run(run_dir, settings, ids)
    message = str(info.value)
    assert "train_sha256" in message
    assert "new run_dir" in message
    assert "seed: was" not in message and "n_rows: was" not in message  # only what changed


def test_same_data_under_another_path_is_the_same_run(run_setup, tmp_path):
    settings, ids, run_dir = run_setup
    first = open_run(run_dir, settings, ids)
    copy = tmp_path / "copy.txt"
    copy.write_bytes(settings.train_path.read_bytes())
    moved = dataclasses.replace(settings, train_path=copy)
    assert np.array_equal(open_run(run_dir, moved, ids), first)


@pytest.mark.parametrize(
    "change, name", [({"seed": 8}, "seed"), ({"n_folds": 4}, "n_folds"), ({"maxlen": 20}, "maxlen")]
)
def test_changed_identity_setting_is_refused(run_setup, change, name):
    settings, ids, run_dir = run_setup
    open_run(run_dir, settings, ids)
    with pytest.raises(RunMismatchError) as info:
        open_run(run_dir, dataclasses.replace(settings, **change), ids)
    message = str(info.value)
    assert f"{name}: was" in message
    assert "new run_dir" in message


def test_changed_row_count_is_refused(run_setup):
    settings, ids, run_dir = run_setup
    open_run(run_dir, settings, ids)
    with pytest.raises(RunMismatchError, match="n_rows"):
        open_run(run_dir, settings, ids[:-1])


def test_tampered_folds_file_is_refused(run_setup):
    settings, ids, run_dir = run_setup
    open_run(run_dir, settings, ids)
    saved = pd.read_csv(run_dir / "folds.csv")
    saved["fold"] = (saved["fold"] + 1) % 3
    saved.to_csv(run_dir / "folds.csv", index=False)
    with pytest.raises(RunMismatchError, match="new run_dir"):
        open_run(run_dir, settings, ids)


# ------------------------------------------------------------------ open_stage


def test_open_stage_records_and_checks_params(tmp_path):
    stage = tmp_path / "stage2"
    params = {"loss": "soft_f1", "lr": 1e-7, "epochs": 3, "batch_size": 16}
    open_stage(stage, params)
    assert json.loads((stage / "params.json").read_text("utf-8")) == params
    open_stage(stage, dict(params))  # same parameters: resuming is allowed
    with pytest.raises(RunMismatchError) as info:
        open_stage(stage, {**params, "lr": 1e-6})
    message = str(info.value)
    assert "lr: was 1e-07, now 1e-06" in message
    assert "loss: was" not in message
    with pytest.raises(RunMismatchError, match="loss"):
        open_stage(stage, {**params, "loss": "bce"})


# ------------------------------------------------------------------ fold_command


def _passed(command: str) -> dict:
    """The ``-p name value`` pairs of a papermill command."""
    words = shlex.split(command)
    return {words[i + 1]: words[i + 2] for i, w in enumerate(words) if w == "-p"}


def test_fold_command_names_the_runs_config_file(run_setup):
    settings, ids, run_dir = run_setup
    open_run(run_dir, settings, ids)  # records config.yaml
    command = fold_command("stage1", 2, run_dir, settings)
    assert command == (
        f"papermill notebooks/02_cv.ipynb out.ipynb -f {run_dir / CONFIG_FILE} -p fold 2 "
        f"-p run_dir {run_dir}"  # not the folder those settings name by default: named
    )
    # The file it names rebuilds the run's settings exactly.
    assert run_settings(run_dir, settings.output_dir) == settings


def test_fold_command_before_anything_is_recorded_repeats_the_settings(run_setup):
    settings, _, run_dir = run_setup
    words = shlex.split(fold_command("stage2", 0, run_dir, settings))
    assert words[:3] == ["papermill", "notebooks/03_f1_refine.ipynb", "out.ipynb"]
    assert "-f" not in words
    assert _passed(" ".join(words)) == {
        "train_path": str(settings.train_path),
        "bert_dir": str(settings.bert_dir),
        "output_dir": str(settings.output_dir),
        "maxlen": "12",
        "n_folds": "3",
        "seed": "7",
        "fold": "0",
        "run_dir": str(run_dir),
    }


def test_fold_command_for_the_default_run_is_the_short_one():
    settings = Settings()
    assert fold_command("stage1", 3, default_run_dir(settings), settings) == (
        "papermill notebooks/02_cv.ipynb out.ipynb -p fold 3"
    )


def test_record_settings_refuses_another_configuration(run_setup):
    settings, ids, run_dir = run_setup
    record_settings(run_dir, settings)
    record_settings(run_dir, settings)  # the same: allowed (a resumed run)
    saved = (run_dir / CONFIG_FILE).read_bytes()
    with pytest.raises(RunMismatchError, match=r"stage2_lr: was 0\.0001, now 0\.001"):
        record_settings(run_dir, dataclasses.replace(settings, stage2_lr=1e-3))
    assert (run_dir / CONFIG_FILE).read_bytes() == saved


def test_a_missing_stage0_encoder_names_the_command_that_makes_it(run_setup):
    """Stages 1 and 2 fine-tune the run's stage-0 encoder; before it exists they stop with the
    one command that makes it (issue #16)."""
    from core.config import PRETRAIN_FILE
    from core.runs.folder import MissingStageError, encoder_dir

    settings, ids, run_dir = run_setup
    open_run(run_dir, settings, ids)
    with pytest.raises(MissingStageError) as info:
        encoder_dir(settings, run_dir)
    message = str(info.value)
    assert "stage-0 encoder is not there yet (stage0_epochs=3)" in message
    assert f"papermill notebooks/00_pretrain.ipynb out.ipynb -f {run_dir / CONFIG_FILE}" in message
    stored = steps.ref(settings, "stage0").dir / "bert"  # the stored step, whoever made it
    stored.mkdir(parents=True)
    (stored / PRETRAIN_FILE).write_text("{}", encoding="utf-8")
    assert encoder_dir(settings, run_dir) == stored
    off = dataclasses.replace(settings, stage0_epochs=0)
    assert encoder_dir(off, run_dir) == settings.bert_dir
