"""Run the notebook suite with papermill: stage 0 (within-task MLM) -> EDA -> stage 1 per fold ->
stage 2 per fold -> ensemble -> error analysis.

    python -m core.pipeline                                  # the default method on data/
    python -m core.pipeline --config configs/reference.yaml  # a named configuration
    python -m core.pipeline --set stage1_lr=3e-5 --set n_folds=3 --test-path other.txt

The run folder's name is a hash of every setting and of the data and weights files
(``Settings.default_run_dir``, which a notebook run by hand uses too), so a changed setting or
data file starts a new run, and rerunning the same command resumes: a step whose outputs are
complete is skipped, whoever made them. Executed notebooks and their HTML go to
``<run>/notebooks/``; ``<run>/index.html`` links them with the headline figures.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from core import cli
from core.config import (
    CONFIG_FILE,
    NOTEBOOKS,
    PRETRAIN_FILE,
    ROOT,
    ConfigError,
    Settings,
    from_values,
    read_config,
    show,
)
from core.data import file_sha256, read_labelled, read_unlabelled
from core.io import atomic_path, read_json, write_json, write_text
from core.noise import KernelOutput, NoiseFilter, clean_notebook
from core.run import check_same, fold_dir, record_settings, run_settings, weights_sha256

log = logging.getLogger("pipeline")


@dataclass(frozen=True)
class Step:
    """One notebook run of the plan: its step (a key of NOTEBOOKS), its fold if it has one,
    and the file whose presence marks it complete."""

    section: str
    fold: int | None
    done: Path

    @property
    def label(self) -> str:
        return self.section if self.fold is None else f"{self.section}-fold{self.fold}"

    @property
    def notebook(self) -> str:
        return NOTEBOOKS[self.section]


def plan(settings: Settings, run_dir: Path) -> list[Step]:
    """Every step of a run, in order: stage 0 (unless off), EDA, stage 1 and stage 2 per fold,
    the ensemble."""
    steps = []
    if settings.uses_stage0:
        steps.append(Step("stage0", None, run_dir / "stage0" / "bert" / PRETRAIN_FILE))
    steps.append(Step("eda", None, run_dir / "eda" / "eda.json"))
    for stage in ("stage1", "stage2"):
        steps += [
            Step(stage, k, fold_dir(run_dir, stage, k) / "done.json")
            for k in range(settings.n_folds)
        ]
    steps.append(Step("ensemble", None, run_dir / "ensemble" / "results.json"))
    steps.append(Step("errors", None, run_dir / "errors" / "errors.json"))  # analysis of the blend
    return steps


def parameters(step: Step, settings: Settings, run_dir: Path) -> dict:
    """What papermill passes: the settings that differ from the notebooks' defaults (which are
    core.config's), the run folder and the fold. The same notebook run by hand with the run's
    config.yaml (-f) and this fold does exactly the same."""
    params = {**settings.changed(), "run_dir": show(run_dir)}
    if step.fold is not None:
        params["fold"] = step.fold
    if step.section == "errors":
        params["interactive"] = False  # no live text box in an executed notebook: examples
    return params


def select(steps: list[Step], only: str | None, folds: list[int] | None) -> list[Step]:
    """The steps of ``only`` and ``folds``; a part that fine-tunes needs the run's stage 0 first."""
    chosen = [
        s
        for s in steps
        if (only is None or s.section == only)
        and (folds is None or s.fold is None or s.fold in folds)
    ]
    if any(s.section in ("stage1", "stage2") for s in chosen):
        chosen = [s for s in steps if s.section == "stage0"] + [
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


def execute(step: Step, params: dict, run_dir: Path) -> Path:
    """Run one notebook with papermill (kernel cwd = repo root), then render it to HTML."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    out = run_dir / "notebooks" / f"{Path(step.notebook).stem}-{step.label}.ipynb"
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


def check_stage0(record_path: Path, settings: Settings) -> None:
    """Stop if a finished stage-0 folder was made from other weights or data than ``settings``
    name (its folder's config.yaml was checked before: its parameters are these)."""
    record = read_json(record_path)
    made = {"bert_dir weights": record["source_weights_sha256"]}
    wanted = {"bert_dir weights": weights_sha256(settings.bert_dir)}
    for name in ("train", "test"):
        made[f"{name}_path data"] = record["data_files"].get(name, {}).get("sha256")
        wanted[f"{name}_path data"] = file_sha256(getattr(settings, f"{name}_path"))
    check_same(record_path, made, wanted, list(wanted))


def reuse_stage1(source: Path, run_dir: Path, settings: Settings) -> None:
    """Copy a finished run's stage 1 into ``run_dir``, to try stage-2 or ensemble variants cheaply.

    Allowed only when the source ran with the same data, stage-0 and stage-1 settings; each
    fold's files are copied atomically with ``done.json`` last, so a copy interrupted midway
    resumes.
    """
    if not (source / CONFIG_FILE).is_file():
        raise ConfigError(
            f"--stage1-from {show(source)}: expected a run folder with a {CONFIG_FILE}; found none"
        )
    theirs = run_settings(source, settings.output_dir)
    for section in ("data", "stage0", "stage1"):
        mine, other = settings.stage(section), theirs.stage(section)
        if section == "stage0" and not (settings.uses_stage0 or theirs.uses_stage0):
            continue  # both off: the other stage-0 values do not matter
        if other != mine:
            raise ConfigError(
                f"--stage1-from {show(source)}: its {section} settings {other} differ from "
                f"this run's {mine}; stage 1 can only be reused unchanged"
            )
    encoder = source / "stage0" / "bert"  # stage 2 reads its config and vocabulary
    names = [f.relative_to(source) for f in sorted(encoder.iterdir())] if encoder.is_dir() else []
    # PRETRAIN.json last: it marks the folder complete.
    names.sort(key=lambda name: name.name == PRETRAIN_FILE)
    for name in [*names, "run.json", "folds.csv", "stage1/params.json"]:
        if not (run_dir / name).exists():
            _copy(source / name, run_dir / name)
    for done in sorted(source.glob("stage1/fold*/done.json")):
        target = run_dir / done.parent.relative_to(source)
        if (target / "done.json").exists():
            continue
        for f in sorted(done.parent.iterdir(), key=lambda f: f.name == "done.json"):
            if not f.name.startswith("."):
                _copy(f, target / f.name)


def _copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def run_pipeline(
    settings: Settings,
    run_dir: str | Path | None = None,
    only: str | None = None,
    folds: list[int] | None = None,
    stage1_from: str | Path | None = None,
) -> Path:
    """Execute every step not yet complete; return the run folder.

    Everything is checked before the first step (settings, inputs, folds). ``only`` and
    ``folds`` pick a part of the run (e.g. stage1 fold 3), so folds can run as separate jobs,
    on separate machines sharing ``outputs/``, and be ensembled afterwards.
    """
    check_inputs(settings, only, folds)
    run_dir = settings.run_path(run_dir, "--run-dir")
    source = settings.run_path(stage1_from, "--stage1-from") if stage1_from else None
    run_dir.mkdir(parents=True, exist_ok=True)
    record_settings(run_dir, settings)  # a resumed run, or a --run-dir used before: same settings
    if source is not None:
        reuse_stage1(source, run_dir, settings)
    timings_path = run_dir / "timings.json"
    timings = read_json(timings_path) if timings_path.exists() else {}
    steps = select(plan(settings, run_dir), only, folds)
    for i, step in enumerate(steps, 1):
        if step.section == "stage0" and step.done.exists():
            check_stage0(step.done, settings)
        if step.done.exists():
            log.info("[%d/%d] %s: complete, skipped", i, len(steps), step.label)
            continue
        log.info("[%d/%d] %s: %s", i, len(steps), step.label, step.notebook)
        start = time.time()
        execute(step, parameters(step, settings, run_dir), run_dir)
        timings[step.label] = round(time.time() - start, 1)
        write_json(timings_path, timings)
        write_index(run_dir, settings, timings)
    write_index(run_dir, settings, timings)
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
    parser.add_argument("--stage1-from", help="reuse stage 1 of this finished run (same settings)")
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
    start = time.time()
    run_dir = run_pipeline(settings, args.run_dir, args.only, folds, args.stage1_from)
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
    cli.run(main)
