"""core.model.classifier on the tiny random BERT (and once on m3e-small): shapes, padding invariance
of the whole model and of each head layer, trainability, and the head-only model of stage 2."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from keras_self_attention import SeqSelfAttention
from tensorflow import keras

from core.model.classifier import (
    HEAD_LAYERS,
    FirstPosition,
    MaskedGlobalMaxPooling1D,
    MaskedSeqSelfAttention,
    build_head_model,
    build_model,
    copy_head_weights,
)
from core.model.losses import pairwise_auc, soft_f1
from core.model.optimizer import learning_rate
from core.training.engine import encode

CLS, SEP = 3, 4
HIDDEN = 32  # the tiny folder's hidden size


def sentence(length: int, seed: int, vocab_size: int = 206) -> np.ndarray:
    """[CLS] + ``length`` random character ids + [SEP]."""
    chars = np.random.default_rng(seed).integers(6, vocab_size, size=length)
    return np.concatenate([[CLS], chars, [SEP]]).astype(np.int32)


def pad(rows, width=None) -> np.ndarray:
    width = width or max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), dtype=np.int32)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    return ids


def run(model, ids) -> np.ndarray:
    out = model((ids, np.zeros_like(ids)), training=False)
    return [o.numpy() for o in out] if isinstance(out, list) else out.numpy()


@pytest.fixture(scope="module")
def full(tiny_bert_dir):
    """The full model, encoder trainable (stage 1)."""
    return build_model(tiny_bert_dir)


@pytest.fixture(scope="module")
def frozen(tiny_bert_dir):
    """The full model with a frozen encoder (stage 2), compiled with soft-F1 at lr 3e-4."""
    return build_model(tiny_bert_dir, loss="soft_f1", lr=3e-4, bert_trainable=False)


# ------------------------------------------------------------------ the full model


def test_output_shape_and_range(full, tiny_vocab):
    assert full.get_layer("Embedding-Token").input_dim == len(tiny_vocab)
    ids = pad([sentence(3, 0), sentence(12, 1), sentence(7, 2)])
    p = run(full, ids)
    assert p.shape == (3, 1) and p.dtype == np.float32
    assert np.all((p > 0) & (p < 1))
    assert len(np.unique(p)) == 3  # the sentences are told apart
    assert np.allclose(full.predict((ids, np.zeros_like(ids)), verbose=0), p, atol=1e-6)


def test_prediction_does_not_depend_on_padding(full):
    s, long = sentence(5, 10), sentence(15, 11)
    alone = run(full, pad([s]))[0, 0]
    in_batch = run(full, pad([long, s]))[1, 0]  # padded with 10 extra zeros
    wider = run(full, pad([s], width=40))[0, 0]  # padded far beyond any row
    assert in_batch == pytest.approx(alone, abs=1e-6)
    assert wider == pytest.approx(alone, abs=1e-6)


def test_every_head_branch_ignores_padding(full):
    names = ("head_avg", "head_max", "head_first")
    branches = keras.Model(full.inputs, [full.get_layer(n).output for n in names])
    s = sentence(6, 20)
    alone = run(branches, pad([s]))
    padded = run(branches, pad([sentence(14, 21), s], width=30))
    for name, a, b in zip(names, alone, padded, strict=True):
        assert a.shape == (1, HIDDEN) and b.shape == (2, HIDDEN), name
        np.testing.assert_allclose(b[1], a[0], atol=1e-6, err_msg=name)


def test_avg_branch_is_the_mean_over_real_positions(full):
    s = sentence(6, 30)
    sequence = keras.Model(full.inputs, full.get_layer("head_avg").input)
    branches = keras.Model(
        full.inputs, [full.get_layer("head_avg").output, full.get_layer("head_max").output]
    )
    ids = pad([s], width=15)
    seq = run(sequence, ids)[0, : len(s)]
    avg, mx = run(branches, ids)
    np.testing.assert_allclose(avg[0], seq.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(mx[0], seq.max(axis=0), atol=1e-6)


# ------------------------------------------------------------------ head layers alone


def attention_reference(layer, x: np.ndarray) -> np.ndarray:
    """keras-self-attention's additive formula on an unpadded (time, hidden) sequence, numpy:
    h = tanh(x_t Wt + x_s Wx + bh), e = h Wa + ba, s = softmax_s(e) (the attention_activation),
    a = exp(s - max s) / Σ exp(s - max s) (the library's own normalisation), out = a x."""
    wt, wx, bh, wa, ba = (
        np.asarray(w, dtype=np.float64) for w in (layer.Wt, layer.Wx, layer.bh, layer.Wa, layer.ba)
    )
    x = x.astype(np.float64)
    h = np.tanh((x @ wt)[:, None, :] + (x @ wx)[None, :, :] + bh)
    e = (h @ wa)[..., 0] + ba[0]
    s = np.exp(e - e.max(axis=-1, keepdims=True))
    s /= s.sum(axis=-1, keepdims=True)
    a = np.exp(s - s.max(axis=-1, keepdims=True))
    a /= a.sum(axis=-1, keepdims=True)
    return a @ x


def test_masked_attention_gives_padded_keys_no_weight():
    rng = np.random.default_rng(0)
    layer = MaskedSeqSelfAttention(attention_activation="softmax", units=8)
    library = SeqSelfAttention(attention_activation="softmax", units=8)
    real, width, hidden = 4, 9, 6
    x = rng.standard_normal((2, width, hidden)).astype(np.float32)  # padding holds garbage
    mask = np.zeros((2, width), dtype=bool)
    mask[0, :real] = True
    mask[1, :] = True  # a full-width row in the same batch
    out = layer(x, mask=tf.constant(mask)).numpy()
    library(x, mask=tf.constant(mask))  # build, then share the weights
    library.set_weights(layer.get_weights())

    expected = attention_reference(layer, x[0, :real])
    np.testing.assert_allclose(out[0, :real], expected, atol=1e-5)
    np.testing.assert_allclose(out[1], attention_reference(layer, x[1]), atol=1e-5)
    # The same rows without any padding, and with other garbage in the padding.
    alone = layer(x[:1, :real]).numpy()[0]
    np.testing.assert_allclose(out[0, :real], alone, atol=1e-6)
    x2 = x.copy()
    x2[0, real:] = 100 * rng.standard_normal((width - real, hidden))
    out2 = layer(x2, mask=tf.constant(mask)).numpy()
    np.testing.assert_allclose(out2[0, :real], out[0, :real], atol=1e-6)
    # keras-self-attention 0.51 itself lets real positions attend to padding (why ours exists).
    lib_out = library(x2, mask=tf.constant(mask)).numpy()
    assert np.abs(lib_out[0, :real] - expected).max() > 1e-3


def test_masked_attention_without_mask_matches_the_library():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 4)).astype(np.float32)
    ours = MaskedSeqSelfAttention(attention_activation="softmax")
    library = SeqSelfAttention(attention_activation="softmax")
    out = ours(x).numpy()
    library(x)
    library.set_weights(ours.get_weights())
    np.testing.assert_allclose(out, library(x).numpy(), atol=1e-6)
    np.testing.assert_allclose(out[1], attention_reference(ours, x[1]), atol=1e-5)


