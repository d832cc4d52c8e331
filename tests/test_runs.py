"""The runs table and the comparison (core.runs.table).

Most tests build run folders by hand, with the step store's real keys (``core.runs.steps``), so two
runs that differ only in stage 2 share stage 0, the EDA and stage 1 as real runs would. The slow
test makes two real tiny runs with the main job and checks the command and the pages on them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import browser
import pytest
from tiny_run import subprocess_env

from core.config import CONFIG_FILE, ROOT, ConfigError, Settings
from core.io import write_csv, write_json
from core.runs import catalog, commands, compare, steps, table
from core.runs.folder import record_settings
from core.runs.report import write_report

N_FOLDS = 2
ROWS = re.compile(r"^(run-\S+)\s+(finished|partial)", re.M)


@pytest.fixture
def inputs(tmp_path, tiny_bert_dir) -> dict:
    """Tiny train and test files and a BERT folder: what a run's step keys hash."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.txt").write_text("1\t好吃\n\n0\t一般\n\n", encoding="utf-8")
    (data / "test.txt").write_text("不错\n\n", encoding="utf-8")
    return {
        "train_path": data / "train.txt",
        "test_path": data / "test.txt",
        "bert_dir": tiny_bert_dir,
        "n_folds": N_FOLDS,
    }


@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path / "outputs"


def fake_run(out: Path, name: str, inputs: dict, done=(), headline=None, timings=None, **changes):
    """A run folder as the main job leaves it: ``config.yaml``, links to stored steps (``done``:
    the labels of the finished ones, each computed here unless already in the store), and with a
    ``headline`` the ensemble's results and fold table. A fold's AUC is 0.9 + fold/100 + 0.05 in
    stage 2 + 0.001 * stage2_lr * 1000, so runs differing in stage 2 differ there only."""
    settings = Settings(**inputs, **changes, output_dir=out)
    run_dir = out / "runs" / name
    record_settings(run_dir, settings)
    for step in steps.run_steps(settings):
        if step.label not in done:
            continue
        if not step.done():
            write_json(step.dir / steps.KEY_FILE, steps.recipe(settings, step.section, step.fold))
            auc = fold_auc(settings, step.section, step.fold)
            write_json(step.marker, {"val_auc": auc, "best_epoch": 1, "epochs_run": 1})
        steps.link(run_dir, step)
    if timings is not None:
        write_json(run_dir / "timings.json", timings)
    if headline is not None:
        write_json(run_dir / "ensemble" / "results.json", {"headline": headline, "candidates": []})
        folds = [
            {"fold": str(k), **{s: fold_auc(settings, s, k) for s in compare.STAGES}}
            for k in range(settings.n_folds)
        ]
        folds += [
            {"fold": "mean", "stage1": 0.9, "stage2": 0.9},
            {
                "fold": "oof",
                "stage1": headline["stage1_oof_auc"],
                "stage2": headline["stage2_oof_auc"],
            },
        ]
        import pandas as pd

        write_csv(run_dir / "ensemble" / "fold_auc.csv", pd.DataFrame(folds))
    return run_dir


def fold_auc(settings: Settings, section: str, fold: int | None) -> float | None:
    if fold is None:
        return None
    return 0.9 + fold / 100 + (0.05 + settings.stage2_lr if section == "stage2" else 0)


def headline(final: float, stage1: float, stage2: float) -> dict:
    return {
        "final": "stage1 fold mean",
        "oof_auc": final,
        "stage1_oof_auc": stage1,
        "stage2_oof_auc": stage2,
    }


ALL = ("stage0", "eda", "stage1-fold0", "stage1-fold1", "stage2-fold0", "stage2-fold1")


@pytest.fixture
def three(out, inputs) -> dict[str, Path]:
    """A finished run, a finished run of another stage 2 learning rate that reused its stage 0,
    EDA and stage 1, and an older partial run (stage 0 off) with two of its steps done."""
    first = fake_run(
        out,
        "run-first",
        inputs,
        ALL,
        headline(0.9512, 0.9502, 0.9492),
        {**dict.fromkeys(ALL, 60.0), "ensemble": 5.0, "errors": 5.0},
    )
    second = fake_run(
        out,
        "run-second",
        inputs,
        ALL,
        headline(0.9634, 0.9633, 0.9632),
        {"stage2-fold0": 50.0, "stage2-fold1": 50.0, "ensemble": 4.0},
        stage2_lr=1e-3,
    )
    partial = fake_run(
        out, "run-partial", inputs, ("eda", "stage1-fold0"), None, {"eda": 2.0}, stage0_epochs=0
    )
    old = time.time() - 3600
    os.utime(partial, (old, old))
    return {"first": first, "second": second, "partial": partial}


