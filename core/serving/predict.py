"""Score new sentences with a finished run's ensemble, as the review site would.

    python -m core.serving.predict "服务热情，菜品新鲜" "一般般吧"
    python -m core.serving.predict --file new.txt --out scores.csv --run outputs/runs/run-1a2b3c4d5e

Each fold's encoder runs once per sentence; the fold's stage-1 head and stage-2 head read the same
encoder output. The fold means of the two stages are mixed by the run's served mix
(core.ensembling.mix): the formula its submission and its reported served figure come from, so
the run's test file scores here as in its ``submission.csv``. ``--model distilled`` scores with
the run's distilled model instead (one encoder, made with ``distill_enabled``;
core.training.distill).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from core import cli
from core.config import CONFIG_FILE, ConfigError, Settings
from core.data.reviews import DataError, control_problem, read_unlabelled, show_path
from core.io import check_writable, read_json, write_csv
from core.runs.steps import DISTILLED as DISTILLED_NAME
from core.runs.steps import MARKERS, RUN_MARKERS

RESULTS = Path(RUN_MARKERS["ensemble"])  # written last by a run: its presence = finished
MODELS = ("ensemble", "distilled")  # what a run can score with
DISTILLED_DIR = Path(DISTILLED_NAME)  # a run's distilled model (core.training.distill)
DISTILLED = DISTILLED_DIR / MARKERS[DISTILLED_NAME]  # written last by the distilled model


class RunNotFinishedError(FileNotFoundError):
    """The run to score with does not exist or has not finished (no ensemble results yet)."""


def finish_command(run_dir: Path, output_dir: Path) -> str:
    """The main-job command that finishes ``run_dir`` with the settings it recorded."""
    from core.runs.folder import pipeline_command, run_settings

    if (run_dir / CONFIG_FILE).is_file():
        return pipeline_command(run_dir, run_settings(run_dir, output_dir))
    return pipeline_command(run_dir, Settings(output_dir=output_dir))


def finished_run(run_dir: Path, output_dir: Path, model: str = "ensemble") -> Path:
    """``run_dir`` if it has finished (and has ``model``), else RunNotFinishedError saying how to
    finish it (a run whose main job failed: why, never a command that would fail again)."""
    from core.runs.folder import failed_text, read_failed

    if not run_dir.is_dir():
        raise RunNotFinishedError(
            f"--run {show_path(run_dir)}: no such run folder; omit --run to use the latest "
            f"finished run under {show_path(output_dir / 'runs')}, or make one with "
            "`python -m core.pipeline`"
        )
    if not (run_dir / RESULTS).is_file() and (failed := read_failed(run_dir)):
        raise RunNotFinishedError(
            f"run {show_path(run_dir)} has not finished: its main job {failed_text(failed)}; "
            f"fix that first (python -m core.runs lists every run; python -m core.runs rm "
            f"{run_dir.name} removes it)"
        )
    if not (run_dir / RESULTS).is_file():
        raise RunNotFinishedError(
            f"run {show_path(run_dir)} has not finished (no {RESULTS} yet); finish it with: "
            f"{finish_command(run_dir, output_dir)}"
        )
    if model == "distilled" and not (run_dir / DISTILLED).is_file():
        raise RunNotFinishedError(
            f"run {show_path(run_dir)} has no distilled model ({DISTILLED} is missing); make "
            "one with the run's settings plus --set distill_enabled=True (configs/distill.yaml), "
            "or score with --model ensemble"
        )
    return run_dir


def latest_run(output_dir: Path, model: str = "ensemble") -> Path:
    """The most recently finished run (one with ensemble results, and a distilled model for
    ``model`` distilled) under ``output_dir/runs``."""
    marker = DISTILLED if model == "distilled" else RESULTS
    done = sorted((output_dir / "runs").glob(f"*/{marker}"), key=lambda p: p.stat().st_mtime)
    done = [p.parents[1] for p in done if (p.parents[1] / RESULTS).is_file()]
    if done:
        return done[-1]
    message = f"no finished run under {show_path(output_dir / 'runs')}"
    if model == "distilled":
        message = f"no finished run with a distilled model under {show_path(output_dir / 'runs')}"
    from core.runs.folder import FAILED

    started = sorted((output_dir / "runs").glob("*/run.json"), key=lambda p: p.stat().st_mtime)
    started = [p for p in started if not (p.parent / FAILED).is_file()]  # never offered
    if started:
        run_dir = started[-1].parent
        raise RunNotFinishedError(
            f"{message}; the latest, {show_path(run_dir)}, finishes with: "
            f"{finish_command(run_dir, output_dir)}"
        )
    raise RunNotFinishedError(
        f"{message}: make one with `./suite.sh run` (python -m core.pipeline), or pass --run"
    )


def cut_note(texts: list[str], maxlen: int) -> str | None:
    """What a user is told when sentences are longer than the run reads (as notebook 01 reports
    it for the data): the model sees only their first ``maxlen`` characters."""
    n = sum(len(t) > maxlen for t in texts)
    if not n:
        return None
    return (
        f"{n} of {len(texts)} sentences are longer than the run's maxlen, {maxlen} characters: "
        f"each is scored on its first {maxlen}"
    )


def score(
    run_dir: Path, texts: list[str], batch_size: int = 256, model: str = "ensemble"
) -> pd.DataFrame:
    """``text, probability, stage1, stage2`` for every text, from every fold of the run; with
    ``model`` distilled, ``text, probability`` from the run's distilled model."""
    from core.ensembling.mix import served_mix
    from core.runs.folder import check_encoder, check_reads, check_servable
    from core.weights import BertDirError, check_bert_dir

    if model not in MODELS:
        raise ValueError(f"model={model!r}: expected one of {', '.join(MODELS)}")
    if model == "distilled":
        finished_run(run_dir, run_dir.parent.parent, model)
        check_encoder(run_dir)  # on the encoder it recorded
    else:
        check_servable(run_dir)  # its own folds, on the encoder it recorded
    run = read_json(run_dir / "run.json")
    mix = served_mix(read_json(run_dir / RESULTS)["headline"])
    bert_dir = Path(run["bert_dir"])
    try:  # before TensorFlow loads: a quick refusal
        check_bert_dir(bert_dir, read_checkpoint=False)
    except BertDirError as e:
        raise BertDirError(f"run {show_path(run_dir)}, its encoder: {e}") from None
    mend = finish_command(run_dir, run_dir.parent.parent)
    check_reads(model_files(run_dir, run["n_folds"], model), mend)  # before TensorFlow too
    from tensorflow import keras

    from core.data.tokenizer import CharTokenizer, load_vocab
    from core.model.classifier import build_head_model, build_model, copy_head_weights
    from core.runs.steps import fold_dir
    from core.training.engine import encode

    token_ids = CharTokenizer(load_vocab(bert_dir), run["maxlen"]).encode_all(texts)
    if model == "distilled":
        return _score_distilled(run_dir, bert_dir, texts, token_ids, batch_size, mend)
    full = build_model(bert_dir, bert_trainable=False)
    encoder = keras.Model(full.inputs, full.get_layer("head_avg").input)
    head = build_head_model(encoder.output_shape[-1])
    stage1, stage2 = [], []
    for fold in range(run["n_folds"]):
        load_weights(full, fold_dir(run_dir, "stage1", fold) / "weights.h5", mend)
        feats = encode(encoder, token_ids, run["maxlen"] + 2, batch_size)
        copy_head_weights(full, head)
        stage1.append(head.predict(feats, batch_size=batch_size, verbose=0).reshape(-1))
        load_weights(head, fold_dir(run_dir, "stage2", fold) / "head.h5", mend)
        stage2.append(head.predict(feats, batch_size=batch_size, verbose=0).reshape(-1))
    p1, p2 = np.mean(stage1, axis=0), np.mean(stage2, axis=0)
    probability = mix({"stage1": p1, "stage2": p2})
    return pd.DataFrame({"text": texts, "probability": probability, "stage1": p1, "stage2": p2})


