"""Run the notebook suite with papermill: stage 0 (within-task MLM) -> EDA -> stage 1 per fold ->
stage 2 per fold -> ensemble -> error analysis.

    python -m core.pipeline                                  # the default method on data/
    python -m core.pipeline --config configs/reference.yaml  # a named configuration
    python -m core.pipeline --set stage1_lr=3e-5 --set n_folds=3 --test-path other.txt

The run folder's name is a hash of every setting that changes a result and of the data and
weights files (``core.run.default_run_dir``, which a notebook run by hand uses too). Each step's
result is stored once under a key of what determines it (``core.steps``) and linked into every
run that needs it: a changed setting recomputes only the steps whose key holds it, and rerunning
the same command resumes. Executed notebooks and their HTML go to ``<run>/notebooks/`` (a stored
step keeps its own copy); ``<run>/index.html`` links them with the headline figures. A seed
ensemble (``blend_seeds``) runs each seed as a run of its own, then blends them.

``--workers N`` runs N independent steps at once on this machine and ``--scheduler ADDRESS`` on a
running Dask cluster whose workers share ``outputs/`` (``core.distributed``, ``graph``); without
them the steps run one after another in this process, importing nothing more.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from core import cli, steps
from core.config import (
    NOTEBOOKS,
    ROOT,
    ConfigError,
    Settings,
    from_values,
    read_config,
    show,
)
from core.data import read_labelled, read_unlabelled
from core.io import atomic_path, atomic_symlink, read_json, write_json, write_text
from core.noise import KernelOutput, NoiseFilter, clean_notebook
from core.run import check_blend_runs, default_run_dir, open_run, record_settings, run_folder

log = logging.getLogger("pipeline")


# The file a run-level step writes last (stored steps have theirs in core.steps.MARKERS).
RUN_MARKERS = {"ensemble": "ensemble/results.json", "errors": "errors/errors.json"}


@dataclass(frozen=True)
class Step:
    """One notebook run of the plan: its step (a key of NOTEBOOKS), its fold if it has one, the
    run it belongs to (a seed ensemble's other runs have their own), and the stored step it
    makes (None for the run's own ensemble and error analysis)."""

    section: str
    fold: int | None
    settings: Settings
    run_dir: Path
    stored: steps.Step | None = None
    member: int | None = None  # the training seed of a seed ensemble's other run

    @property
    def own_label(self) -> str:
        """The step's name within its run (timings, notebooks)."""
        return self.section if self.fold is None else f"{self.section}-fold{self.fold}"

    @property
    def label(self) -> str:
        return self.own_label if self.member is None else f"seed{self.member}/{self.own_label}"

    @property
    def notebook(self) -> str:
        return NOTEBOOKS[self.section]

    @property
    def done(self) -> bool:
        if self.stored is not None:
            return self.stored.done()
        return (self.run_dir / RUN_MARKERS[self.section]).is_file()


def _run_steps(settings: Settings, run_dir: Path, member: int | None = None) -> list[Step]:
    return [
        Step(st.section, st.fold, settings, run_dir, st, member) for st in steps.run_steps(settings)
    ]


def plan(settings: Settings, run_dir: Path) -> list[Step]:
    """Every step of a run, in order: stage 0 (unless off), EDA, stage 1 and stage 2 per fold,
    each other run of a seed ensemble (its folds and ensemble), the ensemble, the error
    analysis."""
    out = _run_steps(settings, run_dir)
    for m in settings.members():
        m_dir = default_run_dir(m)
        out += _run_steps(m, m_dir, m.train_seed)
        out.append(Step("ensemble", None, m, m_dir, None, m.train_seed))
    out.append(Step("ensemble", None, settings, run_dir))
    out.append(Step("errors", None, settings, run_dir))  # analysis of the blend
    return out


def upstream(step: Step) -> list[steps.Step]:
    """The stored steps a step reads: stage 0 for a stage-1 fold, stage-1 fold k for stage 2."""
    s = step.settings
    if step.section == "stage1" and s.uses_stage0:
        return [steps.ref(s, "stage0")]
    if step.section == "stage2":
        return [steps.ref(s, "stage1", step.fold)]
    return []


def graph(chosen: list[Step]) -> list[list[int]]:
    """For each step of ``chosen`` (plan order), the indices of the earlier steps it waits for.

    A stored step waits for what it reads (``upstream``) and for an earlier copy of itself (a
    seed ensemble's runs share stage 0 and the EDA: the copy then finds it done); stage 0 and the
    EDA wait for nothing, so the folds of a stage and the members of a seed ensemble are
    independent. A member's ensemble waits for its run's steps; the run's ensemble and error
    analysis wait for everything before them.
    """
    out = []
    for i, step in enumerate(chosen):
        before = list(enumerate(chosen[:i]))
        if step.stored is not None:
            reads = {step.stored.name, *(r.name for r in upstream(step))}
            waits = [j for j, s in before if s.stored is not None and s.stored.name in reads]
        elif step.member is not None:  # a seed member's ensemble
            waits = [j for j, s in before if s.run_dir == step.run_dir]
        else:
            waits = [j for j, _ in before]
        out.append(waits)
    return out


def parameters(step: Step) -> dict:
    """What papermill passes: the settings that differ from the notebooks' defaults (which are
    core.config's), the run folder and the fold. The same notebook run by hand with the run's
    config.yaml (-f) and this fold does exactly the same."""
    params = {**step.settings.changed(), "run_dir": show(step.run_dir)}
    if step.fold is not None:
        params["fold"] = step.fold
    if step.section == "errors":
        params["interactive"] = False  # no live text box in an executed notebook: examples
    return params


def select(plan_steps: list[Step], only: str | None, folds: list[int] | None) -> list[Step]:
    """The steps of ``only`` and ``folds``; a part that fine-tunes needs the run's stage 0 first."""
    chosen = [
        s
        for s in plan_steps
        if (only is None or s.section == only)
        and (folds is None or s.fold is None or s.fold in folds)
    ]
    if any(s.section in ("stage1", "stage2") for s in chosen):
        chosen = [s for s in plan_steps if s.section == "stage0" and s.member is None] + [
            s for s in chosen if s.section != "stage0"
        ]
    return chosen


def check_inputs(settings: Settings, only: str | None = None, folds=None) -> None:
    """Everything a run will need, checked before its first step: the data files parse, the
    encoder folder is complete, the fold list and step exist. Raises the error naming it."""
    from core.weights.google_ckpt import check_bert_dir

    if only is not None and only not in NOTEBOOKS:
        raise ConfigError(f"--only {only}: expected one of {', '.join(NOTEBOOKS)}")
    for fold in folds or ():
        settings.check_fold(fold)
    read_labelled(settings.train_path)
    read_unlabelled(settings.test_path)
    check_bert_dir(settings.bert_dir, read_checkpoint=False)


class NotebookError(RuntimeError):
    """A notebook stopped on an expected error (core.cli.EXPECTED); the message is the error's,
    then where the executed notebook was saved."""


def notebook_path(step: Step) -> Path:
    """Where the run keeps a step's executed notebook."""
    return step.run_dir / "notebooks" / f"{Path(step.notebook).stem}-{step.own_label}.ipynb"


def execute(step: Step, params: dict) -> Path:
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
    """The run report ``<run>/index.html`` (core.report): figures, notebooks, provenance."""
    from core.report import write_report

    return write_report(run_dir, settings, timings)


def keep_notebook(step: Step) -> None:
    """A stored step keeps the executed notebook that made it, for the runs that reuse it."""
    made = notebook_path(step)
    if step.stored is None or not made.is_file():
        return
    for suffix in (".ipynb", ".html"):
        src, dst = made.with_suffix(suffix), step.stored.dir / f"notebook{suffix}"
        if src.is_file() and not dst.exists():
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)


def link_reused(step: Step) -> None:
    """Link a stored step made elsewhere into the step's run, with the notebook that made it."""
    steps.link(step.run_dir, step.stored)
    made = notebook_path(step)
    for suffix in (".ipynb", ".html"):
        src, dst = step.stored.dir / f"notebook{suffix}", made.with_suffix(suffix)
        if src.is_file() and not dst.exists():
            atomic_symlink(os.path.relpath(src, dst.parent), dst)


def open_runs(settings: Settings, run_dir: Path, members: list[Settings]) -> None:
    """Record each run folder's settings and identity (or check them) before any step."""
    ids = read_labelled(settings.train_path).ids
    for s, d in [(settings, run_dir), *((m, default_run_dir(m)) for m in members)]:
        d.mkdir(parents=True, exist_ok=True)
        record_settings(d, s)  # a resumed run, or a --run-dir used before: same settings
        open_run(d, s, ids)


def skip_done(step: Step, i: int, n: int) -> bool:
    """Whether ``step`` is complete (then linked into its run if stored elsewhere), saying so."""
    if not step.done:
        return False
    where = ""
    if step.stored is not None:
        link_reused(step)
        where = f" (stored as steps/{step.stored.name})"
    log.info("[%d/%d] %s: complete, skipped%s", i, n, step.label, where)
    return True


def record_time(step: Step, seconds: float) -> None:
    """Add a step's wall time to its run's ``timings.json`` and rewrite the run's report."""
    timings = read_timings(step.run_dir)
    timings[step.own_label] = round(seconds, 1)
    write_json(step.run_dir / "timings.json", timings)
    write_index(step.run_dir, step.settings, timings)


def read_timings(run_dir: Path) -> dict:
    """``<run>/timings.json``: the seconds of each step this run computed (empty before any)."""
    path = run_dir / "timings.json"
    return read_json(path) if path.exists() else {}


def run_in_order(chosen: list[Step]) -> None:
    """The default: each step not yet complete, one after another, in this process."""
    for i, step in enumerate(chosen, 1):
        if skip_done(step, i, len(chosen)):
            continue
        log.info("[%d/%d] %s: %s", i, len(chosen), step.label, step.notebook)
        start = time.time()
        execute(step, parameters(step))
        keep_notebook(step)
        record_time(step, time.time() - start)


def run_pipeline(
    settings: Settings,
    run_dir: str | Path | None = None,
    only: str | None = None,
    folds: list[int] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
) -> Path:
    """Execute every step not yet complete; return the run folder.

    Everything is checked before the first step (settings, inputs, folds). ``only`` and
    ``folds`` pick a part of the run (e.g. stage1 fold 3), so folds can run as separate jobs,
    on separate machines sharing ``outputs/``, and be ensembled afterwards. ``workers`` (a
    cluster of that many processes here) or ``scheduler`` (a running cluster's address) run
    independent steps at once (``core.distributed``); by default they run one after another.
    """
    check_inputs(settings, only, folds)
    check_blend_runs(settings)
    run_dir = run_folder(settings, run_dir, "--run-dir")  # refuses a folder of other inputs
    members = settings.members()
    for m in members:
        run_folder(m)
    open_runs(settings, run_dir, members)
    chosen = select(plan(settings, run_dir), only, folds)
    if workers is None and scheduler is None:
        run_in_order(chosen)
    else:
        from core.distributed import run_graph  # Dask is imported on this path only

        run_graph(chosen, graph(chosen), workers, scheduler)
    for s, d in [*((m, default_run_dir(m)) for m in members), (settings, run_dir)]:
        write_index(d, s, read_timings(d))
    from core.runs import write_table  # refresh the runs table, outputs/index.html

    write_table(settings.output_dir)
    return run_dir


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


def parse_folds(text: str | None) -> list[int] | None:
    """``"0,2"`` -> ``[0, 2]``; the range is checked against the settings later."""
    if text is None:
        return None
    try:
        return [int(f) for f in text.split(",")]
    except ValueError:
        raise ConfigError(
            f"--folds {text}: expected comma-separated fold numbers, e.g. 0,1"
        ) from None


def resolve_settings(config: str | None, sets: list[str], **paths) -> Settings:
    """Defaults, then the ``--config`` file, then ``paths`` (``--train-path`` …), then each
    ``--set NAME=VALUE`` (``stage1.lr`` and ``stage1_lr`` alike)."""
    values = read_config(config) if config else {}
    values.update({k: v for k, v in paths.items() if v is not None})
    for pair in sets:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise ConfigError(f"--set {pair!r}: expected NAME=VALUE, e.g. stage1_lr=3e-5")
        try:
            values[name] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            values[name] = raw  # a bare word: a string
    return from_values(values, "--set" if sets else "--config")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m core.pipeline", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="a settings file, e.g. configs/reference.yaml (papermill -f format)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override one setting, e.g. stage1_lr=3e-5, n_folds=3",
    )
    parser.add_argument(
        "--train-path", help="labelled training file (default data/train_shuffle.txt)"
    )
    parser.add_argument(
        "--test-path", help="unlabelled file to score (default data/test_handout.txt)"
    )
    parser.add_argument("--output-dir", help="where runs go (default outputs/)")
    parser.add_argument(
        "--run-dir", help="use this run folder instead of the one the settings name"
    )
    parser.add_argument("--only", choices=list(NOTEBOOKS), help="run only this step")
    parser.add_argument("--folds", help="comma-separated folds to run (default: all)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="run N independent steps at once on this machine (one per GPU when there are GPUs)",
    )
    where.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run the steps on a running Dask cluster sharing outputs/, e.g. tcp://host:8786",
    )
    cli.add_debug_flag(parser)
    args = parser.parse_args(argv)
    setup_logging()
    settings = resolve_settings(
        args.config,
        args.set,
        train_path=args.train_path,
        test_path=args.test_path,
        output_dir=args.output_dir,
    )
    folds = parse_folds(args.folds)
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: expected at least 1")
    start = time.time()
    run_dir = run_pipeline(
        settings, args.run_dir, args.only, folds, workers=args.workers, scheduler=args.scheduler
    )
    print(f"\nfinished in {time.time() - start:.0f} s; run folder {show(run_dir)}")
    results = run_dir / "ensemble" / "results.json"
    if results.exists():
        print(json.dumps(read_json(results).get("headline", {}), indent=2))
    submission = run_dir / "ensemble" / "submission.csv"
    print(f"review: {show(run_dir / 'index.html')}")
    # A part of a run (--only, --folds) writes no submission: do not point at one that is not there.
    if submission.exists():
        print(f"submission: {show(submission)}")
    else:
        print("submission: none yet (the same command without --only/--folds finishes the run)")
    return 0


if __name__ == "__main__":
    # The imported module rather than __main__: the steps a cluster's workers unpickle must name
    # core.pipeline.Step, the class they import.
    from core import pipeline

    cli.run(pipeline.main)
