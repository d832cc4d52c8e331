"""Write and check Google-format BERT folders (``bert_config.json``, ``vocab.txt``,
``bert_model.ckpt.*``), the layout ``keras_bert.load_trained_model_from_checkpoint`` reads.

TensorFlow is imported only inside the functions that touch a checkpoint, so checking a
folder's config and vocabulary stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from core import hashing
from core.config import DEFAULTS, ROOT, show

__all__ = [
    "BertDirError",
    "CONFIG_KEYS",
    "MLM_HEAD",
    "check_bert_dir",
    "weights_sha256",
    "checkpoint_errors",
    "expected_shapes",
    "google_tensors",
    "hf_config_to_google",
    "hf_to_google",
    "sanitize_vocab",
    "vocab_from_tokenizer_json",
    "write_bert_dir",
    "write_checkpoint",
]

CONFIG_KEYS = (
    "attention_probs_dropout_prob",
    "hidden_act",
    "hidden_dropout_prob",
    "hidden_size",
    "initializer_range",
    "intermediate_size",
    "max_position_embeddings",
    "num_attention_heads",
    "num_hidden_layers",
    "type_vocab_size",
    "vocab_size",
)
CONFIG_FILE, VOCAB_FILE, CKPT_PREFIX = "bert_config.json", "vocab.txt", "bert_model.ckpt"
# Written by write_bert_dir: each file's size and sha256, and the command that rebuilds the folder.
MANIFEST_FILE = "MANIFEST.json"
HOW_TO_MAKE = (
    "point bert_dir at a Google-format or Hugging Face BERT folder, or make the default one "
    "(pretrained/m3e-small) with `python -m core.weights --force`"
)
# HF activation name -> keras-bert's. keras-bert's "gelu" is the tanh approximation (= HF
# "gelu_new"); HF "gelu" is the exact erf form, so it maps with a ~1e-3 activation difference.
_ACTS = {"gelu": "gelu", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "relu": "relu"}


class BertDirError(ValueError):
    """A BERT folder is missing a file or its files disagree with each other."""


# ---------------------------------------------------------------- names and config


_LAYER_RULES = [  # (HF suffix inside encoder.layer.N, Google suffix inside layer_N)
    (f"attention.self.{p}", f"attention/self/{p}") for p in ("query", "key", "value")
] + [
    ("attention.output.dense", "attention/output/dense"),
    ("attention.output.LayerNorm", "attention/output/LayerNorm"),
    ("intermediate.dense", "intermediate/dense"),
    ("output.dense", "output/dense"),
    ("output.LayerNorm", "output/LayerNorm"),
]
_FIXED = {
    "embeddings.word_embeddings.weight": "bert/embeddings/word_embeddings",
    "embeddings.position_embeddings.weight": "bert/embeddings/position_embeddings",
    "embeddings.token_type_embeddings.weight": "bert/embeddings/token_type_embeddings",
    "cls.predictions.bias": "cls/predictions/output_bias",
    # Google stores output_weights as (2, hidden) like torch's Linear: no transpose.
    "cls.seq_relationship.weight": "cls/seq_relationship/output_weights",
    "cls.seq_relationship.bias": "cls/seq_relationship/output_bias",
}
_MODULES = {
    "embeddings.LayerNorm": "bert/embeddings/LayerNorm",
    "pooler.dense": "bert/pooler/dense",
    "cls.predictions.transform.dense": "cls/predictions/transform/dense",
    "cls.predictions.transform.LayerNorm": "cls/predictions/transform/LayerNorm",
}
# Buffers and weights tied to the word embeddings: nothing to store.
_SKIP = {
    "embeddings.position_ids",
    "cls.predictions.decoder.weight",
    "cls.predictions.decoder.bias",
}
_PARAM = {"weight": "kernel", "bias": "bias", "gamma": "gamma", "beta": "beta"}


def _google_name(key: str) -> tuple[str, bool] | None:
    """Map one HF key to (Google name, transpose?); None for keys to skip; KeyError if unknown."""
    if key in _SKIP:
        return None
    if key in _FIXED:
        return _FIXED[key], False
    module, _, param = key.rpartition(".")
    m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)", module)
    if m:
        suffix = dict(_LAYER_RULES).get(m.group(2))
        target = suffix and f"bert/encoder/layer_{int(m.group(1))}/{suffix}"
    else:
        target = _MODULES.get(module)
    if not target or param not in _PARAM:
        raise KeyError(key)
    if target.endswith("LayerNorm"):
        return f"{target}/{'gamma' if param in ('weight', 'gamma') else 'beta'}", False
    return f"{target}/{_PARAM[param]}", param == "weight"


def hf_to_google(state_dict: dict) -> dict:
    """Rename an HF ``BertModel`` state dict to Google BERT names, transposing Linear weights.

    A leading ``bert.`` (as in ``BertForPreTraining``) is dropped; floats become float32.
    Raises ``ValueError`` listing any key it does not know.
    """
    out, unknown = {}, []
    for key, value in state_dict.items():
        try:
            mapped = _google_name(key[5:] if key.startswith("bert.") else key)
        except KeyError:
            unknown.append(key)
            continue
        if mapped is None:
            continue
        name, transpose = mapped
        arr = np.asarray(value)
        if transpose:
            if arr.ndim != 2:
                raise ValueError(f"{key}: expected a 2-D Linear weight, found shape {arr.shape}")
            arr = arr.T
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float32)
        out[name] = np.ascontiguousarray(arr)
    if unknown:
        raise ValueError(f"hf_to_google: {len(unknown)} unknown state dict keys: {unknown[:8]}")
    return out


def hf_config_to_google(cfg: dict) -> dict:
    """Return the ``bert_config.json`` dict for an HF ``BertConfig`` dict."""
    missing = [k for k in CONFIG_KEYS if k not in cfg]
    if missing:
        raise ValueError(f"HF config: missing keys {missing}")
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(
            f"HF config: position_embedding_type={cfg['position_embedding_type']!r}; "
            "keras-bert only has absolute position embeddings"
        )
    act = cfg["hidden_act"]
    if act not in _ACTS:
        raise ValueError(f"HF config: hidden_act={act!r}; expected one of {sorted(_ACTS)}")
    out = {k: cfg[k] for k in CONFIG_KEYS}
    out["hidden_act"] = _ACTS[act]
    return out


def vocab_from_tokenizer_json(obj: dict | str | bytes) -> list[str]:
    """Tokens of an HF ``tokenizer.json`` (WordPiece) in id order; ids must be exactly 0..n-1."""
    if isinstance(obj, (str, bytes)):
        obj = json.loads(obj)
    model = obj.get("model") or {}
    if model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
        raise ValueError(f"tokenizer.json: expected a WordPiece model, found {model.get('type')!r}")
    by_id: dict[int, str] = {}
    entries = list(model["vocab"].items())
    entries += [(t["content"], t["id"]) for t in obj.get("added_tokens") or []]
    for token, idx in entries:
        if not isinstance(idx, int) or idx < 0:
            raise ValueError(f"tokenizer.json: token {token!r} has id {idx!r}")
        if by_id.setdefault(idx, token) != token:
            raise ValueError(f"tokenizer.json: id {idx} is both {by_id[idx]!r} and {token!r}")
    n = len(by_id)
    if sorted(by_id) != list(range(n)):
        gaps = sorted(set(range(max(by_id) + 1)) - set(by_id))
        raise ValueError(f"tokenizer.json: ids are not 0..{n - 1}; missing ids {gaps[:10]}")
    tokens = [by_id[i] for i in range(n)]
    if len(set(tokens)) != n:
        raise ValueError("tokenizer.json: some token has two ids")
    return tokens


def _token_problem(token: str) -> str | None:
    # keras_bert.load_vocabulary reads with codecs (splitlines: \u2028, \x85, ... end a line)
    # and strips each line, so such tokens would shift every later id.
    if not token:
        return "is empty"
    if token != token.strip():
        return "has surrounding whitespace"
    if len(token.splitlines()) != 1:
        return "contains a line break"
    return None


def sanitize_vocab(tokens: list[str]) -> tuple[list[str], dict[int, tuple[str, str]]]:
    """Replace tokens that cannot live on one ``vocab.txt`` line by ``[U+XXXX]`` spellings.

    Such tokens (e.g. ``\\u2028`` in the Chinese BERT vocab) are whitespace that a BERT
    tokenizer never emits, so renaming them keeps every id and changes no tokenization.
    Returns the new list and ``{id: (old, new)}``.
    """
    out, changed = list(tokens), {}
    for i, token in enumerate(tokens):
        if _token_problem(token):
            new = (
                "".join(
                    c if c.isprintable() and not c.isspace() else f"[U+{ord(c):04X}]" for c in token
                )
                or f"[EMPTY{i}]"
            )
            out[i], changed[i] = new, (token, new)
    if len(set(out)) != len(out):
        raise ValueError(f"sanitize_vocab: replacements {changed} collide with existing tokens")
    return out, changed


# ---------------------------------------------------------------- writing


def write_checkpoint(prefix: str | os.PathLike, tensors: dict) -> None:
    """Save ``{name: array}`` as a TF V2 checkpoint at ``prefix`` (``.index`` + ``.data-*``)."""
    import tensorflow as tf

    import core  # noqa: F401  (selects tf-keras before TensorFlow loads)

    if not tf.executing_eagerly():
        raise RuntimeError("write_checkpoint needs eager execution (TensorFlow 2 default)")
    names = sorted(tensors)
    tf.raw_ops.SaveV2(
        prefix=str(prefix),
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(np.ascontiguousarray(tensors[n])) for n in names],
    )


def write_bert_dir(
    out_dir: str | os.PathLike,
    config: dict,
    vocab: list[str],
    tensors: dict,
    extra_files: dict[str, str] | None = None,
    rebuild: str | None = None,
) -> Path:
    """Write a complete Google BERT folder atomically and return its path.

    Everything is written into a temporary sibling folder that is renamed into place at the
    end, so an interrupted run never leaves a folder that looks complete. ``MANIFEST.json``
    records every file's size and sha256 (check_bert_dir compares them), ``rebuild``, how to
    make the folder again, and ``folder``, where it was written: the error that reports a
    damaged file gives ``rebuild`` for that folder, and for a copy elsewhere where to copy from.
    """
    out = Path(out_dir).resolve()
    missing = [k for k in CONFIG_KEYS if k not in config]
    if missing:
        raise ValueError(f"write_bert_dir: config lacks {missing}")
    bad = [(i, t, p) for i, t in enumerate(vocab) if (p := _token_problem(t))]
    if bad:
        raise ValueError(
            f"write_bert_dir: vocab tokens unusable in vocab.txt: {bad[:5]} "
            "(pass the list through sanitize_vocab)"
        )
    if len(set(vocab)) != len(vocab):
        raise ValueError("write_bert_dir: vocab has duplicate tokens")
    rows = np.shape(tensors.get("bert/embeddings/word_embeddings", ()))[:1]
    if not (len(vocab) == config["vocab_size"] and rows == (len(vocab),)):
        raise ValueError(
            f"write_bert_dir: vocab has {len(vocab)} tokens, config vocab_size is "
            f"{config['vocab_size']}, word_embeddings rows {rows}: all three must agree"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the result should be readable
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        with open(tmp / VOCAB_FILE, "w", encoding="utf-8", newline="\n") as f:
            f.write("\n".join(vocab) + "\n")
        write_checkpoint(tmp / CKPT_PREFIX, tensors)
        # Lets tf.train.latest_checkpoint(folder) find the checkpoint too.
        (tmp / "checkpoint").write_text(f'model_checkpoint_path: "{CKPT_PREFIX}"\n')
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        files = {
            p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())
        }
        manifest = {"files": files, "rebuild": rebuild, "folder": _shown(out)}
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(out, old)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


# ---------------------------------------------------------------- checking


def expected_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Checkpoint variables (and shapes) keras-bert reads with ``training=False``."""
    h, f = config["hidden_size"], config["intermediate_size"]
    shapes = {
        "bert/embeddings/word_embeddings": (config["vocab_size"], h),
        "bert/embeddings/position_embeddings": (config["max_position_embeddings"], h),
        "bert/embeddings/token_type_embeddings": (2, h),
        "bert/embeddings/LayerNorm/gamma": (h,),
        "bert/embeddings/LayerNorm/beta": (h,),
    }
    for i in range(config["num_hidden_layers"]):
        p = f"bert/encoder/layer_{i}"
        dense = [(f"attention/self/{q}", h, h) for q in ("query", "key", "value")]
        dense += [
            ("attention/output/dense", h, h),
            ("intermediate/dense", h, f),
            ("output/dense", f, h),
        ]
        for name, n_in, n_out in dense:
            shapes[f"{p}/{name}/kernel"], shapes[f"{p}/{name}/bias"] = (n_in, n_out), (n_out,)
        for name in ("attention/output/LayerNorm", "output/LayerNorm"):
            shapes[f"{p}/{name}/gamma"] = shapes[f"{p}/{name}/beta"] = (h,)
    return shapes


