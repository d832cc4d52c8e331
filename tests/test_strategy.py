"""core.model.strategy: choosing a strategy by name, and the mirrored / multi-worker paths on CPU.

The distributed paths run in subprocesses: logical CPUs must be configured before TensorFlow
initialises its devices, which this pytest process may already have done.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf
from fakes import write_random_bert_dir

from core.config import ROOT
from core.model.strategy import STRATEGIES, get_strategy

TIMEOUT = 120


def start_script(code: str, folder, args=(), env_extra=None) -> subprocess.Popen:
    """Start ``code`` in a fresh Python; it prints one JSON line prefixed ``RESULT ``."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "script.py"
    script.write_text(textwrap.dedent(code), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    paths = os.pathsep.join([str(ROOT), str(ROOT / "tests")])  # core, and the tests' fakes
    env.update({"PYTHONPATH": paths, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""})
    env.update(env_extra or {})
    command = [sys.executable, str(script), *map(str, args)]
    pipe = subprocess.PIPE
    return subprocess.Popen(command, cwd=ROOT, env=env, text=True, stdout=pipe, stderr=pipe)


def result(proc: subprocess.Popen) -> dict:
    """Wait (at most TIMEOUT s) for a started script and parse its RESULT line."""
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-4000:]
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    assert len(lines) == 1, stdout[-2000:] + stderr[-2000:]
    return json.loads(lines[0][len("RESULT ") :])


def test_default_strategy():
    strategy = get_strategy("default")
    assert strategy is tf.distribute.get_strategy()
    assert strategy.num_replicas_in_sync == 1
    assert get_strategy() is strategy


@pytest.mark.parametrize("name", ["gpu", "", "Mirrored", "tpu"])
def test_unknown_strategy_lists_the_names(name):
    with pytest.raises(ValueError) as info:
        get_strategy(name)
    message = str(info.value)
    assert f"strategy={name!r}" in message
    for known in ("default", "mirrored", "multiworker"):
        assert known in message
    assert STRATEGIES == ("default", "mirrored", "multiworker")


MIRRORED = """
import json, sys
import numpy as np
import core
from core.model.strategy import get_strategy
from fakes import split_cpu

split_cpu(2)
import tensorflow as tf
from core.data.batches import BatchSequence
from core.model.classifier import build_model

strategy = get_strategy("mirrored")
with strategy.scope():
    model = build_model(sys.argv[1], lr=1e-3)
    # What Adam's first apply_gradients does in an init_scope anyway; done here, fit traces its
    # train step once instead of twice (about 15 s less on a busy 2-core machine).
    model.optimizer.build(model.trainable_variables)
rng = np.random.default_rng(0)
vocab = model.get_layer("Embedding-Token").input_dim
rows = [np.concatenate([[3], rng.integers(6, vocab, size=int(n)), [4]])
        for n in rng.integers(2, 12, size=64)]
labels = (np.arange(64) % 2).astype(np.float32)
seq = BatchSequence(rows, labels, batch_size=16, shuffle=False)
hist = model.fit(seq.dataset(), epochs=1, shuffle=False, verbose=0)  # as the engine
preds = model.predict(BatchSequence(rows, batch_size=16), verbose=0)
print("RESULT " + json.dumps({
    "replicas": strategy.num_replicas_in_sync,
    "logical_cpus": len(tf.config.list_logical_devices("CPU")),
    "devices": list(strategy.extended.worker_devices),
    "mirrored_vars": all(isinstance(v, tf.distribute.DistributedValues)
                         for v in model.weights + model.optimizer.variables),
    "steps": int(model.optimizer.iterations.numpy()),
    "loss": hist.history["loss"],
    "preds": np.asarray(preds).reshape(-1).tolist(),
    "pred_shape": list(np.asarray(preds).shape),
}))
"""


@pytest.mark.slow
def test_mirrored_strategy_trains_on_two_logical_cpus(scripts):
    out = result(scripts["mirrored"])
    assert out["logical_cpus"] == 2
    assert out["replicas"] == 2
    assert len(out["devices"]) == 2 and all("CPU" in d for d in out["devices"])
    assert out["mirrored_vars"]
    assert out["steps"] == 4  # 64 rows in batches of 16, each batch split over both replicas
    assert len(out["loss"]) == 1
    loss = out["loss"][0]
    assert math.isfinite(loss) and 0 < loss < 10  # a plausible BCE
    assert out["pred_shape"] == [64, 1]
    preds = out["preds"]
    assert all(0 < p < 1 for p in preds) and len(set(preds)) > 1


MULTIWORKER = """
import json
import core
from core.model.strategy import get_strategy

strategy = get_strategy("multiworker")
import tensorflow as tf
with strategy.scope():
    v = tf.Variable(1.0)
print("RESULT " + json.dumps({
    "replicas": strategy.num_replicas_in_sync,
    "is_multiworker": isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy),
    "task": [strategy.cluster_resolver.task_type, strategy.cluster_resolver.task_id],
    "value": float(v.numpy()),
}))
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def scripts(tmp_path_factory, tiny_vocab):
    """Both distributed scripts, started together so they overlap on this 2-core machine."""
    folder = tmp_path_factory.mktemp("strategy")
    bert_dir = write_random_bert_dir(folder / "bert", tiny_vocab)
    tf_config = {
        "cluster": {"worker": [f"localhost:{free_port()}"]},
        "task": {"type": "worker", "index": 0},
    }
    env = {"TF_CONFIG": json.dumps(tf_config)}
    procs = {
        "mirrored": start_script(MIRRORED, folder / "mirrored", args=[bert_dir]),
        "multiworker": start_script(MULTIWORKER, folder / "multiworker", env_extra=env),
    }
    yield procs
    for proc in procs.values():  # a deselected test's script: stop it (only ours, by handle)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.slow
def test_multiworker_strategy_builds_with_one_worker(scripts):
    try:
        out = result(scripts["multiworker"])
    except subprocess.TimeoutExpired:
        pytest.skip(f"MultiWorkerMirroredStrategy did not start within {TIMEOUT} s on localhost")
    assert out["is_multiworker"]
    assert out["replicas"] == 1
    assert out["task"] == ["worker", 0]
    assert out["value"] == 1.0
