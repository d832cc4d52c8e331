"""Lines that tell a user nothing, and the places they are dropped: this process's stderr (and its
children's: TensorFlow's C++ start-up lines, notebook kernels), the main job's terminal (what its
kernels print, nbconvert's log), the executed notebooks, and at the source in every notebook
kernel (``quiet_kernel``, which ``import core`` calls there), however the notebook was started.

No environment variable silences TensorFlow's start-up lines: they are logged before absl's
logging is initialised, so TF_CPP_MIN_LOG_LEVEL (2, set in core/__init__) does not apply to them
(3, GLOG_minloglevel, TF_ENABLE_ONEDNN_OPTS=1 and CUDA_VISIBLE_DEVICES were tried). So they are
filtered by line, and only these: every other line, errors included, passes.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

_NOISE = [
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    # C++ INFO and WARNING lines (absl's format): TF_CPP_MIN_LOG_LEVEL=2 already hides those
    # logged after start-up; these are the oneDNN and "no CUDA driver" notes logged before it.
    r"[IW]\d{4} [\d:.]+ +\d+ \S+:\d+\] ",
    # An ERROR line that is only a fallback note.
    r"E\d{4} [\d:.]+ +\d+ util\.cc:\d+\] oneDNN supports DT_INT32 only on platforms with AVX-512",
    # ipykernel's warning at every kernel start (its sockets are on localhost).
    r".*Kernel is running over TCP without encryption",
    # jupyter_client interrupts every kernel it shuts down; one that is still finishing a request
    # (after a cell's error) logs this. The interrupt is the client's, not the user's.
    r"(?:\[IPKernelApp\] ERROR \| )?KeyboardInterrupt caught in kernel",
    # nbconvert, for every plot in the HTML copy of a notebook.
    r"Alternative text is missing on \d+ image",
]
if not os.path.exists("/proc/driver/nvidia"):
    # No NVIDIA driver: cuInit can only fail, and CPU training is what the user asked for. With
    # a driver the line stays: there it means the GPU is not used.
    _NOISE.append(r"E\d{4} [\d:.]+ +\d+ cuda_platform\.cc:\d+\] failed call to cuInit")
NOISE = re.compile("|".join(f"(?:{p})" for p in _NOISE))


def is_noise(line: str) -> bool:
    return NOISE.match(line) is not None


def drop_noise(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not is_noise(line))


class NoiseFilter(logging.Filter):
    """Drops noise lines from a record's message (papermill logs a kernel's output in chunks)."""

    def filter(self, record):
        message = record.getMessage()
        kept = drop_noise(message)
        if kept != message:
            record.msg, record.args = kept, None
        return bool(kept.strip()) or not message.strip()


class KernelOutput:
    """A file for papermill's ``stdout_file``/``stderr_file``: what a notebook's kernel prints,
    minus noise, written to this process's current ``sys.stdout`` (where the main job's own lines
    go, so the two stay in order)."""

    def write(self, text: str) -> int:
        sys.stdout.write(drop_noise(text))
        return len(text)

    def flush(self) -> None:
        sys.stdout.flush()


@contextmanager
def quiet_stderr():
    """Route stderr (file descriptor 2, which child processes inherit) through a child process
    that drops noise lines. A child rather than a thread: if this process dies (a crash inside
    TensorFlow), the child still passes on everything written before."""
    try:
        sys.stderr.flush()
        original = os.dup(2)
    except (AttributeError, OSError, ValueError):  # no real stderr: nothing to filter
        yield
        return
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen(
        [sys.executable, "-m", "core.noise"],
        stdin=subprocess.PIPE,
        stdout=original,
        stderr=original,
        env=env,
    )
    os.dup2(child.stdin.fileno(), 2)
    child.stdin.close()  # fd 2 is now the pipe's only writer here
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe: the child ends once it has passed everything on
        os.close(original)
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a grandchild still holds the pipe: it drains later
            pass


def quiet_kernel() -> None:
    """In a notebook kernel, drop noise at its source, whoever started the kernel (papermill by
    hand, the main job, JupyterLab). TensorFlow writes its start-up lines to fd 2 while it loads
    and finds its devices, and ipykernel copies fd 2 into the notebook and onto the terminal: so
    load it here, under quiet_stderr, which ends once it has passed on every other line (a
    filter for the kernel's life would pass later lines on too late for their cell). The
    kernel's own log noise is dropped by a filter on its logger. ``import core`` calls this."""
    app = sys.modules.get("ipykernel.kernelapp")
    if app is None or not app.IPKernelApp.initialized():
        return
    app.IPKernelApp.instance().log.addFilter(NoiseFilter())  # writes to the terminal directly
    with quiet_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # cuInit's note, else logged by the first op


def clean_notebook(path: Path) -> None:
    """Drop noise lines from an executed notebook's stream outputs (rewrites ``path``)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        outputs = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                out["text"] = drop_noise(out["text"])
                if not out["text"]:
                    continue
            outputs.append(out)
        if "outputs" in cell:
            cell["outputs"] = outputs
    nbformat.write(nb, path)


def _pass_on() -> None:
    """The child of quiet_stderr: stdin to stdout, line by line, minus noise."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the parent; keep draining
    for line in sys.stdin.buffer:
        if not is_noise(line.decode("utf-8", errors="replace")):
            sys.stdout.buffer.write(line)
            sys.stdout.buffer.flush()


if __name__ == "__main__":
    _pass_on()