def _fail(path: Path, expected: str, found: str) -> BertDirError:
    return BertDirError(f"{path}: expected {expected}, found {found}")


def check_bert_dir(bert_dir: str | os.PathLike, read_checkpoint: bool = True) -> dict:
    """Validate a Google BERT folder and return its config.

    Checks that the config, vocabulary and checkpoint exist, that each file listed in
    ``MANIFEST.json`` (folders written by write_bert_dir) has its recorded size, that the config
    has every key, that ``vocab.txt`` has ``vocab_size`` distinct tokens as keras-bert reads it,
    and, with ``read_checkpoint`` (which imports TensorFlow and comes before loading the
    weights), the listed files' sha256 (0.1 s for m3e-small's 96 MB) and that every variable
    keras-bert loads exists with the shape the config implies. Raises ``BertDirError`` naming
    the file at fault. A folder without a manifest (a Google checkpoint of one's own) is read
    as it is; ``checkpoint_errors`` reports its damage when the weights are loaded.
    """
    d = Path(bert_dir)
    if not d.is_dir():
        raise _fail(d, "a BERT folder", f"no such folder; {HOW_TO_MAKE}")
    manifest = _read_manifest(d)
    rebuild = repair_hint(d, manifest)
    ckpt_data = sorted(d.glob(f"{CKPT_PREFIX}.data-*-of-*"))
    for path in (d / CONFIG_FILE, d / VOCAB_FILE, d / f"{CKPT_PREFIX}.index"):
        if not path.is_file():
            raise _fail(path, "this file", f"it missing; {rebuild}")
    if not ckpt_data:
        data = d / f"{CKPT_PREFIX}.data-00000-of-00001"
        raise _fail(data, "this file", f"it missing; {rebuild}")
    if manifest:
        _check_files(d, manifest, hashes=read_checkpoint)

    cfg_path = d / CONFIG_FILE
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise _fail(cfg_path, "a JSON object", f"unparsable text ({e})") from None
    if not isinstance(config, dict):
        raise _fail(cfg_path, "a JSON object", type(config).__name__)
    missing = [k for k in CONFIG_KEYS if k not in config]
    if missing:
        raise _fail(cfg_path, f"the keys {list(CONFIG_KEYS)}", f"{missing} missing")
    for key in CONFIG_KEYS:
        if key != "hidden_act" and not isinstance(config[key], (int, float)):
            raise _fail(cfg_path, f"a number for {key}", repr(config[key]))
    if config["type_vocab_size"] != 2:  # keras-bert builds Embedding-Segment with 2 rows
        raise _fail(
            cfg_path, "type_vocab_size 2 (keras-bert's only)", str(config["type_vocab_size"])
        )
    if config["hidden_size"] % config["num_attention_heads"]:
        raise _fail(
            cfg_path,
            "hidden_size divisible by num_attention_heads",
            f"{config['hidden_size']} and {config['num_attention_heads']}",
        )

    vocab_path = d / VOCAB_FILE
    try:
        lines = vocab_path.read_text(encoding="utf-8").splitlines()  # splitlines: as keras-bert
    except UnicodeDecodeError as e:
        raise _fail(vocab_path, "UTF-8 text", f"undecodable bytes ({e})") from None
    if len(lines) != config["vocab_size"]:
        raise _fail(
            vocab_path,
            f"{config['vocab_size']} lines (vocab_size in {CONFIG_FILE})",
            f"{len(lines)} lines",
        )
    seen: dict[str, int] = {}
    for i, line in enumerate(lines, 1):
        token = line.strip()
        if not token or token in seen:
            what = f"{token!r} again (first on line {seen[token]})" if token else "an empty token"
            raise _fail(vocab_path, "one distinct token per line", f"{what} on line {i}")
        seen[token] = i

    if read_checkpoint:
        _check_checkpoint(d / CKPT_PREFIX, config)
    return config


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _read_manifest(d: Path) -> dict | None:
    """``d``'s MANIFEST.json, None if it has none (a BertDirError if it is unreadable)."""
    path = d / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(manifest["files"], dict) and isinstance(manifest["rebuild"], str | None):
            return manifest
    except (ValueError, UnicodeDecodeError, TypeError, KeyError):
        pass
    found = f"something else; {repair_hint(d, None)}"
    raise _fail(path, "a JSON object with 'files' and 'rebuild'", found)


