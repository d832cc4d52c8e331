"""End to end: every notebook through papermill on a tiny slice of the real data.

The assertions read the session's shared tiny runs (conftest.py): ``tiny_job`` (the main job that
computed every stored step and printed its progress) and ``tiny_run`` (the default method on the
same store). A test that changes a run works on a copy (``copy_outputs``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import uuid
from pathlib import Path

import browser
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from tiny_run import N_FOLDS, command, copy_outputs, fold_files, make_tiny_inputs, papermill

from core.config import CONFIG_FILE, ROOT, ConfigError, Settings
from core.data.reviews import read_labelled, read_unlabelled
from core.ensembling.submission import HEADER, check_submission
from core.io import read_json
from core.noise import is_noise
from core.pipeline.job import run_pipeline
from core.pipeline.plan import plan, select
from core.runs import steps
from core.runs.folder import (
    MissingStageError,
    RunMismatchError,
    default_run_dir,
    encoder_dir,
    run_settings,
    weights_sha256,
)

pytestmark = pytest.mark.slow  # end to end: papermill runs and subprocesses

STAGES = ("stage1", "stage2")
NOTEBOOK_STEMS = (
    ["00_pretrain-stage0", "01_eda-eda"]
    + [f"02_cv-stage1-fold{k}" for k in range(N_FOLDS)]
    + [f"03_f1_refine-stage2-fold{k}" for k in range(N_FOLDS)]
    + ["04_ensemble-ensemble", "05_errors-errors"]
)


@pytest.fixture(scope="module")
def settings(tiny_run) -> Settings:
    return tiny_run.settings


@pytest.fixture(scope="module")
def run(tiny_run) -> Path:
    return tiny_run.run_dir


def read_oof(run_dir: Path, stage: str) -> pd.DataFrame:
    parts = []
    for k in range(N_FOLDS):
        part = pd.read_csv(run_dir / stage / f"fold{k}" / "oof.csv")
        parts.append(part.assign(fold=k))
    return pd.concat(parts, ignore_index=True)


def walk(folder: Path) -> list[Path]:
    """Every file under ``folder``, through the links to stored steps."""
    return [Path(d) / f for d, _, names in os.walk(folder, followlinks=True) for f in names]


def stage_file_mtimes(run_dir: Path, folders=None) -> dict[str, int]:
    folders = folders or ["stage0", "eda", "stage1", "stage2", "ensemble", "errors", "notebooks"]
    files = [p for f in folders for p in walk(run_dir / f)]
    files += [run_dir / "run.json", run_dir / "folds.csv"]
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in files}


# -- outputs --------------------------------------------------------------------------------------


def test_terminal_shows_what_notebooks_print_and_no_figure_reprs(tiny_job):
    printed = tiny_job.printed
    lines = printed.splitlines()
    progress = [i for i, line in enumerate(lines) if line.startswith("  [stage1 fold 0] epoch")]
    assert progress, printed
    assert all(lines[i + 1].strip() for i in progress), "a blank line after a progress line"
    assert "<Figure size" not in printed and "<IPython.core.display" not in printed
    assert not [line for line in lines if is_noise(line)]


def test_every_output_exists(run, settings):
    assert run == default_run_dir(settings)  # the folder a notebook run by hand uses too
    for stem in NOTEBOOK_STEMS:
        for suffix in (".ipynb", ".html"):
            path = run / "notebooks" / f"{stem}{suffix}"
            assert path.is_file() and path.stat().st_size > 0, path
    for name in (
        "index.html",
        "run.json",
        CONFIG_FILE,
        "folds.csv",
        "eda/eda.json",
        "errors/errors.json",
        "ensemble/results.json",
        "ensemble/submission.csv",
    ):
        assert (run / name).is_file(), name
    for stage in STAGES:
        for k in range(N_FOLDS):
            for name, path in fold_files(run, stage, k).items():
                assert path.is_file() and path.stat().st_size > 0, f"{stage} fold {k}: {name}"
            done = read_json(run / stage / f"fold{k}" / "done.json")
            assert done["stage"] == stage and done["fold"] == k
    leftovers = [p for p in run.rglob(".*")]  # atomic writes' and papermill's temporary files
    assert not leftovers, leftovers


def test_stages_1_and_2_fine_tune_the_stage0_encoder(run, settings):
    encoder = run / "stage0" / "bert"
    record = read_json(encoder / "PRETRAIN.json")
    assert record["params"]["epochs"] == settings.stage0_epochs
    assert record["params"]["seed"] == settings.stage0_seed_value
    assert record["source_weights_sha256"] == weights_sha256(settings.bert_dir)
    assert encoder_dir(settings, run) == encoder.resolve()  # the stored step the run links
    for stage in STAGES:  # the executed notebooks did not pass another encoder
        nb = json.loads(
            (
                run / "notebooks" / f"{'02_cv' if stage == 'stage1' else '03_f1_refine'}"
                f"-{stage}-fold0.ipynb"
            ).read_text(encoding="utf-8")
        )
        passed = Path(nb["metadata"]["papermill"]["parameters"]["bert_dir"])
        assert (ROOT / passed).resolve() == settings.bert_dir.resolve()  # shown from the root


def test_stage0_epochs_0_fine_tunes_bert_dir_itself(settings, tmp_path):
    off = dataclasses.replace(settings, stage0_epochs=0)
    assert [s for s in plan(off, tmp_path / "run") if s.section == "stage0"] == []
    assert encoder_dir(off, tmp_path / "run") == settings.bert_dir
    with pytest.raises(ConfigError, match=r"setting stage0_epochs=-1: expected an integer >= 0"):
        dataclasses.replace(settings, stage0_epochs=-1)


def test_a_run_folder_refuses_other_settings(run, settings):
    """An explicit run folder of another configuration stops before anything runs or is written."""
    saved = (run / CONFIG_FILE).read_bytes()
    changed = dataclasses.replace(settings, stage0_lr=2e-4)
    with pytest.raises(RunMismatchError, match=r"stage0_lr: was 0\.0001, now 0\.0002"):
        run_pipeline(changed, run_dir=run)
    assert (run / CONFIG_FILE).read_bytes() == saved


def test_other_data_is_another_stage0_and_its_run_folder_refuses_it(run, settings, tmp_path):
    other = tmp_path / "train.txt"
    other.write_text(
        settings.train_path.read_text(encoding="utf-8") + "1\t服务很好，还会再来\n\n",
        encoding="utf-8",
    )
    changed = dataclasses.replace(settings, train_path=other)
    assert steps.ref(changed, "stage0").key != steps.ref(settings, "stage0").key
    before = stage_file_mtimes(run)
    with pytest.raises(RunMismatchError, match="train_sha256: was '[0-9a-f]{64}', now '"):
        run_pipeline(changed, run_dir=run)
    assert stage_file_mtimes(run) == before


def test_executed_notebooks_hold_their_parameters(run):
    last = N_FOLDS - 1
    nb = json.loads((run / "notebooks" / f"02_cv-stage1-fold{last}.ipynb").read_text("utf-8"))
    params = nb["metadata"]["papermill"]["parameters"]
    assert params["fold"] == last and params["n_folds"] == N_FOLDS and params["stage1_lr"] == 1e-3
    assert not [c for c in nb["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]


def figure_outputs(notebook: Path) -> tuple[int, list[str]]:
    """(PNG images, cells that show a figure only as text ``<Figure size …>``) of a notebook."""
    images, text_only = 0, []
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    for i, cell in enumerate(cells):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            text = "".join(data.get("text/plain", ""))  # nbformat may store it as a list of lines
            images += "image/png" in data
            if text.startswith("<Figure") and "image/png" not in data:
                text_only.append(f"{notebook.name} cell {i}: {text}")
    return images, text_only


def test_every_figure_is_an_image(run):
    """Every figure a notebook shows is a PNG in the executed notebook and in its HTML."""
    text_only, images = [], {}
    for notebook in sorted((run / "notebooks").glob("*.ipynb")):
        images[notebook.stem], missing = figure_outputs(notebook)
        text_only += missing
        html = notebook.with_suffix(".html").read_text(encoding="utf-8")
        assert html.count("data:image/png;base64,") >= images[notebook.stem], notebook.name
    assert not text_only, text_only
    # Each draws at least one figure, but the error analysis (tables and coloured characters).
    blank = [s for s in NOTEBOOK_STEMS if not images[s] and not s.startswith("05_errors")]
    assert not blank, blank


def test_index_links_every_notebook(run):
    page = (run / "index.html").read_text(encoding="utf-8")
    links = set(re.findall(r"href=['\"]([^'\"]+)['\"]", page))
    for stem in NOTEBOOK_STEMS:
        assert f"notebooks/{stem}.html" in links and f"notebooks/{stem}.ipynb" in links, stem
    broken = [link for link in links if not (run / link).is_file()]
    assert not broken, broken
    for stage in STAGES:
        for k in range(N_FOLDS):
            auc = read_json(run / stage / f"fold{k}" / "done.json")["val_auc"]
            assert f"{auc:.4f}" in page  # each fold's validation AUC is on the page


def test_report_holds_the_headline_figures_provenance_and_timings(run):
    page = (run / "index.html").read_text(encoding="utf-8")
    headline = read_json(run / "ensemble" / "results.json")["headline"]
    for key in ("oof_auc", "stage1_oof_auc", "stage2_oof_auc", "f1_at_threshold"):
        assert f"{headline[key]:.4f}" in page, key
    assert "0.9553" in page and "0.9604" in page  # the reference method's published figures
    manifest = read_json(run / "run.json")
    for value in (
        manifest["train_sha256"],
        manifest["bert_sha256"],
        manifest["python"],
        manifest["packages"]["tensorflow"],
    ):
        assert value in page
    for label in read_json(run / "timings.json"):
        assert f"<td>{label}</td>" in page, label
    # ROC, score histogram, per-fold bars, and the learning curves of stage 0 and every fold.
    assert page.count('<img src="data:image/png;base64,') == 3 + 1 + 2 * N_FOLDS
    assert 'href="notebooks/05_errors-errors.html"' in page
    assert 'href="ensemble/submission.csv"' in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # self-contained
    assert "not yet" not in page


def test_error_analysis_explains_chosen_sentences(run):
    summary = read_json(run / "errors" / "errors.json")
    assert summary["n_rows"] == 120
    assert summary["oof_auc"] == pytest.approx(
        read_json(run / "ensemble" / "results.json")["headline"]["oof_auc"], abs=1e-9
    )
    assert set(summary["auc_by_text_in_other_fold"]) == {"True", "False", "all rows"}
    nb = json.loads((run / "notebooks" / "05_errors-errors.ipynb").read_text(encoding="utf-8"))
    assert nb["metadata"]["papermill"]["parameters"]["interactive"] is False
    outputs = [o for c in nb["cells"] for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert not [
        o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]  # no text box in the executed notebook
    page = (run / "notebooks" / "05_errors-errors.html").read_text(encoding="utf-8")
    # Coloured characters: 4 groups of n_explain sentences, then the fixed live examples.
    coloured = re.findall(r"<span[^>]*background:rgba[^>]*>([^<]*)</span>", page)
    assert len(coloured) >= 4 * 3 * 5
    assert "".join(coloured).endswith("服务热情，菜品新鲜" + "一般般吧" + "环境不错，下次还来")


@pytest.mark.slow
def test_error_notebook_with_a_live_kernel_shows_a_text_box_that_scores(run, tiny, tmp_path):
    """interactive=True (the notebook's default): a text box; typing into it (done here by a
    cell added to a copy of the notebook) scores the sentence with the run's ensemble."""
    import nbformat
    import papermill as pm

    from core.serving.predict import score

    nb = nbformat.read(ROOT / "notebooks" / "05_errors.ipynb", as_version=4)
    nb.cells.append(
        nbformat.v4.new_code_cell(
            'box = errors.live_box(explainer)\nbox.children[0].value = "服务很好"\n'
            'print(box.children[1].outputs[0]["data"]["text/html"])'
        )
    )
    nbformat.write(nb, tmp_path / "in.ipynb")
    # The run's own settings: a run folder refuses a notebook given other ones.
    params = {**run_settings(run).changed(), "run_dir": str(run), "n_explain": 1}
    out = pm.execute_notebook(
        str(tmp_path / "in.ipynb"),
        str(tmp_path / "out.ipynb"),
        parameters=params,
        cwd=str(ROOT),
        progress_bar=False,
    )
    outputs = [o for c in out.cells for o in c.get("outputs", [])]
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    typed = out.cells[-1].outputs[0]["text"]
    assert typed.count("<span title=") == 4
    assert f"{score(run, ['服务很好'])['probability'][0]:.3f}" in typed


