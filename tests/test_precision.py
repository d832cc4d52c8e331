"""Mixed precision (core.model.precision, core.model.classifier.mixed_precision) on the tiny random
BERT.

Tolerances, bfloat16 against float32 with the same weights: probabilities within 0.02 (bfloat16
keeps 8 significant bits, about 2-3 decimal digits, through two encoder layers); padding within
1e-6 (padded keys get exactly zero attention weight, so a row's numbers do not change).
"""

from __future__ import annotations

from dataclasses import replace

import h5py
import keras_bert.bert
import keras_transformer.transformer
import numpy as np
import pytest
import tensorflow as tf
from keras_layer_normalization import LayerNormalization
from keras_multi_head import MultiHeadAttention
from tensorflow import keras

from core.analysis.attribution import baseline_for, integrated_gradients
from core.config import ConfigError, Settings
from core.data.tokenizer import CharTokenizer, load_vocab
from core.io import save_weights
from core.model.classifier import build_head_model, build_model, copy_head_weights
from core.model.precision import Choice, Hardware, choose, cpu_flags, record
from core.training.engine import encode
from core.training.mlm import build_mlm_model, encoder_of, max_predictions, prediction_slots

CLS, SEP = 3, 4
MIXED = ("bfloat16", "float16")
AGREE = 0.02  # |p_float32 - p_bfloat16|, same weights (see the module docstring)
AMX = frozenset({"avx512f", "amx_bf16", "amx_tile", "avx512_bf16"})


def sentence(length: int, seed: int) -> np.ndarray:
    chars = np.random.default_rng(seed).integers(6, 206, size=length)
    return np.concatenate([[CLS], chars, [SEP]]).astype(np.int32)


def pad(rows, width=None) -> np.ndarray:
    width = width or max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), dtype=np.int32)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    return ids


def run(model, ids) -> np.ndarray:
    return model((ids, np.zeros_like(ids)), training=False).numpy()


def sharpen_head(model, seed: int = 0, scale: float = 5.0) -> None:
    """A large random output kernel: the tiny random encoder's scores then spread over (0, 1)."""
    dense = model.get_layer("head_output")
    kernel, bias = dense.get_weights()
    rng = np.random.default_rng(seed)
    dense.set_weights([rng.normal(0, scale / np.sqrt(len(kernel)), kernel.shape), bias])


@pytest.fixture(scope="module")
def models(tiny_bert_dir):
    """One frozen-encoder model per precision, same seed (so the same head), same sharp head."""
    out = {}
    for precision in ("float32", *MIXED):
        keras.utils.set_random_seed(0)
        out[precision] = build_model(tiny_bert_dir, bert_trainable=False, precision=precision)
        sharpen_head(out[precision])
    return out


BATCH = pad([sentence(n, n) for n in (3, 9, 14, 6, 11, 17)])


# ------------------------------------------------------------------ choosing


def test_explicit_settings_are_taken_as_they_are():
    for precision in ("float32", *MIXED):
        for jit in (True, False):
            choice = choose(precision, jit, Hardware())  # even where the hardware lacks it
            assert (choice.precision, choice.jit_compile, choice.reason) == (precision, jit, "set")
    assert choose("bfloat16", True).policy == "mixed_bfloat16"
    assert choose("float16", True).policy == "mixed_float16"
    assert choose("float32", True).policy == "float32"


def test_auto_without_bfloat16_picks_float32_and_keeps_the_compiler():
    for jit in (True, False):
        choice = choose("auto", jit, Hardware(cpu_flags=frozenset({"avx2", "avx512f", "fma"})))
        assert (choice.precision, choice.jit_compile) == ("float32", jit)
        assert "without amx_bf16 or avx512_bf16" in choice.reason


def test_auto_on_a_bfloat16_cpu_picks_bfloat16_with_onednn():
    choice = choose("auto", True, Hardware(cpu_flags=AMX))
    assert (choice.precision, choice.jit_compile) == ("bfloat16", False)  # XLA off: oneDNN
    assert choice.reason == "auto: CPU with amx_bf16, avx512_bf16"
    only_avx = choose("auto", True, Hardware(cpu_flags=frozenset({"avx512_bf16"})))
    assert only_avx.precision == "bfloat16"
    assert str(only_avx) == "precision bfloat16 (auto: CPU with avx512_bf16), no XLA"
    # oneDNN switched off (TF_ENABLE_ONEDNN_OPTS=0): bfloat16 would be emulated, slower.
    assert choose("auto", True, Hardware(cpu_flags=AMX, onednn=False)).precision == "float32"


