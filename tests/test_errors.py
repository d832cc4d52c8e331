"""Error-analysis tables (core.analysis.errors) on a hand-made run folder."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from core.analysis import errors
from core.analysis.attribution import Explanation

# (label, text, fold, out-of-fold score)
ROWS = [
    (1, "菜品新鲜分量足", 0, 0.90),
    (0, "服务态度很好", 0, 0.80),  # label 0 scored high
    (1, "服务态度很好", 1, 0.70),  # the same text with both labels, in another fold
    (0, "还不错吧", 1, 0.10),
    (1, "烤鸭皮脆肉嫩，酱汁香浓", 1, 0.05),  # label 1 scored lowest
    (0, "一般般吧", 2, 0.20),
    (1, "甜品精致好看又好吃", 2, 0.60),
    (0, "价格偏贵了点", 2, 0.30),
]


@pytest.fixture
def run(tmp_path):
    train = tmp_path / "train.txt"
    train.write_text("".join(f"{y}\t{t}\n\n" for y, t, _, _ in ROWS), encoding="utf-8")
    run_dir = tmp_path / "run"
    (run_dir / "ensemble").mkdir(parents=True)
    rows = np.arange(len(ROWS))
    pd.DataFrame({"row": rows, "label": [r[0] for r in ROWS], "pred": [r[3] for r in ROWS]}).iloc[
        ::-1
    ].to_csv(run_dir / "ensemble" / "oof_final.csv", index=False)
    pd.DataFrame({"row": rows, "id": rows, "fold": [r[2] for r in ROWS]}).to_csv(
        run_dir / "folds.csv", index=False
    )
    return run_dir, train


def test_oof_frame_joins_texts_folds_and_scores(run):
    oof = errors.oof_frame(*run)
    assert oof["text"].tolist() == [r[1] for r in ROWS]  # in row order, whatever the file's
    assert oof["fold"].tolist() == [r[2] for r in ROWS]
    assert oof["score"].tolist() == [r[3] for r in ROWS]
    assert oof["in_other_fold"].tolist() == [False, True, True] + [False] * 5
    assert oof["length_bucket"].astype(str).tolist()[:5] == [
        "up to 7",
        "up to 7",
        "up to 7",
        "up to 7",
        "11-13",
    ]


def test_oof_frame_refuses_another_training_file(run, tmp_path):
    run_dir, _ = run
    other = tmp_path / "other.txt"
    other.write_text("".join(f"{1 - y}\t{t}\n\n" for y, t, _, _ in ROWS), encoding="utf-8")
    with pytest.raises(ValueError, match="pass the run's own train_path"):
        errors.oof_frame(run_dir, other)


def test_length_buckets():
    assert errors.length_bucket([5, 7, 8, 10, 11, 16, 17, 19]).astype(str).tolist() == [
        "up to 7",
        "up to 7",
        "8-10",
        "8-10",
        "11-13",
        "14-16",
        "17+",
        "17+",
    ]


def test_confident_errors_each_way(run):
    wrong = errors.confident_errors(errors.oof_frame(*run), n=2)
    high, low = wrong.values()
    assert high["text"].tolist() == ["服务态度很好", "价格偏贵了点"]  # label 0, highest first
    assert (high["label"] == 0).all()
    assert low["text"].tolist() == ["烤鸭皮脆肉嫩，酱汁香浓", "甜品精致好看又好吃"]
    assert (low["label"] == 1).all()


def test_auc_by_group_is_each_groups_auc(run):
    oof = errors.oof_frame(*run)
    table = errors.auc_by(oof, "in_other_fold").set_index("in_other_fold")
    for flag in (True, False):
        part = oof[oof["in_other_fold"] == flag]
        assert table.loc[str(flag), "auc"] == pytest.approx(roc_auc_score(part.label, part.score))
        assert table.loc[str(flag), "rows"] == len(part)
    assert table.loc["all rows", "auc"] == pytest.approx(roc_auc_score(oof.label, oof.score))
    by_length = errors.auc_by(oof, "length_bucket")
    assert by_length["rows"].iloc[:-1].sum() == len(oof)


def test_conflicts_show_how_each_row_was_scored(run):
    oof = errors.oof_frame(*run)
    table = errors.conflicts(oof, test_texts=["服务态度很好", "好吃", "服务态度很好"])
    [row] = table.to_dict("records")
    assert row["text"] == "服务态度很好" and row["rows"] == 2
    assert row["positives"] == 1 and row["negatives"] == 1 and row["positive_share"] == 0.5
    assert row["score_min"] == 0.70 and row["score_max"] == 0.80
    assert row["score_mean"] == pytest.approx(0.75) and row["test_rows"] == 2


def test_summary_lists_the_figures(run):
    s = errors.summary(errors.oof_frame(*run), n=1)
    assert s["n_rows"] == len(ROWS) and s["n_conflicting_texts"] == 1
    assert s["confident_errors"] == {
        "label 0, scored highest": ["服务态度很好"],
        "label 1, scored lowest": ["烤鸭皮脆肉嫩，酱汁香浓"],
    }
    assert set(s["auc_by_text_in_other_fold"]) == {"True", "False", "all rows"}


class StubExplainer:
    def explain(self, text):
        return Explanation(text, list(text), np.linspace(-1, 1, len(text)), 1.0, -1.0, 0.73)


def test_live_box_scores_what_is_typed():
    box = errors.live_box(StubExplainer())
    text, out = box.children
    text.value = "好吃<不贵>"
    [shown] = out.outputs
    page = shown["data"]["text/html"]
    assert "0.730" in page and page.count("<span") == len("好吃<不贵>") and "&lt;" in page
    text.value = ""
    assert out.outputs == ()


def test_before_the_ensemble_it_says_what_to_run(run):
    run_dir, train = run
    (run_dir / "ensemble" / "oof_final.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"oof_final\.csv: not found .*04_ensemble"):
        errors.oof_frame(run_dir, train)
