"""core.ensembling.fold_outputs, candidates, mix and ensemble on synthetic run folders: loading
and coverage checks, fold AUCs, blends (each a mix of the stages in probability space), the nested
(honest) selection of blend weights, F1 thresholds and the final candidate, and the served mix:
the formula of the submission, of the served figure and of the served score of a sentence."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from core.ensembling.candidates import (
    Blend,
    blend_runs,
    candidates,
    choose_final,
    fold_mean,
    fold_table,
    honest_best_f1,
    nested_choice,
    rank_average,
    results_table,
    stage_blend,
)
from core.ensembling.fold_outputs import MissingOutputsError, load_stage
from core.ensembling.mix import Mix, served_mix
from core.io import write_csv, write_json
from core.metrics import auc, best_f1

N_FOLDS = 5


def make_run(tmp_path, n=300, n_test=60, strengths=None, seed=0):
    """A run folder whose stages' predictions are ``sigmoid(strength * (2y-1) + noise)``."""
    strengths = strengths or {"stage1": 1.0, "stage2": 2.0}
    rng = np.random.default_rng(seed)
    run = tmp_path / "run"
    labels = rng.integers(0, 2, n)
    folds = rng.permutation(np.arange(n) % N_FOLDS)
    ids = 1000 + np.arange(n)
    test_ids = 5000 + np.arange(n_test)
    write_csv(run / "folds.csv", pd.DataFrame({"row": np.arange(n), "id": ids, "fold": folds}))
    for stage, strength in strengths.items():
        logit = strength * (2 * labels - 1) + rng.normal(size=n)
        pred = 1 / (1 + np.exp(-logit))
        for k in range(N_FOLDS):
            d = run / stage / f"fold{k}"
            m = folds == k
            rows = np.flatnonzero(m)
            oof = pd.DataFrame({"row": rows, "id": ids[m], "label": labels[m], "pred": pred[m]})
            write_csv(d / "oof.csv", oof)
            write_csv(d / "test.csv", pd.DataFrame({"id": test_ids, "pred": rng.random(n_test)}))
            write_json(d / "done.json", {"fold": k})
    return run, labels, folds


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path)


# ----------------------------------------------------------------------------- loading


def test_load_stage_reads_every_fold(run):
    run_dir, labels, folds = run
    s = load_stage(run_dir, "stage1", N_FOLDS)
    assert list(s.oof.columns) == ["row", "id", "label", "fold", "pred"]
    assert s.oof["row"].tolist() == list(range(len(labels)))
    assert np.array_equal(s.oof["label"], labels) and np.array_equal(s.oof["fold"], folds)
    assert list(s.test.columns) == ["id"] + [f"fold{k}" for k in range(N_FOLDS)]
    assert s.test["id"].tolist() == list(5000 + np.arange(60))


def test_missing_fold_names_fold_and_command(run):
    run_dir, _, _ = run
    (run_dir / "stage1" / "fold3" / "done.json").unlink()
    with pytest.raises(MissingOutputsError) as e:
        load_stage(run_dir, "stage1", N_FOLDS)
    assert isinstance(e.value, FileNotFoundError) and e.value.folds == [3]
    assert str(e.value) == (
        f"stage1 fold 3 is not finished in {run_dir}: run "
        f'"papermill notebooks/02_cv.ipynb out.ipynb -p fold 3 -p run_dir {run_dir}"'
    )


def test_missing_stage2_folds_name_the_refine_notebook(run):
    run_dir, _, _ = run
    for k in (0, 4):
        (run_dir / "stage2" / f"fold{k}" / "done.json").unlink()
    with pytest.raises(MissingOutputsError) as e:
        load_stage(run_dir, "stage2", N_FOLDS)
    assert e.value.folds == [0, 4]
    for k in (0, 4):
        assert f"stage2 fold {k} is not finished" in str(e.value)
        assert f"papermill notebooks/03_f1_refine.ipynb out.ipynb -p fold {k}" in str(e.value)


def test_done_json_without_csv_counts_as_missing(run):
    run_dir, _, _ = run
    (run_dir / "stage1" / "fold2" / "oof.csv").unlink()
    with pytest.raises(MissingOutputsError, match="fold 2 .*oof.csv missing despite done.json"):
        load_stage(run_dir, "stage1", N_FOLDS)


