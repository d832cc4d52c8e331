"""The step store: each step's result kept once, under a key of exactly what determines it.

``<output_dir>/steps/<step>-<key>/`` holds one step's files: stage 0's encoder, the EDA summary,
one fold of stage 1, stage 2, the students or the distilled copies, the distilled model. The key
hashes the inputs' contents and the settings the step reads at their effective values (and its
upstream steps' keys), never a path (``core.config.PATHS``: the files' contents instead) nor a
setting of a section that is off. A run folder links each step it uses
(``<run>/stage1/fold0 -> ../../../steps/stage1-fold0-<key>``), so a changed setting recomputes
only the steps whose key it is in, and deleting a run deletes its links, never a step.

A step is computed under an exclusive lock on its key (``claim``): a second process asking for
it waits, then finds it done. Its marker file is written last; a step without one (a process
killed mid-step) is emptied and computed again, never half reused.

When a step is done, the store records its files (``files.json``: each file's size and sha256,
``seal``) under the same lock, before another process can reuse it, and every reuse checks them
(``check``: sizes always, sha256 where the files are read: reusing, reading an upstream step,
serving). A damaged step (a file truncated, changed or gone since) is never reused: the claim
that finds it says which file and why in one line, empties it and computes it again. A step
made before records existed is recorded the first time it is reused (stage 0's from its
encoder's ``MANIFEST.json``, checked first). Files added later or read by no result are not
recorded (``UNRECORDED``: the executed notebook's copies, ``key.json``, TensorBoard's events).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from core import hashing
from core.config import DEFAULTS, FOLDED_STAGES, PATHS, PRETRAIN_FILE, Settings
from core.io import atomic_symlink, read_json, write_json
from core.model.precision import effective
from core.weights.google_ckpt import MANIFEST_FILE, weights_sha256

STORE = "steps"
DISTILLED = "distilled"  # a run's distilled model (core.training.distill; read by core.serving)
SECTIONS = ("stage0", "eda", "stage1", "stage2", "students", "distill", DISTILLED)  # stored
FOLDED = FOLDED_STAGES  # the steps made once per fold
# The file a step writes last: its presence marks the step complete.
MARKERS = {
    "stage0": f"bert/{PRETRAIN_FILE}",
    "eda": "eda.json",
    **dict.fromkeys((*FOLDED, DISTILLED), "done.json"),
}
# The file a run-level step writes last into its run folder: its presence marks it complete
# (``ensemble``'s marks the run finished; the distilled model is a stored step, above).
RUN_MARKERS = {"ensemble": "ensemble/results.json", "errors": "errors/errors.json"}
KEY_FILE = "key.json"  # what the key was made of, for people and the runs comparison
RECORD = "files.json"  # a done step's files: each one's size and sha256 (``seal``)
LOCKS = ".locks"  # in the store: one lock file per step (``locked``)
# Never in a step's record: the record itself, what the key was made of (for people), the
# executed notebook a run copies in after the step is done (core.pipeline.execute.keep_notebook),
# and TensorBoard's event files (core.training.board.EVENTS), which no result is read from.
UNRECORDED = frozenset({RECORD, KEY_FILE, "notebook.ipynb", "notebook.html", "tensorboard"})
# Data settings keyed by the steps that read them specifically; every other data setting that
# changes a result (maxlen, ...) is in every step's key.
SPLIT = ("n_folds", "seed", "train_seed")
# Settings added after steps were first stored: keyed only away from the behaviour that came
# before them, so every step stored before keeps its key.
LATER = {
    "precision": "float32",
    # A prediction batch's padding width moves float32 predictions in their last bits.
    "predict_batch_size": 256,
    # The students are off by default and key only their own step (recipe), so a run without
    # them keeps the identity (and run folder) it had before they existed.
    **{f"students_{k}": v for k, v in DEFAULTS.stage("students").items()},
    **{f"distill_{k}": v for k, v in DEFAULTS.stage("distill").items()},  # the same, distillation
}


def fold_dir(run_dir: str | Path, stage: str, fold: int) -> Path:
    """A fold's folder in a run: the one place its layout is spelt."""
    return Path(run_dir) / stage / f"fold{fold}"


