"""What every notebook checks in its first code cell, before any work, run in this process
(``tiny_run.first_cells``: the parameters cell, papermill's injected cell, the first code cell).

Each bad input stops there with the error the main job gives, and leaves nothing under the output
folder. One papermill route per kind of error stays in tests/test_cli.py (a kernel, its error
line, no start-up noise); here every notebook is held to the same checks without a kernel.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tiny_run import first_cells, make_tiny_inputs

from core.config import ConfigError
from core.data.reviews import DataError
from core.ensembling.fold_outputs import MissingOutputsError
from core.runs.folder import MissingStageError, RunMismatchError, open_run
from core.weights import BertDirError

NOTEBOOKS = {  # notebook: the settings it needs on (its step is off by default)
    "00_pretrain": {},
    "01_eda": {},
    "02_cv": {},
    "02b_students": {"students_enabled": True},
    "03_f1_refine": {},
    "04_ensemble": {},
    "05_errors": {},
    "06_distill": {"distill_enabled": True},
}
FOLDED = ("02_cv", "02b_students", "03_f1_refine")  # a fold parameter, 0 by default


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return make_tiny_inputs(tmp_path_factory.mktemp("start"), n_train=30, n_test=5)


@pytest.fixture
def outputs(tmp_path) -> Path:
    return tmp_path / "outputs"


def params(small, outputs: Path, notebook: str, **extra) -> dict:
    values = {
        "train_path": str(small.train_path),
        "test_path": str(small.test_path),
        "bert_dir": str(small.bert_dir),
        "output_dir": str(outputs),
        "n_folds": 2,
        **NOTEBOOKS[notebook],
        **extra,
    }
    return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_an_unknown_parameter_is_refused(small, outputs, notebook):
    """papermill only warns about one and the notebook would train with the default."""
    with pytest.raises(ConfigError) as e:
        first_cells(notebook, params(small, outputs, notebook, stage1_lrr=0.001))
    assert str(e.value).startswith(
        "notebook parameters: unknown parameter 'stage1_lrr' (did you mean 'stage1_lr'?)"
    )
    assert "fix the -p name or the key in the -f file" in str(e.value)
    assert not outputs.exists()


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_a_bad_setting_is_refused(small, outputs, notebook):
    with pytest.raises(ConfigError, match=r"^setting stage2_lr=5: expected a number in \(0, 1\)"):
        first_cells(notebook, params(small, outputs, notebook, stage2_lr=5))
    assert not outputs.exists()


@pytest.mark.parametrize("notebook", [*FOLDED, "06_distill"])
def test_a_fold_out_of_range_is_refused(small, outputs, notebook):
    with pytest.raises(ConfigError, match=r"fold=7: expected an integer in 0\.\.1 \(n_folds=2\)"):
        first_cells(notebook, params(small, outputs, notebook, fold=7))
    assert not outputs.exists()


@pytest.mark.parametrize("notebook", NOTEBOOKS)
@pytest.mark.parametrize("damage", ["missing", "no vocab"])
def test_a_bad_bert_dir_is_the_main_jobs_error(small, outputs, tmp_path, notebook, damage):
    bert = tmp_path / "bert"
    if damage == "no vocab":
        shutil.copytree(small.bert_dir, bert)
        (bert / "vocab.txt").unlink()
    given = params(small, outputs, notebook, bert_dir=bert, run_dir=outputs / "runs" / "mine")
    with pytest.raises(BertDirError) as e:
        first_cells(notebook, given)
    if damage == "missing":
        assert str(e.value).startswith(f"{bert}: expected a BERT folder, found no such ")
    else:
        assert str(e.value) == (
            f"{bert / 'vocab.txt'}: expected this file, found it missing; copy it again from "
            f"{small.bert_dir}, or point bert_dir at another folder"
        )
    assert not outputs.exists()


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_a_bad_training_file_is_refused(small, outputs, tmp_path, notebook):
    bad = tmp_path / "bad.txt"
    bad.write_text("1\t好吃\n\n2\t不错\n\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{bad}, line 3: expected 'label<TAB>"):
        first_cells(notebook, params(small, outputs, notebook, train_path=bad))
    assert not outputs.exists()


@pytest.mark.parametrize("notebook", ["02_cv", "02b_students", "06_distill"])
def test_a_fine_tuning_notebook_before_stage0_names_its_command(small, outputs, notebook):
    with pytest.raises(MissingStageError) as e:
        first_cells(notebook, params(small, outputs, notebook))
    assert str(e.value).startswith(f"{outputs / 'steps'}/stage0-")
    assert "papermill notebooks/00_pretrain.ipynb out.ipynb" in str(e.value)
    assert not outputs.exists()


def test_the_ensemble_before_the_folds_names_their_commands(small, outputs):
    with pytest.raises(MissingOutputsError) as e:
        first_cells("04_ensemble", params(small, outputs, "04_ensemble", stage0_epochs=0))
    assert str(e.value).startswith(f"stage1 fold 0 is not finished in {outputs / 'runs'}/run-")
    assert "papermill notebooks/02_cv.ipynb out.ipynb" in str(e.value)
    assert not outputs.exists()


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_a_run_folder_made_differently_is_refused(small, outputs, notebook):
    from core.config import from_values
    from core.data.reviews import read_labelled

    given = params(small, outputs, notebook, run_dir=str(outputs / "runs" / "mine"))
    made = from_values({k: v for k, v in given.items() if k != "run_dir"}, "test")
    open_run(outputs / "runs" / "mine", made, read_labelled(small.train_path).ids)
    before = sorted(p.name for p in (outputs / "runs" / "mine").iterdir())
    with pytest.raises(RunMismatchError, match=r"train_seed: was 2020, now 7"):
        first_cells(notebook, {**given, "train_seed": 7})
    assert sorted(p.name for p in (outputs / "runs" / "mine").iterdir()) == before
