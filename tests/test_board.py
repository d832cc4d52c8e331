"""TensorBoard: a fold's event files hold its curves and settings, and ``python -m
core.training.board`` serves every run's folds on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from tiny_run import make_tiny_inputs, subprocess_env

from core.config import ROOT
from core.runs import steps
from core.training import board


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny stage-1 fold and its stage-2 fold, trained in-process, in a run folder."""
    from core.runs.folder import default_run_dir
    from core.training.engine import train_stage1, train_stage2

    tiny = make_tiny_inputs(tmp_path_factory.mktemp("board"))
    settings = dataclasses.replace(tiny.settings, stage0_epochs=0, stage1_epochs=2)
    run = default_run_dir(settings)
    train_stage1(settings, 0, run)
    train_stage2(settings, 0, run)
    return settings, run


def scalars(events_dir) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events_dir))
    acc.Reload()
    import tensorflow as tf

    return {
        tag: [float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]
        for tag in acc.Tags()["tensors"]
        if not tag.startswith("_hparams_")
    } | {"_hparams": [t for t in acc.Tags()["tensors"] if t.startswith("_hparams_")]}


def test_each_fold_writes_loss_validation_auc_and_learning_rate(trained):
    settings, run = trained
    for stage in ("stage1", "stage2"):
        step = steps.ref(settings, stage, 0)
        got = scalars(step.dir / board.EVENTS)
        done = json.loads(step.marker.read_text(encoding="utf-8"))
        assert len(got["loss"]) == done["epochs_run"], stage
        assert len(got["learning_rate"]) == done["epochs_run"] and got["learning_rate"][0] > 0
        assert max(got["val_auc"]) == pytest.approx(done["val_auc"], abs=1e-6), stage
        assert got["_hparams"], f"{stage}: no HParams written"
    # Stage 1's cosine schedule: the learning rate after the last epoch has decayed to ~0.
    lr = scalars(steps.ref(settings, "stage1", 0).dir / board.EVENTS)["learning_rate"]
    assert lr[-1] < lr[0]


def test_layout_links_each_runs_folds(trained):
    settings, run = trained
    view = board.layout(settings.output_dir)
    link = view / run.name / "stage1-fold0"
    assert link.is_symlink() and (link / "..").exists()
    assert link.resolve() == (steps.ref(settings, "stage1", 0).dir / board.EVENTS).resolve()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_command_serves_every_run_on_loopback(trained):
    settings, run = trained
    port = _free_port()
    env = subprocess_env()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "core.training.board"),
            *("--output-dir", str(settings.output_dir), "--port", str(port)),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline, runs = time.time() + 90, []
        while time.time() < deadline and not runs:
            time.sleep(1)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=5) as r:
                    runs = json.loads(r.read())
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert f"{run.name}/stage1-fold0" in runs and f"{run.name}/stage2-fold0" in runs, runs
    finally:
        proc.terminate()
        proc.wait(30)