def keyed(name: str, value) -> bool:
    """Whether a setting (its effective value) is part of a key or a run's identity."""
    if name in PATHS:
        return False
    return LATER.get(name, object()) != value


def key_values(settings: Settings) -> dict:
    """The settings keys and identities hold: each acting setting (``Settings.acting``: none of a
    section that is off) at its effective value (``core.model.precision.effective``: ``auto``
    resolved, XLA as it runs), but paths and settings at their ``LATER`` defaults."""
    values = effective(settings).acting()
    return {k: v for k, v in values.items() if keyed(k, v)}


def inputs(settings: Settings) -> dict:
    """The contents the steps read: the data files and the starting weights."""
    return {
        "train": hashing.file_sha256(settings.train_path),
        "test": hashing.file_sha256(settings.test_path),
        "bert": weights_sha256(settings.bert_dir),
    }


def _section(values: dict, section: str) -> dict:
    """``values``' settings of one section, unprefixed; the data section's without the split."""
    names = [f.name for f in dataclasses.fields(Settings) if f.metadata["section"] == section]
    prefix = "" if section == "data" else f"{section}_"
    skip = SPLIT if section == "data" else ()
    return {n[len(prefix) :]: values[n] for n in names if n in values and n not in skip}


def recipe(settings: Settings, section: str, fold: int | None = None, teacher=None) -> dict:
    """What a step's key hashes: its inputs, the settings it reads, its upstream key.
    ``teacher``: the distilled model's, the served mix of its run's ensemble."""
    data, values = inputs(settings), key_values(settings)
    common = _section(values, "data")
    if section == "eda":  # reads no model: neither its precision nor its prediction batches
        common = {k: v for k, v in common.items() if k not in ("precision", "predict_batch_size")}
        return {"step": "eda", **data, **common}
    if section == "stage0":  # predicts nothing
        params = {**_section(values, "stage0"), "seed": settings.stage0_seed_value}
        common = {k: v for k, v in common.items() if k != "predict_batch_size"}
        return {"step": "stage0", **data, **common, **params}
    if section == "stage1":
        encoder = ref(settings, "stage0").key if settings.uses_stage0 else data["bert"]
        return {
            "step": "stage1",
            "encoder": encoder,
            "train": data["train"],
            "test": data["test"],
            **common,
            "n_folds": settings.n_folds,
            "seed": settings.seed,
            "fold": fold,
            "train_seed": settings.training_seed,
            **_section(values, "stage1"),
        }
    if section == "stage2":
        return {
            "step": "stage2",
            "stage1": ref(settings, "stage1", fold).key,
            **_section(values, "stage2"),
        }
    if section == "students":
        # Fold k's stage-1 key holds its data, encoder, split, seed and training settings;
        # the student adds its own, resolved (None: stage 1's value is the same student).
        hard = settings.students_target == "hard"
        return {
            "step": "students",
            "stage1": ref(settings, "stage1", fold).key,
            "target": settings.students_target,
            **({"threshold": settings.students_threshold} if hard else {}),
            "weight": settings.students_weight,
            "epochs": settings.students_epochs_value,
            "lr": settings.students_lr_value,
        }
    distill = {
        "label_weight": settings.distill_label_weight,
        "layers": settings.distill_layers,
        "epochs": settings.distill_epochs_value,
        "lr": settings.distill_lr_value,
    }
    if section == "distill":
        # Fold k's in-fold copy of the distilled model: its teacher is stage-1 fold k.
        return {"step": "distill", "stage1": ref(settings, "stage1", fold).key, **distill}
    if section == DISTILLED:
        # The model for serving: taught by the run's served mix of its stages' folds, as long as
        # its in-fold copies trained; a changed ensemble is another model.
        return {
            "step": DISTILLED,
            "teacher": teacher.as_dict(),
            "stages": {
                s: [ref(settings, s, k).key for k in range(settings.n_folds)]
                for s in teacher.stages
            },
            "copies": [ref(settings, "distill", k).key for k in range(settings.n_folds)],
            **distill,
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

    def check(self, hashes: bool = True, only=None) -> Damage | None:
        """``check`` of this step's folder."""
        return check(self.dir, hashes, only)

    def in_run(self, run_dir: Path) -> Path:
        """The path of this step inside a run folder (the link)."""
        if self.fold is None:
            return Path(run_dir) / self.section
        return fold_dir(run_dir, self.section, self.fold)


def ref(settings: Settings, section: str, fold: int | None = None, teacher=None) -> Step:
    """The stored step ``section`` (fold ``fold``) of these settings (``teacher``: the distilled
    model's, see ``recipe``)."""
    if section in FOLDED:
        settings.check_fold(fold)
    key = hashing.key(recipe(settings, section, fold, teacher))
    return Step(section, fold, key, Path(settings.output_dir) / STORE)


def run_steps(settings: Settings) -> list[Step]:
    """Every stored step of a run, in order: stage 0 (unless off), EDA, both stages' folds, the
    students' folds and the distilled model's in-fold copies (each when on)."""
    out = [ref(settings, "stage0")] if settings.uses_stage0 else []
    out.append(ref(settings, "eda"))
    for section in settings.folded_stages:
        out += [ref(settings, section, k) for k in range(settings.n_folds)]
    return out


class DamagedStepError(RuntimeError):
    """A stored step's file differs from what the store recorded when the step was done: the
    message names the file, why, and the command that computes the step again."""


@dataclass(frozen=True)
class Damage:
    """A file of a stored step that differs from its record: ``name`` (inside the step), why."""

    folder: Path  # the step's folder in the store
    name: str
    why: str

    @property
    def path(self) -> Path:
        return self.folder / self.name

    def __str__(self) -> str:
        return f"{self.name} {self.why}"


def recorded_files(folder: Path) -> list[str]:
    """The files of a step's folder its record lists: every file below it (``/``-separated
    relative paths), but hidden ones (temporary files) and ``UNRECORDED``."""
    folder = Path(folder)
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in UNRECORDED)
        rel = Path(root).relative_to(folder)
        for name in sorted(files):
            if not name.startswith(".") and (rel.parts or name not in UNRECORDED):
                out.append((rel / name).as_posix())
    return out


