"""The commands as a user runs them: exit code and the first line on stderr, for each command row
of docs/robustness.md's bad-input table.

Each test starts the real command in a subprocess. Those that load no TensorFlow come first
(1-3 s each); then those that read a checkpoint or run a notebook kernel (about 10-20 s each);
last, notebooks run by hand with papermill (slow): the error papermill shows, in the first code
cell, no run folder left behind, no start-up noise.
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
from tiny_run import (
    TEST,
    TRAIN,
    fake_run,
    finished_run,
    first_rows,
    make_tiny_inputs,
    subprocess_env,
)

from core import cli
from core.config import CONFIG_FILE, ROOT, Settings
from core.pipeline.job import resolve_settings
from core.runs.folder import record_settings
from core.serving.predict import cut_note
from core.weights.google_ckpt import MANIFEST_FILE

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


# -- every command ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module", ["core.pipeline", "core.serving.predict", "core.weights", "core.runs"]
)
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
        assert proc.stderr.splitlines()[-1].startswith(
            f"core.data.reviews.DataError: {missing}: not found"
        )


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
        "[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel.\n",
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
        "core.pipeline",
        "--set",
        f"bert_dir={tmp_path / 'nope'}",
        "--output-dir",
        tmp_path / "out",
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


# -- core.serving.predict --------------------------------------------------------------------------


def test_predict_run_that_does_not_exist(outputs):
    run = outputs / "runs" / "nope"
    [line] = failed(command("core.serving.predict", "--output-dir", outputs, "--run", run, "好吃"))
    assert line.startswith(
        f"error: --run {run}: no such run folder; omit --run to use the latest finished run"
    )


def test_predict_unfinished_run_names_the_command_that_finishes_it(outputs, bert):
    run = fake_run(outputs, "half", bert, finished=False)
    settings = Settings(bert_dir=bert, n_folds=3, stage1_lr=3e-5, output_dir=outputs)
    record_settings(run, settings)  # as the main job or a notebook records a run's settings
    [line] = failed(command("core.serving.predict", "--output-dir", outputs, "--run", run, "好吃"))
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
    [line] = failed(
        command("core.serving.predict", "--output-dir", outputs, "--out", outside, "好吃")
    )
    assert line.startswith(
        f"error: --out={str(outside)!r}: expected a path inside the output folder {outputs}"
    )
    folder = outputs / "runs"
    [line] = failed(
        command("core.serving.predict", "--output-dir", outputs, "--out", folder, "好吃")
    )
    assert line == f"error: --out={str(folder)!r}: expected a file path, found a folder"


def test_predict_without_a_finished_run(outputs, bert):
    [line] = failed(command("core.serving.predict", "--output-dir", outputs, "好吃"))
    assert line == (
        f"error: no finished run under {outputs / 'runs'}: make one with `./suite.sh "
        "run` (python -m core.pipeline), or pass --run"
    )
    run = fake_run(outputs, "half", bert, finished=False)
    [line] = failed(command("core.serving.predict", "--output-dir", outputs, "好吃"))
    assert line.startswith(
        f"error: no finished run under {outputs / 'runs'}; the latest, {run}, "
        "finishes with: python -m core.pipeline "
    )
    assert line.endswith(f"--run-dir {run}")


def test_predict_refuses_an_empty_sentence(outputs):
    [line] = failed(command("core.serving.predict", "--output-dir", outputs, "好吃", "  ", "不错"))
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
    [line] = failed(command("core.serving.predict", "--output-dir", outputs, "--file", path))
    assert line.startswith(f"error: {path}, line 1: expected ")
    assert line.endswith(
        "looks like a labelled train file; core.serving.predict scores sentences without "
        "labels: remove them"
    )


def test_predict_says_which_run_it_picked(outputs, tmp_path):
    run = fake_run(outputs, "latest", tmp_path / "gone")
    proc = command("core.serving.predict", "--output-dir", outputs, "好吃")
    [error] = failed(proc)
    picked = proc.stderr.splitlines()[0]
    assert picked == f"using run {run} (the latest finished; --run picks another)"
    assert error.startswith(
        f"error: run {run}, its encoder: {tmp_path / 'gone'}: expected a BERT folder"
    )
    assert proc.stdout == ""  # stdout is for the CSV only


def test_predict_refuses_control_characters_and_writes_nothing(outputs, tmp_path):
    """Not [UNK] and echoed raw into the CSV (issue #28): refused, naming the file and line."""
    path = tmp_path / "new.txt"
    path.write_text("好吃\n\n不\x07错\n\n", encoding="utf-8")
    out = outputs / "scores.csv"
    [line] = failed(
        command("core.serving.predict", "--output-dir", outputs, "--file", path, "--out", out)
    )
    assert line == (
        f"error: {path}, line 3: expected text without control characters, found U+0007 in "
        "'不\\x07错' — remove it"
    )
    [line] = failed(
        command("core.serving.predict", "--output-dir", outputs, "不\x1b错", "--out", out)
    )
    assert line == (
        "error: sentence 1 of the command line: expected text without control characters, found "
        "U+001B in '不\\x1b错' — remove it"
    )
    assert not outputs.exists()


def test_predict_names_a_whitespace_only_row(outputs, tmp_path):
    path = tmp_path / "new.txt"
    path.write_text("好吃\n\n\u3000\n\n", encoding="utf-8")
    [line] = failed(command("core.serving.predict", "--output-dir", outputs, "--file", path))
    assert line == (
        f"error: {path}, line 3: expected a text row, found a whitespace-only row '\\u3000' — "
        "fill it in or remove the row"
    )


def test_pipeline_refuses_a_control_character_before_any_step(tmp_path, tiny_bert_dir):
    train = tmp_path / "train.txt"
    train.write_text(first_rows(TRAIN, 3) + "1\t好\x00吃\n\n", encoding="utf-8")
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
    [line] = failed(proc)
    assert line.startswith(f"error: {train}, line 7: expected text without control characters, ")
    assert not out.exists()


def test_a_damaged_copy_is_not_told_to_rebuild_the_default(outputs, bert):
    """A copy of m3e-small (its manifest names where it was written) with a truncated file:
    `python -m core.weights --force` would rebuild pretrained/m3e-small, not this one."""
    manifest = json.loads((bert / MANIFEST_FILE).read_text())
    manifest.update(rebuild="python -m core.weights --force", folder="pretrained/m3e-small")
    (bert / MANIFEST_FILE).write_text(json.dumps(manifest))
    data = bert / DATA_FILE
    data.write_bytes(data.read_bytes()[:1000])
    proc = command("core.pipeline", "--set", f"bert_dir={bert}", "--output-dir", outputs)
    [line] = failed(proc)
    assert line.startswith(f"error: {data}: expected ")
    assert line.endswith(
        "the file is truncated or damaged; copy it again from pretrained/m3e-small "
        "(`python -m core.weights --force` makes that one), or point bert_dir at another folder"
    )
    assert not outputs.exists()


# -- with TensorFlow or a notebook kernel ----------------------------------------------------------


@pytest.mark.slow  # a kernel or a subprocess importing TensorFlow
def test_predict_says_how_many_sentences_it_cut(outputs, bert):
    """As notebooks 01 and 02 say it of the data (issue #28): on stderr, stdout stays CSV."""
    run = finished_run(outputs, bert)
    long = "好吃不错服务环境菜味道很价格便宜贵差评推荐强烈一般"  # 25 characters; maxlen is 20
    proc = command("core.serving.predict", "--output-dir", outputs, "--run", run, long, "好吃")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.splitlines() == [
        "1 of 2 sentences are longer than the run's maxlen, 20 characters: each is scored on its "
        "first 20"
    ]
    assert [row.split(",")[0] for row in proc.stdout.splitlines()] == ["text", long, "好吃"]
    assert cut_note(["好吃", long[:20]], 20) is None  # nothing cut, nothing said


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
    proc = command(
        "core.serving.predict", "--output-dir", outputs, "--run", outputs / "runs" / "r", "好吃"
    )
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


@pytest.mark.slow  # a kernel or a subprocess importing TensorFlow
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
    for noise in ("without encryption", "absl", "oneDNN", "cuInit", "KeyboardInterrupt"):
        assert noise not in proc.stdout + proc.stderr


# -- notebooks run by hand (papermill) -------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory):
    return make_tiny_inputs(tmp_path_factory.mktemp("hand"), n_train=30, n_test=5)


def papermill(*args) -> subprocess.CompletedProcess:
    """``papermill *args`` as a user runs it: without pytest's PYTEST_CURRENT_TEST, under which
    ipykernel leaves fd 2 uncaptured (so C++ lines would not reach the notebook as they do)."""
    env = {k: v for k, v in subprocess_env().items() if k != "PYTEST_CURRENT_TEST"}
    return subprocess.run(
        [sys.executable, "-m", "papermill", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def hand_run(tmp_path: Path, notebook: str, *args) -> str:
    """``papermill notebooks/<notebook>.ipynb out.ipynb *args`` as a user types it; returns the
    error papermill shows (``ConfigError: …``) after checking it stopped the notebook's first
    code cell (before any work), exit code 1, and no start-up noise on stderr or in the notebook."""
    import nbformat

    out = tmp_path / "out.ipynb"
    proc = papermill(f"notebooks/{notebook}.ipynb", out, *args)
    assert proc.returncode == 1, proc.stderr[-3000:]
    nb = nbformat.read(out, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    tags = [c.metadata.get("tags", []) for c in code]
    first = tags.index(["injected-parameters"]) + 1
    [failed_cell] = [c for c in code if any(o.output_type == "error" for o in c.outputs)]
    assert failed_cell is code[first], failed_cell.source
    streams = "".join(o.text for c in code for o in c.outputs if o.output_type == "stream")
    for noise in ("absl", "oneDNN", "cuda", "KeyboardInterrupt caught"):
        assert noise not in proc.stderr + streams, (proc.stderr + streams)[-3000:]
    [error] = [o for o in failed_cell.outputs if o.output_type == "error"]
    line = f"{error.ename}: {error.evalue.splitlines()[0]}"
    assert line in proc.stderr.splitlines()  # what papermill shows under the failed cell
    return line


def tiny_params(tiny, outputs: Path, **extra) -> list[str]:
    values = {
        "train_path": tiny.train_path,
        "test_path": tiny.test_path,
        "bert_dir": tiny.bert_dir,
        "output_dir": outputs,
        "n_folds": 3,
        **extra,
    }
    return [w for name, value in values.items() for w in ("-p", name, value)]


@pytest.mark.slow
def test_notebook_refuses_an_unknown_parameter(tmp_path, outputs, tiny_inputs):
    """papermill only warns about it and the notebook trained with the default (issue #28). The
    -f route here; every notebook and -p in tests/test_notebook_start.py."""
    (tmp_path / "mine.yaml").write_text("stage1_lrr: 0.001\n", encoding="utf-8")
    given = ["-f", tmp_path / "mine.yaml"]
    error = hand_run(tmp_path, "02_cv", *tiny_params(tiny_inputs, outputs), *given)
    assert error == (
        "ConfigError: notebook parameters: unknown parameter 'stage1_lrr' (did you mean "
        "'stage1_lr'?); expected one of this notebook's own (fold, run_dir) or a setting of "
        "core.config.Settings — fix the -p name or the key in the -f file"
    )
    assert not outputs.exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "notebook, extra, expected",
    [("00_pretrain", {"train_path": "BAD"}, "DataError: {BAD}, line 3: expected 'label<TAB>")],
)
def test_hand_run_notebook_failing_on_its_inputs_leaves_no_run_folder(
    tmp_path, outputs, tiny_inputs, notebook, extra, expected
):
    """Its run folder appeared before the checks, and core.serving.predict then offered to finish it
    as the latest run (issue #28). The kernel route of a first-cell check; each check of each
    notebook (a bad bert_dir, the ensemble before its folds, …) runs in-process in
    tests/test_notebook_start.py."""
    bad = tmp_path / "bad.txt"
    bad.write_text("1\t好吃\n\n2\t不错\n\n", encoding="utf-8")
    extra = {k: bad if v == "BAD" else v for k, v in extra.items()}
    error = hand_run(tmp_path, notebook, *tiny_params(tiny_inputs, outputs, **extra))
    assert error.startswith(
        expected.format(BAD=bad, runs=outputs / "runs", steps=outputs / "steps")
    ), error
    assert not outputs.exists()
    [line] = failed(command("core.serving.predict", "--output-dir", outputs, "好吃"))
    assert line.startswith(f"error: no finished run under {outputs / 'runs'}: make one with")


@pytest.mark.slow
def test_kernel_noise_is_dropped_at_the_source_and_nothing_else(tmp_path):
    """In any kernel that imports core: TensorFlow's start-up lines and the kernel's interrupt
    line at shutdown go nowhere; a real C++ error line and a real kernel error still show."""
    import nbformat

    cells = [
        "import core",
        "import os\nimport time\n"
        "get_ipython().kernel.log.error('KeyboardInterrupt caught in kernel.')\n"
        "get_ipython().kernel.log.error('a real kernel error')\n"
        "os.write(2, b'E0000 00:00:1796202552.017382    8251 some_op.cc:52] a real error\\n')\n"
        "time.sleep(1)  # ipykernel's thread copies fd 2 into the notebook while the cell runs",
        "import tensorflow as tf",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "py"}
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.write(nb, tmp_path / "probe.ipynb")
    proc = papermill(tmp_path / "probe.ipynb", tmp_path / "out.ipynb")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    streams = "".join(o.text for c in out.cells for o in c.outputs if o.output_type == "stream")
    assert "a real error" in streams and "a real kernel error" in proc.stderr
    for noise in ("absl", "oneDNN", "cuda", "KeyboardInterrupt caught"):
        assert noise not in proc.stderr + streams, (proc.stderr + streams)[-3000:]


@pytest.mark.slow  # a kernel or a subprocess importing TensorFlow
def test_a_finished_run_folder_refuses_other_inputs(tmp_path, tiny_bert_dir):
    """Issue #28: a finished run's folder given other data is refused before any step is
    skipped as done, by the main job and by a notebook, naming what differs; nothing is
    written. (Without --run-dir, other data name another folder:
    core.runs.folder.default_run_dir.)"""
    import numpy as np

    from core.runs.folder import default_run_dir, open_run

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
    """``python -m core.runs.report`` wrote ``<arg>/index.html`` for any argument, ``--help``
    included, making the folder; now it names what it expected and writes nothing."""
    proc = command("core.runs.report", tmp_path / "nothing")
    [error] = failed(proc)
    assert error == (
        f"error: {tmp_path / 'nothing'}: expected a run folder (with run.json or config.yaml), "
        "e.g. outputs/runs/run-0123456789"
    )
    assert not (tmp_path / "nothing").exists()
    assert command("core.runs.report", "--help").stdout.startswith(
        "usage: python -m core.runs.report"
    )
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
    proc = command("core.serving.predict", "--output-dir", outputs, "--run", run, "好吃")
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
    proc = command("core.serving.predict", "--output-dir", outputs, "--run", run, "好吃")
    [line] = failed(proc)
    assert line.startswith(f"error: {bert}: its files changed since run {run} was made")