def repair_hint(d: Path, manifest: dict | None) -> str:
    """How to make the damaged or incomplete folder ``d`` whole again: the command that wrote it
    when ``d`` is the folder that command writes, else what to copy or convert again. Another
    folder's command (the default's, for a copy of m3e-small) would leave ``d`` broken."""
    rebuild = manifest["rebuild"] if manifest else None
    origin = _origin(manifest)
    if rebuild and _written_here(d, origin, rebuild):
        return f"rebuild it: {rebuild}"
    if Path(d).resolve() == default_dir():
        return "rebuild it: python -m core.weights --force"
    if origin is not None:
        made = f" (`{rebuild}` makes that one)" if rebuild else ""
        return f"copy it again from {_shown(origin)}{made}, or point bert_dir at another folder"
    return (
        f"copy or convert {_shown(d)} again from where it came from, or point bert_dir at "
        "another folder"
    )


def _origin(manifest: dict | None) -> Path | None:
    """Where the folder was written (MANIFEST.json's ``folder``; older manifests have none)."""
    folder = manifest.get("folder") if manifest else None
    return (ROOT / folder).resolve() if isinstance(folder, str) and folder else None


def _written_here(d: Path, origin: Path | None, rebuild: str) -> bool:
    """Whether ``rebuild`` makes ``d`` itself: ``d`` is where it was written, or, for a manifest
    written before manifests said where, ``rebuild`` names ``d`` (``--out d``, stage 0's
    ``delete d``) or is the default folder's own command and ``d`` that folder."""
    here = Path(d).resolve()
    if origin is not None:
        return origin == here
    if _shown(here) in rebuild.split():
        return True
    return here == default_dir() and "--out" not in rebuild


