"""CPU seconds a command costs the machine, by kind of process (sampled from /proc).

    .venv/bin/python benchmarks/command_cpu.py -- make test
    .venv/bin/python benchmarks/command_cpu.py --every 0.5 -- .venv/bin/pytest tests/integration/test_backfill.py

Runs the command, samples every process's own CPU time every `--every` seconds while it runs, and
prints the machine's CPU (/proc/stat) and the CPU of each kind of process: the Airflow services of
every stack, task runners (and the dbt they start), the local Airbyte, Postgres, Chromium, pytest.
A process is sorted by its command line when first seen, or else by its parent's kind (children of
a task runner count as task runner unless they are dbt). What a process spends after the last
sample before it exits is missed: the kinds add up to a little less than the machine's total.
This is how make test's CPU was broken down (README, "Testing").
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HZ = os.sysconf("SC_CLK_TCK")
# (substring of the command line, kind): the first match wins.
KINDS = (
    ("bin/dbt", "dbt"),
    ("chromium", "chromium"),
    ("postgres", "postgres"),
    ("redis-server", "redis"),
    ("airflow scheduler", "airflow scheduler"),
    ("airflow dag-processor", "airflow dag-processor"),
    ("airflow triggerer", "airflow triggerer"),
    ("api_server", "airflow api-server"),
    ("airflow api-server", "airflow api-server"),
    ("airflow worker", "task runner"),
    ("airflow celery", "celery worker"),
    ("airflow db", "airflow db migrate"),
    ("airflow ", "other airflow commands"),
    ("dev.airbyte_server", "local Airbyte (server, jobs, connectors)"),
    ("dev.meter_api", "meter API"),
    ("dev.receivers", "alert receivers"),
    ("dev.stack", "dev.stack (up/down)"),
    ("pytest", "pytest"),
)
INHERITS = {"task runner", "local Airbyte (server, jobs, connectors)", "celery worker"}


def kind_of(cmdline: str, parent_kind: str | None) -> str:
    own = next((kind for key, kind in KINDS if key in cmdline), None)
    if parent_kind in INHERITS and own != "dbt":
        return parent_kind
    return own or parent_kind or "other"


def machine_cpu() -> float:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return sum(int(v) for v in fields[:3]) / HZ


def sample(kinds: dict[int, str], last: dict[int, float], totals: dict[str, float], started: bool) -> None:
    seen = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = (
                ""
                if pid in kinds
                else Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            )
        except (OSError, UnicodeDecodeError):
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / HZ
        if pid not in kinds:
            kinds[pid] = kind_of(cmdline, kinds.get(int(fields[1])))
            last[pid] = 0.0 if started else cpu  # a process born during the run: all its CPU counts
        totals[kinds[pid]] = totals.get(kinds[pid], 0.0) + max(0.0, cpu - last[pid])
        last[pid] = cpu
        seen.add(pid)
    for pid in set(kinds) - seen:
        kinds.pop(pid)
        last.pop(pid, None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--every", type=float, default=0.5, help="seconds between samples (default 0.5)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to measure after --")
    kinds: dict[int, str] = {}
    last: dict[int, float] = {}
    totals: dict[str, float] = {}
    sample(kinds, last, {}, started=False)  # what runs already: only its CPU from now on counts
    machine, wall = machine_cpu(), time.monotonic()
    proc = subprocess.Popen(command)
    while proc.poll() is None:
        time.sleep(args.every)
        sample(kinds, last, totals, started=True)
    wall, machine = time.monotonic() - wall, machine_cpu() - machine
    print(
        f"\n{' '.join(command)}: exit {proc.returncode} after {wall:.0f} s wall; machine CPU {machine:.0f} s"
    )
    print(f"({machine / wall:.2f} of {os.cpu_count()} cores busy on average), by kind of process:")
    for kind, cpu in sorted(totals.items(), key=lambda item: -item[1]):
        if cpu >= 0.5:
            print(f"  {cpu:8.1f} s  {kind}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
