"""Per-character attributions by integrated gradients over the token embeddings.

Integrated gradients (Sundararajan et al. 2017) credit each input position with
``(x - b) · mean over the path of d logit / d embedding``, the path running straight from a
baseline ``b`` to the sentence's embeddings ``x``; the credits add up to
``logit(x) - logit(b)`` up to the quadrature error, which ``integrated_gradients`` keeps
within 1 % of that difference by adding steps.

Baseline: the same sentence with every character's token embedding replaced by the ``[MASK]``
embedding — the token the encoder reads as "a character is here, unknown" — keeping ``[CLS]``,
``[SEP]``, the positions, the segment and the attention mask of the sentence. ``[MASK]`` rather
than ``[PAD]``: padding is masked out of attention, so its embedding gets almost no training and
the model never saw it inside a sentence. ``[CLS]`` and ``[SEP]`` are the same at both ends of the
path, so their credit is exactly 0. The explained quantity is the logit (the sigmoid's input):
unlike the probability it does not saturate, so credits stay visible on confident sentences.

``Explainer`` does this for a finished run's ensemble: the explained logit is the served mix of
its fold models' logits (core.ensembling.mix), integrated gradients being linear.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import core  # noqa: F401  (selects tf-keras before TensorFlow loads)

BASELINE_TOKEN = "[MASK]"
SPECIAL = ("[CLS]", "[SEP]")
_CELL = "font-size:1.3em;letter-spacing:1px;text-align:left"  # Jupyter right-aligns cells


@dataclass
class Explanation:
    """One sentence: its characters, their credits (sum ≈ ``logit - baseline_logit``), the
    explained logit, the baseline's, and the probability the scorer gives the sentence."""

    text: str
    chars: list[str]
    credits: np.ndarray
    logit: float
    baseline_logit: float
    probability: float

    @property
    def gap(self) -> float:
        """Completeness error: |sum of credits - (logit - baseline logit)|."""
        return abs(float(self.credits.sum()) - (self.logit - self.baseline_logit))


def features_model_of(model):
    """``(token embeddings, segment ids) -> head features`` of a ``core.model.classifier``
    classifier; the features times ``head_output``'s kernel plus its bias is the logit (see
    ``logits``).

    Shares every layer (so every weight) with ``model``: loading weights into ``model`` changes it.
    """
    from tensorflow import keras

    embeddings = model.get_layer("Embedding-Token").output[0]  # keras-bert: (embeddings, matrix)
    return keras.Model([embeddings, model.inputs[1]], model.get_layer("head_output").input)


def logits(model, features_model, embeddings, segments, mask):
    """The classifier's logits for a batch of token embeddings (a TensorFlow tensor)."""
    features = features_model([embeddings, segments], mask=[mask, None], training=False)
    dense = model.get_layer("head_output")
    return (features @ dense.kernel + dense.bias)[:, 0]


def integrated_gradients(
    model,
    token_ids,
    baseline_ids,
    steps: int = 64,
    features_model=None,
    tolerance: float = 0.01,
    max_steps: int = 512,
):
    """``(credits per token, logit at the input, logit at the baseline)`` for one sentence.

    ``token_ids`` and ``baseline_ids`` are equally long id sequences (``[CLS]`` … ``[SEP]``, no
    padding). The path integral uses the trapezoidal rule over ``steps`` intervals (all points in
    one batch), doubled until the credits add up to the logit difference within ``tolerance``
    of it (or 1e-3, whichever is larger) or ``max_steps`` is reached: max pooling makes the path
    kinked, so how many steps suffice depends on the sentence.
    """
    token_ids, baseline_ids = np.asarray(token_ids), np.asarray(baseline_ids)
    if token_ids.shape != baseline_ids.shape or token_ids.ndim != 1:
        raise ValueError(
            f"expected two equally long 1-D id sequences, found shapes "
            f"{token_ids.shape} and {baseline_ids.shape}"
        )
    features_model = features_model or features_model_of(model)
    while True:
        credits, logit, base = _path_integral(model, features_model, token_ids, baseline_ids, steps)
        gap = abs(credits.sum() - (logit - base))
        if gap <= max(tolerance * abs(logit - base), 1e-3) or steps >= max_steps:
            return credits, logit, base
        steps *= 2


def _path_integral(model, features_model, token_ids, baseline_ids, steps: int):
    import tensorflow as tf

    matrix = model.get_layer("Embedding-Token").embeddings
    x = tf.gather(matrix, token_ids)
    b = tf.gather(matrix, baseline_ids)
    alphas = tf.reshape(tf.linspace(0.0, 1.0, steps + 1), (-1, 1, 1))
    path = b[None] + alphas * (x - b)[None]
    n, width = steps + 1, len(token_ids)
    segments = tf.zeros((n, width), dtype=tf.float32)
    mask = tf.ones((n, width), dtype=tf.bool)  # the real sentence's mask all along the path
    with tf.GradientTape() as tape:
        tape.watch(path)
        out = logits(model, features_model, path, segments, mask)
    grads = tape.gradient(out, path).numpy()
    mean_grad = (grads[:-1].sum(0) + grads[1:].sum(0)) / (2 * steps)  # trapezoidal rule
    credits = ((x - b).numpy() * mean_grad).sum(-1)
    out = out.numpy()
    return credits, float(out[-1]), float(out[0])