def seal(folder: Path) -> dict:
    """Write ``<folder>/files.json``: the size and sha256 of each of its ``recorded_files``
    (a done step's, under its lock). Return the record."""
    folder = Path(folder)
    files = {}
    for name in recorded_files(folder):
        path = folder / name
        files[name] = {"bytes": path.stat().st_size, "sha256": sha256(path)}
    record = {"step": folder.name, "files": files}
    write_json(folder / RECORD, record)
    return record


def read_record(folder: Path) -> dict | Damage | None:
    """A step's record ``{name: {"bytes", "sha256"}}``: its ``files.json``, or for a stage 0
    made before records its encoder's ``MANIFEST.json`` (core.weights, written with the
    folder); None without either; a Damage when the record itself is unreadable."""
    folder = Path(folder)
    path = folder / RECORD
    prefix, source = "", path
    if not path.is_file():
        source = folder / "bert" / MANIFEST_FILE
        prefix = "bert/"
        if not source.is_file() or not (folder / MARKERS["stage0"]).is_file():
            return None
    try:
        files = read_json(source)["files"]
        ok = isinstance(files, dict) and all(
            isinstance(v, dict) and isinstance(v["bytes"], int) and isinstance(v["sha256"], str)
            for v in files.values()
        )
    except (OSError, ValueError, TypeError, KeyError):
        ok = False
    if not ok:
        return Damage(folder, source.relative_to(folder).as_posix(), "is unreadable")
    return {prefix + name: v for name, v in files.items()}


