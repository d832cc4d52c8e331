"""core.analysis.holdout: the split (stratified, deterministic, disjoint, complete), its
refusals as the command shows them, and scoring a finished run on rows none of its models saw."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from tiny_run import finished_run

from core import cli
from core.analysis import holdout
from core.analysis.holdout import HOLDOUT_FILE, SPLIT_FILE, TRAIN_FILE, model_kinds, split
from core.data.reviews import file_sha256, read_labelled
from core.serving import predict

CHARS = "的好吃不错服务环境菜味道很价格便宜贵差评推荐强烈一般还可以非常棒赞喜欢满意失望难再来"


def write_train(path: Path, n0: int = 40, n1: int = 20, seed: int = 0) -> Path:
    """A competition-format train file of ``n0`` rows of label 0 and ``n1`` of label 1, shuffled,
    its first two rows the same (a duplicate, as the real file has)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation([0] * n0 + [1] * n1)
    texts = ["".join(rng.choice(list(CHARS), rng.integers(5, 12))) for _ in labels]
    texts[1], labels[1] = texts[0], labels[0]
    path.write_text("".join(f"{y}\t{t}\n\n" for y, t in zip(labels, texts, strict=True)), "utf-8")
    return path


def rows(path: Path) -> list[str]:
    """The rows of a competition-format file (every other line, the blank ones checked)."""
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and all(line == "" for line in lines[1::2]), path
    return lines[0:-1:2]


def run_command(capfd, *argv) -> tuple[int, str, str]:
    """``python -m core.analysis.holdout *argv`` in-process: exit code, stdout, stderr."""
    with pytest.raises(SystemExit) as info:
        cli.run(holdout.main, [str(a) for a in argv])
    out, err = capfd.readouterr()
    return info.value.code, out, err


def refused(capfd, *argv) -> str:
    """The one ``error:`` line (exit 1) of a command that refuses its input, without ``error: ``."""
    code, _, err = run_command(capfd, *argv)
    assert code == 1, err
    [line] = err.splitlines()
    assert line.startswith("error: ")
    return line[len("error: ") :]


@pytest.fixture
def train(tmp_path) -> Path:
    return write_train(tmp_path / "train_shuffle.txt")


# -- split -----------------------------------------------------------------------------------------


def test_split_is_stratified_disjoint_and_complete(train, tmp_path):
    out = tmp_path / "dev"
    assert split(train, out, rows=15)
    source, kept, rest = rows(train), rows(out / HOLDOUT_FILE), rows(out / TRAIN_FILE)
    assert Counter(kept) + Counter(rest) == Counter(source)  # every row once, as a multiset
    # Disjoint and complete as rows of the source (it has a duplicate), each in the source's order.
    index = holdout.holdout_rows(read_labelled(train).labels, 15, 2020)
    assert kept == [source[i] for i in index]
    assert rest == [line for i, line in enumerate(source) if i not in set(index)]
    # Stratified: 40/60 and 20/60 of 15 rows; the rest keeps the same shares.
    assert Counter(line[0] for line in kept) == {"0": 10, "1": 5}
    assert Counter(line[0] for line in rest) == {"0": 30, "1": 15}
    assert read_labelled(out / TRAIN_FILE).texts == [r.split("\t")[1] for r in rest]  # readable
    record = json.loads((out / SPLIT_FILE).read_text(encoding="utf-8"))
    assert record["source_sha256"] == file_sha256(train)
    assert (record["seed"], record["rows"], record["source_rows"]) == (2020, 15, 60)
    assert record["holdout"] == {
        "file": HOLDOUT_FILE,
        "sha256": file_sha256(out / HOLDOUT_FILE),
        "rows": 15,
        "labels": {"0": 10, "1": 5},
    }
    assert record["train"]["sha256"] == file_sha256(out / TRAIN_FILE)
    assert record["train"]["labels"] == {"0": 30, "1": 15}


