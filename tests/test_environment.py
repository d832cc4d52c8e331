"""pyproject.toml and environment.yml pin the same packages at the same versions."""

from __future__ import annotations

import re
import tomllib

from core.config import ROOT


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;]+)\s*", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(3)
    return pins


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return _pins(project["dependencies"] + project["optional-dependencies"]["dev"])


def environment_pins() -> tuple[dict[str, str], str]:
    text = (ROOT / "environment.yml").read_text()
    pip_lines = [m.group(1) for m in re.finditer(r"^\s+- ([^#\s]+==\S+)\s*$", text, re.M)]
    python = re.search(r"^\s+- python=(\S+)\s*$", text, re.M).group(1)
    return _pins(pip_lines), python


def test_environment_yml_and_pyproject_pin_the_same_versions():
    ours, (theirs, _) = pyproject_pins(), environment_pins()
    assert ours, "no pinned dependencies found in pyproject.toml"
    assert ours == theirs


def test_python_versions_agree():
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    _, python = environment_pins()
    assert f">={python}" in requires and python == "3.11"


def test_the_stack_is_pinned_as_the_suite_needs():
    pins = pyproject_pins()
    for name in ("tensorflow", "tf-keras", "keras-bert", "keras-self-attention", "papermill"):
        assert name in pins, name
    assert pins["tensorflow"].split(".")[:2] == pins["tf-keras"].split(".")[:2]


def test_importing_core_after_tensorflow_fails_clearly():
    import subprocess
    import sys

    code = "import tensorflow\nimport core\n"
    env = {k: v for k, v in __import__("os").environ.items() if k != "TF_USE_LEGACY_KERAS"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )
    assert done.returncode != 0
    assert "import core before tensorflow" in done.stderr
