"""Jupyter server config: send kernel websocket messages without Nagle's delay (TCP_NODELAY).

    jupyter lab --config=scripts/jupyter_nodelay.py

jupyter_server leaves Nagle's algorithm on for the browser's kernel websocket, so a widget update
that follows the kernel's "busy" status message in the same round trip can wait for the browser's
delayed ACK (up to 40 ms on Linux). Labeling sends one small message per key press and wants the
next item at once. `make lab` and the tests' JupyterLab serve with it; benchmarks/label_latency.py --nagle
measures the server without it.
"""

from jupyter_server.services.kernels.websocket import KernelWebsocketHandler

_open = KernelWebsocketHandler.open


async def _open_without_nagle(self, kernel_id):
    self.set_nodelay(True)
    return await _open(self, kernel_id)


KernelWebsocketHandler.open = _open_without_nagle
