"""Fakes the tests build on: tiny random BERT folders (HF-named weights, so a test can rebuild
them for a reference forward pass) and a CPU split into logical devices."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from core.weights.google_ckpt import hf_to_google, write_bert_dir

SPECIAL_TOKENS = ["[PAD]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_CHARS = (
    "的好吃不错服务环境菜味道很价格便宜贵差评推荐强烈一般还可以非常棒赞喜欢满意失望难再来"
    "次店家老板员热情态度慢快干净卫生量少多新鲜口感甜咸辣香油腻分性比高低肉鱼鸡饭面汤酒"
    "茶水果米是了我在有他这中大上个们到说和你地出也时得就那要下会着去过对想看没都然小么"
    "心天能只作当开手用主行方又如前所本见经面同已从动两长知样现分将外但些与意进把法此实"
    "回理美点明其种全工话向情正定问给等几最间什打便位因重被走第门相东西真听气少关并加由"
    "却入先五太万眼体别处总才场比住笑性通目立马命活难数件安表原车白路期常提感金何更反合"
)
# The tiny folders' tokens in id order: [PAD]=0, [unused1]=1, [UNK], [CLS], [SEP], [MASK], then
# 200 common Chinese characters.
TINY_VOCAB = SPECIAL_TOKENS + list(dict.fromkeys(_CHARS))[:200]


def random_hf_state_dict(
    vocab_size: int,
    hidden: int = 32,
    layers: int = 2,
    intermediate: int = 64,
    max_position: int = 64,
    seed: int = 0,
) -> dict:
    """A random HF-named BERT state dict (with MLM/NSP heads): N(0, 0.02) weights and biases,
    LayerNorm gamma 1 and beta 0."""
    rng = np.random.default_rng(seed)

    def normal(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    sd = {
        "embeddings.word_embeddings.weight": normal(vocab_size, hidden),
        "embeddings.position_embeddings.weight": normal(max_position, hidden),
        "embeddings.token_type_embeddings.weight": normal(2, hidden),
    }
    linears = [
        f"encoder.layer.{i}.{m}"
        for i in range(layers)
        for m in (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "intermediate.dense",
            "output.dense",
        )
    ]
    norms = ["embeddings.LayerNorm", "cls.predictions.transform.LayerNorm"] + [
        f"encoder.layer.{i}.{m}.LayerNorm"
        for i in range(layers)
        for m in ("attention.output", "output")
    ]
    for name in linears + ["pooler.dense", "cls.predictions.transform.dense"]:
        is_ffn_out = name.endswith(".output.dense") and ".attention." not in name
        n_in = intermediate if is_ffn_out else hidden
        n_out = intermediate if name.endswith("intermediate.dense") else hidden
        sd[f"{name}.weight"], sd[f"{name}.bias"] = normal(n_out, n_in), normal(n_out)
    for name in norms:
        sd[f"{name}.weight"] = np.ones(hidden, np.float32)
        sd[f"{name}.bias"] = np.zeros(hidden, np.float32)
    sd["cls.predictions.bias"] = normal(vocab_size)
    sd["cls.seq_relationship.weight"] = normal(2, hidden)
    sd["cls.seq_relationship.bias"] = normal(2)
    return sd


def tiny_config(
    vocab_size: int,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    intermediate: int = 64,
    max_position: int = 64,
) -> dict:
    """A Google ``bert_config.json`` for a tiny BERT (the shapes ``random_hf_state_dict`` makes)."""
    return {
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": intermediate,
        "max_position_embeddings": max_position,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "type_vocab_size": 2,
        "vocab_size": vocab_size,
    }


def write_random_bert_dir(
    out_dir: str | os.PathLike,
    vocab_tokens: list[str],
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    intermediate: int = 64,
    max_position: int = 64,
    seed: int = 0,
) -> Path:
    """Write a tiny random BERT folder (for tests). Its HF-named weights are
    ``random_hf_state_dict(len(vocab_tokens), hidden, layers, intermediate, max_position,
    seed)``, so a test can rebuild them for a reference forward pass."""
    config = tiny_config(len(vocab_tokens), hidden, layers, heads, intermediate, max_position)
    sd = random_hf_state_dict(len(vocab_tokens), hidden, layers, intermediate, max_position, seed)
    return write_bert_dir(out_dir, config, list(vocab_tokens), hf_to_google(sd))


def split_cpu(n: int = 2) -> None:
    """Expose the CPU as ``n`` logical devices, so the mirrored path can be exercised without GPUs.

    Must run before TensorFlow initialises its devices (i.e. before any op is executed).
    """
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
