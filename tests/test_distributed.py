"""The main job's steps as a task graph (core.pipeline.plan.graph, core.pipeline.distributed).

Quick: the graph's dependencies, the default path importing no Dask, the options' checks. Slow
(marked): a real Dask scheduler and two worker processes on 127.0.0.1 (``dask scheduler``, ``dask
worker --nthreads 1 --no-nanny``) run the tiny run's stage 1 (tests/tiny_run.py) once: the folds
run on both workers at once, a worker killed by its PID mid-fold loses its fold to the other,
which redoes it whole, and every fold gives the sequential run's out-of-fold predictions (the
session's tiny default run, conftest.py, is that sequential run); stopping a client (SIGINT, as
Ctrl-C) stops its tasks' notebook kernels, on that cluster and with ``--workers 2``. Each run has
an output folder of its own (a shared one would reuse the steps); the Ctrl-C tests start from the
session's stage 0.

The Ctrl-C tests give the client the default SIGINT disposition: a suite started in the
background (``nohup``, ``&``) ignores SIGINT, and Python keeps it ignored in its children.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
from tiny_run import N_FOLDS, subprocess_env

from core.config import ROOT, ConfigError
from core.pipeline.job import run_pipeline
from core.pipeline.plan import graph, plan
from core.runs import steps

TOLERANCE = 1e-5  # as tests/test_reproducible.py: bit-identical on this CPU, slack for another


# -- the graph ------------------------------------------------------------------------------------


def labels(chosen, waits) -> set[str]:
    return {chosen[j].label for j in waits}


def test_graph_orders_what_depends_and_leaves_the_rest_independent(tiny, tmp_path):
    settings = dataclasses.replace(tiny.settings, output_dir=tmp_path, blend_seeds=[5])
    chosen = plan(settings, tmp_path / "runs" / "run-x")
    deps = dict(zip([s.label for s in chosen], graph(chosen), strict=True))
    waits = {label: labels(chosen, d) for label, d in deps.items()}
    assert waits["stage0"] == set() and waits["eda"] == set()
    for k in range(N_FOLDS):
        assert waits[f"stage1-fold{k}"] == {"stage0"}  # folds of a stage: independent
        assert waits[f"stage2-fold{k}"] == {f"stage1-fold{k}"}
        # The seed member's folds: after the (shared) stage 0, never after the main run's folds.
        assert waits[f"seed5/stage1-fold{k}"] == {"stage0", "seed5/stage0"}
        assert waits[f"seed5/stage2-fold{k}"] == {f"seed5/stage1-fold{k}"}
    assert waits["seed5/stage0"] == {"stage0"}  # the same stored step: made once, then linked
    member_steps = {s.label for s in chosen if s.member == 5 and s.section != "ensemble"}
    assert waits["seed5/ensemble"] == member_steps
    everything = {s.label for s in chosen}
    assert waits["ensemble"] == everything - {"ensemble", "errors"}
    assert waits["errors"] == everything - {"errors"}
    # Every dependency points backwards: plan order is a valid order (the sequential path's).
    assert all(j < i for i, d in enumerate(graph(chosen)) for j in d)


def test_without_stage0_the_folds_wait_for_nothing(tiny, tmp_path):
    settings = dataclasses.replace(tiny.settings, output_dir=tmp_path, stage0_epochs=0)
    chosen = plan(settings, tmp_path / "runs" / "run-x")
    waits = {s.label: labels(chosen, d) for s, d in zip(chosen, graph(chosen), strict=True)}
    assert "stage0" not in waits
    assert all(waits[f"stage1-fold{k}"] == set() for k in range(N_FOLDS))


def test_the_default_path_imports_no_dask():
    code = (
        "import sys, core.pipeline.job\n"
        "assert not {'dask', 'distributed'} & set(sys.modules), 'imported Dask'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_gpu_ids_follow_cuda_visible_devices(monkeypatch):
    from core.pipeline.distributed import gpu_ids, local_cluster

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert gpu_ids() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert gpu_ids() == []
    with pytest.raises(ConfigError, match="--workers 3: this machine has 2 GPU"):
        local_cluster(3, ["0", "1"])  # refused before anything starts


def test_nothing_to_run_starts_no_cluster(monkeypatch):
    from core.pipeline import distributed

    def refuse(*_):
        raise AssertionError("started a cluster")

    monkeypatch.setattr(distributed, "local_cluster", refuse)
    distributed.run_graph([], [], 2, None)


@pytest.mark.parametrize(
    "args, message",
    [(["--workers", "0"], "--workers 0: expected at least 1"), (["--workers", "x"], "invalid int")],
)
def test_bad_workers_are_refused(args, message, capsys):
    from core.pipeline.job import main

    with pytest.raises((ConfigError, SystemExit)) as info:
        main(args)
    assert message in str(info.value) + capsys.readouterr().err


def test_workers_and_scheduler_exclude_each_other(capsys):
    from core.pipeline.job import main

    with pytest.raises(SystemExit):
        main(["--workers", "2", "--scheduler", "tcp://127.0.0.1:8786"])
    assert "not allowed with" in capsys.readouterr().err


def test_a_scheduler_that_does_not_answer_is_one_error(monkeypatch):
    from core.pipeline import distributed

    monkeypatch.setattr(distributed, "CONNECT_TIMEOUT", "1s")
    with pytest.raises(ConfigError, match="--scheduler tcp://127.0.0.1:9: no Dask scheduler"):
        distributed.connect("tcp://127.0.0.1:9")  # the discard port: nothing listens


def test_the_client_resolves_auto_once_and_passes_it_to_every_step(tiny, tmp_path, monkeypatch):
    """A CPU client with bf16 and a GPU worker would resolve ``auto`` each their own way: two
    computations under one run. The client resolves it and every step gets it explicitly, which a
    worker of other hardware checks against the run folder as the same run."""
    import core.model.precision as precision
    from core.config import from_values
    from core.pipeline import distributed
    from core.pipeline.plan import parameters
    from core.runs.folder import RunMismatchError, check_identity

    bf16_cpu = precision.Hardware(cpu_flags=frozenset({"avx512_bf16"}))
    monkeypatch.setattr(precision, "detect", lambda: bf16_cpu)
    seen = []
    monkeypatch.setattr(distributed, "run_graph", lambda chosen, *_: seen.extend(chosen))
    settings = dataclasses.replace(
        tiny.settings,
        output_dir=tmp_path / "outputs",
        precision="auto",
        stage0_jit_compile=True,
        stage1_jit_compile=True,
    )
    run_dir = run_pipeline(settings, only="stage1", workers=2)
    params = [parameters(s) for s in seen]
    assert [s.label for s in seen] == ["stage0", *(f"stage1-fold{k}" for k in range(N_FOLDS))]
    for p in params:
        assert (p["precision"], p.get("stage0_jit_compile"), p.get("stage1_jit_compile")) == (
            "bfloat16",
            False,
            False,
        )
    given = {k: v for k, v in params[0].items() if k not in ("run_dir", "fold")}
    worker = from_values(given, "a step's parameters")
    monkeypatch.setattr(precision, "detect", lambda: precision.Hardware(gpus=((8, 0),)))
    check_identity(run_dir, worker)  # a GPU worker: the client's computation, the same run
    with pytest.raises(RunMismatchError, match="stage1_jit_compile: was False, now True"):
        check_identity(run_dir, settings)  # auto resolved there: XLA on, another computation


# -- a real cluster on 127.0.0.1 ------------------------------------------------------------------


def default_sigint() -> None:
    # In the child before exec: Ctrl-C reaches it as it reaches a user's, whatever this suite's
    # parent did with SIGINT (a background job ignores it, and exec keeps an ignored signal).
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(words: list[str], log: Path) -> subprocess.Popen:
    env = {**subprocess_env(), "DASK_LOGGING__DISTRIBUTED": "warning"}
    with open(log, "ab") as out:  # each in a session of its own, so teardown ends its group
        return subprocess.Popen(
            words,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=default_sigint,
        )


def stop(proc: subprocess.Popen) -> None:
    for p in [proc.pid, *(c.pid for c in _children(proc.pid))]:
        try:
            os.killpg(p, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    proc.wait(timeout=30)


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def kernels(pid: int) -> list[psutil.Process]:
    """The notebook kernels under a process (a worker, a client)."""
    found = []
    for p in _children(pid):
        try:
            if "ipykernel" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


def until(condition, seconds: float, what: str):
    end = time.time() + seconds
    while time.time() < end:
        if value := condition():
            return value
        time.sleep(0.2)
    raise AssertionError(f"not within {seconds:.0f} s: {what}")


@dataclasses.dataclass
class Cluster:
    address: str
    workers: dict[str, subprocess.Popen]  # name -> its process (no nanny: the worker itself)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dask")
    dask, file = str(Path(sys.executable).parent / "dask"), str(tmp / "scheduler.json")
    procs = [
        start(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
            + ["--scheduler-file", file],
            tmp / "scheduler.log",
        )
    ]
    try:
        until(lambda: Path(file).exists(), 60, "the scheduler's file")
        workers = {}
        for name in ("wa", "wb"):
            workers[name] = start(
                [dask, "worker", "--scheduler-file", file, "--nthreads", "1", "--no-nanny"]
                + ["--host", "127.0.0.1", "--no-dashboard", "--name", name],
                tmp / f"{name}.log",
            )
            procs.append(workers[name])
        from distributed import Client

        with Client(scheduler_file=file, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=90)
            address = client.scheduler.address
        yield Cluster(address, workers)
    finally:
        for proc in procs:
            stop(proc)


@pytest.fixture(scope="module")
def reference(tiny_run) -> Path:
    """The sequential default: stage 0 and the stage-1 folds, one after another."""
    return tiny_run.run_dir


def fresh(tiny, tmp_path: Path, reference: Path):
    """The tiny settings in an output folder of their own, holding the reference's stage 0."""
    settings = dataclasses.replace(tiny.settings, output_dir=tmp_path / "outputs")
    stage0 = steps.ref(settings, "stage0")
    shutil.copytree((reference / "stage0").resolve(), stage0.dir, symlinks=True)
    assert stage0.done()
    return settings