def test_split_is_deterministic_for_a_seed(train, tmp_path):
    split(train, tmp_path / "a", rows=15, seed=7)
    split(train, tmp_path / "b", rows=15, seed=7)
    split(train, tmp_path / "c", rows=15, seed=8)
    for name in (TRAIN_FILE, HOLDOUT_FILE, SPLIT_FILE):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / HOLDOUT_FILE).read_bytes() != (
        tmp_path / "c" / HOLDOUT_FILE
    ).read_bytes()


@pytest.mark.parametrize("counts, rows", [((9344, 4656), 2000), ((7, 3), 1), ((5, 5, 1), 4)])
def test_allocation_is_proportional_and_sums_to_rows(counts, rows):
    labels = np.repeat(np.arange(len(counts)), counts)
    take = holdout.allocation(labels, rows)
    assert sum(take.values()) == rows
    for label, n in enumerate(counts):
        assert abs(take[label] - n * rows / len(labels)) < 1
    if counts == (9344, 4656):
        assert take == {0: 1335, 1: 665}


def test_split_command_then_the_same_split_again_is_a_no_op(train, tmp_path, capfd):
    out = tmp_path / "dev"
    code, stdout, _ = run_command(capfd, "split", "--rows", 15, "--train", train, "--out", out)
    assert code == 0
    assert stdout.splitlines()[0] == (
        f"wrote {out / TRAIN_FILE} and {out / HOLDOUT_FILE}: 15 rows kept aside (10 of label 0, "
        "5 of label 1), 45 left"
    )
    assert f"--set train_path={out / TRAIN_FILE}" in stdout.splitlines()[1]
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    code, stdout, _ = run_command(capfd, "split", "--rows", 15, "--train", train, "--out", out)
    assert code == 0 and stdout.startswith(f"{out} already holds this split (")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


# -- split: bad input, one line each ---------------------------------------------------------------


@pytest.mark.parametrize(
    "given, expected",
    [
        ("0", "--rows=0: expected 1..55 for the 60 rows of {train} (at least 5 must stay for the "),
        ("56", "--rows=56: expected 1..55 for the 60 rows of {train} (at least 5 must stay for "),
        ("x", "--rows='x': expected an integer"),
    ],
)
def test_split_refuses_rows_out_of_range(train, tmp_path, capfd, given, expected):
    line = refused(capfd, "split", "--rows", given, "--train", train, "--out", tmp_path / "dev")
    assert line.startswith(expected.format(train=train)), line
    assert not (tmp_path / "dev").exists()


def test_split_refuses_a_holdout_without_one_label(tmp_path, capfd):
    train = write_train(tmp_path / "train.txt", n0=58, n1=2)
    line = refused(capfd, "split", "--rows", 1, "--train", train, "--out", tmp_path / "dev")
    assert line == (
        f"--rows=1: a holdout of 1 rows of {train} ({{'0': 58, '1': 2}} per label) has no row of "
        "label 1, and AUC needs both labels; pass more rows"
    )


def test_split_refuses_a_missing_or_malformed_train_file(tmp_path, capfd):
    missing = tmp_path / "nope.txt"
    line = refused(capfd, "split", "--rows", 2, "--train", missing, "--out", tmp_path / "dev")
    assert line.startswith(f"{missing}: not found; expected the data file at {missing}")
    bad = tmp_path / "bad.txt"
    bad.write_text("1\t好吃\n\n2\t不错\n\n", encoding="utf-8")
    line = refused(capfd, "split", "--rows", 1, "--train", bad, "--out", tmp_path / "dev")
    assert line.startswith(f"{bad}, line 3: expected 'label<TAB>text' with label 0 or 1, found ")
    csv = tmp_path / "train.csv"  # a CSV text may hold a tab, which the text format cannot
    csv.write_text('content,label\n好吃,1\n"不\t错",0\n' + "很好,1\n一般,0\n" * 4, "utf-8")
    line = refused(capfd, "split", "--rows", 2, "--train", csv, "--out", tmp_path / "dev")
    assert line.startswith(f"{csv}, line 3: expected a text without tabs or line breaks")
    assert not (tmp_path / "dev").exists()


