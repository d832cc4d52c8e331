"""A run's fold outputs: every fold's out-of-fold and test predictions of a stage, loaded and
checked (each training row in exactly one fold, the same test ids in every fold)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.config import CONFIG_FILE, Settings
from core.io import examples as _examples
from core.runs import steps
from core.runs.folder import fold_command, run_settings
from core.runs.steps import fold_dir

READ = ("done.json", "oof.csv", "test.csv")  # what the ensemble reads of a fold


class MissingOutputsError(FileNotFoundError):
    """Folds of a stage that have not finished (no ``done.json``); the message says how to run
    them."""

    def __init__(self, message: str, stage: str, folds: list[int], commands: list[str]):
        super().__init__(message)
        self.stage = stage
        self.folds = folds
        self.commands = commands


@dataclass
class StagePredictions:
    """One stage of a run: ``oof`` (row, id, label, fold, pred; sorted by row) and ``test``
    (id, then one prediction column ``fold<k>`` per fold)."""

    stage: str
    oof: pd.DataFrame
    test: pd.DataFrame

    @property
    def fold_columns(self) -> list[str]:
        return [c for c in self.test.columns if c != "id"]


def load_stage(
    run_dir: str | Path,
    stage: str,
    n_folds: int,
    settings: Settings | None = None,
) -> StagePredictions:
    """Read ``<run_dir>/<stage>/fold<k>/{oof,test}.csv`` of every fold, once all are done.

    Raises ``MissingOutputsError`` naming every unfinished fold and its command (for the run's
    ``settings``, by default those its ``config.yaml`` records), and
    ``ValueError`` when OOF rows are not each covered exactly once or test ids disagree.
    """
    run_dir = Path(run_dir)
    check_done(run_dir, stage, n_folds, settings)
    oofs, tests = [], []
    for k in range(n_folds):
        d = fold_dir(run_dir, stage, k)
        oof = _read_columns(d / "oof.csv", ["row", "id", "label", "pred"])
        oof["fold"] = k
        oofs.append(oof)
        tests.append(_read_columns(d / "test.csv", ["id", "pred"]))
    oof = pd.concat(oofs, ignore_index=True)[["row", "id", "label", "fold", "pred"]]
    _check_oof(oof, run_dir, stage, n_folds)
    oof = oof.sort_values("row", kind="stable").reset_index(drop=True)
    return StagePredictions(stage, oof, _join_tests(tests, run_dir, stage))


def check_done(run_dir: Path, stage: str, n_folds: int, settings: Settings | None = None) -> None:
    """Raise ``MissingOutputsError`` naming every unfinished fold of ``stage`` and its command
    (for ``settings``, by default those the run's ``config.yaml`` records)."""
    fold_dirs = [fold_dir(run_dir, stage, k) for k in range(n_folds)]
    missing, reasons = [], []
    for k, d in enumerate(fold_dirs):
        absent = [n for n in READ if not (d / n).exists()]
        if absent:
            missing.append(k)
            # done.json is written last, so without it the fold is unfinished; with it but
            # without the CSVs the folder was damaged after the fact — rerunning fixes both.
            damaged = "done.json" not in absent
            reasons.append(f" ({', '.join(absent)} missing despite done.json)" if damaged else "")
        elif (damage := steps.check(d, only=READ)) is not None:
            # A file cut short or changed since the step recorded it: its claim redoes it.
            missing.append(k)
            reasons.append(f" ({damage}: damaged since it was made)")
    if missing:
        settings = settings or (
            run_settings(run_dir) if (run_dir / CONFIG_FILE).exists() else Settings()
        )
        commands = [fold_command(stage, k, run_dir, settings) for k in missing]
        lines = [
            f'{stage} fold {k} is not finished in {run_dir}{why}: run "{cmd}"'
            for k, why, cmd in zip(missing, reasons, commands, strict=True)
        ]
        raise MissingOutputsError("\n".join(lines), stage, missing, commands)


def _read_columns(path: Path, columns: list[str]) -> pd.DataFrame:
    frame = pd.read_csv(path)
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        raise ValueError(f"{path}: expected columns {columns}, missing {absent}")
    if "pred" in columns and not np.isfinite(frame["pred"].to_numpy(dtype=float)).all():
        raise ValueError(f"{path}: 'pred' has NaN or infinite values; rerun this fold")
    return frame[columns].copy()


def _check_oof(oof: pd.DataFrame, run_dir: Path, stage: str, n_folds: int) -> None:
    """Every training row in exactly one fold's OOF, in the fold ``folds.csv`` assigns it to."""
    where = f"{stage} OOF predictions in {run_dir}"
    if not oof["label"].isin([0, 1]).all():
        raise ValueError(f"{where}: labels must be 0/1, found {sorted(oof['label'].unique())[:5]}")
    folds_path = run_dir / "folds.csv"
    if folds_path.exists():
        assigned = _read_columns(folds_path, ["row", "id", "fold"])
        expected = pd.Index(assigned["row"])
    else:
        # Without folds.csv only the rows' own range is known: trailing missing rows go unseen.
        assigned = None
        expected = pd.RangeIndex(int(oof["row"].max()) + 1)
    counts = oof["row"].value_counts()
    doubled = counts[counts > 1].sort_index()
    absent = expected.difference(pd.Index(counts.index))
    stray = pd.Index(counts.index).difference(expected)
    problems = []
    if len(doubled):
        folds_of = oof[oof["row"].isin(doubled.index)].groupby("row")["fold"].apply(list)
        ex = [f"row {r} in folds {folds_of[r]}" for r in doubled.index[:3]]
        problems.append(f"{len(doubled)} rows appear more than once ({'; '.join(ex)})")
    if len(absent):
        problems.append(f"{len(absent)} training rows are in no fold (rows {_examples(absent)})")
    if len(stray):
        problems.append(f"{len(stray)} rows are not training rows (rows {_examples(stray)})")
    if problems:
        raise ValueError(
            f"{where}: expected each of the {len(expected)} training rows exactly once across "
            f"the {n_folds} folds, but " + "; ".join(problems)
        )
    if assigned is not None:
        merged = oof.merge(assigned, on="row", suffixes=("", "_assigned"))
        wrong_fold = merged[merged["fold"] != merged["fold_assigned"]]
        if len(wrong_fold):
            ex = _examples(
                f"row {r.row} in fold{r.fold} but assigned to {r.fold_assigned}"
                for r in wrong_fold.itertuples()
            )
            raise ValueError(f"{where}: {len(wrong_fold)} rows disagree with folds.csv: {ex}")
        wrong_id = merged[merged["id"] != merged["id_assigned"]]
        if len(wrong_id):
            ex = _examples(
                f"row {r.row} id {r.id} vs {r.id_assigned}" for r in wrong_id.itertuples()
            )
            raise ValueError(f"{where}: {len(wrong_id)} row ids disagree with folds.csv: {ex}")


def _join_tests(tests: list[pd.DataFrame], run_dir: Path, stage: str) -> pd.DataFrame:
    """One frame ``id, fold0, ..., fold<K-1>`` in fold 0's id order, once the ids agree."""
    where = f"{stage} test predictions in {run_dir}"
    ids0 = pd.Index(tests[0]["id"])
    for k, t in enumerate(tests):
        ids = pd.Index(t["id"])
        if ids.has_duplicates:
            dup = ids[ids.duplicated()].unique()
            raise ValueError(f"{where}: fold{k} has {len(dup)} duplicated ids ({_examples(dup)})")
        if k and not ids.equals(ids0):
            only_k, only_0 = ids.difference(ids0), ids0.difference(ids)
            if len(only_k) or len(only_0):
                raise ValueError(
                    f"{where}: fold{k}'s test ids differ from fold0's: {len(only_k)} only in "
                    f"fold{k} ({_examples(only_k)}), {len(only_0)} only in fold0 "
                    f"({_examples(only_0)}); every fold must predict the same test file"
                )
    out = pd.DataFrame({"id": ids0.to_numpy()})
    for k, t in enumerate(tests):
        # Same id set, possibly another order: align on id rather than trust the row order.
        out[f"fold{k}"] = t.set_index("id")["pred"].reindex(ids0).to_numpy(dtype=float)
    return out


def load_runs(run_dirs: Sequence[str | Path], stage: str = "stage1") -> list[StagePredictions]:
    """One finished stage of each of several runs, checked to share their folds (``folds.csv``)
    and test ids, for ``rank_blend``."""
    runs = [Path(r) for r in run_dirs]
    if len(runs) < 2:
        raise ValueError(f"blend_runs: expected at least two runs, got {len(runs)}")
    folds = pd.read_csv(runs[0] / "folds.csv")
    for run in runs[1:]:
        if not pd.read_csv(run / "folds.csv").equals(folds):
            raise ValueError(
                f"{run / 'folds.csv'}: not the folds of {runs[0]}; runs to blend "
                "must be made from the same training file and split"
            )
    n_folds = int(folds["fold"].max()) + 1
    stages = [load_stage(run, stage, n_folds) for run in runs]
    ids = set(stages[0].test["id"])
    for run, st in zip(runs[1:], stages[1:], strict=True):
        if len(st.test) != len(ids) or set(st.test["id"]) != ids:
            raise ValueError(f"{run}: scored other test ids than {runs[0]}")
    return stages
