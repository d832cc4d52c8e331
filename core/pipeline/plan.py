"""The main job's plan: every step of a run in order, what each waits for, and what papermill
passes it. Nothing here runs a step (core.pipeline.execute does)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.config import NOTEBOOKS, Settings, show
from core.ensembling.mix import run_mix
from core.runs import steps
from core.runs.folder import default_run_dir
from core.runs.steps import RUN_MARKERS


@dataclass(frozen=True)
class Task:
    """One notebook run of the plan: its step (a key of NOTEBOOKS), its fold if it has one, the
    run it belongs to (a seed ensemble's other runs have their own), and the stored step it
    makes when its key is known beforehand (``target``: the distilled model's too; None for the
    run's own ensemble and error analysis)."""

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
    def target(self) -> steps.Step | None:
        """The stored step this makes: ``stored``, or the distilled model's, which is keyed by
        the served mix of its run's ensemble (None until that has run)."""
        if self.section == steps.DISTILLED:
            mix = run_mix(self.run_dir)
            return None if mix is None else steps.ref(self.settings, self.section, teacher=mix)
        return self.stored

    @property
    def done(self) -> bool:
        target = self.target
        if target is not None:
            return target.done()
        return self.section in RUN_MARKERS and (self.run_dir / RUN_MARKERS[self.section]).is_file()


def _run_steps(settings: Settings, run_dir: Path, member: int | None = None) -> list[Task]:
    return [
        Task(st.section, st.fold, settings, run_dir, st, member) for st in steps.run_steps(settings)
    ]


def plan(settings: Settings, run_dir: Path) -> list[Task]:
    """Every step of a run, in order: stage 0 (unless off), EDA, stage 1 and stage 2 per fold,
    the students and the distilled model's in-fold copies per fold (each when on), each other run
    of a seed ensemble (its folds and ensemble), the ensemble, the distilled model (when on), the
    error analysis."""
    out = _run_steps(settings, run_dir)
    for m in settings.members():
        m_dir = default_run_dir(m)
        out += _run_steps(m, m_dir, m.train_seed)
        out.append(Task("ensemble", None, m, m_dir, None, m.train_seed))
    out.append(Task("ensemble", None, settings, run_dir))
    if settings.distill_enabled:  # taught by the ensemble, so after it
        out.append(Task("distilled", None, settings, run_dir))
    out.append(Task("errors", None, settings, run_dir))  # analysis of the blend
    return out


def upstream(step: Task) -> list[steps.Step]:
    """The stored steps a step reads: stage 0 for a stage-1 fold, stage-1 fold k for stage 2, for
    fold k's student and for fold k's distilled copy (their teacher; stage 0, which they start
    from too, comes first)."""
    s = step.settings
    if step.section == "stage1" and s.uses_stage0:
        return [steps.ref(s, "stage0")]
    if step.section in ("stage2", "students", "distill"):
        return [steps.ref(s, "stage1", step.fold)]
    return []


def graph(chosen: list[Task]) -> list[list[int]]:
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


def parameters(step: Task) -> dict:
    """What papermill passes: the settings that differ from the notebooks' defaults (which are
    core.config's), the run folder and the fold. The same notebook run by hand with the run's
    config.yaml (-f) and this fold does exactly the same."""
    params = {**step.settings.changed(), "run_dir": show(step.run_dir)}
    if step.fold is not None:
        params["fold"] = step.fold
    if step.section == "errors":
        params["interactive"] = False  # no live text box in an executed notebook: examples
    return params


def select(plan_steps: list[Task], only: str | None, folds: list[int] | None) -> list[Task]:
    """The steps of ``only`` and ``folds``; a part that fine-tunes needs the run's stage 0 first."""
    chosen = [
        s
        for s in plan_steps
        if (only is None or s.section == only)
        and (folds is None or s.fold is None or s.fold in folds)
    ]
    if any(s.section in steps.FOLDED for s in chosen):
        chosen = [s for s in plan_steps if s.section == "stage0" and s.member is None] + [
            s for s in chosen if s.section != "stage0"
        ]
    return chosen


def notebook_path(step: Task) -> Path:
    """Where the run keeps a step's executed notebook."""
    return step.run_dir / "notebooks" / f"{Path(step.notebook).stem}-{step.own_label}.ipynb"
