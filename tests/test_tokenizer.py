"""core.data.tokenizer: vocabulary loading and the reference's per-character rules."""

from __future__ import annotations

import numpy as np
import pytest

from core.data.tokenizer import CharTokenizer, load_vocab

SPECIAL = ["[PAD]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CHARS = ["好", "吃", "不", "错", "面", "包", "a", "B"]
PAD, SPACE, UNK, CLS, SEP = 0, 1, 2, 3, 4


def ids_of(*chars: str) -> list[int]:
    return [len(SPECIAL) + CHARS.index(c) for c in chars]


@pytest.fixture
def bert_dir(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(SPECIAL + CHARS) + "\n", encoding="utf-8")
    return tmp_path


@pytest.fixture
def tok(bert_dir):
    return CharTokenizer(load_vocab(bert_dir), maxlen=4)


def test_load_vocab_numbers_tokens_by_line(bert_dir):
    vocab = load_vocab(bert_dir)
    assert vocab["[PAD]"] == 0 and vocab["[CLS]"] == 3 and vocab["B"] == len(SPECIAL) + 7
    assert len(vocab) == len(SPECIAL) + len(CHARS)


def test_load_vocab_keeps_ids_on_duplicate_lines(tmp_path):
    # keras_bert.load_vocabulary would give the token after a duplicate the wrong id.
    (tmp_path / "vocab.txt").write_text("\n".join(SPECIAL + ["好", "好", "吃"]) + "\n", "utf-8")
    vocab = load_vocab(tmp_path)
    assert vocab["好"] == 6 and vocab["吃"] == 8


def test_load_vocab_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        load_vocab(tmp_path)
    (tmp_path / "vocab.txt").write_text("好\n吃\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab\.txt.*\[CLS\]"):
        load_vocab(tmp_path)


def test_in_vocab_whitespace_and_unknown(tok):
    assert tok._tokenize("好 吃") == ["好", "[unused1]", "吃"]
    assert tok._tokenize("好\t\u3000猫") == ["好", "[unused1]", "[unused1]", "[UNK]"]
    assert tok.encode_ids("好 猫").tolist() == [CLS, *ids_of("好"), SPACE, UNK, SEP]


def test_case_is_kept(tok):
    # 'B' is in the vocabulary, 'b' and 'A' are not: no lowercasing, no case folding.
    assert tok._tokenize("aAbB") == ["a", "[UNK]", "[UNK]", "B"]


def test_encode_ids_truncates_without_padding(tok):
    ids = tok.encode_ids("好吃不错面包")
    assert ids.dtype == np.int32
    assert ids.tolist() == [CLS, *ids_of("好", "吃", "不", "错"), SEP]
    assert tok.encode_ids("好").tolist() == [CLS, *ids_of("好"), SEP]
    assert [len(x) for x in tok.encode_all(["好", "好吃不错面包", ""])] == [3, 6, 2]


def test_unk_rate_counts_kept_characters_only(tok):
    # Kept: 好吃猫猫 (2 UNK) + 狗 (1 UNK) -> 3 of 5; the cut-off 猫猫 do not count.
    assert tok.unk_rate(["好吃猫猫猫猫", "狗"]) == pytest.approx(3 / 5)
    assert tok.unk_rate(["好吃"]) == 0.0
    assert tok.unk_rate([]) == 0.0


def test_n_truncated(tok):
    assert tok.n_truncated(["好吃不错", "好吃不错面", "", "好吃不错面包"]) == 2


def test_maxlen_must_be_positive(bert_dir):
    with pytest.raises(ValueError, match="maxlen"):
        CharTokenizer(load_vocab(bert_dir), maxlen=0)


def test_is_a_keras_bert_tokenizer(tok):
    # The base class's encode() uses our _tokenize, so both paths agree.
    token_ids, segment_ids = tok.encode("好 猫")
    assert token_ids == tok.encode_ids("好 猫").tolist() and segment_ids == [0] * 5
