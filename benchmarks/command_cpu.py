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

`--by-stack` also sums it by the stack a process belongs to (the `ELT_STACK_HOME` every process
the stack starts carries, else its parent's stack, else a stack home it works in): what each test
stack costs from its start to its stop, scenarios, start-up and idle time together. Under
`make test`, compose-test (its build, engine and containers) counts as no stack.

`--reference` also times a fixed piece of work before and after the command: building Airflow's API
app (`import airflow.api_fastapi.main`, what every api-server start does), in CPU seconds. The same
machine has taken 6.9 to 15.4 s for it on one day: a command's time is only comparable with
another's at a similar reference.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
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


REPO = Path(__file__).resolve().parents[1]
REFERENCE = "import airflow.api_fastapi.main"


def reference_cpu(python: Path = REPO / ".venv" / "bin" / "python") -> float | None:
    """CPU seconds of REFERENCE in a fresh Airflow home; None if there is no virtualenv yet.
    Raises RuntimeError, with the end of its output, if the reference work fails."""
    if not python.exists():
        return None
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_")}
    with tempfile.TemporaryDirectory() as home:
        env.update(AIRFLOW_HOME=home, DO_NOT_TRACK="1", AIRFLOW__CORE__LOAD_EXAMPLES="False")
        before = os.times()
        done = subprocess.run([str(python), "-c", REFERENCE], env=env, capture_output=True, text=True)
        after = os.times()
    if done.returncode != 0:
        raise RuntimeError(f"`{python} -c '{REFERENCE}'` exited {done.returncode}: {done.stderr[-500:]}")
    return (after.children_user - before.children_user) + (after.children_system - before.children_system)


def print_reference(when: str) -> None:
    try:
        cpu = reference_cpu()
    except RuntimeError as err:
        print(f"reference ({when}): not measured, {err}")
        return
    found = f"{cpu:.1f} CPU-s for `{REFERENCE}`" if cpu is not None else "no .venv to run it with"
    print(f"reference ({when}): {found}")


MARKER = b"ELT_STACK_HOME="  # dev/stack/config.py: set on every process a stack starts


def stack_of(pid: int, parent_stack: str | None, homes: set[str]) -> str | None:
    """The stack home of a process: its marker, its parent's stack, or a known home it works in
    (Airflow and Postgres overwrite their /proc environ when they set a process title)."""
    try:
        for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            if item.startswith(MARKER):
                homes.add(item[len(MARKER) :].decode(errors="replace"))
                return item[len(MARKER) :].decode(errors="replace")
        if parent_stack:
            return parent_stack
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return parent_stack
    return next((home for home in homes if cwd == home or cwd.startswith(f"{home}/")), None)


def sample(
    kinds: dict[int, str],
    last: dict[int, float],
    totals: dict[str, float],
    started: bool,
    stacks: dict[int, str | None] | None = None,
    by_stack: dict[tuple[str, str], float] | None = None,
    homes: set[str] | None = None,
) -> None:
    """One pass over /proc: add each process's CPU since the last pass to its kind's total (and,
    given `stacks`, to its (stack, kind) total in `by_stack`)."""
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
            if stacks is not None:
                stacks[pid] = stack_of(pid, stacks.get(int(fields[1])), homes if homes is not None else set())
        spent = max(0.0, cpu - last[pid])
        totals[kinds[pid]] = totals.get(kinds[pid], 0.0) + spent
        if stacks is not None and by_stack is not None:
            key = (stacks.get(pid) or "(no stack: pytest, CLI, builds)", kinds[pid])
            by_stack[key] = by_stack.get(key, 0.0) + spent
        last[pid] = cpu
        seen.add(pid)
    for pid in set(kinds) - seen:
        kinds.pop(pid)
        last.pop(pid, None)
        if stacks is not None:
            stacks.pop(pid, None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--every", type=float, default=0.5, help="seconds between samples (default 0.5)")
    parser.add_argument("--by-stack", action="store_true", help="also sum the CPU by stack (ELT_STACK_HOME)")
    parser.add_argument(
        "--reference", action="store_true", help="time a fixed piece of work before and after (machine speed)"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to measure after --")
    kinds: dict[int, str] = {}
    last: dict[int, float] = {}
    totals: dict[str, float] = {}
    stacks: dict[int, str | None] | None = {} if args.by_stack else None
    by_stack: dict[tuple[str, str], float] = {}
    homes: set[str] = set()
    if args.reference:
        print_reference("before")
    sample(kinds, last, {}, False, stacks, {}, homes)  # what runs already: only its CPU from now on counts
    machine, wall = machine_cpu(), time.monotonic()
    proc = subprocess.Popen(command)
    while proc.poll() is None:
        time.sleep(args.every)
        sample(kinds, last, totals, True, stacks, by_stack, homes)
    wall, machine = time.monotonic() - wall, machine_cpu() - machine
    print(
        f"\n{' '.join(command)}: exit {proc.returncode} after {wall:.0f} s wall; machine CPU {machine:.0f} s"
    )
    print(f"({machine / wall:.2f} of {os.cpu_count()} cores busy on average), by kind of process:")
    for kind, cpu in sorted(totals.items(), key=lambda item: -item[1]):
        if cpu >= 0.5:
            print(f"  {cpu:8.1f} s  {kind}")
    if args.by_stack:
        print("by stack (ELT_STACK_HOME), with its kinds of process (>= 5 s):")
        stack_totals: dict[str, float] = {}
        for (stack, _), cpu in by_stack.items():
            stack_totals[stack] = stack_totals.get(stack, 0.0) + cpu
        for stack, cpu in sorted(stack_totals.items(), key=lambda item: -item[1]):
            if cpu >= 0.5:
                parts = sorted(((k, c) for (s, k), c in by_stack.items() if s == stack), key=lambda i: -i[1])
                detail = ", ".join(f"{kind} {c:.0f}" for kind, c in parts if c >= 5)
                print(f"  {cpu:8.1f} s  {stack}" + (f"  ({detail})" if detail else ""))
    if args.reference:
        print_reference("after")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
