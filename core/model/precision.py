"""Which precision (Keras dtype policy) and compiler a run trains and predicts with.

The ``precision`` setting is ``float32`` (the code path from before mixed precision, untouched),
``bfloat16`` or ``float16`` (Keras' ``mixed_bfloat16`` / ``mixed_float16``: variables stay
float32, matmuls run in 16 bits; float16 with loss scaling) or ``auto`` (the default):

- on a GPU: bfloat16 from compute capability 8.0 (Ampere), float16 from 7.0 (tensor cores), else
  float32; XLA as the stage's ``jit_compile`` setting says;
- on a CPU: bfloat16 where it has bf16 matrix instructions (``amx_bf16`` or ``avx512_bf16``) and
  TensorFlow's oneDNN kernels are on, with XLA off: XLA's CPU code does not use those units,
  oneDNN does (docs/results.md, throughput); else float32 with the stage's ``jit_compile``.

Nothing here imports TensorFlow until a GPU has to be looked for (``auto`` only, on a machine with
a GPU device node).
"""

from __future__ import annotations

import functools
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from core.config import PRECISIONS

POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of bf16 matrix instructions
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class Hardware:
    """What ``auto`` looks at: each GPU's compute capability (None if unknown), the CPU's flags,
    and whether TensorFlow's oneDNN kernels are on (``TF_ENABLE_ONEDNN_OPTS=0`` turns them off)."""

    gpus: tuple = ()
    cpu_flags: frozenset = frozenset()
    onednn: bool = True

    @property
    def cpu_bf16(self) -> list[str]:
        return [f for f in BF16_CPU_FLAGS if f in self.cpu_flags]


def cpu_flags(path: Path = CPUINFO) -> frozenset:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


# The device nodes TensorFlow needs to use a GPU: NVIDIA's, ROCm's, WSL's.
GPU_DEVICES = ("nvidia[0-9]*", "kfd", "dxg")


def gpu_possible(dev: Path = Path("/dev")) -> bool:
    """Whether this machine has a GPU device node at all: where it has none, ``detect`` need not
    import TensorFlow (the main job's own process computes keys with it and stays light)."""
    return any(next(dev.glob(pattern), None) is not None for pattern in GPU_DEVICES)


@functools.cache
def detect() -> Hardware:
    """This machine's ``Hardware`` (looked up once per process)."""
    gpus = []
    if gpu_possible():
        import tensorflow as tf

        for gpu in tf.config.list_physical_devices("GPU"):
            details = tf.config.experimental.get_device_details(gpu)
            gpus.append(details.get("compute_capability"))
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1").strip() not in ("0", "false", "False")
    return Hardware(tuple(gpus), cpu_flags(), onednn)


@dataclass(frozen=True)
class Choice:
    """A stage's precision and compiler: ``precision`` is float32, bfloat16 or float16."""

    setting: str
    precision: str
    jit_compile: bool
    reason: str

    @property
    def policy(self) -> str:
        """The Keras dtype policy's name."""
        return POLICIES[self.precision]

    def __str__(self) -> str:
        compiler = "XLA" if self.jit_compile else "no XLA"
        return f"precision {self.precision} ({self.reason}), {compiler}"

    def record(self) -> dict:
        """What a run's records say about it (run.json, PRETRAIN.json)."""
        return {
            "setting": self.setting,
            "precision": self.precision,
            "policy": self.policy,
            "reason": self.reason,
        }


def choose(setting: str, jit_compile: bool, hardware: Hardware | None = None) -> Choice:
    """The precision and compiler for ``setting`` (one of ``PRECISIONS``) and a stage whose
    ``jit_compile`` setting is given; ``hardware`` (default: this machine) is read for ``auto``."""
    if setting not in PRECISIONS:
        raise ValueError(f"precision={setting!r}: expected one of {', '.join(PRECISIONS)}")
    if setting != "auto":
        return Choice(setting, setting, jit_compile, "set")
    hw = detect() if hardware is None else hardware
    if hw.gpus:
        caps = [tuple(c) if c else (0, 0) for c in hw.gpus]
        shown = ", ".join(f"{a}.{b}" for a, b in caps)
        if min(caps) >= (8, 0):
            return Choice(setting, "bfloat16", jit_compile, f"auto: GPU compute capability {shown}")
        if min(caps) >= (7, 0):
            return Choice(setting, "float16", jit_compile, f"auto: GPU compute capability {shown}")
        return Choice(setting, "float32", jit_compile, f"auto: GPU compute capability {shown}")
    if hw.cpu_bf16 and hw.onednn:
        # oneDNN, not XLA: XLA's CPU code leaves the bf16 units idle (slower than float32).
        return Choice(setting, "bfloat16", False, f"auto: CPU with {', '.join(hw.cpu_bf16)}")
    why = "oneDNN off" if hw.cpu_bf16 else "CPU without amx_bf16 or avx512_bf16"
    return Choice(setting, "float32", jit_compile, f"auto: {why}")


def effective(settings):
    """``settings`` as they compute on this machine: ``precision`` resolved (``auto``: what
    ``choose`` picks here) and each stage's XLA switch as that choice leaves it (``auto`` turns
    XLA off where a CPU computes in bfloat16). Settings that compute alike are then equal: step
    keys and run identities hold these, and a distributed run's client passes them to every step
    (its workers need not share its hardware)."""
    import dataclasses

    stage0 = choose(settings.precision, settings.stage0_jit_compile)
    stage1 = choose(settings.precision, settings.stage1_jit_compile)
    return dataclasses.replace(
        settings,
        precision=stage1.precision,
        stage0_jit_compile=stage0.jit_compile,
        stage1_jit_compile=stage1.jit_compile,
    )


def record(setting: str) -> dict:
    """``choose(setting, ...).record()`` for a run's run.json (the compiler is per stage)."""
    return choose(setting, False).record()


@contextmanager
def policy_scope(policy: str):
    """Layers made inside take ``policy`` (a Keras policy name); the global one is restored after.

    float32 leaves the global policy alone: that path stays exactly what it was before this module.
    """
    if policy == "float32":
        yield
        return
    from tensorflow import keras

    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(before)
