"""Integrated gradients over the token embeddings (core.analysis.attribution) on the tiny random
BERT."""

from __future__ import annotations

import numpy as np
import pytest
from tensorflow import keras

from core.analysis.attribution import (
    Explainer,
    baseline_for,
    features_model_of,
    integrated_gradients,
    to_html,
)
from core.data.tokenizer import CharTokenizer, load_vocab
from core.io import write_json
from core.model.classifier import build_head_model, build_model, copy_head_weights

TEXT = "服务很好菜也新鲜"  # every character is in the tiny vocabulary


def sharpen_head(model, seed: int, scale: float = 5.0) -> None:
    """A random head with a large output kernel, so the logit moves a lot between inputs."""
    rng = np.random.default_rng(seed)
    dense = model.get_layer("head_output")
    kernel, bias = dense.get_weights()
    dense.set_weights([rng.normal(0, scale / np.sqrt(len(kernel)), kernel.shape), bias])


def logit_of(model, ids) -> float:
    """The classifier's logit from token ids (the usual input path, not the embeddings')."""
    features = keras.Model(model.inputs, model.get_layer("head_output").input)
    f = features((ids[None], np.zeros((1, len(ids)))), training=False).numpy()
    kernel, bias = model.get_layer("head_output").get_weights()
    return float((f @ kernel + bias)[0, 0])


@pytest.fixture(scope="module")
def tiny_model(tiny_bert_dir):
    keras.utils.set_random_seed(0)
    model = build_model(tiny_bert_dir, bert_trainable=False)
    sharpen_head(model, 0)
    return model


@pytest.fixture(scope="module")
def vocab(tiny_bert_dir):
    return load_vocab(tiny_bert_dir)


def test_credits_add_up_to_the_logit_difference(tiny_model, vocab):
    ids = CharTokenizer(vocab, 20).encode_ids(TEXT)
    baseline = baseline_for(ids, vocab)
    credits, logit, base = integrated_gradients(tiny_model, ids, baseline, steps=64)
    delta = logit - base
    assert abs(delta) > 0.1, "the test needs a model whose logit moves"
    assert credits.shape == (len(TEXT) + 2,)
    assert abs(credits.sum() - delta) <= 0.01 * abs(delta)  # completeness within 1 %
    # The path's ends are the model's own logits for the sentence and for the baseline sentence.
    assert logit == pytest.approx(logit_of(tiny_model, ids), abs=1e-4)
    assert base == pytest.approx(logit_of(tiny_model, baseline), abs=1e-4)
    assert credits[0] == 0 and credits[-1] == 0  # [CLS], [SEP]: same at both ends of the path
    assert np.count_nonzero(credits[1:-1]) == len(TEXT)


def test_baseline_masks_every_character_and_keeps_cls_and_sep(vocab):
    ids = CharTokenizer(vocab, 20).encode_ids("好吃")
    baseline = baseline_for(ids, vocab)
    assert baseline.tolist() == [vocab["[CLS]"], vocab["[MASK]"], vocab["[MASK]"], vocab["[SEP]"]]


def test_a_character_equal_to_the_baseline_gets_no_credit(tiny_model, vocab):
    ids = CharTokenizer(vocab, 20).encode_ids("服务好")
    ids[2] = vocab["[MASK]"]
    credits, _, _ = integrated_gradients(tiny_model, ids, baseline_for(ids, vocab), steps=8)
    assert credits[2] == 0 and credits[1] != 0


def test_logit_model_shares_the_classifier_weights(tiny_model, vocab):
    ids = CharTokenizer(vocab, 20).encode_ids(TEXT)
    features = features_model_of(tiny_model)
    before, _, _ = integrated_gradients(tiny_model, ids, baseline_for(ids, vocab), 4, features)
    saved = tiny_model.get_weights()
    try:
        sharpen_head(tiny_model, 1)
        after, logit, _ = integrated_gradients(
            tiny_model, ids, baseline_for(ids, vocab), 4, features
        )
        assert not np.allclose(before, after)
        assert logit == pytest.approx(logit_of(tiny_model, ids), abs=1e-4)
    finally:
        tiny_model.set_weights(saved)


@pytest.fixture(scope="module")
def fake_run(tiny_bert_dir, tmp_path_factory):
    """A run folder with two folds of random (sharpened) models: what Explainer and
    core.serving.predict.score read, without training."""
    run_dir = tmp_path_factory.mktemp("run")
    keras.utils.set_random_seed(1)
    model = build_model(tiny_bert_dir, bert_trainable=False)
    head = build_head_model(model.get_layer("head_avg").input_shape[-1])
    for fold in range(2):
        sharpen_head(model, 10 + fold)
        (run_dir / "stage1" / f"fold{fold}").mkdir(parents=True)
        (run_dir / "stage2" / f"fold{fold}").mkdir(parents=True)
        model.save_weights(str(run_dir / "stage1" / f"fold{fold}" / "weights.h5"))
        sharpen_head(model, 20 + fold)  # stage 2: another head on the same encoder
        copy_head_weights(model, head)
        head.save_weights(str(run_dir / "stage2" / f"fold{fold}" / "head.h5"))
    write_json(run_dir / "run.json", {"bert_dir": str(tiny_bert_dir), "maxlen": 20, "n_folds": 2})
    write_json(run_dir / "ensemble" / "results.json", {"headline": {"stage1_weight": 0.7}})
    return run_dir


@pytest.fixture(scope="module")
def explainer(fake_run):
    return Explainer(fake_run, steps=64)


def test_explainer_scores_as_predict_and_explains_the_ensemble_logit(fake_run, explainer):
    from core.serving.predict import score

    texts = [TEXT, "价格便宜", "环境不错服务热情"]
    explained = [explainer.explain(t) for t in texts]
    expected = score(fake_run, texts)["probability"].to_numpy()
    np.testing.assert_allclose([e.probability for e in explained], expected, atol=1e-5)
    for e, text in zip(explained, texts, strict=True):
        assert e.chars == list(text) and e.credits.shape == (len(text),)
        delta = e.logit - e.baseline_logit
        assert abs(delta) > 0.1 and e.gap <= 0.01 * abs(delta)


def test_to_html_colours_each_character_by_its_credit(explainer):
    e = explainer.explain("好<b>")
    e.credits = np.array([1.0, -0.5, 0.0, 0.25])
    page = to_html([e], labels=[1])
    assert page.count("<span") == 4
    assert "rgba(0,160,60,1.00)" in page and "rgba(220,40,40,0.50)" in page
    assert "&lt;b&gt;" not in page and "&lt;" in page and "<b>" not in page  # escaped per char
    assert "<td>1</td>" in page and f"{e.probability:.3f}" in page


def test_one_fold_explains_that_folds_models_only(explainer):
    """The ensemble is the mean of its folds: per-fold scores and credits average to it."""
    whole = explainer.explain(TEXT)
    parts = [explainer.explain(TEXT, folds=[k]) for k in range(2)]
    assert whole.probability == pytest.approx(np.mean([p.probability for p in parts]), abs=1e-6)
    np.testing.assert_allclose(
        whole.credits, np.mean([p.credits for p in parts], axis=0), atol=1e-5
    )
    assert parts[0].probability != pytest.approx(parts[1].probability, abs=1e-3)
