"""``python -m core.runs``: the runs table and its commands (core.runs.commands)."""

from core import cli
from core.runs.commands import main

cli.run(main)