def _edit_oof(run_dir, k, edit):
    path = run_dir / "stage1" / f"fold{k}" / "oof.csv"
    write_csv(path, edit(pd.read_csv(path)))


def test_row_in_two_folds_is_caught(run):
    run_dir, _, _ = run
    extra = pd.read_csv(run_dir / "stage1" / "fold1" / "oof.csv").iloc[:1]
    _edit_oof(run_dir, 2, lambda f: pd.concat([f, extra]))
    with pytest.raises(
        ValueError, match=r"1 rows appear more than once \(row \d+ in folds \[1, 2\]"
    ):
        load_stage(run_dir, "stage1", N_FOLDS)


def test_missing_row_is_caught(run):
    run_dir, _, _ = run
    _edit_oof(run_dir, 0, lambda f: f.iloc[1:])
    with pytest.raises(ValueError, match="1 training rows are in no fold"):
        load_stage(run_dir, "stage1", N_FOLDS)


def test_test_ids_must_agree_across_folds(run):
    run_dir, _, _ = run
    path = run_dir / "stage1" / "fold4" / "test.csv"
    t = pd.read_csv(path)
    t.loc[0, "id"] = 99
    write_csv(path, t)
    with pytest.raises(ValueError, match="fold4's test ids differ from fold0's: 1 only in fold4"):
        load_stage(run_dir, "stage1", N_FOLDS)


def test_test_ids_in_another_order_are_aligned(run):
    run_dir, _, _ = run
    path = run_dir / "stage1" / "fold2" / "test.csv"
    t = pd.read_csv(path)
    write_csv(path, t.iloc[::-1])
    s = load_stage(run_dir, "stage1", N_FOLDS)
    assert np.allclose(s.test["fold2"], t["pred"])


# ----------------------------------------------------------------------------- scoring


def test_fold_table_matches_sklearn(run):
    run_dir, labels, folds = run
    stages = {s: load_stage(run_dir, s, N_FOLDS) for s in ("stage1", "stage2")}
    table = fold_table(stages)
    assert table["fold"].tolist() == [0, 1, 2, 3, 4, "mean", "oof"]
    for name, s in stages.items():
        pred = s.oof["pred"].to_numpy()
        per_fold = [roc_auc_score(labels[folds == k], pred[folds == k]) for k in range(N_FOLDS)]
        assert np.allclose(table[name].iloc[:N_FOLDS], per_fold)
        assert np.isclose(table[name].iloc[N_FOLDS], np.mean(per_fold))
        assert np.isclose(table[name].iloc[-1], roc_auc_score(labels, pred))
    assert table["n"].iloc[-1] == len(labels) and table["n"].iloc[:N_FOLDS].sum() == len(labels)


def test_rank_average_hand_case():
    got = rank_average([np.array([0.1, 0.4, 0.35, 0.8]), np.array([1, 2, 3, 4])])
    # ranks/4: a -> [1, 3, 2, 4]/4, b -> [1, 2, 3, 4]/4
    assert np.allclose(got, [0.25, 0.625, 0.625, 1.0])
    assert np.allclose(rank_average([np.array([0.5, 0.5, 0.9])]), [0.5, 0.5, 1.0])  # ties share


def test_fold_mean_averages_test_columns(run):
    run_dir, _, _ = run
    s = load_stage(run_dir, "stage1", N_FOLDS)
    b = fold_mean(s)
    assert np.allclose(b.test, s.test[[f"fold{k}" for k in range(N_FOLDS)]].mean(axis=1))
    assert np.array_equal(b.oof, s.oof["pred"]) and not b.fitted


# ----------------------------------------------------------------------------- blends


def stage(name: str, oof, test=None) -> Blend:
    """A stage's fold mean as ``fold_mean`` makes it, from arrays."""
    return Blend(name, np.asarray(oof, dtype=float), test, Mix.of({name: 1.0}))


