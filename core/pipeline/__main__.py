"""``python -m core.pipeline``: the main job (core.pipeline.job)."""

from core import cli
from core.pipeline.job import main

cli.run(main)
