"""The step store checks what it reuses; runs and stored steps can be removed; a failed run says so.

Fast tests write fake steps with the store's own API (``claim``, ``link``) on tiny data: each
file kind is damaged three ways (cut short, bytes flipped keeping the size, deleted) and the
claim, the main job's ``skip_done``, the readers (predict's and export's check, the ensemble's
fold check, the report) and ``python -m core.runs verify`` are checked against it; ``rm`` and
``gc`` run with a step's lock held by another process. The slow test damages a copy of the
session's tiny run (conftest.py) and runs predict, export, verify and the main job on it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_run import command, copy_outputs, run_job, small_settings

from core.config import ConfigError, Settings, show
from core.io import read_json, write_json
from core.pipeline.plan import Task
from core.runs import commands, steps, store
from core.runs.folder import (
    FAILED,
    check_reads,
    check_upstream,
    clear_failed,
    read_failed,
    record_settings,
)

# What each stored file is, as the steps write it: a fold's weights, predictions, history and
# marker; the damage is done to one of them at a time.
FOLD_FILES = {
    "weights.h5": bytes(range(256)) * 64,  # 16 KiB "weights"
    "oof.csv": b"row,id,label,pred\n" + b"".join(b"%d,%d,1,0.5\n" % (i, i) for i in range(200)),
    "test.csv": b"id,pred\n" + b"".join(b"%d,0.25\n" % i for i in range(100)),
    "history.json": b'{"loss": [0.5, 0.4]}\n',
}
DAMAGES = ("truncate", "flip", "delete")


@pytest.fixture
def settings(tmp_path) -> Settings:
    return small_settings(tmp_path / "in", tmp_path / "outputs", n_folds=2, stage0_epochs=0)


def compute(step: steps.Step, settings: Settings, files=FOLD_FILES, calls: list | None = None):
    """Compute a fake fold under its claim, as engine's folds do: files, then ``done.json``."""
    with steps.claim(step, settings):
        if not step.done():
            for name, data in files.items():
                (step.dir / name).write_bytes(data)
            (step.dir / "tensorboard").mkdir()
            (step.dir / "tensorboard" / "events.out").write_bytes(b"ev")
            write_json(step.marker, {"val_auc": 0.9, "best_epoch": 1, "epochs_run": 2})
            if calls is not None:
                calls.append(step.label)
    return step


def make_run(settings: Settings, name: str, labels=None) -> Path:
    """A run folder (``config.yaml``) linking the fake steps ``labels`` (default: every one)."""
    run_dir = Path(settings.output_dir) / "runs" / name
    record_settings(run_dir, settings)
    for step in steps.run_steps(settings):
        if labels is None or step.label in labels:
            steps.link(run_dir, compute(step, settings))
    return run_dir


def damage(path: Path, how: str) -> None:
    if how == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "flip":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        path.unlink()


def why(name: str, how: str, size: int) -> str:
    """The start of what the store says of ``name`` damaged ``how``."""
    if how == "truncate":
        return f"{name} is {size // 2:,} bytes, recorded {size:,}"
    if how == "flip":
        return f"{name} has other contents than recorded (sha256 "
    return f"{name} is missing (recorded {size:,} bytes)"


# -- the record -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, text",
    [
        (999, "999 B"),
        (1_500, "2 KB"),
        (2_340_000, "2.3 MB"),
        (12_600_000, "13 MB"),
        (3.2e9, "3.2 GB"),
    ],
)
def test_sizes_read_in_decimal_units_with_the_digits_that_matter(n, text):
    assert store.size_text(n) == text


def test_a_done_step_records_its_files_when_its_claim_ends(settings):
    step = compute(steps.ref(settings, "stage1", 0), settings)
    record = read_json(step.dir / steps.RECORD)
    assert record["step"] == step.name
    # Every result file and the marker; not the key, the record, TensorBoard's events, nor the
    # notebook a run copies in later.
    assert sorted(record["files"]) == sorted([*FOLD_FILES, "done.json"])
    assert record["files"]["weights.h5"] == {
        "bytes": len(FOLD_FILES["weights.h5"]),
        "sha256": steps.sha256(step.dir / "weights.h5"),
    }
    (step.dir / "notebook.ipynb").write_text("{}")  # core.pipeline.execute.keep_notebook
    assert step.check() is None