def test_a_mix_is_a_convex_sum_of_the_stages():
    mix = Mix.blend("stage1", "stage2", 0.25)
    assert mix.as_dict() == {"stage1": 0.25, "stage2": 0.75} and str(mix) == (
        "0.25·stage1 + 0.75·stage2"
    )
    got = mix({"stage1": np.array([0.0, 1.0]), "stage2": np.array([1.0, 1.0])})
    np.testing.assert_allclose(got, [0.75, 1.0])
    assert Mix.blend("stage1", "stage2", 1.0).as_dict() == {"stage1": 1.0}  # a zero is left out
    assert Mix.mean(["a", "b", "c"]).as_dict() == pytest.approx(
        {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}
    )
    for bad in ({"a": 0.7}, {"a": 1.2, "b": -0.2}, {}):
        with pytest.raises(ValueError, match="expected >= 0, summing to 1"):
            Mix.of(bad)


def test_served_mix_reads_the_headline_and_runs_made_before_it():
    assert served_mix({"served_mix": {"stage1": 0.3, "stage2": 0.7}}).as_dict() == {
        "stage1": 0.3,
        "stage2": 0.7,
    }
    assert served_mix({"served_stage1_weight": 1.0}).as_dict() == {"stage1": 1.0}
    assert served_mix({"stage1_weight": 0.4}).as_dict() == {"stage1": 0.4, "stage2": 0.6}
    assert served_mix({"stage1_weight": None}).as_dict() == {"stage1": 0.5, "stage2": 0.5}


def test_stage_blend_picks_the_clearly_better_stage():
    rng = np.random.default_rng(1)
    n = 1000
    labels = rng.integers(0, 2, n)
    folds = np.arange(n) % N_FOLDS
    perfect = stage("a", labels + 0.5 * rng.random(n), rng.random(10))  # separates exactly
    noise = stage("b", 100 * rng.random(n), rng.random(10))  # any share of it spoils the order
    b = stage_blend(perfect, noise, labels, folds)
    assert b.mix.as_dict() == {"a": 1.0}
    assert {str(m) for m in b.fold_mixes.values()} == {"1·a"}
    assert auc(labels, b.oof) == 1.0 and b.test.shape == (10,)
    np.testing.assert_allclose(b.test, perfect.test)  # the mix of the test scores
    swapped = stage_blend(noise, perfect, labels, folds)
    assert swapped.mix.as_dict() == {"a": 1.0} and swapped.name == "weighted blend of b+a"
    no_test = stage_blend(stage("a", perfect.oof), stage("b", noise.oof), labels, folds)
    assert no_test.test is None


def test_a_blend_mixes_probabilities_as_serving_does():
    rng = np.random.default_rng(2)
    n = 500
    labels = rng.integers(0, 2, n)
    folds = np.arange(n) % N_FOLDS
    a = stage("stage1", 1 / (1 + np.exp(-(labels + rng.normal(size=n)))), rng.random(7))
    b = stage("stage2", 1 / (1 + np.exp(-(2 * labels + rng.normal(size=n) * 2))), rng.random(7))
    blend = stage_blend(a, b, labels, folds)
    scores = {"stage1": a.oof, "stage2": b.oof}
    np.testing.assert_allclose(blend.oof_in_sample, blend.mix(scores))
    np.testing.assert_allclose(blend.test, blend.mix({"stage1": a.test, "stage2": b.test}))
    for i, k in enumerate(range(N_FOLDS)):
        held = folds == k
        np.testing.assert_allclose(blend.oof[held], blend.fold_mixes[k](scores)[held])
        np.testing.assert_allclose(blend.fold_scores[i], blend.fold_mixes[k](scores))


def _fold_specific_case(seed=3):
    """Stage a is informative only on fold 0, stage b moderately everywhere, so fold 0's labels
    pull the pooled weight; a selection that peeked at them would change when they flip."""
    rng = np.random.default_rng(seed)
    n = 1000
    labels = rng.integers(0, 2, n)
    folds = np.arange(n) % N_FOLDS
    a = rng.normal(size=n) + np.where(folds == 0, 4.0, 0.0) * labels
    b = rng.normal(size=n) + 1.0 * labels
    return a, b, labels, folds


def _flip(labels, folds, k):
    flipped = labels.copy()
    flipped[folds == k] = 1 - flipped[folds == k]
    return flipped


def test_nested_weight_never_uses_the_folds_own_labels():
    a, b, labels, folds = _fold_specific_case()
    k = 0
    flipped = _flip(labels, folds, k)
    before = stage_blend(stage("a", a), stage("b", b), labels, folds)
    after = stage_blend(stage("a", a), stage("b", b), flipped, folds)
    assert after.fold_mixes[k] == before.fold_mixes[k]
    assert np.array_equal(after.oof[folds == k], before.oof[folds == k])
    # Not vacuous: the all-rows weight (which does see fold k) and the other folds' weights move.
    assert after.mix != before.mix
    assert any(after.fold_mixes[j] != before.fold_mixes[j] for j in range(1, N_FOLDS))


