"""The main job: the plan of a run's steps (plan), one step executed (execute), all of them in
order or on a Dask cluster (job, distributed, step_process). ``python -m core.pipeline``."""
