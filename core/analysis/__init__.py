"""Looking at data and results: exploratory tables (eda), the error analysis (errors),
per-character attributions (attribution) and the notebooks' figures (plots)."""