# -- the table ------------------------------------------------------------------------------------


def test_table_orders_runs_and_shows_status_figures_settings_and_time(out, three, capsys):
    assert commands.main(["--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert ROWS.findall(printed) == [
        ("run-second", "finished"),  # the best final OOF AUC first
        ("run-first", "finished"),
        ("run-partial", "partial"),  # then unfinished runs
    ]
    lines = {line.split()[0]: line for line in printed.splitlines() if line.startswith("run-")}
    # final, stage 1, stage 2, students and distilled copies ("-": a run without them), wall
    # time, reused steps
    assert re.search(
        r"finished\s+0\.9634\s+0\.9633\s+0\.9632\s+-\s+-\s+1\.7 min\s+4\s", lines["run-second"]
    )
    assert re.search(
        r"finished\s+0\.9512\s+0\.9502\s+0\.9492\s+-\s+-\s+6\.2 min\s+0\s", lines["run-first"]
    )
    # Stage 0 off: EDA, two folds of each stage, ensemble, errors; EDA and one fold done.
    assert "partial: 2 of 7 steps  -       -" in lines["run-partial"]
    assert lines["run-second"].endswith("stage2_lr=0.001") and "output_dir" not in printed
    assert "stage0_epochs=0" in lines["run-partial"] and "stage2_lr" not in lines["run-first"]
    assert f"train_path={inputs_path(three)}" in lines["run-first"]  # not a default: shown
    header = printed.splitlines()[0]
    assert header.startswith("3 runs under ") and "best final OOF AUC first" in header
    assert printed.rstrip().endswith(f"page: {out / 'index.html'}")


def inputs_path(three) -> Path:
    return three["first"].parents[2] / "data" / "train.txt"


def test_a_run_whose_inputs_moved_counts_the_steps_it_has(out, three):
    (inputs_path(three)).unlink()
    [partial] = [r for r in catalog.collect(out) if r.name == "run-partial"]
    assert partial.status == "partial: 2 steps present"


def test_unreadable_or_missing_config_still_lists_the_run(out, three):
    (three["first"] / CONFIG_FILE).write_text("stage1_lrr: 1\n", encoding="utf-8")
    (out / "runs" / "run-empty").mkdir()
    found = {r.name: r for r in catalog.collect(out)}
    assert found["run-first"].finished and found["run-first"].final == 0.9512
    assert found["run-first"].changed[CONFIG_FILE].startswith("unreadable (")
    assert found["run-empty"].status == "partial: 0 steps present"
    assert found["run-empty"].changed == {CONFIG_FILE: "missing"}


def test_a_seed_ensemble_says_how_many_runs_it_blends(out, inputs):
    members = [{"run": f"run-{i}", "train_seed": i} for i in (None, 1, 2)]
    fake_run(out, "run-blend", inputs, (), {**headline(0.97, 0.96, 0.95), "members": members})
    [blend] = catalog.collect(out)
    assert blend.status == "finished, 3 seeds" and blend.final == 0.97


def test_students_and_distilled_copies_have_their_own_columns(out, inputs, three, capsys):
    extras = {"students_oof_auc": 0.9641, "distill_oof_auc": 0.9652}
    fake_run(out, "run-extra", inputs, (), {**headline(0.9655, 0.9633, 0.9632), **extras})
    assert commands.main(["--output-dir", str(out), "--compare", "run-extra", "run-second"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^students OOF AUC\s+0\.9641\s+-$", printed, re.M)
    assert re.search(r"^distilled copies OOF AUC\s+0\.9652\s+-$", printed, re.M)
    assert commands.main(["--output-dir", str(out)]) == 0
    [row] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("run-extra")]
    assert re.search(r"finished\s+0\.9655\s+0\.9633\s+0\.9632\s+0\.9641\s+0\.9652\s", row)
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "<th>students AUC</th><th>distilled copies AUC</th>" in html
    assert re.search(r'data-v="0\.9641">0\.9641</td><td class="n" data-v="0\.9652">', html)


def test_no_runs_yet(out, capsys):
    assert commands.main(["--output-dir", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"no runs under {out / 'runs'} yet")
    assert "No runs yet" in (out / "index.html").read_text(encoding="utf-8")


def test_page_links_each_report_and_each_report_links_back(out, three):
    write_report(three["first"])  # a report of a run in outputs/runs links the table
    page = table.write_table(out)
    html = page.read_text(encoding="utf-8")
    assert '<a href="runs/run-first/index.html">run-first</a>' in html
    assert '<td class="name" data-v="run-second">run-second</td>' in html  # no report: no dead link
    cells = re.findall(r'<td class="n" data-v="([^"]*)"', html)
    assert cells[:3] == ["0.9634", "0.9633", "0.9632"]  # sort values beside the shown text
    assert "<code>stage2_lr=0.001</code>" in html
    report = three["first"] / "index.html"
    assert 'href="../../index.html"' in report.read_text(encoding="utf-8")
    assert browser.broken_refs(page) == [] and browser.broken_refs(report) == []


def test_a_report_outside_the_runs_folder_has_no_table_to_link(out):
    page = write_report(out / "elsewhere" / "x").read_text(encoding="utf-8")
    assert "../../index.html" not in page and "all runs" not in page


# -- two runs side by side ------------------------------------------------------------------------


def test_compare_shows_differing_settings_fold_auc_and_shared_steps(out, three, capsys):
    assert (
        commands.main(["--output-dir", str(out), "--compare", "run-first", str(three["second"])])
        == 0
    )
    printed = capsys.readouterr().out
    assert re.search(r"^  stage2_lr\s+0\.0001\s+0\.001$", printed, re.M)
    assert printed.count("  setting ") == 1 and "n_folds" not in printed  # only what differs
    # Stage 1 is the same stored step, stage 2 is not: its fold AUCs differ.
    assert re.search(r"^  0\s+0\.9000\s+0\.9000\s+0\.9501\s+0\.9510$", printed, re.M)
    assert re.search(r"^  oof\s+0\.9502\s+0\.9633\s+0\.9492\s+0\.9632$", printed, re.M)
    assert "steps: 4 shared, 2 only in A, 2 only in B" in printed
    shared = re.search(r"^  shared\s+(.*)$", printed, re.M).group(1)
    assert shared == "stage0, eda, stage1-fold0, stage1-fold1"
    only_a = re.search(r"^  only in A\s+(.*)$", printed, re.M).group(1).split(", ")
    assert [n.rsplit("-", 1)[0] for n in only_a] == ["stage2-fold0", "stage2-fold1"]
    assert set(only_a) == {v for k, v in steps.linked_steps(three["first"]).items() if "2" in k}
    page = out / "compare-run-first-run-second.html"
    assert printed.rstrip().endswith(f"page: {page}")
    html = page.read_text(encoding="utf-8")
    assert html.count('<tr class="shared">') == 4 and '<a href="index.html">' in html
    assert "compare-run-first-run-second.html" in (out / "index.html").read_text(encoding="utf-8")
    assert browser.broken_refs(page) == [] and browser.broken_refs(out / "index.html") == []


def test_compare_before_the_ensemble_reads_the_folds_done(out, three):
    a, b = (catalog.read_run(three[k], out) for k in ("partial", "first"))
    c = compare.compare(a, b)
    assert [f["fold"] for f in c.folds] == ["0", "1", "mean", "oof"]
    assert c.folds[0]["stage1"] == (0.9, 0.9) and c.folds[1]["stage1"] == (None, 0.91)
    assert ("stage0_epochs", "0", "3") in c.settings
    # Without stage 0 stage 1 fine-tunes bert_dir itself: another key, so nothing but EDA shared.
    assert [label for label, _ in c.shared] == ["eda"]


def test_compare_an_unknown_run_names_the_runs_there(out, three):
    with pytest.raises(ConfigError) as info:
        commands.main(["--output-dir", str(out), "--compare", "run-first", "run-nope"])
    message = str(info.value)
    assert message.startswith("--compare run-nope: no run of that name or path under ")
    assert message.endswith("runs there: run-first, run-partial, run-second")


def test_the_command_prints_one_error_line(out, three):
    proc = subprocess.run(
        [sys.executable, "-m", "core.runs", "--output-dir", out, "--compare", "run-x", "run-first"],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"error: --compare run-x: no run of that name or path under {out / 'runs'}; "
        "runs there: run-first, run-partial, run-second"
    ]


@pytest.mark.slow
def test_page_sorts_by_a_clicked_column_in_a_browser(out, three, tmp_path):
    """Chromium loads the table and sorts it when a header is clicked (a copy of the page with
    the clicks appended)."""
    if not browser.have_chromium():
        pytest.skip(f"no Chromium at {browser.CHROMIUM}")
    html = table.write_table(out).read_text(encoding="utf-8")

    def order(clicks: str) -> list[str]:
        page = out / "clicked.html"
        script = f"<script>{clicks}</script></body>"
        page.write_text(html.replace("</body>", script), encoding="utf-8")
        dom = browser.dump_dom(page)
        return re.findall(r'<tr><td class="name" data-v="(run-[a-z]+)"', dom)

    assert order("") == ["run-second", "run-first", "run-partial"]
    ths = 'const th = document.querySelectorAll("#runs th");'
    # "when" (after the extra stages) descending: the newest first; the partial run is an hour
    # older.
    assert order(ths + "th[9].click();")[-1] == "run-partial"
    # final OOF AUC: descending, then ascending; the unfinished run's blank stays last.
    assert order(ths + "th[2].click();") == ["run-second", "run-first", "run-partial"]
    assert order(ths + "th[2].click(); th[2].click();") == [
        "run-first",
        "run-second",
        "run-partial",
    ]
    assert order(ths + "th[0].click(); th[0].click();") == [f"run-{k}" for k in sorted(three)]


# -- real runs ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_real_tiny_runs_side_by_side(tiny_job, tiny_run, tmp_path):
    """The session's tiny main job (students and distillation on) and the default run made after
    it on the same store (conftest.py): the second reused every step the first made for it. The
    table lists both, the comparison names the settings that differ and the steps shared, and
    the pages load in Chromium with every link resolving (screenshots kept in tmp_path)."""
    outputs, a, b = tiny_run.outputs, tiny_job.run_dir, tiny_run.run_dir
    assert (outputs / "index.html").is_file()  # the main job refreshed the table
    printed = command("--output-dir", outputs)
    compared = command("--output-dir", outputs, "--compare", a.name, b.name)
    (tmp_path / "runs.txt").write_text(printed + "\n\n" + compared, encoding="utf-8")
    rows = dict(ROWS.findall(printed))
    assert rows[a.name] == rows[b.name] == "finished"
    # Stage 0, the EDA and both stages' folds reused.
    header, line = (
        next(x for x in printed.splitlines() if x.startswith(start)) for start in ("run ", b.name)
    )
    cells = dict(zip(re.split(r"\s{2,}", header), re.split(r"\s{2,}", line), strict=False))
    n = tiny_run.settings.n_folds
    assert cells["reused"] == str(2 + 2 * n), line
    for name in ("students_enabled", "distill_enabled"):
        assert re.search(rf"^  {name}\s+True\s+False$", compared, re.M)
    # Only in A: each fold's student and distilled copy, and the distilled model.
    assert f"steps: {2 + 2 * n} shared, {2 * n + 1} only in A, 0 only in B" in compared
    shared = re.search(r"^  shared\s+(.*)$", compared, re.M).group(1)
    stages = [f"{stage}-fold{k}" for stage in ("stage1", "stage2") for k in range(n)]
    assert shared == ", ".join(["stage0", "eda", *stages])
    for line in (*map(str, range(n)), "oof"):  # stage 1 is one stored step: the same AUC both sides
        s1a, s1b = re.search(rf"^  {line}\s+(\S+)\s+(\S+)", compared, re.M).groups()
        assert s1a == s1b != "-"
    check_pages(outputs, a, b, tmp_path)


def command(*args) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "core.runs", *map(str, args)],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def check_pages(output_dir: Path, a: Path, b: Path, shots: Path) -> None:
    if not browser.have_chromium():
        pytest.skip(f"no Chromium at {browser.CHROMIUM}")
    pages = {
        "runs-table": output_dir / "index.html",
        "compare": output_dir / f"compare-{a.name}-{b.name}.html",
        "report": a / "index.html",
    }
    for name, page in pages.items():
        dom = browser.dump_dom(page)
        assert browser.broken_refs(page, dom) == [], page
        assert a.name in dom and "</body>" in dom
        browser.screenshot(page, shots / f"{name}.png", height=1100)
    assert f'href="runs/{b.name}/index.html"' in pages["runs-table"].read_text(encoding="utf-8")
    assert 'href="../../index.html"' in pages["report"].read_text(encoding="utf-8")
