"""Export a finished run's ensemble as one model on raw text, for serving outside this repository.

    python -m core.serving.export --run outputs/runs/<run> --out outputs/export/<name>
    python -m core.serving.export --run ... --out outputs/export/<name>-lite --format tflite
    python -m core.serving.export --run ... --out outputs/export/<name>-distilled --model distilled

The model is ``core.serving.predict.score`` in one TensorFlow graph: core.data.tokenizer's rules (a
lookup table built from the tokenizer itself), every fold's encoder, the fold means of the stage-1
and stage-2 heads mixed by the run's served mix (core.ensembling.mix). Its ``serving_default``
signature takes ``texts`` (a batch of UTF-8 strings) and returns ``probability`` (one per text)
and ``fold_probability`` (each fold's own mix, for out-of-fold checks). The empty
string is scored as ``[CLS] [SEP]``, as core.serving.predict does; bytes that are not UTF-8 are read
as U+FFFD. ``--model distilled`` exports the run's distilled model (one encoder,
core.training.distill) the same way; its signature returns ``probability`` only.

``<out>/<version>/`` is laid out for TensorFlow Serving (``saved_model.pb``, ``variables/``) or
holds ``model.tflite``; ``<out>/<version>.json`` (and ``export.json`` inside the version folder)
records the run it came from. The version folder appears by one rename, complete or not at all.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata as metadata
import os
import shutil
import sys
import tempfile
from pathlib import Path

from core import cli
from core.config import ConfigError, Settings
from core.data.reviews import file_sha256, show_path
from core.ensembling.mix import served_mix
from core.io import check_writable, read_json, write_json
from core.runs.folder import check_encoder, check_reads, check_servable, served_note
from core.runs.steps import fold_dir
from core.serving.predict import DISTILLED, DISTILLED_DIR, MODELS, finish_command, load_weights

FORMATS = {"savedmodel": "saved_model.pb", "tflite": "model.tflite"}  # format: its model file
SIGNATURE = {
    "inputs": {"texts": "string [batch]"},
    "outputs": {"probability": "float32 [batch]", "fold_probability": "float32 [batch, n_folds]"},
}


def signature(model: str) -> dict:
    """The serving signature of an export of ``model``."""
    if model == "ensemble":
        return SIGNATURE
    return {**SIGNATURE, "outputs": {"probability": SIGNATURE["outputs"]["probability"]}}


def model_files(run_dir: Path, run: dict, model: str) -> list[Path]:
    """The weight files an export of ``model`` reads."""
    if model == "distilled":
        return [run_dir / DISTILLED, run_dir / DISTILLED_DIR / "weights.h5"]
    return fold_files(run_dir, run["n_folds"])


def check_run(run_dir: Path, model: str = "ensemble") -> tuple[dict, dict]:
    """``run.json`` and the results headline of a finished run (with a distilled model, for
    ``model`` distilled), or FileNotFoundError saying why."""
    if not (run_dir / "run.json").is_file():
        raise FileNotFoundError(
            f"--run {show_path(run_dir)}: no run.json there — not a run folder; "
            "pass a finished run, e.g. --run outputs/runs/<run>"
        )
    run = read_json(run_dir / "run.json")
    results = run_dir / "ensemble" / "results.json"
    missing = [] if results.is_file() else [results]
    missing += [p for p in model_files(run_dir, run, model) if not p.is_file()]
    if missing and model == "distilled" and results.is_file():
        raise FileNotFoundError(
            f"--run {show_path(run_dir)} has no distilled model ({show_path(missing[0])} is "
            "missing); make it with the run's settings plus --set distill_enabled=True "
            "(configs/distill.yaml), or export --model ensemble"
        )
    if missing:
        raise FileNotFoundError(
            f"--run {show_path(run_dir)} is not finished ({show_path(missing[0])} is missing); "
            "finish it first with the command that made it (python -m core.pipeline resumes)"
        )
    # Each stored file as its step recorded it (before TensorFlow): a damaged one is named.
    check_reads(model_files(run_dir, run, model), _mend(run_dir))
    return run, read_json(results)["headline"]


def fold_files(run_dir: Path, n_folds: int) -> list[Path]:
    """Every fold's stage-1 weights and stage-2 head, in fold order."""
    return [
        fold_dir(run_dir, stage, k) / name
        for k in range(n_folds)
        for stage, name in (("stage1", "weights.h5"), ("stage2", "head.h5"))
    ]


