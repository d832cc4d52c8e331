"""The run report: ``<run>/index.html``, one self-contained page a person can read or be sent.

Headline figures beside the reference method's, the per-fold table, the key figures (PNG
embedded as data URIs), wall time per step, provenance, and links to every executed notebook
and the submission, and (for a run in ``<output_dir>/runs/``) back to the runs table,
``core.runs.table``. Everything is read from the run folder, so the page renders for a partial
run too: a section whose files are not there yet says so. Rendered from
``core/runs/templates/report.html.j2`` (Jinja2, autoescaped).

    python -m core.runs.report outputs/runs/<run>      # (re)write that run's index.html
"""

from __future__ import annotations

import base64
import functools
import io
import json
import subprocess
import time
from pathlib import Path

import pandas as pd

from core.config import (
    CONFIG_FILE,
    EXTRA_STAGES,
    FOLDED_STAGES,
    MAIN_STAGES,
    ROOT,
    Settings,
    from_values,
    read_config,
)
from core.io import read_json, write_text
from core.runs.folder import default_run_dir, run_settings
from core.runs.steps import check, fold_dir, linked_steps

# The students and the distilled model's in-fold copies show only in runs that have them.
STAGES = FOLDED_STAGES
SECTIONS = ("data", "stage0", *FOLDED_STAGES)  # Settings.stage's, in a run's parameters
# The reference solution's published out-of-fold AUCs: 12-layer BERT-base, GPU, 16,000 rows.
REFERENCE_PUBLISHED = {"stage1_oof_auc": 0.9553, "stage2_oof_auc": 0.9604}
REFERENCE_PUBLISHED_LABEL = "reference method, published (BERT-base, GPU, 16,000 rows)"
# The reference method's settings: a run of them on the same data and encoder, when it has
# finished, is the measured reference beside the reported run.
REFERENCE_CONFIG = ROOT / "configs" / "reference.yaml"
TEMPLATE = "report.html.j2"


def write_report(
    run_dir: str | Path, settings: Settings | None = None, timings: dict | None = None
) -> Path:
    """Render ``<run_dir>/index.html`` from whatever the run folder holds; return its path.

    ``settings`` and ``timings`` default to the folder's ``config.yaml`` and ``timings.json``.
    """
    run_dir = Path(run_dir)
    return write_text(run_dir / "index.html", render(context(run_dir, settings, timings)))


def render(ctx: dict, template: str = TEMPLATE) -> str:
    """Render a template of ``core/runs/templates`` (the report's unless named) with ``ctx``."""
    import jinja2  # installed with nbconvert

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt name fails loudly, not as a blank cell
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _num
    return env.get_template(template).render(**ctx)


def context(run_dir: Path, settings: Settings | None = None, timings: dict | None = None) -> dict:
    """Everything the template shows, as plain values; None where a file is not there yet."""
    if settings is None and (run_dir / CONFIG_FILE).is_file():
        settings = run_settings(run_dir)
    timings = timings if timings is not None else _json(run_dir / "timings.json") or {}
    run = _json(run_dir / "run.json")
    results = _json(run_dir / "ensemble" / "results.json")
    headline = results["headline"] if results else None
    reference_dir = reference_run_dir(run_dir, settings)
    is_reference = reference_dir is None and _is_reference(run_dir, settings)
    reference = _json(reference_dir / "ensemble" / "results.json") if reference_dir else None
    reference = reference["headline"] if reference else None
    n_folds = _n_folds(run_dir, settings, run)
    stages = stages_shown(run_dir, settings)
    done = {(s, k): _fold_done(fold_dir(run_dir, s, k)) for s in stages for k in range(n_folds)}
    return {
        "name": run_dir.name,
        "runs_table": runs_table(run_dir),
        "written": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "headline": headline,
        "headline_rows": headline_rows(
            headline,
            reference,
            _json(run_dir / "distilled/done.json"),
            _json(run_dir / "holdout" / "results.json"),
        ),
        "reference_label": REFERENCE_PUBLISHED_LABEL,
        "reference_run": reference_dir.name if reference else None,
        "is_reference": is_reference,
        "stages": [(s, STAGE_TITLES[s]) for s in stages],
        "folds": fold_rows(done, n_folds, timings, headline, stages),
        "figures": figures(run_dir, done, n_folds, stages),
        "timings": timing_rows(timings),
        "reused": [label for label in linked_steps(run_dir) if label not in timings],
        "members": member_rows(run_dir, headline),
        "provenance": provenance(run_dir, run),
        "notebooks": notebook_rows(run_dir, done, timings),
        "errors_page": _exists(run_dir, "notebooks/05_errors-errors.html"),
        "errors": _json(run_dir / "errors" / "errors.json"),
        "submission": _exists(run_dir, "ensemble/submission.csv"),
        "params": [
            (s, k, v)
            for s in SECTIONS
            if s not in EXTRA_STAGES or s in settings.extra_stages
            for k, v in settings.stage(s).items()
        ]
        if settings
        else [],
    }


