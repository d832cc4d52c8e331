"""One step of the main job: its notebook executed with papermill and rendered to HTML, its
stored result linked into the run, its wall time recorded and the run's report rewritten."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

from core import cli
from core.config import ROOT, Settings, show
from core.io import atomic_path, atomic_symlink, read_json, write_json, write_text
from core.noise import KernelOutput, NoiseFilter, clean_notebook
from core.pipeline.plan import Task, notebook_path
from core.runs import steps

log = logging.getLogger("pipeline")


class NotebookError(RuntimeError):
    """A notebook stopped on an expected error (core.cli.EXPECTED); the message is the error's,
    then where the executed notebook was saved."""


def execute(step: Task, params: dict) -> Path:
    """Run one notebook with papermill (kernel cwd = repo root), then render it to HTML."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    out = notebook_path(step)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.ipynb")
    try:
        papermill.execute_notebook(
            str(ROOT / step.notebook),
            str(tmp),
            parameters=params,
            cwd=str(ROOT),
            # What a kernel prints goes to the terminal as printed, minus noise; its figures and
            # tables stay in the notebook (papermill's log_output would log their text/plain
            # reprs, "<Figure size ...>", and add a blank line after every printed chunk).
            stdout_file=KernelOutput(),
            stderr_file=KernelOutput(),
            progress_bar=False,
        )
    except PapermillExecutionError as e:
        saved = (
            f"the executed notebook is saved at {show(out)} (and {show(out.with_suffix('.html'))})"
        )
        if cli.is_expected(e.ename):
            raise NotebookError(f"{e.evalue}\n{saved}") from e
        e.add_note(saved)
        raise
    finally:
        if tmp.exists():  # keep a failed notebook too, rendered: it shows where it stopped
            clean_notebook(tmp)
            tmp.replace(out)
            render_html(out)
    return out


def render_html(notebook: Path) -> Path:
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(notebook, as_version=4))
    return write_text(notebook.with_suffix(".html"), body)


def write_index(run_dir: Path, settings: Settings, timings: dict) -> Path:
    """The run report ``<run>/index.html`` (core.runs.report): figures, notebooks, provenance."""
    from core.runs.report import write_report

    return write_report(run_dir, settings, timings)


def keep_notebook(step: Task) -> None:
    """A stored step keeps the executed notebook that made it, for the runs that reuse it."""
    made = notebook_path(step)
    if step.target is None or not made.is_file():
        return
    for suffix in (".ipynb", ".html"):
        src, dst = made.with_suffix(suffix), step.target.dir / f"notebook{suffix}"
        if src.is_file() and not dst.exists():
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)


def link_reused(step: Task) -> None:
    """Link a stored step made elsewhere into the step's run, with the notebook that made it."""
    steps.link(step.run_dir, step.target)
    made = notebook_path(step)
    for suffix in (".ipynb", ".html"):
        src, dst = step.target.dir / f"notebook{suffix}", made.with_suffix(suffix)
        if src.is_file() and not dst.exists():
            atomic_symlink(os.path.relpath(src, dst.parent), dst)


def skip_done(step: Task, i: int, n: int) -> bool:
    """Whether ``step`` is complete (then linked into its run if stored elsewhere), saying so.

    A stored step is checked first, under its lock (``core.runs.steps.vet``): one whose files
    differ from their record is emptied, said in one line, and not skipped: it is computed
    again."""
    if not step.done:
        return False
    where, target = "", step.target
    if target is not None:
        with steps.locked(target, "another process is using it; waiting"):
            damage = steps.vet(target)
            if damage is None:
                link_reused(step)  # under the lock: gc never removes a step being linked
        if damage is not None:
            log.info("[%d/%d] %s: %s: recomputing", i, n, step.label, damage)
            return False
        where = f" (stored as steps/{target.name})"
    log.info("[%d/%d] %s: complete, skipped%s", i, n, step.label, where)
    return True


def record_time(step: Task, seconds: float) -> None:
    """Add a step's wall time to its run's ``timings.json`` and rewrite the run's report."""
    timings = read_timings(step.run_dir)
    timings[step.own_label] = round(seconds, 1)
    write_json(step.run_dir / "timings.json", timings)
    write_index(step.run_dir, step.settings, timings)


def read_timings(run_dir: Path) -> dict:
    """``<run>/timings.json``: the seconds of each step this run computed (empty before any)."""
    path = run_dir / "timings.json"
    return read_json(path) if path.exists() else {}


class _QuietPapermill(logging.Filter):
    # papermill logs two lines around every cell; the cells' own output is what shows progress.
    def filter(self, record):
        msg = record.getMessage()
        return not (
            msg.startswith(
                (
                    "Executing Cell",
                    "Ending Cell",
                    "Executing notebook",
                    "Input Notebook",
                    "Output Notebook",
                    "Working",
                )
            )
        )


def setup_logging() -> None:
    """Show the steps on stdout (the notebooks' printed output goes there too: ``execute``)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("papermill").addFilter(_QuietPapermill())
    logging.getLogger("traitlets").addFilter(NoiseFilter())  # nbconvert's warnings
