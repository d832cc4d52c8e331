"""Shared fixtures: a tiny random BERT folder, the converted m3e-small folder, a builder of
torch-format zip checkpoints (written opcode by opcode, so no torch is needed), and the tiny
end-to-end world every slow test starts from (tests/tiny_run.py):

* ``tiny``: the tiny data, BERT folder and settings (tiny_run.make_tiny_inputs);
* ``tiny_job``: ONE tiny main job with the students and distillation on, in
  ``outputs/test-<uuid>`` of the repository (removed after the session; built by whichever
  pytest-xdist worker asks first, read by the other): every stored step
  (stage 0, the EDA, each fold of stages 1 and 2, the students and the distilled copies) and the
  run-level ensemble, distilled model and error analysis;
* ``tiny_run``: the default method on the same store: it reuses every stored step and computes
  only its ensemble and error analysis;
* ``tiny_variant``: the default with stage 2's learning rate changed, its stage 2 only
  (``--only stage2``): stage 0 and stage 1 reused, stage 2 computed again;
* ``leakage``: folds 0 and 1 on the tiny file and on a copy with fold 0's labels flipped, with
  fold 0's student and distilled copy (tiny_run.train_leakage), for the leakage tests.

Tests that change or damage a run work on a copy (``tiny_run.copy_outputs``), never on these.
"""

from __future__ import annotations

import dataclasses
import fcntl
import io
import os
import pickle
import shutil
import struct
import sys
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `core` without an install

from fakes import TINY_VOCAB, write_random_bert_dir  # noqa: E402
from tiny_run import (  # noqa: E402
    TinyJob,
    make_tiny_inputs,
    run_job,
    subprocess_env,
    train_leakage,
)

import core  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before anything imports TensorFlow)
from core.config import ROOT  # noqa: E402
from core.weights.google_ckpt import check_bert_dir  # noqa: E402


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


# ------------------------------------------------------------ the tiny end-to-end world

WORLD = "RECSENT_TEST_WORLD"  # the environment variable naming the world's folder
# Modules whose tests are spread one by one over the workers (their module fixtures cost
# nothing); every other module is one unit, its module fixtures (a Jupyter server, a Dask
# cluster, a run of its own) built once.
PER_TEST = {"test_pipeline", "test_notebook_start"}
# Modules that share a costly fixture run as one unit, on one worker: the other never waits
# for it on the lock.
TOGETHER = {"test_students_e2e": "leakage", "test_distill": "leakage"}
# The order units are handed out in: first a test that needs the whole world (job, run and
# variant: its worker builds them in a row while the other runs the modules that need no world),
# then those modules, then the world's users, heaviest first, then the single tests, which even
# out the end.
BUILDER = (
    "tests/test_pipeline.py::test_a_stage2_change_reuses_stage0_and_stage1_and_recomputes_stage2"
)
USERS = (
    "test_distributed",
    "leakage",
    "tests/test_pipeline.py::test_a_seed_ensemble_blends_runs_that_share_stage0",
    "test_export",
    "test_resume",
    "test_store",
    "test_reproducible",
    "test_runs",
    "test_board",
)
_OWNER = pytest.StashKey[bool]()


def pytest_configure(config):
    """The session's first process (pytest-xdist's controller, or pytest alone) names the tiny
    world's folder; its workers inherit the name and share the folder (``_shared``)."""
    if not hasattr(config, "workerinput") and WORLD not in os.environ:
        os.environ[WORLD] = str(ROOT / "outputs" / f"test-{uuid.uuid4().hex[:12]}")
        config.stash[_OWNER] = True
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(Scheduler(), "tiny-world-scheduler")


def pytest_unconfigure(config):
    if config.stash.get(_OWNER, False):
        shutil.rmtree(os.environ.pop(WORLD), ignore_errors=True)


def _unit(nodeid: str) -> str:
    module = nodeid.split("::", 1)[0]
    stem = Path(module).stem
    return TOGETHER.get(stem) or (nodeid if stem in PER_TEST else module)


