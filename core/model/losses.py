"""Training losses: binary cross-entropy (plain, and weighted per row), soft-F1 and a pairwise
AUC surrogate."""

from __future__ import annotations

import tensorflow as tf

import core  # noqa: F401  (selects tf-keras before TensorFlow loads)

EPSILON = 1e-7


def bce(y_true, y_pred):
    """Mean binary cross-entropy on probabilities."""
    return tf.reduce_mean(tf.keras.losses.binary_crossentropy(y_true, y_pred))


def weighted_bce(y_true, y_pred):
    """Mean over the batch of ``weight · BCE(target, p)``; ``y_true`` holds ``(target, weight)``
    per row (the students' pseudo-labelled rows weigh ``students_weight``, labelled rows 1), or
    the target alone (weight 1: ``bce``). The weight rides in ``y_true`` because a loss returning
    the batch mean cannot take Keras' per-row ``sample_weight``."""
    y_true = tf.cast(y_true, y_pred.dtype)
    if y_true.shape[-1] != 2:
        return bce(y_true, y_pred)
    target, weight = y_true[:, :1], y_true[:, 1]
    return tf.reduce_mean(weight * tf.keras.losses.binary_crossentropy(target, y_pred))


def soft_f1(y_true, y_pred):
    """``1 - 2·Σ(y·p) / (Σy + Σp + ε)`` over the batch.

    The reference added ε outside the fraction (``1 - 2·Σyp/(Σy+Σp) + ε``), which divides by
    zero on a batch without positives and predictions near 0; here ε sits in the denominator.
    """
    y = tf.cast(tf.reshape(y_true, [-1]), y_pred.dtype)
    p = tf.reshape(y_pred, [-1])
    return 1.0 - 2.0 * tf.reduce_sum(y * p) / (tf.reduce_sum(y) + tf.reduce_sum(p) + EPSILON)


def pairwise_auc(y_true, y_pred, margin: float = 1.0):
    """Differentiable AUC surrogate: mean softplus of negative-minus-positive logit gaps.

    Each (positive, negative) pair in the batch costs ``log(1 + exp(margin·(z_neg - z_pos)))``;
    AUC is the fraction of pairs ranked right, so pushing every gap positive raises it. A batch
    with no pair contributes zero.
    """
    y = tf.reshape(tf.cast(y_true, tf.float32), [-1])
    p = tf.clip_by_value(tf.reshape(tf.cast(y_pred, tf.float32), [-1]), EPSILON, 1 - EPSILON)
    z = tf.math.log(p) - tf.math.log1p(-p)  # back to logits: the sigmoid saturates too early
    gaps = z[None, :] - z[:, None]  # gaps[i, j] = z_j - z_i
    pairs = y[:, None] * (1.0 - y[None, :])  # i positive, j negative
    n = tf.reduce_sum(pairs)
    total = tf.reduce_sum(pairs * tf.nn.softplus(margin * gaps))
    return tf.math.divide_no_nan(total, n)


LOSSES = {
    "bce": bce,
    "weighted_bce": weighted_bce,
    "soft_f1": soft_f1,
    "pairwise_auc": pairwise_auc,
}


def get_loss(name: str):
    """Look a loss up by name; an unknown name lists the known ones."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"loss {name!r}: expected one of {sorted(LOSSES)}") from None