def test_honest_threshold_never_uses_the_folds_own_labels():
    a, b, labels, folds = _fold_specific_case()
    k = 2
    flipped = _flip(labels, folds, k)
    before, after = honest_best_f1(labels, b, folds), honest_best_f1(flipped, b, folds)
    assert after.fold_thresholds[k] == before.fold_thresholds[k]
    for j in range(N_FOLDS):
        assert before.fold_thresholds[j] == best_f1(labels[folds != j], b[folds != j])[1]
    # 2-D scores from a fitted blend: the threshold for fold k sits on the weight chosen
    # without fold k, so neither depends on fold k's labels.
    blend_before = stage_blend(stage("a", a), stage("b", b), labels, folds)
    blend_after = stage_blend(stage("a", a), stage("b", b), flipped, folds)
    t_before = honest_best_f1(labels, blend_before.fold_scores, folds).fold_thresholds[k]
    t_after = honest_best_f1(flipped, blend_after.fold_scores, folds).fold_thresholds[k]
    assert t_before == t_after


def _choices(a, b, labels, folds) -> dict[str, Blend]:
    sa, sb = stage("a", a), stage("b", b)
    return {"a": sa, "b": sb, "blend": stage_blend(sa, sb, labels, folds)}


def test_the_nested_final_choice_never_uses_the_folds_own_labels():
    a, b, labels, folds = _fold_specific_case()
    before = nested_choice(_choices(a, b, labels, folds), labels, folds)
    for k in range(N_FOLDS):
        flipped = _flip(labels, folds, k)
        after = nested_choice(_choices(a, b, flipped, folds), flipped, folds)
        assert after.picks[k] == before.picks[k]
        np.testing.assert_array_equal(after.oof[folds == k], before.oof[folds == k])
    # Not vacuous: fold 0's labels make a the best choice for the folds that see them only.
    assert before.picks[0] != before.picks[1]


def test_the_nested_choice_is_each_folds_best_on_the_other_folds():
    a, b, labels, folds = _fold_specific_case()
    blends = _choices(a, b, labels, folds)
    nested = nested_choice(blends, labels, folds)
    for i, k in enumerate(range(N_FOLDS)):
        rest = folds != k
        aucs = {n: auc(labels[rest], bl.scores_without(i)[rest]) for n, bl in blends.items()}
        assert nested.picks[k] == max(aucs, key=aucs.get)
        expected = blends[nested.picks[k]].scores_without(i)[~rest]
        np.testing.assert_array_equal(nested.oof[~rest], expected)
    assert nested.oof_auc == pytest.approx(auc(labels, nested.oof), abs=1e-12)
    # Choosing costs something: the nested figure is at most the best candidate's own.
    assert nested.oof_auc <= max(auc(labels, bl.oof) for bl in blends.values()) + 1e-12


def test_honest_f1_matches_manual_and_in_sample_is_labelled():
    rng = np.random.default_rng(4)
    n = 500
    labels = rng.integers(0, 2, n)
    folds = np.arange(n) % N_FOLDS
    scores = labels + rng.normal(size=n)
    r = honest_best_f1(labels, scores, folds)
    predicted = np.zeros(n, dtype=bool)
    for k in range(N_FOLDS):
        t = best_f1(labels[folds != k], scores[folds != k])[1]
        predicted[folds == k] = scores[folds == k] >= t
    tp = (predicted & (labels == 1)).sum()
    assert np.isclose(r.f1, 2 * tp / (predicted.sum() + labels.sum()))
    assert (r.f1_in_sample, r.threshold) == best_f1(labels, scores)
    assert r.f1 <= r.f1_in_sample  # in-sample threshold is optimal on these rows


