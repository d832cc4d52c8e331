"""Distillation (core.training.distill): its settings, keys and plan (a run without it is the run
it was before), and, on the tiny slice (random BERT), the in-fold copies (no label of fold k is a
target of fold k's copy: with fold 0's labels flipped its training is the same to the bit, its
labels only choose the epoch kept), and, on the session's tiny main job, the distilled model's
targets and epochs, and its scoring in Python, as a SavedModel and as TFLite (parity within
1e-5, int8 TFLite within 0.02)."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from tiny_run import BANNED, LEAKAGE_EPOCHS, N_FOLDS, clean_python, papermill

from core.config import CONFIG_FILE, ConfigError, Settings, from_values, read_config
from core.io import read_json
from core.metrics import auc
from core.pipeline.plan import graph, plan, upstream
from core.runs import steps
from core.runs.folder import default_run_dir, identity


@pytest.fixture(scope="module")
def on(tiny) -> Settings:
    """The tiny settings without stage 0, distillation on."""
    return dataclasses.replace(tiny.settings, stage0_epochs=0, distill_enabled=True)


def keys(settings: Settings) -> dict[str, str]:
    return {s.label: s.key for s in steps.run_steps(settings)}


# -- settings, keys, plan -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("distill_label_weight", 1.5, r"expected a number in \[0, 1\]"),
        ("distill_layers", 0, "expected an integer >= 1 or None"),
        ("distill_epochs", 0, "expected an integer >= 1 or None"),
        ("distill_enabled", "yes", "expected True or False"),
    ],
)
def test_a_bad_distill_setting_is_one_line_naming_it(name, value, expected):
    with pytest.raises(ConfigError, match=rf"^setting {name}={value!r}: {expected} \(") as e:
        Settings(**{name: value})
    assert "\n" not in str(e.value)


def test_the_config_turns_it_on_and_nothing_else():
    values = read_config("configs/distill.yaml")
    assert values == {"distill_enabled": True}
    assert from_values(values, "test").changed() == {"distill_enabled": True}
    s = Settings(stage1_epochs=2, stage1_lr=3e-5)
    assert (s.distill_epochs_value, s.distill_lr_value) == (2, 3e-5)


def test_only_distill_when_it_is_off_names_the_fix(on):
    from core.pipeline.job import check_inputs

    off = dataclasses.replace(on, distill_enabled=False)
    for only in ("distill", "distilled"):
        with pytest.raises(ConfigError, match=f"--only {only}: distillation is off"):
            check_inputs(off, only)
    check_inputs(on, "distilled")


def test_off_is_the_run_it_was_and_on_adds_its_steps_only(on):
    off = dataclasses.replace(on, distill_enabled=False)
    assert not [k for k in identity(off) if k.startswith("distill")]
    assert keys(dataclasses.replace(off, distill_layers=1)) == keys(off)  # off: no key moves
    on_keys = keys(on)
    assert {k: v for k, v in on_keys.items() if not k.startswith("distill")} == keys(off)
    assert default_run_dir(on) != default_run_dir(off)
    labels = [s.label for s in plan(on, on.output_dir / "runs/on")]
    assert [x for x in labels if not x.startswith("distill")] == [
        s.label for s in plan(off, off.output_dir / "runs/off")
    ]
    copies = [f"distill-fold{k}" for k in range(N_FOLDS)]
    first = labels.index(copies[0])
    assert (
        labels[first - 1] == f"stage2-fold{N_FOLDS - 1}"
        and labels[first : first + N_FOLDS] == copies
    )
    assert labels[-3:] == ["ensemble", "distilled", "errors"]  # taught by the ensemble


def test_a_copys_key_is_its_teachers_and_the_distill_settings(on):
    assert steps.recipe(on, "distill", 1)["stage1"] == steps.ref(on, "stage1", 1).key
    before = keys(on)

    def changed(**change):
        after = keys(dataclasses.replace(on, **change))
        return {label for label in before if before[label] != after[label]}

    copies = {f"distill-fold{k}" for k in range(N_FOLDS)}
    assert changed(distill_label_weight=0.2) == copies
    assert changed(distill_layers=1) == copies
    assert changed(distill_epochs=on.stage1_epochs, distill_lr=on.stage1_lr) == set()
    chosen = plan(on, on.output_dir / "runs/on")
    waits = graph(chosen)
    for i, step in enumerate(chosen):
        if step.section == "distill":
            assert [r.name for r in upstream(step)] == [steps.ref(on, "stage1", step.fold).name]
            assert [chosen[j].label for j in waits[i]] == [f"stage1-fold{step.fold}"]


def test_mixed_targets():
    from core.training.distill import mixed_targets

    s = Settings(distill_label_weight=0.25)
    got = mixed_targets(s, np.array([0, 1, 1]), np.array([0.4, 0.2, 1.0]))
    np.testing.assert_allclose(got, [0.3, 0.4, 1.0], rtol=1e-6)


# -- trained: the in-fold copies are honest -------------------------------------------------------


def copy_files(run_dir, fold: int) -> dict:
    d = run_dir / "distill" / f"fold{fold}"
    return {
        "targets": (d / "targets.csv").read_bytes(),
        "history": read_json(d / "history.json"),
        "oof_pred": pd.read_csv(d / "oof.csv")["pred"].tolist(),
    }


@pytest.mark.slow
def test_poisoning_fold_0s_labels_leaves_fold_0s_copy_training_unchanged(leakage):
    clean, poisoned = (copy_files(leakage[r], 0) for r in ("clean", "poisoned"))
    assert clean["targets"] == poisoned["targets"]
    assert len(clean["history"]["loss"]) == LEAKAGE_EPOCHS
    assert clean["history"]["loss"] == poisoned["history"]["loss"]  # to the bit
    flipped = [1 - v for v in clean["history"]["val_auc"]]
    assert poisoned["history"]["val_auc"] == pytest.approx(flipped, abs=1e-9)
    assert len(set(clean["oof_pred"])) > 1
    targets = pd.read_csv(leakage["clean"] / "distill" / "fold0" / "targets.csv")
    folds = pd.read_csv(leakage["clean"] / "folds.csv")
    fold0_rows = set(folds.loc[folds["fold"] == 0, "row"])
    assert not fold0_rows & set(targets.loc[targets["kind"] == "train", "row_or_id"])
    for run in leakage.values():  # fold 0's labels choose the epoch kept, and only that
        done = read_json(run / "distill" / "fold0" / "done.json")
        aucs = read_json(run / "distill" / "fold0" / "history.json")["val_auc"]
        assert done["best_epoch"] == 1 + aucs.index(max(aucs))
    # The control: fold 1's teacher learned fold 0's labels, so its copy's targets differ.
    from core.pipeline.job import resolve_settings
    from core.training.distill import fold_teacher
    from core.training.engine import prepare

    taught = []
    for run in leakage.values():
        settings = resolve_settings(str(run / CONFIG_FILE), [])
        inputs = prepare(settings, run)
        teacher = run / "stage1" / "fold1"
        taught.append(fold_teacher(settings, 1, teacher, settings.bert_dir, inputs))
    assert np.array_equal(taught[0][0], taught[1][0])  # the same rows
    assert not np.allclose(taught[0][1], taught[1][1])  # other scores of them


# -- the distilled model of the session's tiny main job, served -----------------------------------


@pytest.fixture(scope="module")
def finished(tiny_job) -> dict:
    summary = read_json(tiny_job.run_dir / "distilled" / "done.json")
    return {
        "settings": tiny_job.settings,
        "run": tiny_job.run_dir,
        "summary": summary,
        "outputs": tiny_job.outputs,
    }


@pytest.mark.slow
def test_the_distilled_model_learns_the_served_ensemble(finished):
    from core.data.reviews import read_labelled
    from core.ensembling.mix import served_mix

    s, run, summary = finished["settings"], finished["run"], finished["summary"]
    mix = served_mix(read_json(run / "ensemble" / "results.json")["headline"])
    stage_oof = {
        st: pd.concat(pd.read_csv(run / st / f"fold{k}" / "oof.csv") for k in range(N_FOLDS))
        .sort_values("row")["pred"]
        .to_numpy()
        for st in ("stage1", "stage2")
    }
    teacher = mix(stage_oof)
    labels = read_labelled(s.train_path).labels
    targets = pd.read_csv(run / "distilled" / "targets.csv")
    train = targets[targets["kind"] == "train"]
    np.testing.assert_allclose(train["teacher"], teacher, atol=1e-7)
    w = s.distill_label_weight
    np.testing.assert_allclose(train["target"], w * labels + (1 - w) * teacher, atol=1e-6)
    copies = [read_json(run / "distill" / f"fold{k}" / "done.json") for k in range(N_FOLDS)]
    assert summary["in_fold_auc"] == [c["val_auc"] for c in copies]
    assert summary["epochs"] == int(np.ceil(np.median([c["best_epoch"] for c in copies])))
    assert summary["n_train"] == len(labels) and -1 <= summary["test_rank_agreement"] <= 1
    assert (run / "distilled" / "done.json").is_file()
    from core.training import distill

    assert distill.train_distilled(s, run) == summary  # reused, not trained again


@pytest.mark.slow
def test_the_ensemble_blends_the_copies_and_serves_stages_1_and_2(finished):
    from core.ensembling.candidates import choose_final

    run = finished["run"]
    results = read_json(run / "ensemble" / "results.json")
    headline, table = results["headline"], pd.DataFrame(results["candidates"])
    assert {"distill fold mean", "weighted blend of stage2+distill"} <= set(table["candidate"])
    copies = pd.concat(
        pd.read_csv(run / "distill" / f"fold{k}" / "oof.csv") for k in range(N_FOLDS)
    )
    assert headline["distill_oof_auc"] == pytest.approx(auc(copies["label"], copies["pred"]))
    assert headline["final"] == choose_final(table)
    # Serving (and the distilled model's teacher) mixes stages 1 and 2: their best blend, its
    # figure the served formula on the stored OOF scores (its weight chosen on those rows).
    own = table[~table["candidate"].str.contains("distill|students")]
    assert headline["served"] == choose_final(own)
    served = own.set_index("candidate").loc[headline["served"]]
    assert headline["served_oof_auc"] == pytest.approx(served["oof_auc_in_sample"])
    assert set(headline["final_stages"]) <= {"stage1", "stage2", "students", "distill"}


@pytest.mark.slow
def test_predict_scores_with_the_distilled_model(finished):
    from core.data.reviews import read_unlabelled
    from core.serving.predict import main, score

    run, s = finished["run"], finished["settings"]
    texts = read_unlabelled(s.test_path).texts
    got = score(run, texts, model="distilled")
    stored = pd.read_csv(run / "distilled" / "test.csv")["pred"].to_numpy()
    np.testing.assert_allclose(got["probability"], stored, atol=1e-6)
    ensemble = score(run, texts[:5])
    assert not np.allclose(ensemble["probability"], got["probability"][:5])  # another model
    out = finished["outputs"] / "scores.csv"
    assert main(["--run", str(run), "--model", "distilled", "--out", str(out), texts[0]]) == 0
    assert pd.read_csv(out)["probability"].iloc[0] == pytest.approx(stored[0], abs=1e-4)


@pytest.mark.slow
def test_a_run_without_a_distilled_model_says_how_to_make_one(finished, tmp_path):
    from core.serving import export
    from core.serving.predict import RunNotFinishedError, finished_run

    run = finished["run"]
    bare = tmp_path / "bare"  # the run-level files only: the links into the store stay behind
    shutil.copytree(run, bare, symlinks=True, ignore=shutil.ignore_patterns("distilled"))
    with pytest.raises(RunNotFinishedError, match="no distilled model.*distill_enabled=True"):
        finished_run(bare, finished["outputs"], "distilled")
    with pytest.raises(FileNotFoundError, match="no distilled model.*--model ensemble"):
        export.check_run(bare, "distilled")


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["savedmodel", "tflite"])
def test_the_distilled_export_matches_its_python_scoring(finished, fmt, tmp_path):
    from core.data.reviews import read_unlabelled
    from core.serving import export
    from core.serving.predict import score

    run = finished["run"]
    path = export.export(
        run, finished["outputs"] / "export" / f"distilled-{fmt}", fmt, None, "distilled"
    )
    record = read_json(path.parent / "1.json")
    assert (
        record["model"] == "distilled" and "fold_probability" not in record["signature"]["outputs"]
    )
    assert list(record["fold_weights_sha256"]) == ["distilled/done.json", "distilled/weights.h5"]
    texts = read_unlabelled(finished["settings"].test_path).texts + ["好", "服务一般般吧，" * 5]
    expected = score(run, texts, model="distilled")["probability"].to_numpy()
    if fmt == "savedmodel":
        code = f"""
