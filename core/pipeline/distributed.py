"""The main job's steps as a task graph on Dask distributed (``--workers N``, ``--scheduler``).

``--workers N`` starts a cluster of N one-thread worker processes on 127.0.0.1 for the run and
stops it afterwards; when the machine has GPUs there is one worker per GPU, each pinned to its own
(``CUDA_VISIBLE_DEVICES``) and holding the worker resource ``GPU=1`` that every task asks for.
``--scheduler ADDRESS`` uses a running cluster whose workers share ``outputs/`` (docs/scaling.md).

A task is one step of ``core.pipeline.plan.plan``, run by ``core.pipeline.step_process`` exactly as
the sequential main job runs it (papermill, then ``keep_notebook``); it takes the results of the
steps it waits for (``core.pipeline.plan.graph``) as arguments, so Dask starts it only after them.
The client alone writes each run's ``timings.json``, ``tasks.json`` (which worker ran each step,
when) and report, from the tasks' results.

Faults: a worker that dies mid-step loses its task to the scheduler, which runs it again on
another worker (up to ``distributed.scheduler.allowed-failures`` times, 3 by default); the step's
lock and marker (``core.runs.steps``) make that run start from an empty folder. A notebook that
fails is not retried (it would fail the same way): its error is the run's, as without a cluster.
Stopping the client (Ctrl-C) cancels its tasks, and a cancelled task stops its notebook.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import subprocess
import time
import uuid

from core.config import ConfigError
from core.io import read_json, write_json
from core.pipeline import step_process
from core.pipeline.execute import link_reused, record_time, skip_done
from core.pipeline.plan import Task, parameters

log = logging.getLogger("pipeline")

TOPIC = "recsent-step"  # a worker tells the clients when it starts a step
CONNECT_TIMEOUT = "20s"  # for --scheduler, once check_scheduler found a scheduler there
PROBE_SECONDS = 3  # check_scheduler's wait for an answer
SCHEMES = ("tcp", "tls", "ws", "wss")  # Dask's transports over TCP, which check_scheduler tries
OTHER_SCHEMES = ("inproc", "ucx")  # Dask's others (inproc: a cluster in this process)
EXPECTED_ADDRESS = "expected tcp://HOST:PORT of a running Dask scheduler (dask scheduler prints it)"
TASKS_FILE = "tasks.json"  # per run folder: {step: {worker, start, end, seconds}}


def gpu_ids() -> list[str]:
    """The GPUs as CUDA_VISIBLE_DEVICES ids: those it names already, else nvidia-smi's."""
    # dask-cuda's LocalCUDACluster would do this and local_cluster's pinning, but every release
    # pins an older dask/distributed than ours (docs/scaling.md, GPUs).
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and not d.strip()[0] == "-"]
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, _ in enumerate(x for x in listed.stdout.splitlines() if x[:4] == "GPU ")]


def quiet_dask() -> None:
    """Dask's own INFO lines (every connection, every worker's banner) only as warnings, here and
    in the worker processes started from here (they read the variable when they import Dask)."""
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    logging.getLogger("distributed").setLevel(os.environ["DASK_LOGGING__DISTRIBUTED"].upper())


def local_cluster(n: int, gpus: list[str]):
    """N worker processes (one thread each) and their scheduler, on 127.0.0.1 only."""
    from distributed import Nanny, Scheduler, SpecCluster

    if gpus and n > len(gpus):
        raise ConfigError(
            f"--workers {n}: this machine has {len(gpus)} GPU(s) ({','.join(gpus)}) and runs one "
            f"step per GPU: use at most --workers {len(gpus)}"
        )
    workers = {}
    for i in range(n):
        # memory_limit 0: the worker process holds little; the notebook kernels hold the model.
        options = {"nthreads": 1, "host": "127.0.0.1", "memory_limit": 0}
        if gpus:
            options |= {"env": {"CUDA_VISIBLE_DEVICES": gpus[i]}, "resources": {"GPU": 1}}
        workers[f"worker{i}"] = {"cls": Nanny, "options": options}
    # Every port on 127.0.0.1 and chosen free (Dask's HTTP server would take *:8787 otherwise).
    local = {"host": "127.0.0.1", "port": 0, "dashboard": False, "dashboard_address": "127.0.0.1:0"}
    scheduler = {"cls": Scheduler, "options": local}
    return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.WARNING)


