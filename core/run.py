"""A run folder: its identity (parameters, data and weights hashes, package versions) and its folds.

The first notebook to touch a run folder records what the run is; every later notebook and every
resumed fold checks it still is, so results of different data or settings never mix.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import importlib.metadata as metadata
import platform
import shlex
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold

from core.config import NOTEBOOKS, ROOT, Settings, resolve
from core.data import file_sha256, show_path
from core.io import read_json, write_csv, write_json
from core.weights.google_ckpt import check_bert_dir

# run.json's entries that are also notebook parameters (fold_command repeats them).
RECORDED = ("train_path", "bert_dir", "n_folds", "seed", "maxlen")
PACKAGES = ("tensorflow", "tf-keras", "keras-bert", "keras-self-attention", "numpy", "scikit-learn")
# What makes two runs the same run: anything here differing means the old results do not apply.
IDENTITY = ("train_sha256", "n_rows", "n_folds", "seed", "maxlen", "bert_sha256")


class RunMismatchError(RuntimeError):
    """A run folder holds results made from other data or settings."""


def weights_sha256(bert_dir: Path) -> str:
    """Hash of a BERT folder's config, vocab and checkpoint files: the weights a run used.

    The folder is checked first (``check_bert_dir`` without TensorFlow): a missing or damaged
    one is a BertDirError saying how to make it, not a DataError about competition files.
    """
    check_bert_dir(bert_dir, read_checkpoint=False)
    digest = hashlib.sha256()
    files = [bert_dir / "bert_config.json", bert_dir / "vocab.txt"]
    files += sorted(bert_dir.glob("bert_model.ckpt.*"))
    for path in files:
        digest.update(path.name.encode())
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def make_folds(n_rows: int, n_folds: int, seed: int) -> np.ndarray:
    """Fold of every row, from ``KFold(n_folds, shuffle=True, random_state=seed)`` as the seed."""
    folds = np.full(n_rows, -1, dtype=np.int64)
    for k, (_, valid) in enumerate(
        KFold(n_folds, shuffle=True, random_state=seed).split(np.arange(n_rows))
    ):
        folds[valid] = k
    return folds


def open_run(run_dir: Path, settings: Settings, ids: np.ndarray) -> np.ndarray:
    """Record or check the run's identity and return the fold of every training row.

    ``ids`` are the training rows' IDs; they go into ``folds.csv`` so the fold file can be read
    on its own.
    """
    run_dir = Path(run_dir)
    manifest = {
        "train_path": str(settings.train_path),
        "train_sha256": file_sha256(settings.train_path),
        "n_rows": int(len(ids)),
        "n_folds": settings.n_folds,
        "seed": settings.seed,
        "maxlen": settings.maxlen,
        "bert_dir": str(settings.bert_dir),
        "bert_sha256": weights_sha256(Path(settings.bert_dir)),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
    }
    path = run_dir / "run.json"
    if path.exists():
        check_same(path, read_json(path), manifest, IDENTITY)
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


def check_same(path: Path, saved: dict, current: dict, keys) -> None:
    """Raise RunMismatchError listing every key in ``keys`` whose value changed."""
    changed = [k for k in keys if saved.get(k) != _plain(current.get(k))]
    if changed:
        diffs = "; ".join(
            f"{k}: was {saved.get(k)!r}, now {_plain(current.get(k))!r}" for k in changed
        )
        raise RunMismatchError(
            f"{path} belongs to a run made differently ({diffs}). Results must not mix: pass a new "
            "run_dir (e.g. -p run_dir outputs/runs/<new name>) or delete that folder to start over"
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


def fold_command(
    stage: str,
    fold: int | None,
    run_dir: str | Path,
    notebooks: Mapping[str, str] | None = None,
    settings: Settings | None = None,
) -> str:
    """The papermill command that makes ``stage``'s fold ``fold`` in ``run_dir`` (``fold`` None:
    a step without folds, the ensemble).

    It repeats every parameter the run recorded (``run.json``, ``<stage>/params.json``) that
    differs from the notebook's default, so the fold it makes passes the run's checks (a
    pipeline run with stage 0, say, fine-tunes ``<run>/stage0/bert``, not the default encoder).
    A run without ``run.json`` yet records ``settings``' values when its first fold starts.
    """
    notebook = {**NOTEBOOKS, **(notebooks or {})}.get(stage, f"<notebook for {stage}>")
    words = ["papermill", notebook, "out.ipynb"]
    if fold is not None:
        words += ["-p", "fold", str(fold)]
    words += ["-p", "run_dir", str(run_dir)]
    recorded = recorded_parameters(Path(run_dir), stage, ROOT / notebook, settings)
    for name, value in recorded.items():
        words += ["-p", name, _shown(name, value)]
    return shlex.join(words)


def recorded_parameters(
    run_dir: Path, stage: str, notebook: Path, settings: Settings | None = None
) -> dict:
    """The run's recorded values of ``notebook``'s parameters, where they differ from its
    defaults, in the notebook's order; ``settings`` stand in for a missing ``run.json``.
    Empty when the notebook or the records are missing."""
    if not notebook.is_file():
        return {}
    recorded = {}
    if (run_dir / "run.json").is_file():
        run = read_json(run_dir / "run.json")
        recorded.update({k: run[k] for k in RECORDED if k in run})
    elif settings is not None:
        recorded.update({k: _plain(getattr(settings, k)) for k in RECORDED})
    if (run_dir / stage / "params.json").is_file():
        recorded.update(read_json(run_dir / stage / "params.json"))
    defaults = notebook_defaults(notebook)
    return {k: recorded[k] for k in defaults if k in recorded and recorded[k] != defaults[k]}


@functools.lru_cache
def notebook_defaults(notebook: Path) -> dict:
    """``notebook``'s parameters and their defaults as a run records them (paths resolved, as
    Settings does), in the notebook's order. Cached: one hint names every missing fold."""
    import papermill  # only on the error paths that use this: it takes a second to import

    defaults = {}
    for name, spec in papermill.inspect_notebook(str(notebook)).items():
        try:
            value = ast.literal_eval(spec["default"])
        except (ValueError, SyntaxError):
            value = spec["default"]
        if _is_path(name) and isinstance(value, str):
            value = str(resolve(value))
        defaults[name] = value
    return defaults


def run_settings(run_dir: Path, stage: str | None = None) -> Settings:
    """The settings a run was made with: its data, encoder and folds (``run.json``) and, with
    ``stage``, that stage's recorded parameters that are settings (``<stage>/params.json``)."""
    values = {k: v for k, v in read_json(run_dir / "run.json").items() if k in RECORDED}
    if stage is not None:
        fields = {f.name for f in dataclasses.fields(Settings)}
        params = read_json(run_dir / stage / "params.json")
        values.update({k: v for k, v in params.items() if k in fields})
    return Settings(**values)


def _is_path(name: str) -> bool:
    return name.endswith(("_path", "_dir"))


def _shown(name: str, value) -> str:
    """``value`` as papermill's ``-p`` reads it back; paths inside the repository relative."""
    return show_path(Path(value)) if _is_path(name) and isinstance(value, str) else str(value)
