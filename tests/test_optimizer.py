"""core.model.optimizer: layer-wise decreasing learning rates, checked on real Adam steps."""

from __future__ import annotations

import numpy as np
import pytest

from core.model.classifier import build_model
from core.model.optimizer import LayerwiseAdam, layer_depth, layer_scale, learning_rate

CLS, SEP = 3, 4


def test_layer_depth_reads_keras_bert_names():
    assert layer_depth("Embedding-Token/embeddings:0") == 0
    assert layer_depth("Embedding-Norm/gamma:0") == 0
    assert layer_depth("Encoder-1-FeedForward/Encoder-1-FeedForward_W1:0") == 1
    assert layer_depth("Encoder-12-MultiHeadSelfAttention-Norm/beta:0") == 12
    assert layer_depth("head_output/kernel:0") is None
    assert layer_depth("MLM-Dense/kernel:0") is None


def test_layer_scale_decays_downwards_from_the_top():
    assert layer_scale("Encoder-4-FeedForward/W:0", 0.5, top=4) == 1.0
    assert layer_scale("Encoder-2-FeedForward/W:0", 0.5, top=4) == 0.25
    assert layer_scale("Embedding-Token/embeddings:0", 0.5, top=4) == 0.0625
    assert layer_scale("head_output/kernel:0", 0.5, top=4) == 1.0


@pytest.mark.parametrize("decay", [0, -0.5, 1.5, True, "0.8"])
def test_bad_decay_is_refused(decay):
    with pytest.raises(ValueError, match="layer decay"):
        LayerwiseAdam(decay, top=2)


def first_step(bert_dir, layer_decay, jit_compile):
    """Each trainable weight's largest change after one Adam step at lr 1e-3."""
    model = build_model(bert_dir, lr=1e-3, layer_decay=layer_decay, jit_compile=jit_compile)
    ids = np.array([[CLS, 10, 11, 12, SEP]] * 4, dtype=np.int32)
    before = {w.name: w.numpy() for w in model.trainable_weights}
    model.fit((ids, np.zeros_like(ids)), np.array([[1], [0], [1], [0]]), batch_size=4, verbose=0)
    return {w.name: np.abs(w.numpy() - before[w.name]).max() for w in model.trainable_weights}


@pytest.mark.parametrize("jit_compile", [False, True])
def test_each_layer_steps_at_its_own_rate(tiny_bert_dir, jit_compile):
    # Adam's first step moves every weight with a clear gradient by the rate itself (m/sqrt(v)
    # is +-1), so the largest change of each weight is its layer's rate.
    steps = first_step(tiny_bert_dir, 0.5, jit_compile)
    ffn = "Encoder-{0}-FeedForward/Encoder-{0}-FeedForward_W1:0"
    assert steps["head_output/kernel:0"] == pytest.approx(1e-3, rel=1e-3)
    assert steps[ffn.format(2)] == pytest.approx(1e-3, rel=1e-3)  # the top layer
    assert steps[ffn.format(1)] == pytest.approx(5e-4, rel=1e-3)
    assert steps["Embedding-Norm/gamma:0"] == pytest.approx(2.5e-4, rel=1e-3)


def test_no_decay_is_plain_adam(tiny_bert_dir):
    model = build_model(tiny_bert_dir, lr=1e-3)
    assert type(model.optimizer).__name__ == "Adam"
    steps = first_step(tiny_bert_dir, 1.0, jit_compile=False)
    assert steps["Embedding-Norm/gamma:0"] == pytest.approx(1e-3, rel=1e-3)


# ------------------------------------------------------------------ the learning-rate schedule


def test_constant_schedule_is_the_plain_rate():
    assert learning_rate(3e-5) == 3e-5
    assert learning_rate(3e-5, "constant", total_steps=100, warmup=0.5) == 3e-5


def test_cosine_schedule_warms_up_then_decays_to_zero():
    schedule = learning_rate(1e-4, "cosine", total_steps=100, warmup=0.1)
    at = [float(schedule(step)) for step in (0, 5, 10, 55, 100)]
    assert at[0] == pytest.approx(0.0, abs=1e-12)
    assert at[1] == pytest.approx(5e-5)  # linear warm-up: halfway at step 5 of 10
    assert at[2] == pytest.approx(1e-4)  # the peak at the end of the warm-up
    assert at[3] == pytest.approx(5e-5)  # cosine: half the peak halfway through the decay
    assert at[4] == pytest.approx(0.0, abs=1e-12)
    no_warmup = learning_rate(1e-4, "cosine", total_steps=10)
    assert float(no_warmup(0)) == pytest.approx(1e-4)
    assert float(no_warmup(10)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    "args, match",
    [(("step",), "schedule="), (("cosine", 0), "total_steps="), (("cosine", 10, 1.0), "warmup=")],
)
def test_learning_rate_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        learning_rate(1e-4, *args)