@pytest.mark.parametrize(
    ("capabilities", "expected"),
    [([(8, 0)], "bfloat16"), ([(9, 0), (8, 6)], "bfloat16"), ([(7, 5)], "float16"),
     ([(8, 0), (7, 0)], "float16"), ([(6, 1)], "float32"), ([None], "float32")],
)  # fmt: skip
def test_auto_on_gpus_follows_the_weakest_compute_capability(capabilities, expected):
    choice = choose("auto", True, Hardware(gpus=tuple(capabilities), cpu_flags=AMX))
    assert (choice.precision, choice.jit_compile) == (expected, True)  # the GPU, not the CPU


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 avx512_bf16\n\nflags : x\n")
    assert cpu_flags(info) == {"fpu", "avx512f", "amx_bf16", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_the_setting_is_checked_and_recorded():
    assert Settings().precision == "auto"  # the accuracy check held (docs/results.md)
    assert Settings(precision="auto").precision == "auto"
    with pytest.raises(ConfigError, match="precision='bf16'"):
        Settings(precision="bf16")
    with pytest.raises(ValueError, match="expected one of"):
        choose("half", False)
    with pytest.raises(ValueError, match="choose resolves auto"):
        build_model("unused", precision="auto")
    assert record("float32") == {
        "setting": "float32",
        "precision": "float32",
        "policy": "float32",
        "reason": "set",
    }
    assert isinstance(choose("auto", False), Choice)  # this machine, whatever it has


@pytest.mark.parametrize(
    ("hardware", "same_as"),
    [(Hardware(), "float32"), (Hardware(cpu_flags=AMX), "bfloat16")],
    ids=["cpu-without-bf16", "cpu-with-amx"],
)
def test_auto_is_keyed_as_what_it_computes_in(monkeypatch, tmp_path, hardware, same_as):
    """A step's key and a run's identity hold the precision ``auto`` chose, not the word: on a CPU
    without bf16 the default's steps and run folder are float32's (stored before ``auto`` was the
    default), with AMX they are bfloat16's, and the two differ."""
    from tiny_run import make_tiny_inputs

    import core.model.precision as precision
    from core.runs import steps
    from core.runs.folder import default_run_dir

    monkeypatch.setattr(precision, "detect", lambda: hardware)
    tiny = make_tiny_inputs(tmp_path).settings
    auto, fixed = replace(tiny, precision="auto"), replace(tiny, precision=same_as)
    other = replace(tiny, precision="bfloat16" if same_as == "float32" else "float32")
    for section, fold in (("stage0", None), ("stage1", 0), ("stage2", 1)):
        assert steps.ref(auto, section, fold).name == steps.ref(fixed, section, fold).name
        assert steps.ref(auto, section, fold).name != steps.ref(other, section, fold).name
    assert steps.ref(auto, "eda").name == steps.ref(other, "eda").name  # it reads no model
    assert default_run_dir(auto) == default_run_dir(fixed) != default_run_dir(other)


# ------------------------------------------------------------------ the model


@pytest.mark.parametrize("precision", MIXED)
def test_mixed_model_keeps_float32_variables_and_outputs(models, precision):
    model = models[precision]
    assert {w.dtype for w in model.weights} == {tf.float32}
    encoder = keras.Model(model.inputs, model.get_layer("head_avg").input)
    assert model.get_layer("Encoder-1-FeedForward").compute_dtype == precision
    assert model.get_layer("Encoder-1-MultiHeadSelfAttention").compute_dtype == precision
    assert encoder.output.dtype == tf.float32  # the last LayerNormalization computes in float32
    for name in ("head_attention", "head_max", "head_avg", "head_output"):
        assert model.get_layer(name).compute_dtype == "float32", name
    p = run(model, BATCH)
    assert p.dtype == np.float32 and np.all((p > 0) & (p < 1))


def test_same_seed_same_initial_weights_in_every_precision(models):
    reference = models["float32"].get_weights()
    for precision in MIXED:
        for a, b in zip(reference, models[precision].get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)


def test_bfloat16_predictions_agree_with_float32(models):
    p32, p16 = run(models["float32"], BATCH), run(models["bfloat16"], BATCH)
    assert p32.std() > 0.1, "the test needs scores that differ between sentences"
    assert np.abs(p32 - p16).max() <= AGREE
    assert not np.array_equal(p32, p16)  # bfloat16 really ran


@pytest.mark.parametrize("precision", MIXED)
def test_padding_does_not_change_a_score(models, precision):
    model, s = models[precision], sentence(5, 10)
    alone = run(model, pad([s]))[0, 0]
    in_batch = run(model, pad([sentence(15, 11), s]))[1, 0]
    wider = run(model, pad([s], width=40))[0, 0]
    assert in_batch == pytest.approx(alone, abs=1e-6)
    assert wider == pytest.approx(alone, abs=1e-6)


def test_building_a_mixed_model_leaves_the_float32_path_alone(models, tiny_bert_dir):
    assert keras.mixed_precision.global_policy().name == "float32"
    assert keras_transformer.transformer.MultiHeadAttention is MultiHeadAttention
    assert keras_transformer.transformer.LayerNormalization is LayerNormalization
    assert keras_bert.bert.LayerNormalization is LayerNormalization
    model = build_model(tiny_bert_dir)
    assert {type(layer).__module__.split(".")[0] for layer in model.layers} >= {"keras_multi_head"}
    mixed = [
        layer
        for layer in model.layers
        if type(layer).__module__ == "core.model.classifier" and "Mixed" in type(layer).__name__
    ]
    assert not mixed
    assert {layer.compute_dtype for layer in model.layers} == {"float32"}


@pytest.mark.parametrize("precision", ("float32", *MIXED))
def test_every_precision_trains(tiny_bert_dir, precision):
    keras.utils.set_random_seed(1)
    model = build_model(tiny_bert_dir, lr=1e-3, precision=precision)
    if precision == "float16":  # tf-keras wraps a mixed_float16 model's optimizer
        assert isinstance(model.optimizer, keras.mixed_precision.LossScaleOptimizer)
    else:
        assert not isinstance(model.optimizer, keras.mixed_precision.LossScaleOptimizer)
    y = np.array([[0], [1], [0], [1], [1], [0]], dtype=np.float32)
    before = model.get_layer("Encoder-1-FeedForward").get_weights()[0].copy()
    losses = model.fit((BATCH, np.zeros_like(BATCH)), y, epochs=4, batch_size=6, verbose=0)
    losses = losses.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    after = model.get_layer("Encoder-1-FeedForward").get_weights()[0]
    assert after.dtype == np.float32 and not np.array_equal(before, after)


def test_bfloat16_trains_under_xla(tiny_bert_dir):
    keras.utils.set_random_seed(1)
    model = build_model(tiny_bert_dir, lr=1e-3, jit_compile=True, precision="bfloat16")
    y = np.array([[0], [1], [0], [1], [1], [0]], dtype=np.float32)
    loss = model.fit((BATCH, np.zeros_like(BATCH)), y, epochs=2, verbose=0).history["loss"]
    assert np.all(np.isfinite(loss))


def test_bfloat16_weights_load_into_a_float32_model(models, tiny_bert_dir, tmp_path):
    """What core.serving.export and core.serving.predict build: float32 models reading a run's
    weight files."""
    path = tmp_path / "weights.h5"
    save_weights(models["bfloat16"], path)
    dtypes = []
    with h5py.File(path) as f:
        f.visititems(lambda _, obj: dtypes.append(obj.dtype) if hasattr(obj, "dtype") else None)
    assert len(dtypes) == len(models["bfloat16"].weights) and set(dtypes) == {np.dtype("float32")}
    float32 = build_model(tiny_bert_dir, bert_trainable=False)
    float32.load_weights(str(path))
    np.testing.assert_array_equal(run(float32, BATCH), run(models["float32"], BATCH))


# ------------------------------------------------------------------ stage 2 and attribution


def test_stage2_head_on_a_bfloat16_encoder(models):
    full = models["bfloat16"]
    encoder = keras.Model(full.inputs, full.get_layer("head_avg").input)
    rows = [sentence(n, 40 + n) for n in (4, 12, 7)]
    feats = encode(encoder, rows, width=20, batch_size=2)
    assert feats.dtype == np.float32 and not feats[0, len(rows[0]) :].any()
    head = build_head_model(feats.shape[-1])
    copy_head_weights(full, head)
    direct = run(full, pad(rows))[:, 0]
    np.testing.assert_allclose(head.predict(feats, verbose=0)[:, 0], direct, atol=1e-5)
    loss = head.fit(feats, np.array([[0.0], [1.0], [1.0]]), epochs=1, verbose=0).history["loss"]
    assert np.isfinite(loss[0])


def test_attribution_on_a_bfloat16_encoder(models, tiny_bert_dir):
    vocab = load_vocab(tiny_bert_dir)
    ids = CharTokenizer(vocab, 20).encode_ids("服务很好菜也新鲜")
    baseline = baseline_for(ids, vocab)
    results = {p: integrated_gradients(models[p], ids, baseline) for p in ("float32", "bfloat16")}
    credits, logit, base = results["bfloat16"]
    assert credits.shape == (len(ids),) and np.all(np.isfinite(credits))
    assert credits[0] == 0 and credits[-1] == 0  # [CLS] and [SEP] are the baseline's own
    # Completeness holds as in float32 up to bfloat16's rounding of the path's logits.
    assert abs(credits.sum() - (logit - base)) <= 0.05 * abs(logit - base) + 0.05
    assert logit == pytest.approx(results["float32"][1], abs=0.2)


# ------------------------------------------------------------------ stage 0


@pytest.mark.parametrize("precision", MIXED)
def test_mlm_model_trains_with_a_float32_softmax(tiny_bert_dir, precision):
    model = build_mlm_model(tiny_bert_dir, 1e-3, seq_len=None, precision=precision)
    assert model.output.dtype == tf.float32
    assert model.get_layer("MLM-Sim").compute_dtype == "float32"
    assert model.get_layer("Encoder-1-FeedForward").compute_dtype == precision
    assert encoder_of(model).output.dtype == tf.float32
    assert {w.dtype for w in model.weights} == {tf.float32}
    reference = build_mlm_model(tiny_bert_dir, 1e-3, seq_len=None)
    rng = np.random.default_rng(0)
    ids = pad([sentence(n, n) for n in rng.integers(4, 12, size=8)])
    masked = np.zeros_like(ids)
    masked[:, 1:3] = 1
    inputs, target = prediction_slots(
        [ids, np.zeros_like(ids), masked], ids[..., None], max_predictions(10, 0.3)
    )
    probs, probs32 = model.predict(inputs, verbose=0), reference.predict(inputs, verbose=0)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)  # a float32 softmax
    np.testing.assert_allclose(probs, probs32, atol=0.02)
    loss = model.fit(inputs, target, epochs=3, verbose=0).history["loss"]
    assert np.all(np.isfinite(loss)) and loss[-1] < loss[0]


