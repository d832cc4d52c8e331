"""Check exported models against the run they came from: parity with core.serving.predict on a test
file, and out-of-fold AUC with each training row scored by its own fold's model only.

    .venv/bin/python scripts/check_export.py --run outputs/runs/<run> \\
        --savedmodel outputs/export/<name>/1 --tflite outputs/export/<name>-lite/1 \\
        [--test-file data/test_handout.txt] [--model distilled]

Out of fold: the exports' ``fold_probability`` column of the fold that held a row out (that
fold's stage-1 and stage-2 heads mixed with the run's stage1_weight), so no row is scored by a
model that trained on it. The same mix of the run's own ``oof.csv`` files is printed beside it:
the float export should reproduce it row by row. A distilled model's exports (``--model
distilled``) have no folds: only the test-file comparison applies.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from core.config import Settings
from core.data.reviews import read_labelled, read_unlabelled
from core.ensembling.mix import served_mix
from core.io import read_json
from core.metrics import auc
from core.runs.steps import fold_dir
from core.serving.predict import MODELS, score


def by_length(score, texts: list[str], batch_size: int = 256) -> dict[str, np.ndarray]:
    """``score(batch)`` over batches of similar length (less padding), back in input order."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    parts = [
        score([texts[i] for i in order[s : s + batch_size]])
        for s in range(0, len(texts), batch_size)
    ]
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return {k: v[np.argsort(order, kind="stable")] for k, v in out.items()}


def savedmodel_scorer(path: Path):
    import tensorflow as tf

    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    return lambda texts: {k: v.numpy() for k, v in serve(texts=tf.constant(texts)).items()}


def tflite_scorer(path: Path):
    """``TFLiteModel`` from the ``tokenizer.py`` shipped beside ``model.tflite``."""
    spec = importlib.util.spec_from_file_location("export_tokenizer", path / "tokenizer.py")
    if spec is None or not (path / "model.tflite").is_file():
        raise SystemExit(f"--tflite {path}: expected model.tflite and tokenizer.py there")
    shipped = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shipped)
    return shipped.TFLiteModel(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="the run the models were exported from")
    parser.add_argument("--savedmodel", help="a SavedModel version folder (<out>/<version>)")
    parser.add_argument("--tflite", help="a TFLite version folder (<out>/<version>)")
    parser.add_argument("--test-file", help="also compare with core.serving.predict on this file")
    parser.add_argument("--skip-oof", action="store_true", help="only the test-file comparison")
    parser.add_argument(
        "--model",
        choices=MODELS,
        default="ensemble",
        help="what the exports hold (export's --model); distilled: the test-file comparison only",
    )
    args = parser.parse_args()
    if args.model == "distilled" and not args.test_file:
        parser.error("--model distilled: name a --test-file (a distilled export has no folds)")
    run_dir = Settings().run_path(args.run, "--run")
    run = read_json(run_dir / "run.json")
    mix = served_mix(read_json(run_dir / "ensemble" / "results.json")["headline"])
    models = {}
    if args.savedmodel:
        models["savedmodel"] = savedmodel_scorer(Path(args.savedmodel))
    if args.tflite:
        models["tflite"] = tflite_scorer(Path(args.tflite))

    if args.test_file:
        texts = read_unlabelled(args.test_file).texts
        expected = score(run_dir, texts, model=args.model)["probability"].to_numpy()
        print(
            f"test file {args.test_file}: {len(texts)} rows vs core.serving.predict ({args.model})"
        )
        for name, model in models.items():
            got = by_length(model, texts)["probability"]
            diff = np.abs(got - expected)
            print(
                f"  {name:10s} max |difference| {diff.max():.3g}, mean {diff.mean():.3g}, "
                f"Spearman {spearmanr(got, expected).statistic:.4f}"
            )

    if args.skip_oof or args.model == "distilled":
        return
    train = read_labelled(run["train_path"])
    folds = pd.read_csv(run_dir / "folds.csv")["fold"].to_numpy()
    rows = np.arange(len(folds))
    run_oof = np.full(len(rows), np.nan)
    for k in range(run["n_folds"]):
        s1, s2 = (pd.read_csv(fold_dir(run_dir, s, k) / "oof.csv") for s in ("stage1", "stage2"))
        run_oof[s1["row"]] = mix({"stage1": s1["pred"], "stage2": s2["pred"]})
    own = {}
    print(f"out of fold: {len(rows)} training rows, {run['n_folds']} folds, served mix {mix}")
    print(f"  run's oof.csv files, same mix   AUC {auc(train.labels, run_oof):.5f}")
    for name, model in models.items():
        own[name] = by_length(model, train.texts)["fold_probability"][rows, folds]
        diff = np.abs(own[name] - run_oof).max()
        print(f"  {name:10s} AUC {auc(train.labels, own[name]):.5f}  max |vs run's oof| {diff:.3g}")
    if len(own) == 2:
        gap = auc(train.labels, own["tflite"]) - auc(train.labels, own["savedmodel"])
        diff = np.abs(own["tflite"] - own["savedmodel"])
        print(
            f"  tflite - savedmodel: AUC {gap:+.5f}, max |probability| {diff.max():.3g}, "
            f"mean {diff.mean():.3g}"
        )


if __name__ == "__main__":
    main()
