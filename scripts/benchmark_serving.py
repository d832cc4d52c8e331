"""Serving speed and memory: the exported SavedModel, the TFLite file and core.serving.predict, one
run.

    PYTHONPATH=. .venv/bin/python scripts/benchmark_serving.py --run outputs/runs/<run> \\
        --savedmodel outputs/export/<name>/1 --tflite outputs/export/<name>-lite/1 \\
        --distilled-savedmodel outputs/export/<name>-distilled/1 \\
        --distilled-tflite outputs/export/<name>-distilled-lite/1 --rounds 2

The five-fold ensemble's exports and the distilled model's (``--model distilled``) run side by
side; ``--rounds`` repeats the whole list, interleaved, so a drifting host shows as spread
between rounds rather than as a difference between models. ``--also LABEL FORMAT FOLDER`` adds any
other export (a 2-layer distilled model, another run's) to the same rounds.

Each backend runs in its own process (so its peak RSS is its own; ``ru_maxrss`` includes
importing TensorFlow) on the same sentences of ``--texts`` (default the test file): one sentence
at a time (median and 99th-percentile latency, after a warm-up) and batches of 256 (sentences/s).
core.serving.predict's ``score`` builds every fold's model and reads the weights on each call (it
has no cache; the command pays this once per invocation), so its single-sentence figures are per
call, on fewer sentences. Prints a Markdown table and the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BATCH = 256


def load(kind: str, path: str):
    """A function ``texts -> probabilities`` for one backend; imports only what it needs."""
    if kind == "savedmodel":
        import tensorflow as tf

        serve = tf.saved_model.load(path).signatures["serving_default"]
        return lambda texts: serve(texts=tf.constant(texts))["probability"].numpy()
    if kind == "tflite":
        import importlib.util

        spec = importlib.util.spec_from_file_location("shipped", Path(path) / "tokenizer.py")
        shipped = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(shipped)
        model = shipped.TFLiteModel(path, num_threads=os.cpu_count())
        return lambda texts: model(texts)["probability"]
    from core.serving.predict import score

    model = "distilled" if kind == "predict-distilled" else "ensemble"
    return lambda texts: score(Path(path), texts, model=model)["probability"].to_numpy()


def worker(kind: str, path: str, texts: list[str], n_single: int) -> dict:
    start = time.perf_counter()
    predict = load(kind, path)
    loaded = time.perf_counter() - start
    for t in texts[: 1 if kind.startswith("predict") else 10]:  # warm-up: tracing, allocations
        predict([t])
    predict(texts[:BATCH])
    single = []
    for t in texts[:n_single]:
        t0 = time.perf_counter()
        predict([t])
        single.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for s in range(0, len(texts), BATCH):
        predict(texts[s : s + BATCH])
    batch_seconds = time.perf_counter() - t0
    return {
        "load_s": loaded,
        "n_single": len(single),
        "median_ms": 1000 * float(np.median(single)),
        "p99_ms": 1000 * float(np.percentile(single, 99)),
        "n_batch": len(texts),
        "per_s": len(texts) / batch_seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
    }


def machine() -> str:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    info = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    name = info.get("Model name", "?").strip()
    load1 = os.getloadavg()[0]
    return f"{name}, {os.cpu_count()} CPUs visible (load average {load1:.1f} at the end)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="run folder for core.serving.predict (skipped without it)")
    parser.add_argument("--savedmodel", help="SavedModel version folder")
    parser.add_argument("--tflite", help="TFLite version folder")
    parser.add_argument("--distilled-savedmodel", help="the distilled model's SavedModel folder")
    parser.add_argument("--distilled-tflite", help="the distilled model's TFLite folder")
    parser.add_argument(
        "--predict-distilled",
        action="store_true",
        help="also time core.serving.predict --model distilled on --run",
    )
    parser.add_argument(
        "--also",
        nargs=3,
        action="append",
        default=[],
        metavar=("LABEL", "FORMAT", "FOLDER"),
        help="another export to time beside the others (FORMAT savedmodel or tflite), "
        "e.g. --also '2-layer distilled SavedModel' savedmodel outputs/export/<name>/1",
    )
    parser.add_argument("--rounds", type=int, default=1, help="repeat every model, interleaved")
    parser.add_argument("--texts", default="data/test_handout.txt", help="sentences (test format)")
    parser.add_argument("--single", type=int, default=300, help="one-at-a-time calls per model")
    parser.add_argument(
        "--predict-single", type=int, default=10, help="... for core.serving.predict"
    )
    parser.add_argument("--predict-texts", type=int, default=1024, help="batch rows for predict")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--texts-json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        texts = json.loads(Path(args.texts_json).read_text(encoding="utf-8"))
        print(json.dumps(worker(args.worker, args.path, texts, args.single)))
        return

    from core.data.reviews import read_unlabelled

    for label, fmt, _ in args.also:
        if fmt not in ("savedmodel", "tflite"):
            parser.error(f"--also {label!r} {fmt}: expected the format savedmodel or tflite")
    texts = read_unlabelled(args.texts).texts
    n, n_single = len(texts), args.single
    jobs = [
        ("ensemble SavedModel (float32)", "savedmodel", args.savedmodel, n, n_single),
        ("distilled SavedModel (float32)", "savedmodel", args.distilled_savedmodel, n, n_single),
        *((label, fmt, path, n, n_single) for label, fmt, path in args.also if fmt == "savedmodel"),
        ("ensemble TFLite (int8 weights)", "tflite", args.tflite, n, n_single),
        ("distilled TFLite (int8 weights)", "tflite", args.distilled_tflite, n, n_single),
        *((label, fmt, path, n, n_single) for label, fmt, path in args.also if fmt == "tflite"),
        (
            "core.serving.predict.score",
            "predict",
            args.run,
            args.predict_texts,
            args.predict_single,
        ),
        (
            "core.serving.predict.score --model distilled",
            "predict-distilled",
            args.run if args.predict_distilled else None,
            args.predict_texts,
            args.predict_single,
        ),
    ]
    jobs = [(f"{label}, round {r + 1}" if args.rounds > 1 else label, *rest)
            for r in range(args.rounds) for label, *rest in jobs]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, kind, path, n_texts, n_single in jobs:
            if not path:
                continue
            sentences = Path(tmp) / f"{kind}-{n_texts}.json"
            sentences.write_text(json.dumps(texts[:n_texts]), encoding="utf-8")
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                kind,
                "--path",
                str(Path(path).resolve()),
                "--texts-json",
                str(sentences),
                "--single",
                str(n_single),
            ]
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            if done.returncode:
                raise SystemExit(f"{label} failed:\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append((label, result))
            print(f"{label}: {result}", file=sys.stderr, flush=True)
    print(f"\nMachine: {machine()}; sentences from {args.texts}\n")
    print(
        "| model | load s | 1 sentence: median ms | p99 ms | (calls) "
        "| batches of 256: sentences/s | (sentences) | peak RSS MB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, r in rows:
        cells = [
            label,
            f"{r['load_s']:.1f}",
            f"{r['median_ms']:.1f}",
            f"{r['p99_ms']:.1f}",
            r["n_single"],
            f"{r['per_s']:.0f}",
            r["n_batch"],
            f"{r['peak_rss_mb']:.0f}",
        ]
        print("| " + " | ".join(map(str, cells)) + " |")


if __name__ == "__main__":
    main()