import json, sys
import tensorflow as tf
texts = json.loads(sys.stdin.read())
serve = tf.saved_model.load({str(path)!r}).signatures["serving_default"]
out = serve(texts=tf.constant(texts))
print(json.dumps({{"probability": out["probability"].numpy().tolist(), "keys": sorted(out),
    "modules": sorted(m for m in sys.modules if m.split(".")[0] in {BANNED!r})}}))
"""
        tolerance = 1e-5
    else:
        code = f"""
import json, sys
sys.path.insert(0, {str(path)!r})
from tokenizer import TFLiteModel
texts = json.loads(sys.stdin.read())
out = TFLiteModel()(texts)
print(json.dumps({{"probability": out["probability"].tolist(), "keys": sorted(out),
    "modules": sorted(m for m in sys.modules if m.split(".")[0] in {BANNED!r})}}))
"""
        tolerance = 0.02  # int8 weights
    got = clean_python(code, json.dumps(texts), tmp_path)
    assert got["modules"] == [] and got["keys"] == ["probability"]
    diff = np.abs(np.array(got["probability"]) - expected)
    assert diff.max() <= tolerance, diff.max()


def test_a_smaller_distilled_model_keeps_the_first_layers(tiny_bert_dir):
    from core.model.classifier import build_model, encoder_layers

    bert_dir = tiny_bert_dir
    full = build_model(bert_dir, bert_trainable=False)
    small = build_model(bert_dir, bert_trainable=False, layers=1)
    assert encoder_layers(bert_dir) == 2
    names = {w.name: w.numpy() for w in full.weights}
    small_names = [w.name for w in small.weights]
    assert len(small.weights) < len(full.weights)
    assert not [n for n in small_names if n.startswith("Encoder-2-")]
    for w in small.weights:  # the layers it keeps are the checkpoint's, as in the full model
        if w.name.startswith("Encoder-1-"):
            np.testing.assert_array_equal(w.numpy(), names[w.name])
    with pytest.raises(ValueError, match="layers=3: the encoder .* has 2; keep 1..2"):
        build_model(bert_dir, layers=3)


@pytest.mark.slow
def test_the_report_shows_the_distilled_model(finished):
    from core.runs.report import context

    ctx = context(finished["run"], finished["settings"])
    rows = {r["figure"]: r["run"] for r in ctx["headline_rows"]}
    summary = finished["summary"]
    copies = next(k for k in rows if k.startswith("distilled model, in-fold copies' mean AUC"))
    assert "an estimate" in copies and rows[copies] == pytest.approx(summary["in_fold_auc_mean"])
    assert rows["distilled model, rank agreement with the ensemble on test"] == pytest.approx(
        summary["test_rank_agreement"]
    )
    assert ("distill", "layers", None) in ctx["params"]


# -- the main job and the notebook by hand --------------------------------------------------------


@pytest.mark.slow
def test_the_main_job_distils_blends_and_reports(tiny_job):
    run_dir = tiny_job.run_dir
    for k in range(N_FOLDS):
        assert (run_dir / "distill" / f"fold{k}" / "done.json").is_file()
        assert (run_dir / "notebooks" / f"06_distill-distill-fold{k}.html").is_file()
    assert (run_dir / "notebooks" / "06_distill-distilled.html").is_file()
    summary = read_json(run_dir / "distilled" / "done.json")
    headline = read_json(run_dir / "ensemble" / "results.json")["headline"]
    assert "distill_oof_auc" in headline and "served" in headline
    page = (run_dir / "index.html").read_text(encoding="utf-8")
    assert "distilled model, in-fold copies&#39; mean AUC (an estimate" in page
    assert "distilled copies" in page
    assert f"{summary['in_fold_auc_mean']:.4f}" in page


@pytest.mark.slow
def test_the_notebook_by_hand_reuses_the_main_jobs_distilled_model(tiny_job, tmp_path):
    run_dir = tiny_job.run_dir
    done = run_dir / "distilled" / "done.json"
    stamp = done.stat().st_mtime_ns
    out = tmp_path / "out.ipynb"
    proc = papermill("notebooks/06_distill.ipynb", out, "-f", run_dir / CONFIG_FILE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    executed = out.read_text(encoding="utf-8")
    assert "already trained" in executed and str(run_dir) in executed
    assert done.stat().st_mtime_ns == stamp  # reused, not trained again
