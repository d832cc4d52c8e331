"""The fold loop: train one fold of one stage, keep its best epoch, write its predictions.

Stage 1 fine-tunes encoder + head. Stage 2 freezes the encoder, so it computes the encoder's
outputs once per fold and trains only the head on them (the same model, far less work).

A fold is a stored step (core.runs.steps): computed once under its key's lock, linked into every
run that uses it. Its ``done.json`` is written last, after every other file of the fold was
renamed into place, so a killed run never leaves a fold that looks finished.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tensorflow import keras

import core  # noqa: F401  (selects tf-keras before TensorFlow loads)
from core.config import Settings
from core.data.batches import BatchSequence, plan_batches, predict_in_order
from core.data.reviews import Dataset, read_labelled, read_unlabelled
from core.data.tokenizer import CharTokenizer, load_vocab
from core.io import read_json, save_weights, write_csv, write_json
from core.metrics import auc
from core.model.classifier import build_head_model, build_model, copy_head_weights
from core.model.optimizer import learning_rate
from core.model.precision import choose
from core.model.strategy import get_strategy
from core.runs import steps
from core.runs.folder import (
    MissingStageError,
    check_upstream,
    encoder_dir,
    fold_command,
    open_run,
    open_stage,
)
from core.runs.steps import fold_dir
from core.training.board import EVENTS, board_callbacks


class TrainingDivergedError(FloatingPointError):
    """A fold's predictions are NaN or outside [0, 1]; nothing of the fold was written."""


@dataclass
class Inputs:
    """Everything a fold reads: both files, their token ids, and the fold of every train row."""

    train: Dataset
    test: Dataset
    train_ids: list[np.ndarray]
    test_ids: list[np.ndarray]
    folds: np.ndarray
    unk_rate: float
    n_truncated: int


def prepare(settings: Settings, run_dir: Path) -> Inputs:
    """Read and tokenize the data, open (or check) the run folder and its folds."""
    train = read_labelled(settings.train_path)
    test = read_unlabelled(settings.test_path)
    tokenizer = CharTokenizer(load_vocab(settings.bert_dir), maxlen=settings.maxlen)
    folds = open_run(run_dir, settings, train.ids)
    texts = train.texts + test.texts
    return Inputs(
        train=train,
        test=test,
        train_ids=tokenizer.encode_all(train.texts),
        test_ids=tokenizer.encode_all(test.texts),
        folds=folds,
        unk_rate=tokenizer.unk_rate(texts),
        n_truncated=tokenizer.n_truncated(texts),
    )


class ValidationAUC(keras.callbacks.Callback):
    """Early stopping and best checkpoint on validation AUC (the competition metric)."""

    def __init__(self, predict, labels, save, patience: int):
        super().__init__()
        self.predict, self.labels, self.save, self.patience = predict, labels, save, patience
        self.best, self.best_epoch, self.wait = -np.inf, -1, 0

    def on_epoch_end(self, epoch, logs=None):
        score = auc(self.labels, self.predict())
        logs = logs if logs is not None else {}
        logs["val_auc"] = score
        if score > self.best:
            self.best, self.best_epoch, self.wait = score, epoch, 0
            self.save()
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.model.stop_training = True
        print(
            f"  epoch {epoch + 1}: loss {logs.get('loss', float('nan')):.4f}  val AUC {score:.4f}"
            f"{'  (best)' if self.best_epoch == epoch else ''}",
            flush=True,
        )


