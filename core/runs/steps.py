"""The step store: each step's result kept once, under a key of exactly what determines it.

``<output_dir>/steps/<step>-<key>/`` holds one step's files: stage 0's encoder, the EDA summary,
one fold of stage 1 or stage 2. The key hashes the inputs' contents and the settings the step
reads (and its upstream step's key), never a setting that changes no result
(``core.config.NO_RESULT``) nor a path. A run folder links each step it uses
(``<run>/stage1/fold0 -> ../../../steps/stage1-fold0-<key>``), so a changed setting recomputes
only the steps whose key it is in, and deleting a run deletes its links, never a step.

A step is computed under an exclusive lock on its key (``claim``): a second process asking for
it waits, then finds it done. Its marker file is written last; a step without one (a process
killed mid-step) is emptied and computed again, never half reused.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from core import hashing
from core.config import DEFAULTS, NO_RESULT, PATHS, PRETRAIN_FILE, Settings
from core.io import atomic_symlink, write_json
from core.model.precision import choose
from core.weights.google_ckpt import weights_sha256

STORE = "steps"
SECTIONS = ("stage0", "eda", "stage1", "stage2", "students", "distill")  # kept in the store
FOLDED = ("stage1", "stage2", "students", "distill")  # the steps made once per fold
# The file a step writes last: its presence marks the step complete.
MARKERS = {
    "stage0": f"bert/{PRETRAIN_FILE}",
    "eda": "eda.json",
    "stage1": "done.json",
    "stage2": "done.json",
    "students": "done.json",
    "distill": "done.json",
}
DISTILLED = "distilled"  # a run's distilled model (core.training.distill; read by core.serving)
KEY_FILE = "key.json"  # what the key was made of, for people and the runs comparison
# Data settings keyed by the steps that read them specifically; every other data setting that
# changes a result (maxlen, ...) is in every step's key.
SPLIT = ("n_folds", "seed", "train_seed")
# Settings added after steps were first stored: keyed only away from the behaviour that came
# before them, so every step stored before keeps its key.
LATER = {
    "precision": "float32",
    # The students are off by default and key only their own step (recipe), so a run without
    # them keeps the identity (and run folder) it had before they existed.
    **{f"students_{k}": v for k, v in DEFAULTS.stage("students").items()},
    **{f"distill_{k}": v for k, v in DEFAULTS.stage("distill").items()},  # the same, distillation
}


def resolved(name: str, value):
    """A setting's value as keys hold it: ``precision`` as what it computes in on this machine
    (``auto`` is float32 on a CPU without bf16, so its steps are float32's)."""
    return choose(value, False).precision if name == "precision" else value


def keyed(name: str, value) -> bool:
    """Whether a setting is part of a key (or a run's identity) at this value."""
    if name in PATHS or name in NO_RESULT:
        return False
    return LATER.get(name, object()) != resolved(name, value)


def inputs(settings: Settings) -> dict:
    """The contents the steps read: the data files and the starting weights."""
    return {
        "train": hashing.file_sha256(settings.train_path),
        "test": hashing.file_sha256(settings.test_path),
        "bert": weights_sha256(settings.bert_dir),
    }


def _common(settings: Settings) -> dict:
    data = settings.stage("data")
    return {k: resolved(k, v) for k, v in data.items() if k not in SPLIT and keyed(k, v)}


def _section(settings: Settings, section: str) -> dict:
    return {k: v for k, v in settings.stage(section).items() if keyed(f"{section}_{k}", v)}


def recipe(settings: Settings, section: str, fold: int | None = None) -> dict:
    """What a step's key hashes: its inputs, the settings it reads, its upstream key."""
    data = inputs(settings)
    if section == "eda":  # reads no model: the precision is no part of it
        common = {k: v for k, v in _common(settings).items() if k != "precision"}
        return {"step": "eda", **data, **common}
    if section == "stage0":
        params = {**_section(settings, "stage0"), "seed": settings.stage0_seed_value}
        return {"step": "stage0", **data, **_common(settings), **params}
    if section == "stage1":
        encoder = ref(settings, "stage0").key if settings.uses_stage0 else data["bert"]
        return {
            "step": "stage1",
            "encoder": encoder,
            "train": data["train"],
            "test": data["test"],
            **_common(settings),
            "n_folds": settings.n_folds,
            "seed": settings.seed,
            "fold": fold,
            "train_seed": settings.training_seed,
            **_section(settings, "stage1"),
        }
    if section == "stage2":
        return {
            "step": "stage2",
            "stage1": ref(settings, "stage1", fold).key,
            **_section(settings, "stage2"),
        }
    if section == "students":
        # Fold k's stage-1 key holds its data, encoder, split, seed and training settings;
        # the student adds its own, resolved (None: stage 1's value is the same student).
        return {
            "step": "students",
            "stage1": ref(settings, "stage1", fold).key,
            "target": settings.students_target,
            "threshold": settings.students_threshold,
            "weight": settings.students_weight,
            "epochs": settings.students_epochs_value,
            "lr": settings.students_lr_value,
        }
    if section == "distill":
        # Fold k's in-fold copy of the distilled model: its teacher is stage-1 fold k.
        return {
            "step": "distill",
            "stage1": ref(settings, "stage1", fold).key,
            "label_weight": settings.distill_label_weight,
            "layers": settings.distill_layers,
            "epochs": settings.distill_epochs_value,
            "lr": settings.distill_lr_value,
        }
    raise ValueError(f"no stored step {section!r}; expected one of {', '.join(SECTIONS)}")


def hparams(settings: Settings, section: str, fold: int | None = None) -> dict:
    """A step's recipe without its content hashes: the settings TensorBoard shows as HParams."""
    hashes = ("train", "test", "bert", "encoder", "stage1")
    return {k: v for k, v in recipe(settings, section, fold).items() if k not in hashes}


@dataclass(frozen=True)
class Step:
    """One stored step: where it lives and how a run folder reaches it."""

    section: str
    fold: int | None
    key: str
    store: Path

    @property
    def label(self) -> str:
        return self.section if self.fold is None else f"{self.section}-fold{self.fold}"

    @property
    def name(self) -> str:
        return f"{self.label}-{self.key}"

    @property
    def dir(self) -> Path:
        return self.store / self.name

    @property
    def marker(self) -> Path:
        return self.dir / MARKERS[self.section]

    def done(self) -> bool:
        return self.marker.is_file()

    def in_run(self, run_dir: Path) -> Path:
        """The path of this step inside a run folder (the link)."""
        if self.fold is None:
            return Path(run_dir) / self.section
        return Path(run_dir) / self.section / f"fold{self.fold}"


def ref(settings: Settings, section: str, fold: int | None = None) -> Step:
    """The stored step ``section`` (fold ``fold``) of these settings."""
    if section in FOLDED:
        settings.check_fold(fold)
    key = hashing.key(recipe(settings, section, fold))
    return Step(section, fold, key, Path(settings.output_dir) / STORE)


def run_steps(settings: Settings) -> list[Step]:
    """Every stored step of a run, in order: stage 0 (unless off), EDA, both stages' folds, the
    students' folds and the distilled model's in-fold copies (each when on)."""
    out = [ref(settings, "stage0")] if settings.uses_stage0 else []
    out.append(ref(settings, "eda"))
    for section in settings.folded_stages:
        out += [ref(settings, section, k) for k in range(settings.n_folds)]
    return out


@contextmanager
def claim(step: Step, settings: Settings | None = None):
    """Hold ``step``'s lock: wait while another process computes it. On entry a step that is
    not done is emptied (a killed process's files are never reused) and its key recorded."""
    locks = step.store / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{step.name}.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{step.label}: another process is computing it; waiting", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            if not step.done():
                if step.dir.exists():
                    shutil.rmtree(step.dir)
                step.dir.mkdir(parents=True)
                if settings is not None:
                    write_json(step.dir / KEY_FILE, recipe(settings, step.section, step.fold))
            yield step
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def link(run_dir: str | Path, step: Step) -> Path:
    """Make ``run_dir``'s path of ``step`` a relative link to it (atomically); return the path."""
    path = step.in_run(Path(run_dir))
    path.parent.mkdir(parents=True, exist_ok=True)
    target = os.path.relpath(step.dir, path.parent)
    if path.is_symlink() and os.readlink(path) == target:
        return path
    if path.exists() and not path.is_symlink():
        raise FileExistsError(
            f"{path}: expected a link into {step.store}, found a folder; delete it and rerun"
        )
    return atomic_symlink(target, path)


def linked_steps(run_dir: str | Path) -> dict[str, str]:
    """``{label: step folder name}`` of every step a run folder links (what it is made of)."""
    run_dir = Path(run_dir)
    found = {}
    folds = [p for section in FOLDED for p in sorted(run_dir.glob(f"{section}/fold*"))]
    for path in [run_dir / "stage0", run_dir / "eda", *folds]:
        if path.is_symlink():
            label = path.name if path.parent == run_dir else f"{path.parent.name}-{path.name}"
            found[label] = Path(os.readlink(path)).name
    return found


def save_eda(settings: Settings, run_dir: str | Path, summary: dict) -> Path:
    """Store the EDA summary (once per key) and link it into ``run_dir``; return its path there."""
    step = ref(settings, "eda")
    with claim(step, settings):
        if not step.done():
            write_json(step.marker, summary)
    link(run_dir, step)
    return step.in_run(Path(run_dir)) / MARKERS["eda"]
