"""core.serving.export: a finished run as one SavedModel (and TFLite file) on raw text.

The slow tests share a copy of the session's tiny default run (conftest.py) and one export of each
format. Its served mix is set to 0.3·stage1 + 0.7·stage2 so that both stages' heads count in every
probability (the tiny run's own choice may be one stage alone).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tiny_run import BANNED, N_FOLDS, clean_python, copy_outputs

from core.config import ROOT, Settings
from core.data.reviews import file_sha256, read_unlabelled
from core.data.tokenizer import CharTokenizer, load_vocab
from core.io import read_json, write_json
from core.serving import export

WEIGHT = 0.3
# Emoji, Latin letters (none in the tiny vocabulary), full-width and no-break spaces, a line
# separator, an accent precomposed and combining (no normalisation), NUL, over-long, empty.
ODD = [
    "",
    "好吃😀👍",
    "Good好吃abc",
    "好\u3000吃",
    "\u00a0好\u2028",
    " ",
    "\t\n",
    "é好e\u0301",
    "\x00好",
    "好吃" * 30,
    "服务很好，下次再来！",
]


def encode(bert_dir: Path, texts: list[str], maxlen: int = 20) -> list[list[int]]:
    tok = CharTokenizer(load_vocab(bert_dir), maxlen)
    return [tok.encode_ids(t).tolist() for t in texts]


def unpad(rows) -> list[list[int]]:
    """Rows of a 0-padded id matrix without their padding ([PAD] is id 0, never a character)."""
    return [[i for i in row if i != 0] for row in np.asarray(rows).tolist()]


# -- the tokenizer as data: fast, on a vocabulary with Latin letters and a space token -------------

SPECIAL = ["[PAD]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="module")
def latin_bert_dir(tmp_path_factory):
    # " " is a token here: in-vocabulary whitespace keeps its own id, other whitespace -> [unused1].
    tokens = SPECIAL + ["好", "吃", "a", "B", " ", "😀", "é"]
    folder = tmp_path_factory.mktemp("latin")
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def latin_table(latin_bert_dir):
    return export.char_table(latin_bert_dir, maxlen=4)


def test_char_table_is_the_tokenizer(latin_table):
    table = latin_table
    assert (table["cls"], table["sep"], table["unk"], table["maxlen"]) == (3, 4, 2, 4)
    chars = table["chars"]
    assert chars["好"] == 6 and chars["a"] == 8 and chars["B"] == 9 and chars[" "] == 10
    assert chars["😀"] == 11 and chars["é"] == 12
    assert chars["\u3000"] == chars["\t"] == chars["\n"] == chars["\u00a0"] == 1  # [unused1]
    assert "b" not in chars and "A" not in chars and "\u0301" not in chars  # -> [UNK], no folding
    assert set(chars) == {*"好吃aB 😀é", *(c for c in chars if chars[c] == 1)}


def test_lite_tokenizer_matches_core_tokenizer(latin_bert_dir, latin_table, tmp_path):
    from core.serving.lite_tokenizer import Tokenizer

    write_json(tmp_path / "lite" / "tokens.json", latin_table)
    texts = ODD + ["aAbB", "好 吃", "好\u3000吃", "e\u0301"]
    ids = Tokenizer(tmp_path / "lite")(texts)
    assert ids.dtype == np.int32 and ids.shape == (len(texts), 6)
    assert unpad(ids) == encode(latin_bert_dir, texts, maxlen=4)
    assert Tokenizer(tmp_path / "lite")([]).shape == (0, 2)


def test_graph_tokenizer_matches_core_tokenizer(latin_bert_dir, latin_table):
    import tensorflow as tf

    texts = ODD + ["aAbB", "好 吃", "好\u3000吃", "e\u0301"]
    module = export.graph_tokenizer(latin_table)
    ids = module.token_ids(tf.constant(texts)).numpy()
    assert ids.shape == (len(texts), 6)  # padded to the batch's longest: [CLS] + 4 + [SEP]
    assert unpad(ids) == encode(latin_bert_dir, texts, maxlen=4)
    assert module.token_ids(tf.constant(["好"])).numpy().tolist() == [[3, 6, 4]]


# -- bad input: one clear line, before any model is built --------------------------------------


@pytest.fixture
def scratch():
    """A folder inside outputs/ (runs and exports must live there), removed afterwards."""
    path = ROOT / "outputs" / f"test-{uuid.uuid4().hex[:12]}"
    path.mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def fake_run(folder: Path, finished: bool) -> Path:
    """A run folder with run.json and every fold's files (empty), and results when finished."""
    write_json(
        folder / "run.json",
        {
            "n_folds": 2,
            "maxlen": 20,
            "train_sha256": "0" * 64,
            "bert_sha256": "1" * 64,
            "bert_dir": "x",
        },
    )
    for path in export.fold_files(folder, 2):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    if finished:
        write_json(folder / "ensemble" / "results.json", {"headline": {"oof_auc": 0.9}})
    return folder


