"""The runs under ``<output_dir>/runs/``, each read from its folder alone.

A run is read from ``config.yaml`` (the settings that differ from the defaults),
``ensemble/results.json`` (the figures), ``timings.json`` (the steps this run's main job computed:
a step linked into the run that it did not time was reused) and the step links
(``core.runs.steps``). Its status is counted on the steps its settings make, from the step store's
markers; a run whose last main job failed says so (``failed.json``), and one linking a damaged
step (a file of another size than its record) says that. Its size on disk is its own folder's
(links not followed) and its linked steps' (core.runs.store), those other runs link too counted
and named as shared. Nothing of the pipeline is imported. core.runs.table shows them;
core.runs.compare puts two side by side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from core.config import CONFIG_FILE, EXTRA_STAGES, ConfigError, Settings, show
from core.io import examples, read_json
from core.runs import steps
from core.runs.folder import failed_text, read_failed, run_settings
from core.runs.store import Usage, tree_bytes, usage

ORDER = "finished runs first, best final OOF AUC first; then unfinished runs, newest first"


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
    failed: dict | None = None  # failed.json: its last main job stopped there (core.runs.folder)
    damaged: dict[str, str] = field(default_factory=dict)  # label -> what differs (sizes only)
    own_bytes: int = 0  # its folder, links not followed
    step_bytes: int = 0  # the stored steps it links
    shared: list[str] = field(default_factory=list)  # labels of the linked steps other runs link

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


def collect(output_dir: str | Path, use: Usage | None = None) -> list[RunInfo]:
    """Every run folder under ``<output_dir>/runs/``, in the table's order (``ORDER``), with
    its size on disk (``use``: the store's, core.runs.store.usage, read here unless given)."""
    runs_dir = Path(output_dir) / "runs"
    folders = sorted(p for p in runs_dir.glob("[!.]*") if p.is_dir()) if runs_dir.is_dir() else []
    use = use or usage(output_dir)
    runs = [read_run(p, output_dir, use) for p in folders]
    return ordered(runs)


def ordered(runs: list[RunInfo]) -> list[RunInfo]:
    def rank(r: RunInfo):
        if r.finished:
            return (0, -r.final if number(r.final) else math.inf, r.name)
        return (1, -r.when, r.name)

    return sorted(runs, key=rank)


def read_run(run_dir: Path, output_dir: str | Path, use: Usage | None = None) -> RunInfo:
    """One run folder as the table shows it; whatever is missing shows as missing. ``use``: the
    store's steps (core.runs.store.usage), for the sizes and which steps are shared."""
    run_dir = Path(run_dir)
    results_path = run_dir / steps.RUN_MARKERS["ensemble"]
    results = read_json_or_none(results_path)
    headline = (results or {}).get("headline") or {}
    settings, changed = read_settings(run_dir, output_dir)
    timings = read_json_or_none(run_dir / "timings.json") or {}
    linked = steps.linked_steps(run_dir)
    failed = None if results is not None else read_failed(run_dir)
    damaged = {}
    for label in linked:  # sizes only: a stat per file
        if (damage := steps.check(step_path(run_dir, label), hashes=False)) is not None:
            damaged[label] = str(damage)
    use = use or usage(output_dir)
    names = set(linked.values())
    return RunInfo(
        name=run_dir.name,
        path=run_dir,
        status=status(run_dir, settings, results is not None, headline, failed, damaged),
        finished=results is not None,
        headline=headline,
        settings=settings,
        changed=changed,
        seconds=float(sum(v for v in timings.values() if number(v))),
        reused=len(set(linked) - set(timings)),
        when=(results_path if results is not None else run_dir).stat().st_mtime,
        steps=linked,
        failed=failed,
        damaged=damaged,
        own_bytes=tree_bytes(run_dir),
        step_bytes=sum(use.sizes.get(n, 0) for n in names),
        shared=[lb for lb, n in linked.items() if len(use.linked_by.get(n, [])) > 1],
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
    changed = {k: text(v) for k, v in settings.changed().items() if k != "output_dir"}
    return settings, changed


def status(
    run_dir: Path,
    settings: Settings | None,
    finished: bool,
    headline: dict,
    failed: dict | None = None,
    damaged: dict | None = None,
) -> str:
    """``finished`` (with the number of runs of a seed ensemble), or ``partial: N of M steps``
    counted on the steps its settings make (the stored ones, then the ensemble, the distilled
    model and the error analysis); ``partial: N steps present`` when they cannot be counted (its
    input files moved or changed); ``failed at <step>: <reason>`` for an unfinished run whose
    last main job failed (``failed``: its ``failed.json``). ``damaged``: the linked steps whose
    files differ from their record, added as ``, N damaged steps``."""
    hurt = f", {len(damaged)} damaged step{'s' * (len(damaged) != 1)}" if damaged else ""
    return _status(run_dir, settings, finished, headline, failed) + hurt


def _status(run_dir, settings, finished, headline, failed) -> str:
    if finished:
        members = headline.get("members") or []
        return f"finished, {len(members)} seeds" if members else "finished"
    if failed is not None:
        text = failed_text(failed)
        return text if len(text) <= 80 else text[:79] + "…"
    if settings is not None:
        try:
            stored = [s.done() for s in steps.run_steps(settings)]
        except (OSError, ValueError):  # the data or weights are gone or broken: hashes fail
            pass
        else:
            own = [(Path(run_dir) / marker).is_file() for marker in steps.RUN_MARKERS.values()]
            distilled = [False] if settings.distill_enabled else []  # after the ensemble
            done = [*stored, *own, *distilled]
            return f"partial: {sum(done)} of {len(done)} steps"
    present = sum(step_done(run_dir, label) for label in steps.linked_steps(run_dir))
    return f"partial: {present} steps present"


def step_path(run_dir: Path, label: str) -> Path:
    """The path (a link) through which a run reaches the step it links as ``label``."""
    section, _, fold = label.partition("-")
    return Path(run_dir) / section / fold if fold else Path(run_dir) / section


def step_done(run_dir: Path, label: str) -> bool:
    """Whether the step a run links under ``label`` (``stage1-fold0``, ``eda``) is complete."""
    section = label.partition("-")[0]
    return (step_path(run_dir, label) / steps.MARKERS[section]).is_file()


def text(value) -> str:
    """A setting's value in a cell: lists without spaces, so settings stay space-separated."""
    return ",".join(map(str, value)).join("[]") if isinstance(value, list) else str(value)


def number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def read_json_or_none(path: Path):
    try:
        return read_json(path) if path.is_file() else None
    except ValueError:  # a damaged file written by hand; the pipeline's own writes are atomic
        return None


def find_run(name: str, output_dir: Path, option: str = "--compare") -> Path:
    """A run folder by path or by name under ``<output_dir>/runs``; a ConfigError naming the
    runs there when there is none."""
    runs_dir = output_dir / "runs"
    for candidate in (Path(name), runs_dir / name):
        if candidate.is_dir() and any((candidate / f).is_file() for f in (CONFIG_FILE, "run.json")):
            return candidate
    names = [p.name for p in sorted(runs_dir.glob("[!.]*")) if p.is_dir()]
    there = f"runs there: {examples(names, 10)}" if names else "there are no runs there yet"
    where = show(runs_dir)
    raise ConfigError(f"{option} {name}: no run of that name or path under {where}; {there}")
