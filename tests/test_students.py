"""The pseudo-labelled students (core.training.students), without training a model: their
settings, keys and plan (a run without students is the run it was before), the training set they
are given (no row of their own fold), their loss, and their place in the honest ensemble.

tests/test_students_e2e.py trains them: the leakage check on poisoned labels, kill -9, the
notebook by hand."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from tiny_run import TEST, TRAIN, small_settings

from core.config import ConfigError, Settings, from_values, read_config
from core.ensembling.candidates import candidates, fold_mean, results_table, stage_blend
from core.ensembling.fold_outputs import StagePredictions
from core.ensembling.mix import served_mix
from core.metrics import auc
from core.model.losses import bce, weighted_bce
from core.pipeline.plan import graph, plan, upstream
from core.runs import steps
from core.runs.folder import default_run_dir, identity
from core.training.engine import Inputs
from core.training.students import pseudo_labels, training_set

N_FOLDS = 3


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    return small_settings(tmp_path_factory.mktemp("students"), n_folds=N_FOLDS)


def keys(settings: Settings) -> dict[str, str]:
    return {s.label: s.key for s in steps.run_steps(settings)}


# -- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("students_target", "medium", "expected one of soft, hard"),
        ("students_threshold", 1.5, r"expected a number in \(0, 1\)"),
        ("students_weight", 0, r"expected a number in \(0, 10\]"),
        ("students_epochs", 0, "expected an integer >= 1 or None"),
        ("students_lr", "fast", r"expected a number in \(0, 1\) or None"),
        ("students_enabled", "yes", "expected True or False"),
    ],
)
def test_a_bad_students_setting_is_one_line_naming_it(name, value, expected):
    with pytest.raises(ConfigError, match=rf"^setting {name}={value!r}: {expected} \(") as e:
        Settings(**{name: value})
    assert "\n" not in str(e.value)


def test_epochs_and_lr_default_to_stage_1s():
    s = Settings(stage1_epochs=2, stage1_lr=3e-5)
    assert (s.students_epochs_value, s.students_lr_value) == (2, 3e-5)
    s = Settings(students_epochs="4", students_lr=1e-4)  # text, as papermill -r gives it
    assert (s.students_epochs_value, s.students_lr_value) == (4, 1e-4)


def test_the_config_turns_them_on_with_the_measured_weight_and_nothing_else():
    values = read_config("configs/pseudo-labels.yaml")
    expected = {"students_enabled": True, "students_weight": 0.5}
    assert values == expected
    assert from_values(values, "test").changed() == expected


def test_only_students_when_they_are_off_names_the_fix(settings):
    from core.pipeline.job import check_inputs

    with pytest.raises(ConfigError, match="--only students: the students are off"):
        check_inputs(settings, "students")
    check_inputs(dataclasses.replace(settings, students_enabled=True), "students")


# -- keys and plan: off is the run as it was ----------------------------------------------------


# What each step's key hashed before the students existed (a new field here would change every
# stored step's key, and the default run's out-of-fold predictions would be recomputed).
RECIPES = {
    "eda": {"step", "train", "test", "bert", "maxlen"},
    "stage0": {"step", "train", "test", "bert", "maxlen", "epochs", "lr", "batch_size"}
    | {"mask_rate", "jit_compile", "seed"},
    "stage1": {"step", "encoder", "train", "test", "maxlen", "n_folds", "seed", "fold"}
    | {"train_seed", "epochs", "patience", "batch_size", "lr", "schedule", "warmup"}
    | {"layer_decay", "group_by_length", "pad_multiple", "jit_compile", "strategy"},
    "stage2": {"step", "stage1", "loss", "lr", "epochs", "patience", "batch_size"},
}


def test_students_off_keeps_every_key_recipe_and_the_run_folder(settings):
    for section, names in RECIPES.items():
        fold = 0 if section in steps.FOLDED else None
        assert set(steps.recipe(settings, section, fold)) == names, section
    assert not [k for k in identity(settings) if k.startswith("students")]
    # Any student setting, while they are off, leaves every step's key alone.
    for change in ({"students_weight": 0.3}, {"students_target": "hard"}, {"students_lr": 1e-5}):
        assert keys(dataclasses.replace(settings, **change)) == keys(settings), change


def test_students_on_add_their_folds_and_share_everything_else(settings):
    on = dataclasses.replace(settings, students_enabled=True)
    off_keys, on_keys = keys(settings), keys(on)
    assert {k: v for k, v in on_keys.items() if not k.startswith("students")} == off_keys
    assert [k for k in on_keys if k.startswith("students")] == [
        f"students-fold{k}" for k in range(N_FOLDS)
    ]
    assert default_run_dir(on) != default_run_dir(settings)  # another run, the same steps
    labels_off = [s.label for s in plan(settings, settings.output_dir / "runs/off")]
    labels_on = [s.label for s in plan(on, on.output_dir / "runs/on")]
    assert [x for x in labels_on if not x.startswith("students")] == labels_off
    # after stage 2's folds, before the ensemble
    first = labels_on.index("students-fold0")
    assert labels_on[first - 1] == f"stage2-fold{N_FOLDS - 1}"
    assert labels_on[first + N_FOLDS] == "ensemble"


def test_a_students_key_is_stage_1_folds_key_and_the_students_settings(settings):
    on = dataclasses.replace(settings, students_enabled=True)
    recipe = steps.recipe(on, "students", 1)
    assert recipe["stage1"] == steps.ref(on, "stage1", 1).key
    assert set(recipe) == {
        "step",
        "stage1",
        "target",
        "weight",
        "epochs",
        "lr",
    }  # soft: no threshold
    hard = steps.recipe(dataclasses.replace(on, students_target="hard"), "students", 1)
    assert hard["threshold"] == on.students_threshold
    before = keys(on)

    def changed(**change):
        after = keys(dataclasses.replace(on, **change))
        return {label for label in before if before[label] != after[label]}

    students = {f"students-fold{k}" for k in range(N_FOLDS)}
    assert changed(students_weight=0.5) == students
    assert changed(students_target="hard") == students
    stage1 = {f"stage1-fold{k}" for k in range(N_FOLDS)} | {f"stage2-fold{k}" for k in range(3)}
    assert changed(stage1_lr=3e-5) == stage1 | students  # a new teacher: new students
    # Naming stage 1's epochs and rate is the same student as leaving them None.
    assert changed(students_epochs=on.stage1_epochs, students_lr=on.stage1_lr) == set()


def test_a_student_waits_for_its_own_teacher_only(settings):
    on = dataclasses.replace(settings, students_enabled=True, stage0_epochs=0)
    chosen = plan(on, on.output_dir / "runs/on")
    waits = graph(chosen)
    for i, step in enumerate(chosen):
        if step.section == "students":
            assert [r.name for r in upstream(step)] == [steps.ref(on, "stage1", step.fold).name]
            assert [chosen[j].label for j in waits[i]] == [f"stage1-fold{step.fold}"]


# -- the training set: never a row of the student's own fold ------------------------------------


def fake_inputs(labels: np.ndarray, folds: np.ndarray, n_test: int = 6) -> Inputs:
    from core.data.reviews import Dataset

    n = len(labels)
    train = Dataset([f"t{i}" for i in range(n)], labels, np.arange(n), TRAIN, list(range(n)))
    test = Dataset(
        [f"q{i}" for i in range(n_test)], None, np.arange(n_test), TEST, list(range(n_test))
    )
    return Inputs(
        train=train,
        test=test,
        train_ids=[np.array([3, 6 + i % 50, 4]) for i in range(n)],
        test_ids=[np.array([3, 60 + i, 4]) for i in range(n_test)],
        folds=folds,
        unk_rate=0.0,
        n_truncated=0,
    )


@pytest.mark.parametrize("target", ["soft", "hard"])
def test_training_set_is_the_other_folds_rows_then_the_pseudo_labelled_test(tmp_path, target):
    s = Settings(students_enabled=True, students_target=target, students_weight=0.25)
    folds = np.arange(30) % N_FOLDS
    labels = (np.arange(30) // 2) % 2
    inputs = fake_inputs(labels, folds)
    scores = np.array([0.1, 0.5, 0.49, 0.9, 0.7, 0.2])
    pd.DataFrame({"id": np.arange(6)[::-1], "pred": scores[::-1]}).to_csv(
        tmp_path / "test.csv", index=False
    )
    pseudo = pseudo_labels(s, tmp_path, inputs.test.ids)  # aligned on id, not on file order
    np.testing.assert_array_equal(pseudo["score"], scores)
    expected = scores if target == "soft" else (scores >= 0.5).astype(float)
    np.testing.assert_array_equal(pseudo["target"], expected)
    ids, y = training_set(s, inputs, 1, pseudo)
    rows = np.flatnonzero(folds != 1)
    assert len(ids) == len(rows) + 6 and y.shape == (len(ids), 2)
    np.testing.assert_array_equal(y[: len(rows), 0], labels[rows])
    np.testing.assert_array_equal(y[len(rows) :, 0], expected.astype(np.float32))
    np.testing.assert_array_equal(y[:, 1], [1.0] * len(rows) + [0.25] * 6)
    # Poisoning fold 1's labels changes nothing the student of fold 1 is given ...
    poisoned = labels.copy()
    poisoned[folds == 1] = 1 - poisoned[folds == 1]
    ids_p, y_p = training_set(s, fake_inputs(poisoned, folds), 1, pseudo)
    np.testing.assert_array_equal(y_p, y)
    assert all(np.array_equal(a, b) for a, b in zip(ids, ids_p, strict=True))
    # ... and changes what fold 0's student is given (fold 1's rows are its training rows).
    _, y0 = training_set(s, inputs, 0, pseudo)
    _, y0_p = training_set(s, fake_inputs(poisoned, folds), 0, pseudo)
    assert not np.array_equal(y0, y0_p)


def test_a_teacher_that_misses_a_test_id_is_refused(tmp_path):
    pd.DataFrame({"id": [0, 1], "pred": [0.2, 0.3]}).to_csv(tmp_path / "test.csv", index=False)
    with pytest.raises(ValueError, match="does not score every test id; rerun stage 1"):
        pseudo_labels(Settings(), tmp_path, np.arange(3))


def test_weighted_bce_weighs_each_row():
    p = tf.constant([[0.2], [0.7], [0.9]])
    y = tf.constant([[0.0], [1.0], [0.3]])
    plain = float(bce(y, p))
    assert float(weighted_bce(tf.concat([y, tf.ones_like(y)], 1), p)) == pytest.approx(plain)
    assert float(weighted_bce(y, p)) == pytest.approx(plain)  # one column: weight 1
    w = tf.constant([[1.0], [1.0], [0.0]])
    two = float(bce(y[:2], p[:2])) * 2 / 3  # the mean over the batch, the third row weighing 0
    assert float(weighted_bce(tf.concat([y, w], 1), p)) == pytest.approx(two, rel=1e-6)


# -- the ensemble: the students are another stage, weights chosen on the other folds ------------


def stage(name: str, preds, labels, folds, test) -> StagePredictions:
    n = len(labels)
    oof = pd.DataFrame(
        {"row": np.arange(n), "id": np.arange(n), "label": labels, "fold": folds, "pred": preds}
    )
    tests = pd.DataFrame({"id": np.arange(len(test))})
    for k in range(int(folds.max()) + 1):
        tests[f"fold{k}"] = test
    return StagePredictions(name, oof, tests)


def three_stages(labels, seed=3, scored=None):
    """Stage 1 informative on fold 0 only, stage 2 and the students moderately everywhere, so
    fold 0's labels pull every pooled weight (as in test_ensemble's nested-selection tests).
    ``scored``: the labels the predictions were made from (default ``labels``)."""
    scored = labels if scored is None else scored
    rng = np.random.default_rng(seed)
    n = len(labels)
    folds = np.arange(n) % 5
    s1 = rng.normal(size=n) + np.where(folds == 0, 4.0, 0.0) * scored
    s2 = rng.normal(size=n) + 1.0 * scored
    st = rng.normal(size=n) + 1.2 * scored + np.where(folds == 0, 3.0, 0.0) * scored
    test = rng.random(40)
    named = (("stage1", s1), ("stage2", s2), ("students", st))
    return [stage(name, p, labels, folds, test) for name, p in named], folds


def students_candidates(s1, s2, st) -> dict:
    """The candidates the students add to stages 1 and 2's four."""
    every = candidates({s.stage: s for s in (s1, s2, st)})
    return {name: b for name, b in every.items() if "students" in name}