def next_version(out: Path, fmt: str, version: int | None = None) -> int:
    """``version`` or the next free integer under ``out``, refusing folders that are not exports."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {show_path(out)} is a file; pass a folder for the export")
    entries = [p for p in out.iterdir() if not p.name.startswith(".")] if out.is_dir() else []
    versions = [int(p.name) for p in entries if p.is_dir() and p.name.isdigit()]
    records = {f"{v}.json" for v in versions}
    foreign = [p.name for p in entries if not p.name.isdigit() and p.name not in records]
    other_format = [v for v in versions if not (out / str(v) / FORMATS[fmt]).is_file()]
    if foreign or other_format:
        what = ", ".join(foreign or [f"version {v}" for v in other_format])
        raise FileExistsError(
            f"--out {show_path(out)} already holds {what}, which is no {fmt} export; "
            "pass a new folder (or an earlier export of the same format for a new version)"
        )
    if version is None:
        return max(versions, default=0) + 1
    if version < 1 or version in versions:
        raise FileExistsError(
            f"--version {version}: {show_path(out / str(version))} exists or is not >= 1; "
            f"omit --version for the next free one ({max(versions, default=0) + 1})"
        )
    return version


def record(
    run_dir: Path, run: dict, headline: dict, fmt: str, version: int, model: str = "ensemble"
) -> dict:
    """What the export came from: the run, its figures, and the hashes of everything it read."""
    distilled = read_json(run_dir / DISTILLED) if model == "distilled" else {}
    return {
        "run": run_dir.name,
        "run_dir": show_path(run_dir),
        "model": model,
        "format": fmt,
        "version": version,
        # The served ensemble's (the distilled model's teacher): its mix on the stored OOF scores,
        # and the nested figure of choosing it.
        "oof_auc": headline.get("served_oof_auc", headline["oof_auc"]),
        "nested_oof_auc": headline.get("served_nested_oof_auc"),
        "final": headline.get("served", headline.get("final")),
        **(
            {k: distilled[k] for k in ("in_fold_auc_mean", "test_rank_agreement", "layers")}
            if distilled
            else {}
        ),
        "mix": served_mix(headline).as_dict(),
        "n_folds": run["n_folds"],
        "maxlen": run["maxlen"],
        "train_sha256": run["train_sha256"],
        "bert_sha256": run["bert_sha256"],
        "fold_weights_sha256": {
            str(p.relative_to(run_dir)): file_sha256(p) for p in model_files(run_dir, run, model)
        },
        "signature": signature(model),
        "empty_string": "scored as [CLS] [SEP], like core.serving.predict",
        "tensorflow": metadata.version("tensorflow"),
        "exported_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def char_table(bert_dir: Path, maxlen: int) -> dict:
    """core.data.tokenizer's rules as data: ``chars`` maps every character the tokenizer does not
    turn into ``[UNK]`` to its id (asked of the tokenizer itself, so the table cannot drift from
    it);
    ``cls``, ``sep``, ``unk`` are ids and ``maxlen`` the characters kept."""
    from core.data.tokenizer import CharTokenizer, load_vocab

    tokenizer = CharTokenizer(load_vocab(bert_dir), maxlen)
    # One pass over all of Unicode (~2 s) finds the vocabulary's characters and every whitespace
    # the tokenizer knows. Surrogates cannot occur in decoded UTF-8.
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    tokens = [tokenizer._tokenize(ch) for ch in chars]
    if any(len(t) != 1 for t in tokens):
        raise ValueError(
            "core.data.tokenizer no longer maps one character to one token: update export"
        )
    unk = tokenizer._token_unk
    kept = {ch: t[0] for ch, t in zip(chars, tokens, strict=True) if t[0] != unk}
    ids = tokenizer._convert_tokens_to_ids(
        [*kept.values(), tokenizer._token_cls, tokenizer._token_sep, unk]
    )
    return {
        "maxlen": maxlen,
        "cls": ids[-3],
        "sep": ids[-2],
        "unk": ids[-1],
        "chars": dict(zip(kept, ids[:-3], strict=True)),
    }


def graph_tokenizer(table: dict):
    """A ``tf.Module`` whose ``token_ids`` maps a batch of strings to ids as core.data.tokenizer
    does: the first ``maxlen`` characters, ``[CLS]`` … ``[SEP]``, padded with 0 to the batch's
    longest."""
    import tensorflow as tf

    module = tf.Module()
    module.table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(list(table["chars"]), tf.string),
            tf.constant(list(table["chars"].values()), tf.int32),
        ),
        default_value=table["unk"],
    )

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="texts")])
    def token_ids(texts):
        chars = tf.strings.unicode_split(texts, "UTF-8", errors="replace")[:, : table["maxlen"]]
        n = tf.shape(texts)[0]
        cls, sep = (tf.RaggedTensor.from_tensor(tf.fill([n, 1], table[t])) for t in ("cls", "sep"))
        middle = tf.ragged.map_flat_values(module.table.lookup, chars)
        return tf.concat([cls, middle, sep], axis=1).to_tensor(0)

    module.token_ids = token_ids
    return module


def build_module(
    run_dir: Path, run: dict, headline: dict, table: dict, info_path: Path, model="ensemble"
):
    """A ``tf.Module`` whose ``serve`` is the run's ensemble (or distilled model) on raw text
    (``score_ids`` on ids)."""
    import tensorflow as tf

    if model == "distilled":
        return _module(tf, table, info_path, *_distilled(run_dir, run))
    return _module(tf, table, info_path, *_ensemble(run_dir, run, headline))


def _mend(run_dir: Path) -> str:
    """The command that computes a damaged stored step of the run again (its main job)."""
    return finish_command(run_dir, run_dir.parent.parent)


def _distilled(run_dir: Path, run: dict):
    """The distilled model: its variables and its scores of padded token ids."""
    import tensorflow as tf

    from core.model.classifier import build_model

    done = read_json(run_dir / DISTILLED)
    full = build_model(Path(run["bert_dir"]), bert_trainable=False, layers=done.get("layers"))
    load_weights(full, run_dir / DISTILLED_DIR / "weights.h5", _mend(run_dir))

    def score(ids):
        return {"probability": tf.reshape(full([ids, tf.zeros_like(ids)], training=False), [-1])}

    return full.variables, score, {"probability": tf.zeros([0])}


def _ensemble(run_dir: Path, run: dict, headline: dict):
    """Every fold's encoder and heads: their variables and the ensemble's scores of padded ids."""
    import tensorflow as tf
    from tensorflow import keras

    from core.model.classifier import build_head_model, build_model, copy_head_weights

    bert_dir, n_folds = Path(run["bert_dir"]), int(run["n_folds"])
    mix = served_mix(headline)
    folds = []
    for k in range(n_folds):  # as core.serving.predict.score builds them
        full = build_model(bert_dir, bert_trainable=False)
        load_weights(full, fold_dir(run_dir, "stage1", k) / "weights.h5", _mend(run_dir))
        encoder = keras.Model(full.inputs, full.get_layer("head_avg").input)
        head1 = build_head_model(encoder.output_shape[-1])
        copy_head_weights(full, head1)
        head2 = build_head_model(encoder.output_shape[-1])
        load_weights(head2, fold_dir(run_dir, "stage2", k) / "head.h5", _mend(run_dir))
        folds.append((encoder, head1, head2))

    def ensemble(ids):
        mask = tf.expand_dims(tf.cast(ids != 0, tf.float32), -1)
        stage1, stage2 = [], []
        for encoder, head1, head2 in folds:
            # Padding zeroed as core.training.engine.encode does: the heads' Masking(0) finds it
            # there.
            feats = encoder([ids, tf.zeros_like(ids)], training=False) * mask
            stage1.append(tf.reshape(head1(feats, training=False), [-1]))
            stage2.append(tf.reshape(head2(feats, training=False), [-1]))
        per_fold = mix({"stage1": tf.stack(stage1, axis=1), "stage2": tf.stack(stage2, axis=1)})
        return {"probability": tf.reduce_mean(per_fold, 1), "fold_probability": per_fold}

    variables = [v for models in folds for m in models for v in m.variables]
    empty = {"probability": tf.zeros([0]), "fold_probability": tf.zeros([0, n_folds])}
    return variables, ensemble, empty


def _module(tf, table: dict, info_path: Path, variables, score, empty):
    """The exported module: the tokenizer, ``score`` (padded ids -> outputs) on raw text."""
    module = tf.Module()
    module.tokenizer = graph_tokenizer(table)
    # The variables, not the Keras models, are tracked: the SavedModel then holds plain
    # TensorFlow functions and loads without Keras, keras-bert or this package.
    module.fold_variables = variables
    module.export_info = tf.saved_model.Asset(str(info_path))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="texts")])
    def serve(texts):
        # The encoder cannot run on zero rows: an empty batch gets empty outputs.
        return tf.cond(
            tf.size(texts) > 0, lambda: score(module.tokenizer.token_ids(texts)), lambda: empty
        )

    module.serve = serve
    # TFLite has no string ops: its model starts from token ids (see write_tflite).
    module.score_ids = tf.function(
        score, input_signature=[tf.TensorSpec([None, None], tf.int32, name="token_ids")]
    )
    return module


def write_savedmodel(module, path: Path) -> None:
    import tensorflow as tf

    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def write_tflite(module, table: dict, folder: Path) -> None:
    """``model.tflite`` with dynamic-range int8 weights, on token ids: TFLite has no string ops
    and the tensorflow wheel's interpreter no Flex delegate, so ``tokenizer.py`` (this package's
    lite_tokenizer, standalone) and ``tokens.json`` beside it turn text into ids."""
    import tensorflow as tf

    lite = tf.Module()  # without the string table, which TFLite cannot hold
    lite.fold_variables, lite.score_ids = module.fold_variables, module.score_ids
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [lite.score_ids.get_concrete_function()], lite
    )
    converter.optimizations = [tf.lite.Optimize.DEFAULT]  # no data given: weights only, int8
    folder.mkdir()
    (folder / FORMATS["tflite"]).write_bytes(converter.convert())
    shutil.copy(Path(__file__).with_name("lite_tokenizer.py"), folder / "tokenizer.py")
    write_json(folder / "tokens.json", table)


def export(
    run_dir: Path,
    out: Path,
    fmt: str = "savedmodel",
    version: int | None = None,
    model: str = "ensemble",
) -> Path:
    """Write ``<out>/<version>/`` (see the module docstring) of the run's ``model``; return it."""
    run, headline = check_run(run_dir, model)
    if model == "distilled":
        check_encoder(run_dir)  # on the encoder it recorded
    else:
        check_servable(run_dir)  # its own folds, on the encoder it recorded
    version = next_version(out, fmt, version)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", suffix=".tmp", dir=out))
    try:
        info = record(run_dir, run, headline, fmt, version, model)
        # The asset's source must live outside the folder tf.saved_model.save fills.
        write_json(tmp / "info" / "export.json", info)
        table = char_table(Path(run["bert_dir"]), int(run["maxlen"]))
        module = build_module(run_dir, run, headline, table, tmp / "info" / "export.json", model)
        model = tmp / "model"
        if fmt == "savedmodel":
            write_savedmodel(module, model)
        else:
            write_tflite(module, table, model)
            shutil.copy(tmp / "info" / "export.json", model / "export.json")
        write_json(out / f"{version}.json", info)
        os.rename(model, out / str(version))  # fails if another export took the version meanwhile
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if created and not any(out.iterdir()):
            out.rmdir()
    return out / str(version)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m core.serving.export", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--run", required=True, help="a finished run folder (outputs/runs/<run>)")
    parser.add_argument("--out", required=True, help="export folder inside outputs/")
    parser.add_argument("--format", choices=FORMATS, default="savedmodel")
    parser.add_argument("--version", type=int, help="version folder (default: next free integer)")
    parser.add_argument(
        "--model",
        choices=MODELS,
        default="ensemble",
        help="the run's five-fold ensemble (default) or its distilled model (one encoder)",
    )
    cli.add_debug_flag(parser)
    args = parser.parse_args(argv)
    settings = Settings()
    try:
        run_dir = settings.run_path(args.run, "--run")
        out = settings.run_path(args.out, "--out")
        if not run_dir.is_dir():
            raise FileNotFoundError(
                f"--run {args.run}: no such folder; pass a finished run, e.g. outputs/runs/<run>"
            )
        if out.is_relative_to(run_dir):
            raise ConfigError(f"--out {args.out}: inside the run folder; use outputs/export/<name>")
        check_run(run_dir, args.model)
        next_version(out, args.format, args.version)
        check_writable(out, elsewhere=None)  # before minutes of building: --out is in outputs/
    except (ConfigError, OSError) as e:
        raise SystemExit(str(e)) from None  # one error line (core.cli)
    if args.model == "ensemble" and (note := served_note(run_dir)):
        print(note, file=sys.stderr)
    path = export(run_dir, out, args.format, args.version, args.model)
    print(f"wrote {show_path(path)} ({args.format}, {args.model}) from {show_path(run_dir)}")
    return 0


if __name__ == "__main__":
    cli.run(main)
