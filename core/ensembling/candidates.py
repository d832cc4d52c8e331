"""The ensemble's candidates: each stage's fold mean, their mean and a weighted blend of two stages
(and, with an extra folded stage, blends with it), each scored on out-of-fold rows without
leakage, and the final choice, nested the same way.

Every candidate of a run is a ``core.ensembling.mix.Mix`` of its stages' fold means, in
probability space: the formula that makes its submission is the one that scores a new sentence
and its out-of-fold rows.

Leakage rule: nothing fitted (a blend weight, an F1 threshold, the choice of the final
candidate) may use the labels of the rows it is scored on. Every fitted quantity is therefore
reported by nested selection: for each fold k it is chosen on the OOF rows of the other folds and
applied to fold k's rows. The value used for the test predictions is chosen on all OOF rows; its
OOF score is in-sample and labelled as such.

Nothing here writes files; core.ensembling.ensemble (the ensemble step) saves the tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from core.ensembling.fold_outputs import StagePredictions, load_runs
from core.ensembling.mix import Mix
from core.metrics import auc, best_f1

# Weight of the first stage in ``w*a + (1-w)*b``: 0, 0.05, ..., 1 (rounded so 0.35 prints as 0.35).
WEIGHT_GRID: tuple[float, ...] = tuple(round(i * 0.05, 2) for i in range(21))
_AUC_TIE = 1e-12  # AUCs closer than this count as equal when picking a weight or a candidate


@dataclass
class Blend:
    """A candidate's scores.

    ``oof`` is the honest OOF score: for a fitted blend, fold k's rows are scored with the weight
    chosen without fold k. ``oof_in_sample`` uses the weight chosen on all OOF rows (the one
    applied to ``test``: ``mix`` applied to the stages' OOF scores). ``fold_scores[i]`` scores
    every OOF row with the weight chosen without the i-th fold (sorted fold ids), so a threshold
    or the final choice can be nested inside the same selection. ``mix`` is the formula of the
    test predictions (None for a rank average of several runs, which has no per-sentence form).
    """

    name: str
    oof: np.ndarray
    test: np.ndarray | None
    mix: Mix | None = None
    fitted: bool = False
    oof_in_sample: np.ndarray | None = None
    fold_mixes: dict[int, Mix] | None = None
    fold_scores: np.ndarray | None = None
    test_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.oof_in_sample is None:
            self.oof_in_sample = self.oof

    def scores_without(self, i: int) -> np.ndarray:
        """Every OOF row scored as chosen without the i-th fold (unfitted: ``oof``)."""
        return self.oof if self.fold_scores is None else self.fold_scores[i]


@dataclass
class F1Result:
    """F1 with the threshold nested in CV (``f1``) and the in-sample figures (threshold fitted on
    the rows it is scored on, so optimistic). ``threshold`` (in-sample) is the one for the test."""

    f1: float
    f1_in_sample: float
    threshold: float
    fold_thresholds: dict[int, float]


@dataclass
class NestedChoice:
    """The final choice nested in the folds: ``picks[k]`` is the candidate chosen without fold
    k's labels (best AUC on the other folds' rows, each candidate as chosen without fold k), and
    ``oof`` scores fold k's rows with it; ``oof_auc`` is the honest figure of choosing."""

    picks: dict[int, str]
    oof: np.ndarray
    oof_auc: float


# ----------------------------------------------------------------------------- scoring


def _same_rows(stages: Mapping[str, StagePredictions]) -> tuple[np.ndarray, np.ndarray]:
    """Labels and folds shared by all stages; raise if the stages cover different rows/folds."""
    items = list(stages.items())
    first_name, first = items[0]
    for name, s in items[1:]:
        for col in ("row", "label", "fold"):
            if not np.array_equal(first.oof[col].to_numpy(), s.oof[col].to_numpy()):
                raise ValueError(
                    f"stages {first_name} and {name} disagree on OOF column {col!r}; "
                    "they must come from the same folds.csv"
                )
        if not np.array_equal(first.test["id"].to_numpy(), s.test["id"].to_numpy()):
            raise ValueError(f"{first_name} and {name} predict different test ids")
    return first.oof["label"].to_numpy(), first.oof["fold"].to_numpy()


