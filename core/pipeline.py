"""Run the notebook suite with papermill: stage 0 (within-task MLM) -> EDA -> stage 1 per fold ->
stage 2 per fold -> ensemble -> error analysis.

    python -m core.pipeline                      # the default model on data/
    python -m core.pipeline --set stage1.lr=3e-5 --set n_folds=3 --test-path other.txt

The run folder's name is a hash of every parameter and of the data and weights files, so a changed
parameter or data file starts a new run, and rerunning the same command resumes: a step whose
outputs are complete is skipped. Executed notebooks and their HTML go to ``<run>/notebooks/``;
``<run>/index.html`` links them with the headline figures.
"""

from __future__ import annotations

import argparse
import ast
import copy
import hashlib
import json
import logging
import shutil
import sys
import time
from pathlib import Path

from core.config import NOTEBOOKS, PRETRAIN_FILE, ROOT, Settings, resolve
from core.data import file_sha256
from core.io import atomic_path, read_json, write_json, write_text

# Shared by every notebook; prefixed keys (stage1.lr) go to one notebook only.
DEFAULTS = {
    "common": {
        "train_path": "data/train_shuffle.txt",
        "test_path": "data/test_handout.txt",
        "bert_dir": "pretrained/m3e-small",
        "maxlen": 20,
        "n_folds": 5,
        "seed": 2020,
        "train_seed": None,
    },
    # Within-task MLM on the train + test sentences before fine-tuning (Sun et al. 2019); its
    # encoder, written to <run>/stage0/bert, is the one stages 1 and 2 start from. epochs=0: off.
    "stage0": {"epochs": 3, "lr": 1e-4, "batch_size": 32, "mask_rate": 0.15},
    "eda": {},
    # Larger batches and a decaying rate than the seed's (16, constant 1e-5): see
    # docs/experiments.md for the runs behind these.
    "stage1": {
        "epochs": 3,
        "patience": 1,
        "batch_size": 64,  # same OOF AUC as 32 at lr 1e-4, 13-29 % more samples/s
        "lr": 1.4e-4,
        "schedule": "cosine",
        "warmup": 0.06,
        "layer_decay": 1.0,
        "jit_compile": True,
        "strategy": "default",
    },
    # Stage 2's loss: the pairwise AUC surrogate beat soft-F1 on OOF AUC (docs/experiments.md).
    "stage2": {"loss": "pairwise_auc", "lr": 1e-4, "epochs": 4, "patience": 1, "batch_size": 16},
    "ensemble": {},
}
# Which common parameters each notebook takes.
COMMON_FOR = {
    "stage0": ("train_path", "test_path", "bert_dir", "maxlen"),
    "eda": ("train_path", "test_path", "bert_dir", "maxlen"),
    "stage1": tuple(DEFAULTS["common"]),
    "stage2": tuple(DEFAULTS["common"]),
    "ensemble": ("train_path", "test_path", "n_folds"),
}

log = logging.getLogger("pipeline")


def parse_sets(pairs: list[str]) -> dict:
    """``["stage1.lr=3e-5", "n_folds=3"]`` -> the DEFAULTS shape with those values replaced."""
    params = copy.deepcopy(DEFAULTS)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        section, _, name = key.rpartition(".")
        section = section or "common"
        if not sep or section not in params or (name not in params[section]):
            known = [k for k in DEFAULTS["common"]] + [
                f"{s}.{k}" for s in ("stage0", "stage1", "stage2") for k in DEFAULTS[s]
            ]
            raise SystemExit(f"--set {pair!r}: expected NAME=VALUE with NAME one of {known}")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw  # a bare word: a string
        params[section][name] = value
    return params


