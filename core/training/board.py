"""TensorBoard: every fold's training curves and settings, for every run under ``outputs/``.

A fold writes its event files into its stored step (``<step>/tensorboard/``): per epoch the
training loss, the validation AUC and the learning rate, and once the step's settings as HParams
(``core.runs.steps.recipe``). ``python -m core.training.board`` lays out
``outputs/tensorboard/<run>/<step>`` links to them (a step shared by two runs shows in both) and
serves TensorBoard on 127.0.0.1.

    python -m core.training.board                 # http://127.0.0.1:6006
    python -m core.training.board --port 6010     # any tensorboard option goes through
    python -m core.training.board --output-dir other/outputs
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from tensorflow import keras

from core.runs.steps import FOLDED

EVENTS = "tensorboard"  # a step's event folder
VIEW = "tensorboard"  # under the output folder: one folder of links per run


def _hparam(value):
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


class Board(keras.callbacks.Callback):
    """Write loss, validation AUC (from ``ValidationAUC``, which must come before) and learning
    rate per epoch, and the step's settings as HParams, to ``logdir``."""

    def __init__(self, logdir: Path, hparams: dict):
        super().__init__()
        self.logdir, self.hparams = Path(logdir), hparams

    def on_train_begin(self, logs=None):
        import tensorflow as tf
        from tensorboard.plugins.hparams import api as hp

        self.writer = tf.summary.create_file_writer(str(self.logdir))
        with self.writer.as_default():
            hp.hparams({k: _hparam(v) for k, v in self.hparams.items() if v is not None})

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf

        logs = logs or {}
        with self.writer.as_default(step=epoch + 1):
            for name in ("loss", "val_auc"):
                if name in logs:
                    tf.summary.scalar(name, float(logs[name]))
            tf.summary.scalar("learning_rate", self._lr())
        self.writer.flush()

    def on_train_end(self, logs=None):
        self.writer.close()

    def _lr(self) -> float:
        lr = self.model.optimizer.learning_rate
        if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
            lr = lr(self.model.optimizer.iterations)
        return float(keras.backend.get_value(lr))


def layout(output_dir: Path) -> Path:
    """``<output_dir>/tensorboard/<run>/<stage>-fold<k>``: links to each run's folds' events,
    made anew (runs deleted since drop out)."""
    view = Path(output_dir) / VIEW
    if view.exists():
        shutil.rmtree(view)
    for run in sorted((Path(output_dir) / "runs").glob("*/")):
        folds = [f for section in FOLDED for f in sorted(run.glob(f"{section}/fold*"))]
        for fold in folds:  # stage 1, stage 2 and the students
            events = fold.resolve() / EVENTS
            if events.is_dir():
                link = view / run.name / f"{fold.parent.name}-{fold.name}"
                link.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(events, link)
    view.mkdir(parents=True, exist_ok=True)
    return view


def command(logdir: Path) -> list[str]:
    """TensorBoard on 127.0.0.1 (options added after it win, e.g. ``--port 6010``)."""
    return [sys.executable, "-m", "tensorboard.main", f"--logdir={logdir}", "--host=127.0.0.1"]


def main(argv: list[str] | None = None) -> None:
    import argparse

    from core.config import DEFAULTS

    parser = argparse.ArgumentParser(prog="python -m core.training.board", add_help=False)
    parser.add_argument("--output-dir", default=DEFAULTS.output_dir, type=Path)
    args, options = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    view = layout(args.output_dir)
    args = [*command(view), *options]
    print(f"TensorBoard over {view} (one folder per run)", file=sys.stderr, flush=True)
    os.execv(args[0], args)  # the server replaces this process (Ctrl-C stops it)


if __name__ == "__main__":
    main()