def scheduler_host(address: str) -> tuple[str, str, int] | None:
    """``--scheduler ADDRESS`` as Dask reads it (``[SCHEME://]HOST:PORT``, tcp by default): its
    scheme, host and port; None for Dask's transports that are not TCP (OTHER_SCHEMES), which
    only Dask can try; a ConfigError for anything else."""
    scheme, sep, where = address.partition("://")
    if not sep:
        scheme, where = "tcp", address
    if scheme in OTHER_SCHEMES:
        return None
    found = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:/\[\]\s]+):(\d{1,5})", where)
    if scheme not in SCHEMES or found is None or not 0 < int(found[2] or found[4]) < 65536:
        raise ConfigError(f"--scheduler {address}: {EXPECTED_ADDRESS}, e.g. tcp://10.0.0.5:8786")
    return scheme, found[1] or found[3], int(found[2] or found[4])


def check_scheduler(address: str) -> None:
    """Refuse an address where no Dask scheduler answers within seconds, before anything is
    written (Dask would try for CONNECT_TIMEOUT, and wait forever on a port that answers but
    stays silent). Over plain tcp a scheduler speaks first (its handshake): that is awaited too.
    Imports no Dask."""
    parsed = scheduler_host(address)
    if parsed is None:
        return
    scheme, host, port = parsed
    try:
        conn = socket.create_connection((host, port), timeout=PROBE_SECONDS)
    except ConnectionRefusedError:
        why = "nothing listens there (connection refused)"
    except socket.gaierror:
        why = f"no host is named {host}"
    except TimeoutError:
        why = f"no answer in {PROBE_SECONDS} s"
    except OSError as e:
        why = f"cannot connect ({e.strerror or e})"
    else:
        with conn:
            try:
                greeted = scheme != "tcp" or conn.recv(1) != b""
            except OSError:
                greeted = False
        if greeted:
            return
        why = f"something answers there, but no Dask scheduler (no handshake in {PROBE_SECONDS} s)"
    raise ConfigError(f"--scheduler {address}: {why}; {EXPECTED_ADDRESS}")


