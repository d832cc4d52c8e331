"""Throughput benchmark (not a test): our input pipeline against a reference-style one, same model.

    .venv/bin/python scripts/benchmark_throughput.py [--rows 1600] [--rounds 5] [--variants ...]

In one process, on the default encoder and real sentences from the training file, it measures
training and prediction samples/s of:
- ``reference-style``: a Python generator of random batches of 16 padded to the batch's longest row,
  fed to ``model.fit`` / ``model.predict`` (the reference);
- ``ours-b16``: our length-grouped ``BatchSequence`` fed as its ``dataset()`` (as the engine
  does), XLA-compiled steps, batch 16 (like for like);
- ``ours``: the pipeline's stage-1 defaults (``core.config.DEFAULTS``: batch size, XLA), and
  predictions in batches of 256 through one plain traced graph;
- the precision variants (``core.model.precision``), otherwise as ``ours``: ``ours-noxla`` (float32
  without XLA), ``bf16`` (mixed bfloat16 without XLA: oneDNN, what ``precision: auto`` picks on
  a CPU with bf16 instructions) and ``bf16-xla``.
It also measures this machine's dense matmul peak with TensorFlow (float32 and bfloat16) and the
fraction of the peak of its own precision each training pass reaches, counting real
(non-padding) tokens at 6 FLOP per encoder parameter per token (about 76 MFLOP per token for a
4-layer, 512-wide encoder).

This machine's speed drifts by up to 2x over minutes (other tenants of the host), so variants are
interleaved: each round times every variant once and re-measures the peak of the variant's
precision right after each training pass; the fraction of peak divides by that adjacent peak.
Medians over rounds are printed, and each variant's speed relative to ``ours`` and to the
reference-style (when run).
Ours is charged the whole ``fit`` call; the reference-style the call minus its teardown (see
``pass_seconds``), which is printed for every variant. Every variant first runs one untimed pass
(graph tracing, XLA compilation of each batch width).
Peak resident memory is measured on the pipeline's model alone, before the other models exist.

``--base-size`` times a randomly initialised base-size encoder instead (12 layers, 768 wide,
intermediate 3072, 12 heads; the vocabulary of ``--bert-dir``, 21,128 tokens for m3e-small) beside
the ``--bert-dir`` encoder, both as stage 1 trains (its batch size, precision and XLA choice):

    .venv/bin/python scripts/benchmark_throughput.py --base-size [--steps 20] [--rounds 3]

Each round times ``--steps`` training steps of each model on the same length-grouped batches
(after one untimed step per batch width: tracing and XLA compilation) and one prediction pass;
it prints per-step times and sentences/s for both, then a default run's per-fold and end-to-end
time with the base-size model, extrapolated from the measured ratios and the default run's
recorded stage times with m3e-small (``RECORDED``, docs/results.md).
"""

from __future__ import annotations

import core  # noqa: F401  (first: selects tf-keras before TensorFlow is imported below)

# isort: split
import argparse
import gc
import json
import math
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import tensorflow as tf
from tensorflow import keras

from core.config import DEFAULTS, Settings
from core.data.batches import BatchSequence, predict_in_order
from core.data.reviews import read_labelled
from core.data.tokenizer import CharTokenizer, load_vocab
from core.model.classifier import build_model
from core.model.precision import choose, detect
from core.weights import google_dir
from core.weights.google_ckpt import expected_shapes, write_bert_dir

PEAK_DTYPES = {"float32": tf.float32, "bfloat16": tf.bfloat16, "float16": tf.float16}


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


PIPELINE = DEFAULTS  # the pipeline's batch-width rounding and prediction batch size
_CHAINS: dict = {}  # one traced matmul chain per (dtype, n, reps): traced once, reused


def matmul_peak(dtype, n: int = 2048, reps: int = 10, tries: int = 2) -> float:
    """GFLOP/s of a chain of square matmuls in a traced function (best of ``tries``)."""
    if (dtype, n, reps) not in _CHAINS:
        a = tf.cast(tf.random.normal((n, n), dtype=tf.float32), dtype)

        @tf.function
        def chain(x):
            for _ in range(reps):
                x = tf.matmul(x, a) * tf.cast(1e-3, dtype)  # rescale: keep values finite
            return x

        chain(a).numpy()
        _CHAINS[dtype, n, reps] = chain, a
    chain, a = _CHAINS[dtype, n, reps]
    best = float("inf")
    for _ in range(tries):
        start = time.perf_counter()
        chain(a).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 * reps / best / 1e9


