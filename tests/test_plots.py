"""core.analysis.plots: every function returns a pyplot-free Figure with the expected axes, bars and
lines; use_cjk_font picks a font that really draws Chinese, or warns once naming the apt package;
inside IPython a returned figure displays as a PNG."""

from __future__ import annotations

import base64
import gc
import io
import os
import subprocess
import sys
import warnings
import weakref
from types import SimpleNamespace

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib import font_manager
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from core.analysis import eda, plots
from core.config import ROOT

TEXTS = ["好吃好吃好", "服务态度好", "不错不错不错", "环境很好很好", "推荐理由很充分"]  # 5 5 6 6 7
LABELS = [1, 0, 0, 1, 1]


@pytest.fixture(autouse=True)
def _restore_rcparams():
    with matplotlib.rc_context():
        yield


def bars(ax) -> list[Rectangle]:
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def cjk_font_installed() -> bool:
    paths = {f.fname for f in font_manager.fontManager.ttflist}
    paths |= set(font_manager.findSystemFonts())
    return any(
        plots._covers(p) for p in paths if "LastResort" not in p and "last-resort" not in p.lower()
    )


needs_cjk = pytest.mark.skipif(not cjk_font_installed(), reason="no CJK font installed")


def test_length_hist_one_bar_per_length_and_set():
    fig = plots.length_hist(TEXTS, ["好吃好吃好", "推荐理由很充分"])
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    heights = [b.get_height() for b in bars(fig.axes[0])]
    assert len(heights) == 2 * 3  # lengths 5, 6, 7 × train, test
    assert heights[:3] == pytest.approx([0.4, 0.4, 0.2])  # train: shares of its 5 rows
    assert heights[3:] == pytest.approx([0.5, 0.0, 0.5])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["5", "6", "7"]


def test_length_by_label_hist():
    fig = plots.length_by_label_hist(TEXTS, LABELS)
    (ax,) = fig.axes
    heights = [b.get_height() for b in bars(ax)]
    assert heights == pytest.approx([0.5, 0.5, 0.0, 1 / 3, 1 / 3, 1 / 3])  # label 0, label 1
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["label 0 (n=2)", "label 1 (n=3)"]


def test_top_chars_bar_counts_and_by_label():
    plain = plots.top_chars_bar(eda.top_chars(TEXTS, n=4))
    (ax,) = plain.axes
    assert len(bars(ax)) == 4
    assert [t.get_text() for t in ax.get_xticklabels()] == ["好", "不", "很", "错"]
    split = plots.top_chars_bar(eda.top_chars(TEXTS, n=4, labels=LABELS))
    assert len(bars(split.axes[0])) == 2 * 4


def test_learning_curves_one_panel_per_metric_loss_first():
    history = {
        "auc": [0.8, 0.9],
        "val_auc": [0.85, None],
        "loss": [0.5, 0.3],
        "val_loss": [0.4, 0.35],
    }
    fig = plots.learning_curves(history, "fold 0")
    assert [ax.get_title() for ax in fig.axes] == ["loss", "auc"]
    assert all(len(ax.lines) == 2 for ax in fig.axes)  # train + validation
    assert fig.axes[1].lines[1].get_xdata().tolist() == [1, 2]  # epochs from 1
    best = fig.axes[0].collections[0].get_offsets()[0]
    assert best.tolist() == pytest.approx([2, 0.35])  # lowest validation loss
    assert fig.get_suptitle() == "fold 0"


def test_learning_curves_without_validation():
    fig = plots.learning_curves({"loss": [0.5, 0.4, 0.3]})
    assert len(fig.axes) == 1 and len(fig.axes[0].lines) == 1


def test_roc_curves_one_line_per_model_plus_chance():
    y = np.array([0, 0, 1, 1])
    fig = plots.roc_curves(
        {"perfect": (y, [0.1, 0.2, 0.8, 0.9]), "mixed": (y, [0.1, 0.4, 0.35, 0.8])}
    )
    (ax,) = fig.axes
    assert len(ax.lines) == 3
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["perfect (AUC 1.0000)", "mixed (AUC 0.7500)", "chance"]


