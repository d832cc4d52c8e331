"""Experiment (not part of the pipeline): does adversarial training on the token embeddings (FGM,
Miyato et al. 2017, "Adversarial Training Methods for Semi-Supervised Text Classification")
improve stage 1?

    .venv/bin/python scripts/experiment_adversarial.py outputs/runs/<run> --folds 2 \
        [--epsilon 1.0] [--epochs 3]

Retrains the listed folds of the run's stage 1 with the run's own data, encoder and stage-1
parameters (``run.json``, ``stage1/params.json``; ``--epochs`` may change the number of epochs)
into ``outputs/exp/fgm-<epsilon>-e<epochs>/<run name>``. Every training step adds a second
forward and backward pass: the token-embedding table is moved by ``epsilon`` along its loss
gradient (normalised to length 1), the loss is computed again, and Adam applies the sum of both
passes' gradients to the restored table. A step therefore costs about two.
"""

from __future__ import annotations

import core  # noqa: F401  (first: selects tf-keras before TensorFlow is imported below)

# isort: split
import argparse
import dataclasses
import shutil
import types

import tensorflow as tf
from tensorflow import keras

import core.engine
from core.config import Settings
from core.engine import fold_dir, fold_done, prepare, train_stage1
from core.run import run_settings


def fgm_train_step(self, data):
    """One training step with an FGM pass on the token embeddings (see the module docstring)."""
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    variables = self.trainable_variables
    table = self.get_layer("Embedding-Token").embeddings
    at = [v.ref() for v in variables].index(table.ref())

    def gradients():
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x, y, y_pred, sample_weight)
        # Dense (the embedding tables' gradients are IndexedSlices): normed and summed below.
        return [tf.convert_to_tensor(g) for g in tape.gradient(loss, variables)], y_pred

    grads, y_pred = gradients()
    delta = self.fgm_epsilon * grads[at] / (tf.norm(grads[at]) + 1e-12)
    table.assign_add(delta)
    adversarial, _ = gradients()
    table.assign_sub(delta)
    self.optimizer.apply_gradients(
        zip([g + a for g, a in zip(grads, adversarial, strict=True)], variables, strict=True)
    )
    return self.compute_metrics(x, y, y_pred, sample_weight)


def with_fgm(build, epsilon: float):
    """``build_model`` whose models train with ``fgm_train_step`` at ``epsilon``."""

    def build_fgm(*args, **kwargs):
        model = build(*args, **kwargs)
        model.fgm_epsilon = float(epsilon)
        model.train_step = types.MethodType(fgm_train_step, model)
        return model

    return build_fgm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--folds", default="2", help="comma-separated, e.g. 0,1,2,3,4")
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=None, help="default: the run's")
    args = parser.parse_args()
    run_dir = Settings().run_path(args.run_dir)
    settings = run_settings(run_dir, "stage1")
    if args.epochs is not None:
        settings = dataclasses.replace(settings, epochs=args.epochs)
    name = f"fgm-{args.epsilon:g}-e{settings.epochs}"
    scratch = settings.run_path(f"outputs/exp/{name}/{run_dir.name}")
    inputs = prepare(settings, scratch)
    core.engine.build_model = with_fgm(core.engine.build_model, args.epsilon)
    for fold in (int(f) for f in args.folds.split(",")):
        shutil.rmtree(fold_dir(scratch, "stage1", fold), ignore_errors=True)  # else: skipped
        summary = train_stage1(settings, fold, scratch, inputs)
        before = fold_done(run_dir, "stage1", fold)["val_auc"]
        print(f"{name} fold {fold}: best epoch {summary['best_epoch']}, val AUC "
              f"{summary['val_auc']:.4f} (the run's own: {before:.4f}), "
              f"{summary['seconds']:.0f} s", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
