"""Every script under scripts/ imports: its names from core still exist (a renamed or moved core
function breaks a documented benchmark command otherwise, and no other test runs the scripts)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from core.config import ROOT

SCRIPTS = sorted((ROOT / "scripts").glob("*.py"))


def test_there_are_scripts():
    assert len(SCRIPTS) >= 5


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_the_script_imports_without_running(path: Path, monkeypatch):
    name = f"script_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up there
    monkeypatch.setattr(sys, "path", list(sys.path))  # a script's sys.path.insert stays its own
    spec.loader.exec_module(module)  # runs the imports; main() stays behind __name__ == "__main__"
    assert callable(getattr(module, "main", None)), f"{path.name} has no main()"
