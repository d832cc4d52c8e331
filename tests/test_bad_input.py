"""What each kind of bad input does: docs/robustness.md's table, one test per row (the commands'
own rows, exit code and first line, are in test_cli.py).

| input | what happens |
|---|---|
| missing train (or test) file | `DataError`: `<path>: not found; expected the data file at <path>` |
| empty file (or only blank lines) | `DataError`: `<path>: expected rows, found an empty file` |
| GBK (or other non-UTF-8) file | `DataError`: `<path>, line N: expected UTF-8 text, found bytes … (GBK …?) — re-save the file as UTF-8` |
| UTF-8 BOM, CRLF line ends | accepted: the BOM is dropped, CRLF read as LF |
| train row with no tab | `DataError`: `<path>, line N: expected 'label<TAB>text' … (exactly one tab), found no tab` |
| train row with an extra field | `DataError`: `<path>, line N: expected … (exactly one tab), found 2 tabs` |
| label other than 0/1 (e.g. `2`) | `DataError`: `<path>, line N: expected 'label<TAB>text' with label 0 or 1, found '2\\t…'` |
| empty text | `DataError`: `<path>, line N: expected … and a non-empty text` |
| text longer than `maxlen` | accepted: cut to `maxlen` characters, counted by `CharTokenizer.n_truncated` (notebooks 01 and 02 print it) |
| characters outside the vocabulary | accepted: each becomes `[UNK]`; the rate is `CharTokenizer.unk_rate` (notebooks 01 and 02 print it) |
| labelled file passed as test | `DataError`: `<path>, line 1: expected a text row without a label … looks like a labelled train file; pass it as train` |
| unlabelled file passed as train | `DataError`: `<path>, line 1: expected 'label<TAB>text' rows, found no tab in any row … looks like an unlabelled test file` |
| labelled CSV passed as test | `DataError`: `<path>, line 1: expected a header with 'content' and no 'label' … looks like a labelled train file; pass it as train` (the caller's own hint: `labelled_hint`) |
| CSV whose label column is misspelt | `DataError`: `<path>, line 1: … no column is named 'label'; rename the label column ('lable'?) to label` (not "an unlabelled test file") |
| fewer labelled rows than `n_folds` | `DataError` (`check_folds`, in every entry point's `check_inputs`): `<path>: expected at least 5 labelled rows for n_folds=5, found 3; add rows, or lower n_folds` |
| a fold whose validation rows hold one label | `DataError`: `<path>: expected both labels among fold K's validation rows (its AUC needs them), found only label 1; the file holds …` |
| `fold` outside 0..n_folds-1 | `ConfigError` (`Settings.check_fold`): `parameter fold=7: expected an integer in 0..2 (n_folds=3)` |
| `bert_dir` without `vocab.txt` | `BertDirError` (`check_bert_dir`): `<dir>/vocab.txt: expected this file, found it missing`; `load_vocab`: `FileNotFoundError` naming the file |
| `vocab.txt` size ≠ config `vocab_size` | `BertDirError`: `<dir>/vocab.txt: expected N lines (vocab_size in bert_config.json), found M lines` |
| stage 2 before stage 1 | `MissingStageError` (`engine.train_stage2`) naming `papermill notebooks/02_cv.ipynb out.ipynb -p fold K -p run_dir <run>` and the run's other recorded (or, before its first fold, given), non-default parameters (`core.runs.folder.fold_command`) |
| ensemble before the stages exist | `MissingOutputsError` (`results.finalize`) naming each unfinished fold and its `papermill notebooks/02_cv.ipynb …` command |
| NaN / out-of-range predictions → submission | `SubmissionError` (`write_submission`); no file written, an existing one left unchanged |
| NaN / out-of-range predictions → fold | `FloatingPointError` (`engine._check_predictions`); nothing written for the fold |
| `run_dir` outside the output folder | `ConfigError` (`Settings.run_path`): `parameter run_dir=…: expected a path inside the output folder <outputs>` |
"""  # noqa: E501

from __future__ import annotations

import shutil

import numpy as np
import pytest
from fakes import TINY_VOCAB

