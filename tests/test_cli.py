"""The commands as a user runs them: exit code and the first line on stderr, for each command row
of docs/robustness.md's bad-input table.

Each test starts the real command in a subprocess. Those that load no TensorFlow come first
(1-3 s each); the last two read a checkpoint or run a notebook kernel (about 10-20 s each).
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_run import TEST, TRAIN, first_rows, subprocess_env

from core import cli
from core.config import CONFIG_FILE, ROOT, Settings, resolve
from core.pipeline import resolve_settings
from core.run import record_settings
from core.weights.google_ckpt import MANIFEST_FILE, weights_sha256

DATA_FILE = "bert_model.ckpt.data-00000-of-00001"


def command(module: str, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=ROOT,
        env={**subprocess_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def failed(proc: subprocess.CompletedProcess) -> list[str]:
    """stderr's non-blank lines from the command's ``error:`` line on: exit 1, no traceback of
    ours. (A notebook kernel's teardown may log before it, e.g. jupyter_client's ZMQ race.)"""
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    first = next((i for i, line in enumerate(lines) if line.startswith("error: ")), None)
    assert first is not None, proc.stderr[-3000:]
    assert not any("Traceback" in line for line in lines[first:]), proc.stderr[-3000:]
    assert "/core/" not in "\n".join(lines[:first]), proc.stderr[-3000:]  # nothing of ours
    return lines[first:]


@pytest.fixture
def bert(tmp_path, tiny_bert_dir) -> Path:
    return shutil.copytree(tiny_bert_dir, tmp_path / "bert")


@pytest.fixture
def outputs(tmp_path) -> Path:
    return tmp_path / "outputs"


def fake_run(outputs: Path, name: str, bert_dir: Path, finished: bool = True) -> Path:
    """A run folder as core.predict reads it, without trained folds (every test stops before)."""
    run = outputs / "runs" / name
    (run / "ensemble").mkdir(parents=True)
    run_json = {
        "train_path": str(resolve("data/train_shuffle.txt")),
        "n_folds": 3,
        "seed": 2020,
        "maxlen": 20,
        "bert_dir": str(bert_dir),
    }  # as a run records them
    if bert_dir.is_dir():
        run_json["bert_sha256"] = weights_sha256(bert_dir)
    (run / "run.json").write_text(json.dumps(run_json))
    if finished:
        (run / "ensemble" / "results.json").write_text(json.dumps({"headline": {}}))
    return run


# -- every command ---------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["core.pipeline", "core.predict", "core.weights", "core.runs"])
def test_help_names_the_command(module):
    proc = command(module, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: python -m {module} ")
    assert "--debug" in proc.stdout


def test_expected_error_is_one_line_and_debug_shows_its_traceback(tmp_path):
    missing = tmp_path / "train.txt"
    proc = command("core.pipeline", "--train-path", missing, "--output-dir", tmp_path / "out")
    [line] = failed(proc)
    assert line.startswith(f"error: {missing}: not found; expected the data file at {missing}")
    for debug in ({"args": ["--debug"]}, {"env": {cli.DEBUG_ENV: "1"}}):
        proc = command(
            "core.pipeline",
            "--train-path",
            missing,
            "--output-dir",
            tmp_path / "out",
            *debug.get("args", []),
            env=debug.get("env"),
        )
        assert proc.returncode == 1 and proc.stderr.startswith("Traceback"), proc.stderr
        assert proc.stderr.splitlines()[-1].startswith(f"core.data.DataError: {missing}: not found")


def test_every_expected_error_is_a_class_of_the_package():
    names = set()
    for path in (ROOT / "core").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names |= {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    assert cli.EXPECTED <= names, cli.EXPECTED - names


def test_interrupt_and_unexpected_errors(capfd):
    """In-process: Ctrl-C is one line and exit 130; an unexpected error keeps its traceback."""

    def interrupted(argv):
        raise KeyboardInterrupt

    def bug(argv):
        raise ValueError("a bug")

    with pytest.raises(SystemExit) as info:
        cli.run(interrupted)
    assert info.value.code == 130 and capfd.readouterr().err == "error: interrupted\n"
    with pytest.raises(ValueError, match="a bug"):
        cli.run(bug)


def test_noise_is_dropped_and_nothing_else(tmp_path):
    import logging

    import nbformat

    from core.noise import NoiseFilter, clean_notebook, drop_noise

    noise = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
        "I0000 00:00:1796202547.111200    8251 port.cc:153] oneDNN custom operations are on.\n",
        "I0000 00:00:1796202547.111536    8251 cudart_stub.cc:31] Could not find cuda drivers\n",
        "[IPKernelApp] WARNING | Kernel is running over TCP without encryption. All …\n",
    ]
    kept = ["E0000 00:00:1796202552.017382    8251 some_op.cc:52] a real error\n", "loss 0.5\n"]
    assert drop_noise("".join(noise + kept)) == "".join(kept)
    record = logging.makeLogRecord({"msg": "".join(noise)})
    assert not NoiseFilter().filter(record)
    record = logging.makeLogRecord({"msg": "".join(noise + kept)})
    assert NoiseFilter().filter(record) and record.getMessage() == "".join(kept)
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(
                "import core",
                outputs=[
                    nbformat.v4.new_output("stream", name="stderr", text="".join(noise)),
                    nbformat.v4.new_output("stream", name="stdout", text="".join(noise + kept)),
                ],
            )
        ]
    )
    nbformat.write(nb, tmp_path / "nb.ipynb")
    clean_notebook(tmp_path / "nb.ipynb")
    [out] = nbformat.read(tmp_path / "nb.ipynb", as_version=4).cells[0].outputs
    assert out.name == "stdout" and out.text == "".join(kept)


def test_kernel_output_reaches_stdout_as_printed_minus_noise(capsys):
    from core.noise import KernelOutput

    out = KernelOutput()
    out.write("I0000 00:00:1796202547.111200    8251 port.cc:153] oneDNN custom operations\n")
    out.write("  [stage1] batch 1/9\n")
    out.write("a\nb")
    out.write("c\n\n")
    out.flush()
    assert capsys.readouterr().out == "  [stage1] batch 1/9\na\nbc\n\n"


# -- the main job ----------------------------------------------------------------------------------


def test_pipeline_missing_bert_dir_is_a_bert_dir_error(tmp_path):
    proc = command(
        "core.pipeline", "--set", f"bert_dir={tmp_path / 'nope'}", "--output-dir", tmp_path / "out"
    )
    [line] = failed(proc)
    assert line.startswith(
        f"error: {tmp_path / 'nope'}: expected a BERT folder, found no such "
        "folder; point bert_dir at"
    )
    assert "`python -m core.weights --force`" in line and "data file" not in line
    assert not (tmp_path / "out").exists()


def test_pipeline_truncated_weights_stop_before_anything_runs(bert, tmp_path):
    data = bert / DATA_FILE
    size = data.stat().st_size
    data.write_bytes(data.read_bytes()[: size // 2])
    proc = command("core.pipeline", "--set", f"bert_dir={bert}", "--output-dir", tmp_path / "out")
    [line] = failed(proc)
    assert line.startswith(
        f"error: {data}: expected {size:,} bytes (as written, {MANIFEST_FILE}), "
        f"found {size // 2:,}: the file is truncated or damaged;"
    )
    assert not (tmp_path / "out").exists()


# -- core.predict ----------------------------------------------------------------------------------


def test_predict_run_that_does_not_exist(outputs):
    run = outputs / "runs" / "nope"
    [line] = failed(command("core.predict", "--output-dir", outputs, "--run", run, "好吃"))
    assert line.startswith(
        f"error: --run {run}: no such run folder; omit --run to use the latest finished run"
    )


def test_predict_unfinished_run_names_the_command_that_finishes_it(outputs, bert):
    run = fake_run(outputs, "half", bert, finished=False)
    settings = Settings(bert_dir=bert, n_folds=3, stage1_lr=3e-5, output_dir=outputs)
    record_settings(run, settings)  # as the main job or a notebook records a run's settings
    [line] = failed(command("core.predict", "--output-dir", outputs, "--run", run, "好吃"))
    start = f"error: run {run} has not finished (no ensemble/results.json yet); finish it with: "
    assert line.startswith(start)
    assert shlex.split(line[len(start) :]) == [
        "python",
        "-m",
        "core.pipeline",
        "--config",
        str(run / CONFIG_FILE),
        "--run-dir",
        str(run),
    ]
    assert resolve_settings(str(run / CONFIG_FILE), []) == settings  # the run's own settings


def test_predict_checks_out_before_scoring(outputs, tmp_path):
    fake_run(outputs, "r", tmp_path / "gone")  # scoring would stop on its missing encoder
    outside = tmp_path / "scores.csv"
    [line] = failed(command("core.predict", "--output-dir", outputs, "--out", outside, "好吃"))
    assert line.startswith(
        f"error: --out={str(outside)!r}: expected a path inside the output folder {outputs}"
    )
    folder = outputs / "runs"
    [line] = failed(command("core.predict", "--output-dir", outputs, "--out", folder, "好吃"))
    assert line == f"error: --out={str(folder)!r}: expected a file path, found a folder"


def test_predict_without_a_finished_run(outputs, bert):
    [line] = failed(command("core.predict", "--output-dir", outputs, "好吃"))
    assert line == (
        f"error: no finished run under {outputs / 'runs'}: make one with `./suite.sh "
        "run` (python -m core.pipeline), or pass --run"
    )
    run = fake_run(outputs, "half", bert, finished=False)
    [line] = failed(command("core.predict", "--output-dir", outputs, "好吃"))
    assert line.startswith(
        f"error: no finished run under {outputs / 'runs'}; the latest, {run}, "
        "finishes with: python -m core.pipeline "
    )
    assert line.endswith(f"--run-dir {run}")


def test_predict_refuses_an_empty_sentence(outputs):
    [line] = failed(command("core.predict", "--output-dir", outputs, "好吃", "  ", "不错"))
    assert line == (
        "error: sentence 2 of the command line: expected a sentence, found '  ' — "
        "remove it or fill it in"
    )


@pytest.mark.parametrize(
    "name,content", [("new.txt", "1\t好吃\n\n0\t不错\n\n"), ("new.csv", "content,label\n好吃,1\n")]
)
def test_predict_file_with_labels_gets_a_hint_for_predict(outputs, tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    [line] = failed(command("core.predict", "--output-dir", outputs, "--file", path))
    assert line.startswith(f"error: {path}, line 1: expected ")
    assert line.endswith(
        "looks like a labelled train file; core.predict scores sentences without "
        "labels: remove them"
    )


def test_predict_says_which_run_it_picked(outputs, tmp_path):
    run = fake_run(outputs, "latest", tmp_path / "gone")
    proc = command("core.predict", "--output-dir", outputs, "好吃")
    [error] = failed(proc)
    picked = proc.stderr.splitlines()[0]
    assert picked == f"using run {run} (the latest finished; --run picks another)"
    assert error.startswith(
        f"error: run {run}, its encoder: {tmp_path / 'gone'}: expected a BERT folder"
    )
    assert proc.stdout == ""  # stdout is for the CSV only


# -- with TensorFlow or a notebook kernel ----------------------------------------------------------


@pytest.mark.parametrize("manifest", [True, False])
def test_predict_damaged_checkpoint(outputs, bert, manifest):
    """With a manifest, a damaged file of the right size is found by its sha256 before the
    weights load; without one (a Google folder of one's own) TensorFlow's reader error is
    reported naming the file. Nothing of TensorFlow's start-up comes before the error line."""
    data = bert / DATA_FILE
    raw = bytearray(data.read_bytes())
    if manifest:
        raw[500] ^= 0xFF
    else:
        (bert / MANIFEST_FILE).unlink()
        raw = raw[:20000]
    data.write_bytes(bytes(raw))
    fake_run(outputs, "r", bert)
    proc = command("core.predict", "--output-dir", outputs, "--run", outputs / "runs" / "r", "好吃")
    [line] = failed(proc)
    if manifest:
        found = r"expected sha256 \w{12}… \(as written, MANIFEST.json\), found \w{12}…: the file is"
    else:
        found = "expected a readable checkpoint, found IndexError: Read less bytes than requested"
    assert re.match(f"error: {re.escape(str(data))}: {found}", line), line
    assert "damaged;" in line


def test_pipeline_bad_train_file_stops_before_any_notebook(tmp_path, tiny_bert_dir):
    train = tmp_path / "train.csv"
    train.write_text("content,lable\n好吃,1\n", encoding="utf-8")
    out = tmp_path / "out"
    proc = command(
        "core.pipeline",
        "--train-path",
        train,
        "--output-dir",
        out,
        "--set",
        f"bert_dir={tiny_bert_dir}",
    )
    [error] = failed(proc)
    assert error == (
        f"error: {train}, line 1: expected a header with columns ['content', 'label'], found "
        "['content', 'lable'] — no column is named 'label'; rename the label column ('lable'?) to "
        "label"
    )
    assert not out.exists()  # checked before the first step: nothing started


def test_pipeline_notebook_error_says_where_the_notebook_is(tmp_path, tiny_bert_dir):
    """Stage 2 asked for before stage 1: the notebook's error, then where its executed copy is;
    no kernel start-up lines on either stream."""
    train, test = tmp_path / "train.txt", tmp_path / "test.txt"
    train.write_text(first_rows(TRAIN, 30), encoding="utf-8")
    test.write_text(first_rows(TEST, 5), encoding="utf-8")
    out = tmp_path / "out"
    proc = command(
        "core.pipeline",
        "--train-path",
        train,
        "--test-path",
        test,
        "--output-dir",
        out,
        "--set",
        f"bert_dir={tiny_bert_dir}",
        "--set",
        "stage0_epochs=0",
        "--set",
        "n_folds=3",
        "--only",
        "stage2",
        "--folds",
        "0",
    )
    error, saved = failed(proc)
    assert error.startswith("error: stage 2 fold 0 needs the stage-1 weights ")
    assert "Make them first: papermill notebooks/02_cv.ipynb out.ipynb" in error
    [notebook] = out.glob("runs/*/notebooks/03_f1_refine-stage2-fold0.ipynb")
    html = notebook.with_suffix(".html")
    assert saved == f"the executed notebook is saved at {notebook} (and {html})"
    assert html.is_file()
    for noise in ("without encryption", "absl", "oneDNN", "cuInit"):
        assert noise not in proc.stdout + proc.stderr


def test_a_finished_run_folder_refuses_other_inputs(tmp_path, tiny_bert_dir):
    """Issue #28: a finished run's folder given other data is refused before any step is
    skipped as done, by the main job and by a notebook, naming what differs; nothing is
    written. (Without --run-dir, other data name another folder: core.run.default_run_dir.)"""
    import numpy as np

    from core.run import default_run_dir, open_run

    train, test, other = tmp_path / "train.txt", tmp_path / "test.txt", tmp_path / "other.txt"
    train.write_text(first_rows(TRAIN, 30), encoding="utf-8")
    test.write_text(first_rows(TEST, 5), encoding="utf-8")
    other.write_text(first_rows(TEST, 6), encoding="utf-8")
    out = tmp_path / "out"
    settings = Settings(
        train_path=train, test_path=test, bert_dir=tiny_bert_dir, output_dir=out, n_folds=3
    )
    run = default_run_dir(settings)
    run.mkdir(parents=True)
    record_settings(run, settings)
    open_run(run, settings, np.arange(30))
    (run / "ensemble").mkdir()
    (run / "ensemble" / "results.json").write_text('{"headline": {}}', encoding="utf-8")
    (run / "ensemble" / "submission.csv").write_text("ID,Prediction\n", encoding="utf-8")
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    common = ["--train-path", train, "--output-dir", out, "--set", f"bert_dir={tiny_bert_dir}"]
    proc = command(
        "core.pipeline", *common, "--set", "n_folds=3", "--test-path", other, "--run-dir", run
    )
    [error, *_] = failed(proc)
    assert error.startswith(f"error: {run / 'run.json'} belongs to a run made differently")
    assert "test_sha256: was '" in error and "train_sha256" not in error
    # The notebook route: the ensemble notebook on that folder with the other test file.
    nb = subprocess.run(
        [
            str(Path(sys.executable).parent / "papermill"),
            "notebooks/04_ensemble.ipynb",
            str(tmp_path / "nb.ipynb"),
            *("-f", str(run / CONFIG_FILE), "-p", "run_dir", str(run)),
            *("-p", "test_path", str(other)),
        ],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert nb.returncode != 0 and "RunMismatchError" in nb.stderr, nb.stderr[-2000:]
    assert "test_sha256: was " in nb.stderr
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path):
    """``python -m core.report`` wrote ``<arg>/index.html`` for any argument, ``--help``
    included, making the folder; now it names what it expected and writes nothing."""
    proc = command("core.report", tmp_path / "nothing")
    [error] = failed(proc)
    assert error == (
        f"error: {tmp_path / 'nothing'}: expected a run folder (with run.json or config.yaml), "
        "e.g. outputs/runs/run-0123456789"
    )
    assert not (tmp_path / "nothing").exists()
    assert command("core.report", "--help").stdout.startswith("usage: python -m core.report")
    assert not (ROOT / "--help").exists()


def test_predict_refuses_a_blend_of_several_runs(outputs, bert):
    """A seed ensemble's final ranks a whole test file; one sentence cannot be scored that way:
    predict (and export) name the runs to use instead, before TensorFlow loads."""
    run = fake_run(outputs, "blend", bert)
    headline = {
        "final": "rank average of 2 runs' stage1",
        "members": [{"run": "blend"}, {"run": "run-seed1"}],
    }
    (run / "ensemble" / "results.json").write_text(json.dumps({"headline": headline}))
    proc = command("core.predict", "--output-dir", outputs, "--run", run, "好吃")
    [line] = failed(proc)
    assert line.startswith(f"error: run {run}: its final is a blend of 2 runs")
    assert line.endswith("--run with one of outputs/runs/blend, outputs/runs/run-seed1")


def test_predict_refuses_a_run_whose_encoder_changed(outputs, bert):
    """The vocabulary that tokenizes new text must be the one the run was trained with."""
    run = fake_run(outputs, "r", bert)
    vocab = bert / "vocab.txt"
    lines = vocab.read_text(encoding="utf-8").split("\n")
    lines[10], lines[11] = lines[11], lines[10]  # same size, other token ids
    vocab.write_text("\n".join(lines), encoding="utf-8")
    proc = command("core.predict", "--output-dir", outputs, "--run", run, "好吃")
    [line] = failed(proc)
    assert line.startswith(f"error: {bert}: its files changed since run {run} was made")