def test_a_step_that_fails_midway_records_nothing(settings):
    step = steps.ref(settings, "stage1", 0)
    with pytest.raises(RuntimeError), steps.claim(step, settings):
        (step.dir / "weights.h5").write_bytes(b"half")
        raise RuntimeError("killed")
    assert not step.done() and not (step.dir / steps.RECORD).exists()


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("name", [*FOLD_FILES, "done.json"])
def test_each_damaged_file_is_found_and_the_claim_recomputes_the_step(settings, name, how, capsys):
    calls = []
    step = compute(steps.ref(settings, "stage1", 1), settings, calls=calls)
    size = (step.dir / name).stat().st_size
    damage(step.dir / name, how)
    found = step.check()
    if name == "done.json" and how == "delete":  # no marker: not done, simply computed again
        assert not step.done()
    else:
        assert str(found).startswith(why(name, how, size))
        assert found.path == step.dir / name
        assert (step.check(hashes=False) is None) == (how == "flip")  # sizes alone: not a flip
    capsys.readouterr()
    compute(step, settings, calls=calls)  # what engine.train_stage1 does on reuse
    assert calls == ["stage1-fold1", "stage1-fold1"]  # computed again, whole
    printed = capsys.readouterr().out
    marker_gone = name == "done.json" and how == "delete"  # as a killed step: redone silently
    assert printed == ("" if marker_gone else f"stage1-fold1: {found}: recomputing\n")
    assert step.done() and step.check() is None


def test_sizes_alone_miss_a_flipped_byte_that_hashes_find(settings):
    step = compute(steps.ref(settings, "stage1", 0), settings)
    damage(step.dir / "weights.h5", "flip")
    assert step.check(hashes=False) is None
    assert "has other contents" in str(step.check())


def test_an_unreadable_record_is_damage(settings):
    step = compute(steps.ref(settings, "stage1", 0), settings)
    (step.dir / steps.RECORD).write_text('{"files": {"weights.h5": ')
    assert str(step.check()) == "files.json is unreadable"


def test_a_step_made_before_records_is_recorded_when_first_reused(settings):
    step = compute(steps.ref(settings, "stage1", 0), settings)
    (step.dir / steps.RECORD).unlink()  # as a step stored by an earlier version
    assert step.check() is None  # nothing to compare with
    calls = []
    compute(step, settings, calls=calls)  # reused, and recorded now
    assert calls == [] and steps.sealed(step.dir)
    damage(step.dir / "oof.csv", "truncate")
    assert "oof.csv is" in str(step.check())


def test_stage0_made_before_records_is_checked_against_its_encoders_manifest(settings):
    from core.config import PRETRAIN_FILE
    from core.weights.google_ckpt import MANIFEST_FILE

    on = dataclasses.replace(settings, stage0_epochs=1)
    step = steps.ref(on, "stage0")
    with steps.claim(step, on):
        # as stage 0 writes its encoder: the whole folder at once, PRETRAIN.json and MANIFEST.json
        # inside (core.weights.google_ckpt.write_bert_dir)
        shutil.copytree(settings.bert_dir, step.dir / "bert")
        (step.dir / "bert" / PRETRAIN_FILE).write_text("{}")
    assert "bert/bert_model.ckpt.index" in read_json(step.dir / steps.RECORD)["files"]
    (step.dir / steps.RECORD).unlink()  # a stage 0 stored before records
    assert (
        steps.read_record(step.dir)["bert/vocab.txt"]
        == (read_json(step.dir / "bert" / MANIFEST_FILE)["files"]["vocab.txt"])
    )
    [data] = (step.dir / "bert").glob("bert_model.ckpt.data-*")
    damage(data, "flip")
    assert str(step.check()).startswith(f"bert/{data.name} has other contents")


