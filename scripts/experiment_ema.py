"""Experiment (not part of the pipeline): would an exponential moving average (EMA) of stage 1's
weights score better than the weights themselves?

    .venv/bin/python scripts/experiment_ema.py outputs/runs/<run> --fold 2 [--momenta 0.98,0.99]

Retrains fold ``--fold`` of the run's stage 1 with the run's own data, encoder and stage-1
parameters (``run.json``, ``stage1/params.json``) into ``outputs/exp/ema/<run name>``, so the
training trajectory is the run's (its epochs' validation AUCs repeat the run's ``history.json``).
After every step it updates one EMA of all weights per momentum; after every epoch it prints the
validation AUC of the weights and of each EMA. Nothing else changes, so the comparison is paired.
"""

from __future__ import annotations

import core  # noqa: F401  (first: selects tf-keras before TensorFlow is imported below)

# isort: split
import argparse
import shutil

import numpy as np
import tensorflow as tf
from tensorflow import keras

from core.config import Settings
from core.engine import fold_dir, fold_done, prepare, train_stage1
from core.generator import predict_in_order
from core.metrics import auc
from core.run import run_settings


class EMAProbe(keras.callbacks.Callback):
    """Per-step EMAs of the model's weights, scored on the validation rows after every epoch."""

    def __init__(self, momenta, valid_ids, labels):
        super().__init__()
        self.momenta, self.valid_ids, self.labels = momenta, valid_ids, labels

    def on_train_begin(self, logs=None):
        weights = self.model.weights
        averages = {m: [tf.Variable(w, trainable=False) for w in weights] for m in self.momenta}

        @tf.function
        def update():
            for m, copies in averages.items():
                for avg, w in zip(copies, weights, strict=True):
                    avg.assign(m * avg + (1 - m) * w)

        self.averages, self.update = averages, update

    def on_train_batch_end(self, batch, logs=None):
        self.update()

    def on_epoch_end(self, epoch, logs=None):
        weights = self.model.weights
        kept = [w.numpy() for w in weights]
        scores = {"weights": self._score()}
        for m, copies in self.averages.items():
            for avg, w in zip(copies, weights, strict=True):
                w.assign(avg)
            scores[f"ema {m}"] = self._score()
        for value, w in zip(kept, weights, strict=True):  # back to the trained weights
            w.assign(value)
        print(f"epoch {epoch + 1}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()),
              flush=True)  # fmt: skip

    def _score(self) -> float:
        return auc(self.labels, predict_in_order(self.model, self.valid_ids))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--fold", type=int, default=2)
    parser.add_argument("--momenta", default="0.98,0.99,0.995")
    args = parser.parse_args()
    run_dir = Settings().run_path(args.run_dir)
    settings = run_settings(run_dir, "stage1")
    scratch = settings.run_path(f"outputs/exp/ema/{run_dir.name}")
    inputs = prepare(settings, scratch)
    valid = np.flatnonzero(inputs.folds == args.fold)
    probe = EMAProbe([float(m) for m in args.momenta.split(",")],
                     [inputs.train_ids[i] for i in valid], inputs.train.labels[valid])  # fmt: skip
    shutil.rmtree(fold_dir(scratch, "stage1", args.fold), ignore_errors=True)  # else: skipped
    summary = train_stage1(settings, args.fold, scratch, inputs, callbacks=[probe])
    before = fold_done(run_dir, "stage1", args.fold)["val_auc"]
    print(f"fold {args.fold}: best epoch {summary['best_epoch']}, val AUC "
          f"{summary['val_auc']:.4f} (the run's own: {before:.4f})")  # fmt: skip


if __name__ == "__main__":
    main()