def assert_same_oof(run_dir: Path, reference: Path) -> None:
    for k in range(N_FOLDS):
        a = pd.read_csv(run_dir / "stage1" / f"fold{k}" / "oof.csv")
        b = pd.read_csv(reference / "stage1" / f"fold{k}" / "oof.csv")
        assert a["id"].tolist() == b["id"].tolist()
        diff = np.abs(a["pred"].to_numpy() - b["pred"].to_numpy()).max()
        assert diff <= TOLERANCE, f"fold {k}: max abs difference {diff:.3g}"
        assert b["pred"].std() > 0  # a constant prediction would match trivially


def lock_holder(worker: subprocess.Popen) -> str | None:
    """The stage-1 step whose lock a kernel under ``worker`` holds (a fold mid-training)."""
    for kernel in kernels(worker.pid):
        try:
            for f in kernel.open_files():
                name = Path(f.path).name
                if "/.locks/" in f.path and name.startswith("stage1-fold"):
                    return name.removesuffix(".lock")
        except psutil.NoSuchProcess:
            pass
    return None


@pytest.mark.slow
def test_folds_share_the_workers_and_a_killed_workers_fold_goes_to_the_other(
    tiny, tmp_path, cluster, reference, caplog
):
    """One stage-1 run on the cluster: stage 0 first, then the folds on both workers at once; one
    worker is killed by its PID as its fold's training starts, and the other, its own fold done,
    redoes that fold whole (Dask's retry). Every fold equals the sequential run's."""
    caplog.set_level(logging.INFO, logger="pipeline")
    settings = dataclasses.replace(tiny.settings, output_dir=tmp_path / "outputs")
    store = steps.ref(settings, "stage0").store
    outcome: dict = {}

    def client():
        try:
            outcome["run"] = run_pipeline(settings, only="stage1", scheduler=cluster.address)
        except BaseException as e:  # reported below
            outcome["error"] = e

    thread = threading.Thread(target=client, daemon=True)
    thread.start()

    def held() -> dict[str, str]:
        return {n: step for n, w in cluster.workers.items() if (step := lock_holder(w))}

    # Both workers hold a fold's lock at once (each fold's training under way): the folds run
    # side by side. The victim is the worker holding the last fold.
    def both_busy() -> dict[str, str] | None:
        busy = held()
        return busy if len(busy) == len(cluster.workers) else None

    both = until(both_busy, 300, "both workers training a fold")
    assert len(set(both.values())) == len(both) == 2, both
    name, victim_step = max(both.items(), key=lambda item: item[1])
    workers = set(cluster.workers)
    victim = cluster.workers.pop(name)
    orphans = kernels(victim.pid)
    assert not (store / victim_step / "done.json").exists()  # half a fold on disk
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    # Its kernel ends too (the step's process watches its parent): no orphan holds the lock.
    until(lambda: not any(k.is_running() for k in orphans), 30, "the dead worker's kernel gone")

    thread.join(timeout=300)
    assert not thread.is_alive() and "error" not in outcome, outcome
    run_dir = outcome["run"]
    assert_same_oof(run_dir, reference)
    tasks = json.loads((run_dir / "tasks.json").read_text())
    folds = [tasks[f"stage1-fold{k}"] for k in range(N_FOLDS)]
    # Stage 0 first (the folds fine-tune its encoder), then the folds; all on the survivor now.
    assert all(f["start"] >= tasks["stage0"]["end"] for f in folds)
    [(survivor, _)] = cluster.workers.items()
    assert workers == {name, survivor}
    redone = victim_step.split("-")[1]  # "stage1-fold1-<key>" -> "fold1"
    assert tasks[f"stage1-{redone}"]["worker"].startswith(f"{survivor} (")
    # Progress: one line as each step starts (where) and ends (where, how long).
    printed = caplog.text
    for k in range(N_FOLDS):
        assert f"stage1-fold{k}: notebooks/02_cv.ipynb started on w" in printed
        assert f"stage1-fold{k}: finished on {folds[k]['worker']} in " in printed
    assert f"stage1-{redone}: notebooks/02_cv.ipynb started on {name} (" in printed
    assert f"stage1-{redone}: notebooks/02_cv.ipynb started on {survivor} (" in printed
    assert f"(again: its worker {name} (" in printed
    for k in range(N_FOLDS):  # the survivor's own fold ran once: only the lost one is redone
        started = printed.count(f"stage1-fold{k}: notebooks/02_cv.ipynb started on ")
        assert started == (2 if f"fold{k}" == redone else 1), (k, started)
    assert set(json.loads((run_dir / "timings.json").read_text())) == set(tasks)
    assert (run_dir / "notebooks" / f"02_cv-stage1-{redone}.ipynb").is_file()