def seed_style_batches(token_ids, labels, batch_size, seed):
    """The reference's generator: shuffled rows, batches padded to their longest row, forever."""
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


@dataclass
class Variant:
    name: str
    batch_size: int
    jit: bool
    seed_style: bool
    precision: str = "float32"
    model: object = None
    train: list = field(default_factory=list)  # samples/s per round
    predict: list = field(default_factory=list)
    share: list = field(default_factory=list)  # fraction of the adjacent peak of its precision
    teardown: list = field(default_factory=list)  # seconds fit spent after training ended


class TrainWindow(keras.callbacks.Callback):
    """When ``fit`` began and ended training, inside the call (set-up and teardown outside)."""

    def on_train_begin(self, logs=None):
        self.begin = time.perf_counter()

    def on_train_end(self, logs=None):
        self.end = time.perf_counter()


def train_pass(v: Variant, token_ids, labels, seed: int) -> tuple[float, float]:
    """One epoch of training over ``token_ids``, shuffled with ``seed``: seconds of the whole
    ``fit`` call, and seconds of it spent after training ended (input pipeline teardown)."""
    if v.seed_style:
        feed = seed_style_batches(token_ids, labels, v.batch_size, seed)
        steps = -(-len(token_ids) // v.batch_size)
    else:
        seq = BatchSequence(
            token_ids,
            labels,
            v.batch_size,
            shuffle=True,
            seed=seed,
            group_by_length=True,
            pad_multiple=PIPELINE.stage1_pad_multiple,
        )
        feed, steps = seq.dataset(), len(seq)  # as core.training.engine feeds stage 1
    window = TrainWindow()
    start = time.perf_counter()
    v.model.fit(feed, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False, callbacks=[window])
    stop = time.perf_counter()
    return stop - start, stop - window.end


def pass_seconds(v: Variant, token_ids, labels, seed: int) -> float:
    """The training time a variant is charged for one epoch.

    Ours: the whole ``fit`` call. Reference-style: the call minus its teardown, in which tf-keras's
    tf.data iterator can wait up to 20 s (docs/experiments.md, throughput, session 3): the
    reference's ``fit`` runs all its epochs on one iterator and pays that once per training, not
    once per epoch.
    """
    total, teardown = train_pass(v, token_ids, labels, seed)
    v.teardown.append(teardown)
    return total - teardown if v.seed_style else total


def predict_pass(v: Variant, token_ids, labels) -> float:
    """Seconds to score ``token_ids`` once."""
    start = time.perf_counter()
    if v.seed_style:
        steps = -(-len(token_ids) // v.batch_size)
        gen = seed_style_batches(token_ids, labels, v.batch_size, 1)
        v.model.predict(((next(gen)[0],) for _ in range(steps)), steps=steps, verbose=0)
    else:
        predict_in_order(v.model, token_ids, PIPELINE.predict_batch_size)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1600, help="training sentences per pass")
    parser.add_argument("--rounds", type=int, default=5, help="timed passes per variant")
    parser.add_argument("--bert-dir", default="pretrained/m3e-small")
    parser.add_argument("--train-path", default="data/train_shuffle.txt")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated, from {', '.join(VARIANTS)} (default: all)",
    )
    parser.add_argument(
        "--base-size",
        action="store_true",
        help="time a random base-size encoder (12 x 768) beside --bert-dir instead of the variants",
    )
    parser.add_argument(
        "--steps", type=int, default=20, help="--base-size: timed training steps per model a round"
    )
    args = parser.parse_args()
    names = args.variants.split(",")
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown or "ours" not in names:  # ours: the base of the ratios and of the memory figure
        parser.error(f"--variants {args.variants}: expected ours and some of {', '.join(VARIANTS)}")
    # A Hugging Face folder is converted (once) as the pipeline converts bert_dir.
    settings = Settings(bert_dir=google_dir(args.bert_dir), train_path=args.train_path)
    data = read_labelled(settings.train_path)
    tokenizer = CharTokenizer(load_vocab(settings.bert_dir), settings.maxlen)
    token_ids = tokenizer.encode_all(data.texts[: args.rows])
    labels = data.labels[: args.rows].astype(np.float32)
    real_tokens = sum(len(t) for t in token_ids)
    print(
        f"{len(token_ids)} sentences, {real_tokens} real tokens "
        f"({real_tokens / len(token_ids):.1f} per sentence incl. [CLS]/[SEP])"
    )
    if args.base_size:
        compare_base_size(settings, token_ids, labels, args.steps, args.rounds)
        return
    peak32, peak16 = matmul_peak(tf.float32, tries=3), matmul_peak(tf.bfloat16, tries=3)
    print(f"matmul peak at start: float32 {peak32:.1f} GFLOP/s, bfloat16 {peak16:.1f} GFLOP/s")
    hw = detect()
    print(
        f"bf16 CPU flags: {', '.join(hw.cpu_bf16) or 'none'}; GPUs: {len(hw.gpus)}; "
        f"precision auto here: {choose('auto', DEFAULTS.stage1_jit_compile, hw)}"
    )

    variants = [VARIANTS[name]() for name in VARIANTS if name in names]
    ours = next(v for v in variants if v.name == "ours")
    for v in variants:
        v.model = build_model(settings.bert_dir, lr=1e-5, jit_compile=v.jit, precision=v.precision)
        # Untimed: tracing, and XLA compilation of every batch shape (two reshuffled passes).
        # Memory is measured here on the pipeline's model, built first and alone.
        with PeakRSS() as mem_train:
            for seed in range(2 if v.jit else 1):
                train_pass(v, token_ids, labels, seed=1000 + seed)
        with PeakRSS() as mem_pred:
            predict_pass(v, token_ids, labels)
        if v is ours:
            print(
                f"peak RSS of the pipeline's model: training {mem_train.peak / 2**20:.0f} MiB, "
                f"prediction {mem_pred.peak / 2**20:.0f} MiB",
                flush=True,
            )
        gc.collect()
    weights = [w for w in ours.model.trainable_weights if "Embedding" not in w.name]
    n_params = sum(int(np.prod(w.shape)) for w in weights)
    gflop = 6 * n_params * real_tokens / 1e9  # per training pass

    peaks = {name: [] for name in PEAK_DTYPES}
    for r in range(args.rounds):
        for v in variants:
            train_s = pass_seconds(v, token_ids, labels, seed=r)
            peak = matmul_peak(PEAK_DTYPES[v.precision])
            peaks[v.precision].append(peak)
            v.train.append(len(token_ids) / train_s)
            v.share.append(gflop / train_s / peak)
            v.predict.append(len(token_ids) / predict_pass(v, token_ids, labels))
            print(
                f"round {r + 1} {v.name:10s} train {v.train[-1]:6.1f} samples/s "
                f"({gflop / train_s:5.1f} GFLOP/s, {v.share[-1]:5.1%} of the {v.precision} peak "
                f"{peak:.0f} measured right after), predict {v.predict[-1]:6.1f} samples/s; "
                f"fit teardown {v.teardown[-1]:.1f} s",
                flush=True,
            )

    med = np.median
    print(
        f"\nencoder parameters (without embeddings): {n_params / 1e6:.1f} M "
        f"-> {6 * n_params / 1e6:.0f} MFLOP per real token in training"
    )
    for name, values in peaks.items():
        if values:
            print(
                f"{name} matmul peak over the rounds: median {med(values):.1f}, range "
                f"{min(values):.1f}-{max(values):.1f} GFLOP/s"
            )
    print(f"medians over {args.rounds} rounds (x: per-round ratios' median):")
    bases = [ours] + [v for v in variants if v.seed_style]
    for v in variants:
        ratios = ", ".join(
            f"train x{med(np.divide(v.train, b.train)):.2f} predict "
            f"x{med(np.divide(v.predict, b.predict)):.2f} {b.name}"
            for b in bases
            if b is not v
        )
        print(
            f"  {v.name:10s} ({v.precision}, batch {v.batch_size:2d}, "
            f"XLA {'on ' if v.jit else 'off'}) "
            f"train {med(v.train):6.1f} samples/s = {med(v.share):5.1%} of the {v.precision} "
            f"peak; predict {med(v.predict):6.1f} samples/s; {ratios or 'the base'}; "
            f"fit teardown {np.mean(v.teardown):.1f} s on average"
        )