class Progress(keras.callbacks.Callback):
    """One line per tenth of an epoch: papermill's log shows training moving, not a frozen cell."""

    def __init__(self, label: str, epochs: int):
        super().__init__()
        self.label, self.epochs = label, epochs

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.start = epoch, time.time()

    def on_train_batch_end(self, batch, logs=None):
        n_batches = self.params.get("steps") or 1
        if (batch + 1) % max(1, n_batches // 10) == 0 or batch + 1 == n_batches:
            rate = (batch + 1) / max(time.time() - self.start, 1e-9)
            print(
                f"  [{self.label}] epoch {self.epoch + 1}/{self.epochs} batch {batch + 1}/"
                f"{n_batches}"
                f"  loss {logs.get('loss', float('nan')):.4f}  {rate:.1f} batch/s",
                file=sys.stderr,
                flush=True,
            )


def reuse(step: steps.Step, run_dir: Path) -> dict | None:
    """The stored fold's summary if it is done (by any run), linked into ``run_dir``."""
    if not step.done():
        return None
    steps.link(run_dir, step)
    print(f"{step.label}: already computed ({step.name}), reused")
    return read_json(step.marker)


def finish(stage, fold, out, inputs: Inputs, oof, test, check, history, start, extra=None) -> dict:
    """Check the best epoch's predictions, then write the fold (``done.json`` last); ``extra``
    adds to its summary."""
    oof = _check_predictions(f"{stage} fold {fold} validation", oof)
    test = _check_predictions(f"{stage} fold {fold} test", test)
    valid = np.flatnonzero(inputs.folds == fold)
    summary = {
        "stage": stage,
        "fold": fold,
        "val_auc": auc(inputs.train.labels[valid], oof),
        "best_epoch": check.best_epoch + 1,
        "epochs_run": len(history.history["loss"]),
        "seconds": round(time.time() - start, 1),
        "n_train": int(len(inputs.folds) - len(valid)),
        "n_valid": int(len(valid)),
        **(extra or {}),
    }
    return _write_fold(out, inputs, fold, oof, test, _history(history), summary)


def _write_fold(out: Path, inputs: Inputs, fold: int, oof, test, history: dict, summary: dict):
    valid = np.flatnonzero(inputs.folds == fold)
    write_csv(
        out / "oof.csv",
        pd.DataFrame(
            {
                "row": valid,
                "id": inputs.train.ids[valid],
                "label": inputs.train.labels[valid],
                "pred": oof,
            }
        ),
    )
    write_csv(out / "test.csv", pd.DataFrame({"id": inputs.test.ids, "pred": test}))
    write_json(out / "history.json", history)
    write_json(out / "done.json", summary)  # last: marks the fold complete
    return summary


def _check_predictions(name: str, preds: np.ndarray) -> np.ndarray:
    bad = ~np.isfinite(preds) | (preds < 0) | (preds > 1)
    if bad.any():
        raise TrainingDivergedError(
            f"{name}: {int(bad.sum())} predictions are NaN or outside [0, 1] (first at row "
            f"{int(np.flatnonzero(bad)[0])}); training diverged — lower the learning rate. "
            "Nothing was written for this fold."
        )
    return preds


def train_stage1(
    settings: Settings,
    fold: int,
    run_dir: Path,
    inputs: Inputs | None = None,
) -> dict:
    """Fine-tune encoder + head (``settings.stage1_*``) on every fold but ``fold``; return the
    fold's summary."""
    s, run_dir = settings, Path(run_dir)
    step = steps.ref(settings, "stage1", fold)
    bert_dir = encoder_dir(settings, run_dir)  # stops with the command that makes stage 0
    open_stage(run_dir / "stage1", {**s.stage("stage1"), "train_seed": s.training_seed})
    link_stage0(settings, run_dir)
    with steps.claim(step, settings):
        if done := reuse(step, run_dir):
            return done
        steps.link(run_dir, step)  # the fold shows in the run while it trains
        return _train_stage1(settings, fold, step.dir, bert_dir, inputs or prepare(s, run_dir))


def train_taught_fold(
    settings: Settings, section: str, fold: int, run_dir: Path, resolved: dict, train, inputs=None
) -> dict:
    """Fold ``fold`` of a stage that stage-1 fold ``fold`` teaches (the students, the distilled
    model's in-fold copies): check the teacher is there, open the stage (its settings with
    ``resolved`` ones), then reuse the stored fold or ``train(out, teacher_dir, bert_dir,
    inputs)`` under its lock; return the fold's summary."""
    s, run_dir = settings, Path(run_dir)
    step = steps.ref(s, section, fold)
    teacher = steps.ref(s, "stage1", fold)
    if not teacher.done():
        raise MissingStageError(
            f"{section} fold {fold} needs stage 1's fold {fold} (its teacher), which is not there "
            f"(or did not finish). Make it first: {fold_command('stage1', fold, run_dir, s)}"
        )
    check_upstream(teacher, fold_command("stage1", fold, run_dir, s))
    bert_dir = encoder_dir(s, run_dir)
    open_stage(run_dir / section, {**s.stage(section), **resolved})
    link_stage0(s, run_dir)
    steps.link(run_dir, teacher)  # the ensemble reads the teacher's stage too
    with steps.claim(step, s):
        if done := reuse(step, run_dir):
            return done
        steps.link(run_dir, step)
        return train(step.dir, teacher.dir, bert_dir, inputs or prepare(s, run_dir))


def link_stage0(settings: Settings, run_dir: Path) -> None:
    if settings.uses_stage0:
        steps.link(run_dir, steps.ref(settings, "stage0"))


def _train_stage1(settings, fold, out: Path, bert_dir: Path, inputs: Inputs) -> dict:
    s = settings
    keras.utils.set_random_seed(settings.training_seed + fold)
    train_rows = np.flatnonzero(inputs.folds != fold)
    valid_rows = np.flatnonzero(inputs.folds == fold)
    return fine_tune(
        s,
        "stage1",
        fold,
        out,
        bert_dir,
        inputs,
        [inputs.train_ids[i] for i in train_rows],
        inputs.train.labels[train_rows],
        epochs=s.stage1_epochs,
        lr=s.stage1_lr,
        note=f"{len(train_rows)} train rows, {len(valid_rows)} validation rows",
    )


def training_batches(settings: Settings, train_ids: list, targets: np.ndarray, seed: int):
    """Stage 1's batching (shuffled, grouped by length) of ``train_ids`` / ``targets``."""
    s = settings
    return BatchSequence(
        train_ids,
        targets,
        s.stage1_batch_size,
        shuffle=True,
        seed=seed,
        group_by_length=s.stage1_group_by_length,
        pad_multiple=s.stage1_pad_multiple,
    )


def fine_tuned_model(
    settings: Settings, bert_dir: Path, n_steps: int, lr: float, loss: str, layers=None
):
    """Encoder + head compiled as stage 1 fine-tunes it (its schedule over ``n_steps``, its
    precision, compiler and strategy); returns the model and the precision choice."""
    s = settings
    schedule = learning_rate(lr, s.stage1_schedule, n_steps, s.stage1_warmup)
    choice = choose(s.precision, s.stage1_jit_compile)  # auto: what this hardware runs fastest
    with get_strategy(s.stage1_strategy).scope():
        model = build_model(
            bert_dir,
            loss=loss,
            lr=schedule,
            jit_compile=choice.jit_compile,
            layer_decay=s.stage1_layer_decay,
            precision=choice.precision,
            layers=layers,
        )
    return model, choice


def fine_tune(
    settings: Settings,
    section: str,
    fold: int,
    out: Path,
    bert_dir: Path,
    inputs: Inputs,
    train_ids: list,
    targets: np.ndarray,
    *,
    epochs: int,
    lr: float,
    note: str,
    loss: str = "bce",
    layers: int | None = None,
    extra: dict | None = None,
) -> dict:
    """Fine-tune encoder + head on ``train_ids`` / ``targets`` with stage 1's batching, schedule,
    precision and strategy, keeping the epoch best on fold ``fold``; write the fold to ``out``
    and return its summary (stage 1, the students and the distilled models' in-fold copies)."""
    s = settings
    valid_rows = np.flatnonzero(inputs.folds == fold)
    valid_ids = [inputs.train_ids[i] for i in valid_rows]
    train_seq = training_batches(s, train_ids, targets, s.training_seed + fold)
    model, choice = fine_tuned_model(s, bert_dir, len(train_seq) * epochs, lr, loss, layers)
    weights = out / "weights.h5"

    def predict_valid():
        return predict_in_order(model, valid_ids, s.predict_batch_size)

    check = ValidationAUC(
        predict_valid,
        inputs.train.labels[valid_rows],
        lambda: save_weights(model, weights),
        s.stage1_patience,
    )
    start = time.time()
    print(f"{section} fold {fold}: {note}")
    if s.precision != "float32":
        print(f"{section} fold {fold}: {choice}")
    history = model.fit(
        train_seq.dataset(),
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=[
            Progress(f"{section} fold {fold}", epochs),
            check,
            *board_callbacks(out / EVENTS, steps.hparams(s, section, fold)),
        ],
    )
    model.load_weights(str(weights))
    test = predict_in_order(model, inputs.test_ids, s.predict_batch_size)
    return finish(section, fold, out, inputs, predict_valid(), test, check, history, start, extra)


def encode(
    encoder: keras.Model, token_ids: list[np.ndarray], width: int, batch_size: int
) -> np.ndarray:
    """Encoder outputs of every row, shape (n, width, hidden), padding positions exactly zero."""
    hidden = encoder.output_shape[-1]
    feats = np.zeros((len(token_ids), width, hidden), dtype=np.float32)
    lengths = np.array([len(t) for t in token_ids])
    for rows in plan_batches(lengths, batch_size, group_by_length=True):
        w = int(lengths[rows].max())
        ids = np.zeros((len(rows), w), dtype=np.int32)
        for r, row in enumerate(rows):
            ids[r, : lengths[row]] = token_ids[row]
        out = encoder((ids, np.zeros_like(ids)), training=False).numpy()
        feats[rows, :w] = out * (ids != 0)[:, :, None]  # zero padding so Masking(0) finds it
    return feats


def train_stage2(
    settings: Settings,
    fold: int,
    run_dir: Path,
    inputs: Inputs | None = None,
) -> dict:
    """Freeze the stage-1 encoder of ``fold`` and train its head (``settings.stage2_*``) on
    cached outputs."""
    s, run_dir = settings, Path(run_dir)
    step = steps.ref(settings, "stage2", fold)
    stage1 = steps.ref(settings, "stage1", fold)
    if not stage1.done():
        weights = fold_dir(run_dir, "stage1", fold) / "weights.h5"
        raise MissingStageError(
            f"stage 2 fold {fold} needs the stage-1 weights {weights}, which are not there (or "
            f"that fold did not finish). Make them first: "
            f"{fold_command('stage1', fold, run_dir, settings)}"
        )
    check_upstream(stage1, fold_command("stage1", fold, run_dir, settings), ["weights.h5"])
    bert_dir = encoder_dir(settings, run_dir)
    open_stage(run_dir / "stage2", s.stage("stage2"))
    link_stage0(settings, run_dir)
    steps.link(run_dir, stage1)  # the run's ensemble reads both stages of the fold
    with steps.claim(step, settings):
        if done := reuse(step, run_dir):
            return done
        steps.link(run_dir, step)
        inputs = inputs or prepare(s, run_dir)
        return _train_stage2(settings, fold, step.dir, stage1.dir, bert_dir, inputs)


def _train_stage2(settings, fold, out: Path, stage1: Path, bert_dir: Path, inputs) -> dict:
    s = settings
    keras.utils.set_random_seed(settings.training_seed + fold)
    start = time.time()

    precision = choose(s.precision, False).precision  # the encoder pass; heads train in float32
    full = build_model(bert_dir, bert_trainable=False, precision=precision)
    full.load_weights(str(stage1 / "weights.h5"))
    encoder = keras.Model(full.inputs, full.get_layer("head_avg").input)
    width = settings.maxlen + 2
    print(
        f"stage2 fold {fold}: encoding {len(inputs.train_ids)} train and "
        f"{len(inputs.test_ids)} test rows once (the encoder is frozen)",
        flush=True,
    )
    train_x = encode(encoder, inputs.train_ids, width, settings.predict_batch_size)
    test_x = encode(encoder, inputs.test_ids, width, settings.predict_batch_size)

    head = build_head_model(train_x.shape[-1], loss=s.stage2_loss, lr=s.stage2_lr)
    copy_head_weights(full, head)
    train_rows = np.flatnonzero(inputs.folds != fold)
    valid_rows = np.flatnonzero(inputs.folds == fold)
    labels = inputs.train.labels.astype(np.float32)
    weights = out / "head.h5"

    def predict_valid():
        return head.predict(
            train_x[valid_rows], batch_size=settings.predict_batch_size, verbose=0
        ).reshape(-1)

    check = ValidationAUC(
        predict_valid, labels[valid_rows], lambda: save_weights(head, weights), s.stage2_patience
    )
    # The stage-1 head is epoch 0: stage 2 keeps it unless an epoch beats it on validation AUC.
    check.best, check.best_epoch = auc(labels[valid_rows], predict_valid()), -1
    save_weights(head, weights)
    print(f"  epoch 0 (stage-1 head): val AUC {check.best:.4f}", flush=True)
    # shuffle=True here is seeded: set_random_seed above fixed TensorFlow's global seed.
    history = head.fit(
        train_x[train_rows],
        labels[train_rows, None],
        batch_size=s.stage2_batch_size,
        epochs=s.stage2_epochs,
        shuffle=True,
        verbose=0,
        callbacks=[check, *board_callbacks(out / EVENTS, steps.hparams(settings, "stage2", fold))],
    )
    head.load_weights(str(weights))
    test = head.predict(test_x, batch_size=settings.predict_batch_size, verbose=0).reshape(-1)
    return finish("stage2", fold, out, inputs, predict_valid(), test, check, history, start)


def _history(history) -> dict:
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}
