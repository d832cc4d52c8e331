"""Optional stage 0: within-task further pre-training of the encoder (Sun et al. 2019).

"How to Fine-Tune BERT for Text Classification?" (Sun, Qiu, Xu, Huang 2019) continues BERT's
masked-language-model training on the task's own text before fine-tuning. Here that text is the
train AND test sentences, unlabelled: labels are never read. The result is a Google-format BERT
folder (``bert_config.json``, ``vocab.txt``, ``bert_model.ckpt.*``) that every later stage uses
through ``bert_dir``.

The model is keras-bert's training model (``training=True``) with its MLM head read only at the
masked positions (BERT's ``masked_lm_positions``): the vocabulary-wide softmax is most of the
cost, and only about 15 % of the positions are predicted. NSP means nothing for single sentences
and is dropped. Its encoder starts from ``bert_dir``; the MLM head (``MLM-Dense``,
``MLM-Norm`` and the output bias of ``MLM-Sim``, whose output matrix is the token embedding) starts
from the checkpoint's ``cls/predictions/*`` if present, else fresh. Everything trained is written
back under Google's names, head included, so a later run can continue from the written folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import tensorflow as tf
from keras_bert import build_model_from_config, load_model_weights_from_checkpoint
from tensorflow import keras

import core  # noqa: F401  (selects tf-keras before TensorFlow loads)
from core.config import NOTEBOOKS, PRETRAIN_FILE, default, resolve
from core.data.batches import plan_batches
from core.data.reviews import file_sha256, read_labelled, read_unlabelled, show_path
from core.data.tokenizer import CharTokenizer, load_vocab
from core.model.classifier import mixed_precision
from core.model.precision import choose
from core.runs.folder import weights_sha256
from core.training.engine import Progress
from core.weights.google_ckpt import (
    CKPT_PREFIX,
    CONFIG_FILE,
    MLM_HEAD,
    VOCAB_FILE,
    BertDirError,
    check_bert_dir,
    checkpoint_errors,
    google_tensors,
    write_bert_dir,
)

# keras-bert shares initializer instances across layers; tf-keras warns on every build (as in
# core.model.classifier). The seeded set_random_seed makes the MLM head's initialisation
# reproducible anyway.
warnings.filterwarnings("ignore", message="The initializer .* is unseeded")

__all__ = [
    "PRETRAIN_FILE",
    "build_mlm_model",
    "encoder_of",
    "mask_batch",
    "max_predictions",
    "pad_ids",
    "prediction_slots",
    "pretrain",
    "special_token_ids",
    "task_texts",
]

PAD_MULTIPLE = 4  # batch widths are multiples of this: a handful of shapes for XLA to compile
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # never masked (as keras-bert)
# What makes two pre-training runs the same: a folder made from other inputs is not reused.
IDENTITY = ("source_weights_sha256", "texts_sha256", "params")

# ---------------------------------------------------------------- model


class GatherPositions(keras.layers.Layer):
    """``[sequence (B, L, H), positions (B, K), valid (B, K)]`` -> ``(B, K, H)``, masked where
    ``valid`` is 0, so the loss and metrics average over the real slots only."""

    def call(self, inputs):
        sequence, positions, _ = inputs
        return tf.gather(sequence, positions, batch_dims=1)

    def compute_mask(self, inputs, mask=None):
        return tf.cast(inputs[2], tf.bool)


@contextmanager
def _legacy_random_ops():
    """Layers built here draw dropout and initial weights from TensorFlow's stateful random ops,
    whatever core.model.classifier (imported or not) set for the process: stage 0 always drew them
    so, and the default encoder, hence every figure measured on it, depends on those draws."""
    experimental = keras.backend.experimental
    enabled = experimental.is_tf_random_generator_enabled()
    experimental.disable_tf_random_generator()
    try:
        yield
    finally:
        if enabled:
            experimental.enable_tf_random_generator()


def build_mlm_model(
    bert_dir: str | Path,
    lr: float = 5e-5,
    seq_len: int | None = 22,
    jit_compile: bool = False,
    n_predictions: int = 4,
    precision: str = "float32",
) -> keras.Model:
    """keras-bert's training model with its MLM head at the masked positions, weights from
    ``bert_dir``, compiled.

    Inputs ``[Input-Token, Input-Segment]`` of width ``seq_len`` (None: any width; token id 0 is
    padding) and ``[Input-Positions, Input-Valid]`` of width ``n_predictions``; output
    the vocabulary softmax at those positions, masked where ``Input-Valid`` is 0 so the loss
    (sparse cross-entropy) and the ``accuracy`` metric average over the predicted positions only.
    Adam at ``lr``. ``precision`` bfloat16 or float16: computed in it (``core.model.classifier.
    mixed_precision``), the vocabulary softmax and the loss in float32, variables float32.
    """
    bert_dir = Path(bert_dir)
    check_bert_dir(bert_dir)
    with mixed_precision(precision):
        return _build_mlm_model(bert_dir, lr, seq_len, jit_compile, n_predictions)


def _build_mlm_model(bert_dir: Path, lr, seq_len, jit_compile, n_predictions) -> keras.Model:
    with _legacy_random_ops():
        full, config = build_model_from_config(
            str(bert_dir / CONFIG_FILE), training=True, trainable=True, seq_len=seq_len
        )
    ckpt = str(bert_dir / CKPT_PREFIX)
    with checkpoint_errors(bert_dir):
        # training=False: the encoder only; m3e-small has no cls/* or NSP variables.
        load_model_weights_from_checkpoint(full, config, ckpt, training=False)
        present = {name for name, _ in tf.train.list_variables(ckpt)}
        for layer, variables in MLM_HEAD.items():  # continue an earlier MLM run's head if any
            if all(v in present for v in variables):
                weights = [tf.train.load_variable(ckpt, v) for v in variables]
                full.get_layer(layer).set_weights(weights)
    # The same head layers (so the same weights and Google names), called on the gathered slots.
    positions = keras.Input((n_predictions,), dtype="int32", name="Input-Positions")
    valid = keras.Input((n_predictions,), dtype="int32", name="Input-Valid")
    x = GatherPositions(name="MLM-Gather")([_last_encoder_layer(full).output, positions, valid])
    x = full.get_layer("MLM-Norm")(full.get_layer("MLM-Dense")(x))
    output = full.get_layer("MLM-Sim")([x, full.get_layer("Embedding-Token").output[1]])
    model = keras.Model([*full.inputs[:2], positions, valid], output, name="mlm")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=jit_compile,
    )
    return model


def _last_encoder_layer(model: keras.Model) -> keras.layers.Layer:
    last = max(
        int(layer.name.split("-")[1])
        for layer in model.layers
        if layer.name.startswith("Encoder-") and layer.name.endswith("-FeedForward-Norm")
    )
    return model.get_layer(f"Encoder-{last}-FeedForward-Norm")


def encoder_of(model: keras.Model) -> keras.Model:
    """The encoder part of an MLM model: (tokens, segments) -> last layer's output."""
    return keras.Model(model.inputs[:2], _last_encoder_layer(model).output, name="encoder")