def sigint_when_running(words: list[str], tmp_path: Path, under) -> tuple[subprocess.Popen, list]:
    """Start a client, wait until a notebook kernel runs under ``under(client)``, then send
    SIGINT to the client's process group, as Ctrl-C in its terminal does."""
    client = start(words, tmp_path / "client.log")
    try:
        running = until(lambda: kernels(under(client)), 180, "a step's kernel")
        time.sleep(2)  # into the notebook, past the kernel's start
        os.killpg(client.pid, signal.SIGINT)
        client.wait(timeout=120)
    finally:
        if client.poll() is None:
            stop(client)
    return client, running


def config(settings, tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    values = {k: str(v) if isinstance(v, Path) else v for k, v in settings.changed().items()}
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in values.items()), "utf-8")
    return path


@pytest.mark.slow
def test_stopping_a_client_stops_its_tasks_on_the_cluster(tiny, tmp_path, cluster, reference):
    settings = fresh(tiny, tmp_path, reference)
    words = [
        sys.executable,
        "-m",
        "core.pipeline",
        "--config",
        str(config(settings, tmp_path)),
    ]
    worker = next(iter(cluster.workers.values()))
    client, running = sigint_when_running(
        [*words, "--only", "stage1", "--scheduler", cluster.address], tmp_path, lambda _: worker.pid
    )
    assert client.returncode == 130, (tmp_path / "client.log").read_text()[-3000:]
    until(lambda: not any(k.is_running() for k in running), 30, "the stopped step's kernel gone")
    assert all(w.poll() is None for w in cluster.workers.values())  # the workers stay up
    store = steps.ref(settings, "stage0").store
    assert not list(store.glob("stage1-fold*/done.json"))  # nothing passed off as finished


@pytest.mark.slow
def test_stopping_a_client_with_workers_stops_everything_it_started(tiny, tmp_path, reference):
    settings = fresh(tiny, tmp_path, reference)
    words = [
        sys.executable,
        "-m",
        "core.pipeline",
        "--config",
        str(config(settings, tmp_path)),
    ]
    started: list[psutil.Process] = []

    def under(client):
        started[:] = _children(client.pid)  # the last view before the stop: workers, steps
        return client.pid

    client, running = sigint_when_running(
        [*words, "--only", "stage1", "--workers", "2"], tmp_path, under
    )
    assert client.returncode == 130, (tmp_path / "client.log").read_text()[-3000:]
    assert running and started
    until(lambda: not any(p.is_running() for p in started), 60, "every process it started gone")
