"""The run report (core.runs.report) on hand-made run folders: partial runs, reference figures, and
the packaging of its template. The report of a real (tiny) run is checked in test_pipeline.py."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile

import pytest
from browser import broken_refs

from core.config import ROOT, Settings
from core.io import write_json
from core.runs.folder import record_settings
from core.runs.report import REFERENCE_PUBLISHED, main, reference_run_dir, write_report
from core.runs.table import write_table

SETTINGS = {"n_folds": 2, "seed": 2020, "stage1_lr": 1e-4}


def sections(page: str) -> dict[str, str]:
    """The text of each ``<h2 id=...>`` section, tags removed."""
    parts = re.split(r'<h2 id="([^"]+)">', page)
    return {
        name: re.sub(r"<[^>]+>", " ", body)
        for name, body in zip(parts[1::2], parts[2::2], strict=True)
    }


def finish_fold(run_dir, stage, fold, auc):
    d = run_dir / stage / f"fold{fold}"
    write_json(d / "history.json", {"loss": [0.6, 0.5], "val_auc": [auc - 0.01, auc]})
    write_json(
        d / "done.json",
        {"stage": stage, "fold": fold, "val_auc": auc, "best_epoch": 2, "epochs_run": 2},
    )


def test_an_empty_run_folder_says_not_yet_everywhere(tmp_path):
    run_dir = tmp_path / "runs" / "fresh"
    run_dir.mkdir(parents=True)
    page = write_report(run_dir).read_text(encoding="utf-8")
    assert "partial: the ensemble has not run yet" in page
    for name, text in sections(page).items():
        assert "not yet" in text or "not recorded" in text, name
    assert "<img" not in page and 'href="../../index.html"' in page  # the runs table
    write_table(tmp_path)  # which python -m core.runs or the main job writes
    assert broken_refs(run_dir / "index.html") == []


def test_a_partial_run_shows_its_finished_folds(tmp_path):
    run_dir = tmp_path / "runs" / "partial"
    record_settings(run_dir, Settings(**SETTINGS, output_dir=tmp_path))
    write_json(run_dir / "timings.json", {"eda": 12.0, "stage1-fold0": 95.0})
    finish_fold(run_dir, "stage1", 0, 0.9123)
    page = write_report(run_dir).read_text(encoding="utf-8")
    s = sections(page)
    assert "0.9123" in s["folds"] and "2 of 2" in s["folds"] and "95 s" in s["folds"]
    assert "not yet" in s["folds"]  # fold 1 and stage 2
    assert s["headline"].count("not yet") == 6  # every figure of this run, none of the reference
    assert "0.9553" in s["headline"] and "0.9604" in s["headline"]
    # Per-fold bars and one learning curve; no ROC or score histogram without the ensemble.
    assert page.count('src="data:image/png;base64,') == 2
    assert "ROC of the pooled out-of-fold predictions: not yet" in page
    assert "107" in s["timings"]  # the total
    assert "stage1" in s["parameters"] and "0.0001" in s["parameters"]
    assert "pairwise_auc" in s["parameters"]  # every setting, defaults included
    write_table(tmp_path)
    assert broken_refs(run_dir / "index.html") == []


def test_a_rewrite_draws_only_the_learning_curves_that_changed(tmp_path, monkeypatch):
    """The main job rewrites the report after every step: a finished fold's curve is drawn once,
    a curve whose history changed is drawn again, and the page is the same as a fresh draw."""
    from core.analysis import plots
    from core.runs import report

    drawn = []
    draw = plots.learning_curves
    monkeypatch.setattr(plots, "learning_curves", lambda h, t: drawn.append(t) or draw(h, t))
    # The page stamps the time it was written; a second's tick between two writes is not a change.
    monkeypatch.setattr(report.time, "strftime", lambda *a: "2026-01-01 00:00:00 UTC")
    report.curve_uri.cache_clear()
    run_dir = tmp_path / "runs" / "partial"
    record_settings(run_dir, Settings(**SETTINGS, output_dir=tmp_path))
    finish_fold(run_dir, "stage1", 0, 0.9123)
    first = write_report(run_dir).read_text(encoding="utf-8")
    finish_fold(run_dir, "stage1", 1, 0.9001)
    write_report(run_dir)
    assert drawn == ["stage 1, fold 0", "stage 1, fold 1"]
    finish_fold(run_dir, "stage1", 0, 0.9500)  # fold 0 again, another history
    again = write_report(run_dir).read_text(encoding="utf-8")
    assert drawn[2:] == ["stage 1, fold 0"]
    report.curve_uri.cache_clear()
    assert write_report(run_dir).read_text(encoding="utf-8") == again  # as drawn afresh
    assert again != first


def test_headline_beside_the_published_and_the_measured_reference(tmp_path):
    runs = tmp_path / "runs"
    headline = {
        "final": "stage1 fold mean",
        "oof_auc": 0.9636,
        "stage1_oof_auc": 0.9636,
        "stage2_oof_auc": 0.9631,
        "f1_at_threshold": 0.8649,
        "threshold": 0.41,
    }
    write_json(runs / "mine" / "ensemble" / "results.json", {"headline": headline})
    settings = Settings(output_dir=tmp_path)  # the default method, on the default data
    record_settings(runs / "mine", settings)
    page = write_report(runs / "mine").read_text(encoding="utf-8")
    assert "No measured reference run" in page
    # The reference method's run on the same data and encoder: configs/reference.yaml's folder.
    reference = reference_run_dir(runs / "mine", settings)
    assert reference.parent == runs and reference.name.startswith("run-")
    write_json(
        reference / "ensemble" / "results.json",
        {"headline": {**headline, "oof_auc": 0.9512, "stage1_oof_auc": 0.9498}},
    )
    s = sections(write_report(runs / "mine").read_text(encoding="utf-8"))["headline"]
    row = re.search(r"final out-of-fold AUC \(stage1 fold mean\)([^\n]*\n){4}", s).group(0)
    assert re.findall(r"\d\.\d{4}", row) == [
        "0.9636",
        f"{REFERENCE_PUBLISHED['stage2_oof_auc']}",
        "0.9512",
    ]
    assert "F1 at a nested threshold (for the test: 0.410)" in s and "0.8649" in s
    # The reference run's own report does not compare it with itself.
    record_settings(
        reference,
        Settings(
            output_dir=tmp_path,
            stage0_epochs=0,
            stage1_batch_size=16,
            stage1_lr=1e-5,
            stage1_schedule="constant",
            stage1_warmup=0.0,
            stage2_loss="soft_f1",
            stage2_lr=1e-7,
            stage2_epochs=3,
        ),
    )
    assert reference_run_dir(reference, None) is None
    own = write_report(reference).read_text("utf-8")
    assert "No measured reference run" not in own and "This run is the reference" in own


def test_text_is_escaped(tmp_path):
    run_dir = tmp_path / "runs" / "x"
    record_settings(run_dir, Settings(n_folds=2, train_path="<b>x</b>", output_dir=tmp_path))
    page = write_report(run_dir).read_text(encoding="utf-8")
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page


def test_command_line(tmp_path, capsys):
    run_dir = tmp_path / "runs" / "cli"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("n_folds: 3\n", encoding="utf-8")  # a run, begun
    assert main([str(run_dir)]) == 0 and (run_dir / "index.html").is_file()
    with pytest.raises(SystemExit) as usage:  # argparse: no run folder given
        main([])
    assert usage.value.code == 2


@pytest.mark.slow
def test_the_wheel_ships_the_template(tmp_path):
    """pyproject's package-data puts core/runs/templates/*.j2 into the built package."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "core", src / "core", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path / "dist")]
    done = subprocess.run([*wheel, str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    [wheel] = (tmp_path / "dist").glob("*.whl")
    assert "core/runs/templates/report.html.j2" in zipfile.ZipFile(wheel).namelist()
