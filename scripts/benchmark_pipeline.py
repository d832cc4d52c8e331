"""End-to-end benchmark (not a test): run the default pipeline and print its figures.

    .venv/bin/python scripts/benchmark_pipeline.py                 # fresh run of the defaults
    .venv/bin/python scripts/benchmark_pipeline.py --run-dir outputs/runs/run-xxxx  # report only

Prints out-of-fold AUC per stage and fold and of the final blend, F1 at the (nested) best
threshold, wall time per notebook and in total, and peak resident memory of the notebook kernels.
A fresh run goes to ``outputs/benchmarks/<time>`` so nothing is reused from earlier runs.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import pandas as pd

from core.config import Settings
from core.io import read_json
from core.pipeline.execute import setup_logging
from core.pipeline.job import resolve_settings, run_pipeline


def report(run_dir: Path) -> None:
    headline = read_json(run_dir / "ensemble" / "results.json")["headline"]
    timings = read_json(run_dir / "timings.json")
    folds = pd.read_csv(run_dir / "ensemble" / "fold_auc.csv")
    print(f"\nrun folder: {run_dir}")
    print(folds.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(
        f"\nOOF AUC  stage 1: {headline['stage1_oof_auc']:.4f}   stage 2: "
        f"{headline['stage2_oof_auc']:.4f}   final ({headline['final']}): "
        f"{headline['oof_auc']:.4f}"
    )
    print(f"F1 at nested best threshold: {headline['f1_at_threshold']:.4f}")
    groups: dict[str, float] = {}
    for label, seconds in timings.items():
        groups[label.split("-fold")[0]] = groups.get(label.split("-fold")[0], 0.0) + seconds
    for name, seconds in groups.items():
        print(f"wall time {name:9s} {seconds / 60:6.1f} min")
    print(f"wall time total     {sum(timings.values()) / 60:6.1f} min (notebooks only)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="a settings file, e.g. configs/reference.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--run-dir", help="report on this finished run instead of running")
    args = parser.parse_args()
    if args.run_dir:
        report(Settings().run_path(args.run_dir))
        return
    setup_logging()
    run_dir = Settings().run_path(f"outputs/benchmarks/{time.strftime('%Y%m%d-%H%M%S')}")
    start = time.time()
    run_pipeline(resolve_settings(args.config, args.set), run_dir=run_dir)
    total = time.time() - start
    report(run_dir)
    print(f"wall time end to end {total / 60:6.1f} min")
    kernels = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        f"peak resident memory: notebook kernels {kernels:.0f} MiB, "
        f"runner {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    )


if __name__ == "__main__":
    main()