def fold_table(stages: Mapping[str, StagePredictions]) -> pd.DataFrame:
    """AUC of each fold's validation rows per stage, then the mean of folds and the pooled OOF AUC.

    Columns: ``fold`` (int, ``"mean"``, ``"oof"``), ``n``, ``positives``, one AUC column per stage.
    """
    labels, folds = _same_rows(stages)
    rows = []
    for k in np.unique(folds):
        m = folds == k
        row = {"fold": int(k), "n": int(m.sum()), "positives": int(labels[m].sum())}
        for name, s in stages.items():
            row[name] = auc(labels[m], s.oof["pred"].to_numpy()[m])
        rows.append(row)
    table = pd.DataFrame(rows)
    mean = {"fold": "mean", "n": None, "positives": None}
    pooled = {"fold": "oof", "n": len(labels), "positives": int(labels.sum())}
    for name, s in stages.items():
        mean[name] = float(table[name].mean())
        pooled[name] = auc(labels, s.oof["pred"].to_numpy())
    out = pd.concat([table, pd.DataFrame([mean, pooled])], ignore_index=True)
    return out.astype({"n": "Int64", "positives": "Int64"})


# ----------------------------------------------------------------------------- blends


def rank_average(scores: Sequence[np.ndarray]) -> np.ndarray:
    """Mean of normalised ranks ``rankdata(s) / n`` (ties share their average rank); in (0, 1]."""
    arrays = [np.asarray(s, dtype=float) for s in scores]
    if not arrays or len({a.shape for a in arrays}) != 1:
        raise ValueError("rank_average needs at least one array, all of the same length")
    return np.mean([rankdata(a) / a.size for a in arrays], axis=0)


def fold_mean(stage: StagePredictions, name: str | None = None) -> Blend:
    """A stage as it stands: OOF is its OOF, test is the mean of the fold models' predictions."""
    return Blend(
        name=name or f"{stage.stage} fold mean",
        oof=stage.oof["pred"].to_numpy(dtype=float),
        test=stage.test[stage.fold_columns].mean(axis=1).to_numpy(),
        mix=Mix.of({stage.stage: 1.0}),
        test_ids=stage.test["id"].to_numpy(),
    )


def mean_blend(means: Mapping[str, Blend]) -> Blend:
    """The equal mix of the stages' fold means (``means``: stage -> its ``fold_mean``): nothing
    fitted."""
    mix = Mix.mean(list(means))
    first = next(iter(means.values()))
    return Blend(
        name=f"mean of {'+'.join(means)}",
        oof=mix({s: m.oof for s, m in means.items()}),
        test=mix({s: m.test for s, m in means.items()}),
        mix=mix,
        test_ids=first.test_ids,
    )


