"""core.analysis.eda: every table checked against small cases computed by hand (or by numpy)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.analysis import eda

STATS = ["count", "mean", "std", "min", "10%", "25%", "50%", "75%", "90%", "99%", "max"]


def test_label_balance_counts_and_shares():
    table = eda.label_balance([0, 1, 1, 0, 0])
    assert table.index.tolist() == [0, 1]
    assert table["count"].tolist() == [3, 2]
    assert table["share"].tolist() == pytest.approx([0.6, 0.4])


def test_label_balance_lists_a_missing_label():
    table = eda.label_balance(np.zeros(4, dtype=np.int8))
    assert table["count"].tolist() == [4, 0]
    assert table["share"].tolist() == [1.0, 0.0]


def test_length_table_matches_numpy():
    train = ["一二三四五", "一二三四五六", "一二三四五六七八", "一二三四五六七八九十"]  # 5 6 8 10
    test = ["好吃好吃好吃好", "不错不错不错"]  # 7 6
    table = eda.length_table(train, test)
    assert table.index.tolist() == STATS
    assert table.columns.tolist() == ["train", "test"]
    n = np.array([5, 6, 8, 10])
    col = table["train"]
    assert col["count"] == 4 and col["min"] == 5 and col["max"] == 10
    assert col["mean"] == pytest.approx(7.25)
    assert col["std"] == pytest.approx(np.std(n, ddof=1))  # sample sd, as describe() gives
    for q in eda.QUANTILES:
        assert col[f"{q:.0%}"] == pytest.approx(np.quantile(n, q))
    assert col["25%"] == pytest.approx(5.75)  # linear interpolation: 5 + 0.75 * (6 - 5)
    assert table["test"]["count"] == 2 and table["test"]["mean"] == pytest.approx(6.5)


def test_length_by_label_splits_by_label():
    table = eda.length_by_label(["好吃", "很好吃", "不错不错", "好"], [1, 0, 1, 0])
    assert table.columns.tolist() == [0, 1]
    assert table.index.tolist() == STATS
    assert table[1]["count"] == 2 and table[1]["mean"] == pytest.approx(3.0)  # 2 and 4
    assert table[0]["min"] == 1 and table[0]["max"] == 3


def test_length_by_label_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="2 texts and 3 labels"):
        eda.length_by_label(["好吃", "不错"], [1, 0, 1])


def test_duplicates_report_counts_and_conflicts():
    texts = ["好吃", "不错", "好吃", "服务好", "不错", "好吃", "环境好", "环境好"]
    labels = [1, 0, 0, 1, 0, 1, 0, 1]
    report = eda.duplicates_report(texts, labels)
    assert eda.scalars(report) == {
        "n_rows": 8,
        "n_distinct": 4,
        "n_duplicated_texts": 3,  # 好吃 ×3, 不错 ×2, 环境好 ×2
        "n_extra_rows": 4,  # 2 + 1 + 1 rows beyond the first occurrence
        "n_conflicting_texts": 2,  # 好吃 and 环境好 carry both labels; 不错 is always 0
    }
    conflicts = report["conflicts"]
    assert conflicts.columns.tolist() == ["text", "rows", "positives", "negatives"]
    assert conflicts.to_dict("records") == [
        {"text": "好吃", "rows": 3, "positives": 2, "negatives": 1},
        {"text": "环境好", "rows": 2, "positives": 1, "negatives": 1},
    ]


def test_duplicates_report_without_labels_leaves_conflicts_unknown():
    report = eda.duplicates_report(["好吃", "好吃", "不错"])
    assert report["n_duplicated_texts"] == 1 and report["n_extra_rows"] == 1
    assert report["n_conflicting_texts"] is None and report["conflicts"] is None


def test_duplicates_report_no_duplicates():
    report = eda.duplicates_report(["好吃", "不错"], [1, 0])
    assert report["n_duplicated_texts"] == 0 and report["n_extra_rows"] == 0
    assert report["n_conflicting_texts"] == 0 and report["conflicts"].empty


def test_overlap_counts_test_rows_with_a_train_twin():
    train = ["好吃", "不错", "不错", "服务好"]
    test = ["不错", "环境好", "不错", "服务好"]
    result = eda.overlap(train, test, train_labels=[1, 1, 0, 0])
    assert result["n_test_rows"] == 3 and result["n_distinct"] == 2
    assert result["share"] == pytest.approx(0.75)
    assert result["table"].to_dict("records") == [
        {"text": "不错", "test_rows": 2, "train_rows": 2, "train_positive_share": 0.5},
        {"text": "服务好", "test_rows": 1, "train_rows": 1, "train_positive_share": 0.0},
    ]


def test_overlap_without_labels_and_without_shared_texts():
    result = eda.overlap(["好吃"], ["不错", "很棒"])
    assert result["n_test_rows"] == 0 and result["share"] == 0.0 and result["n_distinct"] == 0
    assert result["table"].columns.tolist() == ["text", "test_rows", "train_rows"]


def test_top_chars_frequency():
    table = eda.top_chars(["好好吃", "不好", "吃"], n=2)
    assert table.columns.tolist() == ["char", "count", "share"]
    assert table["char"].tolist() == ["好", "吃"]  # 好 ×3, 吃 ×2, 不 ×1
    assert table["count"].tolist() == [3, 2]
    assert table["share"].tolist() == pytest.approx([3 / 6, 2 / 6])


def test_top_chars_by_label_counts_each_text_once():
    table = eda.top_chars(["好好吃", "不好", "吃"], n=None, labels=[1, 0, 1])
    rows = table.set_index("char")
    # label-1 texts: 好好吃, 吃; label-0 texts: 不好. 好 twice in one text still counts once.
    assert rows.loc["好", ["share_1", "share_0", "lean"]].tolist() == pytest.approx([0.5, 1, -0.5])
    assert rows.loc["吃", ["share_1", "share_0", "lean"]].tolist() == pytest.approx([1, 0, 1])
    assert rows.loc["不", ["share_1", "share_0", "lean"]].tolist() == pytest.approx([0, 1, -1])


def test_top_chars_breaks_ties_by_code_point():
    assert eda.top_chars(["乙甲", "甲乙"], n=None)["char"].tolist() == sorted("甲乙")


class StubTokenizer:
    """Stands in for CharTokenizer (whose import loads TensorFlow): same maxlen/unk_rate/
    n_truncated contract, with whitespace mapped to a non-[UNK] token as CharTokenizer does."""

    def __init__(self, vocab: str, maxlen: int):
        self.vocab, self.maxlen = set(vocab), maxlen

    def unk_rate(self, texts):
        kept = [ch for t in texts for ch in t[: self.maxlen]]
        unk = [ch not in self.vocab and not ch.isspace() for ch in kept]
        return sum(unk) / len(kept) if kept else 0.0

    def n_truncated(self, texts):
        return sum(len(t) > self.maxlen for t in texts)


def test_unk_report_counts_only_kept_characters():
    tok = StubTokenizer("好吃不错", maxlen=4)
    texts = ["好吃猫", "不错", "好 吃好吃狗", "鱼"]  # 狗 is past maxlen: not seen, not counted
    report = eda.unk_report(tok, texts)
    assert eda.scalars(report) == {
        "maxlen": 4,
        "n_texts": 4,
        "n_chars": 3 + 2 + 4 + 1,
        "n_unk_chars": 2,  # 猫, 鱼 (the space maps to [unused1])
        "unk_rate": pytest.approx(0.2),
        "n_texts_with_unk": 2,
        "n_truncated": 1,
        "truncated_share": 0.25,
    }
    assert report["unk_rate"] == pytest.approx(tok.unk_rate(texts))
    assert report["unknown_chars"].to_dict("records") == [
        {"char": "猫", "count": 1},
        {"char": "鱼", "count": 1},
    ]


def test_unk_report_empty_input():
    report = eda.unk_report(StubTokenizer("好", maxlen=4), [])
    assert report["unk_rate"] == 0.0 and report["truncated_share"] == 0.0
    assert report["unknown_chars"].empty


def test_scalars_drops_tables():
    report = {"n": 1, "rate": 0.5, "none": None, "table": pd.DataFrame({"a": [1]})}
    assert eda.scalars(report) == {"n": 1, "rate": 0.5, "none": None}


def test_seen_in_other_folds_marks_only_cross_fold_copies():
    from core.analysis.eda import seen_in_other_folds

    texts = ["好吃", "好吃", "很好", "很好", "一般"]
    folds = [0, 1, 0, 0, 1]
    # 好吃 is in folds 0 and 1; 很好 twice but only in fold 0; 一般 once.
    assert seen_in_other_folds(texts, folds).tolist() == [True, True, False, False, False]
