"""Distillation: the run's ensemble taught to one model for serving, and what that model is worth.

The distilled model (the run's ``distilled`` step, after its ensemble) fine-tunes the encoder that
stage 1 starts from on every training row and every test sentence. A training row's target is
``distill_label_weight`` times its label plus the rest times the ensemble's out-of-fold score of
it; a test sentence's target is the ensemble's score. The ensemble here is the one serving
computes: the run's served mix of its stages' fold means (core.ensembling.mix). With nothing left
to validate on, it trains as many epochs as its in-fold copies kept, on their learning-rate
schedule.

Trained on every row, it has no out-of-fold score: its figure of record is the development
holdout's (core.analysis.holdout: rows no model of the run saw). Its in-fold copies (the
``distill`` step, one per fold, stored like every fold) give an estimate on the training rows,
of a related procedure: fold k's copy learns from fold k's stage-1 model alone (the one teacher
that never saw fold k; the ensemble's out-of-fold scores did), on fold k's training rows with
their labels mixed with that teacher's scores, plus the test sentences, and keeps the epoch best
on fold k, where the shipped model trains a fixed number of epochs. Their mean validation AUC is
that estimate, optimistic by the epoch chosen on fold k. No label of fold k is a target of fold
k's copy (tests/test_distill.py poisons them); the distilled model's rank agreement with the
ensemble on the test sentences says how closely it follows its teacher.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from tensorflow import keras

import core  # noqa: F401  (selects tf-keras before TensorFlow loads)
from core.config import ConfigError, Settings
from core.data.batches import predict_in_order
from core.ensembling.candidates import fold_mean
from core.ensembling.fold_outputs import load_stage
from core.ensembling.mix import Mix, served_mix
from core.io import read_json, save_weights, write_csv, write_json
from core.model.classifier import build_model, encoder_layers
from core.model.precision import choose
from core.runs import steps
from core.runs.folder import (
    MissingStageError,
    encoder_dir,
    fold_command,
    pipeline_command,
)
from core.training.board import EVENTS, board_callbacks
from core.training.engine import (
    Inputs,
    Progress,
    fine_tune,
    fine_tuned_model,
    prepare,
    train_taught_fold,
    training_batches,
)

TARGETS_FILE = "targets.csv"  # in a distilled folder: each row's or test sentence's target


def mixed_targets(settings: Settings, labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """A training row's target: ``distill_label_weight`` of its label, the rest its teacher's."""
    w = settings.distill_label_weight
    return (w * np.asarray(labels, dtype=float) + (1 - w) * np.asarray(scores, dtype=float)).astype(
        np.float32
    )


def check_enabled(settings: Settings) -> None:
    if not settings.distill_enabled:
        raise ConfigError(
            "setting distill_enabled=False: expected True to distil (pass -p distill_enabled "
            "True, or -f configs/distill.yaml)"
        )


# ------------------------------------------------------------------ in-fold copies


def fold_teacher(settings: Settings, fold: int, teacher: Path, bert_dir: Path, inputs: Inputs):
    """Fold ``fold``'s stage-1 model's scores of the fold's training rows (in-sample; it never saw
    fold ``fold``) and its stored scores of the test sentences: ``(rows, train, test)``."""
    rows = np.flatnonzero(inputs.folds != fold)
    precision = choose(settings.precision, False).precision
    model = build_model(bert_dir, bert_trainable=False, precision=precision)
    model.load_weights(str(teacher / "weights.h5"))
    train = predict_in_order(
        model, [inputs.train_ids[i] for i in rows], settings.predict_batch_size
    )
    tests = pd.read_csv(teacher / "test.csv").set_index("id")["pred"]
    test = tests.reindex(inputs.test.ids).to_numpy(dtype=float)
    if np.isnan(test).any():
        raise ValueError(f"{teacher}/test.csv: it does not score every test id; rerun stage 1")
    return rows, train, test


def train_fold_copy(
    settings: Settings, fold: int, run_dir: Path, inputs: Inputs | None = None
) -> dict:
    """Train fold ``fold``'s in-fold copy of the distilled model from its stage-1 teacher; return
    the fold's summary. A finished copy (of any run) is reused."""
    s, run_dir = settings, Path(run_dir)
    check_enabled(s)
    resolved = {"epochs": s.distill_epochs_value, "lr": s.distill_lr_value}

    def train(out, teacher, bert_dir, inputs):
        return _train_fold_copy(s, fold, out, teacher, bert_dir, inputs)

    return train_taught_fold(s, "distill", fold, run_dir, resolved, train, inputs)