def default_dir() -> Path:
    """The default encoder folder (``bert_dir``'s default), which ``python -m core.weights``
    writes."""
    return (ROOT / DEFAULTS.bert_dir).resolve()


def _shown(path: Path) -> str:
    return show(Path(path).resolve())


def _check_files(d: Path, manifest: dict, hashes: bool) -> None:
    """Every file the manifest lists has its recorded size (and with ``hashes``, its sha256)."""
    rebuild = repair_hint(d, manifest)
    for name, recorded in manifest["files"].items():
        path, expected = d / name, f"{recorded['bytes']:,} bytes (as written, {MANIFEST_FILE})"
        if not path.is_file():
            raise _fail(path, f"this file (listed in {MANIFEST_FILE})", f"it missing; {rebuild}")
        if (size := path.stat().st_size) != recorded["bytes"]:
            raise _fail(path, expected, f"{size:,}: the file is truncated or damaged; {rebuild}")
    for name, recorded in manifest["files"].items() if hashes else ():
        expected = f"sha256 {recorded['sha256'][:12]}… (as written, {MANIFEST_FILE})"
        if (digest := _sha256(d / name)) != recorded["sha256"]:
            raise _fail(d / name, expected, f"{digest[:12]}…: the file is damaged; {rebuild}")


def check_weights(bert_dir: str | os.PathLike) -> None:
    """The sha256 of every file a BERT folder's ``MANIFEST.json`` lists, without TensorFlow
    (0.1–0.2 s for m3e-small's 96 MB): a BertDirError names a damaged file, as ``check_bert_dir``
    does before the weights load, but before anything of a run is made. Hashed through
    ``core.hashing`` (the first hash of a file in a process reads it; the run's identity then
    reuses it). A folder without a manifest: nothing to compare."""
    d = Path(bert_dir)
    manifest = _read_manifest(d)
    if not manifest:
        return
    rebuild = repair_hint(d, manifest)
    for name, recorded in manifest["files"].items():
        expected = f"sha256 {recorded['sha256'][:12]}… (as written, {MANIFEST_FILE})"
        if (digest := hashing.file_sha256(d / name)) != recorded["sha256"]:
            raise _fail(d / name, expected, f"{digest[:12]}…: the file is damaged; {rebuild}")