def test_vet_records_a_step_made_before_records(settings):
    step = compute(steps.ref(settings, "stage1", 0), settings)
    (step.dir / steps.RECORD).unlink()
    assert steps.vet(step) is None and steps.sealed(step.dir)


def test_a_readers_check_looks_only_at_the_files_it_reads(settings):
    step = compute(steps.ref(settings, "stage1", 0), settings)
    damage(step.dir / "oof.csv", "truncate")
    assert step.check(only=["weights.h5"]) is None
    assert str(step.check(only=["oof.csv"])).startswith("oof.csv is")


@pytest.mark.parametrize(
    "files",
    [
        [],
        {"weights.h5": 7},
        {"weights.h5": {"bytes": "16", "sha256": "ab"}},
        {"weights.h5": {"bytes": 16, "sha256": 5}},
    ],
)
def test_a_record_with_a_malformed_entry_is_damage_of_the_record(settings, files):
    step = compute(steps.ref(settings, "stage1", 0), settings)
    write_json(step.dir / steps.RECORD, {"step": step.name, "files": files})
    found = step.check()
    assert str(found) == "files.json is unreadable" and found.path == step.dir / steps.RECORD


def test_a_half_made_stage0_has_no_record_to_check(settings):
    from core.weights.google_ckpt import MANIFEST_FILE

    folder = steps.ref(dataclasses.replace(settings, stage0_epochs=1), "stage0").dir
    (folder / "bert").mkdir(parents=True)
    write_json(folder / "bert" / MANIFEST_FILE, {"files": {}})  # its encoder, but no marker yet
    assert steps.read_record(folder) is None


def test_hidden_files_of_a_step_are_not_recorded(settings):
    step = compute(steps.ref(settings, "stage1", 0), settings)
    (step.dir / ".oof.csv.x.tmp.csv").write_text("half")  # core.io's temporary
    (step.dir / ".cache").mkdir()
    (step.dir / ".cache" / "f").write_text("x")
    assert sorted(steps.recorded_files(step.dir)) == sorted([*FOLD_FILES, "done.json"])


def test_a_link_to_another_step_is_pointed_at_this_one(settings, tmp_path):
    step = compute(steps.ref(settings, "stage1", 0), settings)
    path = step.in_run(tmp_path / "run")
    path.parent.mkdir(parents=True)
    path.symlink_to(tmp_path / "elsewhere")
    assert steps.link(tmp_path / "run", step) == path and path.resolve() == step.dir.resolve()


def test_a_run_is_made_of_every_step_it_links_stage0_included(settings):
    on = dataclasses.replace(settings, stage0_epochs=1)
    run_dir = make_run(on, "run-a")
    assert set(steps.linked_steps(run_dir)) == {s.label for s in steps.run_steps(on)}
    assert steps.linked_steps(run_dir)["stage0"] == steps.ref(on, "stage0").name


# -- the main job's reuse -------------------------------------------------------------------------


def test_the_main_job_recomputes_a_damaged_step_instead_of_skipping_it(settings, caplog):
    from core.pipeline.execute import skip_done

    run_dir = make_run(settings, "run-a")
    task = Task("stage1", 0, settings, run_dir, steps.ref(settings, "stage1", 0))
    caplog.set_level(logging.INFO, logger="pipeline")
    assert skip_done(task, 3, 9)
    assert caplog.messages[-1].startswith("[3/9] stage1-fold0: complete, skipped (stored as ")
    size = (task.stored.dir / "oof.csv").stat().st_size
    damage(task.stored.dir / "oof.csv", "truncate")
    assert not skip_done(task, 3, 9)
    assert caplog.messages[-1] == (
        f"[3/9] stage1-fold0: oof.csv is {size // 2:,} bytes, recorded {size:,}: recomputing"
    )
    assert not task.stored.done() and not task.done  # emptied: its notebook computes it whole


# -- the readers ----------------------------------------------------------------------------------


