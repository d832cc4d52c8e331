"""Matplotlib figures for the notebooks; each function returns a ``Figure`` and never shows it.

Figures are built with ``matplotlib.figure.Figure`` rather than ``pyplot``: pyplot would register
them globally, so a notebook cell that returns one would display it twice (once as the cell's
value, once by the inline backend) and long runs would keep every figure alive. Such a figure is
shown as a PNG only if IPython has an image formatter for ``Figure``, which ``%matplotlib inline``
or importing pyplot would add; so importing this module inside IPython (a Jupyter or papermill
kernel) registers it (``show_figures_inline``), and notebooks need no magic. Scripts call
``fig.savefig``. No backend is forced.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import font_manager, ft2font
from matplotlib.figure import Figure

CJK_APT_PACKAGE = "fonts-wqy-microhei"
# Families that cover simplified Chinese, best first; any other font with the glyphs comes after.
CJK_FAMILIES = (
    "Noto Sans CJK SC",
    "Noto Sans SC",
    "Source Han Sans SC",
    "WenQuanYi Micro Hei",
    "WenQuanYi Zen Hei",
    "Microsoft YaHei",
    "PingFang SC",
    "Heiti SC",
    "SimHei",
    "Droid Sans Fallback",
    "Noto Sans CJK JP",
    "Arial Unicode MS",
)
_PROBE = "推荐理由"  # the font must have these glyphs to count as CJK-capable

_found: list[str | None] = []  # memo of the font search: [family or None] once it ran


class CJKFontWarning(UserWarning):
    """No installed font can draw Chinese; labels would render as empty boxes."""


def use_cjk_font() -> str | None:
    """Put an installed CJK font first in ``font.sans-serif``; return its family (or None).

    Also sets ``axes.unicode_minus = False``: CJK fonts often lack U+2212, so minus signs on
    ticks would become boxes. Without any CJK font it warns once, naming the apt package.
    """
    if not _found:
        _found.append(_find_cjk_family())
        if _found[0] is None:
            warnings.warn(
                "no CJK font found: Chinese text in figures will render as empty boxes — "
                f"install one, e.g. `apt-get install {CJK_APT_PACKAGE}` (Debian/Ubuntu)",
                CJKFontWarning,
                stacklevel=2,
            )
    family = _found[0]
    if family is not None:
        rest = [f for f in matplotlib.rcParams["font.sans-serif"] if f != family]
        matplotlib.rcParams["font.sans-serif"] = [family, *rest]
    matplotlib.rcParams["axes.unicode_minus"] = False
    return family


def show_figures_inline(shell=None) -> bool:
    """Make IPython display a ``Figure`` as a PNG (as ``%matplotlib inline`` does); True if done.

    ``shell`` defaults to the running IPython, if any (never imported here: scripts stay free of
    it). A format chosen already (``%matplotlib inline``, ``%config InlineBackend...``) is kept.
    """
    if shell is None and "IPython" in sys.modules:
        shell = sys.modules["IPython"].get_ipython()
    if shell is None:
        return False
    if not any(Figure in f.type_printers for f in shell.display_formatter.formatters.values()):
        from IPython.core.pylabtools import select_figure_formats

        select_figure_formats(shell, "png")  # tight bounding box, the figure's dpi
    return True


show_figures_inline()


def length_hist(train_texts: Sequence[str], test_texts: Sequence[str]) -> Figure:
    """Text-length histogram, train vs test side by side; shares, since the sets differ in size."""
    return _length_bars({"train": train_texts, "test": test_texts}, "Text length: train vs test")


def length_by_label_hist(texts: Sequence[str], labels: Sequence[int]) -> Figure:
    """Text-length histogram per label (shares within each label)."""
    labels = np.asarray(labels, dtype=int)
    groups = {
        f"label {y}": [t for t, lab in zip(texts, labels, strict=True) if lab == y]
        for y in sorted(set(labels.tolist()))
    }
    return _length_bars(groups, "Text length by label")


def top_chars_bar(table: pd.DataFrame, title: str = "Most frequent characters") -> Figure:
    """Bars for a ``core.analysis.eda.top_chars`` table: counts, or — when the table has ``share_1``
    /
    ``share_0`` — the share of label-1 vs label-0 texts containing each character."""
    fig, ax = _figure(figsize=(max(6.0, 0.32 * len(table) + 2), 4))
    x = np.arange(len(table))
    if {"share_1", "share_0"} <= set(table.columns):
        width = 0.4
        ax.bar(x - width / 2, table["share_1"], width, label="label 1 texts", color="tab:green")
        ax.bar(x + width / 2, table["share_0"], width, label="label 0 texts", color="tab:gray")
        ax.set_ylabel("share of texts containing the character")
        ax.legend()
    else:
        ax.bar(x, table["count"], color="tab:blue")
        ax.set_ylabel("occurrences")
    ax.set_xticks(x, list(table["char"]))
    ax.set_xlim(-0.6, len(table) - 0.4)
    ax.set_title(title)
    return fig


def learning_curves(history: Mapping[str, Sequence[float]], title: str = "") -> Figure:
    """One panel per metric (``loss``, ``auc``, …) with its training and ``val_`` curves.

    Epochs are numbered from 1; ``None``/NaN entries leave gaps. The best validation epoch (lowest
    for metrics named ``*loss``, highest otherwise) is marked with a dot.
    """
    metrics = list(dict.fromkeys(k.removeprefix("val_") for k in history))
    metrics.sort(key=lambda m: m != "loss")  # loss first, the rest in the given order
    fig, axes = _figure(ncols=max(1, len(metrics)), figsize=(4.5 * max(1, len(metrics)), 3.5))
    axes = np.atleast_1d(axes)
    for ax, metric in zip(axes, metrics, strict=False):
        for key, label, style in ((metric, "train", "o-"), (f"val_{metric}", "validation", "s--")):
            if key not in history:
                continue
            y = np.asarray([np.nan if v is None else v for v in history[key]], dtype=float)
            epochs = np.arange(1, len(y) + 1)
            ax.plot(epochs, y, style, label=label)
            if key.startswith("val_") and np.isfinite(y).any():
                best = np.nanargmin(y) if metric.endswith("loss") else np.nanargmax(y)
                ax.scatter(
                    [epochs[best]],
                    [y[best]],
                    s=80,
                    facecolors="none",
                    edgecolors="red",
                    zorder=3,
                    label=f"best {y[best]:.4f}",
                )
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(metric)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend()
    if title:
        fig.suptitle(title)
    return fig


def roc_curves(
    curves: Mapping[str, tuple[Sequence[int], Sequence[float]]], title: str = "ROC"
) -> Figure:
    """One ROC line per ``name -> (labels, scores)``, AUC in the legend, plus the chance line."""
    from sklearn.metrics import roc_auc_score, roc_curve  # only this figure needs scikit-learn

    fig, ax = _figure(figsize=(5, 5))
    for name, (labels, scores) in curves.items():
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(labels, scores):.4f})")
    ax.plot([0, 1], [0, 1], ":", color="gray", label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_title(title)
    ax.legend(loc="lower right")
    return fig


def fold_auc_bars(table: pd.DataFrame, title: str = "Validation AUC per fold") -> Figure:
    """Grouped bars of ``auc`` per ``fold``, one colour per ``stage``; stage means in the legend.

    The y axis starts just below the lowest AUC: the folds differ in the third decimal, which
    bars from 0 would hide. Each bar is labelled with its value.
    """
    pivot = table.pivot_table(
        index="fold", columns="stage", values="auc", aggfunc="mean", sort=False
    )
    folds, stages = list(pivot.index), list(pivot.columns)
    fig, ax = _figure(figsize=(max(5.0, 1.2 * len(folds) * max(1, len(stages)) + 1), 4))
    width = 0.8 / max(1, len(stages))
    x = np.arange(len(folds))
    for i, stage in enumerate(stages):
        values = pivot[stage].to_numpy(dtype=float)
        bars = ax.bar(
            x + (i - (len(stages) - 1) / 2) * width,
            values,
            width,
            label=f"{stage} (mean {np.nanmean(values):.4f})",
        )
        ax.bar_label(bars, fmt="%.4f", fontsize=7, rotation=90, padding=2)
    low = float(np.nanmin(pivot.to_numpy(dtype=float))) if pivot.size else 0.5
    ax.set_ylim(max(0.0, low - 0.02), 1.0)
    ax.set_xticks(x, [str(f) for f in folds])
    ax.set_xlabel("fold")
    ax.set_ylabel("ROC AUC")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: bars fill the axes
    return fig


def score_hist(
    labels: Sequence[int] | None, scores: Sequence[float], title: str = "Predicted scores"
) -> Figure:
    """Histogram of predicted probabilities, one filled outline per label (or one for all rows
    when ``labels`` is None, e.g. test predictions); densities, so the classes compare in shape."""
    scores = np.asarray(scores, dtype=float)
    if labels is None:
        groups = {"all rows": scores}
    else:
        labels = np.asarray(labels, dtype=int)
        groups = {f"label {y}": scores[labels == y] for y in sorted(set(labels.tolist()))}
    fig, ax = _figure(figsize=(6, 3.5))
    bins = np.linspace(0, 1, 41)
    for name, values in groups.items():
        ax.hist(
            values,
            bins=bins,
            density=True,
            histtype="stepfilled",
            alpha=0.45,
            label=f"{name} (n={len(values)})",
        )
    ax.set_xlim(0, 1)
    ax.set_xlabel("predicted probability of label 1")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend()
    return fig


# -- helpers ---------------------------------------------------------------------------------------


def _figure(ncols: int = 1, figsize=(6, 4)):
    """A pyplot-free figure with ``ncols`` axes, CJK font set first so tick labels render."""
    use_cjk_font()
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(1, ncols)


def _length_bars(groups: Mapping[str, Sequence[str]], title: str) -> Figure:
    """Side-by-side bars, one per length (integer bins) and group, heights = share of the group."""
    fig, ax = _figure(figsize=(7, 3.5))
    lengths = {
        name: np.asarray([len(t) for t in texts], dtype=int) for name, texts in groups.items()
    }
    every = np.concatenate([v for v in lengths.values()] + [np.zeros(0, dtype=int)])
    lo, hi = (int(every.min()), int(every.max())) if every.size else (0, 1)
    bins = np.arange(lo, hi + 2) - 0.5  # one bin per integer length, centred on it
    data = list(lengths.values())
    weights = [np.full(len(v), 1 / len(v)) if len(v) else np.zeros(0) for v in data]
    ax.hist(
        data,
        bins=bins,
        weights=weights,
        histtype="bar",
        label=[f"{name} (n={len(v)})" for name, v in lengths.items()],
    )
    ax.set_xticks(np.arange(lo, hi + 1))
    ax.set_xlabel("characters")
    ax.set_ylabel("share of rows")
    ax.set_title(title)
    ax.legend()
    return fig


def _find_cjk_family() -> str | None:
    """The best installed CJK family, registering system fonts matplotlib's cache predates.

    matplotlib caches its font list on first use, so a font installed afterwards (e.g. by the
    set-up script after a first import) is invisible until the cache is rebuilt; adding the
    missing system font files here makes it usable without deleting the cache.
    """
    manager = font_manager.fontManager
    family = _preferred(manager.ttflist)
    if family is None:
        known = {f.fname for f in manager.ttflist}
        for path in font_manager.findSystemFonts():
            if path not in known:
                try:
                    manager.addfont(path)
                except Exception:  # an unreadable font file should not stop plotting
                    continue
        family = _preferred(manager.ttflist) or _covering(manager.ttflist)
    return family


def _preferred(entries) -> str | None:
    names = {f.name for f in entries}
    return next((family for family in CJK_FAMILIES if family in names), None)


def _covering(entries) -> str | None:
    """Any other font with real glyphs for the probe text."""
    for entry in sorted(entries, key=lambda f: f.name):
        # matplotlib's bundled "Last Resort" font maps every code point to a placeholder box.
        if not entry.name.startswith("Last Resort") and _covers(entry.fname):
            return entry.name
    return None


def _covers(path: str) -> bool:
    try:
        font = ft2font.FT2Font(path)
    except Exception:  # unreadable or unsupported file: not a candidate
        return False
    return all(font.get_char_index(ord(ch)) for ch in _PROBE)
