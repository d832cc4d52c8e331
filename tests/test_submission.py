"""core.ensembling.submission: each competition check fails loudly, and a failing write leaves no
file."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.ensembling.submission import SubmissionError, check_submission, write_submission

TEST_IDS = list(range(20))


def good():
    return list(TEST_IDS), list(np.linspace(0, 1, len(TEST_IDS)))


def _missing(ids, preds):
    return ids[:-1], preds[:-1]


def _duplicate(ids, preds):
    return ids + [ids[3]], preds + [0.5]


def _extra(ids, preds):
    return ids + [999], preds + [0.5]


def _set(i, value):
    def edit(ids, preds):
        preds = list(preds)
        preds[i] = value
        return ids, preds

    return edit


# Each case breaks one check; the message part holds for a frame and for a file read as text.
CASES = {
    "missing ID": (_missing, "ID check: 1 test IDs are missing (19)"),
    "duplicate ID": (_duplicate, "ID check: 1 IDs appear more than once (3 ×2)"),
    "extra ID": (_extra, "ID check: 1 IDs are not test IDs (999)"),
    "NaN": (_set(4, np.nan), "Prediction check: 1 predictions are NaN, empty or infinite (ID 4:"),
    "inf": (_set(4, np.inf), "Prediction check: 1 predictions are NaN, empty or infinite (ID 4:"),
    "above 1": (_set(5, 1.2), "Prediction check: 1 predictions are outside [0, 1] (ID 5:"),
    "below 0": (_set(6, -0.1), "Prediction check: 1 predictions are outside [0, 1] (ID 6:"),
    "non-float": (_set(7, "abc"), "Prediction check: 1 predictions are not floats (ID 7: 'abc')"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_check_frame_fails(case):
    edit, message = CASES[case]
    ids, preds = edit(*good())
    frame = pd.DataFrame({"ID": ids, "Prediction": pd.Series(preds, dtype=object)})
    with pytest.raises(SubmissionError) as e:
        check_submission(frame, TEST_IDS)
    assert message in str(e.value) and len(e.value.problems) == 1


@pytest.mark.parametrize("case", list(CASES))
def test_check_file_fails(tmp_path, case):
    edit, message = CASES[case]
    ids, preds = edit(*good())
    path = tmp_path / "sub.csv"
    lines = ["ID,Prediction"] + [f"{i},{p}" for i, p in zip(ids, preds, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SubmissionError) as e:
        check_submission(path, TEST_IDS)
    assert message in str(e.value) and len(e.value.problems) == 1
    assert str(e.value).startswith(f"{path} failed 1 submission check(s):")


@pytest.mark.parametrize("header", ["id,Prediction", "ID,prediction", "ID,Prediction,extra", ""])
def test_wrong_header(tmp_path, header):
    path = tmp_path / "sub.csv"
    path.write_text(header + "\n" + "".join(f"{i},0.5\n" for i in TEST_IDS))
    with pytest.raises(SubmissionError, match="header check: expected header exactly ID,Predic"):
        check_submission(path, TEST_IDS)
    frame = pd.DataFrame({"ID": TEST_IDS, "prediction": 0.5})
    with pytest.raises(SubmissionError, match="header check"):
        check_submission(frame, TEST_IDS)


def test_messages_count_and_cap_examples():
    frame = pd.DataFrame({"ID": TEST_IDS[:5], "Prediction": 0.5})
    with pytest.raises(SubmissionError) as e:
        check_submission(frame, TEST_IDS)
    assert "15 test IDs are missing (5, 6, 7, 8, 9, … (15 in all))" in str(e.value)
    assert "expected each of the 20 test IDs exactly once" in str(e.value)


def test_float_ids_are_not_silently_matched():
    frame = pd.DataFrame({"ID": np.array(TEST_IDS, dtype=float), "Prediction": 0.5})
    with pytest.raises(SubmissionError, match=r"IDs are not test IDs \(0\.0, 1\.0"):
        check_submission(frame, TEST_IDS)


def test_write_round_trip(tmp_path):
    ids, preds = good()
    path = write_submission(tmp_path / "sub.csv", ids[::-1], preds, TEST_IDS)
    assert path.read_text().splitlines()[0] == "ID,Prediction"
    back = check_submission(path, TEST_IDS)
    assert back["ID"].tolist() == ids[::-1] and np.allclose(back["Prediction"], preds)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub.csv"]  # no temporary left


@pytest.mark.parametrize("case", list(CASES))
def test_failing_write_leaves_no_file(tmp_path, case):
    edit, message = CASES[case]
    path = tmp_path / "sub.csv"
    with pytest.raises(SubmissionError) as e:
        write_submission(path, *edit(*good()), TEST_IDS)
    assert message in str(e.value) and f"nothing was written: {path} was not created" in str(
        e.value
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", list(CASES))
def test_failing_write_keeps_previous_file(tmp_path, case):
    edit, _ = CASES[case]
    path = write_submission(tmp_path / "sub.csv", *good(), TEST_IDS)
    before = path.read_bytes()
    with pytest.raises(SubmissionError, match=f"nothing was written: {path} was left unchanged"):
        write_submission(path, *edit(*good()), TEST_IDS)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub.csv"]


def test_length_mismatch_is_refused(tmp_path):
    ids, preds = good()
    with pytest.raises(SubmissionError, match="20 IDs but 19 predictions"):
        write_submission(tmp_path / "sub.csv", ids, preds[:-1], TEST_IDS)
    assert not (tmp_path / "sub.csv").exists()
