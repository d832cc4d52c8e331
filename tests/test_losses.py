"""core.model.losses: bce, soft-F1 and the pairwise AUC surrogate against hand-computed values,
their edge cases, gradients, and look-up by name."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from core.model.losses import LOSSES, bce, get_loss, pairwise_auc, soft_f1


def col(values, dtype=tf.float32):
    """A (n, 1) column, the shape Keras hands a loss for a Dense(1) output."""
    return tf.constant(np.asarray(values, dtype=np.float64).reshape(-1, 1), dtype=dtype)


def sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z))


def softplus(x):
    return math.log1p(math.exp(x))


# ------------------------------------------------------------------ bce


def test_bce_hand_computed():
    # -mean(y·ln p + (1-y)·ln(1-p)) for y = [1, 0, 1], p = [0.8, 0.3, 0.5]
    expected = -(math.log(0.8) + math.log(0.7) + math.log(0.5)) / 3
    got = float(bce(col([1, 0, 1]), col([0.8, 0.3, 0.5])))
    assert got == pytest.approx(expected, abs=1e-6)


def test_bce_is_a_scalar_mean_over_rows():
    y, p = col([1, 0, 0, 1]), col([0.9, 0.1, 0.4, 0.6])
    loss = bce(y, p)
    assert loss.shape == ()
    rows = [-math.log(0.9), -math.log(0.9), -math.log(0.6), -math.log(0.6)]
    assert float(loss) == pytest.approx(sum(rows) / 4, abs=1e-6)


# ------------------------------------------------------------------ soft F1


@pytest.mark.parametrize(
    "y, p, expected",
    [
        # Σyp = 0.9 + 0.6 = 1.5, Σy = 2, Σp = 1.8 -> 1 - 3 / 3.8
        ([1, 0, 1, 0], [0.9, 0.2, 0.6, 0.1], 1 - 3 / 3.8),
        # Σyp = 1.0, Σy = 2, Σp = 1.5 -> 1 - 2 / 3.5
        ([1, 1, 0], [0.5, 0.5, 0.5], 1 - 2 / 3.5),
        # Σyp = 0.25, Σy = 1, Σp = 0.25 + 0.75 -> 1 - 0.5 / 2
        ([0, 1], [0.75, 0.25], 1 - 0.5 / 2),
    ],
)
def test_soft_f1_hand_computed(y, p, expected):
    assert float(soft_f1(col(y), col(p))) == pytest.approx(expected, abs=1e-6)


def test_soft_f1_accepts_flat_and_column_shapes_alike():
    y, p = [1, 0, 1, 0], [0.9, 0.2, 0.6, 0.1]
    flat = soft_f1(tf.constant(y, tf.float32), tf.constant(p, tf.float32))
    assert float(flat) == pytest.approx(float(soft_f1(col(y), col(p))), abs=1e-7)


def test_soft_f1_no_positives_and_zero_predictions_is_finite():
    y, p = col([0, 0, 0, 0]), col([0, 0, 0, 0])
    loss = float(soft_f1(y, p))
    assert math.isfinite(loss)
    assert loss == pytest.approx(1.0, abs=1e-6)
    var = tf.Variable(p)
    with tf.GradientTape() as tape:
        out = soft_f1(y, var)
    assert np.all(np.isfinite(tape.gradient(out, var).numpy()))


def test_soft_f1_perfect_predictions_are_zero():
    y = [1, 0, 1, 1, 0]
    assert float(soft_f1(col(y), col(y))) == pytest.approx(0.0, abs=1e-6)


def test_soft_f1_integer_labels():
    y = tf.constant([[1], [0], [1]], tf.int32)
    # Σyp = 0.5 + 0.5, Σy = 2, Σp = 1.5
    assert float(soft_f1(y, col([0.5, 0.5, 0.5]))) == pytest.approx(1 - 2 / 3.5, abs=1e-6)


# ------------------------------------------------------------------ pairwise AUC


def test_pairwise_auc_two_positives_two_negatives():
    z = [2.0, 0.5, -1.0, 1.0]  # positives first
    y = [1, 1, 0, 0]
    pairs = [(2.0, -1.0), (2.0, 1.0), (0.5, -1.0), (0.5, 1.0)]  # (z_pos, z_neg)
    expected = sum(softplus(zn - zp) for zp, zn in pairs) / 4
    # softplus(-3) + softplus(-1) + softplus(-1.5) + softplus(0.5), by hand ≈ 0.384335
    assert expected == pytest.approx(0.384335, abs=1e-5)
    got = float(pairwise_auc(col(y), col([sigmoid(v) for v in z])))
    assert got == pytest.approx(expected, abs=1e-5)


def test_pairwise_auc_margin_and_order_of_rows():
    z = [-0.5, 1.5, 0.0, 0.7]
    y = [0, 1, 0, 1]
    margin = 2.0
    pos = [v for v, t in zip(z, y, strict=True) if t]
    neg = [v for v, t in zip(z, y, strict=True) if not t]
    expected = sum(softplus(margin * (zn - zp)) for zp in pos for zn in neg) / 4
    got = float(pairwise_auc(col(y), col([sigmoid(v) for v in z]), margin=margin))
    assert got == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("y", [[1, 1, 1], [0, 0, 0]])
def test_pairwise_auc_zero_without_a_pair(y):
    loss = float(pairwise_auc(col(y), col([0.2, 0.5, 0.9])))
    assert loss == 0.0


def test_pairwise_auc_falls_as_the_ranking_improves():
    y = col([1, 1, 0, 0])
    worse = float(pairwise_auc(y, col([0.3, 0.6, 0.7, 0.4])))  # 2 of 4 pairs wrong
    better = float(pairwise_auc(y, col([0.6, 0.7, 0.4, 0.3])))  # all pairs right
    best = float(pairwise_auc(y, col([0.95, 0.9, 0.05, 0.1])))  # right, wider gaps
    assert worse > better > best > 0


def test_pairwise_auc_saturated_predictions_are_finite():
    y = col([1, 0])
    loss = float(pairwise_auc(y, col([0.0, 1.0])))  # worst possible ranking, clipped
    assert math.isfinite(loss) and loss > 10


# ------------------------------------------------------------------ gradients


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradient_wrt_logits_is_finite_and_nonzero(name):
    loss_fn = get_loss(name)
    y = col([1, 0, 1, 0, 0])
    logits = tf.Variable(col([0.3, 0.8, -0.4, -1.2, 0.1]))
    with tf.GradientTape() as tape:
        loss = loss_fn(y, tf.sigmoid(logits))
    grad = tape.gradient(loss, logits)
    assert grad is not None
    g = grad.numpy()
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 1e-4
    # One step of gradient descent lowers the loss.
    stepped = loss_fn(y, tf.sigmoid(logits - 0.1 * grad))
    assert float(stepped) < float(loss)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradient_wrt_probabilities_is_finite_and_nonzero(name):
    y = col([0, 1, 1, 0])
    p = tf.Variable(col([0.4, 0.35, 0.8, 0.6]))
    with tf.GradientTape() as tape:
        loss = get_loss(name)(y, p)
    g = tape.gradient(loss, p).numpy()
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 1e-4
    # Raising a positive's probability lowers every loss; raising a negative's raises it.
    assert g[1, 0] < 0 and g[2, 0] < 0
    assert g[0, 0] > 0 and g[3, 0] > 0


# ------------------------------------------------------------------ look-up


def test_get_loss_known_names():
    assert get_loss("bce") is bce
    assert get_loss("soft_f1") is soft_f1
    assert get_loss("pairwise_auc") is pairwise_auc


def test_get_loss_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError) as info:
        get_loss("focal")
    message = str(info.value)
    assert "'focal'" in message
    for name in ("bce", "soft_f1", "pairwise_auc"):
        assert name in message