def test_masked_attention_refuses_what_it_does_not_mask():
    x = np.zeros((1, 3, 4), np.float32)
    with pytest.raises(NotImplementedError):
        MaskedSeqSelfAttention(attention_width=2)(x)
    with pytest.raises(NotImplementedError):
        MaskedSeqSelfAttention(attention_type=SeqSelfAttention.ATTENTION_TYPE_MUL)(x)


def test_masked_max_ignores_padding():
    x = np.array(
        [
            [[-3.0, -1.0], [-2.0, -5.0], [0.0, 0.0], [9.0, 9.0]],
            [[1.0, -4.0], [2.0, -6.0], [3.0, -7.0], [-1.0, -2.0]],
        ],
        np.float32,
    )
    mask = np.array([[True, True, False, False], [True, True, True, True]])
    out = MaskedGlobalMaxPooling1D()(x, mask=tf.constant(mask)).numpy()
    # Row 0: all real values negative, padding holds 0 and 9: neither may win.
    np.testing.assert_array_equal(out, [[-2.0, -1.0], [3.0, -2.0]])
    np.testing.assert_array_equal(MaskedGlobalMaxPooling1D()(x).numpy(), x.max(axis=1))


def test_average_pooling_ignores_padding():
    x = np.array([[[1.0, 2.0], [3.0, -4.0], [50.0, 50.0]]], np.float32)
    mask = tf.constant([[True, True, False]])
    out = keras.layers.GlobalAveragePooling1D()(x, mask=mask).numpy()
    np.testing.assert_allclose(out, [[2.0, -1.0]], atol=1e-6)


def test_first_position_takes_slot_zero():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(FirstPosition()(x).numpy(), x[:, 0])


# ------------------------------------------------------------------ trainability and loss


def _head_weight_ids(model):
    return {id(w) for name in HEAD_LAYERS for w in model.get_layer(name).weights}


