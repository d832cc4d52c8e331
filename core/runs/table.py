"""The runs table: every run under ``<output_dir>/runs/`` (core.runs.catalog), as text and as
``<output_dir>/index.html``, which sorts by any column on a click, links each run's report (and
each report links back) and every comparison page written so far (core.runs.compare)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from urllib.parse import quote

from core.config import DEFAULTS, EXTRA_STAGES, show
from core.io import write_text
from core.runs.catalog import ORDER, RunInfo, collect, number
from core.runs.folder import failed_text
from core.runs.report import STAGE_TITLES
from core.runs.store import Usage, size_text, usage

INDEX = "index.html"
TEMPLATE = "runs.html.j2"
COLUMNS = (
    "run",
    "status",
    "final",
    "stage 1",
    "stage 2",
    *(STAGE_TITLES[s] for s in EXTRA_STAGES),  # a dash in runs without them
    "wall time",
    "reused",
    "when",
    "own size",  # the run's folder, links not followed
    "steps size",  # the stored steps it links (shared: other runs link them too)
)


def table_rows(runs: list[RunInfo]) -> list[list[str]]:
    """The text table's cells, one row per run (``COLUMNS``, then the settings)."""
    return [
        [
            r.name,
            r.status,
            auc_text(r.final),
            auc_text(r.stage1),
            auc_text(r.stage2),
            *(auc_text(v) for v in r.extras.values()),
            duration(r.seconds),
            str(r.reused),
            when_text(r.when),
            size_text(r.own_bytes),
            steps_text(r),
            settings_text(r.changed),
        ]
        for r in runs
    ]


def steps_text(r: RunInfo) -> str:
    """The size of the steps a run links, and how many of them other runs link too."""
    shared = f" ({len(r.shared)} shared)" if r.shared else ""
    return size_text(r.step_bytes) + shared


def gc_text(use: Usage) -> str:
    """What ``python -m core.runs gc`` would free: the stored steps no run links."""
    n = len(use.unlinked)
    if not n:
        return "gc would free nothing: every stored step is linked by a run"
    what = f"{n} step{'s' * (n != 1)} no run links"
    return f"gc would free {size_text(use.unlinked_bytes)} ({what}): python -m core.runs gc"


def format_table(header: list[str], rows: list[list[str]], indent: str = "") -> str:
    """Plain columns padded to their widest cell; the last column is not padded."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = []
    for row in [header, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(row[:-1], widths, strict=False)] + [str(row[-1])]
        lines.append((indent + "  ".join(cells)).rstrip())
    return "\n".join(lines)


def table_text(runs: list[RunInfo], output_dir: Path, use: Usage | None = None) -> str:
    """The table as text, then what ``gc`` would free (``use``: the store's usage)."""
    where = show(Path(output_dir) / "runs")
    use = use or usage(output_dir)
    if not runs:
        return f"no runs under {where} yet (./suite.sh run makes one)\n{gc_text(use)}"
    head = f"{len(runs)} run{'s' * (len(runs) != 1)} under {where} ({ORDER})"
    body = format_table([*COLUMNS, "settings"], table_rows(runs))
    return f"{head}\n{body}\n{gc_text(use)}"


def write_table(output_dir: str | Path | None = None) -> Path:
    """Write ``<output_dir>/index.html``, the sortable runs table; return its path."""
    output_dir = Path(output_dir or DEFAULTS.output_dir)
    page = output_dir / INDEX
    use = usage(output_dir)
    ctx = page_context(output_dir, collect(output_dir, use), None, use)
    return write_text(page, render(ctx))


def page_context(
    output_dir: Path, runs: list[RunInfo] | None, comparison, use: Usage | None = None
) -> dict:
    """What ``runs.html.j2`` shows: the table (``runs``) or one comparison (``compare``)."""
    pages = sorted(output_dir.glob("compare-*.html"), key=lambda p: -p.stat().st_mtime)
    return {
        "gc": gc_text(use) if use is not None else None,
        "written": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "where": show(output_dir),
        "order": ORDER,
        "extra_titles": [STAGE_TITLES[s] for s in EXTRA_STAGES],
        "runs": None if runs is None else [html_row(r, output_dir) for r in runs],
        "comparisons": [p.name for p in pages],
        "compare": comparison,
    }


def html_row(r: RunInfo, output_dir: Path) -> dict:
    """One run's cells for the page, each with the value its column sorts by."""
    return {
        "name": r.name,
        "report": report_link(r, output_dir),
        "status": r.status,
        "finished": r.finished,
        "failed": r.failed is not None,
        "reason": r.status if r.failed is None else failed_text(r.failed),
        "damaged": [f"{label}: {why}" for label, why in r.damaged.items()],
        "final": r.final,
        "final_name": r.headline.get("final", ""),
        "stage1": r.stage1,
        "stage2": r.stage2,
        "extras": list(r.extras.values()),
        "seconds": r.seconds,
        "wall": duration(r.seconds),
        "reused": r.reused,
        "when": r.when,
        "when_text": when_text(r.when),
        "own_bytes": r.own_bytes,
        "own_size": size_text(r.own_bytes),
        "step_bytes": r.step_bytes,
        "steps_size": steps_text(r),
        "shared": r.shared,
        "settings": [f"{k}={v}" for k, v in r.changed.items()],
    }


def report_link(r: RunInfo, output_dir: Path) -> str | None:
    """The run report's address relative to the output folder, when the report exists."""
    report = r.path / INDEX
    if not report.is_file():
        return None
    return quote(os.path.relpath(report, output_dir).replace(os.sep, "/"))


def render(ctx: dict) -> str:
    from core.runs.report import render as render_template

    return render_template(ctx, TEMPLATE)


def auc_text(value) -> str:
    return f"{value:.4f}" if number(value) else "-"


def duration(seconds: float) -> str:
    if not seconds:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def when_text(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


def settings_text(changed: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in changed.items()) or "(defaults)"


def as_float(value) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if out == out else None