def test_results_table_and_choose_final(run):
    run_dir, labels, folds = run
    stages = {s: load_stage(run_dir, s, N_FOLDS) for s in ("stage1", "stage2")}
    blends = candidates(stages)
    table = results_table(blends, labels, folds)
    assert len(table) == 4 and table["candidate"].tolist() == list(blends)
    assert table["mix"].tolist()[:3] == ["1·stage1", "1·stage2", "0.5·stage1 + 0.5·stage2"]
    fitted = table[table["fitted"]].iloc[0]
    blend = blends[fitted["candidate"]]
    assert len(fitted["fold_mixes"]) == N_FOLDS
    assert np.isclose(fitted["oof_auc"], roc_auc_score(labels, blend.oof))
    assert np.isclose(table["oof_auc"].iloc[0], roc_auc_score(labels, stages["stage1"].oof["pred"]))
    best = choose_final(table)
    assert best == table.loc[table["oof_auc"].idxmax(), "candidate"]
    assert best != "stage1 fold mean"  # stage 2 is built to be clearly better
    out = blends[best]
    assert out.test.shape == (60,) and np.array_equal(out.test_ids, stages["stage1"].test["id"])
    assert ((out.test >= 0) & (out.test <= 1)).all()


def test_an_extra_stage_blends_with_each_and_all(tmp_path):
    run_dir, labels, folds = make_run(
        tmp_path, strengths={"stage1": 1.0, "stage2": 2.0, "students": 1.5}
    )
    names = ("stage1", "stage2", "students")
    blends = candidates({s: load_stage(run_dir, s, N_FOLDS) for s in names})
    assert list(blends)[4:] == [
        "students fold mean",
        "weighted blend of stage1+students",
        "weighted blend of stage2+students",
        "mean of stage1+stage2+students",
    ]
    assert blends["mean of stage1+stage2+students"].mix == Mix.mean(names)


def write_test_file(tmp_path, runs, n=60):
    """The test file the synthetic runs score (make_run's ids are 5000..; a row's index is its
    ID), their test.csv files moved to those ids."""
    test_file = tmp_path / "test.txt"
    test_file.write_text("".join(f"句子{i}\n\n" for i in range(n)), encoding="utf-8")
    for run in runs:
        for path in run.glob("*/fold*/test.csv"):
            frame = pd.read_csv(path)
            write_csv(path, frame.assign(id=frame["id"] - 5000))
    return test_file


def test_the_headline_is_nested_and_the_served_figure_is_the_served_formula(tmp_path):
    from core.ensembling.ensemble import finalize

    run_dir, labels, folds = make_run(tmp_path)
    results = finalize(run_dir, N_FOLDS, write_test_file(tmp_path, [run_dir]))
    h = results.headline
    assert h["oof_auc"] == pytest.approx(auc(labels, results.nested.oof), abs=1e-12)
    assert h["final_oof_auc"] == pytest.approx(
        float(results.table.set_index("candidate").loc[h["final"], "oof_auc"])
    )
    assert set(h["final_picks"]) == {str(k) for k in range(N_FOLDS)}
    oof_final = pd.read_csv(run_dir / "ensemble" / "oof_final.csv")
    assert auc(oof_final["label"], oof_final["pred"]) == pytest.approx(h["oof_auc"], abs=1e-7)
    # The served formula on the stored out-of-fold scores is the served figure ...
    mix = served_mix(h)
    stages = {s: load_stage(run_dir, s, N_FOLDS) for s in ("stage1", "stage2")}
    scores = mix({s: stages[s].oof["pred"].to_numpy() for s in mix.stages})
    assert h["served_oof_auc"] == pytest.approx(auc(labels, scores), abs=1e-12)
    assert h["served"] == h["final"] and h["served_formula"] == str(mix)
    # ... and on the stages' test fold means it is the submission.
    submission = pd.read_csv(results.submission).sort_values("ID")
    means = {s: fold_mean(stages[s]).test for s in mix.stages}
    np.testing.assert_allclose(submission["Prediction"], mix(means), atol=1e-7)


# ----------------------------------------------------------------------------- across runs


def test_blend_runs_rank_averages_the_runs(tmp_path):
    # The same seed: the same labels and folds; a stronger stage 1 in run b.
    a, labels, _ = make_run(tmp_path / "a")
    b, _, _ = make_run(tmp_path / "b", strengths={"stage1": 3.0})
    blend = blend_runs([a, b], "stage1")
    sa, sb = load_stage(a, "stage1", N_FOLDS), load_stage(b, "stage1", N_FOLDS)
    np.testing.assert_allclose(blend.oof, rank_average([sa.oof["pred"], sb.oof["pred"]]))
    assert auc(labels, blend.oof) > auc(labels, sa.oof["pred"])  # the stronger run helps
    np.testing.assert_array_equal(blend.test_ids, sa.test["id"])
    tests = [fold_mean(s).test for s in (sa, sb)]
    np.testing.assert_allclose(blend.test, rank_average(tests))


