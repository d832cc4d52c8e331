"""The whole step store and the runs that link it: what each takes on disk, which stored steps no
run links (``collectable``, removed by ``gc``), removing a run (``remove_run``) and checking every
stored step against its record (``verify``). ``python -m core.runs`` (core.runs.commands) runs
them; the runs table (core.runs.catalog) shows the sizes.

A run's own size is its folder without following its links; its steps are the stored folders it
links (``core.runs.steps.linked_steps``), a step linked by several runs counted in each (and
called shared). A run folder deleted by hand (``rm -r``) is handled like one removed here: its
steps that no other run links are what ``gc`` finds. ``gc`` takes each step's lock without
waiting, as ``core.runs.steps.claim`` takes it, so it never removes a step a running job is
computing or reusing, and it checks again under the lock that no run links the step meanwhile.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.runs import steps


def tree_bytes(path: Path) -> int:
    """The bytes of the regular files below ``path`` (or of ``path``), links not followed."""
    path = Path(path)
    if path.is_symlink() or not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):  # os.walk does not descend into linked folders
        for name in files:
            st = os.lstat(os.path.join(root, name))
            if not os.path.islink(os.path.join(root, name)):
                total += st.st_size
    return total


def store_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / steps.STORE


def step_folders(output_dir: str | Path) -> list[Path]:
    """Every stored step's folder (``.locks`` and temporary folders left out)."""
    store = store_dir(output_dir)
    if not store.is_dir():
        return []
    return sorted(p for p in store.iterdir() if p.is_dir() and not p.name.startswith("."))


def run_folders(output_dir: str | Path) -> list[Path]:
    runs = Path(output_dir) / "runs"
    if not runs.is_dir():
        return []
    return sorted(p for p in runs.iterdir() if p.is_dir() and not p.name.startswith("."))


def links(output_dir: str | Path) -> dict[str, list[str]]:
    """``{step folder name: [names of the runs linking it]}`` over every run folder."""
    out: dict[str, list[str]] = {}
    for run in run_folders(output_dir):
        for name in steps.linked_steps(run).values():
            out.setdefault(name, []).append(run.name)
    return out


@dataclass
class Usage:
    """The store's steps: each one's bytes and the runs linking it."""

    sizes: dict[str, int]  # step folder name -> bytes
    linked_by: dict[str, list[str]]  # step folder name -> runs (only steps some run links)
    unlinked: list[str] = field(default_factory=list)  # stored steps no run links

    @property
    def unlinked_bytes(self) -> int:
        return sum(self.sizes[n] for n in self.unlinked)


def usage(output_dir: str | Path) -> Usage:
    sizes = {p.name: tree_bytes(p) for p in step_folders(output_dir)}
    linked_by = links(output_dir)
    return Usage(sizes, linked_by, [n for n in sizes if not linked_by.get(n)])


# -- gc -------------------------------------------------------------------------------------------


@dataclass
class Collected:
    """What ``gc`` found: the steps no run links (with their bytes), those it removed, and those
    it left (``{name: why}``)."""

    found: dict[str, int]
    removed: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)


def collectable(output_dir: str | Path) -> dict[str, int]:
    """``{step folder name: bytes}`` of the stored steps no run folder links."""
    use = usage(output_dir)
    return {n: use.sizes[n] for n in use.unlinked}


def gc(output_dir: str | Path, remove: bool = False) -> Collected:
    """The stored steps no run links; with ``remove``, each removed under its lock, taken
    without waiting: a step a running job holds is left (and said so), as is one a run linked
    meanwhile."""
    store = store_dir(output_dir)
    result = Collected(collectable(output_dir))
    if not remove:
        return result
    for name in result.found:
        with steps.try_locked(store, name) as mine:
            if not mine:
                result.kept[name] = "a running job holds it"
                continue
            if links(output_dir).get(name):  # linked since the list was made
                result.kept[name] = "a run links it now"
                continue
            shutil.rmtree(store / name)
            result.removed.append(name)
    return result


# -- rm -------------------------------------------------------------------------------------------


@dataclass
class Removed:
    """A removed run: its own bytes, and the steps it linked that no run links any more."""

    name: str
    own: int
    orphaned: dict[str, int]


def busy_steps(run_dir: Path, output_dir: str | Path) -> list[str]:
    """The steps a run links whose lock another process holds (a job computing one now)."""
    store = store_dir(output_dir)
    busy = []
    for name in sorted(set(steps.linked_steps(run_dir).values())):
        if (store / name).is_dir():
            with steps.try_locked(store, name) as mine:
                if not mine:
                    busy.append(name)
    return busy


def remove_run(run_dir: Path, output_dir: str | Path) -> Removed:
    """Remove a run folder (its links, never a stored step); return what it held."""
    run_dir = Path(run_dir)
    own = tree_bytes(run_dir)
    before = set(collectable(output_dir))
    shutil.rmtree(run_dir)
    after = collectable(output_dir)
    return Removed(run_dir.name, own, {n: b for n, b in after.items() if n not in before})


# -- verify ---------------------------------------------------------------------------------------


STATES = ("intact", "damaged", "unrecorded", "incomplete", "busy")  # as verify finds a step


@dataclass
class Checked:
    """One stored step as ``verify`` found it: ``state`` is intact, damaged, unrecorded (made
    before records), incomplete (no marker) or busy (a running job holds its lock)."""

    name: str
    state: str
    bytes: int
    damage: steps.Damage | None = None
    runs: list[str] = field(default_factory=list)


def verify(output_dir: str | Path) -> tuple[list[Checked], float]:
    """Every stored step checked against its record (sizes and sha256), each under its lock
    (taken without waiting); and the seconds it took."""
    start = time.perf_counter()
    store, linked_by = store_dir(output_dir), links(output_dir)
    out = []
    for folder in step_folders(output_dir):
        name = folder.name
        size = tree_bytes(folder)
        runs = linked_by.get(name, [])
        with steps.try_locked(store, name) as mine:
            marker = steps.MARKERS.get(steps.section_of(name))
            if not mine:
                state, damage = "busy", None
            elif marker is None or not (folder / marker).is_file():
                state, damage = "incomplete", None
            elif not steps.sealed(folder) and steps.read_record(folder) is None:
                state, damage = "unrecorded", None
            else:
                damage = steps.check(folder)
                state = "intact" if damage is None else "damaged"
        out.append(Checked(name, state, size, damage, runs))
    return out, time.perf_counter() - start


def size_text(n: int) -> str:
    """Bytes as the table shows them (decimal units: 1 MB = 10^6 bytes)."""
    if n < 1e3:
        return f"{n} B"
    if n < 1e6:
        return f"{n / 1e3:.0f} KB"
    if n < 1e7:
        return f"{n / 1e6:.1f} MB"
    if n < 1e9:
        return f"{n / 1e6:.0f} MB"
    return f"{n / 1e9:.1f} GB"
