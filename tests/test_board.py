"""TensorBoard: keras' stock callbacks write a fold's curves and settings (quick, on a toy
model; then on the session's tiny main job), and ``python -m core.training.board`` serves every
run's folds on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from tiny_run import subprocess_env

from core.config import ROOT
from core.runs import steps
from core.training import board

# The tags keras' TensorBoard callback writes, by run (sub-folder) of a fold's event folder.
LOSS, AUC, LR = "train/epoch_loss", "validation/epoch_auc", "train/epoch_learning_rate"


@pytest.fixture(scope="module")
def trained(tiny_job):
    """The session's tiny main job (conftest.py): its settings and run folder."""
    return tiny_job.settings, tiny_job.run_dir


def scalars(events_dir) -> dict[str, list[float]]:
    """Every scalar under ``events_dir`` as ``<run>/<tag>`` (epochs in order), and ``_hparams``:
    the HParams plugin's tags of the folder itself."""
    import tensorflow as tf
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer

    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(events_dir))
    mux.Reload()
    got = {
        f"{run}/{tag}": [float(tf.make_ndarray(e.tensor_proto)) for e in mux.Tensors(run, tag)]
        for run, tags in mux.Runs().items()
        for tag in tags["tensors"]
        if not tag.startswith("_hparams_")
    }
    return got | {"_hparams": [t for t in mux.Runs()["."]["tensors"] if t.startswith("_hparams_")]}


def hparams_shown(events_dir) -> dict:
    """The settings the HParams tab shows for ``events_dir``."""
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import plugin_data_pb2

    mux = EventMultiplexer()
    mux.AddRun(str(events_dir), ".")
    mux.Reload()
    content = mux.SummaryMetadata(".", "_hparams_/session_start_info").plugin_data.content
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}


@pytest.mark.parametrize("schedule", [False, True])
def test_the_callbacks_write_each_epochs_curves_and_the_settings(tmp_path, schedule):
    from tensorflow import keras

    class FakeAUC(keras.callbacks.Callback):  # as ValidationAUC: before the board's callbacks
        def on_epoch_end(self, epoch, logs=None):
            logs["val_auc"] = 0.5 + epoch / 10

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.layers.Dense(1, activation="sigmoid", input_shape=(3,))])
    rate = keras.optimizers.schedules.CosineDecay(0.1, 12) if schedule else 0.01
    model.compile(keras.optimizers.Adam(rate), "binary_crossentropy")
    settings = {"stage1_lr": 2e-5, "stage1_schedule": "cosine", "blend": [1, 2], "none": None}
    history = model.fit(
        np.random.rand(32, 3),
        np.random.randint(0, 2, (32, 1)),
        batch_size=8,
        epochs=3,
        verbose=0,
        callbacks=[FakeAUC(), *board.board_callbacks(tmp_path / board.EVENTS, settings)],
    )
    got = scalars(tmp_path / board.EVENTS)
    assert set(history.history) == {"loss", "val_auc"}  # history.json: nothing added
    assert got[LOSS] == pytest.approx(history.history["loss"])
    assert got[AUC] == pytest.approx([0.5, 0.6, 0.7])
    assert len(got[LR]) == 3
    if schedule:  # 4 steps an epoch of 12: the cosine's rate after each epoch
        assert got[LR] == pytest.approx([0.075, 0.025, 0.0], abs=1e-6)
    else:
        assert got[LR] == pytest.approx([0.01] * 3)
    assert got["_hparams"]
    assert hparams_shown(tmp_path / board.EVENTS) == {
        "stage1_lr": 2e-5,
        "stage1_schedule": "cosine",
        "blend": "[1, 2]",  # as text; None dropped
    }


@pytest.mark.slow  # reads the session's tiny main job
def test_each_fold_writes_loss_validation_auc_and_learning_rate(trained):
    settings, run = trained
    for stage in ("stage1", "stage2"):
        step = steps.ref(settings, stage, 0)
        got = scalars(step.dir / board.EVENTS)
        done = json.loads(step.marker.read_text(encoding="utf-8"))
        assert len(got[LOSS]) == done["epochs_run"], stage
        assert len(got[LR]) == done["epochs_run"] and got[LR][0] > 0
        if done["best_epoch"]:  # the best epoch's validation AUC is the fold's
            assert max(got[AUC]) == pytest.approx(done["val_auc"], abs=1e-6), stage
        else:  # stage 2 kept the stage-1 head (its epoch 0, on no curve): no epoch beat it
            assert max(got[AUC]) <= done["val_auc"], stage
        assert got["_hparams"], f"{stage}: no HParams written"
    # Stage 1's cosine schedule: the learning rate after the last epoch has decayed to ~0.
    lr = scalars(steps.ref(settings, "stage1", 0).dir / board.EVENTS)[LR]
    assert lr[-1] < lr[0]


@pytest.mark.slow
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