def baseline_for(token_ids, vocab: dict[str, int], token: str = BASELINE_TOKEN) -> np.ndarray:
    """``token_ids`` with every id but ``[CLS]``/``[SEP]`` replaced by ``token``'s id."""
    keep = np.isin(token_ids, [vocab[t] for t in SPECIAL])
    return np.where(keep, token_ids, vocab[token]).astype(np.int32)


class Explainer:
    """A finished run's ensemble as a scorer that also explains: ``explain(text)``.

    The probability is the one ``core.serving.predict.score`` gives (per stage the mean of the fold
    models' probabilities, mixed by the run's served mix); the credits explain the same mix of
    the fold models' logits. A stage the mix leaves out is skipped. Every fold's weights are read
    once and kept in memory (one copy of the encoder per fold), so scoring a sentence is quick.
    """

    def __init__(self, run_dir: str | Path, steps: int = 64):
        from core.data.tokenizer import CharTokenizer, load_vocab
        from core.ensembling.mix import SERVED_STAGES, served_mix
        from core.io import read_json
        from core.model.classifier import HEAD_LAYERS, build_head_model, build_model
        from core.runs.steps import fold_dir

        run_dir = Path(run_dir)
        run = read_json(run_dir / "run.json")
        mix = served_mix(read_json(run_dir / "ensemble" / "results.json")["headline"])
        self.stage_weights = tuple(mix.as_dict().get(s, 0.0) for s in SERVED_STAGES)
        bert_dir = Path(run["bert_dir"])
        self.vocab = load_vocab(bert_dir)
        self.tokenizer = CharTokenizer(self.vocab, run["maxlen"])
        self.model = build_model(bert_dir, bert_trainable=False)
        self.features = features_model_of(self.model)
        self.steps = steps
        head = build_head_model(self.model.get_layer("head_avg").input_shape[-1])
        self.folds = []  # per fold: the stage-1 model's weights, the stage-2 head's by layer
        for fold in range(run["n_folds"]):
            self.model.load_weights(str(fold_dir(run_dir, "stage1", fold) / "weights.h5"))
            head.load_weights(str(fold_dir(run_dir, "stage2", fold) / "head.h5"))
            stage2 = {name: head.get_layer(name).get_weights() for name in HEAD_LAYERS}
            self.folds.append((self.model.get_weights(), stage2))

    def explain(self, text: str, folds=None) -> Explanation:
        """Score and explain ``text`` with every fold's models, or with those of ``folds`` only
        (e.g. a training row's own fold, whose models never saw it)."""
        ids = self.tokenizer.encode_ids(text)
        baseline = baseline_for(ids, self.vocab)
        used = range(len(self.folds)) if folds is None else sorted(set(folds))
        credits, logit, base, probability = np.zeros(len(ids)), 0.0, 0.0, 0.0
        for k in used:
            weights, stage2 = self.folds[k]
            self.model.set_weights(weights)
            for w, head in zip(self.stage_weights, ({}, stage2), strict=True):
                if w == 0:
                    continue
                w /= len(used)
                for name, values in head.items():  # stage 2: its head on the same encoder
                    self.model.get_layer(name).set_weights(values)
                c, x, b = integrated_gradients(self.model, ids, baseline, self.steps, self.features)
                credits, logit, base = credits + w * c, logit + w * x, base + w * b
                probability += w / (1 + np.exp(-x))
        chars = list(text[: self.tokenizer.maxlen])  # one token per character
        return Explanation(text, chars, credits[1:-1], logit, base, float(probability))


def to_html(explanations, labels=None) -> str:
    """A table of sentences drawn as coloured characters: green pushes towards label 1 (fit to
    show), red towards 0, the colour's strength ∝ |credit| / the sentence's largest |credit|.
    Hovering a character shows its credit. ``labels``: the known label of each sentence, if any."""
    rows = []
    for i, e in enumerate(explanations):
        scale = float(np.abs(e.credits).max()) or 1.0
        spans = "".join(_span(ch, c, scale) for ch, c in zip(e.chars, e.credits, strict=True))
        label = "" if labels is None else f"<td>{labels[i]}</td>"
        rows.append(
            f"<tr><td style='{_CELL}'>{spans}</td>{label}"
            f"<td>{e.probability:.3f}</td><td>{e.logit:+.2f}</td>"
            f"<td>{e.baseline_logit:+.2f}</td><td>{e.gap:.3f}</td></tr>"
        )
    head = "<th>label</th>" if labels is not None else ""
    return (
        "<table><tr><th>sentence (green: towards 1, red: towards 0)</th>"
        + head
        + "<th>probability</th><th>logit</th><th>baseline logit</th>"
        "<th>|Σ credits − Δ logit|</th></tr>" + "".join(rows) + "</table>"
    )


def _span(ch: str, credit: float, scale: float) -> str:
    strength = min(1.0, abs(credit) / scale)
    rgb = "0,160,60" if credit >= 0 else "220,40,40"
    return (
        f"<span title='{credit:+.3f}' style='background:rgba({rgb},{strength:.2f});"
        f"padding:1px 2px;border-radius:2px'>{html.escape(ch)}</span>"
    )