@contextmanager
def checkpoint_errors(bert_dir: str | os.PathLike):
    """Report TensorFlow's checkpoint-reader errors inside the block (a truncated data file
    raises IndexError, a damaged one an OpError) as a BertDirError naming the data file."""
    import tensorflow as tf

    try:
        yield
    except (IndexError, tf.errors.OpError) as e:
        d = Path(bert_dir)
        data = sorted(d.glob(f"{CKPT_PREFIX}.data-*-of-*")) or [d / f"{CKPT_PREFIX}.data-*"]
        try:
            rebuild = repair_hint(d, _read_manifest(d))
        except BertDirError:
            rebuild = repair_hint(d, None)
        raise _fail(
            data[0],
            "a readable checkpoint",
            f"{type(e).__name__}: {e} — the file is truncated or damaged; {rebuild}",
        ) from e


def _check_checkpoint(prefix: Path, config: dict) -> None:
    import tensorflow as tf

    import core  # noqa: F401

    index = Path(f"{prefix}.index")
    try:
        found = {name: tuple(shape) for name, shape in tf.train.list_variables(str(prefix))}
    except Exception as e:  # TF raises several error types for corrupt files
        raise _fail(index, "a readable TF checkpoint", f"{type(e).__name__}: {e}") from None
    for name, shape in expected_shapes(config).items():
        got = found.get(name)
        if name == "bert/embeddings/position_embeddings" and got and got[0] >= shape[0]:
            got = shape  # keras-bert slices the first max_position_embeddings rows
        if got != shape:
            raise _fail(
                index,
                f"variable {name} of shape {shape} (from {CONFIG_FILE})",
                "no such variable" if got is None else f"shape {got}",
            )