def export_error(argv) -> str:
    with pytest.raises(SystemExit) as e:
        export.main(argv)
    message = str(e.value.code)  # core.cli prints it as one "error: <message>" line
    assert message and "\n" not in message, message
    return message


def test_run_missing(scratch):
    message = export_error(["--run", str(scratch / "nope"), "--out", str(scratch / "x")])
    assert "nope" in message and "no such folder" in message and "outputs/runs/<run>" in message
    (scratch / "empty").mkdir()
    message = export_error(["--run", str(scratch / "empty"), "--out", str(scratch / "x")])
    assert "no run.json" in message and "not a run folder" in message


def test_run_unfinished(scratch):
    run = fake_run(scratch / "run", finished=False)
    message = export_error(["--run", str(run), "--out", str(scratch / "x")])
    assert "is not finished" in message and "ensemble/results.json is missing" in message
    (run / "stage2" / "fold1" / "head.h5").unlink()
    write_json(run / "ensemble" / "results.json", {"headline": {}})
    message = export_error(["--run", str(run), "--out", str(scratch / "x")])
    assert "stage2/fold1/head.h5 is missing" in message and "core.pipeline" in message
    assert not (scratch / "x").exists()


def test_out_outside_outputs(scratch, tmp_path):
    run = fake_run(scratch / "run", finished=True)
    message = export_error(["--run", str(run), "--out", str(tmp_path / "model")])
    assert str(tmp_path / "model") in message and "inside the output folder" in message
    message = export_error(["--run", str(run), "--out", str(run / "export")])
    assert "inside the run folder" in message


def test_existing_out(scratch):
    run = fake_run(scratch / "run", finished=True)
    (scratch / "file").write_text("x")
    message = export_error(["--run", str(run), "--out", str(scratch / "file")])
    assert "is a file" in message
    (scratch / "other" / "notes").mkdir(parents=True)
    message = export_error(["--run", str(run), "--out", str(scratch / "other")])
    assert "notes" in message and "pass a new folder" in message
    (scratch / "exp" / "1").mkdir(parents=True)
    (scratch / "exp" / "1" / "saved_model.pb").write_bytes(b"")
    message = export_error(["--run", str(run), "--out", str(scratch / "exp"), "--version", "1"])
    assert "exp/1 exists" in message and "omit --version" in message and "(2)" in message
    message = export_error(["--run", str(run), "--out", str(scratch / "exp"), "--format", "tflite"])
    assert "version 1" in message and "no tflite export" in message


def test_next_version():
    out = Settings().output_dir / f"test-{uuid.uuid4().hex[:12]}"
    assert export.next_version(out, "savedmodel") == 1
    try:
        for v in (1, 3):
            (out / str(v)).mkdir(parents=True)
            (out / str(v) / "saved_model.pb").write_bytes(b"")
            (out / f"{v}.json").write_text("{}")
        (out / ".3.abc.tmp").mkdir()  # an interrupted export's leftover is no version
        assert export.next_version(out, "savedmodel") == 4
        assert export.next_version(out, "savedmodel", version=2) == 2
    finally:
        shutil.rmtree(out)


