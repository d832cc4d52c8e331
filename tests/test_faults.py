"""Faults, round four (issue 38): an unwritable or full disk, a scheduler that is not there, and
the smaller rows of docs/robustness.md that go with them.

Fast: no notebook, no training. A command runs in a subprocess only where it stops before
TensorFlow loads; the main job gets tiny data files and a stub encoder folder that passes the
checks made before any step (no weights are read).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fakes import tiny_config
from tiny_run import subprocess_env

from core import cli
from core.config import ROOT, ConfigError, Settings
from core.io import DiskError, atomic_path, check_writable, write_csv, write_json, write_text
from core.pipeline import distributed
from core.runs.folder import RunMismatchError, identity, run_folder
from core.runs.report import fold_rows, headline_rows
from core.weights.google_ckpt import CKPT_PREFIX, CONFIG_FILE, VOCAB_FILE

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"好吃不错一般难"]


def run(module: str, *args, prefix=()) -> subprocess.CompletedProcess:
    """``python -m module args`` as a user runs it; the timeout only guards against a hang."""
    return subprocess.run(
        [*prefix, sys.executable, "-m", module, *map(str, args)],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The command's one line: exit 1, ``error: …``, nothing else on stderr, no traceback."""
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


def imports_none_of(code: str, *modules: str) -> None:
    """Run ``code`` in a fresh interpreter and check it imported none of ``modules``."""
    check = f"import sys\nassert not {set(modules)!r} & set(sys.modules), 'imported one'\n"
    proc = subprocess.run(
        [sys.executable, "-c", code + check],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def written(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*")) if folder.exists() else []


@pytest.fixture
def job(tmp_path) -> list[str]:
    """The main job's options for tiny data and a stub encoder folder, outputs in tmp/outputs."""
    train, test = tmp_path / "train.txt", tmp_path / "test.txt"
    # 16 rows: both labels in each of the 5 default folds (the main job checks that first)
    train.write_text("1\t好吃不错\n\n0\t难吃\n\n1\t不错\n\n0\t一般\n\n" * 4, encoding="utf-8")
    test.write_text("好吃\n\n一般\n\n", encoding="utf-8")
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / CONFIG_FILE).write_text(json.dumps(tiny_config(len(VOCAB))), encoding="utf-8")
    (bert / VOCAB_FILE).write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    for suffix in (".index", ".data-00000-of-00001"):
        (bert / f"{CKPT_PREFIX}{suffix}").write_bytes(b"")  # checked to exist, never read here
    return [
        *("--train-path", train, "--test-path", test, "--set", f"bert_dir={bert}"),
        *("--output-dir", tmp_path / "outputs"),
    ]


def bound_by_permissions() -> list[str]:
    """A command prefix under which permission bits hold: root ignores them unless it gives up
    CAP_DAC_OVERRIDE (setpriv); any other user is bound by them anyway."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permission bits cannot be enforced")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


@pytest.fixture
def read_only(tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


# -- an unwritable or full disk ----------------------------------------------------------------


def test_the_main_job_refuses_an_unwritable_output_folder_before_any_work(job, read_only):
    outputs = read_only / "outputs"  # the last --output-dir wins
    proc = run("core.pipeline", *job, "--output-dir", outputs, prefix=bound_by_permissions())
    line = error_line(proc)
    assert f"error: {read_only}: permission denied — make it writable or put the output " in line
    assert "--output-dir" in line
    assert written(read_only) == []


def test_predict_refuses_an_unwritable_out_folder_before_scoring(read_only):
    out = read_only / "scores.csv"
    proc = run(
        "core.serving.predict",
        *("好吃", "--output-dir", read_only, "--out", out),
        prefix=bound_by_permissions(),
    )
    assert f"error: {read_only}: permission denied — make it writable" in error_line(proc)
    assert written(read_only) == []


def test_a_read_only_disk_is_found_by_the_probe(tmp_path, monkeypatch):
    def read_only_disk(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / ".write-check.x"))

    monkeypatch.setattr("core.io.tempfile.mkstemp", read_only_disk)
    with pytest.raises(DiskError) as info:
        check_writable(tmp_path / "outputs")  # not there yet: its folder above is tried
    assert str(info.value) == (
        f"{tmp_path}: read-only file system — make it writable or put the output folder on "
        "another disk (--output-dir)"
    )
    assert cli.is_expected(info.value)


def test_the_probe_leaves_nothing_behind(tmp_path):
    check_writable(tmp_path)
    check_writable(tmp_path / "not" / "yet")
    assert written(tmp_path) == []


@pytest.mark.parametrize(
    "write", [lambda p: write_json(p, {"auc": 0.9}), lambda p: write_text(p, "x")]
)
def test_a_full_disk_is_one_line_and_leaves_no_temporary_file(tmp_path, monkeypatch, write):
    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("core.io.os.replace", full)
    done = tmp_path / "runs" / "x" / "stage1" / "fold0" / "done.json"
    with pytest.raises(DiskError) as info:
        write(done)
    message = str(info.value)
    assert message.startswith(f"{done}: no space left on device — free space on that disk")
    assert message.endswith("or put the output folder on another disk (--output-dir)")
    assert "\n" not in message
    assert written(done.parent) == []  # neither the marker nor its temporary file


def test_a_full_disk_while_a_table_is_written(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("core.io.os.fsync", full)
    with pytest.raises(DiskError, match="oof.csv: no space left on device"):
        write_csv(tmp_path / "oof.csv", pd.DataFrame({"pred": [0.5]}))
    assert written(tmp_path) == []


def test_a_full_disk_in_a_nested_write_names_the_file_being_made(tmp_path, monkeypatch):
    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("core.io.os.replace", full)
    submission = tmp_path / "submission.csv"
    with (
        pytest.raises(DiskError, match=f"^{re.escape(str(submission))}: no space"),
        atomic_path(submission) as tmp,
    ):
        write_csv(tmp, pd.DataFrame({"ID": [0]}))  # as core.ensembling.submission writes it
    assert written(tmp_path) == []


def test_an_error_about_another_file_is_not_the_disk(tmp_path):
    source = tmp_path / "elsewhere" / "source.txt"
    with pytest.raises(PermissionError), atomic_path(tmp_path / "copy.txt"):
        raise PermissionError(errno.EACCES, "Permission denied", str(source))  # reading it
    assert written(tmp_path) == []


# -- a scheduler that is not there -------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # free once closed: nothing listens there


@pytest.mark.parametrize(
    "address, why",
    [
        ("foo:bar:baz", "expected tcp://HOST:PORT of a running Dask scheduler"),
        ("tcp://127.0.0.1:{port}", "nothing listens there (connection refused); expected tcp://"),
    ],
)
def test_a_scheduler_that_is_not_there_is_refused_before_anything_is_written(
    job, tmp_path, address, why
):
    address = address.format(port=closed_port())
    proc = run("core.pipeline", *job, "--scheduler", address)
    assert error_line(proc).startswith(f"error: --scheduler {address}: ")
    assert why in proc.stderr
    assert "Traceback" not in proc.stderr and "TimeoutError" not in proc.stderr
    assert written(tmp_path / "outputs") == []


def test_a_port_that_answers_but_is_no_scheduler(monkeypatch):
    monkeypatch.setattr(distributed, "PROBE_SECONDS", 0.5)
    with socket.socket() as silent:  # accepts connections (the backlog) but never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(ConfigError, match="something answers there, but no Dask scheduler"):
            distributed.check_scheduler(address)


@pytest.mark.parametrize(
    "address, parsed",
    [
        ("tcp://10.0.0.5:8786", ("tcp", "10.0.0.5", 8786)),
        ("10.0.0.5:8786", ("tcp", "10.0.0.5", 8786)),
        ("tls://sched.example:8786", ("tls", "sched.example", 8786)),
        ("tcp://[::1]:8786", ("tcp", "::1", 8786)),
        ("inproc://10.0.0.5/1/2", None),  # Dask's own, in this process
        ("foo:bar:baz", ConfigError),
        ("tcp://10.0.0.5", ConfigError),  # no port
        ("http://10.0.0.5:8787", ConfigError),  # the dashboard
        ("tcp://10.0.0.5:70000", ConfigError),
    ],
)
def test_scheduler_addresses_are_read_as_dask_reads_them(address, parsed):
    if parsed is ConfigError:
        with pytest.raises(ConfigError, match=f"--scheduler {address}: expected tcp://HOST:PORT"):
            distributed.scheduler_host(address)
    else:
        assert distributed.scheduler_host(address) == parsed


def test_checking_a_scheduler_imports_no_dask():
    imports_none_of(
        "from core.pipeline.distributed import check_scheduler\n"
        "try:\n    check_scheduler('foo:bar:baz')\nexcept ValueError:\n    pass\n",
        "dask",
        "distributed",
    )


# -- smaller -----------------------------------------------------------------------------------


def test_predict_refuses_a_sentence_holding_a_line_break(tmp_path):
    proc = run("core.serving.predict", "好吃\n不错", "--output-dir", tmp_path)
    assert error_line(proc) == (
        "error: sentence 1 of the command line: expected text without control characters, "
        "found U+000A (a line break) in '好吃\\n不错' — remove it"
    )
    assert written(tmp_path) == []


def test_predict_refuses_a_csv_text_holding_a_line_break(tmp_path):
    sentences = tmp_path / "new.csv"
    sentences.write_text('content\n"好吃\n不错"\n一般\n', encoding="utf-8")
    proc = run("core.serving.predict", "--file", sentences, "--output-dir", tmp_path / "outputs")
    assert error_line(proc) == (
        f"error: {sentences}, line 2: expected text without control characters, found U+000A "
        "(a line break) in '好吃\\n不错' — remove it"
    )


def test_json_is_strict_nan_and_infinities_are_null(tmp_path):
    path = write_json(
        tmp_path / "results.json",
        {
            "auc": float("nan"),
            "weight": np.float32("inf"),
            "folds": [0.5, np.nan],
            "array": np.array([[1.0, -np.inf]]),
            "n": np.int64(3),
        },
    )

    def refuse(constant):
        raise AssertionError(f"not strict JSON: {constant}")

    figures = json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)
    assert figures == {
        "auc": None,
        "weight": None,
        "folds": [0.5, None],
        "array": [[1.0, None]],
        "n": 3,
    }


def test_null_figures_read_back(tmp_path):
    """A finished run whose undefined figures were written as null: the runs table shows them as
    missing, the report as n/a (not 'not yet')."""
    headline = {
        "final": "stage1 fold mean",
        "oof_auc": 0.9,
        "stage1_oof_auc": None,
        "stage2_oof_auc": 0.8,
    }
    run_dir = tmp_path / "outputs" / "runs" / "run-x"
    write_json(run_dir / "ensemble" / "results.json", {"headline": headline, "candidates": []})
    proc = run("core.runs", "--output-dir", tmp_path / "outputs")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "run-x" in proc.stdout
    results = json.loads((run_dir / "ensemble" / "results.json").read_text(encoding="utf-8"))
    rows = {r["figure"]: r["run"] for r in headline_rows(results["headline"], None)}
    assert np.isnan(rows["stage 1, pooled out-of-fold AUC"])
    assert rows["stage 2, pooled out-of-fold AUC"] == 0.8
    done = {("stage1", 0): {"val_auc": None, "best_epoch": 1, "epochs_run": 1}, ("stage2", 0): None}
    first = fold_rows(done, 1, {}, None)[0]
    assert np.isnan(first["stage1"]) and first["stage2"] is None  # n/a, and not yet


def test_a_yaml_syntax_error_names_the_file_line_and_column(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("stage1_lr: 3e-5\nstage2_lr: [1\nn_folds: 3\n", encoding="utf-8")
    proc = run("core.pipeline", "--config", config, "--output-dir", tmp_path / "outputs")
    assert error_line(proc) == (
        f"error: {config}, line 3, column 8: expected flat YAML 'name: value' lines, found a "
        "syntax error: expected ',' or ']', but got ':' (while parsing a flow sequence from line "
        "2, column 12) — fix that line"
    )
    assert "<unicode string>" not in proc.stderr


def test_the_main_jobs_fold_hint_is_its_own_option(tmp_path):
    proc = run("core.pipeline", "--folds", "5", "--output-dir", tmp_path / "outputs")
    assert error_line(proc) == (
        "error: parameter fold=5: expected an integer in 0..4 (n_folds=5); pass e.g. --folds 0,1"
    )
    assert written(tmp_path / "outputs") == []
    with pytest.raises(ConfigError, match=r"pass e\.g\. -p fold 0$"):
        Settings().check_fold(5)  # a notebook's


def test_the_main_jobs_run_dir_hint_is_its_own_option(tmp_path):
    settings = Settings(output_dir=tmp_path)
    run_dir = tmp_path / "runs" / "mine"
    other = {**identity(settings), "stage1_lr": 0.5}
    write_json(run_dir / "run.json", {"identity": other})
    with pytest.raises(RunMismatchError, match=r"e\.g\. --run-dir outputs/runs/<new name>"):
        run_folder(settings, run_dir, "--run-dir")
    with pytest.raises(RunMismatchError, match=r"e\.g\. -p run_dir outputs/runs/<new name>"):
        run_folder(settings, run_dir)  # a notebook's


def test_the_boards_help_is_its_own_and_loads_no_tensorflow(tmp_path):
    proc = run("core.training.board", "--help")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("usage: python -m core.training.board [--output-dir DIR]")
    assert (
        "--output-dir DIR" in proc.stdout and "Any other option goes to tensorboard" in proc.stdout
    )
    assert proc.stderr == ""  # no TensorFlow start-up lines
    imports_none_of(
        f"from core.training import board\nboard.layout({str(tmp_path)!r})\n", "tensorflow"
    )