from core.config import ConfigError, Settings
from core.data.reviews import DataError, read_labelled, read_unlabelled, show_path
from core.data.tokenizer import CharTokenizer, load_vocab
from core.ensembling.fold_outputs import MissingOutputsError
from core.ensembling.submission import SubmissionError, write_submission
from core.weights.google_ckpt import MANIFEST_FILE, BertDirError, check_bert_dir


def write(tmp_path, content: str | bytes, name: str = "train.txt"):
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def data_error(reader, path, line: int | None, *phrases: str, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        reader(path, **kwargs)
    message = str(info.value)
    where = str(path) if line is None else f"{path}, line {line}:"
    assert where in message and "expected" in message, message
    for phrase in phrases:
        assert phrase in message, message
    assert info.value.path == path and info.value.line == line
    return message


@pytest.fixture
def bert_copy(tmp_path, tiny_bert_dir):
    """A copy without MANIFEST.json, which would report the edited file first."""
    copy = shutil.copytree(tiny_bert_dir, tmp_path / "bert")
    (copy / MANIFEST_FILE).unlink()
    return copy


# -- data files -----------------------------------------------------------------------------------


def test_missing_train_file(tmp_path):
    data_error(read_labelled, tmp_path / "train.txt", None, "not found", "expected the data file")


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file(tmp_path, content):
    data_error(read_labelled, write(tmp_path, content), None, "found an empty file")


def test_gbk_encoded_file(tmp_path):
    path = write(tmp_path, "0\t不错\n\n".encode() + b"1\t" + "好吃".encode("gbk") + b"\n\n")
    data_error(read_labelled, path, 3, "expected UTF-8", "GBK", "re-save the file as UTF-8")


def test_bom_and_crlf_accepted(tmp_path):
    path = write(tmp_path, b"\xef\xbb\xbf" + "1\t好吃\r\n\r\n0\t不错\r\n\r\n".encode())
    ds = read_labelled(path)
    assert ds.texts == ["好吃", "不错"] and ds.labels.tolist() == [1, 0]
    test = read_unlabelled(write(tmp_path, b"\xef\xbb\xbf" + "好吃\r\n\r\n".encode(), "test.txt"))
    assert test.texts == ["好吃"] and test.ids.tolist() == [0]


def test_train_row_with_no_tab(tmp_path):
    path = write(tmp_path, "1\t好吃\n\n0 不错\n\n")
    data_error(read_labelled, path, 3, "exactly one tab", "found no tab")


def test_extra_field(tmp_path):
    path = write(tmp_path, "1\t好吃\n\n0\t不错\t多\n\n")
    data_error(read_labelled, path, 3, "exactly one tab", "found 2 tabs")


def test_label_2(tmp_path):
    path = write(tmp_path, "1\t好吃\n\n2\t不错\n\n")
    data_error(read_labelled, path, 3, "label 0 or 1", "found '2\\t不错'")


def test_empty_text(tmp_path):
    path = write(tmp_path, "1\t好吃\n\n0\t  \n\n")
    data_error(read_labelled, path, 3, "a non-empty text")


def test_text_longer_than_maxlen_is_truncated_and_counted():
    tokenizer = CharTokenizer({t: i for i, t in enumerate(TINY_VOCAB)}, maxlen=5)
    texts = ["好吃不错服务环境", "好吃"]
    ids = tokenizer.encode_all(texts)
    assert [len(x) for x in ids] == [5 + 2, 2 + 2]  # [CLS] + at most maxlen + [SEP]
    assert tokenizer.n_truncated(texts) == 1


def test_characters_outside_the_vocab_become_unk():
    vocab = {t: i for i, t in enumerate(TINY_VOCAB)}
    tokenizer = CharTokenizer(vocab, maxlen=20)
    assert "龘" not in vocab and "好" in vocab
    ids = tokenizer.encode_ids("好龘")
    assert ids.tolist() == [vocab["[CLS]"], vocab["好"], vocab["[UNK]"], vocab["[SEP]"]]
    assert tokenizer.unk_rate(["好龘", "好吃"]) == pytest.approx(1 / 4)


def test_labelled_file_passed_as_test(tmp_path):
    path = write(tmp_path, "1\t好吃\n\n0\t不错\n\n", "test.txt")
    data_error(read_unlabelled, path, 1, "without a label", "pass it as train")


def test_unlabelled_file_passed_as_train(tmp_path):
    path = write(tmp_path, "好吃\n\n不错\n\n")
    data_error(read_labelled, path, 1, "found no tab in any row", "pass it as test")


def test_labelled_csv_passed_as_test(tmp_path):
    path = write(tmp_path, "content,label\n好吃,1\n", "test.csv")
    data_error(
        read_unlabelled,
        path,
        1,
        "found ['content', 'label']",
        "looks like a labelled train file; pass it as train",
    )
    message = data_error(read_unlabelled, path, 1, "remove them", labelled_hint="remove them")
    assert "pass it as train" not in message


def test_csv_with_a_misspelt_label_column(tmp_path):
    path = write(tmp_path, "content,lable\n好吃,1\n", "train.csv")
    message = data_error(
        read_labelled,
        path,
        1,
        "no column is named 'label'",
        "rename the label column ('lable'?) to label",
    )
    assert "unlabelled" not in message


def test_unlabelled_csv_passed_as_train(tmp_path):
    path = write(tmp_path, "id,content\n0,好吃\n", "train.csv")
    data_error(read_labelled, path, 1, "looks like an unlabelled test file; pass it as test")


# -- parameters and model folder ------------------------------------------------------------------


@pytest.mark.parametrize("fold", [3, -1, 7, True, "0"])
def test_fold_outside_range(fold):
    with pytest.raises(ConfigError) as info:
        Settings(n_folds=3).check_fold(fold)
    assert f"parameter fold={fold!r}: expected an integer in 0..2 (n_folds=3)" in str(info.value)


def test_bert_dir_missing_vocab(bert_copy):
    (bert_copy / "vocab.txt").unlink()
    with pytest.raises(BertDirError, match=r"vocab\.txt: expected this file, found it missing"):
        check_bert_dir(bert_copy, read_checkpoint=False)
    with pytest.raises(FileNotFoundError) as info:
        load_vocab(bert_copy)
    assert str(bert_copy / "vocab.txt") in str(info.value) and "expected" in str(info.value)


def test_bert_dir_vocab_size_disagrees_with_config(bert_copy):
    with open(bert_copy / "vocab.txt", "a", encoding="utf-8") as f:
        f.write("多余\n")
    n = len(TINY_VOCAB)
    with pytest.raises(BertDirError) as info:
        check_bert_dir(bert_copy, read_checkpoint=False)
    message = str(info.value)
    assert str(bert_copy / "vocab.txt") in message
    assert f"expected {n} lines (vocab_size in bert_config.json), found {n + 1} lines" in message


def test_run_dir_outside_the_output_folder(tmp_path):
    settings = Settings(output_dir=tmp_path / "outputs")
    assert settings.run_path(tmp_path / "outputs" / "runs" / "x") == tmp_path / "outputs/runs/x"
    for bad in (tmp_path / "elsewhere", tmp_path / "outputs" / ".." / "escaped"):
        with pytest.raises(ConfigError) as info:
            settings.run_path(bad)
        message = str(info.value)
        assert f"parameter run_dir={str(bad)!r}" in message
        assert f"expected a path inside the output folder {tmp_path / 'outputs'}" in message


# -- stages out of order --------------------------------------------------------------------------


def test_stage2_before_stage1(tmp_path, tiny_bert_dir):
    from core.training.engine import MissingStageError, train_stage2

    settings = Settings(bert_dir=tiny_bert_dir, n_folds=3, output_dir=tmp_path)
    run_dir = tmp_path / "run"
    with pytest.raises(MissingStageError) as info:
        train_stage2(settings, 2, run_dir)
    message = str(info.value)
    assert str(run_dir / "stage1" / "fold2" / "weights.h5") in message
    hint = message.split("Make them first: ")[1]
    assert hint.startswith("papermill notebooks/02_cv.ipynb out.ipynb")
    assert f"-p fold 2 -p run_dir {run_dir}" in message
    # No run.json yet: the hint carries stage 2's own settings, which the run will record.
    assert "-p n_folds 3" in message and f"-p bert_dir {show_path(tiny_bert_dir)}" in message
    assert not run_dir.exists()


def test_ensemble_before_the_stages_exist(tmp_path):
    from core.ensembling.ensemble import finalize

    test_path = write(tmp_path, "好吃\n\n", "test.txt")
    run_dir = tmp_path / "run"
    with pytest.raises(MissingOutputsError) as info:
        finalize(run_dir, 3, test_path)
    err = info.value
    assert err.stage == "stage1" and err.folds == [0, 1, 2]
    for k in range(3):
        command = f"papermill notebooks/02_cv.ipynb out.ipynb -p fold {k} -p run_dir {run_dir}"
        assert command in str(err) and command in err.commands
    assert not (run_dir / "ensemble").exists()


# -- bad predictions ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, 1.5, -0.1, np.inf])
def test_bad_predictions_never_reach_a_submission(tmp_path, bad):
    path = tmp_path / "submission.csv"
    with pytest.raises(SubmissionError) as info:
        write_submission(path, [0, 1, 2], [0.1, bad, 0.9], [0, 1, 2])
    assert "Prediction check" in str(info.value) and "ID 1" in str(info.value)
    assert f"{path} was not created" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # no file, no temporary left behind
    write_submission(path, [0, 1, 2], [0.1, 0.2, 0.9], [0, 1, 2])
    before = path.read_bytes()
    with pytest.raises(SubmissionError, match="was left unchanged"):
        write_submission(path, [0, 1, 2], [0.1, bad, 0.9], [0, 1, 2])
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize("bad", [np.nan, 1.5, -0.1, np.inf])
def test_bad_predictions_never_reach_a_fold(bad):
    from core.training.engine import _check_predictions

    good = np.array([0.0, 0.5, 1.0])
    assert _check_predictions("stage1 fold 0 test", good) is good
    with pytest.raises(FloatingPointError) as info:
        _check_predictions("stage1 fold 0 test", np.array([0.2, 0.3, bad]))
    message = str(info.value)
    assert message.startswith("stage1 fold 0 test: 1 predictions are NaN or outside [0, 1]")
    assert "first at row 2" in message and "Nothing was written for this fold" in message


def rows(*labels: int) -> str:
    return "".join(f"{y}\t第{i}句好吃不错\n\n" for i, y in enumerate(labels))


def test_fewer_rows_than_folds_is_refused_before_any_step(tmp_path, tiny_bert_dir):
    from core.pipeline.job import check_inputs

    train = write(tmp_path, rows(1, 0, 1))
    test = write(tmp_path, "好吃\n\n", "test.txt")
    settings = Settings(train_path=train, test_path=test, bert_dir=tiny_bert_dir, n_folds=5)
    with pytest.raises(DataError) as info:
        check_inputs(settings)
    assert str(info.value) == (
        f"{show_path(train)}: expected at least 5 labelled rows for n_folds=5, found 3; add rows, "
        "or lower n_folds (--set n_folds=2)"
    )
    assert info.value.path == train
    enough = write(tmp_path, rows(*[1, 0] * 20), "enough.txt")
    check_inputs(Settings(train_path=enough, test_path=test, bert_dir=tiny_bert_dir, n_folds=5))


def test_a_fold_of_one_label_is_refused_naming_the_counts(tmp_path):
    from core.runs.folder import check_folds

    train = write(tmp_path, rows(*[1] * 9, 0))
    with pytest.raises(DataError) as info:
        check_folds(read_labelled(train), 3, 2020)
    message = str(info.value)
    assert message.startswith(f"{show_path(train)}: expected both labels among fold ")
    assert "found only label 1; the file holds 9 rows labelled 1 and 1 labelled 0" in message
    check_folds(read_labelled(write(tmp_path, rows(1, 0, 1, 0, 1, 0), "ok.txt")), 3, 2020)
