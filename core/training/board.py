"""TensorBoard: every fold's training curves and settings, for every run under ``outputs/``.

A fold writes its event files into its stored step (``<step>/tensorboard/``) through keras'
stock callbacks (``board_callbacks``): per epoch the training loss and learning rate
(``train/``) and the validation AUC (``validation/``), and once the step's settings as HParams
(``core.runs.steps.hparams``). ``python -m core.training.board`` lays out
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

from core.runs.steps import FOLDED

EVENTS = "tensorboard"  # a step's event folder
VIEW = "tensorboard"  # under the output folder: one folder of links per run


def board_callbacks(logdir: Path, hparams: dict) -> list:
    """keras' TensorBoard callback (per epoch: ``train/epoch_loss``, ``train/epoch_learning_rate``
    and, from ``logs["val_auc"]`` that ``ValidationAUC`` sets before it, ``validation/epoch_auc``)
    and the HParams plugin's (``hparams`` once, None dropped, other values as text), to ``logdir``.
    """
    from tensorboard.plugins.hparams import api as hp
    from tensorflow import keras  # here, so the command (--help, the links) loads no TensorFlow

    class TensorBoard(keras.callbacks.TensorBoard):
        # tf-keras logs only a LearningRateSchedule's rate; give it a constant one too (stage 2's
        # head), in a copy of the logs, so History (history.json) keeps its keys.
        def on_epoch_end(self, epoch, logs=None):
            rate = float(keras.backend.get_value(self.model.optimizer.learning_rate))
            super().on_epoch_end(epoch, {"learning_rate": rate, **(logs or {})})

    shown = {
        k: v if isinstance(v, (bool, int, float, str)) else str(v)
        for k, v in hparams.items()
        if v is not None
    }
    return [
        TensorBoard(str(logdir), write_graph=False, profile_batch=0, update_freq="epoch"),
        hp.KerasCallback(str(logdir), shown),
    ]


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

    parser = argparse.ArgumentParser(
        prog="python -m core.training.board",
        usage="%(prog)s [--output-dir DIR] [TENSORBOARD OPTION ...]",
        description="Serve TensorBoard on 127.0.0.1 over every run under the output folder: each "
        "fold's training loss, validation AUC and learning rate, and its settings.",
        epilog="Any other option goes to tensorboard (e.g. --port 6010); its own list: "
        "python -m tensorboard.main --help",
    )
    parser.add_argument(
        "--output-dir",
        default=DEFAULTS.output_dir,
        type=Path,
        metavar="DIR",
        help="the output folder whose runs to show (default outputs/)",
    )
    args, options = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    view = layout(args.output_dir)
    args = [*command(view), *options]
    print(f"TensorBoard over {view} (one folder per run)", file=sys.stderr, flush=True)
    os.execv(args[0], args)  # the server replaces this process (Ctrl-C stops it)


if __name__ == "__main__":
    main()
