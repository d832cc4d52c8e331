"""Tiny random BERT folders in the Hugging Face layout, as a GPU kernel's attached model comes:
``config.json``, ``model.safetensors`` or ``pytorch_model.bin`` (each possibly sharded behind an
``.index.json``), ``vocab.txt`` or only a WordPiece ``tokenizer.json``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np


def hf_config(
    vocab_size: int,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    intermediate: int = 64,
    max_position: int = 64,
    **extra,
) -> dict:
    """An HF ``config.json`` as the Chinese RoBERTa-wwm releases have it (BertForMaskedLM,
    model_type bert), for ``fakes.random_hf_state_dict``'s shapes."""
    return {
        "architectures": ["BertForMaskedLM"],
        "attention_probs_dropout_prob": 0.1,
        "directionality": "bidi",
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": intermediate,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": max_position,
        "model_type": "bert",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "type_vocab_size": 2,
        "vocab_size": vocab_size,
        **extra,
    }


def as_checkpoint(state: dict, dtype: str = "float32") -> dict:
    """``state`` (``fakes.random_hf_state_dict``) as a BertForMaskedLM checkpoint holds it: the
    encoder under ``bert.``, the MLM head under ``cls.``, the position-id buffer, floats in
    ``dtype`` (float32, float16, bfloat16)."""
    import ml_dtypes

    cast = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}[dtype]
    out = {
        (k if k.startswith("cls.") else f"bert.{k}"): np.asarray(v).astype(cast)
        for k, v in state.items()
    }
    rows = state["embeddings.position_embeddings.weight"].shape[0]
    out["bert.embeddings.position_ids"] = np.arange(rows, dtype=np.int64)[None]
    return out


def widened(state: dict, dtype: str) -> dict:
    """The float32 values ``state`` has once stored in ``dtype`` and read back: what a converter
    must write bit for bit."""
    import ml_dtypes

    cast = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}[dtype]
    return {k: np.asarray(v).astype(cast).astype(np.float32) for k, v in state.items()}


def tokenizer_json(vocab: list[str], model_type: str = "WordPiece") -> dict:
    """A ``tokenizer.json`` as the tokenizers library writes a BERT one: the special tokens in
    ``added_tokens`` and every token in the WordPiece model's vocab."""
    specials = [t for t in vocab if t.startswith("[") and t.endswith("]")]
    return {
        "version": "1.0",
        "added_tokens": [
            {"id": vocab.index(t), "content": t, "special": True, "normalized": False}
            for t in specials
        ],
        "normalizer": {"type": "BertNormalizer", "lowercase": False},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "model": {
            "type": model_type,
            "unk_token": "[UNK]",
            "continuing_subword_prefix": "##",
            "max_input_chars_per_word": 100,
            "vocab": {t: i for i, t in enumerate(vocab)},
        },
    }


def write_hf_folder(
    folder: Path,
    vocab: list[str],
    checkpoint: dict,
    config: dict | None = None,
    weights: str = "safetensors",
    shards: int = 1,
    vocab_as: str = "vocab.txt",
    to_bin: Callable[[dict, str], bytes] | None = None,
) -> Path:
    """Write a Hugging Face BERT folder: ``checkpoint`` (``as_checkpoint``) as safetensors or a
    torch zip (``to_bin``: conftest's ``state_dict_zip``), in ``shards`` files with an index
    when more than one; the vocabulary as ``vocab.txt`` or only ``tokenizer.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    config = config or hf_config(len(vocab))
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    if vocab_as == "vocab.txt":
        with open(folder / "vocab.txt", "w", encoding="utf-8", newline="\n") as f:
            f.write("".join(f"{t}\n" for t in vocab))
    else:
        text = json.dumps(tokenizer_json(vocab), ensure_ascii=False)
        (folder / "tokenizer.json").write_text(text, encoding="utf-8")
    (folder / "tokenizer_config.json").write_text('{"do_lower_case": false}', encoding="utf-8")
    base, suffix = {"safetensors": ("model", ".safetensors"), "bin": ("pytorch_model", ".bin")}[
        weights
    ]
    keys = list(checkpoint)
    parts = [keys[i::shards] for i in range(shards)]
    names = (
        [f"{base}{suffix}"]
        if shards == 1
        else [f"{base}-{i + 1:05d}-of-{shards:05d}{suffix}" for i in range(shards)]
    )
    for name, part in zip(names, parts, strict=True):
        tensors = {k: np.ascontiguousarray(checkpoint[k]) for k in part}
        if weights == "safetensors":
            from safetensors.numpy import save_file

            save_file(tensors, str(folder / name), metadata={"format": "pt"})
        else:
            (folder / name).write_bytes(to_bin(tensors, Path(name).stem))
    if shards > 1:
        index = {
            "metadata": {"total_size": int(sum(v.nbytes for v in checkpoint.values()))},
            "weight_map": {k: name for name, part in zip(names, parts, strict=True) for k in part},
        }
        (folder / f"{base}{suffix}.index.json").write_text(json.dumps(index, indent=2))
    return folder