def check(folder: Path, hashes: bool = True, only=None) -> Damage | None:
    """The first file of a stored step (its folder, or a run's link to it) that differs from its
    record: missing, of another size, or (with ``hashes``) of other contents; None when every
    file matches, or when the step has no record (made before records; ``seal``). ``only``:
    check just these files of it (the ones a reader reads)."""
    folder = Path(folder)
    record = read_record(folder)
    if record is None or isinstance(record, Damage):
        return record
    names = [n for n in record if only is None or n in only]
    for name in names:
        path, want = folder / name, record[name]["bytes"]
        if not path.is_file():
            return Damage(folder, name, f"is missing (recorded {want:,} bytes)")
        if (size := path.stat().st_size) != want:
            return Damage(folder, name, f"is {size:,} bytes, recorded {want:,}")
    for name in names if hashes else ():
        want = record[name]["sha256"]
        if (digest := sha256(folder / name)) != want:
            return Damage(
                folder,
                name,
                f"has other contents than recorded (sha256 {digest[:12]}…, recorded "
                f"{want[:12]}…; same size)",
            )
    return None


def sha256(path: Path) -> str:
    """A file's sha256, read now (``hashing.file_sha256`` remembers a file by its size and
    mtime, which a damaged copy may keep)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def sealed(folder: Path) -> bool:
    """Whether a step's folder has its record (``files.json``)."""
    return (Path(folder) / RECORD).is_file()


def lock_path(store: Path, name: str) -> Path:
    """The lock file of the step folder ``name`` of ``store``. Lock files stay when their step
    is removed: a process waiting on a removed file and one locking a new one at the same path
    would both hold "the" lock."""
    return Path(store) / LOCKS / f"{name}.lock"


@contextmanager
def locked(step: Step, waiting: str = "another process is computing it; waiting"):
    """Hold ``step``'s exclusive lock (an ``fcntl.flock`` on ``steps/.locks/<name>.lock``),
    saying ``waiting`` when another process holds it."""
    path = lock_path(step.store, step.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{step.label}: {waiting}", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield step
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def try_locked(store: Path, name: str):
    """Hold the lock of the step folder ``name`` if no other process holds it: yield True;
    yield False at once when one does (a running job computing or reusing it)."""
    path = lock_path(store, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def section_of(name: str) -> str:
    """The section of a step folder's name (``stage1-fold0-<key>``: stage1)."""
    return name.split("-", 1)[0]


def vet(step: Step) -> Damage | None:
    """Under ``step``'s lock: whether a done step can be reused. Its files are checked against
    its record (sizes and sha256); one made before records is recorded now. A damaged step is
    emptied (so it is computed again, whole) and its Damage returned."""
    if not step.done():
        return None
    damage = check(step.dir)
    if damage is not None:
        shutil.rmtree(step.dir)
        return damage
    if not sealed(step.dir):
        seal(step.dir)
    return None


@contextmanager
def claim(step: Step, settings: Settings | None = None, teacher=None):
    """Hold ``step``'s lock: wait while another process computes it. On entry a done step is
    checked (``vet``): a damaged one is said in one line and computed again; a step that is not
    done is emptied (a killed process's files are never reused) and its key recorded
    (``teacher``: the distilled model's, as ``recipe`` takes it). When the block leaves the step
    done, its files are recorded (``seal``) before the lock is released."""
    with locked(step):
        if (damage := vet(step)) is not None:
            print(f"{step.label}: {damage}: recomputing", flush=True)
        if not step.done():
            if step.dir.exists():
                shutil.rmtree(step.dir)
            step.dir.mkdir(parents=True)
            if settings is not None:
                made_of = recipe(settings, step.section, step.fold, teacher)
                write_json(step.dir / KEY_FILE, made_of)
        yield step
        if step.done() and not sealed(step.dir):
            seal(step.dir)


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
    for path in [run_dir / "stage0", run_dir / "eda", *folds, run_dir / DISTILLED]:
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
        link(run_dir, step)  # under the lock: gc never takes a step a run is about to link
    return step.in_run(Path(run_dir)) / MARKERS["eda"]
