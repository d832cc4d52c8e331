"""The step store: keys hold exactly what determines a step; a step is computed once under its
lock; a killed step is redone; runs reach steps through links that deleting a run leaves alone."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import re
import signal
import time
from pathlib import Path

import pytest
from tiny_run import small_settings

from core.config import FIELDS, Settings
from core.ensembling.mix import Mix
from core.runs import steps
from core.runs.folder import RunMismatchError, default_run_dir, identity, run_folder

AMX = frozenset({"amx_bf16", "avx512_bf16"})


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    # float32: the same keys on every host (auto: tests/test_precision.py)
    return small_settings(tmp_path_factory.mktemp("store"), n_folds=3)


def keys(settings: Settings) -> dict[str, str]:
    return {s.label: s.key for s in steps.run_steps(settings)}


# -- keys -------------------------------------------------------------------------------------


def test_an_unknown_step_is_refused_naming_the_steps_there_are(settings):
    expected = f"no stored step 'stage3'; expected one of {', '.join(steps.SECTIONS)}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        steps.recipe(settings, "stage3")


TEACHER = Mix.blend("stage1", "stage2", 0.5)  # the distilled model's, for its key


def all_keys(settings: Settings) -> dict[str, str]:
    """Every stored step of a run with the students and distillation on (the distilled model
    taught by ``TEACHER``)."""
    on = dataclasses.replace(settings, students_enabled=True, distill_enabled=True)
    return {**keys(on), "distilled": steps.ref(on, steps.DISTILLED, teacher=TEACHER).key}


def folds(section: str) -> set[str]:
    return {f"{section}-fold{k}" for k in range(3)}


S0, EDA, D = {"stage0"}, {"eda"}, {"distilled"}
S1, S2, ST, DC = folds("stage1"), folds("stage2"), folds("students"), folds("distill")
AFTER_S1 = S1 | S2 | ST | DC | D  # what stage 1 teaches, and what is taught by that
AFTER_S0 = S0 | AFTER_S1
# Each setting of a run (students and distillation on): another value, and the steps whose key
# that value must change (every other step's key must stay). A setting missing here fails
# test_the_table_holds_every_setting: classify it before it can be reused wrongly.
KEYS = {
    "maxlen": (16, AFTER_S0 | EDA),
    "seed": (7, AFTER_S0),  # the split, and stage 0's seed unless stage0_seed
    "train_seed": (1, AFTER_S1),
    "predict_batch_size": (64, AFTER_S1),  # its padding moves predictions' last bits
    "precision": ("bfloat16", AFTER_S0),
    "stage0_epochs": (2, AFTER_S0),
    "stage0_lr": (2e-4, AFTER_S0),
    "stage0_batch_size": (16, AFTER_S0),
    "stage0_mask_rate": (0.2, AFTER_S0),
    "stage0_jit_compile": (False, AFTER_S0),
    "stage0_seed": (7, AFTER_S0),
    "stage1_epochs": (4, AFTER_S1),
    "stage1_patience": (2, AFTER_S1),
    "stage1_batch_size": (16, AFTER_S1),
    "stage1_lr": (3e-5, AFTER_S1),
    "stage1_schedule": ("constant", AFTER_S1),
    "stage1_warmup": (0.1, AFTER_S1),
    "stage1_layer_decay": (0.8, AFTER_S1),
    "stage1_group_by_length": (False, AFTER_S1),
    "stage1_pad_multiple": (8, AFTER_S1),
    "stage1_jit_compile": (False, AFTER_S1),
    "stage1_strategy": ("mirrored", AFTER_S1),
    "stage2_loss": ("bce", S2 | D),
    "stage2_lr": (5e-5, S2 | D),
    "stage2_epochs": (2, S2 | D),
    "stage2_patience": (2, S2 | D),
    "stage2_batch_size": (32, S2 | D),
    "students_target": ("hard", ST),
    "students_threshold": (0.3, set()),  # soft targets (the default): it thresholds none
    "students_weight": (0.5, ST),
    "students_epochs": (2, ST),
    "students_lr": (1e-4, ST),
    "distill_label_weight": (0.2, DC | D),
    "distill_layers": (1, DC | D),
    "distill_epochs": (2, DC | D),
    "distill_lr": (1e-4, DC | D),
    "blend_seeds": ([1], set()),  # a seed ensemble: other runs, no step of this one
    "blend_runs": (["run-x"], set()),
}
# Settings the table does not change by value, and the test that covers each.
ELSEWHERE = {
    "train_path": "test_the_fold_split_and_data_contents_are_keyed (contents, not paths)",
    "test_path": "test_the_fold_split_and_data_contents_are_keyed",
    "bert_dir": "test_auto_is_keyed_as_what_it_computes_in (weights_sha256), test_hf_convert",
    "output_dir": "no key: where the store is",
    "n_folds": "test_the_fold_split_and_data_contents_are_keyed (other fold labels)",
    "students_enabled": "test_students.py: off keeps every key, on adds its folds",
    "distill_enabled": "test_distill.py: off is the run it was, on adds its steps only",
}


def test_the_table_holds_every_setting():
    assert set(KEYS) | set(ELSEWHERE) == set(FIELDS), set(FIELDS) ^ (set(KEYS) | set(ELSEWHERE))
    assert not set(KEYS) & set(ELSEWHERE)


@pytest.mark.parametrize("name", KEYS)
def test_a_setting_changes_exactly_the_keys_that_read_it(settings, name):
    value, expected = KEYS[name]
    assert getattr(settings, name) != value
    before, after = all_keys(settings), all_keys(dataclasses.replace(settings, **{name: value}))
    assert set(before) == set(after)
    changed = {label for label in before if before[label] != after[label]}
    assert changed == expected, name
    on = dataclasses.replace(settings, students_enabled=True, distill_enabled=True)
    moved = identity(on) != identity(dataclasses.replace(on, **{name: value}))
    assert moved == (bool(expected) or name.startswith("blend_")), name


def test_a_hard_target_threshold_keys_the_students(settings):
    hard = dataclasses.replace(settings, students_target="hard")
    before, after = all_keys(hard), all_keys(dataclasses.replace(hard, students_threshold=0.3))
    assert {label for label in before if before[label] != after[label]} == ST


OFF = {  # a section that is off (its switch): another value of each of its other settings
    "stage0": ({"stage0_epochs": 0}, KEYS),
    "students": ({"students_enabled": False}, KEYS),
    "distill": ({"distill_enabled": False}, KEYS),
}


@pytest.mark.parametrize("section", OFF)
def test_a_section_that_is_off_keys_none_of_its_settings(settings, section):
    from core.config import SWITCHES

    switch, table = OFF[section]
    on = dataclasses.replace(settings, students_enabled=True, distill_enabled=True)
    off = dataclasses.replace(on, **switch)
    names = [
        n for n, f in FIELDS.items() if f.metadata["section"] == section and n != SWITCHES[section]
    ]
    assert names
    for name in names:
        other = dataclasses.replace(off, **{name: table[name][0]})
        assert keys(other) == keys(off), name
        assert identity(other) == identity(off) and default_run_dir(other) == default_run_dir(off)


def test_a_training_seed_shares_stage0_and_eda(settings):
    before, after = keys(settings), keys(dataclasses.replace(settings, train_seed=1))
    assert before["stage0"] == after["stage0"] and before["eda"] == after["eda"]
    # The seed of the split is the default training seed: naming it keeps every key.
    assert keys(dataclasses.replace(settings, train_seed=settings.seed)) == before


def test_the_distilled_model_is_keyed_by_the_ensemble_it_learns_from(settings):
    on = dataclasses.replace(settings, distill_enabled=True)

    def key(teacher, s=on):
        return steps.ref(s, steps.DISTILLED, teacher=teacher).key

    assert key(TEACHER) != key(Mix.blend("stage1", "stage2", 0.3))  # another served mix
    assert key(TEACHER) != key(Mix.of({"stage1": 1.0}))
    # Stage 2 keys it only when the mix holds stage 2.
    s2 = dataclasses.replace(on, stage2_lr=5e-5)
    alone = Mix.of({"stage1": 1.0})
    assert key(alone) == key(alone, s2) and key(TEACHER) != key(TEACHER, s2)


def test_auto_and_an_explicit_precision_are_one_key_only_when_they_compute_alike(
    settings, monkeypatch
):
    """On a CPU with bf16, ``auto`` computes in bfloat16 without XLA; an explicit bfloat16 keeps
    XLA on: another computation, another key. With XLA off too, it is ``auto``'s."""
    import core.model.precision as precision

    monkeypatch.setattr(precision, "detect", lambda: precision.Hardware(cpu_flags=AMX))
    settings = dataclasses.replace(settings, precision="auto")
    auto = keys(settings)
    explicit = dataclasses.replace(settings, precision="bfloat16")
    assert auto["stage0"] != keys(explicit)["stage0"]
    same = dataclasses.replace(explicit, stage0_jit_compile=False, stage1_jit_compile=False)
    assert keys(same) == auto and identity(same) == identity(settings)
    assert steps.recipe(settings, "stage1", 0)["jit_compile"] is False  # the effective compiler


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
