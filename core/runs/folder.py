"""A run folder: its identity (parameters, data and weights hashes, package versions) and its folds.

The first notebook to touch a run folder records what the run is; every later notebook and every
resumed fold checks it still is, so results of different data or settings never mix.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import platform
import shlex
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold

from core import hashing
from core.config import (
    CONFIG_FILE,
    NOTEBOOKS,
    ConfigError,
    Settings,
    config_text,
    show,
)
from core.data.reviews import DataError, Dataset, file_sha256, show_path
from core.io import read_json, write_csv, write_json, write_text
from core.model.precision import record as precision_record
from core.runs import steps
from core.weights.google_ckpt import BertDirError, weights_sha256

PACKAGES = ("tensorflow", "tf-keras", "keras-bert", "keras-self-attention", "numpy", "scikit-learn")
# What makes two runs the same run: anything here differing means the old results do not apply.
IDENTITY = ("train_sha256", "test_sha256", "n_rows", "n_folds", "seed", "maxlen", "bert_sha256")
# In a run folder: the step that stopped the run's last main job, why and when (``mark_failed``).
FAILED = "failed.json"


class RunMismatchError(RuntimeError):
    """A run folder holds results made from other data or settings."""


class MissingStageError(FileNotFoundError):
    """A stage needs the outputs of an earlier one that are not there yet."""


def identity(settings: Settings) -> dict:
    """What a run is: every setting that changes a result, at its effective value
    (``core.runs.steps.key_values``: seeds resolved, none of a section that is off) and the
    contents of its train, test and weight files, not their paths (the same files elsewhere: the
    same run)."""
    values = steps.key_values(settings)
    values["train_seed"] = settings.training_seed
    if settings.uses_stage0:
        values["stage0_seed"] = settings.stage0_seed_value
    values["blend_runs"] = [blend_run_dir(settings, name).name for name in settings.blend_runs]
    data = steps.inputs(settings)
    values.update(train_sha256=data["train"], test_sha256=data["test"], bert_sha256=data["bert"])
    return values


def default_run_dir(settings: Settings) -> Path:
    """``<output_dir>/runs/run-<hash of identity()>``: the main job's folder for these settings,
    which a notebook run by hand with the same settings uses too."""
    return Path(settings.output_dir) / "runs" / f"run-{hashing.key(identity(settings), 10)}"


def blend_run_dir(settings: Settings, name: str) -> Path:
    """A run named in ``blend_runs``: a folder inside the output folder, or a run's name."""
    if "/" not in name:
        return Path(settings.output_dir) / "runs" / name
    return settings.run_path(name, "setting blend_runs")


def members(settings: Settings) -> list[tuple[str, Path]]:
    """The other runs an ensemble blends: ``(what it is, run folder)`` for each of
    ``blend_seeds`` (runs of these settings) and ``blend_runs`` (finished runs)."""
    out = [(f"train_seed {m.train_seed}", default_run_dir(m)) for m in settings.members()]
    out += [("finished run", blend_run_dir(settings, n)) for n in settings.blend_runs]
    return out


def check_blend_runs(settings: Settings) -> None:
    """Each of ``blend_runs`` is a finished run, or a ConfigError says how to finish it."""
    for name in settings.blend_runs:
        folder = blend_run_dir(settings, name)
        if not (folder / CONFIG_FILE).is_file():
            raise ConfigError(
                f"setting blend_runs: {show(folder)} is not a run folder (no {CONFIG_FILE}); "
                "name a folder under outputs/runs, e.g. outputs/runs/run-0123456789"
            )
        if not (folder / "ensemble" / "results.json").is_file():
            command = pipeline_command(folder, run_settings(folder, settings.output_dir))
            raise ConfigError(
                f"setting blend_runs: {show(folder)} has not finished; finish it first: {command}"
            )


