"""Adam with layer-wise decreasing learning rates (Sun et al. 2019, "How to Fine-Tune BERT").

The top encoder layer and the head learn at the full rate; each layer below learns ``decay``
times slower than the one above it, and the embeddings slowest. Layers are recognised by
keras-bert's names (``Embedding-*``, ``Encoder-<i>-*``).
"""

from __future__ import annotations

import re

from tensorflow import keras

import core  # noqa: F401  (selects tf-keras before TensorFlow loads)

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
