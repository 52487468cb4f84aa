"""`dev.stack up` while a service exits: it fails at once naming the service, or restarts one that was stopping."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dev.stack import __main__ as stack
from dev.stack import procs

# A service that shuts down gracefully, as Airflow's do: a second passes between SIGTERM and its exit.
STOPPING_SLOWLY = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: (time.sleep(1), sys.exit(0)))\n"
    "print('ready', flush=True)\n"
    "time.sleep(120)\n"
)


@pytest.fixture(autouse=True)
def stack_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setattr(procs, "RUN_DIR", tmp_path / "run")
    monkeypatch.setattr(procs, "LOG_DIR", tmp_path / "logs")
    monkeypatch.setattr(stack, "LOCAL", tmp_path)
    yield tmp_path
    for pid_file in (tmp_path / "run").glob("*.pid"):
        with_pid = int(pid_file.read_text().split()[0])
        if procs.is_alive(with_pid):
            procs._signal_group(with_pid, signal.SIGKILL)


def service(name: str, code: str) -> stack.Service:
    return stack.Service(name, [sys.executable, "-c", code], None)


def test_a_service_up_started_that_exits_fails_up_at_once_with_its_code_and_log() -> None:
    crashing = service("airflow-scheduler", "print('bad setting: parallelism=-1'); raise SystemExit(3)")
    pid = procs.start(crashing.name, crashing.cmd, {}, stack.LOCAL)
    began = time.monotonic()
    with pytest.raises(procs.StackError) as error:
        procs.wait_until(lambda: False, crashing.name, 120, watch=stack.watcher(crashing, pid, True, {}))
    assert time.monotonic() - began < 30  # not the health timeout
    message = str(error.value)
    assert "airflow-scheduler exited with exit code 3 while starting" in message
    assert "bad setting: parallelism=-1" in message


def test_a_service_that_was_stopping_when_up_began_is_started_again(
    stack_dirs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = subprocess.Popen([sys.executable, "-c", STOPPING_SLOWLY], stdout=subprocess.PIPE, text=True)
    assert old.stdout and old.stdout.readline() == "ready\n"
    old.send_signal(signal.SIGTERM)  # e.g. `kill <pid>` by the user just before `make up`
    assert procs.is_alive(old.pid)  # what `up` sees: still running
    healthy = stack_dirs / "healthy"
    restarted = service(
        "airflow-triggerer", f"open({str(healthy)!r}, 'w').close(); import time; time.sleep(120)"
    )

    procs.wait_until(healthy.exists, restarted.name, 60, watch=stack.watcher(restarted, old.pid, False, {}))

    assert old.wait(timeout=10) == 0
    new_pid = procs.running_pid(restarted.name)
    assert new_pid and new_pid != old.pid
    assert f"airflow-triggerer: pid {old.pid} exited as up began (it was stopping); starting it again" in (
        capsys.readouterr().out
    )


def test_a_service_is_started_again_only_once() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    failing = service("meter-api", "print('address already in use'); raise SystemExit(1)")
    with pytest.raises(procs.StackError, match="meter-api exited with exit code 1 while starting"):
        procs.wait_until(lambda: False, failing.name, 120, watch=stack.watcher(failing, gone.pid, False, {}))
