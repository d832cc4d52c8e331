"""Shared fixtures: a tiny random BERT folder, the converted m3e-small folder, and a builder
of torch-format zip checkpoints (written opcode by opcode, so no torch is needed)."""

from __future__ import annotations

import io
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `core` without an install

from fakes import write_random_bert_dir  # noqa: E402

import core  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before anything imports TensorFlow)
from core.config import ROOT  # noqa: E402
from core.weights.google_ckpt import check_bert_dir  # noqa: E402

SPECIAL_TOKENS = ["[PAD]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_CHARS = (
    "的好吃不错服务环境菜味道很价格便宜贵差评推荐强烈一般还可以非常棒赞喜欢满意失望难再来"
    "次店家老板员热情态度慢快干净卫生量少多新鲜口感甜咸辣香油腻分性比高低肉鱼鸡饭面汤酒"
    "茶水果米是了我在有他这中大上个们到说和你地出也时得就那要下会着去过对想看没都然小么"
    "心天能只作当开手用主行方又如前所本见经面同已从动两长知样现分将外但些与意进把法此实"
    "回理美点明其种全工话向情正定问给等几最间什打便位因重被走第门相东西真听气少关并加由"
    "却入先五太万眼体别处总才场比住笑性通目立马命活难数件安表原车白路期常提感金何更反合"
)
TINY_VOCAB = SPECIAL_TOKENS + list(dict.fromkeys(_CHARS))[:200]


@pytest.fixture(scope="session")
def tiny_vocab() -> list[str]:
    """The tiny folder's tokens in id order: [PAD]=0, [unused1]=1, [UNK], [CLS], [SEP], [MASK],
    then 200 common Chinese characters."""
    return list(TINY_VOCAB)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A random Google-format BERT folder (hidden 32, 2 layers, 2 heads, 64 positions) whose
    vocabulary is ``tiny_vocab``; weights are ``random_hf_state_dict(len(tiny_vocab))``."""
    return write_random_bert_dir(tmp_path_factory.mktemp("tiny_bert") / "bert", TINY_VOCAB)


@pytest.fixture(scope="session")
def m3e_dir() -> Path:
    """The converted m3e-small folder (``python -m core.weights`` writes it)."""
    path = ROOT / "pretrained" / "m3e-small"
    try:
        check_bert_dir(path, read_checkpoint=False)
    except ValueError as e:
        pytest.fail(f"{path} is not a usable BERT folder ({e}); run python -m core.weights first")
    return path


# ------------------------------------------------------------ torch-format zip builder


def _str(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b  # BINUNICODE


def _int(i: int) -> bytes:
    return b"J" + struct.pack("<i", i)  # BININT


def _tuple(items) -> bytes:
    return b"(" + b"".join(items) + b"t"  # MARK ... TUPLE


def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()  # GLOBAL


def torch_pickle(tensors: dict, storages: dict, parameters=()) -> bytes:
    """A protocol-2 pickle shaped like ``torch.save(state_dict)``.

    ``storages``: ``{key: (storage class name, 1-D array)}``;
    ``tensors``: ``{name: (storage key, offset, size, stride)}``; names in ``parameters`` are
    wrapped in ``_rebuild_parameter`` as ``nn.Parameter`` values are.
    """
    hooks = _global("collections", "OrderedDict") + b")R"  # OrderedDict() via REDUCE
    out = [b"\x80\x02", _global("collections", "OrderedDict"), b")R", b"("]
    for name, (key, offset, size, stride) in tensors.items():
        cls, arr = storages[key]
        pid = [_str("storage"), _global("torch", cls), _str(key), _str("cpu"), _int(arr.size)]
        args = [
            _tuple(pid) + b"Q",
            _int(offset),
            _tuple(map(_int, size)),
            _tuple(map(_int, stride)),
            b"\x89",
            hooks,
        ]
        tensor = _global("torch._utils", "_rebuild_tensor_v2") + _tuple(args) + b"R"
        if name in parameters:
            wrapped = _tuple([tensor, b"\x88", hooks])
            tensor = _global("torch._utils", "_rebuild_parameter") + wrapped + b"R"
        out += [_str(name), tensor]
    return b"".join(out + [b"u", b"."])  # SETITEMS, STOP


def torch_zip(
    pkl: bytes, storages: dict, archive: str = "archive", byteorder: str | None = None
) -> bytes:
    """Zip ``pkl`` and the raw storage bytes the way ``torch.save`` lays them out."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{archive}/data.pkl", pkl)
        for key, (_cls, arr) in storages.items():
            dtype = arr.dtype.newbyteorder(">" if byteorder == "big" else "<")
            zf.writestr(f"{archive}/data/{key}", arr.astype(dtype).tobytes())
        zf.writestr(f"{archive}/version", "3\n")
        if byteorder:
            zf.writestr(f"{archive}/byteorder", byteorder)
    return buf.getvalue()


_CLASS_OF = {
    "float32": "FloatStorage",
    "float16": "HalfStorage",
    "int64": "LongStorage",
    "int32": "IntStorage",
    "float64": "DoubleStorage",
}


def state_dict_zip(state: dict, archive: str = "archive") -> bytes:
    """A torch-format zip of ``{name: array}``, one contiguous storage per tensor."""
    storages, tensors = {}, {}
    for i, (name, arr) in enumerate(state.items()):
        arr = np.ascontiguousarray(arr)
        storages[str(i)] = (_CLASS_OF[arr.dtype.name], arr.reshape(-1))
        strides = tuple(s // arr.itemsize for s in arr.strides)
        tensors[name] = (str(i), 0, arr.shape, strides)
    return torch_zip(torch_pickle(tensors, storages), storages, archive)


@pytest.fixture(scope="session")
def torch_zip_tools():
    """``(torch_pickle, torch_zip, state_dict_zip)`` for building torch-format checkpoints."""
    return torch_pickle, torch_zip, state_dict_zip