def test_student_blends_choose_fold_ks_weight_without_fold_ks_labels():
    labels = np.random.default_rng(0).integers(0, 2, 1000)
    (s1, s2, st), folds = three_stages(labels)
    k = 0
    flipped = labels.copy()
    flipped[folds == k] = 1 - flipped[folds == k]
    (f1, f2, ft), _ = three_stages(flipped, scored=labels)  # the same scores, other labels
    before, after = students_candidates(s1, s2, st), students_candidates(f1, f2, ft)
    assert list(before) == [
        "students fold mean",
        "weighted blend of stage1+students",
        "weighted blend of stage2+students",
        "mean of stage1+stage2+students",
    ]
    moved = False
    for name in ("weighted blend of stage1+students", "weighted blend of stage2+students"):
        b, a = before[name], after[name]
        assert b.fitted and a.fold_mixes[k] == b.fold_mixes[k], name
        assert np.array_equal(a.oof[folds == k], b.oof[folds == k]), name
        # each fold's weight is stage_blend's nested choice
        ref = stage_blend(fold_mean(s1 if "stage1" in name else s2), fold_mean(st), labels, folds)
        assert b.fold_mixes == ref.fold_mixes
        moved |= a.mix != b.mix or any(a.fold_mixes[j] != b.fold_mixes[j] for j in range(1, 5))
    assert moved  # not vacuous: the weights that do see fold k's labels move