# ---------------------------------------------------------------- data and masking


def special_token_ids(vocab: Mapping[str, int]) -> dict[str, int]:
    """Ids of the tokens never masked. Id 0 is padding to keras-bert whatever its token is."""
    if "[MASK]" not in vocab:
        raise ValueError("vocab.txt has no [MASK] token: masked-LM training needs one")
    ids = {t: vocab[t] for t in SPECIAL_TOKENS if t in vocab}
    ids.setdefault("[PAD]", 0)
    return ids


def pad_ids(rows: Sequence[np.ndarray], seq_len: int) -> np.ndarray:
    """Right-pad token-id rows with 0 to ``(len(rows), seq_len)`` int32."""
    out = np.zeros((len(rows), seq_len), dtype=np.int32)
    for i, row in enumerate(rows):
        if len(row) > seq_len:
            raise ValueError(f"row {i} has {len(row)} tokens, more than seq_len={seq_len}")
        out[i, : len(row)] = row
    return out


def mask_batch(
    token_ids: np.ndarray,
    rng: np.random.Generator,
    vocab_size: int,
    special_ids,
    rate: float = 0.15,
    *,
    mask_id: int,
) -> tuple[list[np.ndarray], np.ndarray]:
    """BERT's masking of a padded batch: ``(inputs, target)`` for the keras-bert MLM model.

    Of each row's maskable tokens (neither 0 = padding nor in ``special_ids``), ``n * rate``
    positions are chosen at random, rounded stochastically so the expected rate is exact, and at
    least one; a chosen token becomes ``mask_id`` with probability 0.8, a random maskable
    vocabulary id with 0.1, and stays itself with 0.1. Rows without a maskable token get none.

    Returns ``[tokens, segments, masked]`` (int32, ``(batch, seq)``; ``masked`` is 0/1, segments
    are 0) and the target ``(batch, seq, 1)``: the original ids, as ``keras_bert.gen_batch_inputs``.
    """
    token_ids = np.asarray(token_ids)
    if token_ids.ndim != 2:
        raise ValueError(f"token_ids: expected a padded (batch, seq) array, got {token_ids.shape}")
    if not 0 < rate < 1:
        raise ValueError(f"rate={rate!r}: expected a masking rate in (0, 1)")
    special = np.asarray(sorted({0, *special_ids}), dtype=np.int64)
    maskable = ~np.isin(token_ids, special)
    replacements = np.setdiff1d(np.arange(vocab_size), special)
    tokens = token_ids.astype(np.int32, copy=True)
    masked = np.zeros(token_ids.shape, dtype=np.int32)
    for row in range(len(token_ids)):
        candidates = np.flatnonzero(maskable[row])
        if not len(candidates):
            continue
        k = min(len(candidates), max(1, math.floor(len(candidates) * rate + rng.random())))
        chosen = rng.choice(candidates, size=k, replace=False)
        masked[row, chosen] = 1
        r = rng.random(k)
        tokens[row, chosen[r < 0.8]] = mask_id
        swap = chosen[(r >= 0.8) & (r < 0.9)]
        tokens[row, swap] = rng.choice(replacements, size=len(swap))
    inputs = [tokens, np.zeros_like(tokens), masked]
    return inputs, token_ids.astype(np.int32)[..., None]