def test_split_refuses_a_folder_holding_another_split(train, tmp_path, capfd):
    out = tmp_path / "dev"
    split(train, out, rows=15)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    line = refused(capfd, "split", "--rows", 12, "--train", train, "--out", out)
    assert line == (
        f"--out {out}: holds another split (train.txt differs: split.json says 15 rows of "
        f"{train} at seed 2020), not 12 rows of {train} at seed 2020; pass another --out, or "
        f"delete {out} to split anew (a run trained on its train.txt then no longer has its "
        "holdout)"
    )
    line = refused(capfd, "split", "--rows", 15, "--seed", 3, "--train", train, "--out", out)
    assert line.startswith(f"--out {out}: holds another split (")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched
    (out / SPLIT_FILE).unlink()
    (out / TRAIN_FILE).write_text("0\t别的\n\n", encoding="utf-8")  # not made by the command
    line = refused(capfd, "split", "--rows", 15, "--train", train, "--out", out)
    assert line.startswith(f"--out {out}: holds another split (train.txt differs: not written ")


# -- score -----------------------------------------------------------------------------------------


def json_run(outputs: Path, train_path: Path, name: str = "r") -> Path:
    """A finished run as far as the holdout checks read it: run.json naming its training file."""
    run = outputs / "runs" / name
    (run / "ensemble").mkdir(parents=True)
    (run / "ensemble" / "results.json").write_text(json.dumps({"headline": {}}))
    record = {"train_path": str(train_path), "train_sha256": file_sha256(train_path), "maxlen": 20}
    (run / "run.json").write_text(json.dumps(record))
    return run


@pytest.fixture
def dev(train, tmp_path) -> Path:
    split(train, tmp_path / "dev", rows=15)
    return tmp_path / "dev"


def test_score_every_model_kind_of_the_run(dev, tmp_path, monkeypatch, capfd):
    """The ensemble always; "distilled" once the run has distilled/done.json, asked of
    core.serving.predict.score by name (stubbed here: the distilled model is not written yet)."""
    run = json_run(tmp_path / "outputs", dev / TRAIN_FILE)
    calls = []

    def fake_score(run_dir, texts, batch_size=256, **kwargs):
        calls.append(kwargs.get("model", "ensemble"))
        shift = {"ensemble": 0, "distilled": 7}[calls[-1]]
        return pd.DataFrame(
            {"text": texts, "probability": [(len(t) * 13 + shift) % 17 / 17 for t in texts]}
        )

    monkeypatch.setattr(predict, "score", fake_score)
    assert model_kinds(run) == ["ensemble"]
    (run / "distilled").mkdir()
    (run / "distilled" / "done.json").write_text("{}")
    assert model_kinds(run) == ["ensemble", "distilled"]
    code, out, _ = run_command(
        capfd,
        "score",
        "--holdout",
        dev / HOLDOUT_FILE,
        "--run",
        run,
        "--output-dir",
        tmp_path / "outputs",
    )
    assert code == 0 and calls == ["ensemble", "distilled"]
    data = read_labelled(dev / HOLDOUT_FILE)
    results = json.loads((run / "holdout" / "results.json").read_text(encoding="utf-8"))
    for kind in ("ensemble", "distilled"):
        expected = roc_auc_score(
            data.labels, fake_score(run, data.texts, model=kind)["probability"]
        )
        assert results["models"][kind] == {"auc": pytest.approx(expected), "n_rows": 15}
    assert results["check"] == "the run trained on the split's train.txt"
    assert results["split"]["holdout"]["sha256"] == file_sha256(dev / HOLDOUT_FILE)
    trained = {line.split("\t")[1] for line in rows(dev / TRAIN_FILE)}
    assert results["texts_in_training"] == sum(t in trained for t in data.texts)
    lines = out.splitlines()
    assert lines[0] == f"{dev / HOLDOUT_FILE}, 15 rows: {holdout.RULE}"
    head = next(i for i, line in enumerate(lines) if line.startswith("model "))
    assert lines[head].split() == ["model", "AUC", "vs", "ensemble", "rows"]
    assert [line.split()[0] for line in lines[head + 1 :]] == ["ensemble", "distilled", "wrote"]


