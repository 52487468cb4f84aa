"""Session-wide fixtures: the live local stack (started on demand) and an Airflow REST client."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugins")]

# Parsing DAGs in tests must not need a database or the network.
os.environ.setdefault("AIRFLOW__COSMOS__ENABLE_TELEMETRY", "False")
os.environ.setdefault("AIRFLOW__COSMOS__ENABLE_CACHE_DBT_YAML_SELECTORS", "False")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
# Stacks started by the tests sync February 2023 only (the dates the tests check), not every
# day up to yesterday: the energy connector's end_date (include/airbyte/workspace.yaml).
os.environ.setdefault("ENERGY_END_DATE", "2023-02-28")
# Airflow's own files for in-process use (DagBag, hooks) stay out of the user's home.
os.environ.setdefault("AIRFLOW_HOME", str(REPO / ".local" / "pytest-airflow-home"))

from dev.airflow_client import AirflowClient  # noqa: E402

# The order workers take modules in (make test runs pytest-xdist with --no-loadscope-reorder; xdist's
# own order is by number of tests), each worker taking the next module it may run as it starts the
# last test of its current one (pytest_xdist_make_scheduler). The last worker runs the modules that
# start stacks of their own (OWN_STACK_MODULES); the others run the scaffold copy (its own stack in
# a copy of the checkout, ~5 min) before their shared stacks start, then the modules on those,
# longest first (`--durations`, make test on 2 cores); modules without a stack go to whoever is free.
MODULE_ORDER = [
    # own stacks: the last worker
    "test_alerting_e2e.py",
    "test_stack.py",
    # the scaffold copy, then the modules on a worker's shared stack (SHARED_STACK_MODULES)
    "test_scaffold_in_a_copy.py",
    "test_stack_kills.py",
    "test_ui_browser.py",
    "test_backfill.py",
    "test_pipelines_e2e.py",
    "test_local_airbyte.py",
    "test_airbyte_tasks.py",
    "test_dbt_project.py",
    "test_marts_api.py",
    # no stack (their own meter API), then everything else
    "test_energy_connector.py",
    "test_meter_api.py",
]
# Modules that start and stop stacks of their own (processes they must own: the stack's life cycle,
# alert routes and retry settings fixed at start): the last worker runs them, one after the other.
OWN_STACK_MODULES = {"test_alerting_e2e.py", "test_stack.py"}
# The modules whose tests use the worker's shared stack (the `stack` or `scratch_warehouse` fixture):
# pytest_collection_finish checks that it names every module whose tests ask for them.
SHARED_STACK_MODULES = {
    "test_stack_kills.py",
    "test_ui_browser.py",
    "test_backfill.py",
    "test_pipelines_e2e.py",
    "test_local_airbyte.py",
    "test_airbyte_tasks.py",
    "test_dbt_project.py",
    "test_marts_api.py",
    "test_scaffold_e2e.py",  # `-m serial` only: in the scaffold copy
}
# Fixtures that use the worker's shared stack: scratch_warehouse asks for `stack` itself when needed.
_STACK_FIXTURES = {"stack", "scratch_warehouse"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(MODULE_ORDER)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a module kept


def pytest_collection_finish(session: pytest.Session) -> None:
    using = {i.path.name for i in session.items if _STACK_FIXTURES & set(getattr(i, "fixturenames", ()))}
    if missing := sorted(using - SHARED_STACK_MODULES):
        raise pytest.UsageError(
            f"tests/conftest.py: add {missing} to SHARED_STACK_MODULES: their tests use the worker's "
            "shared stack (the `stack` or `scratch_warehouse` fixture), and make test's scheduler "
            "gives modules on a shared stack only to the workers that start one"
        )


def shared_stacks(workers: int) -> int:
    """How many workers start a shared stack (gw0, gw1, ...): all but the last, which runs the
    modules with stacks of their own (OWN_STACK_MODULES). Each stack costs ~80 CPU-seconds to
    start and take its first run (Airflow builds its execution API's versioned routes then) and ~6
    a minute idle, and make test is CPU-bound on 2 cores: a third shared stack cost more than the
    parallelism it gave. gw0 is always one of them: its stack is `.local`, a `make up` stack."""
    return max(1, workers - 1)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadfile`, but a worker gets its next module only once it runs its last test, and
    each worker has a role: the first `shared_stacks(workers)` run the modules on a shared stack
    (and the scaffold copy), the last one the modules with stacks of their own.

    xdist hands a module over when two tests are left, so a worker running a module of one or two
    tests (the scaffold copy) got two more modules queued behind it, and a long module could end up
    last, alone, while the other workers had nothing left to do. A worker that has a shared stack
    takes the modules that use it while any are left (so it does not stop and start it again); every
    worker takes the first module its role allows, and stops when none is left.
    """
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class ModuleAtATime(LoadFileScheduling):
        def __init__(self, config: pytest.Config, log: Any) -> None:
            super().__init__(config, log)
            self.stack_nodes: set[Any] = set()  # the workers that started their shared stack

        def _reschedule(self, node: Any) -> None:
            if not node.shutting_down and self.workqueue and self._pending_of(self.assigned_work[node]) > 1:
                return
            super()._reschedule(node)

        def _assign_work_unit(self, node: Any) -> None:
            allowed = [s for s in self.workqueue if may_run(node.gateway.id, len(self.nodes), _module(s))]
            if node in self.stack_nodes:
                allowed = [s for s in allowed if _module(s) in SHARED_STACK_MODULES] or allowed
            if not allowed:  # what is left is for workers of the other role
                node.shutdown()  # (a worker runs the last test it was given once told there is no more)
                return
            if _module(allowed[0]) in SHARED_STACK_MODULES:
                self.stack_nodes.add(node)
            self.workqueue.move_to_end(allowed[0], last=False)
            super()._assign_work_unit(node)

    return ModuleAtATime(config, log)


def _module(scope: str) -> str:
    return Path(scope.split("::")[0]).name


def may_run(worker: str, workers: int, module: str) -> bool:
    """Whether make test's scheduler gives `module` to `worker` (gwN) of `workers`: the workers that
    start a shared stack run no module with a stack of its own, and the others none on a shared stack."""
    if workers == 1:
        return True
    if int(worker.removeprefix("gw")) < shared_stacks(workers):
        return module not in OWN_STACK_MODULES
    return module not in SHARED_STACK_MODULES


def read_stack_env(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            env[key] = shlex.split(value)[0] if value else ""
    return env


def worker_stack_settings(worker: str | None = None) -> dict[str, str]:
    """STACK_HOME and ports of this xdist worker's stack; none for a plain run or the first worker.

    make test runs `pytest -n N --dist loadfile`: a module's tests stay on one worker, in order,
    and each worker that runs a module on the shared stack starts a stack of its own. (Modules
    like test_alerting_e2e start their own stacks on fixed ports, as before.) Not loadgroup:
    pytest 9.2 ignores its groups (pytest-dev/pytest-xdist#1386).

    The first worker (and a run without -n) uses `.local` and the default ports, so a stack
    started by `make up` is reused. The others get `.local-pytest/gwN` (not under `.local`: a
    stack counts the processes working under its home as its own) and ports below Linux's
    ephemeral range (32768-60999), apart from every fixed port the tests use.
    """
    worker = worker or os.environ.get("PYTEST_XDIST_WORKER") or "gw0"
    n = int(worker.removeprefix("gw") or 0)
    if n == 0:
        return {}
    return {
        "STACK_HOME": str(REPO / ".local-pytest" / worker),
        "STACK_PG_PORT": str(25440 + n),
        "STACK_REDIS_PORT": str(26380 + n),
        "STACK_AIRBYTE_PORT": str(28000 + 10 * n),
        "STACK_METER_PORT": str(28001 + 10 * n),
        "STACK_RECEIVERS_HTTP_PORT": str(28002 + 10 * n),
        "STACK_RECEIVERS_SMTP_PORT": str(28003 + 10 * n),
        "STACK_AIRFLOW_PORT": str(28100 + 10 * n),  # and +713..+715 (log servers, health)
    }


# Whatever this worker starts (`dev.stack up`, a restart of one service) finds its own stack.
os.environ.update(worker_stack_settings())


def _stack_home() -> Path:
    home = worker_stack_settings().get("STACK_HOME") or os.environ.get("STACK_HOME", REPO / ".local")
    return Path(home).resolve()


class _SharedStack:
    """The worker's shared stack, if this session started it (not one `make up` left running).

    It is stopped while the worker runs modules that do not use it (an idle stack costs ~5 CPU-s a
    minute, and make test is CPU-bound), and started again (same home, ports and data) if a later
    module does: make test's module order makes that rare. While it is stopped, its settings are
    out of os.environ too (a module without it then starts what it needs, e.g. its own meter API).
    """

    def __init__(self) -> None:
        self.run_env: dict[str, str] | None = None  # set when this session started it
        self.env: dict[str, str] = {}  # stack.env, put in os.environ while it runs
        self.saved: dict[str, str | None] = {}
        self.running = False

    def export(self, env: dict[str, str]) -> None:
        self.env, self.saved = env, {key: os.environ.get(key) for key in env}
        os.environ.update(env)

    def unexport(self) -> None:
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    def command(self, name: str) -> None:
        assert self.run_env is not None
        if name == "down":
            self.unexport()
        subprocess.run(
            [sys.executable, "-m", "dev.stack", name], cwd=REPO, env=self.run_env, check=name == "up"
        )
        if name == "up":
            self.export(self.env)
        self.running = name == "up"


_SHARED_STACK = _SharedStack()


def _on_the_shared_stack(item: pytest.Item) -> bool:
    return item.path.name in SHARED_STACK_MODULES


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if _SHARED_STACK.run_env is not None and not _SHARED_STACK.running and _on_the_shared_stack(item):
        _SHARED_STACK.command("up")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):
    result = yield  # the item's fixtures are torn down, and its module's if the next is another's
    if _SHARED_STACK.running and nextitem is not None and not _on_the_shared_stack(nextitem):
        _SHARED_STACK.command("down")
    return result


@pytest.fixture(scope="session")
def restart_stack(stack: dict[str, str]) -> Callable[[], None]:
    """`dev.stack up` on this worker's running shared stack, with the settings it was started with:
    it starts again whatever of it died (for tests that kill one of its services).

    A fixture, not a function to import: pytest loads this file as the module `conftest`, and an
    import of `tests.conftest` would be a second copy without the settings of the running stack
    (a scheduler restarted without them ran cron-scheduled runs beside the tests' own).
    """

    def restart() -> None:
        env = _SHARED_STACK.run_env or {**os.environ, **worker_stack_settings()}
        up = subprocess.run(
            [sys.executable, "-m", "dev.stack", "up"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert up.returncode == 0, f"dev.stack up:\n{up.stdout[-3000:]}{up.stderr[-3000:]}"

    return restart


@pytest.fixture(scope="session")
def stack() -> dict[str, str]:
    """The running local stack's environment (`.local/stack.env`), starting the stack if needed.

    A stack this fixture started is stopped at the end of the session (KEEP_STACK=1 keeps it),
    and while the worker runs modules that do not use it; a stack that was already up is left
    running. Under xdist, each worker has its own stack.
    """
    python = sys.executable
    # No cron-scheduled runs on a stack the tests start: unpausing a catchup=False DAG would
    # start a run of its latest interval (a real sync and dbt build nobody checks) beside the
    # tests' own runs. Manual runs and backfills run as usual.
    run_env = {**os.environ, **worker_stack_settings(), "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False"}
    already_up = (
        subprocess.run(
            [python, "-m", "dev.stack", "status"], cwd=REPO, env=run_env, capture_output=True
        ).returncode
        == 0
    )
    managed = not already_up and os.environ.get("KEEP_STACK") != "1"
    if not already_up:
        subprocess.run([python, "-m", "dev.stack", "up"], cwd=REPO, env=run_env, check=True)
        if managed:
            _SHARED_STACK.run_env, _SHARED_STACK.running = run_env, True
    env = read_stack_env(_stack_home() / "stack.env")
    exported = _SHARED_STACK if managed else _SharedStack()
    exported.export(env)
    yield env
    if not managed:
        exported.unexport()
    elif _SHARED_STACK.running:
        _SHARED_STACK.command("down")  # and its settings out of os.environ


@pytest.fixture(scope="session")
def airflow(stack: dict[str, str]) -> AirflowClient:
    return AirflowClient.from_env(stack)