def max_predictions(maxlen: int, rate: float) -> int:
    """The most positions ``mask_batch`` can choose in a row of at most ``maxlen`` maskable
    tokens: ``floor(n * rate + u)`` with ``u < 1`` never exceeds ``floor(maxlen * rate) + 1``."""
    return math.floor(maxlen * rate) + 1


def prediction_slots(
    inputs: list[np.ndarray], target: np.ndarray, n_predictions: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """``mask_batch``'s ``(inputs, target)`` -> the MLM model's: each row's masked positions in
    ``n_predictions`` slots (in order, then position 0 marked invalid), and their original ids.

    Returns ``[tokens, segments, positions, valid]`` and the target ``(batch, n_predictions, 1)``.
    """
    tokens, segments, masked = inputs
    counts = masked.sum(axis=1)
    if counts.max(initial=0) > n_predictions:
        row = int(counts.argmax())
        raise ValueError(
            f"row {row} has {counts[row]} masked positions, more than n_predictions={n_predictions}"
        )
    # A stable sort on "not masked" puts each row's masked positions first, in order.
    order = np.argsort(masked == 0, axis=1, kind="stable")[:, :n_predictions]
    valid = np.take_along_axis(masked, order, axis=1).astype(np.int32)
    positions = np.where(valid == 1, order, 0).astype(np.int32)
    slot_target = np.take_along_axis(target[..., 0], positions, axis=1)[..., None]
    return [tokens, segments, positions, valid], slot_target.astype(np.int32)


def length_batches(
    rows: Sequence[np.ndarray], batch_size: int, seed: int, epoch: int, multiple: int, seq_len: int
) -> list[np.ndarray]:
    """One epoch's batches of token-id rows, shuffled, length-grouped (``plan_batches``), each
    padded to its longest row rounded up to ``multiple`` (at most ``seq_len``).

    Full batches only (the whole set if smaller than one): the few rows left over are in a random
    place of the next epoch's order. Grouping halves the mean width here (12 against 22 tokens)
    and the multiple keeps XLA to a handful of shapes.
    """
    plan = plan_batches(
        [len(r) for r in rows],
        batch_size,
        shuffle=True,
        seed=seed,
        epoch=epoch,
        group_by_length=True,
    )
    plan = [b for b in plan if len(b) == batch_size] or plan
    out = []
    for batch in plan:
        width = -(-max(len(rows[i]) for i in batch) // multiple) * multiple
        out.append(pad_ids([rows[i] for i in batch], min(width, seq_len)))
    return out


def _as_dataset(batches: list[tuple[list[np.ndarray], np.ndarray]]) -> tf.data.Dataset:
    """``prediction_slots`` batches of varying width as a dataset for one ``fit`` epoch."""
    ids = tf.TensorSpec((None, None), tf.int32)
    slots = tf.TensorSpec((None, batches[0][1].shape[1]), tf.int32)
    spec = ((ids, ids, slots, slots), tf.TensorSpec((None, slots.shape[1], 1), tf.int32))
    data = tf.data.Dataset.from_generator(
        lambda: ((tuple(inputs), target) for inputs, target in batches), output_signature=spec
    )
    return data.apply(tf.data.experimental.assert_cardinality(len(batches))).prefetch(1)


def task_texts(train_path: str | Path, test_path: str | Path) -> tuple[list[str], dict[str, str]]:
    """The train and test sentences (labels dropped) and ``{"train": path, "test": path}``."""
    train, test = read_labelled(resolve(train_path)), read_unlabelled(resolve(test_path))
    return train.texts + test.texts, {"train": str(train.path), "test": str(test.path)}


# ---------------------------------------------------------------- training


def _texts_sha256(texts: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode()).hexdigest()


def _done(out_dir: Path, identity: dict) -> dict | None:
    """The recorded PRETRAIN.json if ``out_dir`` is a complete folder made from ``identity``."""
    try:
        check_bert_dir(out_dir, read_checkpoint=False)
        record = json.loads((out_dir / PRETRAIN_FILE).read_text(encoding="utf-8"))
    except (BertDirError, OSError, ValueError):
        return None
    same = isinstance(record, dict) and all(record.get(k) == identity[k] for k in IDENTITY)
    return record if same else None


def pretrain(
    bert_dir: str | Path,
    texts: Sequence[str],
    out_dir: str | Path,
    *,
    epochs: int = default("stage0_epochs"),
    batch_size: int = default("stage0_batch_size"),
    lr: float = default("stage0_lr"),
    maxlen: int = default("maxlen"),
    seed: int = default("seed"),
    mask_rate: float = default("stage0_mask_rate"),
    data_files: Mapping[str, str | Path] | None = None,
    jit_compile: bool = default("stage0_jit_compile"),
    precision: str = default("precision"),
    verbose: bool = True,
    return_model: bool = False,
) -> dict:
    """Continue MLM training of ``bert_dir``'s encoder on ``texts``; write ``out_dir``.

    The defaults are stage 0's settings (core.config). Texts are tokenized with
    ``CharTokenizer`` into rows of at most ``maxlen + 2`` tokens; each epoch draws fresh masks
    and a fresh length-grouped order from ``seed`` and trains on its full batches
    (``length_batches``: the ``len(texts) % batch_size`` left over wait for a later epoch's
    order; the whole set if smaller than a batch).
    ``data_files`` (``{name: path}``) are recorded with
    their sha256. ``out_dir`` gets the source's config and vocabulary, the trained weights under
    Google names (MLM head included) and ``PRETRAIN.json``, all at once; a folder there made from
    other inputs is replaced. If ``out_dir`` already holds a folder made from the same source
    weights, texts and parameters, nothing is trained and its record is returned with
    ``skipped=True``.

    ``precision`` (core.model.precision: ``auto`` may turn XLA off) is what training computes in.

    Returns the record: source, data, params, ``history`` (per-epoch masked-token ``loss`` and
    ``accuracy``), ``final_loss``, ``seconds``, ``skipped``; with ``return_model`` also
    ``model``, the trained MLM model (None when skipped).
    """
    bert_dir, out_dir = resolve(bert_dir), resolve(out_dir)
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("maxlen", maxlen)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"parameter {name}={value!r}: expected an integer >= 1")
    if not 0 < lr < 1:
        raise ValueError(f"parameter lr={lr!r}: expected a learning rate in (0, 1)")
    if not 0 < mask_rate < 1:
        raise ValueError(f"parameter mask_rate={mask_rate!r}: expected a rate in (0, 1)")
    if out_dir == bert_dir:
        raise ValueError(f"out_dir {out_dir} is the source folder: write somewhere else")
    texts = [str(t) for t in texts]
    if not texts:
        raise ValueError("texts: expected at least one sentence to train on")
    config = check_bert_dir(bert_dir)
    if maxlen + 2 > config["max_position_embeddings"]:
        raise ValueError(
            f"parameter maxlen={maxlen}: [CLS] + {maxlen} + [SEP] exceeds the "
            f"model's {config['max_position_embeddings']} positions"
        )

    params = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": float(lr),
        "maxlen": maxlen,
        "seq_len": maxlen + 2,
        "seed": seed,
        "mask_rate": float(mask_rate),
        "pad_multiple": PAD_MULTIPLE,
    }
    identity = {
        "source_weights_sha256": weights_sha256(bert_dir),
        "texts_sha256": _texts_sha256(texts),
        "params": params,
    }
    record = _done(out_dir, identity)
    if record is not None:
        if verbose:
            print(
                f"{out_dir} already holds this pre-training (loss {record['final_loss']:.4f}); "
                "skipped"
            )
        return {**record, "skipped": True, **({"model": None} if return_model else {})}
    if verbose and out_dir.exists():
        print(f"{out_dir} holds another pre-training (other inputs or parameters): replacing it")

    vocab = load_vocab(bert_dir)
    specials = special_token_ids(vocab)
    rows = CharTokenizer(vocab, maxlen).encode_all(texts)

    keras.utils.set_random_seed(seed)  # head initialisation and dropout
    rng = np.random.default_rng(seed)  # masks and order
    n_predictions = max_predictions(maxlen, mask_rate)
    choice = choose(precision, jit_compile)
    if verbose and precision != "float32":
        print(f"stage 0: {choice}", flush=True)
    # Any width: each batch is padded only as far as it needs (length_batches).
    model = build_mlm_model(
        bert_dir,
        lr,
        seq_len=None,
        jit_compile=choice.jit_compile,
        n_predictions=n_predictions,
        precision=choice.precision,
    )
    history: dict[str, list[float]] = {"loss": [], "accuracy": []}
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        tick = time.perf_counter()
        batches = []
        for ids in length_batches(rows, batch_size, seed, epoch, PAD_MULTIPLE, maxlen + 2):
            inputs, target = mask_batch(
                ids,
                rng,
                config["vocab_size"],
                specials.values(),
                mask_rate,
                mask_id=specials["[MASK]"],
            )
            batches.append(prediction_slots(inputs, target, n_predictions))
        n_masked = sum(int(inputs[3].sum()) for inputs, _ in batches)
        # initial_epoch: one epoch per fit (fresh masks each), numbered as the run's epoch.
        progress = [Progress("stage0", epochs)] if verbose else []
        fit = model.fit(
            _as_dataset(batches),
            initial_epoch=epoch - 1,
            epochs=epoch,
            verbose=0,
            callbacks=progress,
        )
        for key in history:
            history[key].append(float(fit.history[key][-1]))
        if verbose:
            print(
                f"epoch {epoch}/{epochs}: masked-token loss {history['loss'][-1]:.4f}, "
                f"accuracy {history['accuracy'][-1]:.4f} ({n_masked:,} masked "
                f"tokens, {time.perf_counter() - tick:.0f} s)",
                flush=True,
            )
    seconds = time.perf_counter() - start

    record = {
        **identity,
        "source": str(bert_dir),
        "data_files": {
            name: {"path": str(resolve(path)), "sha256": file_sha256(resolve(path))}
            for name, path in (data_files or {}).items()
        },
        "n_texts": len(texts),
        "history": history,
        "final_loss": history["loss"][-1],
        "final_accuracy": history["accuracy"][-1],
        "seconds": round(seconds, 1),
        "jit_compile": choice.jit_compile,
        "precision": choice.record(),
        "versions": {"tensorflow": tf.__version__},
    }
    vocab_lines = (bert_dir / VOCAB_FILE).read_text(encoding="utf-8").split("\n")
    if vocab_lines[-1] == "":
        vocab_lines.pop()
    text = json.dumps(record, indent=2, ensure_ascii=False) + "\n"
    # Stage 0 redoes a damaged folder (_done refuses it), but a pipeline skips a folder with a
    # PRETRAIN.json: hence "delete".
    rebuild = (
        f"delete {show_path(out_dir)} and run stage 0 again: the same python -m "
        f"core.pipeline command, or {NOTEBOOKS['stage0']} with the same parameters"
    )
    write_bert_dir(
        out_dir,
        config,
        vocab_lines,
        google_tensors(model, bert_dir),
        extra_files={PRETRAIN_FILE: text},
        rebuild=rebuild,
    )
    if verbose:
        print(f"wrote {out_dir} ({seconds:.0f} s)")
    return {**record, "skipped": False, **({"model": model} if return_model else {})}
