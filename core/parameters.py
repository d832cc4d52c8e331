"""The notebooks' parameters cells: written from ``core.config.Settings``, read back when a
notebook runs.

Every notebook's ``parameters`` cell holds its own few parameters (``fold``, ``run_dir``, ...),
then every setting with its default and help (``parameters_source``); ``python -m
core.parameters`` rewrites the cells after a setting changes, and tests/test_notebooks.py fails
while they drift. In a running notebook, ``from_notebook(globals())`` turns the parameters into
``Settings``, refusing a name papermill injected that nothing defines.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

from core.config import (
    DEFAULTS,
    FIELDS,
    NOTEBOOKS,
    ROOT,
    ConfigError,
    Settings,
    closest,
    from_values,
    show,
)


def from_notebook(namespace: dict) -> Settings:
    """Settings from a notebook's parameters (its globals after papermill's injected cell).

    A parameter papermill injected that the notebook does not know (a misspelt ``-p`` name or
    ``-f`` key) is refused: papermill only warns, and the notebook would run with the default.
    """
    check_injected(namespace.get("In", []))
    return from_values({k: namespace[k] for k in FIELDS if k in namespace}, "notebook parameters")


# The first line of the cell papermill injects after the parameters cell (its -p, -f, -y values).
INJECTED_HEADER = "# Parameters"


def check_injected(cells: list[str]) -> None:
    """Refuse a name in papermill's injected cell that neither a setting nor the notebook's own
    parameters (the cell holding SETTINGS_HEADER) define. ``cells``: the kernel's ``In``, the
    source of every cell run so far."""
    cells = [c for c in cells if isinstance(c, str)]
    injected = [c for c in cells if c.startswith(INJECTED_HEADER)]
    if not injected:  # run without papermill (JupyterLab): nothing was passed
        return
    own = {name for c in cells if SETTINGS_HEADER in c for name in assigned(c)} - set(FIELDS)
    for name in assigned(injected[-1]):
        if name not in FIELDS and name not in own:
            raise ConfigError(
                f"notebook parameters: unknown parameter {name!r}"
                f"{closest(name, [*own, *FIELDS])}; expected one of this notebook's own "
                f"({', '.join(sorted(own))}) or a setting of core.config.Settings — fix the "
                "-p name or the key in the -f file"
            )


def assigned(source: str) -> list[str]:
    """The names a cell assigns at top level, in order (a parameters cell's parameters)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    return [
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    ]


SETTINGS_HEADER = (
    "# The run's settings (core.config.Settings): the same in every notebook of a run."
)


def parameters_source() -> str:
    """The settings part of a notebook's parameters cell: every setting with its default and
    help, after the notebook's own parameters. tests/test_notebooks.py holds every notebook to
    it; ``python -m core.config`` rewrites the cells after a change here."""
    titles = {
        "data": "the data, the encoder and the folds",
        "stage0": "stage 0 (00_pretrain)",
        "stage1": "stage 1 (02_cv)",
        "stage2": "stage 2 (03_f1_refine)",
        "students": "the pseudo-labelled students (02b_students)",
        "distill": "distillation into one model for serving (06_distill)",
        "ensemble": "the ensemble (04_ensemble)",
    }
    lines, section = [SETTINGS_HEADER], None
    for f in dataclasses.fields(Settings):
        if f.metadata["section"] != section:
            section = f.metadata["section"]
            lines.append(f"# - {titles[section]}")
        value = getattr(DEFAULTS, f.name)
        shown = json.dumps(show(value) if isinstance(value, Path) else value)
        shown = {"null": "None", "true": "True", "false": "False"}.get(shown, shown)
        lines.append(f"{f.name} = {shown}  # {f.metadata['help']}")
    return "\n".join(lines) + "\n"


def sync_notebooks() -> list[Path]:
    """Rewrite each notebook's parameters cell from ``SETTINGS_HEADER`` on; return those changed."""
    import nbformat

    changed = []
    for rel in dict.fromkeys(NOTEBOOKS.values()):  # a notebook may serve two steps
        path = ROOT / rel
        nb = nbformat.read(path, as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        own = cell.source.split(SETTINGS_HEADER)[0].rstrip("\n")
        source = (own + "\n\n" if own else "") + parameters_source().rstrip("\n")
        if cell.source != source:
            cell.source = source
            nbformat.write(nb, path)
            changed.append(path)
    return changed


if __name__ == "__main__":
    for path in sync_notebooks():
        print(f"rewrote the parameters cell of {show(path)}")
