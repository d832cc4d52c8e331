"""Batches of variable-length token ids for ``model.fit`` / ``model.predict``.

Each batch is padded only to its own longest row; grouping rows of similar length keeps that
padding small. Give ``model.fit(seq.dataset(), shuffle=False)``: the sequence shuffles itself
reproducibly, whereas tf-keras's own ``shuffle=True`` reorders batches with Python's unseeded
``random``.
"""

from __future__ import annotations

import numpy as np

# tf-keras, not Keras 3: core/__init__ (run before any core.* module) sets TF_USE_LEGACY_KERAS.
import tensorflow as tf
from tensorflow import keras

CHUNK_BATCHES = 50  # length-sorting window, in batches: wide enough to group, narrow enough to mix


def plan_batches(
    lengths,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    group_by_length: bool = False,
) -> list[np.ndarray]:
    """Split row indices ``0..n-1`` into batches; every row exactly once, last batch may be short.

    ``shuffle`` permutes rows with ``default_rng((seed, epoch))``. ``group_by_length`` sorts by
    length within windows of ``CHUNK_BATCHES`` batches (the whole set when not shuffling), cuts
    batches, then (if shuffling) shuffles the batch order so lengths do not rise through an epoch.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size={batch_size!r}: expected an integer >= 1")
    batch_size, lengths = int(batch_size), np.asarray(lengths)
    n = len(lengths)
    rng = np.random.default_rng((seed, epoch)) if shuffle else None
    order = rng.permutation(n) if shuffle else np.arange(n)
    if group_by_length and n:
        window = batch_size * CHUNK_BATCHES if shuffle else n
        chunks = [order[i : i + window] for i in range(0, n, window)]
        order = np.concatenate([c[np.argsort(lengths[c], kind="stable")] for c in chunks])
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if shuffle and group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


class BatchSequence(keras.utils.Sequence):
    """Padded batches ``((token_ids, segment_ids), y)``, or ``((token_ids, segment_ids),)``.

    The inputs are a tuple, not a list: without labels tf-keras 2.21 re-packs a list ``x`` as
    ``(ids, segs)`` (``isinstance(x, tuple or list)`` in ``pack_x_y_sample_weight``) and then
    reads it as ``(x=ids, y=segs)``, even inside a 1-tuple. Ids are int32, padded with 0 to the
    batch's longest row; segment ids are all 0; ``y`` is float32 of shape (n, 1), or (n, c) for
    labels given as c columns.
    """

    def __init__(
        self,
        token_ids: list[np.ndarray],
        labels=None,
        batch_size: int = 16,
        shuffle: bool = False,
        seed: int = 0,
        group_by_length: bool = False,
        pad_multiple: int = 1,
    ):
        super().__init__()
        self.pad_multiple = int(pad_multiple)
        if len(token_ids) == 0:
            raise ValueError("token_ids: expected at least one row, found none")
        self.token_ids = [np.asarray(t, dtype=np.int32) for t in token_ids]
        self.lengths = np.array([len(t) for t in self.token_ids])
        self.labels = None
        if labels is not None:
            labels = np.asarray(labels, dtype=np.float32)
            # One column per row, or several (core.model.losses.weighted_bce: target, weight).
            self.labels = labels.reshape(-1, 1) if labels.ndim < 2 else labels
            if len(self.labels) != len(self.token_ids):
                n, m = len(self.token_ids), len(self.labels)
                raise ValueError(f"labels: expected one per row ({n}), found {m}")
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = seed
        self.group_by_length = group_by_length
        self.epoch = 0
        self._replan()

    def _replan(self) -> None:
        self.batches = plan_batches(
            self.lengths, self.batch_size, self.shuffle, self.seed, self.epoch, self.group_by_length
        )
        self.order = np.concatenate(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        if not 0 <= i < len(self.batches):
            raise IndexError(f"batch {i} out of range 0..{len(self.batches) - 1}")
        rows = self.batches[i]
        ids = pad_batch([self.token_ids[row] for row in rows], self.pad_multiple)
        x = (ids, np.zeros_like(ids))
        return (x,) if self.labels is None else (x, self.labels[rows])

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._replan()

    def dataset(self) -> tf.data.Dataset:
        """These batches as a ``tf.data.Dataset`` for ``model.fit``: one pass per epoch, the
        plan redrawn (reshuffled) after each pass, the next batch prepared during a step.

        tf.data's autotuning is switched off: with it on, as when tf-keras wraps a Sequence
        itself (and recreates its iterator every epoch), deleting the iterator waits for the
        autotuner, which stalled every epoch's end (figures: docs/experiments.md, throughput).
        """

        def one_epoch():
            for i in range(len(self)):
                yield self[i]
            self.on_epoch_end()

        ids = tf.TensorSpec((None, None), tf.int32)
        spec = ((ids, ids),)
        if self.labels is not None:
            spec += (tf.TensorSpec((None, self.labels.shape[1]), tf.float32),)
        options = tf.data.Options()
        options.autotune.enabled = False
        batches = tf.data.Dataset.from_generator(one_epoch, output_signature=spec)
        # A known length lets Keras count the steps of the first epoch too.
        batches = batches.apply(tf.data.experimental.assert_cardinality(len(self)))
        return batches.prefetch(1).with_options(options)


def pad_batch(rows: list[np.ndarray], multiple: int = 1) -> np.ndarray:
    """int32 matrix of ``rows`` padded with 0 to the longest, rounded up to ``multiple``."""
    longest = max(len(r) for r in rows)
    ids = np.zeros((len(rows), -(-longest // multiple) * multiple), dtype=np.int32)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    return ids


def inference_function(model):
    """``model`` called in one traced graph for any batch shape, without XLA.

    ``model.predict`` would reuse the model's ``jit_compile`` setting, and XLA compiles once per
    input shape; for one pass over a few thousand rows that costs more than it saves.
    """
    fn = getattr(model, "_plain_inference", None)
    if fn is None:
        spec = tf.TensorSpec([None, None], tf.int32)
        fn = tf.function(
            lambda ids, segs: model((ids, segs), training=False), input_signature=[spec, spec]
        )
        model._plain_inference = fn
    return fn


def predict_in_order(
    model, token_ids, batch_size: int = 256, group_by_length: bool = True
) -> np.ndarray:
    """Predict with length-grouped, unshuffled batches; return shape (n,) in original row order."""
    lengths = np.array([len(t) for t in token_ids])
    run = inference_function(model)
    out = np.empty(len(token_ids), dtype=np.float64)
    for rows in plan_batches(lengths, batch_size, group_by_length=group_by_length):
        ids = pad_batch([token_ids[r] for r in rows])
        preds = np.asarray(run(ids, np.zeros_like(ids)))
        if preds.size != len(rows):
            raise ValueError(
                f"model output: expected one value per row ({len(rows)}), found {preds.shape}"
            )
        out[rows] = preds.reshape(-1)
    return out