def _rank(unit: str, tests: dict) -> tuple:
    stem = Path(unit.split("::", 1)[0]).stem
    if unit == BUILDER:
        return (0, 0, unit)
    for i, name in enumerate(USERS):
        if name in (stem, unit):
            return (2 + i, 0, unit)
    return (1 if "::" not in unit else 2 + len(USERS), -len(tests), unit)


class Scheduler:
    """pytest-xdist's scheduler (``-n 2`` in pyproject.toml): units as ``_unit`` says, in the
    order ``_rank`` says (``BUILDER``, the modules that need no world by their number of tests,
    ``USERS``, the single tests)."""

    @staticmethod
    def pytest_xdist_make_scheduler(config, log):
        from xdist.scheduler import LoadScopeScheduling

        class Scheduling(LoadScopeScheduling):
            def _split_scope(self, nodeid: str) -> str:
                return _unit(nodeid)

            def _assign_work_unit(self, node):
                if not getattr(self, "ordered", False):  # the first call: the queue is full
                    self.ordered = True
                    units = sorted(self.workqueue.items(), key=lambda unit: _rank(*unit))
                    self.workqueue.clear()
                    self.workqueue.update(units)
                super()._assign_work_unit(node)

        return Scheduling(config, log)


@pytest.fixture(scope="session", autouse=True)
def venv_on_path():
    """Kernels, papermill and dask of this venv first on PATH for everything started here."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", subprocess_env()["PATH"])
        yield


def _world() -> Path:
    """The tiny world's folder: ``outputs/test-<uuid>`` of the repository (commands such as
    predict and export write only inside ``outputs/``), named by the session's first process, so
    every pytest-xdist worker finds the same one."""
    return Path(os.environ[WORLD])


def _shared(name: str, build):
    """``build()`` once per session, whichever worker asks first: the others wait for it on a
    lock and read its result (a pickle) instead of computing it again."""
    folder = _world()
    folder.mkdir(parents=True, exist_ok=True)
    done = folder / f"{name}.pickle"
    with open(folder / f"{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            value = build()
            part = done.with_suffix(".part")
            part.write_bytes(pickle.dumps(value))
            part.replace(done)
    return pickle.loads(done.read_bytes())


@pytest.fixture(scope="session")
def tiny():
    """The tiny inputs and settings (``tiny_run.make_tiny_inputs``), in the world's folder."""
    return _shared("tiny", lambda: make_tiny_inputs(_world() / "inputs"))


@pytest.fixture(scope="session")
def tiny_outputs(tiny) -> Path:
    """The tiny world's output folder (runs and step store), removed after the session."""
    return _world() / "outputs"


@pytest.fixture(scope="session")
def tiny_job(tiny, tiny_outputs) -> TinyJob:
    """The tiny main job with the students and distillation on (see the module docstring)."""
    settings = dataclasses.replace(
        tiny.settings, output_dir=tiny_outputs, students_enabled=True, distill_enabled=True
    )
    return _shared("tiny_job", lambda: TinyJob(settings, *run_job(settings)))


@pytest.fixture(scope="session")
def tiny_run(tiny_job) -> TinyJob:
    """The default method on the job's store: every step reused, ensemble and errors made."""
    settings = dataclasses.replace(tiny_job.settings, students_enabled=False, distill_enabled=False)
    return _shared("tiny_run", lambda: TinyJob(settings, *run_job(settings)))


@pytest.fixture(scope="session")
def tiny_variant(tiny_run) -> TinyJob:
    """The default with stage 2's learning rate divided by 10, its stage 2 (``--only stage2``):
    stage 0 and stage 1 reused, stage 2 computed again."""
    settings = dataclasses.replace(tiny_run.settings, stage2_lr=tiny_run.settings.stage2_lr / 10)
    return _shared("tiny_variant", lambda: TinyJob(settings, *run_job(settings, only="stage2")))


@pytest.fixture(scope="session")
def leakage(tiny) -> dict[str, Path]:
    """The clean and the poisoned side's run folders (``tiny_run.train_leakage``): the leakage
    tests of the students (test_students_e2e) and of the distilled copies (test_distill) share
    their teachers."""
    return _shared("leakage", lambda: train_leakage(tiny.settings, _world() / "leakage"))


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
