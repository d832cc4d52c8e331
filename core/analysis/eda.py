"""Exploratory tables for the review data: small pure functions returning DataFrames or dicts.

Nothing here plots or prints; ``core.analysis.plots`` draws and the EDA notebook shows. Lengths are
counted in characters (``len(text)``), the unit the character tokenizer and ``maxlen`` use.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)


def label_balance(labels: Sequence[int]) -> pd.DataFrame:
    """Rows per label (0 and 1 always listed) with their share of all rows."""
    counts = pd.Series(np.asarray(labels, dtype=int)).value_counts()
    counts = counts.reindex(sorted({0, 1} | set(counts.index)), fill_value=0)
    total = int(counts.sum())
    table = pd.DataFrame({"count": counts.astype(int), "share": counts / total if total else 0.0})
    table.index.name = "label"
    return table


def lengths(texts: Sequence[str]) -> pd.Series:
    """Character length of each text."""
    return pd.Series([len(t) for t in texts], dtype=int, name="length")


def describe_lengths(texts: Sequence[str]) -> pd.Series:
    """count, mean, std, min, the ``QUANTILES`` (as ``10%``…), max of the text lengths.

    ``std`` is the sample standard deviation (ddof=1) and quantiles interpolate linearly, both as
    pandas' ``describe`` (and numpy's defaults) do.
    """
    return lengths(texts).describe(percentiles=list(QUANTILES))


def length_table(train_texts: Sequence[str], test_texts: Sequence[str]) -> pd.DataFrame:
    """Length statistics side by side: one row per statistic, columns ``train`` and ``test``."""
    return pd.DataFrame(
        {"train": describe_lengths(train_texts), "test": describe_lengths(test_texts)}
    )


def length_by_label(texts: Sequence[str], labels: Sequence[int]) -> pd.DataFrame:
    """Length statistics per label: one row per statistic, one column per label (0, 1)."""
    labels = np.asarray(labels, dtype=int)
    _check_same_length(texts, labels)
    table = pd.DataFrame(
        {
            int(y): describe_lengths([t for t, lab in zip(texts, labels, strict=True) if lab == y])
            for y in sorted({0, 1} | set(labels.tolist()))
        }
    )
    table.columns.name = "label"
    return table


def duplicates_report(texts: Sequence[str], labels: Sequence[int] | None = None) -> dict:
    """How often identical texts repeat, and which of them carry both labels.

    Returns ``n_rows``; ``n_distinct``; ``n_duplicated_texts`` (distinct texts seen more than
    once); ``n_extra_rows`` (rows beyond each text's first occurrence, i.e. rows minus distinct);
    ``n_conflicting_texts`` and ``conflicts``, a DataFrame (``text``, ``rows``, ``positives``,
    ``negatives``) of texts with both labels, most frequent first — both None when ``labels`` is
    None (unlabelled data: unknown, not zero).
    """
    counts = Counter(texts)
    report = {
        "n_rows": len(texts),
        "n_distinct": len(counts),
        "n_duplicated_texts": sum(n > 1 for n in counts.values()),
        "n_extra_rows": len(texts) - len(counts),
    }
    if labels is None:
        return {**report, "n_conflicting_texts": None, "conflicts": None}
    labels = np.asarray(labels, dtype=int)
    _check_same_length(texts, labels)
    frame = pd.DataFrame({"text": list(texts), "label": labels})
    grouped = frame.groupby("text", sort=False)["label"].agg(["size", "sum"])
    grouped.columns = ["rows", "positives"]
    grouped["negatives"] = grouped["rows"] - grouped["positives"]
    both = grouped[(grouped["positives"] > 0) & (grouped["negatives"] > 0)]
    conflicts = (
        both.reset_index()
        .sort_values(["rows", "text"], ascending=[False, True], kind="stable")
        .reset_index(drop=True)[["text", "rows", "positives", "negatives"]]
    )
    return {**report, "n_conflicting_texts": len(conflicts), "conflicts": conflicts}


def overlap(
    train_texts: Sequence[str],
    test_texts: Sequence[str],
    train_labels: Sequence[int] | None = None,
) -> dict:
    """Test rows whose exact text also occurs in train.

    Returns ``n_test_rows`` (test rows with a train twin), ``share`` (of all test rows),
    ``n_distinct`` (distinct shared texts) and ``table`` (``text``, ``test_rows``, ``train_rows``
    and, given ``train_labels``, ``train_positive_share``), most test rows first.
    """
    train_counts, test_counts = Counter(train_texts), Counter(test_texts)
    shared = sorted(set(train_counts) & set(test_counts), key=lambda t: (-test_counts[t], t))
    table = pd.DataFrame(
        {
            "text": shared,
            "test_rows": [test_counts[t] for t in shared],
            "train_rows": [train_counts[t] for t in shared],
        }
    ).astype({"test_rows": int, "train_rows": int})
    if train_labels is not None:
        train_labels = np.asarray(train_labels, dtype=int)
        _check_same_length(train_texts, train_labels)
        positives = Counter(t for t, y in zip(train_texts, train_labels, strict=True) if y == 1)
        table["train_positive_share"] = [positives[t] / train_counts[t] for t in shared]
    n_rows = int(table["test_rows"].sum())
    return {
        "n_test_rows": n_rows,
        "share": n_rows / len(test_texts) if len(test_texts) else 0.0,
        "n_distinct": len(shared),
        "table": table,
    }


def top_chars(
    texts: Sequence[str], n: int | None = 30, labels: Sequence[int] | None = None
) -> pd.DataFrame:
    """The ``n`` most frequent characters (all when ``n`` is None), most frequent first.

    Columns: ``char``, ``count`` (occurrences), ``share`` (of all characters). Given ``labels``,
    also ``share_1`` / ``share_0`` — the fraction of label-1 / label-0 texts that contain the
    character (a text counts once however often it repeats the character) — and
    ``lean = share_1 - share_0``: positive means the character leans towards label 1.
    """
    counts = Counter(ch for t in texts for ch in t)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))  # ties: code point order
    ranked = ranked if n is None else ranked[:n]
    total = sum(counts.values())
    table = pd.DataFrame(ranked, columns=["char", "count"]).astype({"count": int})
    table["share"] = table["count"] / total if total else 0.0
    if labels is not None:
        labels = np.asarray(labels, dtype=int)
        _check_same_length(texts, labels)
        for y in (1, 0):
            group = [set(t) for t, lab in zip(texts, labels, strict=True) if lab == y]
            present = Counter(ch for chars in group for ch in chars)
            table[f"share_{y}"] = [present[c] / len(group) if group else 0.0 for c in table.char]
        table["lean"] = table["share_1"] - table["share_0"]
    return table


def unk_report(tokenizer, texts: Sequence[str]) -> dict:
    """What the tokenizer cannot map: ``[UNK]`` rate, affected texts, truncation at its maxlen.

    ``tokenizer`` is a ``core.data.tokenizer.CharTokenizer`` (any object with ``maxlen``,
    ``unk_rate(texts)`` and ``n_truncated(texts)`` works). As ``unk_rate`` does, only the first
    ``maxlen`` characters of each text — those the model sees — are counted. Returns scalars
    (``maxlen``, ``n_texts``, ``n_chars``, ``n_unk_chars``, ``unk_rate``, ``n_texts_with_unk``,
    ``n_truncated``, ``truncated_share``) and ``unknown_chars``, a DataFrame (``char``,
    ``count``) of the characters mapped to ``[UNK]``, most frequent first.
    """
    maxlen = int(tokenizer.maxlen)
    kept = [t[:maxlen] for t in texts]
    counts = Counter(ch for t in kept for ch in t)
    # Ask the tokenizer about each distinct character rather than reading its vocabulary, so the
    # report follows its rules exactly (e.g. whitespace maps to [unused1], not [UNK]).
    unknown = {ch for ch in counts if tokenizer.unk_rate([ch]) > 0}
    n_chars = sum(counts.values())
    n_unk = sum(counts[ch] for ch in unknown)
    n_truncated = int(tokenizer.n_truncated(list(texts)))
    ranked = sorted(((ch, counts[ch]) for ch in unknown), key=lambda kv: (-kv[1], kv[0]))
    return {
        "maxlen": maxlen,
        "n_texts": len(texts),
        "n_chars": n_chars,
        "n_unk_chars": n_unk,
        "unk_rate": n_unk / n_chars if n_chars else 0.0,
        "n_texts_with_unk": sum(any(ch in unknown for ch in t) for t in kept),
        "n_truncated": n_truncated,
        "truncated_share": n_truncated / len(texts) if len(texts) else 0.0,
        "unknown_chars": pd.DataFrame(ranked, columns=["char", "count"]).astype({"count": int}),
    }


def seen_in_other_folds(texts: Sequence[str], folds: Sequence[int]) -> np.ndarray:
    """True for each row whose exact text also sits in another fold.

    Such a validation row was, in effect, seen in training; the test file shares texts with the
    training file in about the same proportion, so plain K-fold mirrors the test situation.
    """
    frame = pd.DataFrame({"text": list(texts), "fold": np.asarray(folds)})
    return (frame.groupby("text")["fold"].transform("nunique") > 1).to_numpy()


def scalars(report: dict) -> dict:
    """The plain-number entries of a report dict (drops its tables), e.g. for a side-by-side
    ``pd.DataFrame({"train": scalars(a), "test": scalars(b)})``."""
    return {k: v for k, v in report.items() if not isinstance(v, pd.DataFrame | pd.Series)}


def _check_same_length(texts: Sequence[str], labels: np.ndarray) -> None:
    if len(texts) != len(labels):
        raise ValueError(
            f"expected one label per text, found {len(texts)} texts and {len(labels)} labels"
        )
