"""Read a Hugging Face BERT folder as it comes: ``config.json``, the weights in
``model.safetensors`` or ``pytorch_model.bin`` (either possibly sharded behind an ``.index.json``),
and ``vocab.txt`` or only ``tokenizer.json``. Yields what a Google-format folder needs, under
Google's names.

Nothing here imports TensorFlow or PyTorch: safetensors are read with the ``safetensors``
package's NumPy API, pickles with the restricted reader of ``core.weights.torch_reader``.
Anything that is not a BERT keras-bert can run is refused in one line (a ``BertDirError``) that
names the file, what it holds and what is supported.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.weights.google_ckpt import (
    BertDirError,
    _google_name,
    expected_shapes,
    hf_config_to_google,
    hf_to_google,
    sanitize_vocab,
    vocab_from_tokenizer_json,
)
from core.weights.torch_reader import UnsafePickleError, read_state_dict

__all__ = [
    "CONFIG",
    "SUPPORTED",
    "HFCheckpoint",
    "HFLayout",
    "is_hf_folder",
    "read_checkpoint",
    "read_config",
    "read_tensors",
    "read_vocab",
    "scan",
]

CONFIG, VOCAB, TOKENIZER = "config.json", "vocab.txt", "tokenizer.json"
# Weight files in the order Hugging Face looks for them: one file before its sharded index.
WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
SUPPORTED = (
    "a BERT checkpoint: model_type bert (BertModel, BertForMaskedLM, BertForPreTraining, "
    "BertForSequenceClassification; the Chinese RoBERTa-wwm and MacBERT releases are "
    "BertForMaskedLM) with a WordPiece vocabulary"
)
# model_type -> why keras-bert cannot run it as BERT.
_REFUSED = {
    "albert": "ALBERT: factorised embeddings and one set of layer weights shared by all layers",
    "ernie": "ERNIE: task-type embeddings on top of BERT's",
    "roberta": "RoBERTa: position ids start at pad_token_id + 1, keras-bert's at 0",
    "xlm-roberta": "XLM-RoBERTa: position ids start at pad_token_id + 1, keras-bert's at 0",
    "camembert": "CamemBERT: position ids start at pad_token_id + 1, keras-bert's at 0",
}
# Task heads of Bert*For* models, and buffers: nothing of the encoder, dropped.
_DROPPED = ("classifier.", "qa_outputs.")
_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")


def _fail(path: Path, expected: str, found: str) -> BertDirError:
    return BertDirError(f"{path}: expected {expected}, found {found}")


def _listing(d: Path) -> str:
    names = sorted(p.name for p in d.iterdir()) if d.is_dir() else []
    shown = ", ".join(names[:12]) + (f", … ({len(names)} files)" if len(names) > 12 else "")
    return f"files: {shown or 'none'}"


def is_hf_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder in the Hugging Face layout rather than Google's (a folder
    with ``bert_config.json`` is Google's, whatever else it holds)."""
    d = Path(path)
    if not d.is_dir() or (d / "bert_config.json").is_file():
        return False
    return any((d / name).is_file() for name in (CONFIG, TOKENIZER, *WEIGHTS))


@dataclass
class HFLayout:
    """Which files of a Hugging Face folder hold what."""

    folder: Path
    config: Path
    weights: list[Path]  # the weight files themselves (each shard)
    index: Path | None  # the sharded weights' index, if any
    vocab: Path | None  # vocab.txt
    tokenizer: Path | None  # tokenizer.json

    @property
    def files(self) -> list[Path]:
        """Every file the conversion reads, in a fixed order: what the cache key hashes."""
        extra = [p for p in (self.index, self.vocab, self.tokenizer) if p is not None]
        return [self.config, *extra, *self.weights]


def scan(path: str | os.PathLike) -> HFLayout:
    """Find the config, weights and vocabulary of the folder ``path``, or refuse what is missing."""
    d = Path(path)
    config = d / CONFIG
    if not config.is_file():
        raise _fail(config, "the model's config (a Hugging Face folder has one)", _listing(d))
    weights, index = _weight_files(d)
    vocab, tokenizer = (d / name if (d / name).is_file() else None for name in (VOCAB, TOKENIZER))
    if vocab is None and tokenizer is None:
        found = f"neither; {_listing(d)}"
        raise _fail(d, f"a WordPiece vocabulary ({VOCAB} or {TOKENIZER})", found)
    return HFLayout(d, config, weights, index, vocab, tokenizer)


def _weight_files(d: Path) -> tuple[list[Path], Path | None]:
    for name in WEIGHTS:
        path = d / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return [path], None
        index = _json(path, "a weights index with a weight_map")
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise _fail(path, "a weights index with a non-empty weight_map", "none")
        shards = sorted(set(weight_map.values()))
        for shard in shards:
            # A shard is a file beside the index: a path elsewhere is refused, not followed.
            if not isinstance(shard, str) or Path(shard).name != shard or shard in ("", ".", ".."):
                raise _fail(path, "shard file names in weight_map", repr(shard))
            if not (d / shard).is_file():
                raise _fail(d / shard, f"this shard (named in {name})", "it missing")
        return [d / s for s in shards], path
    found = _listing(d)
    raise _fail(d, f"weights in one of {', '.join(WEIGHTS)}", f"none of them; {found}")


