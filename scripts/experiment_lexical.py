"""Experiment (not part of the pipeline): does a character n-gram model add to a finished run?

    .venv/bin/python scripts/experiment_lexical.py outputs/runs/<run> [--stage stage2]

Fits TF-IDF over character 1–2-grams + logistic regression on each fold's training rows (the
run's own ``folds.csv``), scores its validation rows, and blends those OOF scores with the run's
stage by ``core.ensemble.stage_blend`` (rank blend, weight nested in the folds). Prints the OOF
AUC of each and of the blend. Kept out of the pipeline while its gain is below noise
(docs/experiments.md).
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from core.config import Settings
from core.data import read_labelled
from core.ensemble import load_stage, stage_blend
from core.io import read_json
from core.metrics import auc


def lexical_oof(texts: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Out-of-fold probabilities of a char n-gram logistic regression."""
    oof = np.empty(len(texts))
    for k in np.unique(folds):
        train = folds != k
        vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 2), sublinear_tf=True)
        model = LogisticRegression(C=4.0, max_iter=2000)
        model.fit(vectorizer.fit_transform(texts[train]), labels[train])
        oof[~train] = model.predict_proba(vectorizer.transform(texts[~train]))[:, 1]
    return oof


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--stage", default="stage2")
    args = parser.parse_args()
    settings = Settings()
    run_dir = settings.run_path(args.run_dir)
    data = read_labelled(read_json(run_dir / "run.json")["train_path"])  # the run's own file
    folds = pd.read_csv(run_dir / "folds.csv")["fold"].to_numpy()
    stage = load_stage(run_dir, args.stage, int(folds.max()) + 1)
    labels, texts = np.asarray(data.labels), np.asarray(data.texts)
    model = stage.oof["pred"].to_numpy(dtype=float)  # sorted by row, as the training file
    lexical = lexical_oof(texts, labels, folds)
    blend = stage_blend(model, lexical, labels, folds)
    print(f"OOF AUC  {args.stage}: {auc(labels, model):.4f}  char n-gram LR: "
          f"{auc(labels, lexical):.4f}  nested rank blend: {auc(labels, blend.oof):.4f} "
          f"(weight of {args.stage} {blend.weight}, per fold {blend.fold_weights})")  # fmt: skip


if __name__ == "__main__":
    main()