def run_folder(
    settings: Settings, run_dir: str | Path | None = None, name: str = "parameter run_dir"
) -> Path:
    """The run folder (None: ``default_run_dir``), checked to hold no other run's results:
    a folder that records another identity is a RunMismatchError naming what differs. ``name``
    is how the user passed ``run_dir``: a command-line option (``--run-dir``) or a notebook's
    parameter."""
    path = default_run_dir(settings) if run_dir is None else settings.run_path(run_dir, name)
    check_identity(path, settings, name if name.startswith("--") else "-p run_dir")
    return path


def check_identity(run_dir: Path, settings: Settings, option: str = "-p run_dir") -> None:
    """Refuse a run folder whose ``run.json`` records other settings or input files (``option``
    passes another folder, for the message)."""
    record = Path(run_dir) / "run.json"
    if not record.is_file():
        return
    saved = read_json(record).get("identity")
    if saved is None:
        raise RunMismatchError(
            f"{record}: made by an older version of the suite (no recorded identity); "
            "delete that run folder and run again"
        )
    wanted = identity(settings)
    check_same(record, saved, wanted, sorted(set(saved) | set(wanted)), option)


def check_encoder(run_dir: Path) -> Path:
    """The starting encoder a finished run read its vocabulary and config from, checked to be
    the one it recorded (scoring new text with another vocabulary would be silently wrong)."""
    record = read_json(Path(run_dir) / "run.json")
    bert_dir = Path(record["bert_dir"])
    try:
        now = weights_sha256(bert_dir)
    except BertDirError as e:
        raise BertDirError(f"run {show(run_dir)}, its encoder: {e}") from None
    if record.get("bert_sha256", now) != now:
        raise RunMismatchError(
            f"{show(bert_dir)}: its files changed since run {show(run_dir)} was made (bert_sha256 "
            f"was {record['bert_sha256'][:12]}…, now {now[:12]}…); restore that folder (e.g. "
            "python -m core.weights --force for the default one) or use a run made from it"
        )
    return bert_dir


def check_servable(run_dir: Path) -> None:
    """A finished run a served model can reproduce: its own folds (a blend of several runs ranks
    a whole test file at once, which scoring one sentence cannot), on the encoder it recorded.
    A final that also blends another stage of the run serves its best blend of stages 1 and 2
    (``served_note``)."""
    results = Path(run_dir) / "ensemble" / "results.json"
    headline = read_json(results)["headline"] if results.is_file() else {}
    members = headline.get("members", [])
    if members and " runs' " in headline.get("final", ""):
        runs = ", ".join(f"outputs/runs/{m['run']}" for m in members)
        raise ConfigError(
            f"run {show(run_dir)}: its final is a blend of {len(members)} runs ({headline['final']}"
            f"), a rank average over a whole test file that one sentence cannot be scored by; "
            f"score or export one of its runs instead: --run with one of {runs}"
        )
    check_encoder(run_dir)


def served_note(run_dir: Path) -> str | None:
    """What a user is told when a run's final blends a stage serving does not compute (the
    students, the distilled model's in-fold copies): serving mixes stages 1 and 2 only."""
    results = Path(run_dir) / "ensemble" / "results.json"
    headline = read_json(results)["headline"] if results.is_file() else {}
    extra = [s for s in headline.get("final_stages", []) if s not in ("stage1", "stage2")]
    if not extra or "served" not in headline:
        return None
    return (
        f"note: run {show(run_dir)}'s final ({headline['final']}, OOF AUC "
        f"{headline['oof_auc']:.4f}) blends {' and '.join(extra)}; the ensemble served here is "
        f"its {headline['served']} (OOF AUC {headline['served_oof_auc']:.4f})"
    )


def make_folds(n_rows: int, n_folds: int, seed: int) -> np.ndarray:
    """Fold of every row: ``KFold(n_folds, shuffle=True, random_state=seed)``, as the reference."""
    folds = np.full(n_rows, -1, dtype=np.int64)
    for k, (_, valid) in enumerate(
        KFold(n_folds, shuffle=True, random_state=seed).split(np.arange(n_rows))
    ):
        folds[valid] = k
    return folds


