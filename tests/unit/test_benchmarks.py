"""The benchmark scripts still import, parse their arguments, and call their helpers as they are.

No benchmark runs in the test suite (they need a live stack and print numbers), so a helper whose
signature changed broke one unnoticed (rebuild_range.py calling pipeline_timing.plain_dbt_build
without its new keyword). Each call a benchmark makes to a function of this project (another
benchmark, dev/, tests/, plugins/) is bound against that function's signature here.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = sorted((REPO / "benchmarks").glob("*.py"))
OURS = ("dev", "tests", "elt", *(p.stem for p in BENCHMARKS))


def _import(module: str) -> Any:
    for path in (REPO / "benchmarks", REPO / "plugins", REPO):
        if str(path) not in sys.path:
            sys.path.append(str(path))
    return importlib.import_module(module)


def project_calls(path: Path) -> list[tuple[str, Any, ast.Call]]:
    """(name, function, call) for each call of a function imported `from <project module> import`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    imported: dict[str, Any] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in OURS:
            module = _import(node.module)
            for alias in node.names:
                target = getattr(module, alias.name, None)
                if inspect.isfunction(target) or inspect.isclass(target):
                    imported[alias.asname or alias.name] = target
    return [
        (node.func.id, imported[node.func.id], node)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in imported
    ]


def binding_problems(path: Path) -> list[str]:
    problems = []
    for name, function, call in project_calls(path):
        if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
            continue  # *args / **kwargs: the shape is not known before running
        try:
            inspect.signature(function).bind(*call.args, **{k.arg: k.value for k in call.keywords})
        except TypeError as err:
            problems.append(f"{path.name}:{call.lineno}: {name}(...): {err}")
    return problems


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_each_call_into_the_project_binds_to_its_signature(path: Path) -> None:
    assert not (problems := binding_problems(path)), "\n".join(problems)


def test_a_call_that_does_not_bind_is_reported(tmp_path: Path) -> None:
    """The check above can fail: rebuild_range.py's old call of plain_dbt_build."""
    script = tmp_path / "old_rebuild_range.py"
    script.write_text("from pipeline_timing import plain_dbt_build\nplain_dbt_build('energy', start, end)\n")
    assert binding_problems(script) == [
        "old_rebuild_range.py:2: plain_dbt_build(...): missing a required argument: 'in_process'"
    ]


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_help_lists_the_options(path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(path), "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage:"), result.stdout[:500]


def test_the_reference_work_is_timed_in_a_fresh_airflow_home(monkeypatch: pytest.MonkeyPatch) -> None:
    command_cpu = _import("command_cpu")
    monkeypatch.setenv("AIRFLOW_HOME", "/nonexistent-user-home")
    monkeypatch.setattr(
        command_cpu,
        "REFERENCE",
        "import os, time\nassert os.environ['AIRFLOW_HOME'] != '/nonexistent-user-home'\n"
        "end = time.process_time() + 0.3\nwhile time.process_time() < end: pass",
    )
    # os.times() counts a child's user and system time in whole clock ticks (10 ms each, truncated)
    assert 0.25 <= command_cpu.reference_cpu(Path(sys.executable)) < 5
    assert command_cpu.reference_cpu(REPO / "no-such-venv" / "bin" / "python") is None
    monkeypatch.setattr(command_cpu, "REFERENCE", "raise SystemExit('no airflow here')")
    with pytest.raises(RuntimeError, match="exited 1: no airflow here"):
        command_cpu.reference_cpu(Path(sys.executable))
