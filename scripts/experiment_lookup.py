"""Experiment (not part of the pipeline): does looking up a sentence's training label help?

    .venv/bin/python scripts/experiment_lookup.py outputs/runs/<run> [--stage stage1]

About one validation row in six has its exact text among the other folds' training rows. For
those rows it blends the run's rank score with the mean training label of that text,
``(1 - a) * rank + a * mean label``, for several ``a``, and prints the OOF AUC of each. The
lookup uses only the other folds' labels, as a test-time lookup would use the training file.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from core.config import Settings
from core.data import read_labelled
from core.ensemble import load_stage, rank_average
from core.io import read_json
from core.metrics import auc


def lookup_labels(texts: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Mean label of each row's text among the other folds' rows; NaN where it is not there."""
    out = np.full(len(texts), np.nan)
    for k in np.unique(folds):
        train = folds != k
        means = pd.Series(labels[train]).groupby(texts[train]).mean()
        out[~train] = pd.Series(texts[~train]).map(means).to_numpy()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--stage", default="stage1")
    args = parser.parse_args()
    run_dir = Settings().run_path(args.run_dir)
    data = read_labelled(read_json(run_dir / "run.json")["train_path"])
    folds = pd.read_csv(run_dir / "folds.csv")["fold"].to_numpy()
    stage = load_stage(run_dir, args.stage, int(folds.max()) + 1)
    labels, texts = np.asarray(data.labels), np.asarray(data.texts)
    model = stage.oof["pred"].to_numpy(dtype=float)
    looked_up = lookup_labels(texts, labels, folds)
    seen = ~np.isnan(looked_up)
    print(f"rows whose text is in another fold: {seen.mean():.1%}; on them, OOF AUC of the "
          f"model {auc(labels[seen], model[seen]):.4f}, of the looked-up label "
          f"{auc(labels[seen], looked_up[seen]):.4f}")  # fmt: skip
    ranks = rank_average([model])
    for a in (0.0, 0.1, 0.2, 0.3, 0.5, 1.0):
        blended = ranks.copy()
        blended[seen] = (1 - a) * ranks[seen] + a * looked_up[seen]
        print(f"a = {a:.1f}: OOF AUC {auc(labels, blended):.4f}")


if __name__ == "__main__":
    main()
