"""Run the notebook suite with papermill: stage 0 (within-task MLM) -> EDA -> stage 1 per fold ->
stage 2 per fold -> ensemble -> error analysis.

    python -m core.pipeline                                  # the default method on data/
    python -m core.pipeline --config configs/reference.yaml  # a named configuration
    python -m core.pipeline --set stage1_lr=3e-5 --set n_folds=3 --test-path other.txt

The run folder's name is a hash of every setting that changes a result and of the data and
weights files (``core.runs.folder.default_run_dir``, which a notebook run by hand uses too). Each
step's result is stored once under a key of what determines it (``core.runs.steps``) and linked into
every run that needs it: a changed setting recomputes only the steps whose key holds it, and
rerunning the same command resumes. Executed notebooks and their HTML go to ``<run>/notebooks/`` (a
stored step keeps its own copy); ``<run>/index.html`` links them with the headline figures. A seed
ensemble (``blend_seeds``) runs each seed as a run of its own, then blends them.

``--workers N`` runs N independent steps at once on this machine and ``--scheduler ADDRESS`` on a
running Dask cluster whose workers share ``outputs/`` (``core.pipeline.distributed``, in the order
of ``plan.graph``); without them the steps run one after another in this process, importing nothing
more.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import json
import logging
import time
from pathlib import Path

from core import cli
from core.config import NOTEBOOKS, ConfigError, Settings, from_values, read_config, show
from core.data.reviews import read_labelled, read_unlabelled
from core.io import check_writable, read_json
from core.model.precision import effective
from core.pipeline.execute import (
    execute,
    keep_notebook,
    read_timings,
    record_time,
    setup_logging,
    skip_done,
    write_index,
)
from core.pipeline.plan import Task, graph, parameters, plan, select
from core.runs.folder import (
    check_blend_runs,
    check_folds,
    clear_failed,
    default_run_dir,
    mark_failed,
    open_run,
    read_failed,
    record_settings,
    run_folder,
)
from core.runs.table import write_table

log = logging.getLogger("pipeline")


def check_inputs(settings: Settings, only: str | None = None, folds=None) -> None:
    """Everything a run will need, checked before its first step: the data files parse, the
    encoder folder is complete and its files are those its manifest recorded (sizes and
    sha256), every fold can be scored, the fold list and step exist. Raises the error naming it.
    A Hugging Face ``bert_dir`` becomes its converted Google folder here, in ``settings``."""
    from core.weights import check_bert_dir, google_dir
    from core.weights.google_ckpt import check_weights

    if only is not None and only not in NOTEBOOKS:
        raise ConfigError(f"--only {only}: expected one of {', '.join(NOTEBOOKS)}")
    if only == "students" and not settings.students_enabled:
        raise ConfigError(
            "--only students: the students are off (students_enabled=False); add "
            "--set students_enabled=True or --config configs/pseudo-labels.yaml"
        )
    if only in ("distill", "distilled") and not settings.distill_enabled:
        raise ConfigError(
            f"--only {only}: distillation is off (distill_enabled=False); add "
            "--set distill_enabled=True or --config configs/distill.yaml"
        )
    for fold in folds or ():
        settings.check_fold(fold, "--folds 0,1")
    train = read_labelled(settings.train_path)
    read_unlabelled(settings.test_path)
    settings.bert_dir = google_dir(settings.bert_dir)  # every later reader gets Google's layout
    check_bert_dir(settings.bert_dir, read_checkpoint=False)
    check_weights(settings.bert_dir)  # a damaged encoder, before stage 0 finds it in a run
    check_folds(train, settings.n_folds, settings.seed)


def open_runs(settings: Settings, run_dir: Path, members: list[Settings]) -> None:
    """Record each run folder's settings and identity (or check them) before any step."""
    ids = read_labelled(settings.train_path).ids
    for s, d in [(settings, run_dir), *((m, default_run_dir(m)) for m in members)]:
        d.mkdir(parents=True, exist_ok=True)
        # a resumed run, or a --run-dir used before: same settings
        record_settings(d, s, "--run-dir")
        open_run(d, s, ids)


def run_in_order(chosen: list[Task]) -> None:
    """The default: each step not yet complete, one after another, in this process. A step that
    fails marks its run folder failed (``core.runs.folder.mark_failed``) before the error goes
    on."""
    for i, step in enumerate(chosen, 1):
        if skip_done(step, i, len(chosen)):
            continue
        log.info("[%d/%d] %s: %s", i, len(chosen), step.label, step.notebook)
        start = time.time()
        try:
            execute(step, parameters(step))
        except Exception as e:
            mark_failed(step.run_dir, step.own_label, e)
            raise
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

    Everything is checked before the first step (settings, inputs, folds, that the output
    folder takes a write, that ``scheduler`` answers). ``only`` and ``folds`` pick a part of
    the run (e.g. stage1 fold 3), so folds can run as separate jobs, on separate machines
    sharing ``outputs/``, and be ensembled afterwards. ``workers`` (a cluster of that many
    processes here) or ``scheduler`` (a running cluster's address) run independent steps at
    once (``core.pipeline.distributed``); by default they run one after another.
    """
    check_inputs(settings, only, folds)
    check_writable(settings.output_dir)  # a read-only or full disk, before any folder is made
    if scheduler is not None:
        from core.pipeline.distributed import check_scheduler  # no Dask: a socket

        check_scheduler(scheduler)
    check_blend_runs(settings)
    run_dir = run_folder(settings, run_dir, "--run-dir")  # refuses a folder of other inputs
    members = settings.members()
    for m in members:
        run_folder(m)
    chosen = select(plan(settings, run_dir), only, folds)  # before any folder: it can fail
    open_runs(settings, run_dir, members)  # the first folder the run makes
    start = time.time()
    try:
        if workers is None and scheduler is None:
            run_in_order(chosen)
        else:
            from core.pipeline.distributed import run_graph  # Dask is imported on this path only

            # auto resolved here, once: every worker computes what this machine's settings mean.
            chosen = [dataclasses.replace(s, settings=effective(s.settings)) for s in chosen]
            run_graph(chosen, graph(chosen), workers, scheduler)
    except Exception as e:
        marked = read_failed(run_dir)
        if marked is None or marked.get("when", 0) < start:  # not by one of its own steps
            mark_failed(run_dir, None, e)  # a seed member's step, a step on a cluster
        with contextlib.suppress(Exception):  # the table shows it; never hides the error itself
            write_table(settings.output_dir)
        raise
    whole = None if only is None and folds is None else [s.own_label for s in chosen]
    for s, d in [*((m, default_run_dir(m)) for m in members), (settings, run_dir)]:
        clear_failed(d, whole)  # what had failed has now run through
        write_index(d, s, read_timings(d))
    write_table(settings.output_dir)  # refresh the runs table, outputs/index.html
    return run_dir


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
