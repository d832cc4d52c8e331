"""The runs table: every run under ``<output_dir>/runs/``, and two runs side by side.

    python -m core.runs                                  # print the table, write outputs/index.html
    python -m core.runs --compare run-1a2b3c run-4d5e6f  # two runs; also outputs/compare-A-B.html

A row is read from the run folder alone: ``config.yaml`` (the settings that differ from the
defaults), ``ensemble/results.json`` (the figures), ``timings.json`` (the steps this run's main
job computed: a step linked into the run that it did not time was reused) and the step links
(``core.runs.steps``). Finished runs come first, best final out-of-fold AUC first; unfinished runs
follow, newest first. ``index.html`` sorts by any column on a click, links each run's report (and
each report links back) and every comparison page written so far.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from core import cli
from core.config import CONFIG_FILE, DEFAULTS, EXTRA_STAGES, ConfigError, Settings, resolve, show
from core.io import examples, read_json, write_text
from core.pipeline.plan import plan
from core.runs import steps
from core.runs.folder import run_settings
from core.runs.report import STAGE_TITLES

INDEX = "index.html"
TEMPLATE = "runs.html.j2"
STAGES = ("stage1", "stage2")
ORDER = "finished runs first, best final OOF AUC first; then unfinished runs, newest first"
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
)


@dataclass
class RunInfo:
    """What the table shows of one run folder."""

    name: str
    path: Path
    status: str
    finished: bool
    headline: dict
    settings: Settings | None
    changed: dict[str, str]  # setting -> value as shown, those differing from the defaults
    seconds: float  # wall time of the steps this run computed
    reused: int  # linked steps it did not compute
    when: float  # a POSIX time
    steps: dict[str, str] = field(default_factory=dict)  # core.runs.steps.linked_steps

    @property
    def final(self) -> float | None:
        return self.headline.get("oof_auc")

    @property
    def stage1(self) -> float | None:
        return self.headline.get("stage1_oof_auc")

    @property
    def stage2(self) -> float | None:
        return self.headline.get("stage2_oof_auc")

    @property
    def extras(self) -> dict[str, float | None]:
        """The pooled OOF AUC of each optional folded stage (the students, the distilled model's
        in-fold copies), None in a run without it."""
        return {s: self.headline.get(f"{s}_oof_auc") for s in EXTRA_STAGES}


# -- reading runs ---------------------------------------------------------------------------------


def collect(output_dir: str | Path) -> list[RunInfo]:
    """Every run folder under ``<output_dir>/runs/``, in the table's order (``ORDER``)."""
    runs_dir = Path(output_dir) / "runs"
    folders = sorted(p for p in runs_dir.glob("[!.]*") if p.is_dir()) if runs_dir.is_dir() else []
    return ordered([read_run(p, output_dir) for p in folders])


def ordered(runs: list[RunInfo]) -> list[RunInfo]:
    def rank(r: RunInfo):
        if r.finished:
            return (0, -r.final if _number(r.final) else math.inf, r.name)
        return (1, -r.when, r.name)

    return sorted(runs, key=rank)


def read_run(run_dir: Path, output_dir: str | Path) -> RunInfo:
    """One run folder as the table shows it; whatever is missing shows as missing."""
    run_dir = Path(run_dir)
    results_path = run_dir / "ensemble" / "results.json"
    results = _json(results_path)
    headline = (results or {}).get("headline") or {}
    settings, changed = read_settings(run_dir, output_dir)
    timings = _json(run_dir / "timings.json") or {}
    linked = steps.linked_steps(run_dir)
    return RunInfo(
        name=run_dir.name,
        path=run_dir,
        status=status(run_dir, settings, results is not None, headline),
        finished=results is not None,
        headline=headline,
        settings=settings,
        changed=changed,
        seconds=float(sum(v for v in timings.values() if _number(v))),
        reused=len(set(linked) - set(timings)),
        when=(results_path if results is not None else run_dir).stat().st_mtime,
        steps=linked,
    )


def read_settings(run_dir: Path, output_dir: str | Path) -> tuple[Settings | None, dict]:
    """The run's settings and those differing from the defaults (``name: shown value``), the
    output folder left out (every run of the table shares it). Unreadable: None and why."""
    import yaml

    try:
        settings = run_settings(run_dir, output_dir)
    except FileNotFoundError:
        return None, {CONFIG_FILE: "missing"}
    except (OSError, ValueError, TypeError, yaml.YAMLError) as e:
        # A setting renamed or removed since the run was made, or a damaged file.
        why = (str(e).splitlines() or [type(e).__name__])[0][:80]
        return None, {CONFIG_FILE: f"unreadable ({why})"}
    changed = {k: _text(v) for k, v in settings.changed().items() if k != "output_dir"}
    return settings, changed


def status(run_dir: Path, settings: Settings | None, finished: bool, headline: dict) -> str:
    """``finished`` (with the number of runs of a seed ensemble), or ``partial: N of M steps``
    counted on the run's plan; ``partial: N steps present`` when the plan cannot be made (its
    input files moved or changed)."""
    if finished:
        members = headline.get("members") or []
        return f"finished, {len(members)} seeds" if members else "finished"
    if settings is not None:
        try:
            todo = plan(settings, run_dir)
            return f"partial: {sum(s.done for s in todo)} of {len(todo)} steps"
        except (OSError, ValueError):  # the data or weights are gone or broken: hashes fail
            pass
    present = sum(_step_done(run_dir, label) for label in steps.linked_steps(run_dir))
    return f"partial: {present} steps present"


