"""The ensemble step: gather both stages of a run, pick the final blend, write the submission."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from core.data import read_unlabelled
from core.ensemble import (
    Blend,
    StagePredictions,
    candidates,
    choose_final,
    fold_table,
    honest_best_f1,
    load_stage,
    results_table,
)
from core.io import write_csv, write_json
from core.submission import write_submission


@dataclass
class Results:
    stages: dict[str, StagePredictions]
    folds_table: pd.DataFrame
    table: pd.DataFrame
    blends: dict[str, Blend]
    final: str
    headline: dict
    submission: Path


def finalize(run_dir: str | Path, n_folds: int, test_path: str | Path) -> Results:
    """Score every candidate on out-of-fold rows, write ``<run>/ensemble/`` and the submission."""
    run_dir = Path(run_dir)
    out = run_dir / "ensemble"
    stages = {s: load_stage(run_dir, s, n_folds) for s in ("stage1", "stage2")}
    folds_table = fold_table(stages)
    blends = candidates(stages["stage1"], stages["stage2"])
    labels, folds = stages["stage1"].oof["label"], stages["stage1"].oof["fold"]
    table = results_table(blends, labels, folds)
    final = choose_final(table)
    best = blends[final]
    f1 = honest_best_f1(labels, best.fold_scores if best.fitted else best.oof, folds)
    test_ids = read_unlabelled(test_path).ids
    submission = write_submission(out / "submission.csv", best.test_ids, best.test, test_ids)
    row = table.set_index("candidate").loc[final]
    oof_row = folds_table.set_index("fold").loc["oof"]
    headline = {
        "final": final,
        "oof_auc": float(row["oof_auc"]),
        "f1_at_threshold": float(f1.f1),
        "threshold": float(f1.threshold),
        "stage1_oof_auc": float(oof_row["stage1"]),
        "stage2_oof_auc": float(oof_row["stage2"]),
        "stage1_weight": None if row["weight"] is None else float(row["weight"]),
        "n_train": int(len(labels)),
        "n_test": int(len(test_ids)),
    }
    write_csv(out / "fold_auc.csv", folds_table)
    write_csv(out / "candidates.csv", table)
    write_csv(out / "oof_final.csv", pd.DataFrame({"row": stages["stage1"].oof["row"],
                                                   "label": labels, "pred": best.oof}))  # fmt: skip
    write_json(out / "results.json", {"headline": headline, "candidates": table.to_dict("records")})
    return Results(stages, folds_table, table, blends, final, headline, submission)
