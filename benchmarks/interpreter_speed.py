"""CPU seconds the same Python work costs on each Python 3.11 of this machine.

    python3 benchmarks/interpreter_speed.py [--rounds 3] [INTERPRETER ...]

Why the Makefile makes both virtualenvs from the system's python3.11 (PY_INTERPRETER): builds of
one CPython version differ in speed. Debian's, the official Docker images' and uv's are built with
PGO and LTO; a plain source build (pyenv's default: `-O3`, no PGO, no LTO, libpython shared) is
not. make test is CPU-bound on 2 cores, so its time follows.

Two workloads, each in a fresh process, the interpreters taking turns (the machine's speed drifts):
- `stdlib`: JSON, regular expressions, dicts and loops, compiling source: pure Python;
- `imports`: what starting Airflow's api-server and a dbt run costs, `import airflow.api_fastapi.main`
  and `import dbt.cli.main` from the project's .venv (its packages are built for CPython 3.11's
  ABI, so any 3.11 imports them), with a throwaway AIRFLOW_HOME.
Without arguments it compares the .venv's interpreter, the system's python3.11 and the first
python3.11 on PATH (each named by the executable it runs). Prints the median CPU seconds of each
and its ratio to the first.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SITE = REPO / ".venv" / "lib" / "python3.11" / "site-packages"

STDLIB = """
import json, re
rows = [{"a": i, "b": str(i) * 3, "c": [i, i + 1, {"x": i}]} for i in range(150_000)]
json.loads(json.dumps(rows))
total = 0
for i in range(2_000_000):
    total += i % 7
pattern = re.compile(r"(\\w+)=(\\d+)")
for _ in range(150_000):
    pattern.findall("abc=1 def=2 ghi=3")
source = "\\n".join(f"def f{i}(x):\\n    return [x * {i} for _ in range(3)]" for i in range(3_000))
exec(compile(source, "generated", "exec"), {})
"""
IMPORTS = "import dbt.cli.main, dbt.adapters.postgres, airflow.api_fastapi.main"


def resolve(interpreter: str) -> str | None:
    """The executable an interpreter (a path, or a name on PATH such as a pyenv shim) really runs."""
    found = shutil.which(interpreter) or interpreter
    try:
        out = subprocess.run(
            [found, "-c", "import sys; print(sys.version_info[:2] == (3, 11), sys._base_executable)"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except OSError:
        return None
    ok, _, executable = out.stdout.strip().partition(" ")
    return os.path.realpath(executable) if out.returncode == 0 and ok == "True" else None


def cpu_of(command: list[str], env: dict[str, str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("interpreters", nargs="*", help="Python 3.11 executables (default: see above)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    candidates = args.interpreters or [
        str(REPO / ".venv" / "bin" / "python"),
        "/usr/bin/python3.11",
        "python3.11",
    ]
    interpreters = list(dict.fromkeys(filter(None, map(resolve, candidates))))
    if not interpreters:
        print(f"no Python 3.11 among {candidates}", file=sys.stderr)
        return 2
    workloads = {"stdlib": STDLIB}
    if SITE.is_dir():
        workloads["imports"] = IMPORTS
    else:
        print(f"no {SITE} (make install): the imports workload is left out", file=sys.stderr)
    with tempfile.TemporaryDirectory() as home:
        env = {
            **os.environ,
            "AIRFLOW_HOME": home,
            "PYTHONPATH": str(SITE),
            "PYTHONDONTWRITEBYTECODE": "1",
            "DO_NOT_TRACK": "1",
            "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False",
        }
        for python in interpreters:  # a first import writes nothing, but warms the page cache
            cpu_of([python, "-c", IMPORTS if "imports" in workloads else "pass"], env)
        seconds = {(w, p): [] for w in workloads for p in interpreters}
        for _ in range(args.rounds):
            for workload, code in workloads.items():
                for python in interpreters:
                    seconds[(workload, python)].append(cpu_of([python, "-c", code], env))
    for workload in workloads:
        base = statistics.median(seconds[(workload, interpreters[0])])
        print(f"{workload} (median CPU-s of {args.rounds} runs, ratio to the first):")
        for python in interpreters:
            median = statistics.median(seconds[(workload, python)])
            print(f"  {median:6.2f} s  {median / base:5.2f}x  {python}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
