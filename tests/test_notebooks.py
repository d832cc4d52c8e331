"""The committed notebooks: papermill reads every parameter, and no outputs are committed."""

from __future__ import annotations

import ast
import json

import papermill as pm
import pytest

from core.config import NOTEBOOKS, ROOT

NOTEBOOK_PATHS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _cells(path):
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _parameters_cell_names(path) -> list[str]:
    tagged = [c for c in _cells(path) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected one cell tagged 'parameters'"
    tree = ast.parse("".join(tagged[0]["source"]))
    return [node.targets[0].id for node in tree.body if isinstance(node, ast.Assign)]


def test_every_notebook_is_found():
    found = {p.relative_to(ROOT).as_posix() for p in NOTEBOOK_PATHS}
    assert found >= {*NOTEBOOKS.values(), "notebooks/00_pretrain.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=lambda p: p.stem)
def test_papermill_parses_every_parameter(path):
    # papermill's parser reads one "name = value  # help" line at a time; a line it cannot
    # parse (e.g. an "=" in the help comment) makes it call that parameter unknown when passed.
    names = _parameters_cell_names(path)
    assert names, f"{path.name}: no parameters"
    assert list(pm.inspect_notebook(str(path))) == names


@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    for cell in _cells(path):
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, path.name
