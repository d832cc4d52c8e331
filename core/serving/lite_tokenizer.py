"""Run an exported ``model.tflite`` on raw text: core.data.tokenizer's rules in plain Python.

``python -m core.serving.export --format tflite`` copies this file beside ``model.tflite`` as
``tokenizer.py``, with ``tokens.json``; it imports nothing from this package (and TensorFlow only
to run the model), because TFLite has no string ops and the interpreter in the tensorflow wheel
has no Flex delegate to borrow them. ``tokens.json`` lists every character the tokenizer maps to
something other than ``[UNK]`` (vocabulary characters, whitespace as ``[unused1]``), so a lookup
defaulting to ``[UNK]`` is the whole rule.

    from tokenizer import TFLiteModel            # with the version folder on sys.path
    TFLiteModel("outputs/export/<name>/1")(["服务热情", "一般般吧"])["probability"]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


class Tokenizer:
    """Texts -> int32 ids ``[batch, longest]``: ``[CLS]``, the first ``maxlen`` characters,
    ``[SEP]``, padded with 0."""

    def __init__(self, folder: str | Path = HERE):
        table = json.loads((Path(folder) / "tokens.json").read_text(encoding="utf-8"))
        self.chars, self.maxlen = table["chars"], table["maxlen"]
        self.cls, self.sep, self.unk = table["cls"], table["sep"], table["unk"]

    def encode(self, text: str | bytes) -> list[int]:
        if isinstance(text, bytes):  # as the SavedModel reads them: bad UTF-8 becomes U+FFFD
            text = text.decode("utf-8", errors="replace")
        chars = self.chars
        return [self.cls, *(chars.get(ch, self.unk) for ch in text[: self.maxlen]), self.sep]

    def __call__(self, texts) -> np.ndarray:
        rows = [self.encode(t) for t in texts]
        ids = np.zeros((len(rows), max(map(len, rows), default=2)), dtype=np.int32)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
        return ids


class TFLiteModel:
    """``model.tflite`` and its tokenizer: ``TFLiteModel(folder)(texts)`` returns
    ``{"probability": [batch], "fold_probability": [batch, n_folds]}`` as float32 arrays (an
    ensemble's export; a distilled model's has ``probability`` only)."""

    def __init__(self, folder: str | Path = HERE, num_threads: int | None = None):
        import warnings

        import tensorflow as tf

        self.tokenize = Tokenizer(folder)
        path = str(Path(folder) / "model.tflite")
        with (
            warnings.catch_warnings()
        ):  # "deprecated": its successor, ai-edge-litert, is no dependency
            warnings.simplefilter("ignore", UserWarning)
            self.interpreter = tf.lite.Interpreter(path, num_threads=num_threads)
        self.runner = self.interpreter.get_signature_runner("serving_default")

    def __call__(self, texts) -> dict[str, np.ndarray]:
        # An empty batch never reaches the interpreter (a zero-sized input is not resizable).
        ids = self.tokenize(texts) if len(texts) else self.tokenize([""])
        out = self.runner(token_ids=ids)
        return {k: v[: len(texts)] for k, v in out.items()}