def test_fold_auc_bars_grouped_by_stage():
    table = pd.DataFrame(
        {
            "fold": [0, 0, 1, 1, 2, 2],
            "stage": ["stage 1", "stage 2"] * 3,
            "auc": [0.95, 0.96, 0.94, 0.95, 0.93, 0.97],
        }
    )
    fig = plots.fold_auc_bars(table)
    (ax,) = fig.axes
    assert len(bars(ax)) == 6
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["stage 1 (mean 0.9400)", "stage 2 (mean 0.9600)"]
    assert ax.get_ylim()[0] == pytest.approx(0.91)  # just below the lowest AUC


def test_score_hist_one_outline_per_label_or_one_for_all():
    scores = [0.1, 0.2, 0.7, 0.9]
    assert len(plots.score_hist([0, 0, 1, 1], scores).axes[0].patches) == 2
    assert len(plots.score_hist(None, scores, "test").axes[0].patches) == 1


def test_figures_are_not_registered_with_pyplot():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plots.length_hist(TEXTS, TEXTS)
    assert plt.get_fignums() == before  # no double display in notebooks, no figure leak


def test_figures_display_as_png_in_ipython():
    from IPython.core.formatters import DisplayFormatter
    from IPython.core.pylabtools import select_figure_formats

    shell = SimpleNamespace(display_formatter=DisplayFormatter())
    assert plots.show_figures_inline(shell)
    fig = plots.learning_curves({"loss": [0.5, 0.3]})
    data, _ = shell.display_formatter.format(fig)
    assert base64.b64decode(data["image/png"]).startswith(b"\x89PNG")
    assert data["text/plain"].startswith("<Figure")
    alive = weakref.ref(fig)
    del fig, data
    gc.collect()
    assert alive() is None  # displaying keeps no reference: nothing leaks

    chosen = SimpleNamespace(display_formatter=DisplayFormatter())
    select_figure_formats(chosen, "svg")  # e.g. the user's %config InlineBackend.figure_formats
    plots.show_figures_inline(chosen)
    data, _ = chosen.display_formatter.format(plots.learning_curves({"loss": [0.5]}))
    assert "image/svg+xml" in data and "image/png" not in data  # kept, not shown twice


IMPORT_IN = {
    "python": "import core.analysis.plots as p, sys\n"
    "assert not p.show_figures_inline() and 'IPython' not in sys.modules",
    "ipython": "from IPython.core.interactiveshell import InteractiveShell\n"
    "from matplotlib.figure import Figure\n"
    "shell = InteractiveShell.instance()\n"
    "import core.analysis.plots\n"
    "assert Figure in shell.display_formatter.formatters['image/png'].type_printers",
}


@pytest.mark.parametrize("where", IMPORT_IN)
def test_importing_plots_registers_the_formatter_only_inside_ipython(where, tmp_path):
    env = {**os.environ, "IPYTHONDIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_IN[where]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]


@needs_cjk
def test_use_cjk_font_sets_a_font_that_draws_chinese():
    family = plots.use_cjk_font()
    assert family is not None
    assert matplotlib.rcParams["font.sans-serif"][0] == family
    assert matplotlib.rcParams["axes.unicode_minus"] is False
    path = font_manager.findfont(family, fallback_to_default=False)
    assert plots._covers(path)


@needs_cjk
def test_chinese_tick_labels_render_without_missing_glyphs():
    fig = plots.top_chars_bar(eda.top_chars(TEXTS, n=5, labels=LABELS), title="推荐理由")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig.savefig(io.BytesIO(), format="png")
    assert not [w for w in caught if "missing from font" in str(w.message)]


def test_use_cjk_font_warns_once_with_the_apt_package(monkeypatch):
    monkeypatch.setattr(plots, "_found", [])
    monkeypatch.setattr(plots, "_find_cjk_family", lambda: None)
    with pytest.warns(plots.CJKFontWarning, match="apt-get install fonts-wqy-microhei"):
        assert plots.use_cjk_font() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plots.use_cjk_font() is None  # no second warning
    assert matplotlib.rcParams["axes.unicode_minus"] is False
