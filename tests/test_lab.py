"""``./suite.sh lab``: the server it starts (``python -m core.lab``) answers on 127.0.0.1 with
Jupyter's default token, serves JupyterLab, and runs a notebook in the venv's kernel, whose
figures come back as PNG images.

The server gets a free loopback port and its own Jupyter config, data and runtime folders (so no
user setting applies); it is shut down through its API, or killed, after the module.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import nbformat
import pytest

from core import lab
from core.config import ROOT

pytestmark = pytest.mark.slow
START_TIMEOUT = 120  # seconds for the server to answer (a busy 2-core host)
CELL_TIMEOUT = 120  # seconds per notebook cell (the first imports matplotlib and pandas)


@dataclass
class Server:
    url: str
    token: str
    info: dict
    kernel_pids: list[int] = field(default_factory=list)  # to kill if shutdown left them

    def api(self, method: str, path: str, body=None, token: bool = True):
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"token {self.token}"} if token else {}
        request = urllib.request.Request(self.url + path, data, headers, method=method)
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read()
        return json.loads(text) if text and path.startswith("api/") else text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("jupyter")
    env = {**os.environ, "IPYTHONDIR": str(home / "ipython")}
    for name in ("CONFIG", "DATA", "RUNTIME"):
        env[f"JUPYTER_{name}_DIR"] = str(home / name.lower())
    env.pop("JUPYTER_TOKEN", None)  # Jupyter's own random token, as ./suite.sh lab gets
    port = free_port()
    log = (home / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "core.lab", f"--port={port}", "--ServerApp.port_retries=0"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    info_file = home / "runtime" / f"jpserver-{proc.pid}.json"
    deadline = time.monotonic() + START_TIMEOUT
    while not info_file.is_file():
        log_tail = (home / "server.log").read_text()[-3000:]
        assert proc.poll() is None, f"the server exited:\n{log_tail}"
        assert time.monotonic() < deadline, f"no server after {START_TIMEOUT} s:\n{log_tail}"
        time.sleep(0.5)
    time.sleep(0.5)  # written just before it is complete on some versions
    info = json.loads(info_file.read_text())
    running = Server(f"http://127.0.0.1:{port}/", info["token"], info)
    try:
        yield running
    finally:
        try:
            running.api("POST", "api/shutdown")  # stops its kernels, then itself
            proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)  # the group started here: the server alone
            proc.wait(timeout=30)
        for pid in running.kernel_pids:
            try:
                os.kill(pid, signal.SIGKILL)  # only if the shutdown left it running
            except ProcessLookupError:
                pass
        log.close()


def test_lab_listens_on_loopback_only_with_a_token(server):
    assert {"--ip=127.0.0.1", "--no-browser", f"--ServerApp.root_dir={ROOT}"} <= set(lab.command())
    assert server.info["url"].startswith("http://127.0.0.1:") and server.info["token"]
    assert Path(server.info["root_dir"]) == ROOT
    assert "started" in server.api("GET", "api/status")
    with pytest.raises(urllib.error.HTTPError) as refused:
        server.api("GET", "api/status", token=False)
    assert refused.value.code == 403
    assert b"JupyterLab" in server.api("GET", "lab")  # the Lab front end, not just the server


PROBE_CELLS = [
    "import os, sys\nimport core\nfrom core.analysis import plots\n"
    "print(sys.prefix, os.getcwd(), core.__file__, os.getpid(), sep='\\n')",
    "plots.learning_curves({'loss': [0.5, 0.3], 'val_loss': [0.6, 0.4]}, 'probe')",
    "print('matplotlib.pyplot' in sys.modules)",
]


def test_a_notebook_runs_in_the_venv_kernel_with_images(server, tmp_path):
    """A notebook opened in notebooks/ (its kernel's working folder, as in Lab) draws a figure."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in PROBE_CELLS])
    path = f"notebooks/probe-{uuid.uuid4().hex[:8]}.ipynb"  # never written: only names the kernel
    session = server.api("POST", "api/sessions", {"path": path, "type": "notebook", "name": ""})
    try:
        asyncio.run(run_notebook(server, session["kernel"]["id"], nb))
    finally:
        server.api("DELETE", f"api/sessions/{session['id']}")
    nbformat.validate(nb)
    nbformat.write(nb, tmp_path / "probe.ipynb")
    errors = [o for c in nb.cells for o in c.outputs if o.output_type == "error"]
    assert not errors, errors[0]["traceback"] if errors else None

    prefix, cwd, core_file, _ = stdout(nb.cells[0]).splitlines()
    assert Path(prefix).resolve() == Path(sys.prefix).resolve()  # the venv's python
    assert Path(cwd) == ROOT / "notebooks"
    assert Path(core_file).is_relative_to(ROOT)  # this checkout's core
    [figure] = nb.cells[1].outputs
    assert figure["data"]["text/plain"].startswith("<Figure")
    assert figure["data"]["image/png"].startswith("iVBORw0KGgo")  # base64 of the PNG signature
    assert stdout(nb.cells[2]).strip() == "False"  # no pyplot: no global figure list


def stdout(cell) -> str:
    return "".join(o["text"] for o in cell.outputs if o.get("name") == "stdout")


async def run_notebook(server: Server, kernel_id: str, nb) -> None:
    """Execute ``nb``'s cells in order over the kernel's websocket, filling in their outputs."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    session = uuid.uuid4().hex
    url = f"ws{server.url[4:]}api/kernels/{kernel_id}/channels?session_id={session}"
    headers = {"Authorization": f"token {server.token}"}
    ws = await websocket_connect(HTTPRequest(url, headers=headers, connect_timeout=30))
    try:
        for n, cell in enumerate(nb.cells, 1):
            cell.outputs = await asyncio.wait_for(execute(ws, session, cell.source), CELL_TIMEOUT)
            cell.execution_count = n
            if n == 1:
                server.kernel_pids.append(int(stdout(cell).split()[-1]))
    finally:
        ws.close()


async def execute(ws, session: str, code: str) -> list:
    msg_id = uuid.uuid4().hex
    now = datetime.now(UTC).isoformat()
    header = {
        "msg_id": msg_id,
        "msg_type": "execute_request",
        "session": session,
        "username": "test",
        "version": "5.3",
        "date": now,
    }
    content = {
        "code": code,
        "silent": False,
        "store_history": True,
        "user_expressions": {},
        "allow_stdin": False,
        "stop_on_error": True,
    }
    await ws.write_message(
        json.dumps(
            {
                "header": header,
                "parent_header": {},
                "metadata": {},
                "content": content,
                "channel": "shell",
            }
        )
    )
    outputs = []
    while True:
        raw = await ws.read_message()
        assert raw is not None, "the kernel's websocket closed"
        msg = json.loads(raw)
        if msg.get("channel") != "iopub" or msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind = msg["msg_type"]
        if kind in ("stream", "display_data", "execute_result", "error"):
            outputs.append(nbformat.v4.output_from_msg(msg))
        elif kind == "status" and msg["content"]["execution_state"] == "idle":
            return outputs
