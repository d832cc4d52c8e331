"""An independent NumPy BERT encoder over HF-named weights, the reference for keras-bert.

Follows HF ``BertModel``: embeddings + LayerNorm, then per layer multi-head self-attention
with an additive padding mask, residual + LayerNorm, GELU feed-forward, residual + LayerNorm.
Computed in float64 so the reference adds no rounding of its own.
"""

from __future__ import annotations

import math

import numpy as np

_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu(x: np.ndarray, form: str = "erf") -> np.ndarray:
    """Exact GELU (``"erf"``, HF ``gelu``) or the tanh approximation (``"tanh"``, keras-bert)."""
    if form == "erf":
        return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))
    if form == "tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    raise ValueError(f"gelu form {form!r}: expected 'erf' or 'tanh'")


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def bert_forward(
    sd: dict,
    token_ids: np.ndarray,
    segment_ids: np.ndarray | None = None,
    heads: int = 2,
    eps: float = 1e-12,
    gelu_form: str = "erf",
    pad_id: int = 0,
) -> np.ndarray:
    """Last-layer hidden states ``(batch, seq, hidden)`` for ``token_ids`` ``(batch, seq)``.

    Keys equal to ``pad_id`` are masked out of attention (as keras-bert's ``mask_zero``).
    """
    w = {k: np.asarray(v, np.float64) for k, v in sd.items() if k != "embeddings.position_ids"}
    ids = np.asarray(token_ids)
    seg = np.zeros_like(ids) if segment_ids is None else np.asarray(segment_ids)
    batch, seq = ids.shape
    x = (
        w["embeddings.word_embeddings.weight"][ids]
        + w["embeddings.token_type_embeddings.weight"][seg]
        + w["embeddings.position_embeddings.weight"][:seq][None]
    )
    x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    # Additive mask over keys: 0 for real tokens, a large negative for padding.
    bias = np.where(ids == pad_id, -1e9, 0.0)[:, None, None, :]

    def linear(h, name):
        return h @ w[f"{name}.weight"].T + w[f"{name}.bias"]

    hidden = x.shape[-1]
    d = hidden // heads

    def split(h):
        return h.reshape(batch, seq, heads, d).transpose(0, 2, 1, 3)

    n_layers = 1 + max(int(k.split(".")[2]) for k in w if k.startswith("encoder.layer."))
    for i in range(n_layers):
        p = f"encoder.layer.{i}"

        q, k, v = (split(linear(x, f"{p}.attention.self.{n}")) for n in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d) + bias
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, hidden)
        att = linear(ctx, f"{p}.attention.output.dense") + x
        x = layer_norm(
            att,
            w[f"{p}.attention.output.LayerNorm.weight"],
            w[f"{p}.attention.output.LayerNorm.bias"],
            eps,
        )
        ff = linear(gelu(linear(x, f"{p}.intermediate.dense"), gelu_form), f"{p}.output.dense")
        x = layer_norm(
            ff + x, w[f"{p}.output.LayerNorm.weight"], w[f"{p}.output.LayerNorm.bias"], eps
        )
    return x


def encode(sentences: list[str], vocab: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``[CLS]`` + characters + ``[SEP]``, each character looked up directly (``[UNK]`` if
    absent), padded with id 0; returns (token ids, segment ids)."""
    index = {t: i for i, t in enumerate(vocab)}
    rows = [
        [index["[CLS]"]] + [index.get(c, index["[UNK]"]) for c in s] + [index["[SEP]"]]
        for s in sentences
    ]
    ids = np.zeros((len(rows), max(map(len, rows))), dtype=np.int32)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = row
    return ids, np.zeros_like(ids)
