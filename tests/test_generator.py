"""core.data.batches: batch planning, padded batches, and fit/predict with a tiny Keras model."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tensorflow import keras

from core.data.batches import BatchSequence, plan_batches, predict_in_order

VOCAB = 30


def realistic_lengths(n: int, seed: int = 0) -> np.ndarray:
    """Token counts like the data: 5..19 characters plus [CLS] and [SEP]."""
    return np.random.default_rng(seed).integers(5, 20, size=n) + 2


def make_rows(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, VOCAB, size=k).astype(np.int32) for k in realistic_lengths(n, seed)]


def padding(batches, lengths) -> int:
    return sum(int(lengths[b].max()) * len(b) - int(lengths[b].sum()) for b in batches)


@pytest.mark.parametrize("n", [1, 15, 16, 17, 100, 1001])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("group", [False, True])
def test_every_row_exactly_once(n, shuffle, group):
    batches = plan_batches(realistic_lengths(n), 16, shuffle, 1, 2, group_by_length=group)
    assert sorted(np.concatenate(batches).tolist()) == list(range(n))
    sizes = sorted((len(b) for b in batches), reverse=True)
    assert len(batches) == -(-n // 16)
    assert all(s == 16 for s in sizes[:-1]) and sizes[-1] == n - 16 * (len(batches) - 1)


def test_empty_and_bad_batch_size():
    assert plan_batches([], 4) == []
    with pytest.raises(ValueError, match="batch_size"):
        plan_batches([1, 2], 0)


def test_no_shuffle_keeps_order():
    flat = np.concatenate(plan_batches(realistic_lengths(50), 8))
    assert flat.tolist() == list(range(50))


@pytest.mark.parametrize("group", [False, True])
def test_seed_and_epoch_decide_the_order(group):
    lengths = realistic_lengths(500)

    def flat(seed, epoch):
        return np.concatenate(plan_batches(lengths, 16, True, seed, epoch, group))

    assert np.array_equal(flat(3, 0), flat(3, 0))
    assert not np.array_equal(flat(3, 0), flat(3, 1))
    assert not np.array_equal(flat(3, 0), flat(4, 0))


@pytest.mark.parametrize("shuffle", [False, True])
def test_grouping_reduces_padding(shuffle):
    lengths = realistic_lengths(5000)
    plain = plan_batches(lengths, 16, shuffle, seed=0, epoch=0, group_by_length=False)
    grouped = plan_batches(lengths, 16, shuffle, seed=0, epoch=0, group_by_length=True)
    assert padding(grouped, lengths) < 0.2 * padding(plain, lengths)


def test_batches_padded_with_zero_to_their_longest_row():
    rows = make_rows(37)
    labels = np.arange(37) % 2
    seq = BatchSequence(rows, labels, batch_size=8, shuffle=True, seed=5, group_by_length=True)
    assert len(seq) == 5
    seen = []
    for i in range(len(seq)):
        (ids, segs), y = seq[i]
        rows_i = seq.batches[i]
        assert ids.dtype == np.int32 and segs.dtype == np.int32 and y.dtype == np.float32
        assert ids.shape == segs.shape and y.shape == (len(rows_i), 1)
        assert ids.shape[1] == max(len(rows[r]) for r in rows_i)
        assert not segs.any()
        for r, row in enumerate(rows_i):
            k = len(rows[row])
            assert np.array_equal(ids[r, :k], rows[row]) and not ids[r, k:].any()
            assert y[r, 0] == labels[row]
        seen.extend(rows_i.tolist())
    assert seen == seq.order.tolist()
    with pytest.raises(IndexError):
        seq[len(seq)]


def test_epoch_end_replans():
    seq = BatchSequence(make_rows(100), batch_size=8, shuffle=True, seed=1)
    first = seq.order.copy()
    seq.on_epoch_end()
    assert seq.epoch == 1 and not np.array_equal(first, seq.order)
    assert sorted(seq.order.tolist()) == list(range(100))


def test_without_labels_yields_a_one_tuple_of_a_tuple():
    # tf-keras would unpack a list [ids, segs] as (x=ids, y=segs), even inside a 1-tuple.
    batch = BatchSequence(make_rows(5), batch_size=4)[0]
    assert isinstance(batch, tuple) and len(batch) == 1
    assert isinstance(batch[0], tuple) and len(batch[0]) == 2


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least one row"):
        BatchSequence([])
    with pytest.raises(ValueError, match="one per row"):
        BatchSequence(make_rows(3), labels=[0, 1])


def tiny_model() -> keras.Model:
    ids = keras.Input((None,), dtype="int32")
    segs = keras.Input((None,), dtype="int32")
    # mask_zero makes the pooled mean ignore padding, so batched and single-row outputs agree.
    x = keras.layers.Embedding(VOCAB, 8, mask_zero=True)(ids)
    s = keras.layers.Embedding(2, 8)(segs)
    h = keras.layers.GlobalAveragePooling1D()(keras.layers.Add()([x, s]))
    model = keras.Model([ids, segs], keras.layers.Dense(1, activation="sigmoid")(h))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    return model


def test_dataset_gives_the_sequence_batches_and_reshuffles_each_epoch():
    rows, labels = make_rows(40, seed=2), np.arange(40) % 2
    seq = BatchSequence(rows, labels, batch_size=8, shuffle=True, seed=4, group_by_length=True)
    twin = BatchSequence(rows, labels, batch_size=8, shuffle=True, seed=4, group_by_length=True)
    ds = seq.dataset()
    assert int(ds.cardinality()) == len(seq) == 5
    assert ds.options().autotune.enabled is False  # see BatchSequence.dataset
    epochs = []
    for _ in range(2):
        got = list(ds.as_numpy_iterator())
        want = [twin[i] for i in range(len(twin))]
        twin.on_epoch_end()
        for ((ids, segs), y), ((want_ids, want_segs), want_y) in zip(got, want, strict=True):
            np.testing.assert_array_equal(ids, want_ids)
            np.testing.assert_array_equal(segs, want_segs)
            np.testing.assert_array_equal(y, want_y)
        epochs.append(np.concatenate([ids[:, 1] for (ids, _), _ in got]))
    assert seq.epoch == 2
    assert not np.array_equal(epochs[0], epochs[1])  # a new order in the second epoch


def test_dataset_without_labels_yields_inputs_only():
    ((ids, segs),) = next(iter(BatchSequence(make_rows(5), batch_size=4).dataset()))
    assert ids.dtype == tf.int32 and ids.shape[0] == 4 and segs.shape == ids.shape


def test_fit_and_predict_in_order_end_to_end():
    keras.utils.set_random_seed(0)
    rows = make_rows(150, seed=3)
    labels = np.array([int(r[0] > VOCAB // 2) for r in rows])
    model = tiny_model()
    seq = BatchSequence(rows, labels, batch_size=16, shuffle=True, seed=0, group_by_length=True)
    history = model.fit(seq.dataset(), epochs=2, shuffle=False, verbose=0)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()
    assert seq.epoch == 2  # the dataset redrew the plan after each epoch

    preds = predict_in_order(model, rows, batch_size=32, group_by_length=True)
    assert preds.shape == (150,) and preds.dtype == np.float64
    single = np.array(
        [model([r[None, :], np.zeros((1, len(r)), np.int32)]).numpy()[0, 0] for r in rows]
    )
    np.testing.assert_allclose(preds, single, rtol=1e-5, atol=1e-6)
    ungrouped = predict_in_order(model, rows, batch_size=7, group_by_length=False)
    np.testing.assert_allclose(ungrouped, single, rtol=1e-5, atol=1e-6)