# ---------------------------------------------------------------- keras-bert -> Google names

# keras-bert layer -> Google variable names, in the order of layer.get_weights(): the inverse of
# keras_bert.loader.load_model_weights_from_checkpoint. "{i}" is the 0-based Google layer index.
_EMBEDDINGS = {
    "Embedding-Token": ["bert/embeddings/word_embeddings"],
    "Embedding-Segment": ["bert/embeddings/token_type_embeddings"],
    "Embedding-Position": ["bert/embeddings/position_embeddings"],
    "Embedding-Norm": ["bert/embeddings/LayerNorm/gamma", "bert/embeddings/LayerNorm/beta"],
}
_ENCODER = {
    "Encoder-{n}-MultiHeadSelfAttention": [
        f"bert/encoder/layer_{{i}}/attention/{name}/{p}"
        for name in ("self/query", "self/key", "self/value", "output/dense")
        for p in ("kernel", "bias")
    ],
    "Encoder-{n}-MultiHeadSelfAttention-Norm": [
        "bert/encoder/layer_{i}/attention/output/LayerNorm/gamma",
        "bert/encoder/layer_{i}/attention/output/LayerNorm/beta",
    ],
    "Encoder-{n}-FeedForward": [
        "bert/encoder/layer_{i}/intermediate/dense/kernel",
        "bert/encoder/layer_{i}/intermediate/dense/bias",
        "bert/encoder/layer_{i}/output/dense/kernel",
        "bert/encoder/layer_{i}/output/dense/bias",
    ],
    "Encoder-{n}-FeedForward-Norm": [
        "bert/encoder/layer_{i}/output/LayerNorm/gamma",
        "bert/encoder/layer_{i}/output/LayerNorm/beta",
    ],
}
MLM_HEAD = {
    "MLM-Dense": ["cls/predictions/transform/dense/kernel", "cls/predictions/transform/dense/bias"],
    "MLM-Norm": [
        "cls/predictions/transform/LayerNorm/gamma",
        "cls/predictions/transform/LayerNorm/beta",
    ],
    "MLM-Sim": ["cls/predictions/output_bias"],
}


