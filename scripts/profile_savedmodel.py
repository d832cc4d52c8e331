"""Where one sentence's time goes in an exported SavedModel: the time of each kind of op.

    PYTHONPATH=. .venv/bin/python scripts/profile_savedmodel.py outputs/export/<name>/1

Loads the export in a TensorFlow 1 session (the same graph and kernels TensorFlow Serving runs),
scores ``--calls`` test sentences one at a time with a full trace after ``--warmup`` untraced
calls, and prints a table: per op type, the time per call summed over its kernels and its share.
A traced call is slower than an untraced one (the trace itself costs); the untraced median is
printed beside it. Each op's time is its kernel's wall time, so ops that ran in parallel on the
two cores can sum past the call's time.
"""

from __future__ import annotations

import argparse
import collections
import time

import numpy as np

import core  # noqa: F401  (TensorFlow's settings, as everywhere)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("savedmodel", help="an export's version folder (outputs/export/<name>/1)")
    parser.add_argument("--texts", default="data/test_handout.txt", help="sentences (test format)")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--top", type=int, default=12, help="op types listed")
    args = parser.parse_args()

    import tensorflow as tf

    from core.data.reviews import read_unlabelled

    texts = read_unlabelled(args.texts).texts
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], args.savedmodel)
        signature = meta.signature_def["serving_default"]
        feed = signature.inputs["texts"].name
        fetch = signature.outputs["probability"].name
        calls = texts[args.warmup : args.warmup + args.calls]
        for text in texts[: args.warmup]:
            sess.run(fetch, {feed: [text]})
        untraced = []
        for text in calls:
            start = time.perf_counter()
            sess.run(fetch, {feed: [text]})
            untraced.append(time.perf_counter() - start)
        per_op, count, traced = collections.Counter(), collections.Counter(), []
        options = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
        for text in calls:
            metadata = tf.compat.v1.RunMetadata()
            start = time.perf_counter()
            sess.run(fetch, {feed: [text]}, options=options, run_metadata=metadata)
            traced.append(time.perf_counter() - start)
            for device in metadata.step_stats.dev_stats:
                for node in device.node_stats:
                    label = node.timeline_label
                    op = label.split("=", 1)[1].split("(")[0].strip() if "=" in label else "other"
                    per_op[op] += node.op_end_rel_micros
                    count[op] += 1

    n = len(calls)
    total = sum(per_op.values())
    print(
        f"{args.savedmodel}: {n} sentences one at a time; median {1000 * np.median(untraced):.1f} "
        f"ms untraced, {1000 * np.median(traced):.1f} ms traced; "
        f"{sum(count.values()) / n:.0f} kernels per call\n"
    )
    print("| op | ms per call | share | kernels per call |")
    print("|---|---:|---:|---:|")
    for op, micros in per_op.most_common(args.top):
        print(f"| {op} | {micros / n / 1000:.2f} | {micros / total:.0%} | {count[op] / n:.0f} |")
    rest = total - sum(m for _, m in per_op.most_common(args.top))
    print(f"| (the rest) | {rest / n / 1000:.2f} | {rest / total:.0%} | |")


if __name__ == "__main__":
    main()
