"""One step of the main job in a child process: what a distributed task runs
(core.pipeline.distributed).

The child runs ``core.pipeline.execute.execute`` (papermill) and ``keep_notebook``, exactly as the
sequential main job does, so the executed notebook, the stored step and its marker are the same.
A child rather than the worker's own thread, because a thread cannot be stopped: the child sits
in a session of its own, and when it is told to stop (SIGTERM) or its parent dies (a worker
killed mid-step) it ends its notebook kernel and itself. The kernel then releases the step's lock
without having written the marker, so the step is redone whole wherever it runs next.

    # what run starts:
    python -m core.pipeline.step_process RESULT_FILE PARENT_PID < pickled (step, params)
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import psutil

from core.config import ROOT
from core.io import read_json, write_json
from core.noise import is_noise
from core.pipeline.execute import NotebookError, execute, keep_notebook, setup_logging

POLL = 0.5  # seconds between checks for a stop request and for the parent's death
GRACE = 10  # seconds a stopped child gets to end its kernel before everything is killed


class StepStopped(RuntimeError):
    """The step was stopped from outside (its task was cancelled); nothing of it was kept."""


class StepFailed(RuntimeError):
    """A step's notebook raised an unexpected error; the message is the child's traceback."""


def run(step, params: dict, stop: Callable[[], bool] = lambda: False) -> float:
    """Run one step in a child process, relaying its output line by line prefixed with the step's
    label; stop it (kernel included) as soon as ``stop()`` is true. Return its wall time.

    Raises ``core.pipeline.execute.NotebookError`` for an expected error (as ``execute`` does),
    ``StepFailed`` for any other and ``StepStopped`` when stopped."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # The kernel is found through this interpreter's PATH, as for papermill run by hand.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="recsent-step-") as tmp:
        result = Path(tmp) / "result.json"
        proc = subprocess.Popen(
            [sys.executable, "-m", "core.pipeline.step_process", str(result), str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
            start_new_session=True,  # a terminal's Ctrl-C reaches the client, which decides
        )
        relay = threading.Thread(target=_relay, args=(proc.stdout, step.label), daemon=True)
        relay.start()
        try:
            proc.stdin.write(pickle.dumps((step, params)))
            proc.stdin.close()
            while proc.poll() is None:
                if stop():
                    raise StepStopped(f"{step.label}: stopped")
                time.sleep(POLL)
        finally:
            if proc.poll() is None:
                terminate(proc)
            relay.join(timeout=5)
        outcome = read_json(result) if result.is_file() else None
    if outcome is None:
        raise StepFailed(f"{step.label}: the step's process ended with code {proc.returncode}")
    if outcome.get("expected"):
        raise NotebookError(outcome["message"])
    if "message" in outcome:
        raise StepFailed(outcome["message"])
    return time.time() - start


def _relay(stream, label: str) -> None:
    # One step's lines stay whole among those of the steps that run beside it.
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", errors="replace")
        if not is_noise(line):
            sys.stdout.write(f"  {label} | {line}")
            sys.stdout.flush()


def terminate(proc: subprocess.Popen) -> None:
    """Stop the child and everything it started: SIGTERM (it ends its kernel), then SIGKILL."""
    family = _family(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=GRACE)
    except subprocess.TimeoutExpired:
        pass
    _kill(family)
    proc.wait()


def _family(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _kill(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=GRACE)


# -- the child ------------------------------------------------------------------------------------


def _end(code: int) -> None:
    """End the kernel (it is in a session of its own, so not in this process's group), then
    this process, without the ``finally`` blocks that would keep a half-run notebook."""
    kids = psutil.Process().children(recursive=True)
    for p in kids:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(kids, timeout=GRACE)
    _kill(alive)
    os._exit(code)


def _watch_parent(parent: int) -> None:
    # A worker killed with SIGKILL cannot stop its children: they notice it gone instead.
    while os.getppid() == parent:
        time.sleep(POLL)
    _end(1)


def main(argv: list[str]) -> int:
    result, parent = Path(argv[0]), int(argv[1])
    signal.signal(signal.SIGTERM, lambda *_: _end(143))
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    step, params = pickle.load(sys.stdin.buffer)
    setup_logging()
    try:
        execute(step, params)
        keep_notebook(step)
    except NotebookError as e:
        write_json(result, {"expected": True, "message": str(e)})
        return 1
    except Exception:
        write_json(result, {"expected": False, "message": traceback.format_exc()})
        return 1
    write_json(result, {})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
