"""Content hashes: of files, of BERT folders' weights, and short keys of JSON-able values.

A leaf module (it imports nothing of ``core``), so settings, data and run folders can all hash
without importing each other. File hashes are remembered per (path, size, mtime) within a
process: a run hashes the same ~100 MB of weights for every step key it computes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

_CACHE: dict[tuple, str] = {}


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (FileNotFoundError if it is missing)."""
    path = Path(path)
    stat = os.stat(path)
    memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if memo not in _CACHE:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _CACHE[memo] = digest.hexdigest()
    return _CACHE[memo]


def bert_files(bert_dir: str | Path) -> list[Path]:
    """The files of a Google-format BERT folder that hold its weights and vocabulary."""
    bert_dir = Path(bert_dir)
    files = [bert_dir / "bert_config.json", bert_dir / "vocab.txt"]
    return files + sorted(bert_dir.glob("bert_model.ckpt.*"))


def folder_sha256(files: list[Path]) -> str:
    """One hash of several files' names and contents, in the given order."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def key(value, length: int = 12) -> str:
    """A short stable hash of a JSON-able value (dict keys sorted)."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
