"""SIGKILL in the middle of a fold, then the same command again: finished folds are kept as they
are, the killed fold is redone, nothing half-written ever looks finished. (The one kill -9 scenario
of the step store's claim; tests/test_distributed.py kills a Dask worker, another mechanism.)

The job is ``python -m core.pipeline --only stage1`` on a copy of the session's tiny outputs
(conftest.py) with stage 1 at 3 epochs and patience 3, so its folds are computed anew (every epoch
runs) while stage 0 is reused; the copy sits in a ``outputs/test-<uuid>-resume`` folder of the
repository, removed afterwards. It is killed once fold 0 is done and fold 1 has saved its first
checkpoint (``weights.h5`` without ``done.json``: training is under way). The kill takes the
runner's process group and the notebook kernel, which jupyter starts in a session of its own:
together that is what an OOM kill or a lost machine does. Every wait is bounded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pandas as pd
import psutil
import pytest
from tiny_run import N_FOLDS, copy_outputs, fold_files, subprocess_env

from core.config import ROOT
from core.io import read_json
from core.pipeline.job import resolve_settings, run_pipeline

pytestmark = pytest.mark.slow  # end to end: papermill runs and subprocesses

N_TRAIN, N_TEST = 120, 40
START_TIMEOUT = 240  # s until fold 1 is under way
FINISH_TIMEOUT = 300  # s for the rerun


@pytest.fixture(scope="module")
def job(tiny_run, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    outputs = tiny_run.outputs.with_name(f"{tiny_run.outputs.name}-resume")
    copy = copy_outputs(tiny_run, outputs)
    settings = dataclasses.replace(copy.settings, stage1_epochs=3, stage1_patience=3)
    run_dir = outputs / "runs" / "resume"
    paths = ("train_path", "test_path", "output_dir")
    sets = [f"{k}={v!r}" for k, v in settings.changed().items() if k not in paths]
    # The command line must rebuild exactly these settings (3 epochs, so fold 1 runs a while).
    given = {k: str(getattr(settings, k)) for k in paths}
    assert resolve_settings(None, sets, **given) == settings
    cmd = [
        *(sys.executable, "-m", "core.pipeline", "--only", "stage1"),
        *("--train-path", given["train_path"], "--test-path", given["test_path"]),
        *[arg for pair in sets for arg in ("--set", pair)],
        *("--output-dir", str(outputs.relative_to(ROOT))),
        *("--run-dir", str(run_dir.relative_to(ROOT))),
    ]
    yield {"settings": settings, "cmd": cmd, "run_dir": run_dir, "outputs": outputs, "tmp": tmp}
    shutil.rmtree(outputs, ignore_errors=True)


def start(job, log_name: str) -> tuple[subprocess.Popen, Path]:
    log = job["tmp"] / log_name
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            job["cmd"],
            cwd=ROOT,
            env=subprocess_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc, log


def tail(log: Path, n: int = 3000) -> str:
    return log.read_text(encoding="utf-8", errors="replace")[-n:]


def kill_job(proc: subprocess.Popen) -> None:
    """SIGKILL the runner's process group and every descendant (the kernel has its own session)."""
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: the group id is the runner's pid
    for p in family:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)
    _, alive = psutil.wait_procs(family, timeout=30)
    assert not alive, f"still running after SIGKILL: {alive}"


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every file below ``folder``."""
    files = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    digest = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    return {str(p.relative_to(folder)): (digest[p], p.stat().st_mtime_ns) for p in files}


@pytest.fixture(scope="module")
def killed(job):
    """Start the job, SIGKILL it in the middle of fold 1; return fold 0's snapshot and timings."""
    run_dir = job["run_dir"]
    fold0_done = run_dir / "stage1" / "fold0" / "done.json"
    fold1 = fold_files(run_dir, "stage1", 1)
    proc, log = start(job, "first.log")
    began = time.time()
    try:
        while not (fold0_done.exists() and fold1["weights.h5"].exists()):
            assert proc.poll() is None, f"the job ended early ({proc.returncode}):\n{tail(log)}"
            assert time.time() - began < START_TIMEOUT, f"fold 1 never started:\n{tail(log)}"
            time.sleep(0.05)
        if fold1["done.json"].exists():
            pytest.fail("fold 1 finished before the kill: make its training longer")
    finally:
        kill_job(proc)
    return {
        "seconds": time.time() - began,
        "fold0": snapshot(run_dir / "stage1" / "fold0"),
        "log": log,
    }