@pytest.mark.slow
@pytest.mark.parametrize("name", ["index.html", "notebooks/05_errors-errors.html"])
def test_pages_in_a_browser(run, name, tmp_path):
    """The report and the error notebook in headless Chromium: they load, every link and image
    resolves, and their Chinese text is drawn with a CJK font."""
    if not browser.have_chromium():
        pytest.skip(
            f"no Chromium at {browser.CHROMIUM}: apt-get install chromium "
            "(./suite.sh test does so when run as root)"
        )
    page = run / name
    dom = browser.dump_dom(page)
    assert "</body>" in dom and ("Run run-" in dom or "Error analysis" in dom)
    assert browser.broken_refs(page, dom) == []
    wrong = read_json(run / "errors" / "errors.json")["confident_errors"]
    assert next(iter(wrong.values()))[0] in dom  # a Chinese sentence is on the page
    fonts = browser.pdf_fonts(page, tmp_path / "page.pdf")
    cjk = browser.cjk_font_names()
    assert cjk, "no CJK font installed (fonts-wqy-microhei)"
    assert fonts & cjk, f"Chinese text drawn without a CJK font: the PDF embeds {fonts}"
    from PIL import Image

    shot = np.asarray(Image.open(browser.screenshot(page, tmp_path / "page.png")).convert("L"))
    assert (shot < 128).mean() > 0.005, "the screenshot is (nearly) blank"