# ---------------------------------------------------------------- --base-size

BASE_SIZE = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
}
# The default run's stage times (minutes) with m3e-small on the 2-core CPUs of docs/results.md:
# float32 ("The default method": stage 0 15.7, EDA 0.2, stage 1 28.0, stage 2 6.1, ensemble 0.1)
# and bfloat16 ("The full-size check": 27.5 min; stage 0 444 s, stage-1 folds 170-180 s, stage-2
# folds 41-48 s; "other" is the rest: EDA, ensemble, error analysis, notebook start-ups).
RECORDED = {
    "float32": {"stage0": 15.7, "stage1": 28.0, "stage2": 6.1, "other": 0.3},
    "bfloat16": {"stage0": 7.4, "stage1": 14.6, "stage2": 3.7, "other": 1.8},
}
TRAIN_ROWS = 11_200  # a fold's training rows: 4/5 of the 14,000


def write_random_encoder(out_dir: Path, like: Path, seed: int = 0) -> Path:
    """A base-size Google folder of random N(0, 0.02) weights (LayerNorm 1 and 0, biases 0) with
    the vocabulary, positions and activation of the folder ``like``."""
    config = {**json.loads((Path(like) / "bert_config.json").read_text()), **BASE_SIZE}
    vocab = (Path(like) / "vocab.txt").read_text(encoding="utf-8").splitlines()
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in expected_shapes(config).items():
        if name.endswith("gamma"):
            tensors[name] = np.ones(shape, np.float32)
        elif name.endswith(("beta", "bias")):
            tensors[name] = np.zeros(shape, np.float32)
        else:
            tensors[name] = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
    return write_bert_dir(out_dir, config, vocab, tensors)