def test_a_reader_of_a_damaged_file_names_it_and_the_command_that_mends_it(settings):
    run_dir = make_run(settings, "run-a")
    weights = run_dir / "stage1" / "fold1" / "weights.h5"
    check_reads([weights, run_dir / "stage2" / "fold1" / "oof.csv"], "MEND")  # intact
    damage(weights, "truncate")
    step = steps.ref(settings, "stage1", 1)
    n = len(FOLD_FILES["weights.h5"])
    with pytest.raises(steps.DamagedStepError) as e:
        check_reads([run_dir / "stage2" / "fold1" / "oof.csv", weights], "MEND")
    assert str(e.value) == (
        f"{step.dir / 'weights.h5'} is {n // 2:,} bytes, recorded {n:,} (stored step "
        f"{step.name}, damaged since it was made); compute it again with: MEND"
    )
    check_reads([run_dir / "stage1" / "fold1" / "oof.csv"], "MEND")  # only what is read
    with pytest.raises(steps.DamagedStepError, match="weights.h5 is .*: MEND$"):
        check_upstream(step, "MEND", ["weights.h5"])  # stage 2 reading its stage-1 fold


def test_predict_turns_an_unreadable_weights_file_into_one_line():
    from core.serving.predict import load_weights

    class Model:
        def load_weights(self, path):
            raise OSError("Unable to synchronously open file (truncated file: eof = 1024)")

    with pytest.raises(steps.DamagedStepError) as e:
        load_weights(Model(), Path("outputs/steps/x/weights.h5"), "MEND")
    assert str(e.value) == (
        "outputs/steps/x/weights.h5: expected this run's weights, found a file they cannot be "
        "read from (OSError: Unable to synchronously open file (truncated file: eof = 1024)); "
        "compute its step again with: MEND"
    )


def test_the_ensemble_and_the_report_take_a_damaged_fold_as_unfinished(settings):
    from core.ensembling.fold_outputs import MissingOutputsError, check_done
    from core.runs.report import context

    run_dir = make_run(settings, "run-a")
    check_done(run_dir, "stage2", 2, settings)
    cut = run_dir / "stage2" / "fold1" / "oof.csv"
    cut.write_bytes(cut.read_bytes()[:-7])  # cut mid-row
    with pytest.raises(MissingOutputsError) as e:
        check_done(run_dir, "stage2", 2, settings)
    assert e.value.folds == [1]
    assert str(e.value).startswith(f"stage2 fold 1 is not finished in {run_dir} (oof.csv is ")
    assert ': damaged since it was made): run "papermill notebooks/03_f1_refine.ipynb' in str(
        e.value
    )
    rows = context(run_dir, settings)["folds"]  # the report: the damaged fold as not done
    assert rows[0]["stage2_epoch"] == "1 of 2" and rows[1]["stage2_epoch"] is None
    assert rows[1]["stage1_epoch"] == "1 of 2"


# -- verify ---------------------------------------------------------------------------------------