# -- predictions ----------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", STAGES)
def test_oof_rows_cover_every_training_row_once(run, tiny, stage):
    train = read_labelled(tiny.train_path)
    oof = read_oof(run, stage)
    assert sorted(oof["row"]) == list(range(len(train)))  # each row exactly once
    oof = oof.sort_values("row").reset_index(drop=True)
    folds = pd.read_csv(run / "folds.csv")
    assert oof["fold"].tolist() == folds["fold"].tolist()  # in the fold folds.csv gives it
    assert oof["id"].tolist() == train.ids.tolist()
    assert oof["label"].tolist() == train.labels.tolist()
    assert np.isfinite(oof["pred"]).all() and oof["pred"].between(0, 1).all()
    for k in range(N_FOLDS):  # done.json's AUC is this fold's AUC (preds stored to 8 digits)
        part = oof[oof["fold"] == k]
        done = read_json(run / stage / f"fold{k}" / "done.json")
        expected = roc_auc_score(part["label"], part["pred"])
        assert done["val_auc"] == pytest.approx(expected, abs=1e-4)
        assert done["n_valid"] == len(part)


def test_results_oof_auc_matches_sklearn_on_the_files(run):
    results = read_json(run / "ensemble" / "results.json")
    headline = results["headline"]
    for stage in STAGES:
        oof = read_oof(run, stage)
        expected = roc_auc_score(oof["label"], oof["pred"])
        assert headline[f"{stage}_oof_auc"] == pytest.approx(expected, abs=1e-12), stage
        row = next(c for c in results["candidates"] if c["candidate"] == f"{stage} fold mean")
        assert row["oof_auc"] == pytest.approx(expected, abs=1e-12), stage
    assert headline["n_train"] == 120 and headline["n_test"] == 40


