"""A development holdout: training rows kept aside, for figures out-of-fold AUC cannot give.

    python -m core.analysis.holdout split --rows 2000     # data/dev/train.txt + holdout.txt
    python -m core.pipeline --config configs/dev-holdout.yaml
    python -m core.analysis.holdout score                 # every model of the latest run on it

A model trained on all training rows (the distilled single model) has no out-of-fold predictions;
the holdout scores it and the fold ensemble on rows no model of the run saw. Report it once, named
as a holdout figure; never tune on it (docs/method.md, "The development holdout").
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from core import cli
from core.config import DEFAULTS, FIELDS, ConfigError, Settings, resolve
from core.data.reviews import DataError, Dataset, file_sha256, read_labelled, show_path
from core.io import read_json, write_json, write_text
from core.metrics import auc
from core.serving import predict

SEED = 2020  # a constant, not DEFAULTS.seed: changing the folds' seed must not move the holdout
SPLIT_FILE, TRAIN_FILE, HOLDOUT_FILE = "split.json", "train.txt", "holdout.txt"
RESULTS = Path("holdout") / "results.json"
# Every model kind a run may have, and the file that marks it finished (None: every finished run
# has it); each is a `model=` value of core.serving.predict.score.
MODELS = {"ensemble": None, "distilled": predict.DISTILLED}
CONFIG = "configs/dev-holdout.yaml"  # the main job on data/dev/train.txt
RULE = "a development holdout, not out-of-fold: report it once, never tune on it"


class HoldoutError(ValueError):
    """A holdout folder or file that cannot give an honest figure; the message says the fix."""


def model_kinds(run_dir: Path) -> list[str]:
    """The model kinds finished in ``run_dir``, the ensemble first."""
    return [k for k, done in MODELS.items() if done is None or (Path(run_dir) / done).is_file()]


# -- split -----------------------------------------------------------------------------------------


def allocation(labels: np.ndarray, rows: int) -> dict[int, int]:
    """Rows to keep of each label: in proportion to its count, the largest remainders rounding
    up (ties: the smaller label)."""
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * rows / len(labels)
    take = np.floor(exact).astype(int)
    take[np.argsort(take - exact, kind="stable")[: rows - take.sum()]] += 1
    return {int(c): int(k) for c, k in zip(classes, take, strict=True)}


def holdout_rows(labels: np.ndarray, rows: int, seed: int) -> np.ndarray:
    """Sorted indices of ``rows`` rows, stratified by label (``allocation``); each label's rows
    are the first of ``default_rng(seed).permutation`` of its indices."""
    rng = np.random.default_rng(seed)
    picked = [
        rng.permutation(np.flatnonzero(labels == c))[:k]
        for c, k in allocation(labels, rows).items()
    ]
    return np.sort(np.concatenate(picked))


def label_counts(labels) -> dict[str, int]:
    counts = Counter(int(y) for y in labels)
    return {str(y): counts[y] for y in sorted(counts)}


def competition_text(data: Dataset, index: np.ndarray) -> str:
    """Rows ``index`` of ``data`` in the competition format (``label<TAB>text``, blank line)."""
    out = []
    for i in index:
        text = data.texts[i]
        if "\t" in text or "\n" in text:  # only a CSV can hold them; the text format cannot
            raise DataError(
                f"{show_path(data.path)}, line {data.line_numbers[i]}: expected a text without "
                f"tabs or line breaks (the competition format has no room for them), found "
                f"{text[:40]!r} — remove them from the text",
                path=data.path,
                line=data.line_numbers[i],
            )
        out.append(f"{data.labels[i]}\t{text}\n\n")
    return "".join(out)


def check_rows(rows: int, data: Dataset) -> None:
    """``rows`` leaves the main job its folds and gives both labels (AUC needs them) a row."""
    n, folds = len(data), DEFAULTS.n_folds
    if not 1 <= rows <= n - folds:
        raise ConfigError(
            f"--rows={rows}: expected 1..{n - folds} for the {n} rows of "
            f"{show_path(data.path)} (at least {folds} must stay for the main job's {folds} "
            f"folds); pass e.g. --rows {max(1, min(2000, n // 7))}"
        )
    missing = [y for y, k in allocation(data.labels, rows).items() if k == 0]
    if missing:
        raise ConfigError(
            f"--rows={rows}: a holdout of {rows} rows of {show_path(data.path)} "
            f"({label_counts(data.labels)} per label) has no row of label {missing[0]}, and AUC "
            "needs both labels; pass more rows"
        )


def split(train: Path, out: Path, rows: int, seed: int = SEED) -> bool:
    """Write ``out/train.txt``, ``out/holdout.txt`` and ``out/split.json`` (last: it marks the
    split done); False when ``out`` already held this very split (nothing written)."""
    data = read_labelled(train)  # every check of the reader: a bad file is refused, named
    check_rows(rows, data)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {show_path(out)}: expected a folder, found a file")
    kept = holdout_rows(data.labels, rows, seed)
    rest = np.setdiff1d(np.arange(len(data)), kept)
    files = {TRAIN_FILE: competition_text(data, rest), HOLDOUT_FILE: competition_text(data, kept)}
    clash = [name for name, text in files.items() if _differs(out / name, text)]
    if (out / SPLIT_FILE).is_file():
        made = read_json(out / SPLIT_FILE)
        if (made.get("source_sha256"), made.get("seed"), made.get("rows")) != (
            file_sha256(train),
            seed,
            rows,
        ):
            clash.append(SPLIT_FILE)
    if clash:
        raise HoldoutError(
            f"--out {show_path(out)}: holds another split ({clash[0]} differs: "
            f"{_describe(out)}), not {rows} rows of {show_path(train)} at seed {seed}; pass "
            f"another --out, or delete {show_path(out)} to split anew (a run trained on its "
            f"{TRAIN_FILE} then no longer has its holdout)"
        )
    if all((out / name).is_file() for name in (*files, SPLIT_FILE)):
        return False  # the same split again
    for name, text in files.items():
        write_text(out / name, text)
    record = {
        "what": RULE,
        "source": show_path(train),
        "source_sha256": file_sha256(train),
        "source_rows": len(data),
        "seed": seed,
        "rows": rows,
        "train": _file_record(out / TRAIN_FILE, data.labels[rest]),
        "holdout": _file_record(out / HOLDOUT_FILE, data.labels[kept]),
    }
    write_json(out / SPLIT_FILE, record)
    return True


def _differs(path: Path, text: str) -> bool:
    return path.exists() and path.read_bytes() != text.encode("utf-8")


def _describe(out: Path) -> str:
    """What an existing split folder holds, for a message."""
    if not (out / SPLIT_FILE).is_file():
        return f"not written by this command, no {SPLIT_FILE}"
    made = read_json(out / SPLIT_FILE)
    return f"{SPLIT_FILE} says {made['rows']} rows of {made['source']} at seed {made['seed']}"


def _file_record(path: Path, labels) -> dict:
    return {
        "file": path.name,
        "sha256": file_sha256(path),
        "rows": len(labels),
        "labels": label_counts(labels),
    }


# -- score -----------------------------------------------------------------------------------------


def check_unseen(run_dir: Path, holdout: Path, data: Dataset, output_dir: Path) -> dict:
    """How we know no model of ``run_dir`` trained on a holdout row; HoldoutError when one may
    have. With the split's ``split.json``: the run trained on the split's ``train.txt``.
    Without (or a run of another file): no holdout text is among the run's training rows."""
    run_sha = read_json(run_dir / "run.json").get("train_sha256")
    record = holdout.parent / SPLIT_FILE
    if record.is_file():
        made = read_json(record)
        now = file_sha256(holdout)
        if now != made["holdout"]["sha256"]:
            raise HoldoutError(
                f"{show_path(holdout)}: changed since {show_path(record)} recorded it (sha256 "
                f"{made['holdout']['sha256'][:12]}…, now {now[:12]}…), so its rows may not be the "
                "kept ones; restore it, or split again into a new --out and train on that"
            )
        if run_sha == made["train"]["sha256"]:
            return {"check": f"the run trained on the split's {TRAIN_FILE}", "split": made}
        if run_sha == made["source_sha256"]:
            split_train = holdout.parent / TRAIN_FILE
            raise HoldoutError(
                f"run {show_path(run_dir)} trained on {made['source']}, which "
                f"{show_path(holdout)} was taken out of: every holdout row was in its training. "
                f"Score a run of {show_path(split_train)}: "
                f"{_run_hint(output_dir, made['train']['sha256'], split_train)}"
            )
    train_path, texts = training_texts(run_dir)
    seen = [i for i, text in enumerate(data.texts) if text in texts]
    if seen:
        line = data.line_numbers[seen[0]]
        raise HoldoutError(
            f"{show_path(holdout)}, line {line}: {len(seen)} of its {len(data)} texts are "
            f"training rows of run {show_path(run_dir)} ({show_path(train_path)}), and a "
            "holdout figure must be on rows no model of the run saw; score a run that did not "
            "train on them, or make the holdout with `python -m core.analysis.holdout split` "
            f"and train on its {TRAIN_FILE}"
        )
    return {"check": f"no holdout text is among the run's training rows ({show_path(train_path)})"}


