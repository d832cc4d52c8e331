"""The step store: keys hold exactly what determines a step; a step is computed once under its
lock; a killed step is redone; runs reach steps through links that deleting a run leaves alone."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
from conftest import TINY_VOCAB
from fakes import write_random_bert_dir
from tiny_run import TEST, TRAIN, first_rows

from core.config import FIELDS, NO_RESULT, PATHS, Settings
from core.runs import steps
from core.runs.folder import RunMismatchError, default_run_dir, identity, run_folder


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    folder = tmp_path_factory.mktemp("store")
    (folder / "train.txt").write_text(first_rows(TRAIN, 30), encoding="utf-8")
    (folder / "test.txt").write_text(first_rows(TEST, 10), encoding="utf-8")
    write_random_bert_dir(folder / "bert", TINY_VOCAB)
    return Settings(
        train_path=folder / "train.txt",
        test_path=folder / "test.txt",
        bert_dir=folder / "bert",
        output_dir=folder / "outputs",
        n_folds=3,
    )


def keys(settings: Settings) -> dict[str, str]:
    return {s.label: s.key for s in steps.run_steps(settings)}


# -- keys -------------------------------------------------------------------------------------


def test_a_stage2_setting_keys_only_stage2(settings):
    before, after = keys(settings), keys(dataclasses.replace(settings, stage2_lr=5e-5))
    changed = {label for label in before if before[label] != after[label]}
    assert changed == {f"stage2-fold{k}" for k in range(3)}


def test_a_stage1_setting_keys_stage1_and_what_follows(settings):
    before, after = keys(settings), keys(dataclasses.replace(settings, stage1_lr=3e-5))
    changed = {label for label in before if before[label] != after[label]}
    assert changed == {f"stage{s}-fold{k}" for s in (1, 2) for k in range(3)}


def test_a_training_seed_shares_stage0_and_eda(settings):
    before, after = keys(settings), keys(dataclasses.replace(settings, train_seed=1))
    assert before["stage0"] == after["stage0"] and before["eda"] == after["eda"]
    assert all(before[f"stage1-fold{k}"] != after[f"stage1-fold{k}"] for k in range(3))
    # The seed of the split is the default training seed: naming it keeps every key.
    assert keys(dataclasses.replace(settings, train_seed=settings.seed)) == before


def test_stage0_seed_keys_stage0_and_everything_after(settings):
    before, after = keys(settings), keys(dataclasses.replace(settings, stage0_seed=7))
    assert before["eda"] == after["eda"]
    assert all(before[k] != after[k] for k in before if k != "eda")


def test_a_setting_that_changes_no_result_is_in_no_key_and_no_run_identity(settings):
    other = dataclasses.replace(settings, predict_batch_size=8)
    assert keys(other) == keys(settings)
    assert default_run_dir(other) == default_run_dir(settings)


def test_the_fold_split_and_data_contents_are_keyed(settings, tmp_path):
    assert (
        keys(dataclasses.replace(settings, n_folds=4))["stage1-fold0"]
        != keys(settings)["stage1-fold0"]
    )
    test = tmp_path / "test.txt"
    test.write_text(settings.test_path.read_text(encoding="utf-8") + "还行\n\n", "utf-8")
    other = keys(dataclasses.replace(settings, test_path=test))
    assert all(other[k] != v for k, v in keys(settings).items())  # every step scores test rows
    # The same contents elsewhere are the same steps.
    copy = tmp_path / "copy.txt"
    copy.write_bytes(settings.test_path.read_bytes())
    assert keys(dataclasses.replace(settings, test_path=copy)) == keys(settings)


def test_stage0_off_keys_stage1_by_the_starting_weights(settings):
    off = dataclasses.replace(settings, stage0_epochs=0)
    assert "stage0" not in keys(off)
    assert steps.recipe(off, "stage1", 0)["encoder"] == steps.inputs(off)["bert"]


def test_every_setting_is_keyed_somewhere_or_declared_result_free():
    """A new setting must be read by some key (its section's, or every step's for data
    settings) or be declared to change no result: otherwise a step would be reused wrongly."""
    sections = {f.metadata["section"] for f in FIELDS.values()}
    assert sections == {"data", "stage0", "stage1", "stage2", "students", "distill", "ensemble"}
    s = Settings()
    recipe_names = set()
    for section in ("stage0", "stage1"):
        recipe_names |= set(steps._section(s, section)) | set(steps._common(s))
    # The students' step keys its settings resolved (students_enabled decides whether it exists).
    student_names = set(steps.recipe(s, "students", 0)) | {"enabled"}
    distill_names = set(steps.recipe(s, "distill", 0)) | {"enabled"}  # likewise
    for name, f in FIELDS.items():
        if name in PATHS or name in NO_RESULT or f.metadata["section"] == "ensemble":
            continue
        short = name.split("_", 1)[1] if f.metadata["section"] != "data" else name
        if f.metadata["section"] == "students":
            assert short in student_names, name
            continue
        if f.metadata["section"] == "distill":
            assert short in distill_names, name
            continue
        keyed = short in recipe_names or name in steps.SPLIT or name in steps.LATER
        keyed = keyed or short in steps._section(s, "stage2")
        assert keyed, name


# -- run identity (#28: a run folder of other inputs is refused) --------------------------------


def test_a_run_folder_records_and_checks_its_identity(settings, tmp_path):
    from core.runs.folder import open_run

    run = default_run_dir(settings)
    run.mkdir(parents=True)
    open_run(run, settings, __import__("numpy").arange(30))
    assert run_folder(settings) == run
    test = tmp_path / "other-test.txt"
    test.write_text(settings.test_path.read_text(encoding="utf-8") + "还行\n\n", "utf-8")
    other = dataclasses.replace(settings, test_path=test)
    assert default_run_dir(other) != run  # other inputs: another folder
    with pytest.raises(RunMismatchError, match="test_sha256: was '[0-9a-f]{64}', now '"):
        run_folder(other, run)  # and that folder, named explicitly, is refused
    assert identity(settings)["test_sha256"] != identity(other)["test_sha256"]


# -- claims -----------------------------------------------------------------------------------


def _compute(settings: Settings, counter: Path, delay: float) -> None:
    step = steps.ref(settings, "stage1", 0)
    with steps.claim(step, settings):
        if not step.done():
            with open(counter, "a") as f:
                f.write(f"{os.getpid()}\n")
            time.sleep(delay)
            (step.dir / "partial.bin").write_bytes(b"x")
            (step.dir / "done.json").write_text("{}")  # the marker, last


def test_two_processes_asking_for_one_step_compute_it_once(settings, tmp_path):
    s = dataclasses.replace(settings, output_dir=tmp_path / "outputs")
    counter = tmp_path / "computed.txt"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_compute, args=(s, counter, 1.5)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(counter.read_text().splitlines()) == 1
    assert steps.ref(s, "stage1", 0).done()


def test_a_step_killed_midway_is_emptied_and_redone(settings, tmp_path):
    s = dataclasses.replace(settings, output_dir=tmp_path / "outputs")
    step = steps.ref(s, "stage1", 0)
    counter = tmp_path / "computed.txt"
    ctx = multiprocessing.get_context("spawn")
    victim = ctx.Process(target=_compute, args=(s, counter, 60))
    victim.start()
    deadline = time.time() + 60
    while not (counter.exists() and counter.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    (step.dir / "half-written.h5").write_bytes(b"half")
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(10)
    assert not step.done()
    _compute(s, counter, 0)  # the next claim recomputes: the lock died with its holder
    assert step.done() and not (step.dir / "half-written.h5").exists()
    assert len(counter.read_text().splitlines()) == 2


# -- links ------------------------------------------------------------------------------------


def test_deleting_a_run_leaves_the_steps_it_shared(settings, tmp_path):
    import shutil

    s = dataclasses.replace(settings, output_dir=tmp_path / "outputs")
    step = steps.ref(s, "stage1", 0)
    with steps.claim(step, s):
        (step.dir / "done.json").write_text("{}")
    a, b = tmp_path / "outputs/runs/a", tmp_path / "outputs/runs/b"
    for run in (a, b):
        link = steps.link(run, step)
        assert link.is_symlink() and not os.path.isabs(os.readlink(link))
        assert steps.linked_steps(run) == {"stage1-fold0": step.name}
    shutil.rmtree(a)
    assert (b / "stage1/fold0/done.json").is_file() and step.done()


def test_a_link_never_replaces_a_real_folder(settings, tmp_path):
    s = dataclasses.replace(settings, output_dir=tmp_path / "outputs")
    step = steps.ref(s, "stage1", 0)
    real = step.in_run(tmp_path / "outputs/runs/a")
    real.mkdir(parents=True)
    with pytest.raises(FileExistsError, match="expected a link"):
        steps.link(tmp_path / "outputs/runs/a", step)