def test_submission_passes_the_competition_checks(run, tiny):
    test_ids = read_unlabelled(tiny.test_path).ids
    path = run / "ensemble" / "submission.csv"
    assert path.read_text(encoding="utf-8").splitlines()[0] == ",".join(HEADER)
    frame = check_submission(path, test_ids)
    assert len(frame) == len(test_ids)
    assert sorted(frame["ID"].tolist()) == test_ids.tolist()  # one row per test ID


# -- resuming and run identity --------------------------------------------------------------------


def test_rerun_skips_every_step(run, settings):
    before = stage_file_mtimes(run)
    assert run_pipeline(settings) == run
    assert stage_file_mtimes(run) == before  # nothing recomputed, rewritten, added or removed


def test_changed_setting_gives_another_run_folder(run, settings):
    assert default_run_dir(dataclasses.replace(settings, stage1_lr=2e-3)) != run
    # a later stage's setting counts too, and the prediction batch (its padding moves the
    # predictions' last bits)
    assert default_run_dir(dataclasses.replace(settings, stage2_epochs=2)) != run
    assert default_run_dir(dataclasses.replace(settings, predict_batch_size=8)) != run


def test_the_same_files_elsewhere_reuse_everything(run, settings, tmp_path):
    """Keys hold the data and encoder files' contents, not their paths: copies elsewhere are the
    same run, nothing recomputed (tests/test_reproducible.py computes them anew: the same bytes)."""
    moved = {
        k: (shutil.copytree if getattr(settings, k).is_dir() else shutil.copy)(
            getattr(settings, k), tmp_path / getattr(settings, k).name
        )
        for k in ("train_path", "test_path", "bert_dir")
    }
    before = stage_file_mtimes(run)
    assert run_pipeline(dataclasses.replace(settings, **moved)) == run
    assert stage_file_mtimes(run) == before