def test_blend_runs_aligns_test_ids_in_another_order(tmp_path):
    (a, _, _), (b, _, _) = make_run(tmp_path / "a"), make_run(tmp_path / "b")
    for k in range(N_FOLDS):  # run b lists its test rows backwards
        path = b / "stage1" / f"fold{k}" / "test.csv"
        write_csv(path, pd.read_csv(path).iloc[::-1])
    blend = blend_runs([a, b], "stage1")
    # b holds the same predictions as a (same seed), so the blend must equal a's own ranks
    own = fold_mean(load_stage(a, "stage1", N_FOLDS)).test
    np.testing.assert_allclose(blend.test, rank_average([own]))


def test_blend_runs_refuses_other_folds_and_a_single_run(tmp_path):
    (a, _, _), (b, _, _) = make_run(tmp_path / "a"), make_run(tmp_path / "b", seed=1)
    with pytest.raises(ValueError, match="folds.csv"):
        blend_runs([a, b])
    with pytest.raises(ValueError, match="at least two runs"):
        blend_runs([a])


def test_finalize_blends_other_runs_without_fitting_anything(tmp_path):
    """A seed ensemble's (or blend_runs') members: the equal-weight rank averages of every run's
    stages join the candidates, unfitted (nothing chosen on the rows they are scored on), and
    the headline lists each member; the final choice still comes from the honest table."""
    from core.ensembling.ensemble import finalize

    (a, labels, _), (b, _, _) = (
        make_run(tmp_path / "a"),
        make_run(tmp_path / "b", strengths={"stage1": 3.0, "stage2": 2.5}),
    )
    test_file = write_test_file(tmp_path, [a, b])
    results = finalize(a, N_FOLDS, test_file, members=[("train_seed 1", b)])
    rows = results.table.set_index("candidate")
    name = "rank average of 2 runs' stage1"
    assert not rows.loc[name, "fitted"]
    sa, sb = load_stage(a, "stage1", N_FOLDS), load_stage(b, "stage1", N_FOLDS)
    expected = rank_average([sa.oof["pred"], sb.oof["pred"]])
    assert rows.loc[name, "oof_auc"] == pytest.approx(auc(labels, expected), abs=1e-12)
    assert "rank average of 2 runs' stage1+stage2" in rows.index
    members = results.headline["members"]
    assert [m["member"] for m in members] == ["this run", "train_seed 1"]
    assert members[1]["stage1_oof_auc"] == pytest.approx(auc(labels, sb.oof["pred"]))
    assert results.final == rows["oof_auc"].astype(float).idxmax()
    assert sorted(pd.read_csv(results.submission)["ID"]) == list(range(60))


# ----------------------------------------------------------------------- what mutants found
# Mutation testing (docs/robustness.md, "Mutants") found these behaviours unchecked.


def test_the_grids_auc_is_sklearns_with_ties_and_nan_for_one_class():
    from core.ensembling.candidates import _rank_auc

    rng = np.random.default_rng(7)
    for n_pos, n_neg in ((1, 50), (3, 50), (40, 50), (20, 1)):
        labels = np.r_[np.ones(n_pos), np.zeros(n_neg)].astype(int)
        scores = rng.integers(0, 6, labels.size) / 5  # many ties
        assert _rank_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert np.isnan(_rank_auc(np.ones(4, int), np.arange(4.0)))
    assert np.isnan(_rank_auc(np.zeros(4, int), np.arange(4.0)))


def test_rank_average_refuses_arrays_of_other_lengths():
    for scores in ([], [np.arange(3.0), np.arange(4.0)]):
        with pytest.raises(ValueError, match="at least one array, all of the same length"):
            rank_average(scores)