def test_score_refuses_a_run_trained_on_the_holdouts_source(dev, train, tmp_path, capfd):
    outputs = tmp_path / "outputs"
    run = json_run(outputs, train)
    line = refused(
        capfd, "score", "--holdout", dev / HOLDOUT_FILE, "--run", run, "--output-dir", outputs
    )
    assert line == (
        f"run {run} trained on {train}, which {dev / HOLDOUT_FILE} was taken out of: every "
        f"holdout row was in its training. Score a run of {dev / TRAIN_FILE}: make it with "
        f"python -m core.pipeline --set train_path={dev / TRAIN_FILE}"
    )
    other = json_run(outputs, dev / TRAIN_FILE, name="of-the-split")  # the hint names it
    line = refused(
        capfd, "score", "--holdout", dev / HOLDOUT_FILE, "--run", run, "--output-dir", outputs
    )
    assert line.endswith(f"Score a run of {dev / TRAIN_FILE}: --run {other}")
    assert not (run / "holdout").exists()


def test_score_refuses_a_holdout_whose_texts_the_run_trained_on(train, tmp_path, capfd):
    """Without a split.json beside it, nothing says where a holdout came from: any of its texts
    among the run's training rows is refused."""
    outputs = tmp_path / "outputs"
    run = json_run(outputs, train)
    mine = tmp_path / "mine" / "holdout.txt"
    mine.parent.mkdir()
    source = rows(train)
    mine.write_text(
        "".join(f"{r}\n\n" for r in source[10:14]) + "1\t从未见过\n\n0\t没见过的\n\n", "utf-8"
    )
    line = refused(capfd, "score", "--holdout", mine, "--run", run, "--output-dir", outputs)
    assert line.startswith(
        f"{mine}, line 1: 4 of its 6 texts are training rows of run {run} ({train}), and a "
        "holdout figure must be on rows no model of the run saw;"
    )


def test_score_refuses_an_edited_holdout_and_a_missing_one(dev, tmp_path, capfd):
    outputs = tmp_path / "outputs"
    run = json_run(outputs, dev / TRAIN_FILE)
    with (dev / HOLDOUT_FILE).open("a", encoding="utf-8") as f:
        f.write(rows(dev / TRAIN_FILE)[0] + "\n\n")  # a training row slipped in
    line = refused(
        capfd, "score", "--holdout", dev / HOLDOUT_FILE, "--run", run, "--output-dir", outputs
    )
    assert line.startswith(f"{dev / HOLDOUT_FILE}: changed since {dev / SPLIT_FILE} recorded it")
    missing = tmp_path / "nope" / HOLDOUT_FILE
    line = refused(capfd, "score", "--holdout", missing, "--run", run, "--output-dir", outputs)
    assert line.startswith(f"--holdout {missing}: not found; make it first with python -m ")


def test_score_on_a_tiny_finished_run_is_sklearns_auc_of_predict(dev, tmp_path, tiny_bert_dir):
    """Real scoring: every fold of a finished run (random weights: tiny_run.finished_run)."""
    outputs = tmp_path / "outputs"
    run = finished_run(outputs, tiny_bert_dir)
    record = json.loads((run / "run.json").read_text())
    train = dev / TRAIN_FILE
    record.update(train_path=str(train), train_sha256=file_sha256(train))
    (run / "run.json").write_text(json.dumps(record))
    results = holdout.score(run, dev / HOLDOUT_FILE, outputs)
    data = read_labelled(dev / HOLDOUT_FILE)
    probability = predict.score(run, data.texts)["probability"]
    assert probability.std() > 0  # the figure below is not a tie of constant scores
    assert results["models"]["ensemble"]["auc"] == pytest.approx(
        roc_auc_score(data.labels, probability), abs=1e-12
    )
    assert list(results["models"]) == ["ensemble"]
    saved = json.loads((run / "holdout" / "results.json").read_text(encoding="utf-8"))
    assert saved["models"] == results["models"] and saved["holdout_sha256"] == file_sha256(
        dev / HOLDOUT_FILE
    )
