"""The classifier: a keras-bert encoder and the reference method's pooling head.

Head = concat(masked global average pool, masked global max pool, position 0 of
``SeqSelfAttention(attention_activation='softmax')`` with its padding mask fixed), then
``Dense(1, sigmoid)``. Head layers carry fixed names so their weights move between the full
model and the head-only model that stage 2 trains on cached encoder outputs.
"""

from __future__ import annotations

import json
import tempfile
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import keras_bert.bert
import keras_transformer.transformer
import tensorflow as tf
from keras_bert import load_trained_model_from_checkpoint
from keras_bert.layers import EmbeddingSimilarity
from keras_layer_normalization import LayerNormalization
from keras_multi_head import MultiHeadAttention
from keras_self_attention import SeqSelfAttention
from tensorflow import keras

import core  # noqa: F401  (selects tf-keras before TensorFlow loads)
from core.model.optimizer import compile_model
from core.model.precision import POLICIES, policy_scope
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
            # expand_dims, not mask[:, :, None]: TFLite has no new-axis slicing
            # (core.serving.export).
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


def attach_head(sequence, dtype=None):
    """Apply the pooling head to a (batch, time, hidden) tensor that carries a padding mask;
    ``dtype``: the head layers' dtype policy (None: the global one)."""
    avg = keras.layers.GlobalAveragePooling1D(name="head_avg", dtype=dtype)(sequence)
    mx = MaskedGlobalMaxPooling1D(name="head_max", dtype=dtype)(sequence)
    att = MaskedSeqSelfAttention(
        attention_activation="softmax", name="head_attention", dtype=dtype
    )(sequence)
    first = FirstPosition(name="head_first", dtype=dtype)(att)
    joined = keras.layers.Concatenate(name="head_concat", dtype=dtype)([avg, mx, first])
    return keras.layers.Dense(1, activation="sigmoid", name="head_output", dtype="float32")(joined)


# ---------------------------------------------------------------- mixed precision
# Under a mixed policy (core.model.precision), three of the libraries' layers compute something in
# the wrong dtype; these subclasses keep their weights, names and formulas and fix only that. Under
# float32 none of them is used: the float32 model is built exactly as before.


class MixedMultiHeadAttention(MultiHeadAttention):
    """keras-multi-head's ``MultiHeadAttention`` (keras-bert's self-attention) under a mixed policy.

    The library's ``call`` makes a ``ScaledDotProductAttention`` that divides 16-bit scores by a
    ``K.floatx()`` (float32) scale and subtracts a float32 mask: the model does not build. Here
    the projections and both matmuls run in the compute dtype, and the scores' scale, padding mask
    and softmax in float32 (a bfloat16 softmax keeps 3 significant digits).
    """

    def call(self, inputs, mask=None):
        if isinstance(inputs, list) or self.history_only:
            raise NotImplementedError("only self-attention over all positions, as keras-bert's")
        dot = keras.backend.dot
        q, k, v = (dot(inputs, w) for w in (self.Wq, self.Wk, self.Wv))
        if self.use_bias:
            q, k, v = q + self.bq, k + self.bk, v + self.bv
        if self.activation is not None:
            q, k, v = self.activation(q), self.activation(k), self.activation(v)
        q, k, v = (self._reshape_to_batches(x, self.head_num) for x in (q, k, v))
        e = tf.cast(tf.matmul(q, k, transpose_b=True), tf.float32)
        e /= tf.sqrt(tf.cast(tf.shape(q)[-1], tf.float32))
        if mask is not None:  # the library's formula: padded keys 10000 lower before the softmax
            keys = tf.cast(self._reshape_mask(mask, self.head_num), tf.float32)
            e -= 10000.0 * (1.0 - tf.expand_dims(keys, -2))
        e = tf.exp(e - tf.reduce_max(e, axis=-1, keepdims=True))
        attention = tf.cast(e / tf.reduce_sum(e, axis=-1, keepdims=True), v.dtype)
        y = dot(self._reshape_from_batches(tf.matmul(attention, v), self.head_num), self.Wo)
        if self.use_bias:
            y += self.bo
        if self.activation is not None:
            y = self.activation(y)
        return y


class Float32LayerNormalization(LayerNormalization):
    """keras-layer-normalization's layer computing in float32 under any policy (mean and variance
    over 512 values in bfloat16 would lose what the next layer needs); its output is float32."""

    def __init__(self, **kwargs):
        super().__init__(**{**kwargs, "dtype": "float32"})