def parameters(model) -> tuple[int, int]:
    """(all trainable weights, those outside the embeddings) of a classifier."""
    weights = model.trainable_weights
    inner = [w for w in weights if "Embedding" not in w.name]
    return tuple(sum(int(np.prod(w.shape)) for w in ws) for ws in (weights, inner))


def compare_base_size(settings: Settings, token_ids, labels, steps: int, rounds: int) -> None:
    """Training step times of a random base-size encoder beside ``settings.bert_dir``'s, and a
    default run's time with it, extrapolated."""
    s = DEFAULTS
    choice = choose(s.precision, s.stage1_jit_compile)  # as stage 1 builds its model here
    batch = s.stage1_batch_size
    seq = BatchSequence(
        token_ids, labels, batch, True, 0, group_by_length=True, pad_multiple=s.stage1_pad_multiple
    )
    full = [b for b in (seq[i] for i in range(len(seq))) if len(b[1]) == batch]
    widths = {b[0][0].shape[1]: b for b in full}  # one batch per width: the untimed warm-up
    print(
        f"stage 1 as the pipeline builds it here: batch {batch}, {choice.precision}, XLA "
        f"{'on' if choice.jit_compile else 'off'} ({choice.reason}); {len(full)} full batches, "
        f"widths {sorted(widths)}; {steps} timed steps per model per round, {rounds} rounds"
    )
    names = ("encoder", "base-size")
    with tempfile.TemporaryDirectory(prefix="base-size-") as tmp:
        start = time.perf_counter()
        base_dir = write_random_encoder(Path(tmp) / "bert", settings.bert_dir)
        print(f"random base-size folder written in {time.perf_counter() - start:.1f} s")
        models, memory = {}, {}
        for name, folder in zip(names, (settings.bert_dir, base_dir), strict=True):
            with PeakRSS() as mem:
                models[name] = build_model(
                    folder, lr=1e-5, jit_compile=choice.jit_compile, precision=choice.precision
                )
                start = time.perf_counter()
                for x, y in widths.values():
                    models[name].train_on_batch(x, y)
                predict_in_order(models[name], token_ids[:batch], s.predict_batch_size)  # traces
                warm = time.perf_counter() - start
            memory[name] = mem.peak
            total, inner = parameters(models[name])
            print(
                f"{name:9s}: {total / 1e6:6.1f} M trainable weights ({inner / 1e6:.1f} M outside "
                f"the embeddings: {6 * inner / 1e6:.0f} MFLOP per real token in training); "
                f"warm-up {warm:.1f} s; peak RSS so far {mem.peak / 2**30:.2f} GiB",
                flush=True,
            )
        step_s = {name: [] for name in names}
        predict_s = {name: [] for name in names}
        for r in range(rounds):
            for name in names:
                model, times = models[name], []
                for i in range(steps):
                    x, y = full[(r * steps + i) % len(full)]
                    start = time.perf_counter()
                    model.train_on_batch(x, y)
                    times.append(time.perf_counter() - start)
                step_s[name] += times
                start = time.perf_counter()
                predict_in_order(model, token_ids, s.predict_batch_size)
                predict_s[name].append(time.perf_counter() - start)
                print(
                    f"round {r + 1} {name:9s} steps (s): "
                    + " ".join(f"{t:.3f}" for t in times)
                    + f"; median {np.median(times):.3f} s = {batch / np.median(times):.1f} "
                    f"sentences/s; predict {len(token_ids) / predict_s[name][-1]:.1f} "
                    "sentences/s",
                    flush=True,
                )
    report_base_size(step_s, predict_s, batch, len(token_ids), choice.precision)


