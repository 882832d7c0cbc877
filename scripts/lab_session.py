"""A JupyterLab server on localhost and a headless Chromium page on one of its notebooks.

Shared by the real-browser test (tests/test_browser.py) and the latency benchmark
(benchmarks/label_latency.py):

    with JupyterLab(workdir) as lab:
        page = lab.open_notebook("label.ipynb", cells=["print(1)"], browser=browser)
        page.wait_for_selector(LABELER)

The server runs this interpreter's JupyterLab with a random token on a free port, and exposes the app
as `window.jupyterapp` so the page can run all cells through JupyterLab's own command.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat

CHROMIUM = "/usr/bin/chromium"  # Debian's package; Playwright drives it, nothing is downloaded
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
LABELER = '.rlhflab-labeler[data-item-id]:not([data-item-id=""])'  # a labeler showing an item


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


NODELAY = Path(__file__).parent / "jupyter_nodelay.py"  # what `make lab` serves with


class JupyterLab:
    """`jupyter lab` on 127.0.0.1 serving `workdir`; stopped (and its kernels with it) on exit."""

    def __init__(self, workdir: Path, startup_timeout: float = 90.0, config: Path | None = NODELAY):
        self.workdir, self.startup_timeout = Path(workdir), startup_timeout
        self.config = [f"--config={config}"] if config else []  # `make lab`'s config file; None: jupyter's own
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> JupyterLab:
        (self.workdir / "lab-workspaces").mkdir(parents=True, exist_ok=True)
        self.log = open(self.workdir / "jupyterlab.log", "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={self.port}",
             "--ip=127.0.0.1", f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.workdir}",
             "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
             f"--LabApp.workspaces_dir={self.workdir / 'lab-workspaces'}", *self.config],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=self.workdir)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited; see {self.workdir / 'jupyterlab.log'}")
            try:
                urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=2)
                return self
            except OSError:
                time.sleep(0.3)
        self.__exit__()
        raise TimeoutError(f"JupyterLab did not answer within {self.startup_timeout}s")

    def __exit__(self, *exc):
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()

    def open_notebook(self, name: str, cells: list[str], browser, timeout_ms: float = 120_000):
        """Write a notebook of `cells`, open it in a new page, run all cells; returns the page."""
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
        notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(notebook, self.workdir / name)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(timeout_ms)
        # A workspace of its own per notebook: a second page would otherwise restore the first one's tabs,
        # and 'run all cells' below could run that notebook instead of this one.
        workspace = Path(name).stem
        page.goto(f"{self.url}/lab/workspaces/{workspace}/tree/{name}?token={self.token}")
        page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget "
                               "&& window.jupyterapp.shell.currentWidget.sessionContext "
                               "&& window.jupyterapp.shell.currentWidget.sessionContext.session "
                               "&& window.jupyterapp.shell.currentWidget.sessionContext.session.kernel")
        page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.ready")
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        return page