def check_folds(data: Dataset, n_folds: int, seed: int) -> None:
    """Every fold can be scored: at least ``n_folds`` labelled rows, and both labels among each
    fold's validation rows (a fold of one label has no AUC). Raises a DataError naming the file."""
    where = show_path(data.path)
    if len(data) < n_folds:
        raise DataError(
            f"{where}: expected at least {n_folds} labelled rows for n_folds={n_folds}, found "
            f"{len(data)}; add rows, or lower n_folds (--set n_folds=2)",
            path=data.path,
        )
    folds = make_folds(len(data), n_folds, seed)
    for k in range(n_folds):
        labels = set(data.labels[folds == k].tolist())
        if len(labels) < 2:
            counts = np.bincount(data.labels, minlength=2)
            raise DataError(
                f"{where}: expected both labels among fold {k}'s validation rows (its AUC needs "
                f"them), found only label {labels.pop()}; the file holds {counts[1]} rows "
                f"labelled 1 and {counts[0]} labelled 0: add rows of the missing label, or lower "
                "n_folds",
                path=data.path,
            )


def open_run(run_dir: Path, settings: Settings, ids: np.ndarray) -> np.ndarray:
    """Record or check the run's identity and return the fold of every training row.

    ``ids`` are the training rows' IDs; they go into ``folds.csv`` so the fold file can be read
    on its own.
    """
    run_dir = Path(run_dir)
    record_settings(run_dir, settings)
    manifest = {
        "train_path": str(settings.train_path),
        "train_sha256": file_sha256(settings.train_path),
        "test_path": str(settings.test_path),
        "test_sha256": file_sha256(settings.test_path),
        "n_rows": int(len(ids)),
        "n_folds": settings.n_folds,
        "seed": settings.seed,
        "maxlen": settings.maxlen,
        "bert_dir": str(settings.bert_dir),
        "bert_sha256": weights_sha256(Path(settings.bert_dir)),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "identity": identity(settings),
        "precision": precision_record(settings.precision),  # what auto chose on this machine
    }
    path = run_dir / "run.json"
    if path.exists():
        check_same(path, read_json(path), manifest, (*IDENTITY, "identity"))
    else:
        write_json(path, manifest)

    folds = make_folds(len(ids), settings.n_folds, settings.seed)
    folds_path = run_dir / "folds.csv"
    if folds_path.exists():
        saved = pd.read_csv(folds_path)
        if not (
            np.array_equal(saved["fold"].to_numpy(), folds) and np.array_equal(saved["id"], ids)
        ):
            raise RunMismatchError(
                f"{folds_path}: the saved folds differ from KFold(n_splits={settings.n_folds}, "
                f"shuffle=True, random_state={settings.seed}) on {settings.train_path}; "
                "use a new run_dir for changed data"
            )
    else:
        write_csv(folds_path, pd.DataFrame({"row": np.arange(len(ids)), "id": ids, "fold": folds}))
    return folds


def open_stage(stage_dir: Path, params: dict) -> None:
    """Record a stage's parameters, or check a resumed stage was started with the same ones."""
    path = Path(stage_dir) / "params.json"
    if path.exists():
        check_same(path, read_json(path), params, tuple(params))
    else:
        write_json(path, params)


def check_same(path: Path, saved: dict, current: dict, keys, option: str = "-p run_dir") -> None:
    """Raise RunMismatchError listing every key in ``keys`` whose value changed; its fix passes
    another run folder with ``option`` (a notebook's ``-p run_dir``, the main job's
    ``--run-dir``)."""
    changed = [k for k in keys if saved.get(k) != _plain(current.get(k))]
    if changed:
        diffs = "; ".join(
            f"{k}: was {saved.get(k)!r}, now {_plain(current.get(k))!r}" for k in changed
        )
        raise RunMismatchError(
            f"{path} belongs to a run made differently ({diffs}). Results must not mix: pass a new "
            f"run_dir (e.g. {option} outputs/runs/<new name>) or delete that folder to start over"
        )