def training_texts(run_dir: Path) -> tuple[Path, set[str]]:
    """The run's training file (run.json's) and its texts, checked to be the file it trained on."""
    run = read_json(run_dir / "run.json")
    path = Path(run.get("train_path", ""))
    if not path.is_file() or file_sha256(path) != run.get("train_sha256"):
        raise HoldoutError(
            f"run {show_path(run_dir)}: its training file {show_path(path)} is gone or changed "
            "since (train_sha256 in run.json), so the holdout cannot be checked against it; make "
            "the holdout with `python -m core.analysis.holdout split` (its split.json records "
            "where the rows came from) and score a run of its train.txt"
        )
    return path, set(read_labelled(path).texts)


def _run_hint(output_dir: Path, train_sha: str, train: Path) -> str:
    """``--run <a finished run of that file>``, or the command that makes one."""
    for done in sorted((output_dir / "runs").glob(f"*/{predict.RESULTS}")):
        if read_json(done.parents[1] / "run.json").get("train_sha256") == train_sha:
            return f"--run {show_path(done.parents[1])}"
    return f"make it with {train_command(train)}"


def train_command(train: Path) -> str:
    """The main-job command that trains on ``train``: the named configuration for data/dev."""
    config = resolve(CONFIG)
    if train == resolve("data/dev") / TRAIN_FILE and config.is_file():
        return f"python -m core.pipeline --config {CONFIG}"
    return f"python -m core.pipeline --set train_path={show_path(train)}"


