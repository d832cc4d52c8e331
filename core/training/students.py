"""Pseudo-labelled students, honest by construction: one per fold, after stage 1.

Fold k's stage-1 model (the teacher) never trained on fold k's rows; its scores of the test
sentences (its ``test.csv``) become targets. Fold k's student fine-tunes on fold k's training
split (the other folds' rows, their labels) plus every test sentence with the teacher's score
(``students_target`` soft) or that score cut at ``students_threshold`` (hard) as its target, a
pseudo-labelled row weighing ``students_weight`` in the loss. It is validated on fold k as
stage 1 is, and writes the fold in stage 1's format, so the ensemble loads it as another stage.

What it reads, and so what can reach it: the labels of the other folds' rows, the token ids of
every sentence, the teacher's test scores. Fold k's labels choose only the epoch kept, the
teacher's and the student's own, as they do for every stage's out-of-fold figures
(tests/test_students.py poisons fold k's labels with one epoch each and finds fold k's targets
and predictions unchanged to the bit).

The student starts from the encoder stage 1 starts from (stage 0's, or ``bert_dir``), not from
the teacher's weights. Either is honest; a fresh start makes the student a second model that
learns the labels and the teacher's view of the test sentences together, instead of the
teacher nudged towards its own outputs, and it costs the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tensorflow import keras

import core  # noqa: F401  (selects tf-keras before TensorFlow loads)
from core.config import ConfigError, Settings
from core.io import read_json, write_csv
from core.training.engine import Inputs, fine_tune, train_taught_fold

PSEUDO_LABELS = "pseudo_labels.csv"  # in the student's folder: each test id, score and target


def pseudo_labels(settings: Settings, teacher_dir: Path, test_ids: np.ndarray) -> pd.DataFrame:
    """``id, score, target`` per test sentence: the teacher's stored test score and the target
    the student learns (the score itself, or 0/1 at ``students_threshold``)."""
    scores = pd.read_csv(Path(teacher_dir) / "test.csv").set_index("id")["pred"]
    score = scores.reindex(test_ids).to_numpy(dtype=float)
    if np.isnan(score).any():
        raise ValueError(f"{teacher_dir}/test.csv: it does not score every test id; rerun stage 1")
    if settings.students_target == "hard":
        target = (score >= settings.students_threshold).astype(float)
    else:
        target = score
    return pd.DataFrame({"id": test_ids, "score": score, "target": target})


def training_set(
    settings: Settings, inputs: Inputs, fold: int, pseudo: pd.DataFrame
) -> tuple[list[np.ndarray], np.ndarray]:
    """The student's rows: fold ``fold``'s training split (labels, weight 1), then every test
    sentence (its pseudo-label, weight ``students_weight``); targets as ``(target, weight)``."""
    rows = np.flatnonzero(inputs.folds != fold)  # never fold k's own rows
    ids = [inputs.train_ids[i] for i in rows] + list(inputs.test_ids)
    target = np.concatenate([inputs.train.labels[rows], pseudo["target"].to_numpy()])
    weight = np.concatenate(
        [np.ones(len(rows)), np.full(len(inputs.test_ids), settings.students_weight)]
    )
    return ids, np.stack([target, weight], axis=1).astype(np.float32)


def train_student(
    settings: Settings, fold: int, run_dir: Path, inputs: Inputs | None = None
) -> dict:
    """Train fold ``fold``'s student (``settings.students_*``) from its stage-1 teacher; return
    the fold's summary. A finished student (of any run) is reused."""
    s, run_dir = settings, Path(run_dir)
    if not s.students_enabled:
        raise ConfigError(
            "setting students_enabled=False: expected True to train a student (pass -p "
            "students_enabled True, or -f configs/pseudo-labels.yaml)"
        )
    resolved = {"epochs": s.students_epochs_value, "lr": s.students_lr_value}

    def train(out, teacher, bert_dir, inputs):
        return _train(s, fold, out, teacher, bert_dir, inputs)

    return train_taught_fold(s, "students", fold, run_dir, resolved, train, inputs)


def _train(settings, fold, out: Path, teacher: Path, bert_dir: Path, inputs: Inputs) -> dict:
    s = settings
    keras.utils.set_random_seed(s.training_seed + fold)
    pseudo = pseudo_labels(s, teacher, inputs.test.ids)
    write_csv(out / PSEUDO_LABELS, pseudo)
    ids, targets = training_set(s, inputs, fold, pseudo)
    n_pseudo = len(inputs.test_ids)
    labelled, n_valid = len(ids) - n_pseudo, int((inputs.folds == fold).sum())
    return fine_tune(
        s,
        "students",
        fold,
        out,
        bert_dir,
        inputs,
        ids,
        targets,
        epochs=s.students_epochs_value,
        lr=s.students_lr_value,
        note=f"{labelled} labelled rows + {n_pseudo} pseudo-labelled test rows "
        f"({s.students_target} targets), {n_valid} validation rows",
        loss="weighted_bce",
        extra={
            "n_pseudo": n_pseudo,
            "teacher_val_auc": read_json(teacher / "done.json")["val_auc"],
        },
    )


def read_pseudo_labels(student_dir: Path) -> pd.DataFrame:
    """A student's ``pseudo_labels.csv``: each test id, its teacher's score and its target."""
    return pd.read_csv(Path(student_dir) / PSEUDO_LABELS)