def run_name(params: dict) -> str:
    """Hash of the parameters and of the files they name: same inputs, same folder."""
    common = params["common"]
    settings = Settings(**{k: common[k] for k in ("train_path", "test_path", "bert_dir")})
    from core.run import weights_sha256  # local: hashing helpers, no TensorFlow

    identity = {
        "params": params,
        "train": file_sha256(settings.train_path),
        "test": file_sha256(settings.test_path),
        "bert": weights_sha256(settings.bert_dir),
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return f"run-{digest[:10]}"


def uses_stage0(params: dict) -> bool:
    epochs = params["stage0"]["epochs"]
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise SystemExit(f"--set stage0.epochs={epochs!r}: expected an integer >= 0 (0: off)")
    return epochs > 0


def plan(params: dict, run_dir: Path, output_dir: Path) -> list[tuple[str, str, dict, Path]]:
    """(label, notebook, papermill parameters, the file whose presence marks the step done)."""
    common, n_folds = params["common"], int(params["common"]["n_folds"])
    rel_run = str(run_dir.relative_to(ROOT)) if run_dir.is_relative_to(ROOT) else str(run_dir)

    def args(section, **extra):
        base = {k: common[k] for k in COMMON_FOR[section]}
        where = {"run_dir": rel_run}
        if section != "eda":  # the EDA notebook writes only its own run_dir
            where["output_dir"] = str(output_dir)
        return {**base, **params[section], **where, **extra}

    steps, encoder = [], {}
    if uses_stage0(params):
        bert = f"{rel_run}/stage0/bert"
        # A seed ensemble (train_seed) also draws its own masks, so its encoders differ too.
        seed = common["seed"] if common["train_seed"] is None else common["train_seed"]
        stage0 = {k: common[k] for k in COMMON_FOR["stage0"]}
        stage0.update(params["stage0"], seed=seed, out_dir=bert, output_dir=str(output_dir))
        steps.append(("stage0", "stage0", stage0, run_dir / "stage0" / "bert" / PRETRAIN_FILE))
        encoder = {"bert_dir": bert}  # what stages 1 and 2 fine-tune
    eda = args("eda", run_dir=f"{rel_run}/eda")
    steps.append(("eda", "eda", eda, run_dir / "eda" / "eda.json"))
    for stage in ("stage1", "stage2"):
        for fold in range(n_folds):
            done = run_dir / stage / f"fold{fold}" / "done.json"
            steps.append((f"{stage}-fold{fold}", stage, args(stage, fold=fold, **encoder), done))
    steps.append(("ensemble", "ensemble", args("ensemble"), run_dir / "ensemble" / "results.json"))
    # Error analysis of the finished ensemble; no live text box in the executed notebook.
    errors = {k: common[k] for k in COMMON_FOR["ensemble"]}
    errors.update(run_dir=rel_run, output_dir=str(output_dir), interactive=False)
    steps.append(("errors", "errors", errors, run_dir / "errors" / "errors.json"))
    return steps


def execute(label: str, section: str, parameters: dict, run_dir: Path) -> Path:
    """Run one notebook with papermill (kernel cwd = repo root), then render it to HTML."""
    import papermill

    out = run_dir / "notebooks" / f"{Path(NOTEBOOKS[section]).stem}-{label}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.ipynb")
    try:
        papermill.execute_notebook(str(ROOT / NOTEBOOKS[section]), str(tmp), parameters=parameters,
                                   cwd=str(ROOT), log_output=True, progress_bar=False)  # fmt: skip
    finally:
        if tmp.exists():  # keep a failed notebook too, rendered: it shows where it stopped
            tmp.replace(out)
            render_html(out)
    return out


def render_html(notebook: Path) -> Path:
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(notebook, as_version=4))
    return write_text(notebook.with_suffix(".html"), body)


def write_index(run_dir: Path, params: dict, timings: dict) -> Path:
    """The run report ``<run>/index.html`` (core.report): figures, notebooks, provenance."""
    from core.report import write_report

    return write_report(run_dir, params, timings)


def check_same_params(path: Path, params: dict) -> None:
    """Stop if the run folder of ``path`` was started with other parameters: one folder holds one
    configuration (only an explicit ``--run-dir`` can point at another's folder)."""
    saved = read_json(path)
    flat = lambda p: {f"{s}.{k}": v for s, values in p.items() for k, v in values.items()}  # noqa: E731
    _stop_if_changed(path.parent, "was started with other parameters", flat(saved), flat(params))


