"""Which ``tf.distribute`` strategy trains the model, chosen by name.

- ``default``: one device (the CPU, or the first GPU when TensorFlow sees one).
- ``mirrored``: synchronous data parallelism across this machine's GPUs (or logical CPUs).
- ``multiworker``: synchronous data parallelism across machines; each worker reads its role from
  the ``TF_CONFIG`` environment variable, as TensorFlow documents.
"""

from __future__ import annotations

import tensorflow as tf

import core  # noqa: F401  (selects tf-keras before TensorFlow loads)

STRATEGIES = ("default", "mirrored", "multiworker")


def get_strategy(name: str = "default") -> tf.distribute.Strategy:
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"parameter strategy={name!r}: expected one of {', '.join(STRATEGIES)}")