STAGE_TITLES = {
    "stage1": "stage 1",
    "stage2": "stage 2",
    "students": "students",
    "distill": "distilled copies",
}


def stages_shown(run_dir: Path, settings: Settings | None) -> tuple[str, ...]:
    """Stage 1 and stage 2, and the students and distilled copies in a run that has them (on,
    or folders there)."""
    if settings is not None:
        return settings.folded_stages
    return tuple(s for s in STAGES if s not in EXTRA_STAGES or (Path(run_dir) / s).is_dir())


def runs_table(run_dir: Path) -> str | None:
    """The link back to the runs table (core.runs.table) from a run in ``<output_dir>/runs/``."""
    return "../../index.html" if Path(run_dir).resolve().parent.name == "runs" else None


def reference_run_dir(run_dir: Path, settings: Settings | None) -> Path | None:
    """The folder of the reference method's run on this run's data and encoder
    (configs/reference.yaml), or None for the reference run itself or unknown settings."""
    folder = _reference_folder(settings)
    return None if folder is None or folder == Path(run_dir).resolve() else folder


def _is_reference(run_dir: Path, settings: Settings | None) -> bool:
    folder = _reference_folder(settings)
    return folder is not None and folder == Path(run_dir).resolve()


def _reference_folder(settings: Settings | None) -> Path | None:
    if settings is None or not REFERENCE_CONFIG.is_file():
        return None
    paths = {k: getattr(settings, k) for k in ("train_path", "test_path", "bert_dir", "output_dir")}
    try:
        reference = from_values({**read_config(REFERENCE_CONFIG), **paths}, "reference")
        return default_run_dir(reference)
    except (OSError, ValueError):  # inputs gone: no comparison rather than no report
        return None


def headline_rows(
    headline: dict | None,
    reference: dict | None,
    distilled: dict | None = None,
    holdout: dict | None = None,
) -> list[dict]:
    """(figure, this run, published reference, measured reference run) rows; values may be None.
    ``distilled``: the run's distilled model's summary (core.training.distill), when it has one;
    ``holdout``: its development-holdout results (core.analysis.holdout), when scored."""
    h, r = dict(headline or {}), reference or {}
    for kind, m in ((holdout or {}).get("models") or {}).items():
        h[f"holdout_{kind}"] = m.get("auc")
    if distilled:
        h["distilled_auc"] = distilled["in_fold_auc_mean"]
        h["distilled_agreement"] = distilled["test_rank_agreement"]
    published = REFERENCE_PUBLISHED
    rows = [
        # The reference's final figure is stage 2's.
        (_final_label(h), "oof_auc", published["stage2_oof_auc"]),
        ("stage 1, pooled out-of-fold AUC", "stage1_oof_auc", published["stage1_oof_auc"]),
        ("stage 2, pooled out-of-fold AUC", "stage2_oof_auc", published["stage2_oof_auc"]),
    ]
    if "final_oof_auc" in h:
        chosen = f"final candidate ({h['final']}), out-of-fold AUC as chosen on the same rows"
        rows.append((chosen, "final_oof_auc", None))
    if "students_oof_auc" in h:
        rows.append(("students, pooled out-of-fold AUC", "students_oof_auc", None))
    if "distill_oof_auc" in h:
        rows.append(("distilled in-fold copies, pooled out-of-fold AUC", "distill_oof_auc", None))
    if "served" in h:
        rows.append((_served_label(h), "served_oof_auc", None))
        if "served_nested_oof_auc" in h:
            nested = "served ensemble, nested out-of-fold AUC (chosen without each fold)"
            rows.append((nested, "served_nested_oof_auc", None))
    if "holdout_ensemble" in h:
        rows.append(("served ensemble, development holdout AUC", "holdout_ensemble", None))
    if "holdout_distilled" in h:
        record = "distilled model, development holdout AUC (its figure of record)"
        rows.append((record, "holdout_distilled", None))
    if distilled:
        rows += [
            (
                "distilled model, in-fold copies' mean AUC (an estimate: each copy taught by "
                "one stage-1 model, its epoch chosen on its fold)",
                "distilled_auc",
                None,
            ),
            (
                "distilled model, rank agreement with the ensemble on test",
                "distilled_agreement",
                None,
            ),
        ]
    rows += [
        (_f1_label(h), "f1_at_threshold", None),
        (_share_label(h, "text also in another fold"), "oof_auc_text_in_other_fold", None),
        ("out-of-fold AUC, text only in its own fold", "oof_auc_text_only_in_own_fold", None),
    ]
    return [
        {"figure": label, "run": _figure(h, key), "published": ref, "measured": _figure(r, key)}
        for label, key, ref in rows
    ]


