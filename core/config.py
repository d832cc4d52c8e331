"""One typed settings object shared by the code, the notebooks and the command line."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The suite's notebooks by step; error messages name them in the command that fixes the error.
NOTEBOOKS = {
    "stage0": "notebooks/00_pretrain.ipynb",
    "eda": "notebooks/01_eda.ipynb",
    "stage1": "notebooks/02_cv.ipynb",
    "stage2": "notebooks/03_f1_refine.ipynb",
    "ensemble": "notebooks/04_ensemble.ipynb",
    "errors": "notebooks/05_errors.ipynb",
}

# Written last into stage 0's encoder folder (core.mlm): its presence marks the folder done.
PRETRAIN_FILE = "PRETRAIN.json"

SCHEDULES = ("constant", "cosine")  # stage 1 learning-rate schedules (core.model.learning_rate)


class ConfigError(ValueError):
    """A setting is out of range or names a path it may not use."""


@dataclass
class Settings:
    """Every knob of a run. Relative paths are resolved against the repository root."""

    train_path: Path = Path("data/train_shuffle.txt")
    test_path: Path = Path("data/test_handout.txt")
    bert_dir: Path = Path("pretrained/m3e-small")
    output_dir: Path = Path("outputs")
    maxlen: int = 20  # characters kept per text; [CLS] and [SEP] come on top
    batch_size: int = 16
    predict_batch_size: int = 256
    lr: float = 1e-5  # stage 1, encoder trainable (the peak rate under a schedule)
    schedule: str = "constant"  # or "cosine": warm-up then cosine decay to 0 over all epochs
    warmup: float = 0.0  # share of the training steps spent warming up (cosine schedule)
    layer_decay: float = 1.0  # each encoder layer learns this much slower than the one above
    epochs: int = 3
    patience: int = 1  # epochs without a better validation AUC before stopping
    n_folds: int = 5
    seed: int = 2020  # the fold split; also the training seed unless train_seed is set
    # Training randomness (head initialisation, dropout, batch order) on the same folds; None =
    # ``seed``. Runs that differ only here make a seed ensemble (scripts/blend_runs.py).
    train_seed: int | None = None
    group_by_length: bool = True
    # XLA-compiled training steps: 2.6x the throughput on this CPU (scripts/benchmark_throughput).
    jit_compile: bool = True
    # Batch widths are rounded up to a multiple of this, so XLA compiles a handful of shapes.
    pad_multiple: int = 4

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name.endswith(("_dir", "_path")):
                setattr(self, f.name, resolve(value))
        minimums = dict.fromkeys(("maxlen", "batch_size", "predict_batch_size", "epochs",
                                  "n_folds", "patience", "pad_multiple"), 1)  # fmt: skip
        minimums["seed"] = 0
        if self.train_seed is not None:  # None: training uses ``seed``
            minimums["train_seed"] = 0
        for name, minimum in minimums.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"setting {name}={value!r}: expected an integer >= {minimum}")
        if not isinstance(self.lr, (int, float)) or isinstance(self.lr, bool):
            raise ConfigError(f"setting lr={self.lr!r}: expected a number")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"setting schedule={self.schedule!r}: expected one of {SCHEDULES}")
        if (
            isinstance(self.warmup, bool)
            or not isinstance(self.warmup, (int, float))
            or not (0 <= self.warmup < 1)
        ):
            raise ConfigError(f"setting warmup={self.warmup!r}: expected a number in [0, 1)")
        if (
            isinstance(self.layer_decay, bool)
            or not isinstance(self.layer_decay, (int, float))
            or not (0 < self.layer_decay <= 1)
        ):
            raise ConfigError(
                f"setting layer_decay={self.layer_decay!r}: expected a number in (0, 1] (1 = off)"
            )
        if self.n_folds < 2:
            raise ConfigError(f"setting n_folds={self.n_folds}: expected at least 2 folds")
        if not 0 < self.lr < 1:
            raise ConfigError(f"setting lr={self.lr}: expected a learning rate in (0, 1)")

    @property
    def training_seed(self) -> int:
        """The seed of training's randomness: ``train_seed``, or ``seed`` when that is None."""
        return self.seed if self.train_seed is None else self.train_seed

    def check_fold(self, fold: int) -> int:
        """Return ``fold`` if it is one of the folds, else a ConfigError naming the valid ones."""
        if not isinstance(fold, int) or isinstance(fold, bool) or not 0 <= fold < self.n_folds:
            raise ConfigError(
                f"parameter fold={fold!r}: expected an integer in 0..{self.n_folds - 1} "
                f"(n_folds={self.n_folds}); pass e.g. -p fold 0"
            )
        return fold

    def run_path(self, run_dir: str | Path, name: str = "parameter run_dir") -> Path:
        """Resolve a run folder; it must lie inside ``output_dir`` (runs write nowhere else)."""
        path = resolve(run_dir)
        if path == self.output_dir or not path.is_relative_to(self.output_dir):
            raise ConfigError(
                f"{name}={str(run_dir)!r}: expected a path inside the output folder "
                f"{self.output_dir} (e.g. outputs/runs/my-run)"
            )
        return path


def resolve(path: str | Path) -> Path:
    """Resolve ``path`` against the repository root, refusing empty strings and NUL bytes."""
    text = str(path)
    if not text.strip() or "\x00" in text:
        raise ConfigError(f"path {text!r}: expected a non-empty file or folder path")
    p = Path(text).expanduser()
    return (p if p.is_absolute() else ROOT / p).resolve()
