"""Score new sentences with a finished run's ensemble, as the review site would.

    python -m core.predict "服务热情，菜品新鲜" "一般般吧"
    python -m core.predict --file new.txt --out scores.csv --run outputs/runs/run-1a2b3c4d5e

Each fold's encoder runs once per sentence; the fold's stage-1 head and stage-2 head read the same
encoder output. Fold means of the two stages are mixed with the run's chosen stage weight, in
probability space: a rank blend (what the submission uses for a whole test file) has no meaning
for a single sentence.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from core.config import Settings
from core.io import read_json, write_csv


def latest_run(output_dir: Path) -> Path:
    """The most recently finished run (one with ensemble results) under ``output_dir/runs``."""
    done = sorted(
        (output_dir / "runs").glob("*/ensemble/results.json"), key=lambda p: p.stat().st_mtime
    )
    if not done:
        raise SystemExit(f"no finished run under {output_dir / 'runs'}: run ./suite.sh run first")
    return done[-1].parents[1]


def score(run_dir: Path, texts: list[str], batch_size: int = 256) -> pd.DataFrame:
    """``text, probability, stage1, stage2`` for every text, from every fold of the run."""
    from tensorflow import keras

    import core  # noqa: F401  (selects tf-keras before TensorFlow loads)
    from core.engine import encode
    from core.model import build_head_model, build_model, copy_head_weights
    from core.run import fold_dir
    from core.tokenizer import CharTokenizer, load_vocab

    run = read_json(run_dir / "run.json")
    results = read_json(run_dir / "ensemble" / "results.json")["headline"]
    weight = results.get("stage1_weight")
    weight = 0.5 if weight is None else float(weight)
    bert_dir = Path(run["bert_dir"])
    token_ids = CharTokenizer(load_vocab(bert_dir), run["maxlen"]).encode_all(texts)
    full = build_model(bert_dir, bert_trainable=False)
    encoder = keras.Model(full.inputs, full.get_layer("head_avg").input)
    head = build_head_model(encoder.output_shape[-1])
    stage1, stage2 = [], []
    for fold in range(run["n_folds"]):
        full.load_weights(str(fold_dir(run_dir, "stage1", fold) / "weights.h5"))
        feats = encode(encoder, token_ids, run["maxlen"] + 2, batch_size)
        copy_head_weights(full, head)
        stage1.append(head.predict(feats, batch_size=batch_size, verbose=0).reshape(-1))
        head.load_weights(str(fold_dir(run_dir, "stage2", fold) / "head.h5"))
        stage2.append(head.predict(feats, batch_size=batch_size, verbose=0).reshape(-1))
    p1, p2 = np.mean(stage1, axis=0), np.mean(stage2, axis=0)
    return pd.DataFrame({"text": texts, "probability": weight * p1 + (1 - weight) * p2,
                         "stage1": p1, "stage2": p2})  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("texts", nargs="*", help="sentences to score")
    parser.add_argument(
        "--file", help="a file of sentences in the test format (or a CSV with content)"
    )
    parser.add_argument(
        "--run", help="run folder (default: the latest finished run in outputs/runs)"
    )
    parser.add_argument("--out", help="write text,probability CSV here (inside outputs/)")
    args = parser.parse_args(argv)
    settings = Settings()
    run_dir = settings.run_path(args.run) if args.run else latest_run(settings.output_dir)
    texts = list(args.texts)
    if args.file:
        from core.data import read_unlabelled

        texts += read_unlabelled(args.file).texts
    if not texts:
        parser.error("give sentences as arguments or --file")
    scores = score(run_dir, texts)
    if args.out:
        out = settings.run_path(args.out, "--out")  # inside outputs/, like every other write
        write_csv(out, scores[["text", "probability"]])
        print(f"wrote {len(scores)} rows to {out}")
    else:
        scores[["text", "probability"]].to_csv(sys.stdout, index=False, float_format="%.4f")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