def test_verify_lists_the_damaged_steps_and_how_to_mend_each(settings, capsys):
    out = Path(settings.output_dir)
    make_run(settings, "run-a")
    assert commands.main(["verify", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    n = len(steps.run_steps(settings))
    assert printed.startswith(f"checked {n} stored steps under {out / 'steps'} (")
    assert printed.rstrip().endswith(f": {n} intact")
    step = steps.ref(settings, "stage2", 0)
    damage(step.dir / "weights.h5", "flip")
    other = dataclasses.replace(settings, stage2_lr=1e-5)
    orphan = compute(steps.ref(other, "stage2", 0), settings)  # no run links it
    damage(orphan.dir / "test.csv", "truncate")
    (steps.ref(settings, "eda").dir / steps.RECORD).unlink()
    assert commands.main(["verify", "--output-dir", str(out)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(f": {n - 2} intact, 2 damaged, 1 unrecorded")
    damaged = {line.split()[1].rstrip(":"): line for line in lines if line.startswith("damaged")}
    assert damaged[step.name].startswith(f"damaged  {step.name}: weights.h5 has other contents")
    assert damaged[step.name].endswith(
        "; linked by run-a; computed again by: python -m core.pipeline --config "
        f"{out / 'runs' / 'run-a' / 'config.yaml'} --run-dir {out / 'runs' / 'run-a'}"
    )
    gc = "; no run links it: python -m core.runs gc --yes removes it"
    assert damaged[orphan.name].endswith(gc)
    eda = steps.ref(settings, "eda").name
    assert any(line.startswith(f"unrecorded  {eda}: made before records") for line in lines)


# -- rm and gc ------------------------------------------------------------------------------------


@pytest.fixture
def holder():
    """Start another process that holds a step's lock until the test ends."""
    procs = []

    def hold(store_dir: Path, name: str) -> None:
        code = (
            "import fcntl, sys, time\n"
            "f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX)\n"
            "print('held', flush=True); time.sleep(120)\n"
        )
        lock = steps.lock_path(store_dir, name)
        lock.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout.readline().strip() == "held"
        procs.append(proc)

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


def test_rm_removes_a_run_and_gc_its_steps_no_other_run_links(settings, holder, capsys):
    out = Path(settings.output_dir)
    a = make_run(settings, "run-a")
    variant = dataclasses.replace(settings, stage2_lr=1e-5)
    b = make_run(variant, "run-b")  # shares the EDA and stage 1, has its own stage 2
    own_a = {steps.ref(settings, "stage2", k).name for k in range(2)}
    assert commands.main(["gc", "--output-dir", str(out)]) == 0
    assert capsys.readouterr().out.startswith("nothing to collect: every stored step under ")

    assert commands.main(["rm", "run-a", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"removed {a} (") and not a.exists()
    assert (
        printed[1].startswith("  2 of its stored steps (")
        and "python -m core.runs gc" in (printed[1])
    )
    assert all((out / "steps" / n).is_dir() for n in own_a)  # its steps stay
    shared = steps.ref(settings, "stage1", 0)
    assert steps.linked_steps(b)["stage1-fold0"] == shared.name and shared.check() is None

    held, free = sorted(own_a)
    holder(out / "steps", held)  # a running job holds one of them
    assert commands.main(["gc", "--output-dir", str(out)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].startswith(f"2 stored steps under {out / 'steps'} no run links (")
    assert {line.split()[-1] for line in listed[1:3]} == own_a
    assert listed[-1] == "python -m core.runs gc --yes removes them"
    assert commands.main(["gc", "--yes", "--output-dir", str(out)]) == 0
    done = capsys.readouterr().out
    assert f"{held}  (kept: a running job holds it)" in done
    assert "removed 1 (" in done and "; kept 1" in done
    assert (out / "steps" / held).is_dir() and not (out / "steps" / free).exists()
    assert all(s.check() is None for s in steps.run_steps(variant))  # run-b's steps untouched


def test_a_run_deleted_by_hand_leaves_steps_gc_finds(settings):
    out = Path(settings.output_dir)
    shutil.rmtree(make_run(settings, "run-a"))  # rm -r
    found = store.collectable(out)
    assert set(found) == {s.name for s in steps.run_steps(settings)}
    assert all(size > 0 for size in found.values())


def test_rm_refuses_what_is_not_a_run_and_a_run_a_job_is_computing(settings, holder, tmp_path):
    out = Path(settings.output_dir)
    a = make_run(settings, "run-a")
    with pytest.raises(ConfigError, match="^rm run-x: no run of that name or path under "):
        commands.main(["rm", "run-x", "--output-dir", str(out)])
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(a, elsewhere, symlinks=True)
    with pytest.raises(ConfigError, match=f"^rm {re.escape(str(elsewhere))}: .* is not a run "):
        commands.main(["rm", str(elsewhere), "--output-dir", str(out)])
    holder(out / "steps", steps.ref(settings, "stage2", 1).name)
    with pytest.raises(ConfigError, match="^rm run-a: a running job holds its step stage2-fold1-"):
        commands.main(["rm", "run-a", "--output-dir", str(out)])
    assert a.is_dir()


def test_the_table_shows_each_runs_size_and_what_gc_would_free(settings, capsys):
    out = Path(settings.output_dir)
    make_run(settings, "run-a")
    make_run(dataclasses.replace(settings, stage2_lr=1e-5), "run-b")
    other = dataclasses.replace(settings, stage2_lr=1e-6)
    orphan = compute(steps.ref(other, "stage2", 0), settings)  # no run links it
    assert commands.main(["--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    header = next(line for line in printed.splitlines() if line.startswith("run "))
    assert "own size  steps size" in header
    row = next(line for line in printed.splitlines() if line.startswith("run-a "))
    total = sum(store.tree_bytes(s.dir) for s in steps.run_steps(settings))
    assert f" {store.size_text(total)} (3 shared) " in row  # EDA and stage 1's two folds
    freed = store.size_text(store.tree_bytes(orphan.dir))
    assert f"gc would free {freed} (1 step no run links): python -m core.runs gc" in printed
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "<th>own size</th><th>steps size</th>" in page
    assert 'title="shared with other runs: eda, stage1-fold0, stage1-fold1"' in page
    assert f"gc would free {freed}" in page


# -- half-made runs -------------------------------------------------------------------------------


def test_a_damaged_encoder_stops_the_main_job_before_any_folder(settings, tmp_path):
    from core.pipeline.job import run_pipeline
    from core.weights import BertDirError

    bert = tmp_path / "bert"
    shutil.copytree(settings.bert_dir, bert)
    [data] = bert.glob("bert_model.ckpt.data-*")
    damage(data, "flip")  # the same size: only its sha256, or reading it, tells
    s = dataclasses.replace(settings, bert_dir=bert, stage0_epochs=1)
    with pytest.raises(BertDirError, match=f"^{re.escape(str(data))}: expected sha256 .* damaged"):
        run_pipeline(s)
    assert not Path(s.output_dir).exists()  # no run folder, no step folder


def test_a_step_failing_later_marks_the_run_failed_and_predict_never_offers_it(
    settings, monkeypatch, tmp_path
):
    import core.pipeline.job as job
    from core.pipeline.execute import NotebookError
    from core.runs import catalog
    from core.serving.predict import RunNotFinishedError, finished_run, latest_run

    reason = "bert/bert_model.ckpt.data-00000-of-00001: expected a readable checkpoint, found …"

    def fails(step, params):
        raise NotebookError(f"{reason}\nthe executed notebook is saved at x.ipynb")

    monkeypatch.setattr(job, "execute", fails)
    out = Path(settings.output_dir)
    older = make_run(dataclasses.replace(settings, maxlen=16), "run-older")  # no step shared
    write_json(older / "run.json", {"n_folds": 2})  # an unfinished run predict may offer
    with pytest.raises(NotebookError):
        job.run_pipeline(settings)
    [run_dir] = [p for p in (out / "runs").iterdir() if p != older]
    failed = read_failed(run_dir)
    assert failed["step"] == "eda" and failed["reason"] == reason  # the first step it runs
    [info] = [r for r in catalog.collect(out) if r.path == run_dir]
    assert info.status.startswith("failed at eda: bert/bert_model.ckpt.data-")
    assert "failed at eda" in (out / "index.html").read_text(encoding="utf-8")

    time.sleep(0.01)
    (run_dir / "run.json").touch()  # the latest started run: still never offered
    with pytest.raises(RunNotFinishedError) as e:
        latest_run(out)
    assert f"the latest, {older}, finishes with: python -m core.pipeline " in str(e.value)
    with pytest.raises(RunNotFinishedError) as e:
        finished_run(run_dir, out)
    assert str(e.value) == (
        f"run {run_dir} has not finished: its main job failed at eda: {reason}; fix that first "
        f"(python -m core.runs lists every run; python -m core.runs rm {run_dir.name} removes it)"
    )
    assert "core.pipeline" not in str(e.value)

    monkeypatch.setattr(job, "execute", lambda step, params: None)  # the cause fixed
    job.run_pipeline(settings, only="stage1", folds=[0])
    assert read_failed(run_dir) is not None  # what failed has not run again
    job.run_pipeline(settings, only="eda")
    assert read_failed(run_dir) is None and not (run_dir / FAILED).exists()


def test_clear_failed_keeps_the_mark_until_the_failed_step_runs(tmp_path):
    from core.runs.folder import mark_failed

    mark_failed(tmp_path, "stage2-fold1", ValueError("bad\nmore"))
    assert read_failed(tmp_path)["reason"] == "bad"
    clear_failed(tmp_path, ["stage1-fold1"])
    assert read_failed(tmp_path) is not None
    clear_failed(tmp_path, None)  # the whole run went through
    assert read_failed(tmp_path) is None
    (tmp_path / FAILED).write_text("{")
    assert read_failed(tmp_path)["reason"] == "failed.json is unreadable"
    assert json.loads(json.dumps(read_failed(tmp_path)))  # still a record


# -- end to end -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_damaged_copy_of_a_real_run_is_refused_by_readers_and_mended_by_the_main_job(
    tiny_run, caplog
):
    # Inside the repository's outputs/: predict and export write only there.
    copy = copy_outputs(tiny_run, tiny_run.outputs.with_name(tiny_run.outputs.name + "-store"))
    caplog.set_level(logging.INFO, logger="pipeline")
    try:
        _damaged_copy(copy, caplog)
    finally:
        shutil.rmtree(copy.outputs, ignore_errors=True)


def _damaged_copy(copy, caplog) -> None:
    run, out = copy.run_dir, copy.outputs
    weights = run / "stage1" / "fold0" / "weights.h5"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.truncate(1024)  # a copy cut short
    cut = run / "stage2" / "fold1" / "oof.csv"
    text = cut.read_bytes()
    cut_size = len(text) - 10
    cut.write_bytes(text[:cut_size])  # cut mid-row
    stored = Path(steps.ref(copy.settings, "stage1", 0).dir)
    expected = f"error: {show(stored / 'weights.h5')} is 1,024 bytes, recorded {size:,} (stored "

    for module, args in (
        ("core.serving.predict", ["--output-dir", out, "--run", run, "好吃"]),
        ("core.serving.export", ["--run", run, "--out", out / "export" / "x"]),
    ):
        done = command(module, *args)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        print(f"$ python -m {module}\n{done.stderr}")  # shown with -rP, and when it fails
        assert done.returncode == 1 and lines[-1].startswith(expected), done.stderr
        assert "; compute it again with: python -m core.pipeline " in lines[-1]
        assert "Traceback" not in done.stderr

    done = command("core.runs", "verify", "--output-dir", out)
    print(f"$ python -m core.runs verify\n{done.stdout}")
    assert done.returncode == 1
    assert sum(line.startswith("damaged  ") for line in done.stdout.splitlines()) == 2

    # The part of the run that holds the damaged weights: that step alone is computed again.
    caplog.clear()
    run_job(copy.settings, only="stage1", folds=[0])
    log = caplog.messages
    assert f"[2/2] stage1-fold0: weights.h5 is 1,024 bytes, recorded {size:,}: recomputing" in log
    assert any(m.startswith("[1/2] stage0: complete, skipped") for m in log)
    # The whole run: the cut predictions' step is computed again, every other step reused.
    caplog.clear()
    run_job(copy.settings)
    log = caplog.messages
    recomputed = [m for m in log if m.endswith(": recomputing")]
    print("\n".join(log))
    assert len(recomputed) == 1 and recomputed[0].endswith(
        f"stage2-fold1: oof.csv is {cut_size:,} bytes, recorded {len(text):,}: recomputing"
    )
    skipped = [m for m in log if ": complete, skipped" in m]
    assert len(skipped) == len(steps.run_steps(copy.settings)) - 1 + 2  # + ensemble, errors
    done = command("core.runs", "verify", "--output-dir", out)
    assert done.returncode == 0, done.stdout