def model_scores(run_dir: Path, texts: list[str], kind: str) -> np.ndarray:
    """Probabilities of one model kind of the run (core.serving.predict.score)."""
    return predict.score(run_dir, texts, model=kind)["probability"].to_numpy()


def score(run_dir: Path, holdout: Path, output_dir: Path) -> dict:
    """AUC of every model kind of ``run_dir`` on ``holdout``; written to ``<run>/holdout/``."""
    data = read_labelled(holdout)
    counts = label_counts(data.labels)
    if len(counts) < 2:
        raise HoldoutError(
            f"{show_path(holdout)}: expected rows of both labels (AUC needs them), found only "
            f"label {next(iter(counts))}; split with more --rows"
        )
    unseen = check_unseen(run_dir, holdout, data, output_dir)
    if note := predict.cut_note(data.texts, read_json(run_dir / "run.json")["maxlen"]):
        print(note, file=sys.stderr)
    try:  # rows of the source with the same text (duplicates) may fall on both sides of a split
        trained = training_texts(run_dir)[1]
        shared = sum(text in trained for text in data.texts)
    except HoldoutError:  # the training file is not here to count them: the figure stands
        shared = None
    models = {}
    for kind in model_kinds(run_dir):
        p = model_scores(run_dir, data.texts, kind)
        models[kind] = {"auc": auc(data.labels, p), "n_rows": len(p)}
    results = {
        "what": RULE,
        "holdout": show_path(holdout),
        "holdout_sha256": file_sha256(holdout),
        "labels": counts,
        **unseen,
        "texts_in_training": shared,
        "models": models,
    }
    write_json(run_dir / RESULTS, results)
    return results


