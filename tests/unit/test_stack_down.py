"""`dev.stack down`: services stop side by side, the task runners before what they talk to."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from dev.stack import __main__ as stack
from dev.stack import procs
from tests.unit.test_stack_up_watch import stack_dirs  # noqa: F401  (autouse: pid files and logs in tmp_path)

# A service that notes when SIGTERM reached it and when it exited (a second later, as Airflow's
# services shut down gracefully); IGNORES_TERM never exits on SIGTERM.
STOPPING_SLOWLY = (
    "import signal, sys, time\n"
    "def stop(*_):\n"
    "    open(sys.argv[1], 'a').write(f'term {time.time()}\\n'); time.sleep(1)\n"
    "    open(sys.argv[1], 'a').write(f'exit {time.time()}\\n'); sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, stop)\n"
    "open(sys.argv[1], 'a').write(f'ready {time.time()}\\n')\n"
    "time.sleep(120)\n"
)
IGNORES_TERM = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "open(sys.argv[1], 'a').write(f'ready {time.time()}\\n')\n"
    "time.sleep(120)\n"
)


def start(name: str, code: str, tmp_path: Path) -> Path:
    notes = tmp_path / f"{name}.notes"
    procs.start(name, [sys.executable, "-c", code, str(notes)], {}, tmp_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not notes.exists():  # its SIGTERM handler is in place
        time.sleep(0.05)
    return notes


def noted(notes: Path) -> dict[str, float]:
    return {word: float(at) for word, at in (line.split() for line in notes.read_text().splitlines())}


def test_stop_all_signals_every_service_before_waiting_for_any(tmp_path: Path) -> None:
    notes = [start(name, STOPPING_SLOWLY, tmp_path) for name in ("airflow-scheduler", "airflow-triggerer")]
    assert procs.stop_all(["airflow-scheduler", "airflow-triggerer", "not-running"]) == [
        "airflow-scheduler",
        "airflow-triggerer",
    ]
    first, second = (noted(n) for n in notes)
    assert second["term"] < first["exit"]  # the second was told to stop while the first shut down
    assert not list((tmp_path / "run").glob("*.pid"))


def test_a_service_that_ignores_sigterm_is_killed_at_the_timeout(tmp_path: Path) -> None:
    start("airbyte", IGNORES_TERM, tmp_path)
    pid = procs.running_pid("airbyte")
    assert pid is not None
    assert procs.stop_all(["airbyte"], timeout=1) == ["airbyte"]
    deadline = time.monotonic() + 10
    while procs.is_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not procs.is_alive(pid)
    assert procs.running_pid("airbyte") is None


def test_down_stops_the_task_runners_before_what_they_talk_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = ["meter-api", "airbyte", "airflow-api-server", "airflow-scheduler", "airflow-triggerer"]
    notes = {name: start(name, STOPPING_SLOWLY, tmp_path) for name in names}
    monkeypatch.setattr(stack, "services", lambda ports: [stack.Service(n, [], None) for n in names])
    monkeypatch.setattr(stack.postgres, "stop", lambda: False)
    monkeypatch.setattr(stack.procs, "kill_stragglers", lambda: [])
    stack.down()
    at = {name: noted(path) for name, path in notes.items()}
    runners_done = max(at[n]["exit"] for n in ("airflow-scheduler", "airflow-triggerer"))
    assert abs(at["airflow-scheduler"]["term"] - at["airflow-triggerer"]["term"]) < 0.5  # together
    for talked_to in ("meter-api", "airbyte", "airflow-api-server"):
        assert at[talked_to]["term"] >= runners_done, talked_to
