"""Analysis (not the ensemble step): a run's stage 1 and stage 2 with a third folded stage of it,
blended as the ensemble blends an extra folded stage (``core.ensembling.candidates.candidates``:
each weight for fold k chosen on the other folds only), printed as the ensemble's candidate table.

    .venv/bin/python scripts/blend_stages.py --run outputs/runs/<run> --stage distill

For a stage the ensemble step does not blend (the distilled model's in-fold copies), this says
what blending it would give, with the same honest figures; the run's own results are untouched.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.ensembling.candidates import candidates, results_table  # noqa: E402
from core.ensembling.fold_outputs import load_stage  # noqa: E402
from core.io import read_json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a run folder with the three stages' folds")
    parser.add_argument("--stage", default="distill", help="the third stage (default distill)")
    args = parser.parse_args()
    run = Path(args.run)
    n_folds = read_json(run / "run.json")["n_folds"]
    stages = {st: load_stage(run, st, n_folds) for st in ("stage1", "stage2", args.stage)}
    labels, folds = (
        stages["stage1"].oof["label"].to_numpy(),
        stages["stage1"].oof["fold"].to_numpy(),
    )
    table = results_table(candidates(stages), labels, folds)
    print(f"run {run}: {args.stage} blended with stages 1 and 2 (honest: weights per fold chosen")
    print("on the other folds; in-sample figures for comparison only)\n")
    print(table[["candidate", "oof_auc", "oof_auc_in_sample", "mix"]].to_string(index=False))


if __name__ == "__main__":
    main()