def check_stage0(record_path: Path, parameters: dict) -> None:
    """Stop if a finished stage-0 folder was made from other weights or data than ``parameters``
    name (a reused ``--run-dir``; its parameters are those of pipeline.json, checked before)."""
    from core.run import weights_sha256  # local: hashing helpers, no TensorFlow

    record = read_json(record_path)
    made = {"bert_dir weights": record["source_weights_sha256"]}
    wanted = {"bert_dir weights": weights_sha256(resolve(parameters["bert_dir"]))}
    for name in ("train", "test"):
        made[f"{name}_path data"] = record["data_files"].get(name, {}).get("sha256")
        wanted[f"{name}_path data"] = file_sha256(resolve(parameters[f"{name}_path"]))
    _stop_if_changed(record_path.parent, "was made from other inputs", made, wanted)


def _stop_if_changed(folder: Path, what: str, saved: dict, wanted: dict) -> None:
    changed = [f"{k}: was {saved.get(k, '(none)')!r}, now {v!r}" for k, v in wanted.items()
               if saved.get(k, "(none)") != v]  # fmt: skip
    if changed:
        raise SystemExit(
            f"{folder} {what} ({'; '.join(changed)}); results must not mix. Use a new --run-dir "
            "(or none: the default folder name follows the parameters)"
        )


def reuse_stage1(source: Path, run_dir: Path, params: dict) -> None:
    """Copy a finished run's stage 1 into ``run_dir``, to try stage-2 or ensemble variants cheaply.

    Allowed only when the source ran with the same common and stage-1 parameters; each fold's
    files are copied atomically with ``done.json`` last, so a copy interrupted midway resumes.
    """
    theirs = read_json(source / "pipeline.json")
    theirs.setdefault("stage0", {"epochs": 0})  # runs from before stage 0 had none
    for section in ("common", "stage0", "stage1"):
        mine, other = params[section], theirs[section]
        if section == "stage0" and not (uses_stage0(params) or uses_stage0(theirs)):
            continue  # both off: the other stage-0 values do not matter
        if other != mine:
            raise SystemExit(
                f"--stage1-from {source}: its {section} parameters {other} differ from "
                f"this run's {mine}; stage 1 can only be reused unchanged"
            )
    encoder = source / "stage0" / "bert"  # stage 2 reads its config and vocabulary
    names = [f.relative_to(source) for f in sorted(encoder.iterdir())] if encoder.is_dir() else []
    # PRETRAIN.json last: it marks the folder complete.
    names.sort(key=lambda name: name.name == PRETRAIN_FILE)
    for name in [*names, "run.json", "folds.csv", "stage1/params.json"]:
        if not (run_dir / name).exists():
            _copy(source / name, run_dir / name)
    for done in sorted(source.glob("stage1/fold*/done.json")):
        target = run_dir / done.parent.relative_to(source)
        if (target / "done.json").exists():
            continue
        for f in sorted(done.parent.iterdir(), key=lambda f: f.name == "done.json"):
            if not f.name.startswith("."):
                _copy(f, target / f.name)


