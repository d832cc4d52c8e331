"""The optimizer: Adam, its learning-rate schedule, and the compiled loss.

With layer-wise decreasing learning rates (Sun et al. 2019, "How to Fine-Tune BERT"), the top
encoder layer and the head learn at the full rate; each layer below learns ``decay``
times slower than the one above it, and the embeddings slowest. Layers are recognised by
keras-bert's names (``Embedding-*``, ``Encoder-<i>-*``).
"""

from __future__ import annotations

import re

from tensorflow import keras

import core  # noqa: F401  (selects tf-keras before TensorFlow loads)
from core.config import SCHEDULES
from core.model.losses import get_loss

_ENCODER = re.compile(r"Encoder-(\d+)-")


def layer_depth(variable_name: str) -> int | None:
    """0 for an embedding weight, i for a weight of encoder layer i, None for anything else."""
    if variable_name.startswith("Embedding-"):
        return 0
    match = _ENCODER.match(variable_name)
    return int(match.group(1)) if match else None


def layer_scale(variable_name: str, decay: float, top: int) -> float:
    """Learning-rate factor of a weight: ``decay ** (top - its layer)`` in the encoder (the
    embeddings count as layer 0), 1 outside it (the head)."""
    depth = layer_depth(variable_name)
    return 1.0 if depth is None else decay ** (top - depth)


class LayerwiseAdam(keras.optimizers.Adam):
    """Adam whose learning rate is multiplied per variable by ``layer_scale(name, decay, top)``,
    ``top`` being the encoder's top layer.

    Adam's ``update_step`` reads ``self.learning_rate`` once per variable while it is traced,
    so the factor is set around that call. The factor comes from the variable's name, so it
    holds for the per-replica copies of a distributed variable too. (Scaling the gradients
    instead would do nothing: Adam's step is invariant to their scale.)
    """

    def __init__(self, decay: float, top: int, **kwargs):
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay <= 1:
            raise ValueError(f"layer decay {decay!r}: expected a number in (0, 1]")
        super().__init__(**kwargs)
        self.decay, self.top = float(decay), int(top)
        self._scale = 1.0

    @property
    def learning_rate(self):
        rate = keras.optimizers.Adam.learning_rate.fget(self)
        return rate if self._scale == 1.0 else rate * self._scale

    @learning_rate.setter
    def learning_rate(self, value):
        keras.optimizers.Adam.learning_rate.fset(self, value)

    def update_step(self, gradient, variable):
        self._scale = layer_scale(variable.name, self.decay, self.top)
        try:
            return super().update_step(gradient, variable)
        finally:
            self._scale = 1.0

    def get_config(self):
        return {**super().get_config(), "decay": self.decay, "top": self.top}


def learning_rate(lr: float, schedule: str = "constant", total_steps: int = 0, warmup: float = 0.0):
    """Adam's learning rate: ``lr`` throughout, or a linear warm-up over the first ``warmup``
    share of ``total_steps`` to ``lr`` followed by a cosine decay to 0 (keras' ``CosineDecay``).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r}: expected one of {SCHEDULES}")
    if schedule == "constant":
        return lr
    if total_steps < 1 or not 0 <= warmup < 1:
        raise ValueError(f"total_steps={total_steps}, warmup={warmup}: expected >= 1 and [0, 1)")
    warmup_steps = int(round(warmup * total_steps))
    if warmup_steps == 0:
        return keras.optimizers.schedules.CosineDecay(lr, total_steps)
    return keras.optimizers.schedules.CosineDecay(
        0.0, total_steps - warmup_steps, warmup_target=lr, warmup_steps=warmup_steps
    )


def compile_model(
    model: keras.Model,
    loss: str = "bce",
    lr=1e-5,
    jit_compile: bool = False,
    layer_decay: float = 1.0,
) -> keras.Model:
    """Adam at ``lr`` (a float or a schedule from ``learning_rate``) and the named loss; with
    ``layer_decay`` < 1, each encoder layer below the top learns that much slower than the next.
    """
    if layer_decay == 1.0:
        optimizer = keras.optimizers.Adam(learning_rate=lr)
    else:
        top = max((layer_depth(w.name) or 0) for w in model.trainable_weights)
        optimizer = LayerwiseAdam(layer_decay, top, learning_rate=lr)
    model.compile(optimizer=optimizer, loss=get_loss(loss), jit_compile=jit_compile)
    return model