def test_changed_data_gives_another_run_folder(tmp_path, tiny):
    other = make_tiny_inputs(tmp_path, n_train=121)
    assert default_run_dir(other.settings).name != default_run_dir(tiny.settings).name


# -- the notebooks from the command line ----------------------------------------------------------


def test_hand_run_fold_with_the_runs_config_is_the_pipelines_fold(run, tmp_path):
    """The documented hand-run command with the run's own parameters file (and no run_dir) finds
    the pipeline's run folder and reuses its finished fold: nothing is rewritten."""
    files = fold_files(run, "stage1", 0)
    before = {name: p.stat().st_mtime_ns for name, p in files.items()}
    out = tmp_path / "out.ipynb"
    proc = papermill("notebooks/02_cv.ipynb", out, "-f", run / CONFIG_FILE, fold=0)
    assert proc.returncode == 0, proc.stderr[-3000:]
    executed = out.read_text(encoding="utf-8")
    assert "already computed" in executed and "reused" in executed and str(run) in executed
    assert "unknown parameter" not in proc.stderr  # every setting is a notebook parameter
    assert {name: p.stat().st_mtime_ns for name, p in files.items()} == before


def test_stage2_before_stage1_names_the_stage1_command(settings, tiny_outputs):
    from core.training.engine import train_stage2

    run_dir = tiny_outputs / f"fresh-{uuid.uuid4().hex[:8]}"
    fresh = dataclasses.replace(settings, stage1_lr=3e-3)  # a stage 1 nobody made
    with pytest.raises(MissingStageError) as info:
        train_stage2(fresh, 1, run_dir)
    message = str(info.value)
    assert "papermill notebooks/02_cv.ipynb out.ipynb -p " in message
    assert "-p fold 1" in message and f"-p n_folds {N_FOLDS}" in message
    assert str(run_dir.relative_to(ROOT)) in message
    assert not run_dir.exists()  # nothing was started in the fresh folder


def test_a_part_of_a_run_makes_the_encoder_it_fine_tunes_first(settings, tmp_path):
    chosen = select(plan(settings, tmp_path / "run"), "stage1", [0])
    assert [s.label for s in chosen] == ["stage0", "stage1-fold0"]
    off = dataclasses.replace(settings, stage0_epochs=0)
    assert [s.label for s in select(plan(off, tmp_path / "run"), "stage1", [0])] == ["stage1-fold0"]


