"""House rules every pipeline DAG follows, whoever wrote its spec.

The rules read the vocabulary (include/pipelines/vocabulary.yaml) and each DAG's own shape, never
a list of shipped pipelines: a team's new pipeline passes when it follows them and fails naming
the rule it breaks. `test_rules_can_fail` shows each rule rejecting a DAG that breaks it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import pytest
from airflow.sdk import DAG, CronDataIntervalTimetable

from elt.spec import vocabulary

Rule = Callable[[DAG], list[str]]


def _owners_in_vocabulary(dag: DAG) -> list[str]:
    owners = vocabulary().owners
    return [
        f"task {t.task_id}: owner {t.owner!r}" for t in dag.tasks if not set(t.owner.split(", ")) <= owners
    ]


def _tags_in_vocabulary(dag: DAG) -> list[str]:
    words = vocabulary()
    unknown = sorted(set(dag.tags) - words.tags - words.owners)
    return [f"tags {unknown}"] if unknown else []


def _documented(dag: DAG) -> list[str]:
    doc = dag.doc_md or ""
    return [f"doc_md lacks {word!r}" for word in ("Owners", "Re-run", "Backfill") if word not in doc]


def _bounded_runs(dag: DAG) -> list[str]:
    problems = [] if dag.dagrun_timeout else ["no dagrun_timeout"]
    return problems + ([] if dag.max_active_runs >= 1 else ["max_active_runs < 1"])


def _no_catchup(dag: DAG) -> list[str]:
    return ["catchup=True would schedule every interval since start_date"] if dag.catchup else []


def _tasks_retry(dag: DAG) -> list[str]:
    return [f"task {t.task_id}: retries={t.retries}" for t in dag.tasks if t.retries < 1]


def _pages_on_failure(dag: DAG) -> list[str]:
    problems = [f"task {t.task_id}: no on_failure_callback" for t in dag.tasks if not t.on_failure_callback]
    if not (dag.on_failure_callback and dag.on_success_callback):
        problems.append("no run failure/success callbacks")
    return problems + ([] if dag.deadline else ["no deadline alert"])


def _airbyte_then_dbt(dag: DAG) -> list[str]:
    groups = {t.split(".")[0] for t in dag.task_ids if t.startswith("airbyte_")}
    problems = []
    for group in sorted(groups):
        sync, wait = dag.get_task(f"{group}.sync"), dag.get_task(f"{group}.wait")
        if wait.upstream_task_ids != {sync.task_id}:
            problems.append(f"{group}.wait does not follow {group}.sync")
        if not wait.outlets:
            problems.append(f"{group}.wait publishes no stream assets")
    waits = {f"{g}.wait" for g in groups}
    for task in dag.tasks:
        if task.task_id.startswith("dbt.") and not waits <= {
            t.task_id for t in task.get_flat_relatives(upstream=True)
        }:
            problems.append(f"{task.task_id} may start before every Airbyte wait")
    return problems


def _real_data_intervals(dag: DAG) -> list[str]:
    # Cron schedules alone get zero-length intervals in Airflow 3: windowed dbt models need real ones.
    timetable = dag.timetable
    if getattr(timetable, "expression", None) and not isinstance(timetable, CronDataIntervalTimetable):
        return [f"cron schedule with {type(timetable).__name__}, not CronDataIntervalTimetable"]
    return []


RULES: dict[str, Rule] = {
    "owners come from the vocabulary": _owners_in_vocabulary,
    "tags come from the vocabulary": _tags_in_vocabulary,
    "doc_md says who owns it and how to re-run and backfill": _documented,
    "runs are bounded": _bounded_runs,
    "no catchup": _no_catchup,
    "every task retries": _tasks_retry,
    "failures page on-call, with a deadline": _pages_on_failure,
    "Airbyte syncs, then waits publishing assets, then dbt": _airbyte_then_dbt,
    "cron schedules have real data intervals": _real_data_intervals,
}


@pytest.mark.parametrize("rule", RULES)
def test_house_rule(dagbag, rule: str) -> None:
    assert dagbag.dags, "no DAGs parsed"
    broken = [f"  {dag_id}: {p}" for dag_id, dag in sorted(dagbag.dags.items()) for p in RULES[rule](dag)]
    assert not broken, f"house rule {rule!r} broken:\n" + "\n".join(broken)


def test_rules_can_fail() -> None:
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import TaskGroup

    with DAG(
        "rule_breaker",
        schedule="0 0 * * *",
        start_date=datetime(2024, 1, 1),
        catchup=True,
        tags=["misc"],
        max_active_runs=0,
    ) as dag:
        with TaskGroup("airbyte_x"):
            sync = EmptyOperator(task_id="sync", owner="nobody", retries=0)
            EmptyOperator(task_id="wait", retries=0)
        with TaskGroup("dbt"):
            EmptyOperator(task_id="model", retries=0) << sync
    dag.dagrun_timeout = None
    unbroken = [name for name, rule in RULES.items() if not rule(dag)]
    assert unbroken == [], f"rules that accept a DAG breaking them: {unbroken}"
