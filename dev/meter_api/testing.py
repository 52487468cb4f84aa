"""Start the meter API for a test session (standard library only, usable from any venv).

If ``METER_API_URL`` is set, that running server is used instead of starting one.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def airbyte_python() -> Path:
    """The interpreter with FastAPI/uvicorn/airbyte-cdk: the repo's .venv-airbyte, else the scratch venv."""
    for candidate in (REPO / ".venv-airbyte/bin/python", Path("/tmp/try/abvenv/bin/python")):
        if candidate.exists():
            return candidate
    raise FileNotFoundError("no airbyte venv: create .venv-airbyte (see dev/requirements-airbyte.txt)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def call(base_url: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict, bytes]:
    """One HTTP call; returns (status, headers, raw body) also for 4xx/5xx."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base_url.rstrip("/") + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def _wait_healthy(base_url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"meter API exited with code {process.returncode} before becoming healthy")
        try:
            if call(base_url, "GET", "/health")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"meter API at {base_url} not healthy after {timeout}s")


@contextmanager
def meter_api(timeout: float = 30.0) -> Iterator[str]:
    """Yield the base URL of a running meter API, starting one on a free port if needed."""
    if url := os.environ.get("METER_API_URL"):
        yield url.rstrip("/")
        return
    port = free_port()
    env = {**os.environ, "METER_API_PORT": str(port), "METER_API_LOG_LEVEL": "warning"}
    process = subprocess.Popen([str(airbyte_python()), "-m", "dev.meter_api"], cwd=REPO, env=env)
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base_url, process, timeout)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
