"""Throughput benchmark (not a test): our input pipeline against a seed-style one, same model.

    .venv/bin/python scripts/benchmark_throughput.py [--rows 1600] [--bert-dir pretrained/m3e-small]

In one process it measures, on the default encoder and real sentences from the training file:
- training and prediction samples/s of a seed-style pipeline (a Python generator of random batches
  of 16 padded to the batch's longest row, fed to ``model.fit`` / ``model.predict``);
- the same for our pipeline (length-grouped ``BatchSequence``; predictions in batches of 256),
  with and without XLA (``jit_compile``);
- this machine's dense matmul peak with TensorFlow, float32 and bfloat16;
- the fraction of the float32 peak our training reaches, counting real (non-padding) tokens at
  6 FLOP per parameter per token (about 76 MFLOP per token for a 4-layer, 512-wide encoder);
- peak resident memory during training and during prediction.
Each variant runs one untimed pass first (graph tracing, XLA compilation), then a timed pass.
"""

from __future__ import annotations

import core  # noqa: F401  (first: selects tf-keras before TensorFlow is imported below)

# isort: split
import argparse
import os
import threading
import time

import numpy as np
import psutil
import tensorflow as tf

from core.config import Settings
from core.data import read_labelled
from core.generator import BatchSequence, predict_in_order
from core.model import build_model
from core.tokenizer import CharTokenizer, load_vocab


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 20 ms)."""

    def __enter__(self):
        self.proc, self.peak, self.running = psutil.Process(os.getpid()), 0, True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.02)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def matmul_peak(dtype, n: int = 2048, reps: int = 20) -> float:
    """GFLOP/s of a square matmul chain in a compiled function."""
    a = tf.random.normal((n, n), dtype=tf.float32)
    a = tf.cast(a, dtype)

    @tf.function
    def chain(x):
        for _ in range(reps):
            x = tf.matmul(x, a) * tf.cast(1e-3, dtype)  # rescale: keep values finite
        return x

    chain(a).numpy()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        chain(a).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 * reps / best / 1e9


def seed_style_batches(token_ids, labels, batch_size, seed):
    """The seed's generator: shuffled rows, batches padded to their longest row, forever."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(token_ids))
        for i in range(0, len(order), batch_size):
            rows = order[i : i + batch_size]
            width = max(len(token_ids[r]) for r in rows)
            ids = np.zeros((len(rows), width), dtype=np.int32)
            for j, r in enumerate(rows):
                ids[j, : len(token_ids[r])] = token_ids[r]
            yield (ids, np.zeros_like(ids)), labels[rows, None]


def time_fit(model, data, steps) -> float:
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)  # warm-up pass
    start = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1600, help="training sentences per timed pass")
    parser.add_argument("--bert-dir", default="pretrained/m3e-small")
    parser.add_argument("--train-path", default="data/train_shuffle.txt")
    args = parser.parse_args()
    settings = Settings(bert_dir=args.bert_dir, train_path=args.train_path)
    data = read_labelled(settings.train_path)
    tokenizer = CharTokenizer(load_vocab(settings.bert_dir), settings.maxlen)
    token_ids = tokenizer.encode_all(data.texts[: args.rows])
    labels = data.labels[: args.rows].astype(np.float32)
    real_tokens = sum(len(t) for t in token_ids)
    n_params = None
    print(f"{len(token_ids)} sentences, {real_tokens} real tokens "
          f"({real_tokens / len(token_ids):.1f} per sentence incl. [CLS]/[SEP])")  # fmt: skip
    peak32, peak16 = matmul_peak(tf.float32), matmul_peak(tf.bfloat16)
    print(f"matmul peak: float32 {peak32:.1f} GFLOP/s, bfloat16 {peak16:.1f} GFLOP/s")

    rows = {}
    steps = int(np.ceil(len(token_ids) / 16))
    for name, jit, seed_style in [("seed-style", False, True), ("ours", False, False),
                                  ("ours+xla", True, False)]:  # fmt: skip
        tf.keras.backend.clear_session()
        model = build_model(settings.bert_dir, lr=1e-5, jit_compile=jit)
        encoder_params = sum(
            int(np.prod(w.shape)) for w in model.trainable_weights if "Embedding" not in w.name
        )
        n_params = n_params or encoder_params
        if seed_style:
            feed = seed_style_batches(token_ids, labels, 16, 0)
        else:
            feed = BatchSequence(token_ids, labels, 16, shuffle=True, group_by_length=True)
        with PeakRSS() as mem_train:
            train_s = time_fit(model, feed, steps)
        with PeakRSS() as mem_pred:
            if seed_style:
                gen = seed_style_batches(token_ids, labels, 16, 1)
                xs = ((next(gen)[0],) for _ in range(steps))
                model.predict(xs, steps=steps, verbose=0)  # warm-up
                start = time.perf_counter()
                xs = ((next(gen)[0],) for _ in range(steps))
                model.predict(xs, steps=steps, verbose=0)
            else:
                predict_in_order(model, token_ids, 256)
                start = time.perf_counter()
                predict_in_order(model, token_ids, 256)
            pred_s = time.perf_counter() - start
        flops = 6 * n_params * real_tokens / train_s / 1e9
        rows[name] = (len(token_ids) / train_s, len(token_ids) / pred_s, flops)
        print(f"{name:11s} train {rows[name][0]:6.1f} samples/s ({flops:5.1f} GFLOP/s on real "
              f"tokens = {flops / peak32:5.1%} of float32 peak), predict {rows[name][1]:6.1f} "
              f"samples/s; peak RSS train {mem_train.peak / 2**20:.0f} MiB, "
              f"predict {mem_pred.peak / 2**20:.0f} MiB", flush=True)  # fmt: skip
    print(f"encoder parameters (without embeddings): {n_params / 1e6:.1f} M "
          f"-> {6 * n_params / 1e6:.0f} MFLOP per real token in training")  # fmt: skip
    base = rows["seed-style"]
    for name in ("ours", "ours+xla"):
        print(f"{name} vs seed-style: train x{rows[name][0] / base[0]:.2f}, "
              f"predict x{rows[name][1] / base[1]:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
