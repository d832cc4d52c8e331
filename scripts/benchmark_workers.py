"""Benchmark (not a test): the tiny-but-real run, sequential against ``--workers N``.

    .venv/bin/python scripts/benchmark_workers.py               # --workers 2, in a temp folder
    .venv/bin/python scripts/benchmark_workers.py --workers 3 --keep /tmp/bench

Writes the tiny inputs of the end-to-end tests (tests/tiny_run.py: 120 training rows, a random
2-layer BERT) with 3 folds, then runs the whole main job twice with the command line, each in
an output folder of its own (nothing reused): ``python -m core.pipeline --config``
and the same with ``--workers N``. Prints both wall times, each step's, the local cluster's own
start-up and shut-down time, and whether both runs wrote the same out-of-fold predictions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from tiny_run import make_tiny_inputs, subprocess_env  # noqa: E402


def write_config(settings, output_dir: Path, path: Path) -> Path:
    values = {**settings.changed(), "output_dir": str(output_dir)}
    values = {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in values.items()), "utf-8")
    return path


def run(config: Path, extra: list[str], log: Path) -> tuple[float, Path]:
    start = time.time()
    with open(log, "w") as out:
        done = subprocess.run(
            [sys.executable, "-m", "core.pipeline", "--config", str(config), *extra],
            cwd=ROOT,
            env=subprocess_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    seconds = time.time() - start
    if done.returncode:
        sys.exit(f"{' '.join(extra) or 'sequential'} failed: see {log}")
    text = log.read_text()
    run_dir = Path(text.split("run folder ")[-1].split("\n")[0])
    return seconds, run_dir if run_dir.is_absolute() else ROOT / run_dir


def cluster_overhead(n: int) -> float:
    """Start N local workers and their scheduler, connect, close: the engine's fixed cost."""
    from distributed import Client

    from core.pipeline.distributed import local_cluster, quiet_dask

    quiet_dask()
    start = time.time()
    cluster = local_cluster(n, [])
    Client(cluster, set_as_default=False).close()
    cluster.close()
    return time.time() - start


def oof(run_dir: Path, stage: str, n_folds: int) -> np.ndarray:
    parts = [pd.read_csv(run_dir / stage / f"fold{k}" / "oof.csv") for k in range(n_folds)]
    return pd.concat(parts).sort_values("row")["pred"].to_numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temp folder)")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench-workers-"))
    tiny = make_tiny_inputs(folder / "inputs", extra={"n_folds": 3})  # as docs/scaling.md measured
    runs = {}
    parallel = ["--workers", str(args.workers)]
    for name, extra in [("sequential", []), (" ".join(parallel), parallel)]:
        tag = "seq" if not extra else "workers"
        config = write_config(tiny.settings, folder / tag, folder / f"{tag}.yaml")
        runs[name] = run(config, extra, folder / f"{tag}.log")
        print(f"{name}: {runs[name][0]:.1f} s ({runs[name][1]})", flush=True)
    for name, (_, run_dir) in runs.items():
        timings = json.loads((run_dir / "timings.json").read_text())
        print(f"{name} steps (s): {timings}; sum {sum(timings.values()):.1f}")
    (_, a), (_, b) = runs.values()
    n = tiny.settings.n_folds
    for stage in ("stage1", "stage2"):
        diff = np.abs(oof(a, stage, n) - oof(b, stage, n)).max()
        print(f"{stage} out-of-fold predictions: max |sequential - workers| = {diff:.3g}")
    overhead = cluster_overhead(args.workers)
    print(f"local cluster of {args.workers}: start, connect, close in {overhead:.1f} s")
    print(f"files in {folder}")


if __name__ == "__main__":
    main()
