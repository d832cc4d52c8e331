"""core.data.reviews: the competition text format, the reference's CSV, and every error a user can
hit."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from core.config import ROOT
from core.data.reviews import DataError, Dataset, file_sha256, read_labelled, read_unlabelled

SHARED = ROOT.parent / "shared" / "data"


def write(tmp_path, name: str, content: str | bytes):
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def expect_error(reader, path, line: int | None, *phrases: str) -> DataError:
    with pytest.raises(DataError) as info:
        reader(path)
    err = info.value
    message = str(err)
    assert path.name in message
    assert "expected" in message
    if line is not None:
        assert f"line {line}:" in message
    for phrase in phrases:
        assert phrase in message, message
    assert err.path == path and err.line == line
    return err


# -- competition text format ----------------------------------------------------------------------


@pytest.mark.parametrize("tail", ["\n\n", "\n", ""])
def test_train_rows_with_or_without_final_blank_line(tmp_path, tail):
    path = write(tmp_path, "train.txt", "0\t酸菜鱼不错\n\n1\t烤鱼很入味\n\n0\t味道 一般" + tail)
    ds = read_labelled(path)
    assert isinstance(ds, Dataset) and len(ds) == 3
    assert ds.texts == ["酸菜鱼不错", "烤鱼很入味", "味道 一般"]
    assert ds.labels.dtype == np.int8 and ds.labels.tolist() == [0, 1, 0]
    assert ds.ids.dtype == np.int64 and ds.ids.tolist() == [0, 1, 2]
    assert ds.line_numbers == [1, 3, 5]
    assert ds.path == path


def test_test_rows_ids_are_row_index(tmp_path):
    path = write(tmp_path, "test.txt", "理由很简单\n\n面包很好吃\n\n")
    ds = read_unlabelled(path)
    assert ds.texts == ["理由很简单", "面包很好吃"]
    assert ds.labels is None
    assert ds.ids.tolist() == [0, 1] and ds.line_numbers == [1, 3]


def test_bom_and_crlf_are_accepted(tmp_path):
    raw = "\ufeff0\t酸菜鱼不错\r\n\r\n1\t烤鱼很入味\r\n\r\n".encode()
    ds = read_labelled(write(tmp_path, "train.txt", raw))
    assert ds.texts == ["酸菜鱼不错", "烤鱼很入味"] and ds.labels.tolist() == [0, 1]
    ds = read_unlabelled(write(tmp_path, "test.txt", "\ufeff面包\r\n\r\n蛋糕\r\n\r\n".encode()))
    assert ds.texts == ["面包", "蛋糕"]


def test_missing_file_says_where_to_put_it(tmp_path):
    path = tmp_path / "train_shuffle.txt"
    err = expect_error(read_labelled, path, None, "not found", "put the file there")
    assert str(path) in str(err)
    expect_error(read_unlabelled, tmp_path / "test.csv", None, "not found")


def test_folder_instead_of_file(tmp_path):
    path = tmp_path / "data.txt"
    path.mkdir()
    expect_error(read_labelled, path, None, "is a folder")


@pytest.mark.parametrize("content", [b"", b"\xef\xbb\xbf", b"\n\n\n", b"  \r\n"])
def test_empty_file(tmp_path, content):
    expect_error(read_labelled, write(tmp_path, "train.txt", content), None, "empty file")
    expect_error(read_unlabelled, write(tmp_path, "test.csv", content), None, "empty file")


def test_gbk_bytes_report_their_line(tmp_path):
    raw = "0\t好吃\n\n1\t".encode() + "不错".encode("gbk") + b"\n\n"
    expect_error(read_labelled, write(tmp_path, "train.txt", raw), 3, "re-save the file as UTF-8")
    raw = "面包\n\n".encode() + "蛋糕".encode("gbk") + b"\n\n"
    expect_error(read_unlabelled, write(tmp_path, "test.txt", raw), 3, "UTF-8")


def test_row_without_tab(tmp_path):
    path = write(tmp_path, "train.txt", "0\t好吃\n\n好吃不贵\n\n1\t不错\n\n")
    expect_error(read_labelled, path, 3, "'label<TAB>text'", "found no tab", "remove it")


def test_row_with_extra_field(tmp_path):
    path = write(tmp_path, "train.txt", "0\t好吃\n\n1\t好吃\t不贵\n\n")
    expect_error(read_labelled, path, 3, "exactly one tab", "2 tabs")


@pytest.mark.parametrize("label", ["2", "01", " 1", "x", ""])
def test_bad_label(tmp_path, label):
    path = write(tmp_path, "train.txt", f"0\t好吃\n\n0\t不错\n\n0\t还行\n\n{label}\t好吃\n\n")
    err = expect_error(read_labelled, path, 7, "label 0 or 1", "fix the label or remove the row")
    assert repr(f"{label}\t好吃") in str(err)


def test_bad_label_message_example(tmp_path):
    path = write(tmp_path, "train.txt", "0\t好吃\n\n0\t不错\n\n0\t还行\n\n2\t好吃\n\n")
    with pytest.raises(DataError) as info:
        read_labelled(path)
    assert str(info.value).endswith(
        "train.txt, line 7: expected 'label<TAB>text' with label 0 or 1, found '2\\t好吃' "
        "— fix the label or remove the row"
    )


@pytest.mark.parametrize("row", ["1\t", "1\t   ", "0\t\u3000"])
def test_empty_text_in_train(tmp_path, row):
    path = write(tmp_path, "train.txt", f"0\t好吃\n\n{row}\n\n")
    expect_error(read_labelled, path, 3, "non-empty text")


def test_two_blank_lines_where_a_row_was_expected(tmp_path):
    path = write(tmp_path, "train.txt", "0\t好吃\n\n\n1\t不错\n\n")
    expect_error(read_labelled, path, 3, "found an empty line", "remove the extra blank line")
    path = write(tmp_path, "test.txt", "好吃\n\n\n\n不错\n\n")
    expect_error(read_unlabelled, path, 3, "found an empty line")


@pytest.mark.parametrize("row", ["\u3000", "   ", " \u3000\u00a0"])
def test_whitespace_only_row_is_named_as_such(tmp_path, row):
    """Not "two blank lines in a row" (issue #28): the row is there, holding only whitespace."""
    path = write(tmp_path, "test.txt", f"好吃\n\n{row}\n\n不错\n\n")
    err = expect_error(read_unlabelled, path, 3, f"found a whitespace-only row {row!r}")
    assert "blank lines" not in str(err)
    path = write(tmp_path, "train.txt", f"0\t好吃\n\n{row}\n\n")
    expect_error(read_labelled, path, 3, "whitespace-only row", "fill it in or remove the row")
    path = write(tmp_path, "test.csv", f"content\n好吃\n{row}\n")
    expect_error(read_unlabelled, path, 3, f"found a whitespace-only one {row!r}")


@pytest.mark.parametrize("char", ["\x00", "\x07", "\x1b", "\x0b", "\x0c", "\x7f", "\x85"])
def test_control_character_is_refused_with_its_line(tmp_path, char):
    """Refused like a lone CR (issue #28): it would become [UNK], and core.serving.predict would
    echo it into its CSV."""
    code = f"U+{ord(char):04X}"
    path = write(tmp_path, "test.txt", f"好吃\n\n不{char}错\n\n")
    expect_error(read_unlabelled, path, 3, f"without control characters, found {code} in")
    path = write(tmp_path, "train.txt", f"0\t好吃\n\n1\t不错\n\n1\t{char}还行\n\n")
    expect_error(read_labelled, path, 5, code, "remove it")
    path = write(tmp_path, "train.csv", f'content,label\n好吃,1\n"不\n{char}错",0\n')
    expect_error(read_labelled, path, 4, code)


def test_tab_inside_a_csv_text_is_not_a_control_character(tmp_path):
    path = write(tmp_path, "test.csv", "content\n好\t吃\n")
    assert read_unlabelled(path).texts == ["好\t吃"]


def test_extra_blank_lines_at_the_end(tmp_path):
    path = write(tmp_path, "test.txt", "好吃\n\n不错\n\n\n")
    expect_error(read_unlabelled, path, 5, "found an empty line")


def test_missing_separator_line_would_shift_ids(tmp_path):
    path = write(tmp_path, "test.txt", "好吃\n\n不错\n还行\n\n")
    expect_error(read_unlabelled, path, 4, "expected an empty line after the row on line 3", "add")
    path = write(tmp_path, "train.txt", "0\t好吃\n1\t不错\n\n")
    expect_error(read_labelled, path, 2, "blank separator line is missing")


def test_test_file_with_labelled_rows(tmp_path):
    path = write(tmp_path, "test.txt", "好吃\n\n1\t不错\n\n")
    expect_error(read_unlabelled, path, 3, "labelled train file; pass it as train")
    path = write(tmp_path, "test.txt", "0\t好吃\n\n")
    expect_error(read_unlabelled, path, 1, "labelled train file")


def test_test_row_with_other_tab(tmp_path):
    path = write(tmp_path, "test.txt", "好吃\n\n不\t错\n\n")
    expect_error(read_unlabelled, path, 3, "without tabs")


def test_train_file_without_any_tab_looks_like_test(tmp_path):
    path = write(tmp_path, "train.txt", "好吃\n\n不错\n\n")
    expect_error(read_labelled, path, 1, "unlabelled test file", "pass it as test")


def test_lone_carriage_return(tmp_path):
    path = write(tmp_path, "test.txt", b"\xe5\xa5\xbd\n\n\xe5\xa5\xbd\r\r\xe5\xa5\xbd\n\n")
    expect_error(read_unlabelled, path, 3, "lone CR")


def test_error_is_a_value_error(tmp_path):
    with pytest.raises(ValueError):
        read_labelled(write(tmp_path, "train.txt", "3\tx\n\n"))


# -- seed CSV format ------------------------------------------------------------------------------


def test_csv_train_and_test(tmp_path):
    train = write(tmp_path, "train.csv", 'content,label\n酸菜鱼不错,1\n"好吃,不贵",0\n')
    ds = read_labelled(train)
    assert ds.texts == ["酸菜鱼不错", "好吃,不贵"] and ds.labels.tolist() == [1, 0]
    assert ds.ids.tolist() == [0, 1] and ds.line_numbers == [2, 3]
    test = write(tmp_path, "test.csv", "\ufeffcontent\r\n面包\r\n蛋糕\r\n\r\n")
    ds = read_unlabelled(test)
    assert ds.texts == ["面包", "蛋糕"] and ds.labels is None and ds.ids.tolist() == [0, 1]


def test_csv_id_column_and_a_labelled_test_csv_refused(tmp_path):
    path = write(tmp_path, "test.csv", "ID,content\n7,面包\n3,蛋糕\n")
    ds = read_unlabelled(path)
    assert ds.ids.dtype == np.int64 and ds.ids.tolist() == [7, 3] and ds.labels is None
    # As in the text format: a labelled file passed as the test file is refused (issue #18).
    labelled = write(tmp_path, "test2.csv", "ID,content,label\n7,面包,1\n3,蛋糕,0\n")
    expect_error(read_unlabelled, labelled, 1, "looks like a labelled train file")
    ds = read_labelled(write(tmp_path, "train.csv", "id,label,content\n5,1,面包\n"))
    assert ds.ids.tolist() == [5] and ds.labels.tolist() == [1] and ds.texts == ["面包"]


def test_csv_header_errors(tmp_path):
    path = write(tmp_path, "train.csv", "text,label\n面包,1\n")
    expect_error(read_labelled, path, 1, "'content'")
    path = write(tmp_path, "train.csv", "content\n面包\n")
    expect_error(read_labelled, path, 1, "'label'", "unlabelled test file")
    path = write(tmp_path, "test.csv", "content\n")
    expect_error(read_unlabelled, path, None, "rows after the header")


def test_csv_row_errors(tmp_path):
    path = write(tmp_path, "train.csv", "content,label\n面包,1\n蛋糕,2\n")
    expect_error(read_labelled, path, 3, "label 0 or 1")
    path = write(tmp_path, "train.csv", "content,label\n面包,1\n好吃,不贵,0\n")
    expect_error(read_labelled, path, 3, "2 fields", "quote texts that contain commas")
    path = write(tmp_path, "test.csv", "content\n面包\n \n")
    expect_error(read_unlabelled, path, 3, "non-empty 'content'")
    path = write(tmp_path, "test.csv", "content\n面包\n\n蛋糕\n")
    expect_error(read_unlabelled, path, 3, "fields")
    path = write(tmp_path, "test.csv", "id,content\n1,面包\n1,蛋糕\n")
    expect_error(read_unlabelled, path, 2, "unique ids")
    path = write(tmp_path, "test.csv", "id,content\nx,面包\n")
    expect_error(read_unlabelled, path, 2, "integer id")
    path = write(tmp_path, "test.csv", b"content\n\xc3\xe6\xb0\xfc\n")
    expect_error(read_unlabelled, path, 2, "UTF-8")


# -- helpers and the real files -------------------------------------------------------------------


def test_file_sha256(tmp_path):
    data = bytes(range(256)) * 10_000
    path = write(tmp_path, "blob.bin", data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    with pytest.raises(DataError):
        file_sha256(tmp_path / "nope.bin")


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared competition data not present at {SHARED}")
def test_real_competition_files():
    train = read_labelled(SHARED / "train_shuffle.txt")
    test = read_unlabelled(SHARED / "test_handout.txt")
    assert len(train) == 14_000 and int(train.labels.sum()) == 4_656
    assert len(test) == 4_189 and test.ids.tolist() == list(range(4_189))
    assert test.line_numbers[-1] == 2 * 4_189 - 1
    lengths = [len(t) for t in train.texts + test.texts]
    assert min(lengths) >= 5 and max(lengths) <= 19