def test_command_line_error_is_one_line(scratch):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "core.serving.export",
            "--run",
            str(scratch / "nope"),
            "--out",
            str(scratch / "x"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "no such folder" in done.stderr


# -- a tiny finished run and its exports ---------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tiny_run, tiny_outputs):
    """A copy of the session's tiny default run (inside the repository's outputs/, export's
    rule) whose served mix is set to 0.3·stage1 + 0.7·stage2; exports go beside it."""
    outputs = tiny_outputs.with_name(f"{tiny_outputs.name}-export")
    copy = copy_outputs(tiny_run, outputs)
    results = read_json(copy.run_dir / "ensemble" / "results.json")
    results["headline"]["served_mix"] = {"stage1": WEIGHT, "stage2": 1 - WEIGHT}
    write_json(copy.run_dir / "ensemble" / "results.json", results)
    yield {"run": copy.run_dir, "settings": copy.settings, "outputs": outputs}
    shutil.rmtree(outputs, ignore_errors=True)


@pytest.fixture(scope="module")
def saved_model(exported) -> Path:
    return export.export(exported["run"], exported["outputs"] / "export" / "tiny")


@pytest.fixture(scope="module")
def lite_model(exported) -> Path:
    return export.export(exported["run"], exported["outputs"] / "export" / "lite", "tflite")


@pytest.fixture(scope="module")
def reference(exported):
    """core.serving.predict.score on the whole tiny test file and the odd sentences."""
    from core.serving.predict import score

    texts = read_unlabelled(exported["settings"].test_path).texts + ODD
    return score(exported["run"], texts)


@pytest.mark.slow
def test_layout_and_record(saved_model, exported):
    run = exported["run"]
    assert saved_model.name == "1"
    assert (saved_model / "saved_model.pb").is_file()
    assert (saved_model / "variables" / "variables.index").is_file()
    record = read_json(saved_model.parent / "1.json")
    assert read_json(saved_model / "assets" / "export.json") == record
    run_json, headline = read_json(run / "run.json"), read_json(run / "ensemble/results.json")
    assert record["run"] == run.name and record["format"] == "savedmodel"
    assert record["oof_auc"] == headline["headline"]["served_oof_auc"]
    assert record["nested_oof_auc"] == headline["headline"]["served_nested_oof_auc"]
    assert record["mix"] == {"stage1": WEIGHT, "stage2": 1 - WEIGHT}
    assert (
        record["train_sha256"]
        == run_json["train_sha256"]
        == file_sha256(exported["settings"].train_path)
    )
    assert record["bert_sha256"] == run_json["bert_sha256"]
    weights = record["fold_weights_sha256"]
    assert len(weights) == 2 * N_FOLDS
    assert weights["stage2/fold1/head.h5"] == file_sha256(run / "stage2/fold1/head.h5")
    assert not [p for p in saved_model.parent.rglob(".*")]  # no temporary leftovers


@pytest.mark.slow
def test_savedmodel_matches_predict_without_core(saved_model, reference, exported, tmp_path):
    code = f"""
import json, sys
import tensorflow as tf
texts = json.loads(sys.stdin.read())
model = tf.saved_model.load({str(saved_model)!r})
serve = model.signatures["serving_default"]
out = serve(texts=tf.constant(texts))
print(json.dumps({{
    "probability": out["probability"].numpy().tolist(),
    "fold_probability": out["fold_probability"].numpy().tolist(),
    "alone": [float(serve(texts=tf.constant([t]))["probability"][0]) for t in texts[-12:]],
    "empty": list(serve(texts=tf.constant([], tf.string))["probability"].shape),
    "ids": model.tokenizer.token_ids(tf.constant(texts[-12:])).numpy().tolist(),
    "info": model.export_info.asset_path.numpy().decode(),
    "modules": sorted(m for m in sys.modules if m.split(".")[0] in {BANNED!r}),
}}))
"""
    texts = reference["text"].tolist()
    got = clean_python(code, json.dumps(texts), tmp_path)
    assert got["modules"] == []
    expected = reference["probability"].to_numpy()
    assert np.abs(np.array(got["probability"]) - expected).max() <= 1e-5
    # One at a time (no padding) gives what the batch gave: padding is masked everywhere.
    assert np.abs(np.array(got["alone"]) - expected[-12:]).max() <= 1e-5
    assert got["empty"] == [0]
    assert unpad(got["ids"]) == encode(exported["settings"].bert_dir, texts[-12:])
    assert read_json(got["info"])["run"] == exported["run"].name
    # Each fold's own column, on each stage's mix, is that fold's model: the ensemble's mean.
    folds = np.array(got["fold_probability"])
    assert folds.shape == (len(texts), N_FOLDS)
    np.testing.assert_allclose(folds.mean(axis=1), expected, atol=1e-5)
    mix = WEIGHT * reference["stage1"] + (1 - WEIGHT) * reference["stage2"]
    np.testing.assert_allclose(expected, mix, atol=1e-6)
    assert np.abs(reference["stage1"] - reference["stage2"]).max() > 1e-3  # both stages count


@pytest.mark.slow
def test_fold_probability_is_the_runs_own_out_of_fold_prediction(saved_model, exported):
    """On the training rows, each fold's column matches the run's oof.csv for that fold's rows."""
    import tensorflow as tf

    from core.data.reviews import read_labelled

    run = exported["run"]
    texts = read_labelled(exported["settings"].train_path).texts
    serve = tf.saved_model.load(str(saved_model)).signatures["serving_default"]
    folds = serve(texts=tf.constant(texts))["fold_probability"].numpy()
    for k in range(N_FOLDS):
        oof = [pd.read_csv(run / s / f"fold{k}" / "oof.csv") for s in ("stage1", "stage2")]
        mix = WEIGHT * oof[0]["pred"] + (1 - WEIGHT) * oof[1]["pred"]
        np.testing.assert_allclose(folds[oof[0]["row"], k], mix, atol=1e-5)


@pytest.mark.slow
def test_second_export_is_version_2_and_failure_leaves_nothing(saved_model, exported, monkeypatch):
    def interrupted(module, path):
        (path / "variables").mkdir(parents=True)
        (path / "saved_model.pb").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "build_module", lambda *args: None)  # the model is not the point
    monkeypatch.setattr(export, "write_savedmodel", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export.export(exported["run"], saved_model.parent)
    assert sorted(p.name for p in saved_model.parent.iterdir()) == ["1", "1.json"]
    fresh = exported["outputs"] / "export" / "fresh"
    with pytest.raises(KeyboardInterrupt):
        export.export(exported["run"], fresh)
    assert not fresh.exists()  # the folder it made is gone too
    monkeypatch.undo()
    second = export.export(exported["run"], saved_model.parent)
    assert second.name == "2" and read_json(saved_model.parent / "2.json")["version"] == 2


@pytest.mark.slow
def test_tflite_runs_without_core(lite_model, reference, exported, tmp_path):
    assert sorted(p.name for p in lite_model.iterdir()) == [
        "export.json",
        "model.tflite",
        "tokenizer.py",
        "tokens.json",
    ]
    assert read_json(lite_model / "export.json")["format"] == "tflite"
    code = f"""
import json, sys
sys.path.insert(0, {str(lite_model)!r})
from tokenizer import TFLiteModel
texts = json.loads(sys.stdin.read())
model = TFLiteModel()
out = model(texts)
print(json.dumps({{
    "probability": out["probability"].tolist(),
    "folds": list(out["fold_probability"].shape),
    "alone": [float(model([t])["probability"][0]) for t in texts[-12:]],
    "empty": list(model([])["probability"].shape),
    "ids": model.tokenize(texts[-12:]).tolist(),
    "modules": sorted(m for m in sys.modules if m.split(".")[0] in {BANNED!r}),
}}))
"""
    texts = reference["text"].tolist()
    got = clean_python(code, json.dumps(texts), tmp_path)
    assert got["modules"] == []
    assert unpad(got["ids"]) == encode(exported["settings"].bert_dir, texts[-12:])
    expected = reference["probability"].to_numpy()
    # int8 weights move probabilities a little (~1e-3 on this tiny random model), never much.
    diff = np.abs(np.array(got["probability"]) - expected)
    assert 0 < diff.max() <= 0.02, diff.max()
    assert np.abs(np.array(got["alone"]) - np.array(got["probability"][-12:])).max() <= 1e-4
    assert got["folds"] == [len(texts), N_FOLDS] and got["empty"] == [0]
