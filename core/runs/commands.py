"""``python -m core.runs``: the runs table, two runs compared, and the step store's upkeep.

python -m core.runs                                  # print the table, write outputs/index.html
python -m core.runs --compare run-1a2b3c run-4d5e6f  # two runs; also outputs/compare-A-B.html
python -m core.runs verify                           # every stored step against its record
python -m core.runs rm run-1a2b3c                    # a run's folder (its steps stay)
python -m core.runs gc [--yes]                       # the stored steps no run links
"""

from __future__ import annotations

import argparse
from pathlib import Path

from core import cli
from core.config import DEFAULTS, ConfigError, resolve, show
from core.runs import store
from core.runs.catalog import collect, find_run, read_run
from core.runs.compare import compare, compare_page, compare_text
from core.runs.folder import pipeline_command, run_settings
from core.runs.table import table_text, write_table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m core.runs", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--output-dir", help="where the runs are (default outputs/)")
    parser.add_argument(
        "--compare", nargs=2, metavar=("A", "B"), help="two runs side by side (names or folders)"
    )
    cli.add_debug_flag(parser)
    sub = parser.add_subparsers(dest="command", metavar="{verify,rm,gc}")
    # --output-dir after the command too; SUPPRESS keeps the one given before it.
    here = argparse.ArgumentParser(add_help=False)
    here.add_argument("--output-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub.add_parser(
        "verify",
        parents=[here],
        help="check every stored step's files against their record (sizes and sha256)",
    )
    rm = sub.add_parser(
        "rm", parents=[here], help="remove run folders (their links; the stored steps stay)"
    )
    rm.add_argument("runs", nargs="+", metavar="RUN", help="run names or folders")
    gc = sub.add_parser(
        "gc", parents=[here], help="list the stored steps no run links; --yes removes them"
    )
    gc.add_argument("--yes", action="store_true", help="remove them")
    args = parser.parse_args(argv)
    output_dir = resolve(args.output_dir or DEFAULTS.output_dir, "--output-dir")
    if args.command and args.compare:
        parser.error(f"--compare goes without {args.command}")
    if args.command == "verify":
        return verify(output_dir)
    if args.command == "rm":
        return remove(output_dir, args.runs)
    if args.command == "gc":
        return collect_garbage(output_dir, args.yes)
    if args.compare:
        a, b = (read_run(find_run(n, output_dir), output_dir) for n in args.compare)
        comparison = compare(a, b)
        print(compare_text(comparison))
        print(f"\npage: {show(compare_page(output_dir, comparison))}")
        return 0
    print(table_text(collect(output_dir), output_dir))
    print(f"\npage: {show(write_table(output_dir))}")
    return 0


# -- verify ---------------------------------------------------------------------------------------


def verify(output_dir: Path) -> int:
    """Check every stored step; list the damaged ones (file, why, the command that mends each);
    exit code 1 when any is damaged."""
    checked, seconds = store.verify(output_dir)
    where = show(store.store_dir(output_dir))
    if not checked:
        print(f"no stored steps under {where}")
        return 0
    states = {s: [c for c in checked if c.state == s] for s in store.STATES}
    total = store.size_text(sum(c.bytes for c in checked))
    counts = ", ".join(f"{len(v)} {s}" for s, v in states.items() if v)
    head = f"checked {len(checked)} stored steps under {where} ({total}) in {seconds:.1f} s"
    print(f"{head}: {counts}")
    for c in states["damaged"]:
        print(f"damaged  {c.name}: {c.damage}; {mend_text(c, output_dir)}")
    for c in states["unrecorded"]:
        print(f"unrecorded  {c.name}: made before records; the next run that reuses it records it")
    for c in states["incomplete"]:
        print(
            f"incomplete  {c.name}: no marker (its process stopped before the end); the next "
            "run that needs it computes it again"
        )
    for c in states["busy"]:
        print(f"busy  {c.name}: a running job holds it; not checked")
    return 1 if states["damaged"] else 0


def mend_text(c: store.Checked, output_dir: Path) -> str:
    """How to mend a damaged step: the command of a run that links it (its main job computes
    the step again), or gc when no run links it."""
    if not c.runs:
        return "no run links it: python -m core.runs gc --yes removes it"
    run_dir = output_dir / "runs" / c.runs[0]
    try:
        command = pipeline_command(run_dir, run_settings(run_dir, output_dir))
    except (OSError, ValueError, TypeError):  # its config.yaml is gone or unreadable
        command = f"the command that made {show(run_dir)}"
    also = f" (also linked by {', '.join(c.runs[1:])})" if c.runs[1:] else ""
    return f"linked by {c.runs[0]}{also}; computed again by: {command}"


# -- rm and gc ------------------------------------------------------------------------------------


def run_to_remove(name: str, output_dir: Path) -> Path:
    """A run folder directly under ``<output_dir>/runs`` by name or path, or a ConfigError."""
    run_dir = find_run(name, output_dir, "rm")
    runs = (output_dir / "runs").resolve()
    if run_dir.is_symlink() or run_dir.resolve().parent != runs:
        raise ConfigError(
            f"rm {name}: {show(run_dir)} is not a run folder under {show(runs)}; name a run there"
        )
    return run_dir


def remove(output_dir: Path, names: list[str]) -> int:
    """Remove run folders: every name is checked first (a run folder under the output folder, no
    step of it held by a running job), then each is removed; its steps stay for gc."""
    found = []
    for name in names:
        run_dir = run_to_remove(name, output_dir)
        if busy := store.busy_steps(run_dir, output_dir):
            raise ConfigError(
                f"rm {name}: a running job holds its step {busy[0]} (computing it); wait for it "
                "to end or stop it first"
            )
        found.append(run_dir)
    for run_dir in found:
        gone = store.remove_run(run_dir, output_dir)
        print(f"removed {show(run_dir)} ({store.size_text(gone.own)} of its own)")
        if gone.orphaned:
            n, size = len(gone.orphaned), store.size_text(sum(gone.orphaned.values()))
            print(
                f"  {n} of its stored steps ({size}) no run links now; they stay in "
                f"{show(store.store_dir(output_dir))}: python -m core.runs gc lists them"
            )
    write_table(output_dir)
    return 0


def collect_garbage(output_dir: Path, yes: bool) -> int:
    """List the stored steps no run links, with their sizes; with ``yes`` remove them."""
    result = store.gc(output_dir, remove=yes)
    where = show(store.store_dir(output_dir))
    if not result.found:
        print(f"nothing to collect: every stored step under {where} is linked by a run")
        return 0
    total = store.size_text(sum(result.found.values()))
    n = len(result.found)
    print(f"{n} stored step{'s' * (n != 1)} under {where} no run links ({total}):")
    for name, size in sorted(result.found.items()):
        note = f"  (kept: {result.kept[name]})" if name in result.kept else ""
        print(f"  {store.size_text(size):>8}  {name}{note}")
    if not yes:
        print("python -m core.runs gc --yes removes them")
        return 0
    freed = store.size_text(sum(result.found[n] for n in result.removed))
    print(f"removed {len(result.removed)} ({freed})", end="")
    print(f"; kept {len(result.kept)}" if result.kept else "")
    write_table(output_dir)
    return 0