# ------------------------------------------------------------------ a run


@pytest.mark.slow  # both stages of a fold, end to end
def test_a_bfloat16_run_trains_both_stages_and_says_so(tmp_path, capsys):
    from tiny_run import make_tiny_inputs

    from core.io import read_json
    from core.training import engine
    from core.training.mlm import pretrain

    tiny = make_tiny_inputs(tmp_path, extra={"precision": "bfloat16", "stage0_epochs": 0})
    s, run_dir = tiny.settings, tmp_path / "outputs" / "runs" / "r"
    stage1 = engine.train_stage1(s, 0, run_dir)
    stage2 = engine.train_stage2(s, 0, run_dir)
    assert 0 <= stage1["val_auc"] <= 1 and 0 <= stage2["val_auc"] <= 1
    assert "stage1 fold 0: precision bfloat16 (set), no XLA" in capsys.readouterr().out
    assert read_json(run_dir / "run.json")["precision"] == record("bfloat16")

    out = tmp_path / "stage0"
    result = pretrain(tiny.bert_dir, ["服务很好", "菜也新鲜"] * 8, out, epochs=1, batch_size=8,
                      precision="auto", jit_compile=True)  # fmt: skip
    chosen = choose("auto", True)  # this machine's choice
    assert result["precision"] == chosen.record() and result["jit_compile"] == chosen.jit_compile
    assert read_json(out / "PRETRAIN.json")["precision"] == chosen.record()
    assert f"stage 0: {chosen}" in capsys.readouterr().out


def test_a_machine_without_gpu_devices_is_looked_at_without_tensorflow(tmp_path):
    from core.model.precision import gpu_possible

    assert not gpu_possible(tmp_path)
    (tmp_path / "nvidia0").touch()
    assert gpu_possible(tmp_path)
    code = (
        "import sys; from core.model.precision import choose, gpu_possible; "
        "c = choose('auto', True); "
        "print(gpu_possible(), 'tensorflow' in sys.modules, c.precision)"
    )
    import subprocess
    import sys

    from core.config import ROOT

    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    ).stdout.split()
    if out[0] == "False":  # no GPU device here: auto decided without importing TensorFlow
        assert out[1] == "False" and out[2] in ("float32", "bfloat16")
