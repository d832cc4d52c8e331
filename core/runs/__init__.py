"""Runs and their steps: a run folder's identity (folder), the step store (steps), the run's
report (report), and every run listed or two compared (table, ``python -m core.runs``)."""
