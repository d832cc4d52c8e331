"""The ensemble step: gather both stages of a run (its students too, when on; and its seed
ensemble's other runs), score the candidates (core.ensembling.candidates), pick the final one,
write ``<run>/ensemble/`` and the submission."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.analysis.eda import seen_in_other_folds
from core.config import CONFIG_FILE, Settings
from core.data.reviews import read_labelled, read_unlabelled
from core.ensembling.candidates import (
    Blend,
    candidates,
    choose_final,
    fold_mean,
    fold_table,
    honest_best_f1,
    rank_blend,
    results_table,
    with_students,
)
from core.ensembling.fold_outputs import StagePredictions, check_done, load_runs, load_stage
from core.ensembling.submission import write_submission
from core.io import write_csv, write_json
from core.metrics import auc
from core.runs.folder import default_run_dir


@dataclass
class Results:
    stages: dict[str, StagePredictions]
    folds_table: pd.DataFrame
    table: pd.DataFrame
    blends: dict[str, Blend]
    final: str
    headline: dict
    submission: Path
    members: list[dict]


def served_stage1_weight(headline: dict) -> float:
    """The stage mix scoring new sentences uses (core.serving): the stage-1 weight of the run's
    best blend of stages 1 and 2 (its final's, unless the final blends another stage too), 0.5
    for a rank average."""
    weight = headline.get("served_stage1_weight", headline.get("stage1_weight"))
    return 0.5 if weight is None else float(weight)


def stages_of(settings: Settings) -> tuple[str, ...]:
    """The stages a run's ensemble reads: both, and the students and the distilled model's
    in-fold copies when they are on."""
    return settings.folded_stages


def check_finished(run_dir: Path, settings: Settings) -> None:
    """Raise ``MissingOutputsError`` unless every fold of every stage is done: the ensemble's
    check before it writes anything (a notebook run by hand leaves no run folder behind)."""
    # Commands name the run's recorded settings once it has them, else the notebook's.
    runs = [(Path(run_dir), settings)] + [(default_run_dir(m), m) for m in settings.members()]
    for folder, own in runs:  # a seed ensemble's other runs too
        recorded = None if (folder / CONFIG_FILE).is_file() else own
        for stage in stages_of(own):
            check_done(folder, stage, settings.n_folds, recorded)


def finalize(
    run_dir: str | Path,
    n_folds: int,
    test_path: str | Path,
    train_path: str | Path | None = None,
    members: list[tuple[str, Path]] = (),
    students: bool = False,
    distill: bool = False,
) -> Results:
    """Score every candidate on out-of-fold rows, write ``<run>/ensemble/`` and the submission.

    ``members`` (``(what it is, run folder)``: a seed ensemble's other runs, finished runs to
    blend; ``core.runs.folder.members``) add the equal-weight rank averages of every run's stages:
    nothing fitted, so still honest. ``students``, ``distill``: the run's students, the distilled
    model's in-fold copies, are another stage each (``core.ensembling.candidates.with_students``);
    a seed ensemble's blends stay on stages 1 and 2. Serving mixes stages 1 and 2 only: when the
    final blends another stage, the headline names the best blend of the two it serves.
    With ``train_path``, the headline also splits the final OOF AUC by whether a row's exact text
    sits in another fold (about one row in six does, as one test row in six is in train).
    """
    run_dir = Path(run_dir)
    out = run_dir / "ensemble"
    extras = [s for s, on in (("students", students), ("distill", distill)) if on]
    names = ("stage1", "stage2", *extras)
    stages = {s: load_stage(run_dir, s, n_folds) for s in names}
    folds_table = fold_table(stages)
    blends = candidates(stages["stage1"], stages["stage2"])
    served = list(blends)  # the blends of stages 1 and 2: what serving can compute
    for extra in extras:
        blends.update(with_students(stages["stage1"], stages["stage2"], stages[extra]))
    member_rows = []
    if members:
        runs = [run_dir, *(Path(m) for _, m in members)]
        per_stage = {s: load_runs(runs, s) for s in ("stage1", "stage2")}
        for loaded in per_stage.values():
            blend = rank_blend(loaded)
            blends[blend.name] = blend
        both = rank_blend(per_stage["stage1"] + per_stage["stage2"])
        both.name = f"rank average of {len(runs)} runs' stage1+stage2"
        blends[both.name] = both
        labels = stages["stage1"].oof["label"]
        for i, run in enumerate(runs):
            member_rows.append(
                {
                    "run": run.name,
                    "member": "this run" if i == 0 else members[i - 1][0],
                    **{
                        f"{s}_oof_auc": auc(labels, fold_mean(per_stage[s][i]).oof)
                        for s in per_stage
                    },
                }
            )
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
        "stage1_weight": None if pd.isna(row["weight"]) else float(row["weight"]),
        "n_train": int(len(labels)),
        "n_test": int(len(test_ids)),
    }
    for extra in extras:
        headline[f"{extra}_oof_auc"] = float(oof_row[extra])
    if extras:
        # What serving and the error attributions mix: stage 1 and stage 2 only.
        headline["final_stages"] = [s for s in names if s in final]
        own = table[table["candidate"].isin(served)]
        serve = own.set_index("candidate").loc[choose_final(own)]
        headline["served"] = str(serve.name)
        headline["served_oof_auc"] = float(serve["oof_auc"])
        headline["served_stage1_weight"] = (
            None if pd.isna(serve["weight"]) else float(serve["weight"])
        )
    if member_rows:
        headline["members"] = member_rows
    if train_path is not None:
        texts = read_labelled(train_path).texts
        rows = stages["stage1"].oof["row"].to_numpy()
        seen = seen_in_other_folds([texts[r] for r in rows], folds)
        headline["share_text_in_other_fold"] = float(seen.mean())
        headline["oof_auc_text_in_other_fold"] = auc(
            labels.to_numpy()[seen], np.asarray(best.oof)[seen]
        )
        headline["oof_auc_text_only_in_own_fold"] = auc(
            labels.to_numpy()[~seen], np.asarray(best.oof)[~seen]
        )
    write_csv(out / "fold_auc.csv", folds_table)
    write_csv(out / "candidates.csv", table)
    write_csv(
        out / "oof_final.csv",
        pd.DataFrame({"row": stages["stage1"].oof["row"], "label": labels, "pred": best.oof}),
    )
    write_json(out / "results.json", {"headline": headline, "candidates": table.to_dict("records")})
    return Results(stages, folds_table, table, blends, final, headline, submission, member_rows)