def table(results: dict) -> str:
    """The results as a few aligned lines: model, AUC, its gap to the ensemble, rows."""
    base = results["models"]["ensemble"]["auc"]
    lines = [f"{'model':<10} {'AUC':>7} {'vs ensemble':>12} {'rows':>6}"]
    for kind, m in results["models"].items():
        gap = "" if kind == "ensemble" else f"{m['auc'] - base:+.4f}"
        lines.append(f"{kind:<10} {m['auc']:>7.4f} {gap:>12} {m['n_rows']:>6}")
    return "\n".join(lines)


# -- the command -----------------------------------------------------------------------------------


def _integer(text: str, name: str, low: int | None = None) -> int:
    """``text`` as an integer (at least ``low``), or a ConfigError naming the option."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or (low is not None and value < low):
        raise ConfigError(
            f"{name}={text!r}: expected an integer" + f" >= {low}" * (low is not None)
        )
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m core.analysis.holdout", description=__doc__.split("\n\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    cut = commands.add_parser("split", help="keep rows of the training file aside")
    cut.add_argument("--rows", required=True, help="rows to keep aside, e.g. 2000")
    cut.add_argument("--seed", default=str(SEED), help=f"the draw (default {SEED})")
    train = str(FIELDS["train_path"].default)  # as typed: DEFAULTS holds it resolved
    cut.add_argument("--train", default=train, help=f"the file to split (default {train})")
    cut.add_argument(
        "--out",
        default="data/dev",
        help="writes train.txt, holdout.txt, split.json (default data/dev)",
    )
    rate = commands.add_parser("score", help="every model of a finished run on the holdout")
    rate.add_argument(
        "--holdout", default="data/dev/holdout.txt", help="default data/dev/holdout.txt"
    )
    rate.add_argument("--run", help="run folder (default: the latest finished run)")
    rate.add_argument("--output-dir", default="outputs", help="where runs are (default outputs/)")
    for sub in (cut, rate):
        cli.add_debug_flag(sub)
    args = parser.parse_args(argv)
    if args.command == "split":
        return _split(args)
    return _score(args)


def _split(args) -> int:
    rows = _integer(args.rows, "--rows")  # its range depends on the file: check_rows
    seed = _integer(args.seed, "--seed", 0)
    train, out = resolve(args.train, "--train"), resolve(args.out, "--out")
    wrote = split(train, out, rows, seed)
    made = read_json(out / SPLIT_FILE)
    kept = ", ".join(f"{n} of label {y}" for y, n in made["holdout"]["labels"].items())
    what = f"{made['holdout']['rows']} rows kept aside ({kept}), {made['train']['rows']} left"
    if not wrote:
        print(f"{show_path(out)} already holds this split ({what}): nothing to do")
        return 0
    print(f"wrote {show_path(out / TRAIN_FILE)} and {show_path(out / HOLDOUT_FILE)}: {what}")
    print(f"next, the main job on the rest: {train_command(out / TRAIN_FILE)}")
    return 0


def _score(args) -> int:
    settings = Settings(output_dir=args.output_dir)
    holdout = resolve(args.holdout, "--holdout")
    if not holdout.is_file():
        raise HoldoutError(
            f"--holdout {show_path(holdout)}: not found; make it first with "
            "python -m core.analysis.holdout split --rows 2000 (or pass the holdout's path)"
        )
    if args.run:
        run_dir = predict.finished_run(settings.run_path(args.run, "--run"), settings.output_dir)
    else:
        run_dir = predict.latest_run(settings.output_dir)
        note = f"using run {show_path(run_dir)} (the latest finished; --run picks another)"
        print(note, file=sys.stderr)
    results = score(run_dir, holdout, settings.output_dir)
    print(f"{results['holdout']}, {sum(results['labels'].values())} rows: {RULE}")
    if results["texts_in_training"]:
        print(
            "holdout rows whose text the run trained on in another row (duplicates in the "
            f"source file, as across folds): {results['texts_in_training']}"
        )
    print(table(results))
    print(f"wrote {show_path(run_dir / RESULTS)}")
    return 0


if __name__ == "__main__":
    cli.run(main)