def model_files(run_dir: Path, n_folds: int, model: str = "ensemble") -> list[Path]:
    """The stored files scoring with ``model`` reads: every fold's stage-1 weights and stage-2
    head, or the distilled model's summary and weights."""
    from core.runs.steps import fold_dir

    if model == "distilled":
        return [run_dir / DISTILLED, run_dir / DISTILLED_DIR / "weights.h5"]
    return [
        fold_dir(run_dir, stage, k) / name
        for k in range(n_folds)
        for stage, name in (("stage1", "weights.h5"), ("stage2", "head.h5"))
    ]


def load_weights(model, path: Path, mend: str) -> None:
    """``model.load_weights(path)``; a file that cannot be read as weights (a step stored
    before records, damaged since) is a DamagedStepError naming it and ``mend``, not h5py's
    traceback."""
    from core.runs.steps import DamagedStepError

    try:
        model.load_weights(str(path))
    except (OSError, KeyError, ValueError) as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DamagedStepError(
            f"{show_path(path)}: expected this run's weights, found a file they cannot be read "
            f"from ({type(e).__name__}: {why}); compute its step again with: {mend}"
        ) from None


def _score_distilled(run_dir: Path, bert_dir: Path, texts, token_ids, batch_size, mend):
    from core.data.batches import predict_in_order
    from core.model.classifier import build_model

    done = read_json(run_dir / DISTILLED)
    model = build_model(bert_dir, bert_trainable=False, layers=done.get("layers"))
    load_weights(model, run_dir / DISTILLED_DIR / "weights.h5", mend)
    return pd.DataFrame(
        {"text": texts, "probability": predict_in_order(model, token_ids, batch_size)}
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m core.serving.predict", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("texts", nargs="*", help="sentences to score")
    parser.add_argument(
        "--file", help="a file of sentences in the test format (or a CSV with content)"
    )
    parser.add_argument(
        "--run", help="run folder (default: the latest finished run in outputs/runs)"
    )
    parser.add_argument(
        "--model",
        choices=MODELS,
        default="ensemble",
        help="the run's five-fold ensemble (default) or its distilled model (one encoder)",
    )
    parser.add_argument("--out", help="write text,probability CSV here (inside outputs/)")
    parser.add_argument("--output-dir", default="outputs", help="where runs are (default outputs/)")
    cli.add_debug_flag(parser)
    args = parser.parse_args(argv)
    settings = Settings(output_dir=args.output_dir)
    out = None
    if args.out:  # checked before the minutes of scoring, not after
        out = settings.run_path(args.out, "--out")  # inside outputs/, like every other write
        if out.is_dir():
            raise ConfigError(f"--out={args.out!r}: expected a file path, found a folder")
        check_writable(out.parent)  # a read-only or full disk, before scoring
    for i, text in enumerate(args.texts, 1):
        if not text.strip():
            raise DataError(
                f"sentence {i} of the command line: expected a sentence, found "
                f"{text!r} — remove it or fill it in"
            )
        if problem := control_problem(text):
            raise DataError(f"sentence {i} of the command line: {problem} — remove it")
    texts = list(args.texts)
    if args.file:
        hint = "core.serving.predict scores sentences without labels: remove them"
        texts += read_unlabelled(args.file, labelled_hint=hint).texts
    if not texts:
        parser.error("give sentences as arguments or --file")
    if args.run:
        run_dir = finished_run(
            settings.run_path(args.run, "--run"), settings.output_dir, args.model
        )
    else:
        run_dir = latest_run(settings.output_dir, args.model)
        # stderr: stdout is the CSV
        print(
            f"using run {show_path(run_dir)} (the latest finished; --run picks another)",
            file=sys.stderr,
        )
    if note := cut_note(texts, read_json(run_dir / "run.json")["maxlen"]):
        print(note, file=sys.stderr)
    from core.runs.folder import served_note

    if args.model == "ensemble" and (note := served_note(run_dir)):
        print(note, file=sys.stderr)
    scores = score(run_dir, texts, model=args.model)
    if out is not None:
        write_csv(out, scores[["text", "probability"]])
        print(f"wrote {len(scores)} rows to {out}")
    else:
        scores[["text", "probability"]].to_csv(sys.stdout, index=False, float_format="%.4f")
    return 0


def command() -> None:
    """``python -m core.serving.predict`` and the ``recsent-predict`` script."""
    cli.run(main)


if __name__ == "__main__":
    command()