def _plain(value):
    # JSON turns tuples into lists and Paths into strings; compare in that form.
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def record_settings(run_dir: Path, settings: Settings, option: str = "-p run_dir") -> Path:
    """Write ``<run>/config.yaml`` (the settings that differ from the defaults), or check that the
    folder holds a run of these settings: one folder holds one configuration (``option``: as in
    ``check_same``). Settings that compute alike are one configuration (the identity: a setting
    of a stage that is off, one that changes no result, ``auto`` or what it resolves to, paths
    to the same files)."""
    path = Path(run_dir) / CONFIG_FILE
    if path.exists():
        if (Path(run_dir) / "run.json").is_file():  # what the run recorded when it was made
            check_identity(run_dir, settings, option)
        else:
            saved = Settings(**{**read_config_values(path), "output_dir": settings.output_dir})
            wanted, found = identity(settings), identity(saved)
            check_same(path, found, wanted, sorted(set(found) | set(wanted)), option)
    else:
        header = (
            "# Settings of this run that differ from core.config's defaults. Finish or\n"
            f"# repeat a step by hand: papermill <notebook> out.ipynb -f {show(path)}\n"
        )
        write_text(path, config_text(settings, header))
    return path


def read_config_values(path: Path) -> dict:
    import yaml

    return yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}


def run_settings(run_dir: Path, output_dir: str | Path | None = None) -> Settings:
    """The settings a run folder was made with (its ``config.yaml``)."""
    values = read_config_values(Path(run_dir) / CONFIG_FILE)
    if output_dir is not None:
        values["output_dir"] = output_dir
    return Settings(**values)


def encoder_dir(settings: Settings, run_dir: Path) -> Path:
    """The encoder stages 1 and 2 fine-tune: the stored stage-0 encoder of these settings, or
    ``bert_dir`` without stage 0. A missing one raises MissingStageError with the command that
    makes it."""
    if not settings.uses_stage0:
        return settings.bert_dir
    step = steps.ref(settings, "stage0")
    folder = step.dir / "bert"
    if not step.done():
        raise MissingStageError(
            f"{show(folder)}: this run's stage-0 encoder is not there yet (stage0_epochs="
            f"{settings.stage0_epochs}). Make it first: {step_command('stage0', run_dir, settings)}"
            " (or pass -p stage0_epochs 0 to fine-tune bert_dir as it is)"
        )
    check_upstream(step, step_command("stage0", run_dir, settings))
    return folder


def check_upstream(step: steps.Step, mend: str, only=None) -> None:
    """A done stored step another step is about to read, checked against its record (sizes and
    sha256; ``only``: the files it reads): a DamagedStepError names the damaged file and
    ``mend``, the command that computes the step again (its claim finds it damaged)."""
    if (damage := step.check(only=only)) is not None:
        raise steps.DamagedStepError(damaged_text(damage, mend))


def step_command(
    stage: str, run_dir: str | Path, settings: Settings, fold: int | None = None
) -> str:
    """The papermill command that makes ``stage`` (``fold``) of the run in ``run_dir``: the run's
    own ``config.yaml`` as parameters file (before it exists, the settings that differ from the
    defaults), and ``run_dir`` when it is not the folder those settings name."""
    run_dir = Path(run_dir)
    words = ["papermill", NOTEBOOKS.get(stage, f"<notebook for {stage}>"), "out.ipynb"]
    if (run_dir / CONFIG_FILE).is_file() and settings.changed():
        words += ["-f", show(run_dir / CONFIG_FILE)]
    else:  # no record yet (nothing of the run was made): the settings themselves
        for name, value in settings.changed().items():
            words += ["-p", name, str(value)]
    if fold is not None:
        words += ["-p", "fold", str(fold)]
    if run_dir.resolve() != _default_dir(settings):
        words += ["-p", "run_dir", show(run_dir)]
    return shlex.join(words)