def report_base_size(step_s, predict_s, batch: int, n_predict: int, precision: str) -> None:
    """Medians of both models, their ratio, and a default run with the base-size encoder,
    extrapolated (nothing below the medians is measured)."""
    med = {name: float(np.median(times)) for name, times in step_s.items()}
    pred = {name: float(np.median(times)) for name, times in predict_s.items()}
    for name in med:
        print(
            f"{name:9s}: training step median {med[name]:.3f} s (range {min(step_s[name]):.3f}-"
            f"{max(step_s[name]):.3f}) = {batch / med[name]:.1f} sentences/s; prediction "
            f"{n_predict / pred[name]:.1f} sentences/s"
        )
    train_x = med["base-size"] / med["encoder"]
    predict_x = pred["base-size"] / pred["encoder"]
    print(f"base-size / encoder: training step x{train_x:.2f}, prediction x{predict_x:.2f}")
    epochs, steps = DEFAULTS.stage1_epochs, math.ceil(TRAIN_ROWS / batch)
    for name in med:
        minutes = epochs * steps * med[name] / 60
        print(
            f"extrapolated: {name} stage-1 training steps of one fold, {epochs} epochs x {steps} "
            f"steps x {med[name]:.3f} s = {minutes:.1f} min (no validation or test prediction)"
        )
    recorded = RECORDED.get(precision, RECORDED["float32"])
    scaled = {
        "stage0": recorded["stage0"] * train_x,
        "stage1": recorded["stage1"] * train_x,
        "stage2": recorded["stage2"] * predict_x,  # mostly the frozen encoder's outputs
        "other": recorded["other"],
    }
    fold = (scaled["stage1"] + scaled["stage2"]) / DEFAULTS.n_folds
    which = precision if precision in RECORDED else "float32"
    print(
        f"extrapolated (the default run's recorded {which} stage times with m3e-small, "
        "docs/results.md, scaled by the ratios above; valid when --bert-dir is m3e-small): "
        f"per fold (stages 1 + 2) {fold:.1f} min; end to end {sum(scaled.values()):.0f} min "
        f"(stage 0 {scaled['stage0']:.0f}, stage 1 {scaled['stage1']:.0f}, stage 2 "
        f"{scaled['stage2']:.0f} min) against {sum(recorded.values()):.1f} min recorded"
    )


_OURS = DEFAULTS.stage1_batch_size
VARIANTS = {  # name: a fresh Variant (the model is built in main)
    "ours": lambda: Variant("ours", _OURS, DEFAULTS.stage1_jit_compile, False),
    "ours-b16": lambda: Variant("ours-b16", 16, True, False),
    "reference-style": lambda: Variant("reference-style", 16, False, True),
    "ours-noxla": lambda: Variant("ours-noxla", _OURS, False, False),
    "bf16": lambda: Variant("bf16", _OURS, False, False, "bfloat16"),
    "bf16-xla": lambda: Variant("bf16-xla", _OURS, True, False, "bfloat16"),
}


if __name__ == "__main__":
    main()