def test_the_results_table_holds_the_students_beside_both_stages():
    labels = np.random.default_rng(1).integers(0, 2, 500)
    (s1, s2, st), folds = three_stages(labels, seed=5)
    blends = candidates({s.stage: s for s in (s1, s2, st)})
    table = results_table(blends, labels, folds).set_index("candidate")
    assert len(table) == 8
    expected = auc(labels, st.oof["pred"].to_numpy())
    assert table.loc["students fold mean", "oof_auc"] == pytest.approx(expected)
    assert table.loc["students fold mean", "mix"] == "1·students"
    assert table.loc["weighted blend of stage1+students", "fitted"]


def test_serving_serves_stages_1_and_2_of_a_final_that_blends_the_students(tmp_path):
    from core.io import write_json
    from core.runs.folder import served_note

    headline = {
        "final": "weighted blend of stage1+students",
        "final_stages": ["stage1", "students"],
        "oof_auc": 0.97,
        "served": "stage1 fold mean",
        "served_oof_auc": 0.96,
        "served_mix": {"stage1": 1.0},
    }
    write_json(tmp_path / "ensemble" / "results.json", {"headline": headline})
    assert served_mix(headline).as_dict() == {"stage1": 1.0}
    note = served_note(tmp_path)
    assert "blends students" in note and "stage1 fold mean (OOF AUC 0.9600)" in note
    del headline["final_stages"]
    write_json(tmp_path / "ensemble" / "results.json", {"headline": headline})
    assert served_note(tmp_path) is None