def pipeline_command(run_dir: str | Path, settings: Settings) -> str:
    """The main-job command that makes every missing step of the run in ``run_dir``."""
    run_dir = Path(run_dir)
    words = ["python", "-m", "core.pipeline"]
    if (run_dir / CONFIG_FILE).is_file() and settings.changed():
        words += ["--config", show(run_dir / CONFIG_FILE)]
    else:
        words += [w for k, v in settings.changed().items() for w in ("--set", f"{k}={v}")]
    if run_dir.resolve() != _default_dir(settings):
        words += ["--run-dir", show(run_dir)]
    return shlex.join(words)


def _default_dir(settings: Settings) -> Path | None:
    try:
        return default_run_dir(settings)
    except (OSError, ValueError):  # inputs gone: name the folder rather than fail on a hint
        return None


def fold_command(stage: str, fold: int, run_dir: str | Path, settings: Settings) -> str:
    """The papermill command that makes ``stage``'s fold ``fold`` in ``run_dir``."""
    return step_command(stage, run_dir, settings, fold)


# -- failed runs, damaged steps -------------------------------------------------------------------


def mark_failed(run_dir: Path, step: str | None, error: BaseException) -> None:
    """Record in ``<run>/failed.json`` that the run's main job stopped on ``error`` at ``step``
    (the runs table shows it; predict never offers to finish such a run). A main job that later
    runs that step (or the whole run) through clears it (``clear_failed``)."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    record = {"step": step, "reason": lines[0][:500], "error": type(error).__name__}
    write_json(Path(run_dir) / FAILED, {**record, "when": time.time()})


def read_failed(run_dir: Path) -> dict | None:
    """A run folder's ``failed.json``, None when its last main job did not fail."""
    path = Path(run_dir) / FAILED
    try:
        record = read_json(path) if path.is_file() else None
    except ValueError:
        return {"step": None, "reason": f"{FAILED} is unreadable"}
    return record if isinstance(record, dict) else None


def failed_text(record: dict) -> str:
    """A failed run as the table and predict say it: ``failed at <step>: <reason>``."""
    at = f" at {record['step']}" if record.get("step") else ""
    return f"failed{at}: {record.get('reason', '')}"


def clear_failed(run_dir: Path, steps_run: list[str] | None = None) -> None:
    """Remove the failure mark once a main job ran ``steps_run`` (labels; None: the whole run)
    through and they hold the step that had failed."""
    record = read_failed(run_dir)
    if record is None:
        return
    if steps_run is None or record.get("step") is None or record["step"] in steps_run:
        (Path(run_dir) / FAILED).unlink(missing_ok=True)


def stored_folder(path: Path) -> tuple[Path, str] | None:
    """The stored step folder a run's file lives in (through the run's link) and the file's
    name inside it; None for a file of the run's own."""
    real = Path(os.path.realpath(path))
    for parent in real.parents:
        if parent.parent.name == steps.STORE:
            return parent, real.relative_to(parent).as_posix()
    return None


def check_reads(files, mend: str) -> None:
    """The stored files a reader is about to load (paths through a run's links), checked against
    their steps' records (sizes and sha256): a DamagedStepError names the first damaged one and
    ``mend``, the command that computes its step again."""
    wanted: dict[Path, list[str]] = {}
    for path in files:
        if (found := stored_folder(path)) is not None:
            wanted.setdefault(found[0], []).append(found[1])
    for folder, names in wanted.items():
        if (damage := steps.check(folder, only=names)) is not None:
            raise steps.DamagedStepError(damaged_text(damage, mend))


def damaged_text(damage: steps.Damage, mend: str) -> str:
    """One line: the damaged file, why, and the command that computes its step again."""
    return (
        f"{show(damage.path)} {damage.why} (stored step {damage.folder.name}, damaged since it "
        f"was made); compute it again with: {mend}"
    )
