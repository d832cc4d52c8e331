"""A tiny, real-format run for the end-to-end tests (not a conftest: import it as a module).

``make_tiny_inputs(folder)`` writes the first rows of the competition files (same format: a row,
then a blank line) and a tiny random BERT folder, and returns pipeline parameters for them built
as ``core.config.Settings`` (3 folds, one epoch per stage, lr 1e-3 so one epoch learns
something, stage 1 without XLA). ``output_dir`` is ``folder / "outputs"``; see test_pipeline for
why the end-to-end runs use a ``outputs/test-<uuid>`` folder of the repository instead.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from conftest import TINY_VOCAB
from fakes import write_random_bert_dir

from core.config import ROOT, Settings

TRAIN = ROOT / "data" / "train_shuffle.txt"
TEST = ROOT / "data" / "test_handout.txt"


@dataclass
class TinyInputs:
    train_path: Path
    test_path: Path
    bert_dir: Path
    output_dir: Path
    settings: Settings


def first_rows(path: Path, n: int) -> str:
    """The first ``n`` rows of a competition-format file, in that format (row, blank line)."""
    lines = path.read_text(encoding="utf-8").split("\n")
    rows = lines[0::2][:n]
    assert len(rows) == n and all(r.strip() for r in rows), f"{path} has fewer than {n} rows"
    return "".join(f"{r}\n\n" for r in rows)


def make_tiny_inputs(folder: Path, n_train: int = 120, n_test: int = 40, extra=()):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    train, test = folder / "train.txt", folder / "test.txt"
    train.write_text(first_rows(TRAIN, n_train), encoding="utf-8")
    test.write_text(first_rows(TEST, n_test), encoding="utf-8")
    bert = folder / "bert"
    if not (bert / "vocab.txt").exists():
        write_random_bert_dir(bert, TINY_VOCAB)
    values = {
        "train_path": str(train),
        "test_path": str(test),
        "bert_dir": str(bert),
        "output_dir": str(folder / "outputs"),
        "n_folds": 3,
        "stage1_epochs": 1,
        "stage1_lr": 1e-3,
        "stage2_lr": 1e-3,
        "stage2_epochs": 1,
        # XLA compiles every batch shape anew: ~3x slower on this tiny data, and the pipeline's
        # mechanics do not depend on it (test_reproducible checks the XLA path separately).
        "stage1_jit_compile": False,
        **dict(extra),
    }
    return TinyInputs(train, test, bert, folder / "outputs", Settings(**values))


def subprocess_env() -> dict:
    """Environment for child processes: this venv's python first on PATH, repo importable."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH", "")] if p)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def fold_files(run_dir: Path, stage: str, fold: int) -> dict[str, Path]:
    d = Path(run_dir) / stage / f"fold{fold}"
    weights = "weights.h5" if stage == "stage1" else "head.h5"
    return {n: d / n for n in ("oof.csv", "test.csv", "history.json", "done.json", weights)}