def _final_label(h: dict) -> str:
    if "final_picks" in h:  # nested: the choice of candidate, as every fitted quantity
        return "final out-of-fold AUC, nested (candidate and weights chosen without each fold)"
    return f"final out-of-fold AUC ({h['final']})" if "final" in h else "final out-of-fold AUC"


def _served_label(h: dict) -> str:
    formula = f": {h['served_formula']}" if "served_formula" in h else ""
    return f"served ensemble ({h['served']}{formula}), its formula on the stored out-of-fold scores"


def fold_rows(
    done: dict, n_folds: int, timings: dict, headline: dict | None, stages=MAIN_STAGES
) -> list[dict]:
    """One row per fold (validation AUC, best epoch and time per stage), then the mean of the
    finished folds and the pooled out-of-fold AUC."""
    rows = []
    for k in range(n_folds):
        row = {"fold": str(k)}
        for s in stages:
            d = done[(s, k)] or {}
            row[s] = _figure(d, "val_auc")
            row[f"{s}_epoch"] = f"{d['best_epoch']} of {d['epochs_run']}" if d else None
            row[f"{s}_time"] = timings.get(f"{s}-fold{k}")
        rows.append(row)
    blank = {f"{s}_{what}": None for s in stages for what in ("epoch", "time")}
    mean = {"fold": "mean of finished folds", **blank}
    pooled = {"fold": "pooled out-of-fold", **blank}
    for s in stages:
        values = [r[s] for r in rows if r[s] is not None]
        mean[s] = sum(values) / len(values) if values else None
        pooled[s] = (headline or {}).get(f"{s}_oof_auc")
    return rows + [mean, pooled]


def _fold_done(folder: Path) -> dict | None:
    """A fold's summary when it is done and the files the report reads of it are as its step
    recorded them (a damaged one shows as not done: the next run computes it again)."""
    if check(folder, only=("done.json", "oof.csv", "history.json")) is not None:
        return None
    return _json(folder / "done.json")


def figures(run_dir: Path, done: dict, n_folds: int, stages=MAIN_STAGES) -> dict:
    """PNG data URIs of the key figures (None where their inputs are missing); learning curves
    as ``[(title, uri)]``."""
    from core.analysis import plots

    out = {"roc": None, "folds": None, "scores": None, "curves": []}
    stage0 = _json(run_dir / "stage0" / "bert" / "PRETRAIN.json")
    if stage0 and stage0.get("history"):
        title = "stage 0 (masked-LM pre-training)"
        out["curves"].append((title, curve_uri(title, json.dumps(stage0["history"]))))
    aucs = pd.DataFrame(
        [{"fold": k, "stage": s, "auc": d["val_auc"]} for (s, k), d in done.items() if d]
    )
    if len(aucs):
        out["folds"] = png_uri(plots.fold_auc_bars(aucs))
    final = run_dir / "ensemble" / "oof_final.csv"
    if final.is_file():
        oof = pd.read_csv(final)
        curves = {"final blend": (oof["label"], oof["pred"])}
        for s in stages:
            if all(done[(s, k)] for k in range(n_folds)):
                parts = [pd.read_csv(fold_dir(run_dir, s, k) / "oof.csv") for k in range(n_folds)]
                stage = pd.concat(parts)
                curves[s] = (stage["label"], stage["pred"])
        out["roc"] = png_uri(plots.roc_curves(curves, "ROC of the out-of-fold predictions"))
        out["scores"] = png_uri(
            plots.score_hist(
                oof["label"], oof["pred"], "Out-of-fold scores of the final blend by label"
            )
        )
    for s in stages:
        for k in range(n_folds):
            history = fold_dir(run_dir, s, k) / "history.json"
            if done.get((s, k)) and history.is_file():
                title = f"{STAGE_TITLES[s]}, fold {k}"
                out["curves"].append((title, curve_uri(title, history.read_text("utf-8"))))
    return out


@functools.lru_cache(maxsize=256)
def curve_uri(title: str, history: str) -> str:
    """A learning curve (``history``: its JSON text) as a PNG URI, drawn once per content: the
    main job rewrites the report after every step, and a finished step's curve never changes."""
    from core.analysis import plots

    return png_uri(plots.learning_curves(json.loads(history), title))


def member_rows(run_dir: Path, headline: dict | None) -> list[dict]:
    """The runs a blend holds (this one first), each linked to its own report."""
    rows = []
    for m in (headline or {}).get("members", []):
        report = Path(run_dir).parent / m["run"] / "index.html"
        link = f"../{m['run']}/index.html" if m["run"] != Path(run_dir).name else None
        rows.append({**m, "link": link if link is None or report.is_file() else None})
    return rows


