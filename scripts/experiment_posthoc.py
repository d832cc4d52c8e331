"""Experiment (not part of the pipeline): two post-hoc readings of a finished run's stage-1 folds.

    .venv/bin/python scripts/experiment_posthoc.py outputs/runs/<run> [--folds 2,1] [--draws 8]

For each fold it loads the fold's best weights (``stage1/fold<k>/weights.h5``) and scores the
fold's validation rows three ways beside the model's own prediction:
- ``mc``: the mean of ``--draws`` predictions with dropout on (Monte Carlo dropout);
- ``knn<k>``: the labels of the k training rows (the other folds) nearest in the head's input
  features (``head_concat``, cosine similarity, softmax weights at temperature 0.05);
- ``knn<k>+<a>``: the rank blend ``(1-a)·model + a·knn<k>``.
The blend weights are a fixed grid scored on the fold's own rows, so the best of them is an
optimistic figure: a probe of whether either reading adds anything, not a pipeline step.
"""

from __future__ import annotations

import core  # noqa: F401  (first: selects tf-keras before TensorFlow is imported below)

# isort: split
import argparse

import numpy as np
import tensorflow as tf
from scipy.stats import rankdata
from tensorflow import keras

from core.config import Settings
from core.engine import fold_dir, prepare
from core.generator import pad_batch, plan_batches, predict_in_order
from core.metrics import auc
from core.model import build_model
from core.run import run_settings


def traced(net: keras.Model, training: bool):
    """``net((ids, segments), training=...)`` in one traced graph for any batch shape."""
    spec = tf.TensorSpec([None, None], tf.int32)
    return tf.function(lambda ids, segs: net((ids, segs), training=training), [spec, spec])


def encode(fn, token_ids, batch_size: int = 256) -> np.ndarray:
    """``fn(ids, segments)`` over every row (length-grouped batches), rows in input order."""
    lengths = np.array([len(t) for t in token_ids])
    out = None
    for rows in plan_batches(lengths, batch_size, group_by_length=True):
        ids = pad_batch([token_ids[r] for r in rows])
        values = np.asarray(fn(ids, np.zeros_like(ids))).reshape(len(rows), -1)
        out = np.empty((len(token_ids), values.shape[1])) if out is None else out
        out[rows] = values
    return out


def knn_scores(features, train_rows, valid_rows, labels, k: int, temperature: float = 0.05):
    """Softmax-weighted mean label of each validation row's k nearest training rows."""
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    sim = unit[valid_rows] @ unit[train_rows].T
    nearest = np.argpartition(-sim, k, axis=1)[:, :k]
    weights = np.exp(np.take_along_axis(sim, nearest, 1) / temperature)
    return (weights * labels[train_rows][nearest]).sum(1) / weights.sum(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--folds", default="2,1")
    parser.add_argument("--draws", type=int, default=8)
    args = parser.parse_args()
    run_dir = Settings().run_path(args.run_dir)
    # The run's own encoder and data (a pipeline run with stage 0 records <run>/stage0/bert).
    settings = run_settings(run_dir)
    inputs = prepare(settings, run_dir)
    labels = inputs.train.labels.astype(float)
    for fold in (int(f) for f in args.folds.split(",")):
        train_rows = np.flatnonzero(inputs.folds != fold)
        valid_rows = np.flatnonzero(inputs.folds == fold)
        keras.utils.set_random_seed(fold)  # the dropout draws of ``mc``
        model = build_model(settings.bert_dir, jit_compile=False)
        model.load_weights(str(fold_dir(run_dir, "stage1", fold) / "weights.h5"))
        valid_ids = [inputs.train_ids[i] for i in valid_rows]
        y = labels[valid_rows]
        base = predict_in_order(model, valid_ids)
        scores = {"model": auc(y, base)}

        dropout_on = traced(model, training=True)
        draws = [encode(dropout_on, valid_ids)[:, 0] for _ in range(args.draws)]
        scores["mc"] = auc(y, np.mean(draws, axis=0))

        head_input = keras.Model(model.inputs, model.get_layer("head_concat").output)
        features = encode(traced(head_input, training=False), inputs.train_ids)
        for k in (5, 10, 20, 50):
            knn = knn_scores(features, train_rows, valid_rows, labels, k)
            scores[f"knn{k}"] = auc(y, knn)
            for a in (0.1, 0.2, 0.3):
                scores[f"knn{k}+{a}"] = auc(y, (1 - a) * rankdata(base) + a * rankdata(knn))
        print(f"fold {fold}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()), flush=True)


if __name__ == "__main__":
    main()
