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


@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=lambda p: p.stem)
def test_parameters_cell_holds_every_setting_with_its_default(path):
    """The drift check: a parameters cell is the notebook's own parameters, then core.config's
    settings exactly (regenerate with ``python -m core.parameters``)."""
    from core.config import DEFAULTS, FIELDS
    from core.parameters import SETTINGS_HEADER, parameters_source

    [cell] = [c for c in _cells(path) if "parameters" in c.get("metadata", {}).get("tags", [])]
    source = "".join(cell["source"])
    assert SETTINGS_HEADER in source, f"{path.name}: run python -m core.parameters"
    assert source.endswith(parameters_source().rstrip("\n")), (
        f"{path.name}: its settings differ from core.config's; run python -m core.parameters"
    )
    defaults = pm.inspect_notebook(str(path))
    for name in FIELDS:
        value = ast.literal_eval(defaults[name]["default"])
        expected = getattr(DEFAULTS, name)
        shown = expected if not hasattr(expected, "is_absolute") else value  # paths: shown form
        assert value == shown, (path.name, name)
    # Besides the settings, a notebook takes only its own few: where it writes, which fold, and
    # for the error analysis how much it shows.
    own = {"fold", "run_dir", "n_examples", "n_explain", "ig_steps", "interactive", "live_examples"}
    assert set(defaults) - set(FIELDS) <= own, path.name
    assert ast.literal_eval(defaults["run_dir"]["default"]) is None, path.name


def test_drift_is_caught(tmp_path, monkeypatch):
    """The drift check fails for a parameters cell whose default differs from core.config."""
    import core.config as config
    import core.parameters as parameters

    monkeypatch.setattr(config.DEFAULTS, "stage1_lr", 3e-5)
    assert not "".join(
        next(
            c
            for c in _cells(ROOT / NOTEBOOKS["stage1"])
            if "parameters" in c.get("metadata", {}).get("tags", [])
        )["source"]
    ).endswith(parameters.parameters_source().rstrip("\n"))