def _rank_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count half, as in sklearn); the weight grid
    calls it ~100 times per blend, where ``roc_auc_score``'s input validation dominates."""
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((rankdata(scores)[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _pick_weight(a: np.ndarray, b: np.ndarray, labels: np.ndarray, grid: Sequence[float]) -> float:
    """The grid weight with the best AUC of ``w*a + (1-w)*b``; ties go to the weight nearest 0.5
    (an even mix is the safer prior when the data cannot tell the weights apart)."""
    scores = [_rank_auc(labels, w * a + (1 - w) * b) for w in grid]
    best = max(scores)
    tied = [w for w, s in zip(grid, scores, strict=True) if s >= best - _AUC_TIE]
    return float(min(tied, key=lambda w: (abs(w - 0.5), w)))


def stage_blend(
    a: Blend, b: Blend, labels, folds, grid: Sequence[float] = WEIGHT_GRID, name: str | None = None
) -> Blend:
    """``w*a + (1-w)*b`` of two stages' fold means (``fold_mean``), ``w`` chosen on the grid by
    OOF AUC, nested in the folds: fold k's OOF rows are scored with the weight chosen on the
    other folds' rows only; the test is scored with the weight chosen on all OOF rows.

    Mixes probabilities, as serving does: the grid's weight absorbs the two stages' different
    spreads (the one it picks is the best mix of these scales, for a whole file as for one
    sentence).
    """
    labels, folds = np.asarray(labels), np.asarray(folds)
    (sa,), (sb,) = a.mix.stages, b.mix.stages
    if not (a.oof.shape == b.oof.shape == labels.shape == folds.shape):
        raise ValueError("a, b, labels and folds must have the same length")
    fold_ids = np.unique(folds)
    if fold_ids.size < 2:
        raise ValueError("nested weight selection needs at least two folds")
    honest = np.empty_like(a.oof)
    fold_mixes, fold_scores = {}, np.empty((fold_ids.size, a.oof.size))
    for i, k in enumerate(fold_ids):
        train = folds != k  # fold k's labels are never looked at for fold k's weight
        w = _pick_weight(a.oof[train], b.oof[train], labels[train], grid)
        fold_mixes[int(k)] = Mix.blend(sa, sb, w)
        fold_scores[i] = w * a.oof + (1 - w) * b.oof
        honest[~train] = fold_scores[i][~train]
    w_all = _pick_weight(a.oof, b.oof, labels, grid)
    mix = Mix.blend(sa, sb, w_all)
    scores = {sa: a.oof, sb: b.oof}
    test = None if a.test is None or b.test is None else mix({sa: a.test, sb: b.test})
    return Blend(
        name=name or f"weighted blend of {sa}+{sb}",
        oof=honest,
        test=test,
        mix=mix,
        fitted=True,
        oof_in_sample=mix(scores),
        fold_mixes=fold_mixes,
        fold_scores=fold_scores,
        test_ids=a.test_ids,
    )


def honest_best_f1(labels, scores, folds) -> F1Result:
    """F1 with the threshold for fold k chosen on the other folds' rows (``best_f1``) only.

    ``scores`` is 1-D (same scores for every fold) or ``(n_folds, n)`` where row i holds the
    scores of a fitted blend chosen without the i-th fold (``Blend.fold_scores``), so the
    threshold for fold k is also picked on scores that never saw fold k's labels.
    """
    labels, folds = np.asarray(labels), np.asarray(folds)
    scores = np.asarray(scores, dtype=float)
    fold_ids = np.unique(folds)
    per_fold = np.broadcast_to(scores, (fold_ids.size, labels.size)) if scores.ndim == 1 else scores
    if per_fold.shape != (fold_ids.size, labels.size):
        raise ValueError(f"scores must be ({labels.size},) or ({fold_ids.size}, {labels.size})")
    predicted = np.zeros(labels.size, dtype=bool)
    thresholds = {}
    for i, k in enumerate(fold_ids):
        held = folds == k
        _, t = best_f1(labels[~held], per_fold[i][~held])
        thresholds[int(k)] = t
        predicted[held] = per_fold[i][held] >= t
    tp = int((predicted & (labels == 1)).sum())
    f1 = 2 * tp / max(int(predicted.sum()) + int((labels == 1).sum()), 1)
    # In-sample: the honest OOF scores (fold k's row of ``scores`` on fold k's rows) with a
    # threshold fitted on these same rows.
    pooled = scores if scores.ndim == 1 else _diagonal(per_fold, folds, fold_ids)
    f1_in, t_in = best_f1(labels, pooled)
    return F1Result(f1=float(f1), f1_in_sample=f1_in, threshold=t_in, fold_thresholds=thresholds)


def _diagonal(per_fold: np.ndarray, folds: np.ndarray, fold_ids: np.ndarray) -> np.ndarray:
    out = np.empty(folds.size)
    for i, k in enumerate(fold_ids):
        out[folds == k] = per_fold[i][folds == k]
    return out


# ----------------------------------------------------------------------------- choosing


def candidates(
    stages: Mapping[str, StagePredictions], grid: Sequence[float] = WEIGHT_GRID
) -> dict[str, Blend]:
    """Stage 1 and stage 2 (the first two of ``stages``): each fold mean, their mean and their
    weighted blend; each further stage (the students, the distilled copies): its fold mean, its
    weighted blend with each of the first two, and the mean of the three."""
    labels, folds = _same_rows(stages)
    means = {s: fold_mean(p) for s, p in stages.items()}
    first, second, *extra = means
    out = [means[first], means[second]]
    out.append(mean_blend({s: means[s] for s in (first, second)}))
    out.append(stage_blend(means[first], means[second], labels, folds, grid))
    for x in extra:
        out.append(means[x])
        out += [stage_blend(means[s], means[x], labels, folds, grid) for s in (first, second)]
        out.append(mean_blend({s: means[s] for s in (first, second, x)}))
    return {b.name: b for b in out}


def results_table(blends: Mapping[str, Blend], labels, folds) -> pd.DataFrame:
    """One row per candidate, honest figures first.

    ``oof_auc``: honest OOF AUC (nested for fitted blends); ``f1``: F1 at the nested threshold;
    ``*_in_sample``: the same with the weight/threshold fitted on all OOF rows (optimistic: for a
    mix, its formula on the stages' OOF scores); ``mix``: the stage weights of the test scores
    (chosen on all OOF rows if ``fitted``, else fixed); ``fold_mixes``: the weights applied to
    each fold's rows.
    """
    labels, folds = np.asarray(labels), np.asarray(folds)
    rows = []
    for name, b in blends.items():
        f1 = honest_best_f1(labels, b.oof if b.fold_scores is None else b.fold_scores, folds)
        # The in-sample threshold is the one that goes with the test scores: fitted on the
        # scores made with the all-OOF weight.
        f1_in, threshold = best_f1(labels, b.oof_in_sample)
        fold_mixes = None if b.fold_mixes is None else {k: str(m) for k, m in b.fold_mixes.items()}
        rows.append(
            {
                "candidate": name,
                "oof_auc": auc(labels, b.oof),
                "f1": f1.f1,
                "mix": None if b.mix is None else str(b.mix),
                "fitted": b.fitted,
                "oof_auc_in_sample": auc(labels, b.oof_in_sample),
                "f1_in_sample": f1_in,
                "threshold": threshold,
                "fold_mixes": fold_mixes,
            }
        )
    return pd.DataFrame(rows)


def choose_final(table: pd.DataFrame) -> str:
    """The candidate with the best honest OOF AUC; ties go to the earliest (simplest) row."""
    scores = table["oof_auc"].astype(float)
    if scores.isna().all():
        raise ValueError("no candidate has an OOF AUC (do the labels hold both classes?)")
    return str(table.loc[scores.idxmax(), "candidate"])


def nested_choice(blends: Mapping[str, Blend], labels, folds) -> NestedChoice:
    """The final choice, nested like every fitted quantity: for each fold k, the candidate with
    the best AUC on the other folds' rows, every candidate scored as chosen without fold k
    (``Blend.scores_without``: a blend's weight picked without fold k); fold k's rows are then
    scored by that candidate. Ties go to the earliest candidate, as in ``choose_final``."""
    labels, folds = np.asarray(labels), np.asarray(folds)
    out, picks = np.empty(labels.size), {}
    for i, k in enumerate(np.unique(folds)):
        held = folds == k
        best, best_auc = None, -np.inf
        for name, b in blends.items():
            value = _rank_auc(labels[~held], b.scores_without(i)[~held])
            if value > best_auc + _AUC_TIE:
                best, best_auc = name, value
        if best is None:
            raise ValueError("no candidate has an OOF AUC (do the labels hold both classes?)")
        picks[int(k)] = best
        out[held] = blends[best].scores_without(i)[held]
    return NestedChoice(picks, out, auc(labels, out))


def rank_blend(stages: Sequence[StagePredictions]) -> Blend:
    """Equal-weight rank average of stages from runs on the same folds (``load_runs``). Nothing
    is fitted, so no label is used; each run's test score is its fold mean (``fold_mean``)."""
    means = [fold_mean(st) for st in stages]
    ids = means[0].test_ids
    tests = [pd.Series(m.test, index=m.test_ids).loc[ids].to_numpy() for m in means]
    return Blend(
        name=f"rank average of {len(stages)} runs' {stages[0].stage}",
        oof=rank_average([m.oof for m in means]),
        test=rank_average(tests),
        test_ids=ids,
    )


def blend_runs(run_dirs: Sequence[str | Path], stage: str = "stage1") -> Blend:
    """``rank_blend`` of one stage of several finished runs that share their folds: other
    encoders, learning rates, machines, or training draws (``train_seed``)."""
    return rank_blend(load_runs(run_dirs, stage))