def timing_rows(timings: dict) -> list[tuple[str, float]]:
    """(step, seconds) in the order the steps ran, then the total."""
    rows = [(label, float(seconds)) for label, seconds in timings.items()]
    return rows + [("total", sum(s for _, s in rows))] if rows else []


def provenance(run_dir: Path, run: dict | None) -> dict:
    """What the run was made from: data and weights hashes, package versions, the code's commit."""
    stage0 = _json(run_dir / "stage0" / "bert" / "PRETRAIN.json")
    files = []
    if run:
        files.append(("training data", run["train_path"], run["train_sha256"]))
        files.append(("encoder fine-tuned (weights)", run["bert_dir"], run["bert_sha256"]))
    if stage0:
        for name, record in stage0.get("data_files", {}).items():
            files.append((f"stage 0 {name} data", record.get("path", ""), record.get("sha256")))
        files.append(
            (
                "stage 0 started from (weights)",
                stage0.get("source", ""),
                stage0.get("source_weights_sha256"),
            )
        )
    packages = dict((run or {}).get("packages", {}))
    if run and run.get("python"):
        packages = {"python": run["python"], **packages}
    return {"files": files, "packages": packages, "commit": git_commit()}


def git_commit() -> str | None:
    """The repository's commit (with "+ local changes" when the tree differs), or None."""
    try:
        head = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{head} + local changes" if dirty else head


def notebook_rows(run_dir: Path, done: dict, timings: dict) -> list[dict]:
    """Every executed notebook of ``<run>/notebooks``: step, links, validation AUC, time."""
    rows = []
    for nb in sorted((run_dir / "notebooks").glob("[!.]*.ipynb")):  # not in-flight temporaries
        label = nb.stem.split("-", 1)[-1]
        stage, _, fold = label.partition("-fold")
        d = done.get((stage, int(fold))) if fold.isdigit() else None
        html = nb.with_suffix(".html")
        rows.append(
            {
                "step": label,
                "html": f"notebooks/{html.name}" if html.is_file() else None,
                "ipynb": f"notebooks/{nb.name}",
                "auc": _figure(d, "val_auc"),
                "seconds": timings.get(label),
            }
        )
    return rows


def png_uri(fig, dpi: int = 90) -> str:
    """A matplotlib figure as a ``data:image/png;base64`` URI (self-contained pages)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# -- helpers ---------------------------------------------------------------------------------------


def _json(path: Path):
    return read_json(path) if path.is_file() else None


def _figure(record: dict | None, key: str):
    """``record[key]``: None while not there (``not yet``), NaN where it was written as null
    (``n/a``: undefined, e.g. the AUC of rows of one label; strict JSON has no NaN)."""
    if not record or key not in record:
        return None
    return float("nan") if record[key] is None else record[key]


def _exists(run_dir: Path, name: str) -> str | None:
    return name if (run_dir / name).is_file() else None


def _n_folds(run_dir: Path, settings: Settings | None, run: dict | None) -> int:
    if settings:
        return settings.n_folds
    if run:
        return int(run["n_folds"])
    return len(list(run_dir.glob("stage1/fold*")))  # a run whose stage 1 has not recorded it yet


def _f1_label(h: dict) -> str:
    threshold = h.get("threshold")
    return "F1 at a nested threshold" + (f" (for the test: {threshold:.3f})" if threshold else "")


def _share_label(h: dict, what: str) -> str:
    share = h.get("share_text_in_other_fold")
    return f"out-of-fold AUC, {what}" + (f" ({share:.0%} of rows)" if share is not None else "")


def _num(value, digits: int = 4) -> str:
    """Jinja filter: a float to ``digits`` decimals, ``not yet`` for None."""
    if value is None or value != value:  # None or NaN
        return "not yet" if value is None else "n/a"
    return f"{value:.{digits}f}"


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True, timeout=10
    ).stdout.strip()


def main(argv=None) -> int:
    import argparse

    from core.config import ConfigError, show

    parser = argparse.ArgumentParser(
        prog="python -m core.runs.report", description="Write each run folder's report, index.html."
    )
    parser.add_argument(
        "runs", nargs="+", metavar="RUN_DIR", help="run folders, e.g. outputs/runs/run-…"
    )
    for folder in map(Path, parser.parse_args(argv).runs):
        if not (folder / "run.json").is_file() and not (folder / CONFIG_FILE).is_file():
            raise ConfigError(
                f"{show(folder)}: expected a run folder (with run.json or {CONFIG_FILE}), e.g. "
                "outputs/runs/run-0123456789"
            )
        print(write_report(folder))
    return 0


if __name__ == "__main__":
    from core import cli

    cli.run(main)
