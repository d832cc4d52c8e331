"""JupyterLab on this repository, for exploring runs by hand: ``./suite.sh lab`` runs set-up, then
``python -m core.lab [jupyter options]``.

The server listens on 127.0.0.1 only, asks for Jupyter's default token (a random one, printed in
the URL it logs), opens no browser and serves the repository. Its kernels are this venv's Python
(the kernel set-up installs) and import this checkout's ``core`` whatever the venv's editable
install points at; notebooks resolve their relative paths against the repository root, so they
run from ``notebooks/`` with their defaults as under papermill.
"""

from __future__ import annotations

import os
import sys

from core.config import ROOT


def command(*options: str) -> list[str]:
    """The server's command line; ``options`` (e.g. ``--port=8890``) go last and win.

    As root (containers; set-up installs the CJK font as root), Jupyter refuses to start without
    ``--allow-root``; given here since the server is reachable only from this machine, by token.
    """
    root = ["--allow-root"] if os.geteuid() == 0 else []
    return [
        sys.executable,
        "-m",
        "jupyterlab",
        "--ip=127.0.0.1",
        "--no-browser",
        f"--ServerApp.root_dir={ROOT}",
        *root,
        *options,
    ]


def environment() -> dict:
    """This process's environment with the repository first on PYTHONPATH (kernels inherit it)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH", "")] if p)
    return env


def main(argv: list[str] | None = None) -> None:
    args = command(*(sys.argv[1:] if argv is None else argv))
    os.execve(args[0], args, environment())  # the server replaces this process (Ctrl-C stops it)


if __name__ == "__main__":
    main()