class MixedEmbeddingSimilarity(EmbeddingSimilarity):
    """keras-bert's MLM output layer (``MLM-Sim``) under a mixed policy: the product with the
    token embeddings in the policy's compute dtype, the bias and the softmax over the vocabulary
    in float32, so the masked-LM loss reads float32 probabilities (and their logits)."""

    def __init__(self, **kwargs):
        self.matmul_dtype = keras.mixed_precision.global_policy().compute_dtype
        super().__init__(**{**kwargs, "dtype": "float32"})

    def call(self, inputs, mask=None, **kwargs):
        features, embeddings = (tf.cast(t, self.matmul_dtype) for t in inputs)
        logits = keras.backend.dot(features, tf.transpose(embeddings))
        return keras.activations.softmax(tf.nn.bias_add(tf.cast(logits, tf.float32), self.bias))


# keras-bert and keras-transformer look these names up in their own modules while they build.
_LIBRARY_LAYERS = (
    (keras_transformer.transformer, "MultiHeadAttention", MixedMultiHeadAttention),
    (keras_transformer.transformer, "LayerNormalization", Float32LayerNormalization),
    (keras_bert.bert, "LayerNormalization", Float32LayerNormalization),
    (keras_bert.bert, "EmbeddingSimilarity", MixedEmbeddingSimilarity),
)
_BUILDING = threading.Lock()


@contextmanager
def mixed_precision(precision: str):
    """Models made inside compute in ``precision`` (float32, bfloat16 or float16): its Keras
    policy, and keras-bert's layers replaced by the subclasses above while they are made.

    float32 changes nothing. The libraries' module names are swapped only during the build (the
    layers made keep their class), under a lock so two threads cannot interleave swaps.
    """
    if precision not in POLICIES:
        raise ValueError(
            f"precision={precision!r}: expected one of {', '.join(POLICIES)} "
            "(core.model.precision.choose resolves auto)"
        )
    policy = POLICIES[precision]
    if policy == "float32":
        yield
        return
    with _BUILDING, policy_scope(policy):
        saved = [(module, name, getattr(module, name)) for module, name, _ in _LIBRARY_LAYERS]
        try:
            for module, name, layer in _LIBRARY_LAYERS:
                setattr(module, name, layer)
            yield
        finally:
            for module, name, layer in saved:
                setattr(module, name, layer)


def encoder_layers(bert_dir: str | Path) -> int:
    """How many transformer layers the encoder in ``bert_dir`` has."""
    return int(json.loads((Path(bert_dir) / "bert_config.json").read_text())["num_hidden_layers"])


def load_encoder(bert_dir: str | Path, trainable=True, layers: int | None = None) -> keras.Model:
    """keras-bert encoder from a Google-format BERT folder; output = last layer, padding masked.
    ``layers``: keep only the first this many transformer layers (None: all)."""
    bert_dir = Path(bert_dir)
    check_bert_dir(bert_dir)
    config = bert_dir / "bert_config.json"
    with tempfile.TemporaryDirectory() as tmp:
        if layers is not None:
            have = encoder_layers(bert_dir)
            if not 1 <= layers <= have:
                raise ValueError(
                    f"layers={layers}: the encoder in {bert_dir} has {have}; keep 1..{have}"
                )
            # keras-bert builds and loads as many layers as the config says: a shorter config
            # reads the checkpoint's first ``layers`` layers.
            short = {**json.loads(config.read_text()), "num_hidden_layers": layers}
            config = Path(tmp) / "bert_config.json"
            config.write_text(json.dumps(short))
        with checkpoint_errors(bert_dir):
            return load_trained_model_from_checkpoint(
                str(config),
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
    precision: str = "float32",
    layers: int | None = None,
) -> keras.Model:
    """Encoder + head, compiled with Adam at ``lr`` (float or schedule), the named loss (XLA if
    ``jit_compile``) and layer-wise rate decay ``layer_decay`` (1 = off); the encoder's first
    ``layers`` transformer layers only, when given.

    ``precision`` bfloat16 or float16: the encoder computes in it (``mixed_precision``), the head
    in float32 (cheap, and its pooling and softmax stay exact); variables stay float32, and
    float16 trains with loss scaling (tf-keras wraps the optimizer of a mixed_float16 model).
    """
    with mixed_precision(precision):
        encoder = load_encoder(bert_dir, trainable=bert_trainable, layers=layers)
        output = attach_head(encoder.output, None if precision == "float32" else "float32")
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
