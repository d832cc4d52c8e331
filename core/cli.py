"""How every command (``python -m core.pipeline``, ``core.serving.predict``, ``core.weights``) ends.

An expected error (bad input the user can fix: its message says where and how) prints as one
``error: <message>`` line and exit code 1; anything else keeps its full traceback. ``--debug`` or
``RECSENT_DEBUG=1`` shows the traceback of expected errors too. Notebooks keep raising: papermill
shows the cell that failed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from core.noise import quiet_stderr

DEBUG_ENV = "RECSENT_DEBUG"

# Every expected error, by class name: a name also matches a subclass, and an error raised in a
# notebook kernel reaches the pipeline only as its name (papermill's ``ename``).
EXPECTED = frozenset(
    {
        "BertDirError",  # core.weights.google_ckpt
        "ConfigError",  # core.config
        "DamagedStepError",  # core.runs.steps: a stored file changed since its step was made
        "DataError",  # core.data.reviews
        "DiskError",  # core.io: a full or read-only disk
        "HoldoutError",  # core.analysis.holdout
        "MissingOutputsError",  # core.ensembling.ensemble
        "MissingStageError",  # core.training.engine
        "NotebookError",  # core.pipeline.execute: a notebook stopped on one of these
        "RunMismatchError",  # core.runs.folder
        "RunNotFinishedError",  # core.serving.predict
        "SubmissionError",  # core.ensembling.submission
        "TrainingDivergedError",  # core.training.engine
        "UnsafePickleError",  # core.weights.torch_reader
        "WheelDownloadError",  # core.weights.m3e
        "WheelHashError",  # core.weights.m3e
    }
)


def is_expected(error: BaseException | str) -> bool:
    """Whether ``error`` (an exception, or a class name) is one of EXPECTED or a subclass."""
    if isinstance(error, str):
        return error in EXPECTED
    return any(cls.__name__ in EXPECTED for cls in type(error).__mro__)


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


class _Debug(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        os.environ[DEBUG_ENV] = "1"  # read when an error arrives; notebook kernels inherit it


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    help = f"show the full traceback of every error (or set {DEBUG_ENV}=1)"
    parser.add_argument("--debug", nargs=0, action=_Debug, help=help)


def run(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> NoReturn:
    """Run a command's ``main(argv)`` and exit with its code, expected errors as one line."""
    message = None
    with quiet_stderr():
        try:
            code = main(argv)
        except KeyboardInterrupt:
            if debugging():
                raise
            code, message = 130, "interrupted"
        except SystemExit as e:  # raise SystemExit("text") is an error message too
            if not isinstance(e.code, str) or debugging():
                raise
            code, message = 1, e.code
        except Exception as e:
            if not is_expected(e) or debugging():
                raise
            code, message = 1, str(e)
    if message is not None:  # after quiet_stderr: below anything a kernel still wrote
        print(f"error: {message}", file=sys.stderr)
    sys.exit(code or 0)
