"""Blend finished runs (other seeds, encoders or machines) by an equal-weight rank average.

    python -m core.blend RUN RUN [RUN ...] [--stage stage1] [--out FILE]

Every run must have finished the stage on the same training file and folds (both checked);
``core.candidates.rank_blend`` averages normalised ranks of the runs' out-of-fold predictions and of
their fold-mean test predictions. No weight is fitted, so no row's label is used. Prints each
run's OOF AUC and the blend's, and with ``--out`` writes the blend's test predictions as a
checked submission (inside ``outputs/``).
"""

from __future__ import annotations

import argparse

from core.candidates import rank_blend
from core.config import Settings
from core.data import read_unlabelled
from core.fold_outputs import load_runs
from core.io import read_json
from core.metrics import auc
from core.submission import write_submission


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m core.blend", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("runs", nargs="+", help="finished run folders (inside outputs/)")
    parser.add_argument("--stage", default="stage1", choices=("stage1", "stage2"))
    parser.add_argument("--out", help="write the blend's submission here (inside outputs/)")
    parser.add_argument("--test-path", default="data/test_handout.txt", help="the scored file")
    args = parser.parse_args(argv)
    if len(args.runs) < 2:
        parser.error("expected at least two runs to blend")
    settings = Settings(test_path=args.test_path)
    runs = [settings.run_path(r, "run folder") for r in args.runs]
    sha = {read_json(run / "run.json")["train_sha256"] for run in runs}
    if len(sha) > 1:
        raise SystemExit(f"the runs were trained on different files (sha256 {sorted(sha)})")
    stages = load_runs(runs, args.stage)
    blend = rank_blend(stages)
    labels = stages[0].oof["label"].to_numpy()
    for run, st in zip(runs, stages, strict=True):
        print(f"{run.name}: {args.stage} OOF AUC {auc(labels, st.oof['pred']):.4f}")
    print(f"{blend.name}: OOF AUC {auc(labels, blend.oof):.4f}")
    if args.out:
        out = settings.run_path(args.out, "--out")
        test_ids = read_unlabelled(settings.test_path).ids
        write_submission(out, blend.test_ids, blend.test, test_ids)
        print(f"submission: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