def read_fold(run_dir: Path, fold: int) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    d = run_dir / "stage1" / f"fold{fold}"
    return pd.read_csv(d / "oof.csv"), pd.read_csv(d / "test.csv"), read_json(d / "done.json")


def test_kill_leaves_fold0_complete(job, killed):
    run_dir = job["run_dir"]
    folds = pd.read_csv(run_dir / "folds.csv")
    assert len(folds) == N_TRAIN
    oof, test, done = read_fold(run_dir, 0)
    assert oof["row"].tolist() == folds.loc[folds["fold"] == 0, "row"].tolist()
    assert oof["pred"].between(0, 1).all() and len(test) == N_TEST
    assert done["fold"] == 0 and done["n_valid"] == len(oof) and done["epochs_run"] == 3
    with h5py.File(run_dir / "stage1" / "fold0" / "weights.h5", "r") as f:
        assert len(f.keys()) > 0
    assert set(killed["fold0"]) >= {
        "oof.csv",
        "test.csv",
        "history.json",
        "done.json",
        "weights.h5",
    }


def test_kill_leaves_no_finished_looking_fold1(job, killed):
    d = job["run_dir"] / "stage1" / "fold1"
    assert not (d / "done.json").exists()
    # A final name holds a complete file or nothing: written to a temporary, renamed in place.
    assert not (d / "oof.csv").exists() and not (d / "test.csv").exists()
    with h5py.File(d / "weights.h5", "r") as f:  # the checkpoint of a finished epoch
        assert len(f.keys()) > 0
    for path in job["run_dir"].rglob("*"):
        if path.is_file() and not path.name.startswith("."):
            if path.suffix == ".json":
                read_json(path)
            elif path.suffix == ".csv":
                pd.read_csv(path)


def test_index_after_kill_links_only_existing_files(job, killed):
    # Resume just the finished part (e.g. another machine's folds): a skip, then the index.
    run_pipeline(job["settings"], run_dir=job["run_dir"], only="stage1", folds=[0])
    page = (job["run_dir"] / "index.html").read_text(encoding="utf-8")
    links = set(re.findall(r"href=['\"]([^'\"]+)['\"]", page))
    broken = sorted(link for link in links if not (job["run_dir"] / link).is_file())
    assert not broken, broken


@pytest.fixture(scope="module")
def resumed(job, killed):
    proc, log = start(job, "second.log")
    try:
        proc.wait(timeout=FINISH_TIMEOUT)
    except subprocess.TimeoutExpired:
        kill_job(proc)
        pytest.fail(f"the rerun did not finish in {FINISH_TIMEOUT} s:\n{tail(log)}")
    assert proc.returncode == 0, tail(log)
    return {"log": log}


def test_rerun_keeps_fold0_and_finishes_the_rest(job, killed, resumed):
    run_dir = job["run_dir"]
    assert snapshot(run_dir / "stage1" / "fold0") == killed["fold0"]  # same bytes, same mtimes
    log = resumed["log"].read_text(encoding="utf-8", errors="replace")
    assert "stage1-fold0: complete, skipped" in log
    assert "submission: none yet" in log  # --only stage1 writes none; the CLI must not point at one
    assert not (run_dir / "ensemble").exists()
    oofs = []
    for k in range(N_FOLDS):
        assert all(p.is_file() for p in fold_files(run_dir, "stage1", k).values()), k
        oof, test, done = read_fold(run_dir, k)
        assert done["fold"] == k and len(test) == N_TEST
        oofs.append(oof)
    rows = pd.concat(oofs)["row"]
    assert sorted(rows) == list(range(N_TRAIN))  # every training row in exactly one fold
    leftovers = [p for p in (run_dir / "stage1").rglob(".*")]
    assert not leftovers, leftovers
