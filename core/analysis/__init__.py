"""Looking at data and results: exploratory tables (eda), the error analysis (errors),
per-character attributions (attribution), the notebooks' figures (plots) and the development
holdout (holdout: ``python -m core.analysis.holdout``)."""
