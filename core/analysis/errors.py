"""Error analysis of a finished run's out-of-fold predictions (notebook 05_errors).

Every table here is built from ``<run>/ensemble/oof_final.csv`` (the final blend's out-of-fold
score of each training row, made by models that never saw the row), ``<run>/folds.csv`` and the
training file. Nothing here trains or scores; ``core.analysis.attribution`` explains single
sentences.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from core.analysis.eda import duplicates_report, seen_in_other_folds
from core.data.reviews import read_labelled
from core.metrics import auc
from core.runs.folder import MissingStageError

# Length buckets in characters (the texts are 5-19 characters long).
LENGTH_EDGES = (0, 8, 11, 14, 17, 10_000)


def oof_frame(run_dir: str | Path, train_path: str | Path) -> pd.DataFrame:
    """One row per training row: ``row, text, label, fold, score, length, length_bucket,
    in_other_fold`` (its exact text also sits in another fold), ``score`` being the final blend's
    out-of-fold score (a probability for a stage's fold mean, a normalised rank for rank blends).
    """
    run_dir = Path(run_dir)
    path = run_dir / "ensemble" / "oof_final.csv"
    if not path.is_file():
        raise MissingStageError(  # an expected error: one line, as the other missing steps
            f"{path}: not found — the error analysis reads the ensemble's "
            "out-of-fold scores; run notebooks/04_ensemble.ipynb on this "
            "run first (python -m core.pipeline does)"
        )
    oof = pd.read_csv(path).sort_values("row")
    folds = pd.read_csv(run_dir / "folds.csv").set_index("row")["fold"]
    train = read_labelled(train_path)
    if len(train) != len(oof) or not np.array_equal(train.labels[oof["row"]], oof["label"]):
        raise ValueError(
            f"{train_path}: its labels differ from {run_dir}/ensemble/oof_final.csv; "
            "pass the run's own train_path"
        )
    frame = pd.DataFrame(
        {
            "row": oof["row"].to_numpy(),
            "text": [train.texts[r] for r in oof["row"]],
            "label": oof["label"].to_numpy(),
            "fold": folds.loc[oof["row"]].to_numpy(),
            "score": oof["pred"].to_numpy(),
        }
    )
    frame["length"] = frame["text"].str.len()
    frame["length_bucket"] = length_bucket(frame["length"])
    frame["in_other_fold"] = seen_in_other_folds(frame["text"].tolist(), frame["fold"])
    return frame


def length_bucket(lengths) -> pd.Series:
    """``"up to 7"``, ``"8-10"``, …, ``"17+"`` for each length (``LENGTH_EDGES``), as an ordered
    category."""
    edges = LENGTH_EDGES
    names = [f"{lo}-{hi - 1}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    names[0], names[-1] = f"up to {edges[1] - 1}", f"{edges[-2]}+"
    return pd.cut(pd.Series(lengths), edges, right=False, labels=names)


def confident_errors(oof: pd.DataFrame, n: int = 10) -> dict[str, pd.DataFrame]:
    """The ``n`` most confident wrong predictions each way: label 0 scored highest ("false
    positives") and label 1 scored lowest ("false negatives")."""
    columns = ["text", "label", "score", "fold", "in_other_fold"]
    negatives, positives = oof[oof["label"] == 0], oof[oof["label"] == 1]
    return {
        "label 0, scored highest": negatives.nlargest(n, "score")[columns],
        "label 1, scored lowest": positives.nsmallest(n, "score")[columns],
    }


def confident_right(oof: pd.DataFrame, n: int = 10) -> dict[str, pd.DataFrame]:
    """The ``n`` most confident right predictions each way, for contrast."""
    columns = ["text", "label", "score", "fold", "in_other_fold"]
    negatives, positives = oof[oof["label"] == 0], oof[oof["label"] == 1]
    return {
        "label 1, scored highest": positives.nlargest(n, "score")[columns],
        "label 0, scored lowest": negatives.nsmallest(n, "score")[columns],
    }


def auc_by(oof: pd.DataFrame, column: str) -> pd.DataFrame:
    """Out-of-fold AUC within each value of ``column``: ``rows``, ``positives``, ``auc`` (NaN
    where a group has one label only), then an ``all rows`` line."""
    rows = []
    for value, group in oof.groupby(column, observed=True, sort=True):
        rows.append(
            {
                column: str(value),
                "rows": len(group),
                "positives": int(group["label"].sum()),
                "auc": auc(group["label"], group["score"]),
            }
        )
    rows.append(
        {
            column: "all rows",
            "rows": len(oof),
            "positives": int(oof["label"].sum()),
            "auc": auc(oof["label"], oof["score"]),
        }
    )
    return pd.DataFrame(rows)


def conflicts(oof: pd.DataFrame, test_texts=None) -> pd.DataFrame:
    """Texts that carry both labels and how the model scored their rows: ``rows``,
    ``positives``, ``negatives``, ``positive_share`` (the best any single score can do), the mean,
    lowest and highest out-of-fold score of the text's rows, and ``test_rows`` (rows of the test
    file with that text, given ``test_texts``). Most rows first."""
    table = duplicates_report(oof["text"].tolist(), oof["label"].to_numpy())["conflicts"]
    scores = oof[oof["text"].isin(set(table["text"]))].groupby("text")["score"]
    table = table.join(scores.agg(["mean", "min", "max"]).add_prefix("score_"), on="text")
    table.insert(4, "positive_share", table["positives"] / table["rows"])
    if test_texts is not None:
        counts = Counter(test_texts)
        table["test_rows"] = [counts[t] for t in table["text"]]
    return table


def summary(oof: pd.DataFrame, n: int) -> dict:
    """The headline figures of the analysis, for ``<run>/errors/errors.json``."""
    by_length = auc_by(oof, "length_bucket").set_index("length_bucket")["auc"]
    by_seen = auc_by(oof, "in_other_fold").set_index("in_other_fold")["auc"]
    wrong = confident_errors(oof, n)
    return {
        "n_rows": len(oof),
        "oof_auc": auc(oof["label"], oof["score"]),
        "auc_by_length": {k: _finite(v) for k, v in by_length.items()},
        "auc_by_text_in_other_fold": {k: _finite(v) for k, v in by_seen.items()},
        "n_conflicting_texts": len(conflicts(oof)),
        "confident_errors": {k: v["text"].tolist() for k, v in wrong.items()},
    }


def live_box(explainer, placeholder: str = "服务热情，菜品新鲜"):
    """A text box (ipywidgets) that scores what is typed with ``explainer`` (a
    ``core.analysis.attribution.Explainer``) and shows its character credits; Enter scores."""
    import ipywidgets as widgets
    from IPython.display import HTML

    from core.analysis.attribution import to_html

    box = widgets.Text(
        placeholder=placeholder,
        description="sentence",
        continuous_update=False,
        layout=widgets.Layout(width="40em"),
    )
    out = widgets.Output()

    def show(change):
        text = change["new"].strip()
        out.outputs = ()
        if text:
            out.append_display_data(HTML(to_html([explainer.explain(text)])))

    box.observe(show, names="value")
    return widgets.VBox([box, out])


def _finite(value) -> float | None:
    return None if value is None or value != value else float(value)