def _train_fold_copy(settings, fold, out: Path, teacher: Path, bert_dir: Path, inputs) -> dict:
    s = settings
    keras.utils.set_random_seed(s.training_seed + fold)
    rows, train_scores, test_scores = fold_teacher(s, fold, teacher, bert_dir, inputs)
    train_targets = mixed_targets(s, inputs.train.labels[rows], train_scores)
    write_csv(
        out / TARGETS_FILE,
        pd.DataFrame(
            {
                "kind": ["train"] * len(rows) + ["test"] * len(test_scores),
                "row_or_id": np.concatenate([rows, inputs.test.ids]),
                "teacher": np.concatenate([train_scores, test_scores]),
                "target": np.concatenate([train_targets, test_scores]),
            }
        ),
    )
    ids = [inputs.train_ids[i] for i in rows] + list(inputs.test_ids)
    targets = np.concatenate([train_targets, test_scores]).astype(np.float32)
    layers = s.distill_layers
    return fine_tune(
        s,
        "distill",
        fold,
        out,
        bert_dir,
        inputs,
        ids,
        targets,
        epochs=s.distill_epochs_value,
        lr=s.distill_lr_value,
        note=f"{len(rows)} training rows (label weight {s.distill_label_weight}) + "
        f"{len(test_scores)} test sentences, taught by stage-1 fold {fold}; "
        f"{layers or 'all'} encoder layers",
        layers=layers,
        extra={
            "layers": layers,
            "teacher_val_auc": read_json(teacher / "done.json")["val_auc"],
        },
    )


def read_targets(folder: Path) -> pd.DataFrame:
    """A distilled model's (or in-fold copy's) ``targets.csv``."""
    return pd.read_csv(Path(folder) / TARGETS_FILE)


# ------------------------------------------------------------------ the model for serving


def ensemble_teacher(settings: Settings, run_dir: Path) -> tuple[np.ndarray, pd.DataFrame, Mix]:
    """The served ensemble's scores, by its mix (core.ensembling.mix): out-of-fold per training
    row (in row order), per test sentence (``id, pred``), and the mix."""
    results = Path(run_dir) / "ensemble" / "results.json"
    if not results.is_file():
        raise MissingStageError(
            f"the distilled model learns from the run's ensemble, which has not run "
            f"({results} is missing); run it first: {pipeline_command(run_dir, settings)}"
        )
    mix = served_mix(read_json(results)["headline"])
    means = {s: fold_mean(load_stage(run_dir, s, settings.n_folds, settings)) for s in mix.stages}
    oof = mix({s: m.oof for s, m in means.items()})
    test = mix({s: m.test for s, m in means.items()})
    ids = next(iter(means.values())).test_ids
    return oof, pd.DataFrame({"id": ids, "pred": test}), mix


def fold_copies(settings: Settings, run_dir: Path) -> list[dict]:
    """Every in-fold copy's summary, or MissingStageError naming the first one missing."""
    out = []
    for k in range(settings.n_folds):
        step = steps.ref(settings, "distill", k)
        if not step.done():
            raise MissingStageError(
                f"the distilled model trains as long as its in-fold copies chose to, and fold "
                f"{k}'s is not there; make it first: "
                f"{fold_command('distill', k, run_dir, settings)}"
            )
        steps.link(run_dir, step)
        out.append(read_json(step.marker))
    return out


