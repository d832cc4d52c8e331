"""``python -m core.runs``: the runs table and ``--compare A B`` (core.runs.table)."""

from core import cli
from core.runs.table import main

cli.run(main)
