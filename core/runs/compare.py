"""Two runs side by side: the settings that differ, every fold's AUC in both, and which stored
steps they share (``python -m core.runs --compare A B``; its page ``outputs/compare-A-B.html``)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from core.config import EXTRA_STAGES, MAIN_STAGES, Settings, show
from core.io import write_text
from core.runs import steps
from core.runs.catalog import RunInfo, read_json_or_none, text
from core.runs.report import STAGE_TITLES
from core.runs.table import (
    as_float,
    auc_text,
    duration,
    format_table,
    html_row,
    page_context,
    render,
    when_text,
    write_table,
)

STAGES = MAIN_STAGES  # each fold's AUC of these, side by side


@dataclass
class Comparison:
    a: RunInfo
    b: RunInfo
    settings: list[tuple[str, str, str]]  # (setting, A's value, B's value) where they differ
    folds: list[dict]  # {"fold", "stage1": (A, B), "stage2": (A, B)}
    shared: list[tuple[str, str]]  # (label, step folder) linked by both
    only_a: list[tuple[str, str]]
    only_b: list[tuple[str, str]]


def compare(a: RunInfo, b: RunInfo) -> Comparison:
    """Two runs side by side: differing settings, per-fold AUC, the stored steps they share."""
    fa, fb = fold_aucs(a), fold_aucs(b)
    labels = sorted(set(fa) | set(fb), key=_fold_order)
    folds = [
        {
            "fold": label,
            **{s: (fa.get(label, {}).get(s), fb.get(label, {}).get(s)) for s in STAGES},
        }
        for label in labels
    ]
    return Comparison(
        a,
        b,
        setting_diffs(a, b),
        folds,
        [(k, v) for k, v in a.steps.items() if b.steps.get(k) == v],
        [(k, v) for k, v in a.steps.items() if b.steps.get(k) != v],
        [(k, v) for k, v in b.steps.items() if a.steps.get(k) != v],
    )


def setting_diffs(a: RunInfo, b: RunInfo) -> list[tuple[str, str, str]]:
    """Every setting whose value differs (all settings when both are readable, else what their
    config.yaml files say); a setting one side does not record shows as ``-``."""
    if a.settings is not None and b.settings is not None:
        va, vb = (all_settings(r.settings) for r in (a, b))
    else:
        va, vb = a.changed, b.changed
    names = list(dict.fromkeys([*va, *vb]))
    return [(k, va.get(k, "-"), vb.get(k, "-")) for k in names if va.get(k) != vb.get(k)]


def all_settings(settings: Settings) -> dict[str, str]:
    return {k: text(v) for k, v in settings.values().items() if k != "output_dir"}


def fold_aucs(r: RunInfo) -> dict[str, dict[str, float | None]]:
    """``{fold: {stage: AUC}}``: ``ensemble/fold_auc.csv`` (folds, mean, oof) when the ensemble
    has run, else each finished fold's ``done.json`` (and no pooled figure)."""
    table = r.path / "ensemble" / "fold_auc.csv"
    if table.is_file():
        with table.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        return {row["fold"]: {s: as_float(row.get(s)) for s in STAGES} for row in rows}
    out: dict[str, dict[str, float | None]] = {}
    for s in STAGES:
        for folder in (r.path / s).glob("fold*"):
            done = read_json_or_none(folder / steps.MARKERS[s])
            if done and folder.name[4:].isdigit():
                out.setdefault(folder.name[4:], {})[s] = as_float(done.get("val_auc"))
    return out


def _fold_order(label: str):
    # Folds by number, then the fold table's summary rows in its order.
    return (0, int(label), "") if label.isdigit() else (1, {"mean": 0}.get(label, 1), label)


def compare_text(c: Comparison) -> str:
    """The comparison as plain text: the two runs, differing settings, per-fold AUC, steps."""
    a, b = c.a, c.b
    summary = [
        ["status", a.status, b.status],
        ["final OOF AUC", auc_text(a.final), auc_text(b.final)],
        ["stage 1 OOF AUC", auc_text(a.stage1), auc_text(b.stage1)],
        ["stage 2 OOF AUC", auc_text(a.stage2), auc_text(b.stage2)],
        *(
            [f"{STAGE_TITLES[s]} OOF AUC", auc_text(a.extras[s]), auc_text(b.extras[s])]
            for s in EXTRA_STAGES
        ),
        ["wall time", duration(a.seconds), duration(b.seconds)],
        ["reused steps", str(a.reused), str(b.reused)],
        ["when", when_text(a.when), when_text(b.when)],
    ]
    parts = [
        f"A: {show(a.path)}\nB: {show(b.path)}",
        format_table(["", "A", "B"], summary),
        "settings that differ:",
        format_table(["setting", "A", "B"], [list(d) for d in c.settings], "  ")
        if c.settings
        else "  none",
        "per-fold AUC:",
        fold_text(c.folds),
        f"steps: {len(c.shared)} shared, {len(c.only_a)} only in A, {len(c.only_b)} only in B",
        format_table(["", "steps"], steps_rows(c), "  "),
    ]
    return "\n".join(parts)


def fold_text(folds: list[dict]) -> str:
    if not folds:
        return "  none yet (no fold of either run has finished)"
    header = ["fold", "stage 1 A", "stage 1 B", "stage 2 A", "stage 2 B"]
    rows = [[f["fold"], *(auc_text(v) for s in STAGES for v in f[s])] for f in folds]
    return format_table(header, rows, "  ")


def steps_rows(c: Comparison) -> list[list[str]]:
    def names(pairs):
        return ", ".join(v for _, v in pairs) or "none"

    return [
        ["shared", ", ".join(k for k, _ in c.shared) or "none"],
        ["only in A", names(c.only_a)],
        ["only in B", names(c.only_b)],
    ]


def compare_page(output_dir: Path, c: Comparison) -> Path:
    """Write ``<output_dir>/compare-<A>-<B>.html``, then the table that links it; return it."""
    page = output_dir / f"compare-{c.a.name}-{c.b.name}.html"
    ctx = page_context(output_dir, None, compare_context(c, output_dir))
    write_text(page, render(ctx))
    write_table(output_dir)
    return page


def compare_context(c: Comparison, output_dir: Path) -> dict:
    a_steps, b_steps = c.a.steps, c.b.steps
    labels = list(dict.fromkeys([*a_steps, *b_steps]))
    return {
        "a": html_row(c.a, output_dir),
        "b": html_row(c.b, output_dir),
        "settings": c.settings,
        "folds": c.folds,
        "steps": [
            {
                "label": k,
                "a": a_steps.get(k),
                "b": b_steps.get(k),
                "shared": a_steps.get(k) is not None and a_steps.get(k) == b_steps.get(k),
            }
            for k in labels
        ],
        "n_shared": len(c.shared),
    }