def _copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def run_pipeline(
    params: dict,
    output_dir: str | Path = "outputs",
    run_dir: Path | None = None,
    only: str | None = None,
    folds: list[int] | None = None,
    stage1_from: Path | None = None,
) -> Path:
    """Execute every step not yet complete; return the run folder.

    ``only`` and ``folds`` pick a part of the run (e.g. stage1 fold 3), so folds can run as
    separate jobs, on separate machines sharing ``outputs/``, and be ensembled afterwards.
    """
    settings = Settings(output_dir=output_dir)
    run_dir = settings.run_path(run_dir or Path(settings.output_dir) / "runs" / run_name(params))
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / "pipeline.json").exists():  # a resumed run (or a --run-dir used before)
        check_same_params(run_dir / "pipeline.json", params)
    write_json(run_dir / "pipeline.json", params)
    if stage1_from is not None:
        reuse_stage1(settings.run_path(stage1_from), run_dir, params)
    timings_path = run_dir / "timings.json"
    timings = read_json(timings_path) if timings_path.exists() else {}
    planned = plan(params, run_dir, settings.output_dir)
    steps = [
        s
        for s in planned
        if (only is None or s[1] == only)
        and (folds is None or "-fold" not in s[0] or int(s[0].rsplit("fold", 1)[1]) in folds)
    ]
    if any(s[1] in ("stage1", "stage2") for s in steps):
        # Their encoder: a part of a run (--only stage1 --folds 3) makes it first if need be.
        steps = [s for s in planned if s[1] == "stage0"] + [s for s in steps if s[1] != "stage0"]
    for i, (label, section, parameters, done) in enumerate(steps, 1):
        if section == "stage0" and done.exists():
            check_stage0(done, parameters)
        if done.exists():
            log.info("[%d/%d] %s: complete, skipped", i, len(steps), label)
            continue
        log.info("[%d/%d] %s: %s", i, len(steps), label, NOTEBOOKS[section])
        start = time.time()
        execute(label, section, parameters, run_dir)
        timings[label] = round(time.time() - start, 1)
        write_json(timings_path, timings)
        write_index(run_dir, params, timings)
    write_index(run_dir, params, timings)
    return run_dir


class _QuietPapermill(logging.Filter):
    # papermill logs two lines around every cell; the cells' own output is what shows progress.
    def filter(self, record):
        msg = record.getMessage()
        return not (msg.startswith(("Executing Cell", "Ending Cell", "Executing notebook",
                                    "Input Notebook", "Output Notebook", "Working")))  # fmt: skip


def setup_logging() -> None:
    """Show the steps and the notebooks' own output (papermill logs cell stdout at INFO)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("papermill").addFilter(_QuietPapermill())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a parameter, e.g. stage1.lr=3e-5, n_folds=3, test_path=x.txt",
    )
    parser.add_argument(
        "--train-path", help="labelled training file (default data/train_shuffle.txt)"
    )
    parser.add_argument(
        "--test-path", help="unlabelled file to score (default data/test_handout.txt)"
    )
    parser.add_argument("--output-dir", default="outputs", help="where runs go (default outputs/)")
    parser.add_argument("--run-dir", help="use this run folder instead of the hashed name")
    parser.add_argument("--only", choices=sorted(NOTEBOOKS), help="run only this step")
    parser.add_argument("--folds", help="comma-separated folds to run (default: all)")
    parser.add_argument(
        "--stage1-from", help="reuse stage 1 of this finished run (same parameters)"
    )
    args = parser.parse_args(argv)
    setup_logging()
    sets = list(args.set)
    if args.train_path:
        sets.append(f"train_path={args.train_path!r}")
    if args.test_path:
        sets.append(f"test_path={args.test_path!r}")
    params = parse_sets(sets)
    start = time.time()
    folds = [int(f) for f in args.folds.split(",")] if args.folds else None
    run_dir = run_pipeline(
        params,
        args.output_dir,
        Path(args.run_dir) if args.run_dir else None,
        args.only,
        folds,
        Path(args.stage1_from) if args.stage1_from else None,
    )
    print(f"\nfinished in {time.time() - start:.0f} s; run folder {run_dir}")
    results = run_dir / "ensemble" / "results.json"
    if results.exists():
        print(json.dumps(read_json(results).get("headline", {}), indent=2))
    submission = run_dir / "ensemble" / "submission.csv"
    print(f"review: {run_dir / 'index.html'}")
    # A part of a run (--only, --folds) writes no submission: do not point at one that is not there.
    if submission.exists():
        print(f"submission: {submission}")
    else:
        print("submission: none yet (the same command without --only/--folds finishes the run)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
