"""make test's module scheduler (tests/conftest.py), driven like pytest-xdist drives it, with fake workers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests import conftest

# Module -> number of tests, in MODULE_ORDER's order, and unit modules after them.
MODULES = {
    "tests/integration/test_alerting_e2e.py": 2,
    "tests/integration/test_stack.py": 2,
    "tests/integration/test_scaffold_in_a_copy.py": 1,
    "tests/integration/test_stack_kills.py": 2,
    "tests/integration/test_ui_browser.py": 2,
    "tests/integration/test_backfill.py": 2,
    "tests/integration/test_pipelines_e2e.py": 2,
    "tests/integration/test_local_airbyte.py": 2,
    "tests/integration/test_airbyte_tasks.py": 2,
    "tests/unit/test_dbt_project.py": 2,
    "tests/integration/test_marts_api.py": 2,
    "tests/integration/test_energy_connector.py": 2,
    "tests/integration/test_meter_api.py": 2,
    "tests/unit/test_spec.py": 2,
    "tests/unit/test_alerting.py": 2,
}
COLLECTION = [f"{module}::test_{i}" for module, n in MODULES.items() for i in range(n)]


class Worker:
    def __init__(self, name: str) -> None:
        self.gateway = SimpleNamespace(id=name)
        self.shutting_down = False
        self.queue: list[int] = []  # indexes into COLLECTION, as xdist sends them

    def send_runtest_some(self, indexes: list[int]) -> None:
        assert not self.shutting_down
        self.queue.extend(indexes)

    def shutdown(self) -> None:
        self.shutting_down = True

    def __repr__(self) -> str:
        return self.gateway.id


QUIET = SimpleNamespace(loadscopesched=lambda *args: None, loadfilesched=lambda *args: None)


def scheduler(workers: list[Worker]):
    config = SimpleNamespace(
        getvalue=lambda name: {"dist": "loadfile", "tx": [f"{len(workers)}*popen"]}[name],
        option=SimpleNamespace(loadscopereorder=False),
    )
    sched = conftest.pytest_xdist_make_scheduler(config, QUIET)
    for worker in workers:
        sched.add_node(worker)
        sched.add_node_collection(worker, COLLECTION)
    sched.schedule()
    return sched


def run_to_the_end(sched, workers: list[Worker], order: list[int]) -> dict[str, list[str]]:
    """Each step, the next worker of `order` that has tests runs one, as a worker does: the last test
    it was given waits until it is given more or told to shut down. Returns the modules each ran."""
    ran: dict[str, list[str]] = {w.gateway.id: [] for w in workers}
    steps = 0
    while not sched.tests_finished:
        steps += 1
        assert steps < 10_000, (
            f"stuck: queues {[w.queue for w in workers]}, workqueue {list(sched.workqueue)}"
        )
        runnable = [
            w for w in (workers[i] for i in order) if len(w.queue) > 1 or (w.queue and w.shutting_down)
        ]
        assert runnable, f"no worker can run a test: {[(w, w.queue, w.shutting_down) for w in workers]}"
        worker = runnable[steps % len(runnable)]
        index = worker.queue.pop(0)
        module = COLLECTION[index].split("::")[0].rsplit("/", 1)[1]
        if module not in ran[worker.gateway.id]:
            ran[worker.gateway.id].append(module)
        sched.mark_test_complete(worker, index)
    return ran


@pytest.mark.parametrize("order", [[0, 1, 2], [2, 1, 0], [1, 1, 2, 0]])
def test_the_first_two_of_three_workers_run_every_module_on_a_shared_stack(order: list[int]) -> None:
    workers = [Worker(f"gw{i}") for i in range(3)]
    sched = scheduler(workers)
    ran = run_to_the_end(sched, workers, order)

    every = [m for modules in ran.values() for m in modules]
    assert sorted(every) == sorted(m.rsplit("/", 1)[1] for m in MODULES)  # each module once, on one worker
    on_a_shared_stack = {w for w, modules in ran.items() if set(modules) & conftest.SHARED_STACK_MODULES}
    assert on_a_shared_stack == {"gw0", "gw1"}, ran  # gw0's is `.local`: a `make up` stack is reused
    assert set(ran["gw2"]) >= conftest.OWN_STACK_MODULES, ran  # and the last worker the own stacks
    for worker in on_a_shared_stack:  # its shared modules back to back: its stack starts once
        shared = [m in conftest.SHARED_STACK_MODULES for m in ran[worker]]
        first, last = shared.index(True), len(shared) - 1 - shared[::-1].index(True)
        assert all(shared[first : last + 1]), ran[worker]
    assert all(w.shutting_down for w in workers)


def step(sched, worker: Worker) -> None:
    sched.mark_test_complete(worker, worker.queue.pop(0))


def test_a_worker_without_a_shared_stack_stops_once_only_modules_on_one_are_left() -> None:
    workers = gw0, gw1, gw2 = [Worker(f"gw{i}") for i in range(3)]
    sched = scheduler(workers)
    while len(sched.stack_nodes) < 2:  # gw0 and gw1 go on to modules on their shared stacks
        for worker in (gw0, gw1):
            if len(worker.queue) > 1:
                step(sched, worker)
    while len(gw2.queue) > 1:  # gw2 runs every other module while they are busy
        step(sched, gw2)
    assert sched.stack_nodes == {gw0, gw1}
    assert gw2.shutting_down, "gw2 keeps its last test until told that no more is coming"
    left = {scope.rsplit("/", 1)[1] for scope in sched.workqueue}
    assert left and left <= conftest.SHARED_STACK_MODULES
    step(sched, gw2)
    ran = run_to_the_end(sched, workers, [0, 1])
    assert set(ran["gw0"]) | set(ran["gw1"]) >= left and not ran["gw2"]


def test_a_worker_is_given_its_next_module_at_its_current_modules_last_test() -> None:
    workers = [Worker(f"gw{i}") for i in range(3)]
    scheduler(workers)
    assert [{COLLECTION[i].split("::")[0].rsplit("/", 1)[1] for i in w.queue} for w in workers] == [
        {"test_scaffold_in_a_copy.py", "test_ui_browser.py"},  # one test: the next is queued behind it
        {"test_stack_kills.py"},  # the first on gw1's
        {"test_alerting_e2e.py"},  # the last worker: the own stacks
    ]


@pytest.mark.parametrize("n", [2, 3, 4])
def test_only_the_last_worker_runs_modules_with_stacks_of_their_own(n: int) -> None:
    workers = [Worker(f"gw{i}") for i in range(n)]
    ran = run_to_the_end(scheduler(workers), workers, list(range(n)))
    own = {w for w, modules in ran.items() if set(modules) & conftest.OWN_STACK_MODULES}
    assert own == {f"gw{n - 1}"}, ran
    assert not set(ran[f"gw{n - 1}"]) & conftest.SHARED_STACK_MODULES, ran
    assert sorted(m for modules in ran.values() for m in modules) == sorted(
        m.rsplit("/", 1)[1] for m in MODULES
    )


def test_one_worker_runs_every_module_and_those_on_its_stack_back_to_back() -> None:
    workers = [Worker("gw0")]
    ran = run_to_the_end(scheduler(workers), workers, [0])["gw0"]
    names = [m.rsplit("/", 1)[1] for m in MODULES]
    assert (
        ran
        == [
            *(n for n in names[:4]),  # the own stacks, the scaffold copy, the first on the shared stack
            *(n for n in names[4:] if n in conftest.SHARED_STACK_MODULES),  # then the rest of those
            *(n for n in names[4:] if n not in conftest.SHARED_STACK_MODULES),  # then the others, in order
        ]
    )


@pytest.mark.parametrize("workers, stacks", [(1, 1), (2, 1), (3, 2), (4, 3)])
def test_every_worker_but_one_may_start_a_shared_stack(workers: int, stacks: int) -> None:
    assert conftest.shared_stacks(workers) == stacks
