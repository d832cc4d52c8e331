"""Bad settings are refused before any step runs: the main job's command line (a notebook's first
cell: tests/test_notebook_start.py).

Each case runs the real command and checks the exit code and the message naming the setting;
nothing may be written under the output folder.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tiny_run import subprocess_env

from core.config import ROOT


def pipeline(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    outputs = tmp_path / "outputs"
    cmd = [sys.executable, "-m", "core.pipeline", "--output-dir", str(outputs), *args]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=120
    )
    assert not outputs.exists() or not any(outputs.rglob("*")), "something was written"
    return proc


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "stage1.lr=5"], "setting stage1_lr=5: expected a number in (0, 1)"),
        (["--set", "stage2_loss=f1"], "setting stage2_loss='f1': expected one of soft_f1"),
        (["--set", "stage0_epochs=-1"], "setting stage0_epochs=-1: expected an integer >= 0"),
        (
            ["--set", "stage1_lrr=1e-5"],
            "--set: unknown setting 'stage1_lrr' (did you mean 'stage1_lr'?); expected one of",
        ),
        (["--set", "stage1_lr"], "--set 'stage1_lr': expected NAME=VALUE"),
        (["--only", "stage1", "--folds", "7"], "parameter fold=7: expected an integer in 0..4"),
        (["--folds", "a"], "--folds a: expected comma-separated fold numbers"),
        (["--config", "configs/nope.yaml"], "--config configs/nope.yaml: not found"),
    ],
)
def test_main_job_refuses_a_bad_setting_before_any_step(tmp_path, args, message):
    proc = pipeline(tmp_path, *args)
    assert proc.returncode == 1, proc.stderr[-2000:]
    first = proc.stderr.splitlines()[0]
    assert first.startswith("error: ") and message in first, proc.stderr[-2000:]
    assert "[1/" not in proc.stdout  # no step started


def test_a_bad_value_in_a_config_file_names_the_file(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("stage1_batch_size: 0\n", encoding="utf-8")
    proc = pipeline(tmp_path, "--config", str(config))
    assert proc.returncode == 1
    assert "setting stage1_batch_size=0: expected an integer >= 1" in proc.stderr
    config.write_text("stage1_batchsize: 16\n", encoding="utf-8")
    proc = pipeline(tmp_path, "--config", str(config))
    assert f"{config}: unknown setting 'stage1_batchsize'" in proc.stderr


def test_help_names_the_module_as_the_program(tmp_path):
    proc = pipeline(tmp_path, "--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: python -m core.pipeline")
    assert "--config FILE" in proc.stdout