def _json(path: Path, expected: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise _fail(path, expected, f"unparsable text ({e})") from None


# ---------------------------------------------------------------- config


def read_config(layout: HFLayout) -> tuple[dict, dict]:
    """``(the HF config, its bert_config.json)``; refuses models that are not BERT."""
    path = layout.config
    hf = _json(path, "a JSON object")
    if not isinstance(hf, dict):
        raise _fail(path, "a JSON object", type(hf).__name__)
    model_type = hf.get("model_type")
    archs = hf.get("architectures") or []
    if model_type in _REFUSED:
        raise _fail(path, SUPPORTED, f"model_type {model_type} ({_REFUSED[model_type]})")
    if hf.get("use_task_id"):
        raise _fail(path, SUPPORTED, f"use_task_id true ({_REFUSED['ernie']})")
    if model_type is None:
        if not archs or not all(str(a).startswith("Bert") for a in archs):
            raise _fail(path, SUPPORTED, f"no model_type and architectures {archs}")
    elif model_type != "bert":
        raise _fail(path, SUPPORTED, f"model_type {model_type!r} (architectures {archs})")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise _fail(path, SUPPORTED, "a decoder (is_decoder / add_cross_attention)")
    try:
        google = hf_config_to_google(hf)
    except ValueError as e:
        found = str(e).removeprefix("HF config: ")
        raise _fail(path, "a BERT config keras-bert can build", found) from None
    if google["type_vocab_size"] != 2:
        found = f"type_vocab_size {google['type_vocab_size']}"
        raise _fail(path, "type_vocab_size 2 (keras-bert's only)", found)
    if google["hidden_size"] % google["num_attention_heads"]:
        found = f"hidden_size {google['hidden_size']}, heads {google['num_attention_heads']}"
        raise _fail(path, "hidden_size divisible by num_attention_heads", found)
    return hf, google


# ---------------------------------------------------------------- vocabulary


def check_tokenizer(layout: HFLayout) -> None:
    """Refuse a ``tokenizer.json`` whose model is not WordPiece (BPE, Unigram: not BERT's)."""
    if layout.tokenizer is None:
        return
    obj = _json(layout.tokenizer, "a tokenizer.json object")
    kind = (obj.get("model") or {}).get("type") if isinstance(obj, dict) else None
    if kind != "WordPiece":
        found = f"model.type {kind!r}"
        expected = (
            "a WordPiece tokenizer (BERT's: vocab.txt, or tokenizer.json of model.type WordPiece)"
        )
        raise _fail(layout.tokenizer, expected, found)


def read_vocab(layout: HFLayout, vocab_size: int) -> tuple[list[str], dict]:
    """The tokens in id order, renamed where ``vocab.txt`` cannot hold them (``sanitize_vocab``),
    and the renamings. ``vocab.txt`` is read as Hugging Face's BertTokenizer reads it (one token
    per ``\\n``-ended line, nothing stripped); without it, ``tokenizer.json``'s WordPiece vocab."""
    check_tokenizer(layout)
    if layout.vocab is not None:
        source = layout.vocab
        try:
            with open(source, encoding="utf-8") as f:
                tokens = [line.rstrip("\n") for line in f.readlines()]
        except UnicodeDecodeError as e:
            raise _fail(source, "UTF-8 text", f"undecodable bytes ({e})") from None
    else:
        source = layout.tokenizer
        try:
            tokens = vocab_from_tokenizer_json(source.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise _fail(source, "a WordPiece vocabulary with ids 0..n-1", str(e)) from None
    first: dict[str, int] = {}
    for i, token in enumerate(tokens):
        if first.setdefault(token, i) != i:
            raise _fail(source, "distinct tokens", f"{token!r} at ids {first[token]} and {i}")
    if len(tokens) != vocab_size:
        found = f"{len(tokens)} tokens"
        raise _fail(source, f"{vocab_size} tokens (vocab_size in {CONFIG})", found)
    try:
        return sanitize_vocab(tokens)
    except ValueError as e:
        raise _fail(source, "tokens that fit one line each", str(e)) from None


# ---------------------------------------------------------------- weights


def read_tensors(layout: HFLayout, config: dict, log=None) -> tuple[dict, int]:
    """The weights under Google's names (float32), checked against ``config``'s shapes, and how
    many tensors the files held."""
    log = log or (lambda _msg: None)
    start = time.perf_counter()
    state: dict[str, np.ndarray] = {}
    where: dict[str, Path] = {}
    for path in layout.weights:
        for key, value in _read_file(path).items():
            if key in state:
                raise _fail(path, "each tensor in one shard", f"{key} also in {where[key].name}")
            state[key], where[key] = _float32(value), path
    size = sum(p.stat().st_size for p in layout.weights) / 1e6
    took = f"{size:,.0f} MB, in {time.perf_counter() - start:.1f} s"
    log(f"read {len(state)} tensors from {len(layout.weights)} weight file(s), {took}")
    kept = {k: v for k, v in state.items() if not _dropped(k)}
    try:
        tensors = hf_to_google(kept)
    except ValueError as e:
        found = str(e).removeprefix("hf_to_google: ")
        files = layout.index or layout.weights[0]
        expected = "BERT tensors (embeddings., encoder.layer.N., pooler., cls., maybe under bert.)"
        raise _fail(files, expected, found) from None
    origins = {m[0]: (k, m[1]) for k in kept if (m := _mapped(k))}
    _check_shapes(tensors, config, origins, where, layout)
    return tensors, len(state)


def _read_file(path: Path) -> dict:
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        return read_state_dict(path)
    except UnsafePickleError:
        raise
    except ValueError as e:
        raise _fail(path, "a PyTorch zip checkpoint", str(e).removeprefix(f"{path}: ")) from None


def _read_safetensors(path: Path) -> dict:
    # ml_dtypes (TensorFlow's own dependency) gives NumPy a bfloat16 type, so the NumPy API
    # reads bfloat16 tensors instead of refusing them; _float32 widens them exactly.
    import ml_dtypes  # noqa: F401
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            return {key: f.get_tensor(key) for key in f.keys()}
    except Exception as e:  # safetensors raises its own error types for damaged files
        found = f"{type(e).__name__}: {e}"
        raise _fail(path, "a readable safetensors file", found) from None


def _float32(value: np.ndarray) -> np.ndarray:
    """Every floating tensor as float32; float16 and bfloat16 widen exactly."""
    arr = np.asarray(value)
    if arr.dtype.kind == "f" or arr.dtype.name == "bfloat16":
        return arr.astype(np.float32)
    return arr


def _bare(key: str) -> str:
    return key.removeprefix("bert.")


def _dropped(key: str) -> bool:
    return key.startswith(_DROPPED) or _bare(key) in _BUFFERS


def _mapped(key: str) -> tuple[str, bool] | None:
    """(Google name, transposed?) of an HF key; None for keys without one."""
    try:
        return _google_name(_bare(key))
    except KeyError:
        return None


def _head_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    h = config["hidden_size"]
    return {
        "bert/pooler/dense/kernel": (h, h),
        "bert/pooler/dense/bias": (h,),
        "cls/predictions/transform/dense/kernel": (h, h),
        "cls/predictions/transform/dense/bias": (h,),
        "cls/predictions/transform/LayerNorm/gamma": (h,),
        "cls/predictions/transform/LayerNorm/beta": (h,),
        "cls/predictions/output_bias": (config["vocab_size"],),
        "cls/seq_relationship/output_weights": (2, h),
        "cls/seq_relationship/output_bias": (2,),
    }


def _check_shapes(tensors: dict, config: dict, origins: dict, where: dict, layout) -> None:
    """Every variable keras-bert reads is there with the shape ``config.json`` implies, and the
    optional heads, when present, too. Messages name the source's tensor and its own shape."""
    needed = expected_shapes(config)
    for name, shape in {**needed, **_head_shapes(config)}.items():
        got = tensors.get(name)
        if got is None:
            if name in needed:
                files = layout.index or layout.weights[0]
                expected = f"the tensor keras-bert loads as {name}, shape {shape}"
                raise _fail(files, expected, "no such tensor")
            continue
        have = got.shape
        if name == "bert/embeddings/position_embeddings" and have[1:] == shape[1:]:
            have = shape if have[0] >= shape[0] else have  # keras-bert slices extra rows
        if have != shape:
            key, transposed = origins[name]
            flip = (lambda t: tuple(reversed(t))) if transposed else tuple
            raise _fail(
                where[key],
                f"{key} of shape {flip(shape)} (from {CONFIG})",
                f"shape {flip(got.shape)}",
            )


# ---------------------------------------------------------------- all of it


@dataclass
class HFCheckpoint:
    """A Hugging Face BERT folder read for a Google-format one."""

    hf_config: dict
    config: dict  # bert_config.json
    vocab: list[str]
    renamed: dict[int, tuple[str, str]]  # id -> (token, its vocab.txt spelling)
    tensors: dict[str, np.ndarray] = field(repr=False)  # Google names, float32
    n_source: int  # tensors in the weight files


def read_checkpoint(layout: HFLayout, log=None) -> HFCheckpoint:
    """Config, vocabulary and weights of a scanned folder, each checked against the others."""
    hf, config = read_config(layout)
    vocab, renamed = read_vocab(layout, config["vocab_size"])
    tensors, n_source = read_tensors(layout, config, log)
    return HFCheckpoint(hf, config, vocab, renamed, tensors, n_source)