def test_output_dir_outside_the_repository(tiny_run, tmp_path):
    """``output_dir=<tmp>`` runs there (the CLI's --output-dir); a copied store is reused there."""
    copy = copy_outputs(tiny_run, tmp_path / "outputs")
    before = stage_file_mtimes(copy.run_dir)
    run_dir = run_pipeline(copy.settings, only="stage1", folds=[0])
    assert run_dir == copy.run_dir and run_dir.is_relative_to(tmp_path)
    assert (run_dir / "stage1" / "fold0").resolve().is_relative_to(tmp_path / "outputs" / "steps")
    assert stage_file_mtimes(run_dir) == before


def test_a_stage2_change_reuses_stage0_and_stage1_and_recomputes_stage2(tiny_variant, run):
    """Another stage-2 learning rate after the default, ``--only stage2``: stage 0 and every
    stage-1 fold are the default's stored steps, linked and not computed again; every stage-2
    fold is computed anew."""
    variant = tiny_variant.run_dir
    assert variant != run
    for section in ("stage0", *(f"stage1/fold{k}" for k in range(N_FOLDS))):
        assert (variant / section).resolve() == (run / section).resolve(), section
    for k in range(N_FOLDS):
        assert (variant / f"stage2/fold{k}").resolve() != (run / f"stage2/fold{k}").resolve()
        assert (variant / f"stage2/fold{k}/done.json").is_file()
    # Only stage 2 was executed; the reused step's notebook is a link.
    assert set(read_json(variant / "timings.json")) == {f"stage2-fold{k}" for k in range(N_FOLDS)}
    assert (variant / "notebooks" / "00_pretrain-stage0.ipynb").is_symlink()
    assert (variant / "notebooks" / "00_pretrain-stage0.html").is_file()


def test_deleting_a_run_leaves_the_runs_it_shares_steps_with_whole(tiny_variant, tmp_path):
    copy = copy_outputs(tiny_variant, tmp_path / "outputs")
    default = dataclasses.replace(copy.settings, stage2_lr=copy.settings.stage2_lr * 10)
    run = default_run_dir(default)
    shutil.rmtree(copy.run_dir)
    before = stage_file_mtimes(run)
    assert run_pipeline(default) == run
    assert stage_file_mtimes(run) == before


