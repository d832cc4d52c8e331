"""read_state_dict: torch-format zips without torch, and refusal of pickles that run code."""

from __future__ import annotations

import io
import os
import pickle
import zipfile

import numpy as np
import pytest

from core.weights.torch_reader import UnsafePickleError, read_state_dict


class _RunsShell:
    """Unpickling this runs a shell command: the classic malicious-checkpoint payload."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _zip_with_pickle(pkl: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/version", "3\n")
    return buf.getvalue()


@pytest.mark.parametrize("protocol", [2, 4])  # GLOBAL and STACK_GLOBAL opcodes
def test_refuses_pickle_that_runs_code(tmp_path, protocol):
    proof = tmp_path / "pwned"
    payload = pickle.dumps({"weight": _RunsShell(f"touch {proof}")}, protocol=protocol)
    ckpt = tmp_path / "evil.bin"
    ckpt.write_bytes(_zip_with_pickle(payload))

    with pytest.raises(UnsafePickleError) as err:
        read_state_dict(ckpt)
    assert str(ckpt) in str(err.value) and "system" in str(err.value)
    assert isinstance(err.value, ValueError)
    assert not proof.exists()

    # The payload is live: an unrestricted load would have run the command.
    pickle.loads(payload)
    assert proof.exists()


@pytest.mark.parametrize(
    "module,name",
    [
        ("builtins", "eval"),
        ("os", "system"),
        ("collections", "deque"),
        ("torch._utils", "_rebuild_device_tensor_from_numpy"),
        ("torch", "Tensor"),
    ],
)
def test_refuses_every_global_outside_the_allowlist(torch_zip_tools, module, name):
    torch_pickle, torch_zip, _ = torch_zip_tools
    storages = {"0": ("FloatStorage", np.arange(4, dtype=np.float32))}
    pkl = torch_pickle({"w": ("0", 0, (4,), (1,))}, storages)
    # Swap the storage class reference for the refused global.
    bad = pkl.replace(b"ctorch\nFloatStorage\n", f"c{module}\n{name}\n".encode())
    with pytest.raises(UnsafePickleError, match=rf"{module}\.{name}"):
        read_state_dict(torch_zip(bad, storages), name="crafted.bin")


def test_reads_hand_built_checkpoint(torch_zip_tools):
    torch_pickle, torch_zip, _ = torch_zip_tools
    base = np.arange(24, dtype=np.float32) * 0.5 - 3
    half = np.array([1.5, -2.25, 65504.0], dtype=np.float16)
    bf16_bits = np.array([0x3F80, 0xC040, 0x4049], dtype=np.uint16)  # 1.0, -3.0, 3.140625
    storages = {
        "0": ("FloatStorage", base),
        "1": ("LongStorage", np.array([7, -8, 2**40], dtype=np.int64)),
        "2": ("HalfStorage", half),
        "3": ("BFloat16Storage", bf16_bits),
        "4": ("BoolStorage", np.array([True, False])),
    }
    tensors = {
        "contiguous": ("0", 0, (4, 6), (6, 1)),
        "transposed": ("0", 0, (6, 4), (1, 6)),  # a .T view saved as is
        "offset_block": ("0", 7, (2, 3), (6, 2)),  # offset and a step of 2 along the row
        "scalar": ("0", 5, (), ()),
        "empty": ("0", 0, (0, 3), (3, 1)),
        "long": ("1", 0, (3,), (1,)),
        "half": ("2", 1, (2,), (1,)),
        "bf16": ("3", 0, (3,), (1,)),
        "flags": ("4", 0, (2,), (1,)),
        "param": ("0", 20, (4,), (1,)),
    }
    sd = read_state_dict(torch_zip(torch_pickle(tensors, storages, parameters={"param"}), storages))

    grid = base.reshape(4, 6)
    expected = {
        "contiguous": grid,
        "transposed": grid.T,
        "offset_block": np.array([[base[7], base[9], base[11]], [base[13], base[15], base[17]]]),
        "scalar": np.float32(base[5]),
        "empty": np.zeros((0, 3), np.float32),
        "long": np.array([7, -8, 2**40]),
        "half": half[1:],
        "bf16": np.array([1.0, -3.0, 3.140625], np.float32),
        "flags": np.array([True, False]),
        "param": base[20:],
    }
    assert list(sd) == list(tensors)
    for name, want in expected.items():
        got = sd[name]
        assert got.shape == np.shape(want) and got.dtype == np.asarray(want).dtype, name
        np.testing.assert_array_equal(got, want, err_msg=name)
        assert got.flags.c_contiguous and got.flags.owndata, name  # copies, not views into the zip


def test_big_endian_storages(torch_zip_tools):
    torch_pickle, torch_zip, _ = torch_zip_tools
    storages = {
        "0": ("DoubleStorage", np.array([1.25, -7e300])),
        "1": ("IntStorage", np.array([1, -2], np.int32)),
    }
    pkl = torch_pickle({"d": ("0", 0, (2,), (1,)), "i": ("1", 0, (2,), (1,))}, storages)
    sd = read_state_dict(torch_zip(pkl, storages, byteorder="big"))
    np.testing.assert_array_equal(sd["d"], [1.25, -7e300])
    np.testing.assert_array_equal(sd["i"], [1, -2])


def test_tensor_reaching_past_its_storage_is_refused(torch_zip_tools):
    torch_pickle, torch_zip, _ = torch_zip_tools
    storages = {"0": ("FloatStorage", np.zeros(6, np.float32))}
    pkl = torch_pickle({"w": ("0", 2, (2, 3), (3, 1))}, storages)  # needs element 7 of 6
    with pytest.raises(ValueError, match="storage holds 6"):
        read_state_dict(torch_zip(pkl, storages))


def test_rejects_files_that_are_not_torch_zips(tmp_path):
    legacy = tmp_path / "legacy.bin"
    legacy.write_bytes(pickle.dumps({"w": [1.0]}))
    with pytest.raises(ValueError, match="not a zip checkpoint"):
        read_state_dict(legacy)
    with pytest.raises(ValueError, match="data.pkl"):
        read_state_dict(_empty_zip())


def _empty_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/version", "3\n")
    return buf.getvalue()


def test_state_dict_zip_round_trip(torch_zip_tools):
    *_, state_dict_zip = torch_zip_tools
    rng = np.random.default_rng(1)
    state = {"a.weight": rng.standard_normal((3, 5)).astype(np.float32), "ids": np.arange(4)}
    sd = read_state_dict(state_dict_zip(state))
    for k, v in state.items():
        np.testing.assert_array_equal(sd[k], v)