def connect(address: str):
    """A client of the scheduler at ``address`` (checked by check_scheduler)."""
    from distributed import Client

    class Closing(Client):
        # A client that fails to start still holds its loop; left to __del__, closing it waits
        # 2 * CONNECT_TIMEOUT and prints a TimeoutError traceback.
        def __init__(self, *args, **kwargs):
            try:
                super().__init__(*args, **kwargs)
            except BaseException:
                with contextlib.suppress(Exception):
                    self.close(timeout=1)
                raise

    try:
        return Closing(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as e:
        raise ConfigError(f"--scheduler {address}: no Dask scheduler answered ({e})") from None


def where(name, address: str) -> str:
    """A worker as the progress lines show it: ``host:port``, after its name when it has one."""
    host = address.split("://")[-1]
    return host if str(name) in (address, host) else f"{name} ({host})"


def run_task(step: Task, params: dict, client: str, *_after) -> dict:
    """On a worker: run one step (``_after``: the results of the steps it waited for)."""
    from distributed import get_worker

    worker = get_worker()
    key, at = worker.get_current_task(), where(worker.name, worker.address)
    if step.done:  # a copy of a step made meanwhile (a seed member's stage 0), or by another job
        if step.target is not None:
            link_reused(step)
        return {"worker": at, "reused": True}
    worker.log_event(TOPIC, {"client": client, "step": step.label, "at": at})
    start = time.time()
    seconds = step_process.run(step, params, stop=lambda: _cancelled(worker, key))
    return {"worker": at, "start": start, "end": time.time(), "seconds": round(seconds, 1)}


def _cancelled(worker, key) -> bool:
    # The client cancelled the task, or left: the worker keeps the thread running, so say stop.
    task = worker.state.tasks.get(key)
    return task is None or task.state == "cancelled"


class Progress:
    """The client's view: one line when a step starts (which worker) and when it ends (how long)."""

    def __init__(self, chosen: list[Task], client: str):
        self.chosen, self.client = chosen, client
        self.index = {s.label: i for i, s in enumerate(chosen, 1)}
        self.running: dict[str, str] = {}  # step -> the worker it last started on

    def head(self, label: str) -> str:
        return f"[{self.index[label]}/{len(self.chosen)}] {label}"

    def started(self, event) -> None:
        _, msg = event
        if msg.get("client") != self.client:
            return  # another client's step on a shared cluster
        label, at = msg["step"], msg["at"]
        before = self.running.get(label)
        again = f" (again: its worker {before} was lost)" if before and before != at else ""
        notebook = self.chosen[self.index[label] - 1].notebook
        log.info("%s: %s started on %s%s", self.head(label), notebook, at, again)
        self.running[label] = at

    def finished(self, step: Task, result: dict) -> None:
        self.running.pop(step.label, None)
        if result.get("reused"):
            log.info(
                "%s: complete, skipped (stored as steps/%s)",
                self.head(step.label),
                step.target.name,
            )
            return
        head, at, seconds = self.head(step.label), result["worker"], result["seconds"]
        log.info("%s: finished on %s in %.1f s", head, at, seconds)
        record_time(step, result["seconds"])
        path = step.run_dir / TASKS_FILE
        tasks = read_json(path) if path.exists() else {}
        tasks[step.own_label] = {k: result[k] for k in ("worker", "start", "end", "seconds")}
        write_json(path, tasks)

    def failed(self, step: Task, error: BaseException) -> None:
        at = self.running.pop(step.label, None)
        if at is None:
            log.info("%s: not run (%s)", self.head(step.label), _first_line(error))
        else:
            log.info("%s: failed on %s: %s", self.head(step.label), at, _first_line(error))


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def run_graph(
    chosen: list[Task], deps: list[list[int]], workers: int | None, scheduler: str | None
) -> None:
    """Run every step of ``chosen`` not yet complete as a task that waits for ``deps``; raise the
    first error once no task is left running."""
    pending = [i for i, step in enumerate(chosen) if not skip_done(step, i + 1, len(chosen))]
    if not pending:
        return  # nothing to run: no cluster to start
    quiet_dask()
    from distributed import Client

    if scheduler is None:
        cluster = local_cluster(workers, gpu_ids())
        client = Client(cluster, set_as_default=False)
    else:
        cluster, client = None, connect(scheduler)
    try:
        info = client.scheduler_info()["workers"]
        has_gpu = any("GPU" in w.get("resources", {}) for w in info.values())
        log.info(
            "%d worker(s) at %s%s",
            len(info),
            client.scheduler.address,
            ", one GPU each" if has_gpu else "",
        )
        token = uuid.uuid4().hex[:8]
        progress = Progress(chosen, token)
        client.subscribe_topic(TOPIC, progress.started)
        futures = submit(client, chosen, pending, deps, token, {"GPU": 1} if has_gpu else None)
        errors = wait(client, futures, chosen, progress)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    if errors:
        raise errors[0]


def submit(client, chosen, pending: list[int], deps, token: str, resources) -> dict:
    """One task per pending step, in plan order; a complete step's dependents wait for what it
    waited for."""
    futures: dict[int, object] = {}

    def after(i: int) -> list:
        out = []
        for j in deps[i]:
            for f in [futures[j]] if j in futures else after(j):
                if f not in out:
                    out.append(f)
        return out

    for i in pending:
        step = chosen[i]
        futures[i] = client.submit(
            run_task,
            step,
            parameters(step),
            token,
            *after(i),
            key=f"{step.label}-{token}",
            resources=resources,
            retries=0,  # a worker's death is the scheduler's to retry; a notebook's error is final
        )
    return futures


def wait(client, futures: dict, chosen, progress: Progress) -> list[BaseException]:
    """Wait for every task, reporting each; on Ctrl-C (or any error here) cancel them all."""
    from distributed import as_completed

    by_key = {f.key: chosen[i] for i, f in futures.items()}
    errors = []
    try:
        for future in as_completed(list(futures.values()), loop=client.loop):
            step = by_key[future.key]
            try:
                progress.finished(step, future.result())
            except Exception as e:  # the step's own error, or a step it needs failed
                progress.failed(step, e)
                errors.append(e)
    except BaseException:
        # Cancelled tasks stop their notebooks (run_task); the client leaves only after that.
        client.cancel(list(futures.values()), force=True)
        raise
    return errors