def train_distilled(settings: Settings, run_dir: Path, inputs: Inputs | None = None) -> dict:
    """Train the run's distilled model on every row (see the module docstring) into its stored
    step, keyed by the served mix it learns from (``core.runs.steps.recipe``), linked as
    ``<run>/distilled/``; return its summary. A finished one of the same key is reused."""
    s, run_dir = settings, Path(run_dir)
    check_enabled(s)
    copies = fold_copies(s, run_dir)
    oof, test_teacher, mix = ensemble_teacher(s, run_dir)
    step = steps.ref(s, steps.DISTILLED, teacher=mix)
    with steps.claim(step, s, teacher=mix):
        if step.done():
            steps.link(run_dir, step)
            print(f"distilled model: already trained ({step.name}), reused")
            return read_json(step.marker)
        steps.link(run_dir, step)
        bert_dir = encoder_dir(s, run_dir)
        inputs = inputs or prepare(s, run_dir)
        return _train_distilled(s, step.dir, bert_dir, inputs, copies, oof, test_teacher, mix)


def _train_distilled(s, out: Path, bert_dir, inputs, copies, oof, test_teacher, mix) -> dict:
    keras.utils.set_random_seed(s.training_seed)
    start = time.time()
    teacher_test = test_teacher.set_index("id")["pred"].reindex(inputs.test.ids).to_numpy()
    train_targets = mixed_targets(s, inputs.train.labels, oof)
    n_train = len(inputs.train_ids)
    write_csv(
        out / TARGETS_FILE,
        pd.DataFrame(
            {
                "kind": ["train"] * n_train + ["test"] * len(teacher_test),
                "row_or_id": np.concatenate([np.arange(n_train), inputs.test.ids]),
                "teacher": np.concatenate([oof, teacher_test]),
                "target": np.concatenate([train_targets, teacher_test]),
            }
        ),
    )
    ids = list(inputs.train_ids) + list(inputs.test_ids)
    targets = np.concatenate([train_targets, teacher_test]).astype(np.float32)
    # The in-fold copies' schedule, stopped where they stopped (their median best epoch).
    planned = s.distill_epochs_value
    epochs = max(1, int(np.ceil(np.median([c["best_epoch"] for c in copies]))))
    seq = training_batches(s, ids, targets, s.training_seed)
    model, choice = fine_tuned_model(
        s, bert_dir, len(seq) * planned, s.distill_lr_value, "bce", s.distill_layers
    )
    print(
        f"distilled model: {n_train} training rows + {len(teacher_test)} test sentences, taught "
        f"by the served ensemble ({mix}); {epochs} of {planned} epochs; {choice}",
        flush=True,
    )
    hparams = {f"distill_{k}": v for k, v in s.stage("distill").items() if v is not None}
    history = model.fit(
        seq.dataset(),
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=[Progress("distilled", epochs), *board_callbacks(out / EVENTS, hparams)],
    )
    save_weights(model, out / "weights.h5")
    test = predict_in_order(model, inputs.test_ids, s.predict_batch_size)
    write_csv(out / "test.csv", pd.DataFrame({"id": inputs.test.ids, "pred": test}))
    write_json(out / "history.json", {k: [float(v) for v in h] for k, h in history.history.items()})
    aucs = [c["val_auc"] for c in copies]
    summary = {
        "layers": s.distill_layers,
        "encoder_layers": encoder_layers(bert_dir),
        "label_weight": s.distill_label_weight,
        "epochs": epochs,
        "planned_epochs": planned,
        "n_train": n_train,
        "n_test": len(teacher_test),
        "teacher_mix": mix.as_dict(),
        "in_fold_auc": aucs,
        "in_fold_auc_mean": float(np.mean(aucs)),
        "in_fold_teacher_auc_mean": float(np.mean([c["teacher_val_auc"] for c in copies])),
        "test_rank_agreement": float(spearmanr(test, teacher_test).statistic),
        "precision": choice.precision,
        "seconds": round(time.time() - start, 1),
    }
    write_json(out / "done.json", summary)  # last: marks the model complete
    return summary
