"""Servers of the web viewer for the tests, each on a free localhost port and always shut down: in-process (the
test reaches the predictor behind it) or the real command in a subprocess (what a user starts)."""
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Iterator, Sequence, Tuple

from ..conftest import REPO_ROOT

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before any test imports Gradio: no calls home

WEB_DEMO = os.path.join(REPO_ROOT, "tools", "web_demo.py")
SHAPES_CFG = os.path.join(REPO_ROOT, "configs", "shapes", "pixelllm_tiny_shapes.yaml")
SCENE = os.path.join(REPO_ROOT, "docs", "demo", "inputs", "shapes_scene.png")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, proc=None, timeout: float = 180.0, log: str = "") -> None:
    """Poll `url` until it answers 200; fail early when `proc` exits (with its log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the web viewer exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s:\n{_tail(log)}")


def _tail(path: str, n: int = 4000) -> str:
    if not path or not os.path.isfile(path):
        return ""
    with open(path, errors="replace") as f:
        return f.read()[-n:]


@contextlib.contextmanager
def in_process_server(predictor, examples: Sequence[str] = ()) -> Iterator[Tuple[str, object]]:
    """Serve `predictor` from this process; yields (url, DemoService)."""
    from pixelllm_d2.web.app import build_app, launch
    from pixelllm_d2.web.service import DemoService

    service = DemoService(predictor)
    app = build_app(service, examples)
    port = free_port()
    launch(app, port=port, block=False, quiet=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_up(url, timeout=60)
        yield url, service
    finally:
        app.close()


@contextlib.contextmanager
def tool_server(*args: str, timeout: float = 240.0) -> Iterator[str]:
    """`python tools/web_demo.py --port P ARGS` in a subprocess; yields its URL once it answers."""
    port = free_port()
    fd, log = tempfile.mkstemp(prefix="web_demo_", suffix=".log")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", GRADIO_ANALYTICS_ENABLED="False", PYTHONPATH=REPO_ROOT)
    with os.fdopen(fd, "w") as out:
        proc = subprocess.Popen([sys.executable, WEB_DEMO, "--port", str(port), *args], stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=REPO_ROOT)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/", proc, timeout, log)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        os.remove(log)
