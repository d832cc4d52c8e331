"""The ensemble step: gather a run's folded stages (stages 1 and 2, and the students and the
distilled model's in-fold copies when on; a seed ensemble's other runs too), score the candidates
(core.ensembling.candidates), pick the final one, write ``<run>/ensemble/`` and the submission.

The headline's ``oof_auc`` is the nested figure of the whole procedure (each fold scored by the
candidate chosen without its labels); the candidate chosen on all OOF rows makes the submission
(``final``, its own honest figure ``final_oof_auc``). Serving computes stages 1 and 2: the headline
names the mix it serves (``served_mix``, core.ensembling.mix) and that mix's figure on the stored
out-of-fold scores (``served_oof_auc``), the served ensemble's nested figure beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from core.analysis.eda import seen_in_other_folds
from core.config import CONFIG_FILE, Settings
from core.data.reviews import read_labelled, read_unlabelled
from core.ensembling.candidates import (
    Blend,
    NestedChoice,
    candidates,
    choose_final,
    fold_mean,
    fold_table,
    honest_best_f1,
    nested_choice,
    rank_blend,
    results_table,
)
from core.ensembling.fold_outputs import StagePredictions, check_done, load_runs, load_stage
from core.ensembling.mix import SERVED_STAGES
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
    nested: NestedChoice
    headline: dict
    submission: Path
    members: list[dict]


def check_finished(run_dir: Path, settings: Settings) -> None:
    """Raise ``MissingOutputsError`` unless every fold of every stage is done: the ensemble's
    check before it writes anything (a notebook run by hand leaves no run folder behind)."""
    # Commands name the run's recorded settings once it has them, else the notebook's.
    runs = [(Path(run_dir), settings)] + [(default_run_dir(m), m) for m in settings.members()]
    for folder, own in runs:  # a seed ensemble's other runs too
        recorded = None if (folder / CONFIG_FILE).is_file() else own
        for stage in own.folded_stages:
            check_done(folder, stage, settings.n_folds, recorded)


def finalize(
    run_dir: str | Path,
    n_folds: int,
    test_path: str | Path,
    train_path: str | Path | None = None,
    members: list[tuple[str, Path]] = (),
    stages: tuple[str, ...] = SERVED_STAGES,
) -> Results:
    """Score every candidate on out-of-fold rows, write ``<run>/ensemble/`` and the submission.

    ``stages``: the run's folded stages (``Settings.folded_stages``), stages 1 and 2 first.
    ``members`` (``(what it is, run folder)``: a seed ensemble's other runs, finished runs to
    blend; ``core.runs.folder.members``) add the equal-weight rank averages of every run's stages:
    nothing fitted, so still honest (not servable: a rank needs the whole test file). With
    ``train_path``, the headline also splits the final OOF AUC by whether a row's exact text sits
    in another fold (about one row in six does, as one test row in six is in train).
    """
    run_dir = Path(run_dir)
    out = run_dir / "ensemble"
    loaded = {s: load_stage(run_dir, s, n_folds) for s in stages}
    folds_table = fold_table(loaded)
    blends = candidates(loaded)
    member_rows = []
    if members:
        runs = [run_dir, *(Path(m) for _, m in members)]
        per_stage = {s: load_runs(runs, s) for s in SERVED_STAGES}
        for loaded_runs in per_stage.values():
            blend = rank_blend(loaded_runs)
            blends[blend.name] = blend
        both = rank_blend(per_stage["stage1"] + per_stage["stage2"])
        both.name = f"rank average of {len(runs)} runs' stage1+stage2"
        blends[both.name] = both
        labels = loaded["stage1"].oof["label"]
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
    labels, folds = loaded["stage1"].oof["label"], loaded["stage1"].oof["fold"]
    table = results_table(blends, labels, folds)
    final = choose_final(table)
    best = blends[final]
    nested = nested_choice(blends, labels, folds)
    f1 = honest_best_f1(labels, best.fold_scores if best.fitted else best.oof, folds)
    test_ids = read_unlabelled(test_path).ids
    submission = write_submission(out / "submission.csv", best.test_ids, best.test, test_ids)
    rows = table.set_index("candidate")
    oof_row = folds_table.set_index("fold").loc["oof"]
    headline = {
        "final": final,
        "oof_auc": nested.oof_auc,  # nested: the choice of candidate and its weight
        "final_oof_auc": float(rows.loc[final, "oof_auc"]),  # the final as chosen on OOF rows
        "final_picks": {str(k): v for k, v in nested.picks.items()},
        "final_stages": [s for s in stages if s in (best.mix.stages if best.mix else final)],
        "f1_at_threshold": float(f1.f1),
        "threshold": float(f1.threshold),
        **{f"{s}_oof_auc": float(oof_row[s]) for s in stages},
        "n_train": int(len(labels)),
        "n_test": int(len(test_ids)),
    }
    headline.update(served_figures(blends, table, labels, folds, loaded))
    if member_rows:
        headline["members"] = member_rows
    if train_path is not None:
        texts = read_labelled(train_path).texts
        rows_order = loaded["stage1"].oof["row"].to_numpy()
        seen = seen_in_other_folds([texts[r] for r in rows_order], folds)
        headline["share_text_in_other_fold"] = float(seen.mean())
        headline["oof_auc_text_in_other_fold"] = auc(labels.to_numpy()[seen], nested.oof[seen])
        headline["oof_auc_text_only_in_own_fold"] = auc(labels.to_numpy()[~seen], nested.oof[~seen])
    write_csv(out / "fold_auc.csv", folds_table)
    write_csv(out / "candidates.csv", table)
    write_csv(
        out / "oof_final.csv",
        pd.DataFrame({"row": loaded["stage1"].oof["row"], "label": labels, "pred": nested.oof}),
    )
    write_json(out / "results.json", {"headline": headline, "candidates": table.to_dict("records")})
    return Results(
        loaded, folds_table, table, blends, final, nested, headline, submission, member_rows
    )


def served_figures(blends, table: pd.DataFrame, labels, folds, loaded) -> dict:
    """What serving computes: the best candidate of stages 1 and 2 chosen on all OOF rows, its
    mix, that mix applied to the stages' stored OOF scores (the figure of what is served, its
    weight in-sample), and the nested figure of choosing among those candidates."""
    own = {n: b for n, b in blends.items() if b.mix and set(b.mix.stages) <= set(SERVED_STAGES)}
    name = choose_final(table[table["candidate"].isin(own)])
    mix = own[name].mix
    scores = mix({s: loaded[s].oof["pred"].to_numpy() for s in mix.stages})
    return {
        "served": name,
        "served_mix": mix.as_dict(),
        "served_formula": str(mix),
        "served_oof_auc": auc(labels, scores),
        "served_nested_oof_auc": nested_choice(own, labels, folds).oof_auc,
    }
