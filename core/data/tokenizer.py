"""The reference's character tokenizer: one token per character, on keras-bert's ``Tokenizer``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# keras-bert needs tf-keras: core/__init__ (run before any core.* module) selects it.
from keras_bert import Tokenizer

SPACE_TOKEN = "[unused1]"
REQUIRED = ("[CLS]", "[SEP]", "[UNK]")


def load_vocab(bert_dir: str | Path) -> dict[str, int]:
    """Map each token of ``bert_dir/vocab.txt`` to its 0-based line number.

    Not ``keras_bert.load_vocabulary``: it strips every line and numbers tokens by the dict's size,
    so a whitespace token or a duplicate line would shift all later ids off the embedding rows.
    """
    path = Path(bert_dir) / "vocab.txt"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: vocabulary not found — expected the checkpoint's vocab.txt in {bert_dir}; "
            "unpack the pretrained model there or point bert_dir at it"
        )
    vocab: dict[str, int] = {}
    with path.open(encoding="utf-8") as f:
        for index, line in enumerate(f):
            vocab.setdefault(line.rstrip("\r\n"), index)  # first occurrence wins, ids stay = line
    missing = [t for t in REQUIRED if t not in vocab]
    if missing:
        raise ValueError(
            f"{path}: expected the BERT special tokens {list(REQUIRED)}, missing {missing} "
            "— is this a BERT vocabulary?"
        )
    return vocab


class CharTokenizer(Tokenizer):
    """Characters: in vocab → itself, whitespace → ``[unused1]``, anything else → ``[UNK]``.

    Case is kept: ``_tokenize`` bypasses keras-bert's lowercasing and accent stripping (its
    ``cased=False`` default), as the reference did; ``cased=True`` is passed so the base class
    agrees.
    Texts are cut to ``maxlen`` characters; ``[CLS]`` and ``[SEP]`` come on top, no padding.
    """

    def __init__(self, token_dict: dict[str, int], maxlen: int = 20):
        super().__init__(token_dict, cased=True)
        if int(maxlen) < 1:
            raise ValueError(f"maxlen={maxlen!r}: expected an integer >= 1")
        self.maxlen = int(maxlen)
        # Vocabularies without [unused1] still work: whitespace then falls back to [UNK].
        self._space_token = SPACE_TOKEN if SPACE_TOKEN in token_dict else self._token_unk

    def _tokenize(self, text: str) -> list[str]:
        out = []
        for ch in text:
            if ch in self._token_dict:
                out.append(ch)
            # The reference's set (Zs, \t\r\n) plus \v, \f, U+2028.
            elif ch.isspace() or self._is_space(ch):
                out.append(self._space_token)
            else:
                out.append(self._token_unk)
        return out

    def encode_ids(self, text: str) -> np.ndarray:
        """``[CLS]`` + the first ``maxlen`` characters + ``[SEP]`` as int32 ids."""
        tokens = [self._token_cls, *self._tokenize(text[: self.maxlen]), self._token_sep]
        return np.asarray(self._convert_tokens_to_ids(tokens), dtype=np.int32)

    def encode_all(self, texts: list[str]) -> list[np.ndarray]:
        return [self.encode_ids(t) for t in texts]

    def unk_rate(self, texts: list[str]) -> float:
        """Fraction of kept characters (first ``maxlen`` of each text) mapped to ``[UNK]``."""
        tokens = [tok for t in texts for tok in self._tokenize(t[: self.maxlen])]
        return sum(tok == self._token_unk for tok in tokens) / len(tokens) if tokens else 0.0

    def n_truncated(self, texts: list[str]) -> int:
        """Number of texts longer than ``maxlen`` characters."""
        return sum(len(t) > self.maxlen for t in texts)