def _step_done(run_dir: Path, label: str) -> bool:
    section, _, fold = label.partition("-")
    path = run_dir / section / fold if fold else run_dir / section
    return (path / steps.MARKERS[section]).is_file()


# -- the table ------------------------------------------------------------------------------------


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
            settings_text(r.changed),
        ]
        for r in runs
    ]


def format_table(header: list[str], rows: list[list[str]], indent: str = "") -> str:
    """Plain columns padded to their widest cell; the last column is not padded."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = []
    for row in [header, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(row[:-1], widths, strict=False)] + [str(row[-1])]
        lines.append((indent + "  ".join(cells)).rstrip())
    return "\n".join(lines)


def table_text(runs: list[RunInfo], output_dir: Path) -> str:
    where = show(Path(output_dir) / "runs")
    if not runs:
        return f"no runs under {where} yet (./suite.sh run makes one)"
    head = f"{len(runs)} run{'s' * (len(runs) != 1)} under {where} ({ORDER})"
    return head + "\n" + format_table([*COLUMNS, "settings"], table_rows(runs))


def write_table(output_dir: str | Path | None = None) -> Path:
    """Write ``<output_dir>/index.html``, the sortable runs table; return its path."""
    output_dir = Path(output_dir or DEFAULTS.output_dir)
    page = output_dir / INDEX
    ctx = page_context(output_dir, collect(output_dir), None)
    return write_text(page, render(ctx))


def page_context(output_dir: Path, runs: list[RunInfo] | None, comparison) -> dict:
    """What ``runs.html.j2`` shows: the table (``runs``) or one comparison (``compare``)."""
    pages = sorted(output_dir.glob("compare-*.html"), key=lambda p: -p.stat().st_mtime)
    return {
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


# -- two runs side by side ------------------------------------------------------------------------


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
        va, vb = (_all_settings(r.settings) for r in (a, b))
    else:
        va, vb = a.changed, b.changed
    names = list(dict.fromkeys([*va, *vb]))
    return [(k, va.get(k, "-"), vb.get(k, "-")) for k in names if va.get(k) != vb.get(k)]


def _all_settings(settings: Settings) -> dict[str, str]:
    return {k: _text(v) for k, v in settings.values().items() if k != "output_dir"}


def fold_aucs(r: RunInfo) -> dict[str, dict[str, float | None]]:
    """``{fold: {stage: AUC}}``: ``ensemble/fold_auc.csv`` (folds, mean, oof) when the ensemble
    has run, else each finished fold's ``done.json`` (and no pooled figure)."""
    table = r.path / "ensemble" / "fold_auc.csv"
    if table.is_file():
        with table.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        return {row["fold"]: {s: _float(row.get(s)) for s in STAGES} for row in rows}
    out: dict[str, dict[str, float | None]] = {}
    for s in STAGES:
        for folder in (r.path / s).glob("fold*"):
            done = _json(folder / steps.MARKERS[s])
            if done and folder.name[4:].isdigit():
                out.setdefault(folder.name[4:], {})[s] = _float(done.get("val_auc"))
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


def find_run(name: str, output_dir: Path) -> Path:
    """A run folder by path or by name under ``<output_dir>/runs``; a ConfigError naming the
    runs there when there is none."""
    runs_dir = output_dir / "runs"
    for candidate in (Path(name), runs_dir / name):
        if candidate.is_dir() and any((candidate / f).is_file() for f in (CONFIG_FILE, "run.json")):
            return candidate
    names = [p.name for p in sorted(runs_dir.glob("[!.]*")) if p.is_dir()]
    there = f"runs there: {examples(names, 10)}" if names else "there are no runs there yet"
    where = show(runs_dir)
    raise ConfigError(f"--compare {name}: no run of that name or path under {where}; {there}")


# -- cells ----------------------------------------------------------------------------------------


def auc_text(value) -> str:
    return f"{value:.4f}" if _number(value) else "-"


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


def _text(value) -> str:
    # Lists without spaces, so a table cell's settings stay space-separated words.
    return ",".join(map(str, value)).join("[]") if isinstance(value, list) else str(value)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _float(value) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if out == out else None


def _json(path: Path):
    try:
        return read_json(path) if path.is_file() else None
    except ValueError:  # a damaged file written by hand; the pipeline's own writes are atomic
        return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m core.runs", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--output-dir", help="where the runs are (default outputs/)")
    parser.add_argument(
        "--compare", nargs=2, metavar=("A", "B"), help="two runs side by side (names or folders)"
    )
    cli.add_debug_flag(parser)
    args = parser.parse_args(argv)
    output_dir = resolve(args.output_dir or DEFAULTS.output_dir, "--output-dir")
    if args.compare:
        a, b = (read_run(find_run(n, output_dir), output_dir) for n in args.compare)
        comparison = compare(a, b)
        print(compare_text(comparison))
        print(f"\npage: {show(compare_page(output_dir, comparison))}")
        return 0
    print(table_text(collect(output_dir), output_dir))
    print(f"\npage: {show(write_table(output_dir))}")
    return 0
