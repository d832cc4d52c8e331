"""Read a PyTorch zip checkpoint (``torch.save`` format) into NumPy arrays without torch.

The pickle inside such a file may name any Python callable, so it is loaded with an unpickler
that only knows the handful of globals a plain state dict uses; everything else is refused
before it can run. Tensor bytes come from the zip's raw storage entries, never from pickle.
"""

from __future__ import annotations

import collections
import functools
import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["UnsafePickleError", "read_state_dict", "STORAGE_DTYPES"]

# torch storage class name -> little-endian NumPy dtype of one element.
# BFloat16 has no NumPy dtype: it is read as uint16 and widened to float32 exactly.
STORAGE_DTYPES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "BFloat16Storage": "<u2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class UnsafePickleError(ValueError):
    """The checkpoint's pickle names a global outside the state-dict allowlist."""


class _StorageType:
    """Stand-in for ``torch.<X>Storage``: only carries the element dtype."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name])


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_unused):
    """Our version of ``torch._utils._rebuild_tensor_v2``: a strided view, copied out."""
    if not isinstance(storage, np.ndarray):
        raise ValueError(f"tensor storage is {type(storage).__name__}, expected a storage")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    offset = int(storage_offset)
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride):
        raise ValueError(f"bad tensor layout: offset={offset} size={size} stride={stride}")
    if 0 in size:
        return np.zeros(size, dtype=storage.dtype)
    # as_strided reads raw memory, so prove the last element lies inside the storage first.
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= storage.size:
        raise ValueError(
            f"tensor (offset={offset}, size={size}, stride={stride}) reaches element {last}, "
            f"but its storage holds {storage.size}"
        )
    base = storage[offset:]
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        base, shape=size, strides=tuple(s * item for s in stride), writeable=False
    )
    return np.array(view, copy=True, order="C")


def _rebuild_parameter(data, _requires_grad=False, _backward_hooks=None, *_unused):
    """``torch._utils._rebuild_parameter``: a Parameter is just its tensor here."""
    return data


def _allowed_globals() -> dict:
    """Fresh objects per load: a pickle's BUILD opcode may set attributes on whatever
    find_class hands out, so nothing shared between loads (module functions) is exposed."""
    return {
        ("collections", "OrderedDict"): collections.OrderedDict,  # C type: attributes are frozen
        ("torch._utils", "_rebuild_tensor_v2"): functools.partial(_rebuild_tensor_v2),
        ("torch._utils", "_rebuild_parameter"): functools.partial(_rebuild_parameter),
        **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
    }


class _StateDictUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, zf: zipfile.ZipFile, prefix: str, name: str, big_endian: bool):
        super().__init__(io.BytesIO(data))
        self._zf, self._prefix, self._name, self._big = zf, prefix, name, big_endian
        self._storages: dict[str, np.ndarray] = {}
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._name}: refused to load global {module}.{name} from the checkpoint's "
                "pickle; only a plain tensor state dict is accepted"
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise ValueError(f"{self._name}: unexpected persistent id {pid!r}")
        storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
        if not isinstance(storage_type, _StorageType):
            raise ValueError(f"{self._name}: storage {key} has unknown type {storage_type!r}")
        if key not in self._storages:
            self._storages[key] = self._read_storage(storage_type, key, numel)
        return self._storages[key]

    def _read_storage(self, storage_type: _StorageType, key: str, numel: int) -> np.ndarray:
        entry = f"{self._prefix}data/{key}"
        try:
            raw = self._zf.read(entry)
        except KeyError:
            raise ValueError(f"{self._name}: storage entry {entry} is missing") from None
        dtype = storage_type.dtype.newbyteorder(">") if self._big else storage_type.dtype
        if len(raw) < numel * dtype.itemsize:
            raise ValueError(
                f"{self._name}: {entry} has {len(raw)} bytes, expected {numel} x {dtype.itemsize}"
            )
        arr = np.frombuffer(raw, dtype=dtype, count=numel).astype(dtype.newbyteorder("<"))
        if storage_type.name == "BFloat16Storage":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        return arr


def read_state_dict(path_or_bytes: str | os.PathLike | bytes, name: str | None = None) -> dict:
    """Return ``{key: np.ndarray}`` from a ``torch.save`` zip checkpoint (file path or bytes).

    ``name`` is used in error messages (defaults to the path). Raises ``UnsafePickleError`` for
    any global outside the allowlist and ``ValueError`` for malformed files.
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        source, name = io.BytesIO(bytes(path_or_bytes)), name or "<checkpoint bytes>"
    else:
        source, name = Path(path_or_bytes), name or str(path_or_bytes)
    try:
        zf = zipfile.ZipFile(source)
    except zipfile.BadZipFile:
        raise ValueError(
            f"{name}: not a zip checkpoint (the legacy pre-1.6 torch.save format is not supported)"
        ) from None
    with zf:
        pkls = [n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pkls) != 1:
            raise ValueError(f"{name}: expected one data.pkl entry in the zip, found {pkls}")
        prefix = pkls[0][: -len("data.pkl")]
        big = False
        if f"{prefix}byteorder" in zf.namelist():
            big = zf.read(f"{prefix}byteorder").strip() == b"big"
        obj = _StateDictUnpickler(zf.read(pkls[0]), zf, prefix, name, big).load()
    if not isinstance(obj, dict):
        raise ValueError(f"{name}: pickle holds {type(obj).__name__}, expected a state dict")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, np.ndarray)]
    if bad:
        raise ValueError(f"{name}: state dict entries that are not tensors: {bad[:5]}")
    return dict(obj)