def test_tied_weights_go_to_the_one_nearest_an_even_mix():
    from core.ensembling.candidates import _pick_weight

    labels = np.array([0, 1, 0, 1, 1, 0])
    same = np.array([0.1, 0.9, 0.3, 0.6, 0.8, 0.2])  # every weight gives the same scores
    assert _pick_weight(same, same, labels, (0.0, 0.5, 1.0)) == 0.5
    assert _pick_weight(same, same, labels, (0.0, 0.25, 0.75, 1.0)) == 0.25  # then the smaller


def test_stage_blend_takes_two_folds_and_a_missing_test_side_gives_no_test():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 40)
    folds = np.arange(40) % 2
    a, b = stage("a", rng.random(40), rng.random(3)), stage("b", rng.random(40))
    blend = stage_blend(a, b, labels, folds)
    assert sorted(blend.fold_mixes) == [0, 1] and blend.test is None
    with pytest.raises(ValueError, match="at least two folds"):
        stage_blend(a, b, labels, np.zeros(40, int))
    with pytest.raises(ValueError, match="same length"):
        stage_blend(a, b, labels[:-1], folds)


def test_the_mean_blend_mixes_the_test_scores_and_keeps_their_ids(run):
    run_dir, _, _ = run
    from core.ensembling.candidates import mean_blend

    means = {s: fold_mean(load_stage(run_dir, s, N_FOLDS)) for s in ("stage1", "stage2")}
    blend = mean_blend(means)
    np.testing.assert_allclose(blend.test, (means["stage1"].test + means["stage2"].test) / 2)
    np.testing.assert_array_equal(blend.test_ids, means["stage1"].test_ids)


def test_candidates_search_the_grid_they_are_given(run):
    run_dir, _, _ = run
    stages = {s: load_stage(run_dir, s, N_FOLDS) for s in ("stage1", "stage2")}
    fitted = [b for b in candidates(stages, grid=(0.3,)).values() if b.fitted]
    assert fitted and all(str(b.mix) == "0.3·stage1 + 0.7·stage2" for b in fitted)


def test_stages_from_other_folds_or_test_files_are_refused_by_name(run):
    run_dir, _, _ = run
    stages = {s: load_stage(run_dir, s, N_FOLDS) for s in ("stage1", "stage2")}
    moved = dataclasses.replace(stages["stage2"], oof=stages["stage2"].oof.assign(fold=0))
    with pytest.raises(ValueError, match="stages stage1 and stage2 disagree on OOF column 'fold'"):
        fold_table({"stage1": stages["stage1"], "stage2": moved})
    other = dataclasses.replace(stages["stage2"], test=stages["stage2"].test.assign(id=-1))
    with pytest.raises(ValueError, match="stage1 and stage2 predict different test ids"):
        candidates({"stage1": stages["stage1"], "stage2": other})


def test_fold_table_columns_and_counts(run):
    run_dir, labels, folds = run
    table = fold_table({"stage1": load_stage(run_dir, "stage1", N_FOLDS)})
    assert table.columns.tolist() == ["fold", "n", "positives", "stage1"]
    assert table.index.tolist() == list(range(N_FOLDS + 2))
    assert table["positives"].iloc[:N_FOLDS].tolist() == [
        int(labels[folds == k].sum()) for k in range(N_FOLDS)
    ]
    assert pd.isna(table["n"].iloc[N_FOLDS]) and table["positives"].iloc[-1] == labels.sum()


def test_results_table_names_every_figure_and_each_folds_mix(run):
    run_dir, labels, folds = run
    stages = {s: load_stage(run_dir, s, N_FOLDS) for s in ("stage1", "stage2")}
    blends = candidates(stages)
    table = results_table(blends, labels, folds).set_index("candidate")
    for name, b in blends.items():
        row = table.loc[name]
        assert row["oof_auc_in_sample"] == pytest.approx(roc_auc_score(labels, b.oof_in_sample))
        f1_in, threshold = best_f1(labels, b.oof_in_sample)
        assert (row["f1_in_sample"], row["threshold"]) == (f1_in, threshold)
        scores = b.oof if b.fold_scores is None else b.fold_scores
        assert row["f1"] == honest_best_f1(labels, scores, folds).f1
        if b.fold_mixes is not None:
            assert row["fold_mixes"] == {k: str(m) for k, m in b.fold_mixes.items()}
    unmixed = Blend("no mix", blends["stage1 fold mean"].oof, None, None)
    assert results_table({"no mix": unmixed}, labels, folds)["mix"].iloc[0] is None