def test_a_seed_ensemble_blends_runs_that_share_stage0(settings, run, tmp_path):
    """blend_seeds=[5]: this method at seed 5 is a run of its own (the folder
    ``train_seed=5`` names), sharing stage 0; the ensemble blends both runs. One fold of the
    member is made first by hand, with a configuration file (``papermill -f``): it is the main
    job's fold for those settings (same folder), which the main job then does not recompute. The
    blend's ensemble by hand gives the main job's figures."""
    from core.pipeline.job import resolve_settings

    member_settings = dataclasses.replace(settings, train_seed=5)
    config = tmp_path / "member.yaml"
    values = {k: str(v) if isinstance(v, Path) else v for k, v in member_settings.changed().items()}
    config.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in values.items()), "utf-8")
    out = tmp_path / "out.ipynb"
    proc = papermill("notebooks/02_cv.ipynb", out, "-f", config, fold=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    member = default_run_dir(member_settings)
    assert default_run_dir(resolve_settings(str(config), [])) == member
    done = member / "stage1" / "fold1" / "done.json"
    stamp = done.stat().st_mtime_ns

    blend = run_pipeline(dataclasses.replace(settings, blend_seeds=[5]))
    assert done.stat().st_mtime_ns == stamp  # the fold made by hand: reused, not recomputed
    assert "stage1-fold1" not in read_json(member / "timings.json")
    assert (member / CONFIG_FILE).read_text(encoding="utf-8").count("train_seed: 5") == 1
    assert blend not in (run, member) and (member / "ensemble/results.json").is_file()
    assert (blend / "stage1/fold0").resolve() == (run / "stage1/fold0").resolve()
    assert (member / "stage0").resolve() == (run / "stage0").resolve()
    assert (member / "stage1/fold0").resolve() != (run / "stage1/fold0").resolve()
    results = read_json(blend / "ensemble/results.json")
    members = results["headline"]["members"]
    assert [m["run"] for m in members] == [blend.name, member.name]
    names = [c["candidate"] for c in results["candidates"]]
    assert "rank average of 2 runs' stage1" in names
    assert results["headline"]["final"] in names
    # The blend's ensemble by hand gives the main job's figures.
    saved = (blend / "ensemble/results.json").read_bytes()
    proc = papermill("notebooks/04_ensemble.ipynb", out, "-f", blend / CONFIG_FILE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (blend / "ensemble/results.json").read_bytes() == saved


def test_predict_command_scores_sentences_with_the_run(run, tiny, tiny_outputs):
    from core.serving.predict import score

    texts = read_unlabelled(tiny.test_path).texts[:5]
    scores = score(run, texts)
    assert list(scores.columns[:2]) == ["text", "probability"]
    assert scores["text"].tolist() == texts
    assert scores["probability"].between(0, 1).all()
    # The ensemble's test predictions of the stage-1 fold mean are the same model on the same text.
    stage1_test = np.mean(
        [pd.read_csv(run / "stage1" / f"fold{k}" / "test.csv")["pred"][:5] for k in range(N_FOLDS)],
        axis=0,
    )
    # Serving computes in float32; a run in bfloat16 (precision auto on a CPU with bf16) wrote
    # its files in bfloat16: they agree within tests/test_precision.py's AGREE.
    chosen = read_json(run / "run.json")["precision"]["precision"]
    np.testing.assert_allclose(
        scores["stage1"], stage1_test, atol=1e-5 if chosen == "float32" else 0.02
    )

    out = tiny_outputs / "scores.csv"
    done = command("core.serving.predict", "--run", run, "--out", out, *texts[:2])
    assert done.returncode == 0, done.stderr[-2000:]
    written = pd.read_csv(out)
    assert written.columns.tolist() == ["text", "probability"] and len(written) == 2

    outside = command("core.serving.predict", "--run", run, "--out", "/tmp/elsewhere.csv", "好吃")
    assert outside.returncode != 0 and "--out='/tmp/elsewhere.csv'" in outside.stderr


# -- what is served is what is scored --------------------------------------------------------------


def test_predict_on_the_test_file_reproduces_the_submission(run, tiny, tiny_outputs):
    """The final of the default tiny run is a mix of stages 1 and 2, so serving computes it:
    ``core.serving.predict --file`` on the test file gives ``submission.csv`` (float32 both)."""
    headline = read_json(run / "ensemble" / "results.json")["headline"]
    assert headline["final"] == headline["served"]
    out = tiny_outputs / "predict-test.csv"
    done = command("core.serving.predict", "--run", run, "--file", tiny.test_path, "--out", out)
    assert done.returncode == 0, done.stderr[-2000:]
    served = pd.read_csv(out)["probability"].to_numpy()  # in the test file's order: ID = row
    submission = pd.read_csv(run / "ensemble" / "submission.csv").sort_values("ID")
    np.testing.assert_allclose(served, submission["Prediction"], atol=1e-5)
    assert np.std(served) > 0


def test_the_served_formula_on_the_stored_oof_scores_is_the_reported_figure(tiny_job, tiny_run):
    from core.ensembling.mix import served_mix
    from core.metrics import auc

    for job in (tiny_run, tiny_job):
        h = read_json(job.run_dir / "ensemble" / "results.json")["headline"]
        mix = served_mix(h)
        oof = {s: read_oof(job.run_dir, s).sort_values("row") for s in STAGES}
        labels = oof["stage1"]["label"].to_numpy()
        scores = mix({s: oof[s]["pred"].to_numpy() for s in mix.stages})
        assert h["served_oof_auc"] == pytest.approx(auc(labels, scores), abs=1e-12)
        page = (job.run_dir / "index.html").read_text(encoding="utf-8")
        assert f"served ensemble ({h['served']}: {h['served_formula']})" in page
        assert f"{h['served_oof_auc']:.4f}" in page
        assert "final out-of-fold AUC, nested" in page and f"{h['oof_auc']:.4f}" in page
        assert f"final candidate ({h['final']})" in page and f"{h['final_oof_auc']:.4f}" in page
