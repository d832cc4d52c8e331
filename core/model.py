"""The classifier: a keras-bert encoder and the reference method's pooling head.

Head = concat(masked global average pool, masked global max pool, position 0 of
``SeqSelfAttention(attention_activation='softmax')`` with its padding mask fixed), then
``Dense(1, sigmoid)``. Head layers carry fixed names so their weights move between the full
model and the head-only model that stage 2 trains on cached encoder outputs.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import tensorflow as tf
from keras_bert import load_trained_model_from_checkpoint
from keras_self_attention import SeqSelfAttention
from tensorflow import keras

import core  # noqa: F401  (selects tf-keras before TensorFlow loads)
from core.optimizer import compile_model
from core.weights import check_bert_dir, checkpoint_errors

# keras-bert and keras-self-attention share initializer instances across layers; tf-keras warns
# about it on every build. Their weights come from the checkpoint or from set_random_seed anyway.
warnings.filterwarnings("ignore", message="The initializer .* is unseeded")

# Dropout draws from a seeded tf.random.Generator per layer instead of stateful random ops, whose
# state XLA keeps per process: without this, two models trained in one process with the same
# seed and jit_compile=True differ (tests/test_reproducible.py).
keras.backend.experimental.enable_tf_random_generator()

HEAD_LAYERS = ("head_avg", "head_max", "head_attention", "head_first", "head_concat", "head_output")


class MaskedGlobalMaxPooling1D(keras.layers.Layer):
    """Max over time that ignores padded positions (Keras' own GlobalMaxPooling1D does not)."""

    supports_masking = True

    def call(self, inputs, mask=None):
        if mask is not None:
            # Padding must never win the max: push it to the lowest value of the dtype.
            floor = tf.cast(inputs.dtype.min, inputs.dtype)
            # expand_dims, not mask[:, :, None]: TFLite has no new-axis slicing (core.export).
            inputs = tf.where(tf.expand_dims(mask, -1), inputs, floor)
        return tf.reduce_max(inputs, axis=1)

    def compute_mask(self, inputs, mask=None):
        return None


class FirstPosition(keras.layers.Layer):
    """The vector at position 0 (the [CLS] slot) of a sequence."""

    supports_masking = True

    def call(self, inputs, mask=None):
        return inputs[:, 0]

    def compute_mask(self, inputs, mask=None):
        return None


class MaskedSeqSelfAttention(SeqSelfAttention):
    """keras-self-attention's additive ``SeqSelfAttention`` with padded keys masked out.

    keras-self-attention 0.51 subtracts its large constant only where query AND key are both
    padding, so real positions still attend to padding and a prediction changes with the batch's
    padding width. This subclass keeps the library's weights and formula (emission, the
    ``attention_activation``, then its own normalisation) and gives padded keys zero weight.
    """

    def call(self, inputs, mask=None, **kwargs):
        if self.attention_type != SeqSelfAttention.ATTENTION_TYPE_ADD or self.attention_width:
            raise NotImplementedError("only full-width additive attention is supported")
        e = self._call_additive_emission(inputs)
        keys = None
        if mask is not None:
            keys = tf.expand_dims(tf.cast(mask, e.dtype), 1)  # not [:, None]: see head_max
            e -= 10000.0 * (1.0 - keys)
        if self.attention_activation is not None:
            e = self.attention_activation(e)
        weights = tf.exp(e - tf.reduce_max(e, axis=-1, keepdims=True))
        if keys is not None:
            weights *= keys  # the activation leaves padded keys near 0, not at -inf
        a = weights / tf.reduce_sum(weights, axis=-1, keepdims=True)
        return tf.matmul(a, inputs)


def attach_head(sequence):
    """Apply the pooling head to a (batch, time, hidden) tensor that carries a padding mask."""
    avg = keras.layers.GlobalAveragePooling1D(name="head_avg")(sequence)
    mx = MaskedGlobalMaxPooling1D(name="head_max")(sequence)
    att = MaskedSeqSelfAttention(attention_activation="softmax", name="head_attention")(sequence)
    first = FirstPosition(name="head_first")(att)
    joined = keras.layers.Concatenate(name="head_concat")([avg, mx, first])
    return keras.layers.Dense(1, activation="sigmoid", name="head_output", dtype="float32")(joined)


def load_encoder(bert_dir: str | Path, trainable=True) -> keras.Model:
    """keras-bert encoder from a Google-format BERT folder; output = last layer, padding masked."""
    bert_dir = Path(bert_dir)
    check_bert_dir(bert_dir)
    with checkpoint_errors(bert_dir):
        return load_trained_model_from_checkpoint(
            str(bert_dir / "bert_config.json"),
            str(bert_dir / "bert_model.ckpt"),
            training=False,
            trainable=trainable,
            seq_len=None,
        )


def build_model(
    bert_dir: str | Path,
    loss: str = "bce",
    lr=1e-5,
    bert_trainable: bool = True,
    jit_compile: bool = False,
    layer_decay: float = 1.0,
) -> keras.Model:
    """Encoder + head, compiled with Adam at ``lr`` (float or schedule), the named loss (XLA if
    ``jit_compile``) and layer-wise rate decay ``layer_decay`` (1 = off)."""
    encoder = load_encoder(bert_dir, trainable=bert_trainable)
    output = attach_head(encoder.output)
    model = keras.Model(encoder.inputs, output, name="classifier")
    return compile_model(model, loss, lr, jit_compile, layer_decay)


def build_head_model(hidden_size: int, loss: str = "bce", lr: float = 1e-3) -> keras.Model:
    """The head alone, on cached encoder outputs padded with all-zero vectors.

    A real encoder output is never exactly the zero vector (it leaves a LayerNorm with a bias), so
    Masking(0.0) recovers the padding mask the full model gets from its token ids.
    """
    inputs = keras.Input(shape=(None, hidden_size), name="encoded")
    masked = keras.layers.Masking(mask_value=0.0, name="head_mask")(inputs)
    model = keras.Model(inputs, attach_head(masked), name="head")
    return compile_model(model, loss, lr)


def copy_head_weights(source: keras.Model, target: keras.Model) -> None:
    """Copy the head's weights between a full model and a head-only model (matched by name)."""
    for name in HEAD_LAYERS:
        target.get_layer(name).set_weights(source.get_layer(name).get_weights())
