"""The served formula: a run's stages mixed in probability space, ``sum(w_s * p_s)``.

One function makes every figure and every score of a run's ensemble: each candidate's test
predictions (the submission), its out-of-fold scores (the figures), and the score of a new
sentence (``core.serving.predict``, the export's graph, the distilled model's teacher), where
``p_s`` is stage ``s``'s fold mean. Weights are non-negative and sum to 1, so a mix of
probabilities is a probability (what predict promises), and it is defined for one sentence as
for a whole file. A rank average would need the whole file's ranks, which one sentence has not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.config import MAIN_STAGES
from core.io import read_json

SERVED_STAGES = MAIN_STAGES  # the stages serving computes (one encoder pass per fold)


@dataclass(frozen=True)
class Mix:
    """Stage weights: ``((stage, weight), ...)`` in stage order, each >= 0, summing to 1."""

    weights: tuple[tuple[str, float], ...]

    def __post_init__(self) -> None:
        values = [w for _, w in self.weights]
        if not values or min(values) < 0 or abs(sum(values) - 1) > 1e-9:
            raise ValueError(f"stage weights {dict(self.weights)}: expected >= 0, summing to 1")

    @classmethod
    def of(cls, weights: Mapping[str, float]) -> Mix:
        return cls(tuple((s, float(w)) for s, w in weights.items()))

    @classmethod
    def blend(cls, a: str, b: str, weight: float) -> Mix:
        """``weight`` of stage ``a``, the rest of ``b`` (a stage of weight 0 is left out)."""
        return cls.of({s: w for s, w in ((a, weight), (b, 1 - weight)) if w > 0})

    @classmethod
    def mean(cls, stages) -> Mix:
        return cls.of({s: 1 / len(stages) for s in stages})

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(s for s, _ in self.weights)

    def as_dict(self) -> dict[str, float]:
        return dict(self.weights)

    def __call__(self, scores: Mapping[str, np.ndarray]) -> np.ndarray:
        """``sum(w_s * scores[s])``: ``scores`` maps each stage of the mix to an array (NumPy,
        or a tensor in the export's graph)."""
        return sum(w * scores[s] for s, w in self.weights)

    def __str__(self) -> str:
        return " + ".join(f"{w:g}·{s}" for s, w in self.weights)


def served_mix(headline: dict) -> Mix:
    """The mix a run serves, from its ensemble's ``results.json`` headline. A run made before
    the mix was recorded served ``w·stage1 + (1-w)·stage2`` with its stage-1 weight."""
    if "served_mix" in headline:
        return Mix.of(headline["served_mix"])
    weight = headline.get("served_stage1_weight", headline.get("stage1_weight"))
    return Mix.blend("stage1", "stage2", 0.5 if weight is None else float(weight))


def run_mix(run_dir: Path) -> Mix | None:
    """The served mix a run's ensemble recorded (``<run>/ensemble/results.json``), or None
    before its ensemble has run."""
    results = Path(run_dir) / "ensemble" / "results.json"
    return served_mix(read_json(results)["headline"]) if results.is_file() else None
