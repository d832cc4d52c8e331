"""Stage 0, within-task MLM pre-training: masking statistics, the MLM model's loss, training,
the written BERT folder (exact write-back, MLM head kept) and resuming."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from fakes import TINY_VOCAB, random_hf_state_dict, tiny_config
from keras_bert import build_model_from_config, load_model_weights_from_checkpoint
from tiny_run import subprocess_env

from core.data.tokenizer import CharTokenizer, load_vocab
from core.model.classifier import load_encoder
from core.training.mlm import (
    PRETRAIN_FILE,
    _done,
    build_mlm_model,
    encoder_of,
    length_batches,
    mask_batch,
    max_predictions,
    pad_ids,
    prediction_slots,
    pretrain,
    special_token_ids,
)
from core.weights.google_ckpt import (
    check_bert_dir,
    hf_to_google,
    write_bert_dir,
)

VOCAB = {t: i for i, t in enumerate(TINY_VOCAB)}
SPECIALS = special_token_ids(VOCAB)  # [PAD] 0, [UNK] 2, [CLS] 3, [SEP] 4, [MASK] 5
CHARS = TINY_VOCAB[6:]


def _rows(rng, n, low, high, unk_rate=0.0):
    """Padded [CLS] chars [SEP] rows of low..high-1 characters, some characters [UNK]."""
    rows = []
    for _ in range(n):
        body = rng.integers(6, len(TINY_VOCAB), size=rng.integers(low, high))
        body[rng.random(len(body)) < unk_rate] = SPECIALS["[UNK]"]
        rows.append(np.concatenate([[SPECIALS["[CLS]"]], body, [SPECIALS["[SEP]"]]]))
    return pad_ids(rows, high + 2)


def _mask(ids, seed=0, rate=0.15):
    return mask_batch(
        ids,
        np.random.default_rng(seed),
        len(TINY_VOCAB),
        SPECIALS.values(),
        rate,
        mask_id=SPECIALS["[MASK]"],
    )


def test_mask_batch_statistics():
    ids = _rows(np.random.default_rng(1), 4000, 8, 20, unk_rate=0.05)
    (tokens, segments, masked), target = _mask(ids)
    assert tokens.shape == segments.shape == masked.shape == ids.shape and tokens.dtype == np.int32
    assert target.shape == (*ids.shape, 1) and (target[..., 0] == ids).all()
    assert not segments.any() and set(np.unique(masked)) == {0, 1}

    special = np.isin(ids, [0, *SPECIALS.values()])
    assert not masked[special].any(), "padding, [CLS], [SEP], [UNK] are never masked"
    assert (tokens[~masked.astype(bool)] == ids[~masked.astype(bool)]).all()
    assert masked.sum(axis=1).min() >= 1
    rate = masked.sum() / (~special).sum()
    assert abs(rate - 0.15) < 0.01, rate  # >= 7 maskable tokens: no min-1 inflation

    sel = masked.astype(bool)
    as_mask = (tokens[sel] == SPECIALS["[MASK]"]).mean()
    kept = (tokens[sel] == ids[sel]).mean()
    assert abs(as_mask - 0.8) < 0.02 and abs(kept - 0.1) < 0.015, (as_mask, kept)
    swapped = tokens[sel][(tokens[sel] != SPECIALS["[MASK]"]) & (tokens[sel] != ids[sel])]
    assert abs(len(swapped) / sel.sum() - 0.1) < 0.015
    assert not np.isin(swapped, [0, *SPECIALS.values()]).any(), "replacements are never special"

    again = _mask(ids)
    assert all((a == b).all() for a, b in zip(again[0], [tokens, segments, masked], strict=True))


def test_mask_batch_short_and_empty_rows():
    ids = _rows(np.random.default_rng(2), 2000, 1, 4)  # 1-3 characters: min-1 dominates
    _, masked = _mask(ids)[0][1:]
    assert (masked.sum(axis=1) == 1).all()
    only_special = pad_ids([np.array([3, 2, 2, 4])], 6)  # [CLS] [UNK] [UNK] [SEP]
    assert not _mask(only_special)[0][2].any()
    with pytest.raises(ValueError, match="padded"):
        _mask(np.array([3, 7, 4]))


@pytest.fixture(scope="module")
def headless_dir(tmp_path_factory):
    """The tiny BERT without cls/* or pooler variables, like m3e-small."""
    source = tmp_path_factory.mktemp("headless") / "bert"
    tensors = hf_to_google(random_hf_state_dict(len(TINY_VOCAB), seed=3))
    tensors = {
        k: v
        for k, v in tensors.items()
        if k.startswith("bert/embeddings/") or k.startswith("bert/encoder/")
    }
    config = tiny_config(len(TINY_VOCAB))
    return write_bert_dir(source, config, TINY_VOCAB, tensors)


def test_mlm_model_head_and_masked_loss(tiny_bert_dir, headless_dir):
    model = build_mlm_model(tiny_bert_dir, 1e-3, seq_len=12)
    ckpt = str(tiny_bert_dir / "bert_model.ckpt")
    np.testing.assert_array_equal(
        model.get_layer("MLM-Sim").get_weights()[0],
        tf.train.load_variable(ckpt, "cls/predictions/output_bias"),
    )
    np.testing.assert_array_equal(
        model.get_layer("MLM-Dense").get_weights()[0],
        tf.train.load_variable(ckpt, "cls/predictions/transform/dense/kernel"),
    )
    assert [o.name for o in model.outputs] and len(model.outputs) == 1  # no NSP output

    fresh = build_mlm_model(headless_dir, 1e-3, seq_len=12)
    assert not fresh.get_layer("MLM-Sim").get_weights()[0].any()

    ids = _rows(np.random.default_rng(4), 8, 3, 10)
    inputs, target = _mask(ids, rate=0.3)
    sel = inputs[2].astype(bool)
    slot_inputs, slot_target = prediction_slots(inputs, target, max_predictions(10, 0.3))
    loss, acc = model.evaluate(slot_inputs, slot_target, batch_size=8, verbose=0)

    # Reference: keras-bert's own MLM output at every position, same weights, read where masked.
    full, config = build_model_from_config(
        str(tiny_bert_dir / "bert_config.json"), training=True, seq_len=12
    )
    load_model_weights_from_checkpoint(full, config, ckpt, training=True)
    probs = full.predict(inputs, verbose=0)[0]
    picked = np.take_along_axis(probs, target, axis=-1)[..., 0]
    assert loss == pytest.approx(-np.log(picked[sel]).mean(), rel=1e-4)  # masked tokens only
    assert acc == pytest.approx((probs.argmax(-1) == ids)[sel].mean())
    slot_probs = model.predict(slot_inputs, verbose=0)
    np.testing.assert_allclose(slot_probs[slot_inputs[3] == 1], probs[sel], atol=1e-6)


def test_prediction_slots_hold_every_masked_position():
    ids = _rows(np.random.default_rng(6), 3000, 1, 20)  # 1-19 characters, maxlen 20 as default
    inputs, target = _mask(ids)
    k = max_predictions(20, 0.15)
    assert k == 4 and inputs[2].sum(axis=1).max() <= k  # the bound holds on 3,000 rows
    (tokens, segments, positions, valid), slot_target = prediction_slots(inputs, target, k)
    assert positions.shape == valid.shape == slot_target.shape[:2] == (len(ids), k)
    assert (tokens == inputs[0]).all() and (segments == inputs[1]).all()
    for row in range(len(ids)):
        where = np.flatnonzero(inputs[2][row])
        n = len(where)
        assert (positions[row, :n] == where).all() and valid[row, :n].all()
        assert not valid[row, n:].any() and not positions[row, n:].any()
        assert (slot_target[row, :n, 0] == ids[row, where]).all()
    with pytest.raises(ValueError, match="n_predictions=1"):
        prediction_slots(inputs, target, 1)


def test_length_batches_pad_each_batch_only_as_far_as_it_needs():
    rng = np.random.default_rng(8)
    rows = [np.full(n, i + 1) for i, n in enumerate(rng.integers(7, 23, size=100))]  # 7-22 tokens
    epoch1 = length_batches(rows, 16, seed=3, epoch=1, multiple=4, seq_len=22)
    assert [b.shape[0] for b in epoch1] == [16] * 6  # full batches; 4 rows wait for an epoch
    seen = []
    for batch in epoch1:
        lengths = (batch != 0).sum(axis=1)
        assert batch.shape[1] == min(-(-lengths.max() // 4) * 4, 22)  # longest, rounded up
        seen += [tuple(r[r != 0]) for r in batch]
    assert len(set(seen)) == len(seen) and set(seen) <= {tuple(r) for r in rows}
    assert np.mean([b.shape[1] for b in epoch1]) < 20  # grouped: most batches narrower than 22
    again = length_batches(rows, 16, seed=3, epoch=1, multiple=4, seq_len=22)
    assert all((a == b).all() for a, b in zip(epoch1, again, strict=True))
    epoch2 = length_batches(rows, 16, seed=3, epoch=2, multiple=4, seq_len=22)
    assert [tuple(b[0]) for b in epoch2] != [tuple(b[0]) for b in epoch1]  # a fresh order
    [whole] = length_batches(rows[:5], 16, seed=3, epoch=1, multiple=4, seq_len=22)
    assert whole.shape[0] == 5  # fewer rows than a batch: all of them


def test_pretrain_writes_exact_folder_and_resumes(headless_dir, tmp_path):
    rng = np.random.default_rng(5)
    sentences = ["".join(rng.choice(CHARS, size=rng.integers(5, 20))) for _ in range(8)]
    texts = sentences * 8  # 64 sentences: a tiny set to memorize
    data = tmp_path / "texts.txt"
    data.write_text("\n\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "task-bert"
    kwargs = dict(
        epochs=6,
        batch_size=16,
        lr=3e-3,
        maxlen=20,
        seed=7,
        mask_rate=0.15,
        jit_compile=False,
        # float32 as the folder is read back: under auto a bfloat16 model would differ from it
        # by its rounding (~0.03 here), which is not what this write-back check is about.
        precision="float32",
        verbose=False,
    )
    result = pretrain(
        headless_dir, texts, out, data_files={"texts": data}, return_model=True, **kwargs
    )
    loss = result["history"]["loss"]
    assert not result["skipped"] and len(loss) == 6
    assert loss[-1] < loss[0] - 0.5, loss

    config = check_bert_dir(out)
    assert config == json.loads((headless_dir / "bert_config.json").read_text())
    assert (out / "vocab.txt").read_text() == (headless_dir / "vocab.txt").read_text()
    names = dict(tf.train.list_variables(str(out / "bert_model.ckpt")))
    assert names["cls/predictions/output_bias"] == [len(TINY_VOCAB)]
    assert "cls/predictions/transform/LayerNorm/gamma" in names
    src = str(headless_dir / "bert_model.ckpt")
    pos_new = tf.train.load_variable(
        str(out / "bert_model.ckpt"), "bert/embeddings/position_embeddings"
    )
    pos_old = tf.train.load_variable(src, "bert/embeddings/position_embeddings")
    assert pos_new.shape == pos_old.shape == (64, 32)
    np.testing.assert_array_equal(pos_new[22:], pos_old[22:])  # beyond seq_len: untouched
    assert np.abs(pos_new[:22] - pos_old[:22]).max() > 1e-4  # trained rows moved

    record = json.loads((out / PRETRAIN_FILE).read_text())
    assert record["params"]["seq_len"] == 22 and record["n_texts"] == 64
    assert record["final_loss"] == loss[-1] and len(record["data_files"]["texts"]["sha256"]) == 64

    # Write-back is exact: the suite's encoder on the new folder = the trained model's encoder.
    tok = CharTokenizer(load_vocab(out), 20)
    ids = pad_ids(tok.encode_all(sentences), 22)
    trained = encoder_of(result["model"]).predict([ids, np.zeros_like(ids)], verbose=0)
    loaded = load_encoder(out).predict([ids, np.zeros_like(ids)], verbose=0)
    assert np.abs(trained - loaded).max() < 1e-5

    # The MLM head is written too, so a later run continues from it (build_mlm_model loads it).
    head = result["model"].get_layer("MLM-Norm").get_weights()[1]
    written = tf.train.load_variable(
        str(out / "bert_model.ckpt"), "cls/predictions/transform/LayerNorm/beta"
    )
    np.testing.assert_array_equal(written, head)

    stamp = (out / "bert_model.ckpt.index").stat().st_mtime_ns
    second = pretrain(headless_dir, texts, out, **kwargs)
    assert second["skipped"] and second["final_loss"] == loss[-1]
    assert (out / "bert_model.ckpt.index").stat().st_mtime_ns == stamp
    identity = {k: record[k] for k in ("source_weights_sha256", "texts_sha256")}
    assert _done(out, {**identity, "params": record["params"]}) is not None
    assert _done(out, {**identity, "params": {**record["params"], "seed": 8}}) is None
    assert _done(out, {**identity, "texts_sha256": "0" * 64, "params": record["params"]}) is None


def test_pretrain_refuses_bad_arguments(headless_dir, tmp_path):
    with pytest.raises(ValueError, match="source folder"):
        pretrain(headless_dir, ["好吃"], headless_dir)
    with pytest.raises(ValueError, match="epochs"):
        pretrain(headless_dir, ["好吃"], tmp_path / "x", epochs=0)
    with pytest.raises(ValueError, match="at least one"):
        pretrain(headless_dir, [], tmp_path / "x")
    with pytest.raises(ValueError, match="mask_rate"):
        pretrain(headless_dir, ["好吃"], tmp_path / "x", mask_rate=0)
    with pytest.raises(ValueError, match="64 positions"):
        pretrain(headless_dir, ["好吃"], tmp_path / "x", maxlen=63)
    assert not (tmp_path / "x").exists()


def test_pretrain_shows_progress_and_says_how_to_rebuild(headless_dir, tmp_path, capsys):
    """Stage 0 reports its epochs as stage 1 does (core.training.engine.Progress, on stderr), and
    its folder's manifest says how to make it again when a file of it is damaged."""
    out = tmp_path / "task-bert"
    pretrain(
        headless_dir,
        ["好吃不错", "服务很好"] * 16,
        out,
        epochs=2,
        batch_size=16,
        lr=1e-3,
        maxlen=8,
        jit_compile=False,
    )
    err = capsys.readouterr().err
    for epoch in (1, 2):
        assert f"[stage0] epoch {epoch}/2 batch 2/2  loss " in err, err
    rebuild = json.loads((out / "MANIFEST.json").read_text())["rebuild"]
    assert rebuild.startswith(f"delete {out} and run stage 0 again")


# Stage 0 in a fresh process, after `before` ran; prints the written weights' sha256 and whether
# the process still draws dropout from tf.random.Generator afterwards.
_STAGE0 = """
import hashlib, sys
{before}
from tensorflow import keras
from core.training.mlm import pretrain
out = sys.argv[2]
pretrain(sys.argv[1], ["好吃不错", "服务很好", "一般般吧"] * 11, out, epochs=2, batch_size=16,
         lr=1e-3, maxlen=8, seed=3, jit_compile=False, verbose=False)
data = open(out + "/bert_model.ckpt.data-00000-of-00001", "rb").read()
print(hashlib.sha256(data).hexdigest(), keras.backend.experimental.is_tf_random_generator_enabled())
"""


@pytest.mark.slow  # a kernel or a subprocess importing TensorFlow
def test_stage0_draws_do_not_depend_on_what_was_imported_first(headless_dir, tmp_path):
    """core.model.classifier switches a process to tf.random.Generator; stage 0's draws (and so the
    default encoder, and every figure measured on it) must stay the stateful ops' either way."""
    befores = {
        "model first": "import core.model.classifier",
        "legacy ops": "import core.training.mlm\nfrom tensorflow import keras\n"
        "keras.backend.experimental.disable_tf_random_generator()",
    }
    printed = {}
    for name, before in befores.items():
        out = tmp_path / name.replace(" ", "-")
        done = subprocess.run(
            [sys.executable, "-c", _STAGE0.format(before=before), str(headless_dir), str(out)],
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        printed[name] = done.stdout.split()
    assert printed["model first"][0] == printed["legacy ops"][0]
    assert printed["model first"][1] == "True"  # restored for stage 1 in the same process