def test_frozen_encoder_leaves_only_the_head_trainable(frozen):
    head = _head_weight_ids(frozen)
    trainable = {id(w) for w in frozen.trainable_weights}
    assert trainable == head and len(head) == 7  # attention Wt, Wx, bh, Wa, ba; Dense w, b
    encoder = [w for w in frozen.weights if id(w) not in head]
    assert len(encoder) > 20
    assert all(not any(w is t for t in frozen.trainable_weights) for w in encoder)


def test_trainable_encoder(full):
    head = _head_weight_ids(full)
    encoder_trainable = [w for w in full.trainable_weights if id(w) not in head]
    assert len(encoder_trainable) > 20
    names = {w.name for w in encoder_trainable}
    assert any("Embedding-Token" in n for n in names)
    assert any("Encoder-2" in n for n in names)
    assert len(full.non_trainable_weights) == 0


def test_compiled_with_the_named_loss_and_lr(frozen, full):
    assert frozen.loss is soft_f1
    assert float(frozen.optimizer.learning_rate) == pytest.approx(3e-4)
    assert full.loss.__name__ == "bce"
    head = build_head_model(HIDDEN, loss="pairwise_auc", lr=2e-3)
    assert head.loss is pairwise_auc
    assert float(head.optimizer.learning_rate) == pytest.approx(2e-3)
    with pytest.raises(ValueError, match="focal"):
        build_head_model(HIDDEN, loss="focal")


def test_model_compiles_with_a_schedule(tiny_bert_dir):
    schedule = learning_rate(1e-3, "cosine", 10, 0.2)
    model = build_model(tiny_bert_dir, lr=schedule)
    ids = np.array([[CLS, 10, SEP]] * 8, dtype=np.int32)
    model.fit((ids, np.zeros_like(ids)), np.ones((8, 1)), batch_size=2, epochs=1, verbose=0)
    assert int(model.optimizer.iterations) == 4
    # tf-keras reports the rate its last step used: step 3 (0-based), decaying past the peak.
    assert float(model.optimizer.learning_rate) == pytest.approx(float(schedule(3)))
    assert 0 < float(schedule(3)) < 0.99e-3


# ------------------------------------------------------------------ stage 2: head on cached outputs


def test_head_model_on_encoded_features_reproduces_the_full_model(frozen):
    rows = [sentence(n, 40 + i) for i, n in enumerate([3, 9, 5, 12, 1])]
    width = max(len(r) for r in rows) + 3
    encoder = keras.Model(frozen.inputs, frozen.get_layer("head_avg").input)
    feats = encode(encoder, rows, width, batch_size=2)
    assert feats.shape == (len(rows), width, HIDDEN)
    for i, r in enumerate(rows):
        assert np.all(feats[i, len(r) :] == 0) and np.all(np.abs(feats[i, : len(r)]).sum(-1) > 0)

    expected = np.array([run(frozen, pad([r]))[0, 0] for r in rows])
    head = build_head_model(HIDDEN)
    before = head.predict(feats, verbose=0)[:, 0]
    copy_head_weights(frozen, head)
    got = head.predict(feats, verbose=0)[:, 0]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.abs(before - expected).max() > 1e-4  # the copy is what makes them agree

    # And back: weights trained in the head model move into the full model.
    for name in ("head_attention", "head_output"):
        layer = head.get_layer(name)
        layer.set_weights([w + 0.05 for w in layer.get_weights()])
    moved = head.predict(feats, verbose=0)[:, 0]
    copy_head_weights(head, frozen)
    back = np.array([run(frozen, pad([r]))[0, 0] for r in rows])
    np.testing.assert_allclose(back, moved, atol=1e-5)


# ------------------------------------------------------------------ the real m3e-small


def test_m3e_small_builds_and_predicts(m3e_dir):
    from core.data.tokenizer import CharTokenizer, load_vocab

    model = build_model(m3e_dir, bert_trainable=False)
    vocab = load_vocab(m3e_dir)
    rows = CharTokenizer(vocab, maxlen=20).encode_all(["这家店的菜味道很好", "价格有点贵"])
    assert [len(r) for r in rows] == [11, 7] and all(vocab["[UNK]"] not in r for r in rows)
    p = run(model, pad(rows))
    assert p.shape == (2, 1)
    assert np.all(np.isfinite(p)) and np.all((p > 0) & (p < 1))
    alone = run(model, pad(rows[1:]))
    assert alone[0, 0] == pytest.approx(p[1, 0], abs=1e-5)