def _layer_names(n_layers: int) -> dict[str, list[str]]:
    """Every trained keras-bert layer of the MLM model -> its Google variable names."""
    names = dict(_EMBEDDINGS)
    for i in range(n_layers):
        for layer, variables in _ENCODER.items():
            names[layer.format(n=i + 1)] = [v.format(i=i) for v in variables]
    return {**names, **MLM_HEAD}


def google_tensors(model, source_dir: str | Path) -> dict[str, np.ndarray]:
    """A keras-bert model's weights (core.training.mlm's MLM model) under Google BERT names, on top
    of the source checkpoint's.

    Variables the model does not hold (e.g. ``bert/pooler/*``) pass through from the source;
    position embeddings beyond the model's ``seq_len`` rows keep their source values.
    """
    import tensorflow as tf

    prefix = str(Path(source_dir) / CKPT_PREFIX)
    with checkpoint_errors(source_dir):
        reader = tf.train.load_checkpoint(prefix)
        out = {
            name: reader.get_tensor(name)
            for name in reader.get_variable_to_shape_map()
            if name.startswith(("bert/", "cls/"))  # not optimizer slots or global_step
        }
    n_layers = sum(1 for layer in model.layers if layer.name.endswith("-FeedForward-Norm"))
    for layer, variables in _layer_names(n_layers).items():
        weights = model.get_layer(layer).get_weights()
        if len(weights) != len(variables):
            raise RuntimeError(f"layer {layer}: {len(weights)} weights, expected {variables}")
        for name, value in zip(variables, weights, strict=True):
            value = np.asarray(value, dtype=np.float32)
            old = out.get(name)
            if name == "bert/embeddings/position_embeddings" and old is not None:
                value = np.concatenate([value, old[len(value) :]], axis=0)
            if old is not None and old.shape != value.shape:
                raise RuntimeError(f"{name}: trained shape {value.shape}, source {old.shape}")
            out[name] = value
    return out


def weights_sha256(bert_dir: str | Path) -> str:
    """Hash of a BERT folder's config, vocabulary and checkpoint files: the weights a run used.

    The folder is checked first (without TensorFlow): a missing or damaged one is a
    BertDirError saying how to make it.
    """
    check_bert_dir(Path(bert_dir), read_checkpoint=False)
    return hashing.folder_sha256(hashing.bert_files(bert_dir))
