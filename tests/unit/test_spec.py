"""Pipeline spec validation: each malformed spec is rejected with the exact file, field and reason."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from elt import paths
from elt.spec import Problem, SpecError, check_specs, load_spec, parse_spec, spec_files, vocabulary

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "include" / "pipelines"
VALID = yaml.safe_load((SHIPPED / "energy_meters.yaml").read_text())
ECOMMERCE = yaml.safe_load((SHIPPED / "ecommerce_sales.yaml").read_text())
CONN = "4d2f7268-e2ac-4fa7-a3a6-97286f22d617"


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"selectors": {"energy": {}, "ecommerce": {}}}))
    return path


@pytest.fixture(autouse=True)
def no_declared_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(__import__("os").environ):
        if key.startswith("AIRFLOW_CONN_"):
            monkeypatch.delenv(key)


def write(directory: Path, name: str, data: object) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def mutate(base: dict, changes: dict[str, object]) -> dict:
    """A copy of `base` with dotted fields set (value `...` deletes the field)."""
    spec = copy.deepcopy(base)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = spec
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is ...:
            del node[int(last) if last.isdigit() else last]
        elif last.isdigit():
            node[int(last) : int(last) + 1] = [value]
        else:
            node[last] = value
    return spec


def test_shipped_specs_are_valid(manifest: Path) -> None:
    for path in spec_files(SHIPPED):
        assert load_spec(path, manifest).name == path.stem


POSITIVE = "must be a positive duration"
PATTERN = "String should match pattern '^[a-z][a-z0-9_]*$'"
VOCAB_OWNERS = "['commerce-analytics', 'data-platform', 'energy-analytics']"

# (id, changes to energy_meters.yaml, field or None, reason)
MATRIX: list[tuple[str, dict[str, object], str | None, str]] = [
    (
        "name-of-another-pipeline",
        {"name": "ecommerce_sales"},
        "name",
        "'ecommerce_sales' differs from the file name 'energy_meters': a pipeline's name is its file's stem "
        "(drop `name`, or rename the file)",
    ),
    (
        "name-v2",
        {"name": "energy_meters_v2"},
        "name",
        "'energy_meters_v2' differs from the file name 'energy_meters': a pipeline's name is its file's stem "
        "(drop `name`, or rename the file)",
    ),
    (
        "description-short",
        {"description": "short"},
        "description",
        "String should have at least 10 characters",
    ),
    ("description-missing", {"description": ...}, "description", "required field is missing"),
    (
        "owner-unknown",
        {"owners": ["someone-else"]},
        "owners",
        f"unknown owner ['someone-else']; known owners: {VOCAB_OWNERS} (include/pipelines/vocabulary.yaml)",
    ),
    ("owners-empty", {"owners": []}, "owners", "List should have at least 1 item after validation, not 0"),
    ("owners-missing", {"owners": ...}, "owners", "required field is missing"),
    (
        "tag-unknown",
        {"tags": ["energy", "misc"]},
        "tags",
        "unknown tag ['misc']; known tags: ['airbyte', 'daily', 'dbt', 'ecommerce', 'energy', 'finance', "
        "'hourly', 'tier-1', 'tier-2'] (include/pipelines/vocabulary.yaml)",
    ),
    ("tags-not-a-list", {"tags": "energy"}, "tags", "Input should be a valid list"),
    (
        "schedule-words",
        {"schedule": "every day"},
        "schedule",
        "'every day' is not a 5-field cron expression or one of "
        "['@daily', '@hourly', '@monthly', '@weekly', '@yearly']",
    ),
    (
        "schedule-minute-61",
        {"schedule": "61 3 * * *"},
        "schedule",
        "'61 3 * * *' is not a valid cron expression",
    ),
    (
        "schedule-and-assets",
        {"trigger_on_assets": ["raw_energy.muid_1"]},
        None,
        "set either `schedule` or `trigger_on_assets`, not both",
    ),
    (
        "asset-not-a-table",
        {"schedule": None, "trigger_on_assets": ["not a table"]},
        "trigger_on_assets",
        "['not a table'] are not `schema.table` or an asset URI",
    ),
    (
        "asset-twice",
        {"schedule": None, "trigger_on_assets": ["raw_energy.muid_1", "raw_energy.muid_1"]},
        "trigger_on_assets",
        "an asset is listed twice",
    ),
    (
        "start-date-invalid",
        {"start_date": "2023-02-30"},
        "start_date",
        "Input should be a valid date or datetime, day value is outside expected range",
    ),
    ("start-date-missing", {"start_date": ...}, "start_date", "required field is missing"),
    (
        "catchup-not-bool",
        {"catchup": "sometimes"},
        "catchup",
        "Input should be a valid boolean, unable to interpret input",
    ),
    (
        "paused-not-bool",
        {"paused": "maybe"},
        "paused",
        "Input should be a valid boolean, unable to interpret input",
    ),
    ("no-airbyte-no-dbt", {"airbyte": ..., "dbt": ...}, None, "a pipeline needs `airbyte`, `dbt` or both"),
    (
        "connections-empty",
        {"airbyte.connections": []},
        "airbyte.connections",
        "List should have at least 1 item after validation, not 0",
    ),
    (
        "connection-id-not-uuid",
        {"airbyte.connections.0.id": "not-a-uuid"},
        "airbyte.connections.0.id",
        "Input should be a valid UUID, invalid character: found `n` at 0",
    ),
    ("connection-name-caps", {"airbyte.connections.0.name": "Energy"}, "airbyte.connections.0.name", PATTERN),
    (
        "destination-schema-missing",
        {"airbyte.connections.0.destination_schema": ...},
        "airbyte.connections.0.destination_schema",
        "required field is missing",
    ),
    (
        "streams-empty",
        {"airbyte.connections.0.streams": []},
        "airbyte.connections.0.streams",
        "List should have at least 1 item after validation, not 0",
    ),
    (
        "stream-twice",
        {"airbyte.connections.0.streams": ["muid_1", "muid_1"]},
        "airbyte.connections.0.streams",
        "stream listed twice: ['muid_1']",
    ),
    (
        "connection-unknown-field",
        {"airbyte.connections.0.schema": "raw"},
        "airbyte.connections.0.schema",
        "unknown field (check the spelling; see include/pipelines/README.md)",
    ),
    (
        "connection-twice",
        {"airbyte.connections.1": dict(VALID["airbyte"]["connections"][0], name="energy2")},
        "airbyte.connections",
        "two connections share the same id",
    ),
    (
        "poll-interval-hour",
        {"airbyte.poll_interval": "PT1H"},
        "airbyte.poll_interval",
        "must be between 1 second and 10 minutes (got 1 hour)",
    ),
    (
        "poll-interval-zero",
        {"airbyte.poll_interval": "PT0S"},
        "airbyte.poll_interval",
        f"{POSITIVE} (got 0 seconds)",
    ),
    (
        "request-timeout-zero",
        {"airbyte.request_timeout": "PT0S"},
        "airbyte.request_timeout",
        f"{POSITIVE} (got 0 seconds)",
    ),
    (
        "request-timeout-negative",
        {"airbyte.request_timeout": -5},
        "airbyte.request_timeout",
        f"{POSITIVE} (got -5 seconds)",
    ),
    (
        "request-timeout-hour",
        {"airbyte.request_timeout": "PT1H"},
        "airbyte.request_timeout",
        "must be between 1 second and 10 minutes (got 1 hour)",
    ),
    (
        "sync-timeout-zero",
        {"airbyte.sync_timeout": "PT0S"},
        "airbyte.sync_timeout",
        f"{POSITIVE} (got 0 seconds)",
    ),
    (
        "sync-timeout-month",
        {"airbyte.sync_timeout": "P30D"},
        "airbyte.sync_timeout",
        "must be between 1 second and 7 days (got 30 days)",
    ),
    (
        "sync-timeout-words",
        {"airbyte.sync_timeout": "soon"},
        "airbyte.sync_timeout",
        "Input should be a valid timedelta, invalid digit in duration",
    ),
    (
        "poll-longer-than-sync",
        {"airbyte.poll_interval": "PT5M", "airbyte.sync_timeout": "PT2M"},
        "airbyte",
        "poll_interval must be shorter than sync_timeout",
    ),
    (
        "selector-missing",
        {"dbt.selector": ...},
        "dbt",
        "set either 'selector' or 'select' (with optional 'exclude'), not both",
    ),
    (
        "execution-unknown",
        {"dbt.execution": "parallel"},
        "dbt.execution",
        "Input should be 'watcher' or 'per_model'",
    ),
    (
        "severity-unknown",
        {"alerts.slack.severity": "urgent"},
        "alerts.slack.severity",
        "Input should be 'critical', 'error', 'warning' or 'info'",
    ),
    (
        "pagerduty-notify-retries",
        {"alerts.pagerduty.notify_retries": True},
        "alerts.pagerduty",
        "notify_retries is for Slack and email: a retry never pages",
    ),
    (
        "email-bad-address",
        {"alerts.email.to": ["not-an-address"]},
        "alerts.email.to.0",
        "String should match pattern '^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$'",
    ),
    (
        "email-no-recipient",
        {"alerts.email.to": []},
        "alerts.email.to",
        "List should have at least 1 item after validation, not 0",
    ),
    (
        "slack-conn-id-missing",
        {"alerts.slack.conn_id": ...},
        "alerts.slack.conn_id",
        "required field is missing",
    ),
    (
        "alerts-unknown-route",
        {"alerts.sms": {"conn_id": "sms"}},
        "alerts.sms",
        "unknown field (check the spelling; see include/pipelines/README.md)",
    ),
    ("deadline-zero", {"deadline": "PT0S"}, "deadline", f"{POSITIVE} (got 0 seconds)"),
    (
        "deadline-two-months",
        {"deadline": "P60D"},
        "deadline",
        "must be between 1 second and 30 days (got 60 days)",
    ),
    (
        "deadline-without-routes",
        {"alerts": {}},
        None,
        "a deadline needs at least one alert route (alerts.slack, .pagerduty or .email)",
    ),
    (
        "backfill-unknown",
        {"backfill.sync": "sometimes"},
        "backfill.sync",
        "Input should be 'always', 'if_behind' or 'never'",
    ),
    (
        "retries-negative",
        {"limits.retries": -1},
        "limits.retries",
        "Input should be greater than or equal to 0",
    ),
    ("retries-eleven", {"limits.retries": 11}, "limits.retries", "Input should be less than or equal to 10"),
    ("retry-delay-zero", {"limits.retry_delay": "PT0S"}, "limits.retry_delay", f"{POSITIVE} (got 0 seconds)"),
    (
        "retry-delay-two-days",
        {"limits.retry_delay": "P2D"},
        "limits.retry_delay",
        "must be between 1 second and 1 day (got 2 days)",
    ),
    (
        "dagrun-timeout-negative",
        {"limits.dagrun_timeout": -3600},
        "limits.dagrun_timeout",
        f"{POSITIVE} (got -1 hour)",
    ),
    (
        "max-active-runs-zero",
        {"limits.max_active_runs": 0},
        "limits.max_active_runs",
        "Input should be greater than or equal to 1",
    ),
    (
        "max-active-tasks-100",
        {"limits.max_active_tasks": 100},
        "limits.max_active_tasks",
        "Input should be less than or equal to 64",
    ),
    (
        "top-level-typo",
        {"schedul": "@daily"},
        "schedul",
        "unknown field (check the spelling; see include/pipelines/README.md)",
    ),
]


@pytest.mark.parametrize(("changes", "field", "reason"), [m[1:] for m in MATRIX], ids=[m[0] for m in MATRIX])
def test_malformed_spec_names_file_field_and_reason(
    tmp_path: Path, manifest: Path, changes: dict, field: str | None, reason: str
) -> None:
    path = write(tmp_path, "energy_meters", mutate(VALID, changes))
    with pytest.raises(SpecError) as err:
        load_spec(path, manifest)
    line = f"  field '{field}': {reason}" if field else f"  {reason}"
    assert str(err.value) == f"{path}: invalid pipeline spec\n{line}"
    assert (err.value.file, err.value.problems) == (str(path), [(field, reason)])


RAW: list[tuple[str, str, str]] = [
    (
        "duplicate-key",
        "description: a pipeline for testing\nschedule: '@daily'\nowners: [data-platform]\nschedule: '@hourly'\n",
        "not valid YAML: duplicate key 'schedule' on line 4 (first set on line 2)",
    ),
    (
        "duplicate-nested-key",
        "dbt:\n  selector: energy\n  selector: ecommerce\n",
        "not valid YAML: duplicate key 'selector' on line 3 (first set on line 2)",
    ),
    ("a-list", "- just\n- a list\n", "expected a mapping of fields, got list"),
    ("empty-file", "", "expected a mapping of fields, got NoneType"),
]


@pytest.mark.parametrize(("text", "reason"), [r[1:] for r in RAW], ids=[r[0] for r in RAW])
def test_unreadable_spec_names_file_and_reason(
    tmp_path: Path, manifest: Path, text: str, reason: str
) -> None:
    path = write(tmp_path, "energy_meters", text)
    with pytest.raises(SpecError) as err:
        load_spec(path, manifest)
    assert str(err.value) == f"{path}: {reason}"


def test_not_yaml_names_the_line(tmp_path: Path, manifest: Path) -> None:
    path = write(tmp_path, "energy_meters", "name: energy_meters\nowners: [unclosed\n")
    with pytest.raises(
        SpecError,
        match=r"energy_meters.yaml: not valid YAML: while parsing a flow sequence\n.*line 2, column 9",
    ):
        load_spec(path, manifest)


def test_name_is_derived_from_the_file(tmp_path: Path, manifest: Path) -> None:
    spec = load_spec(write(tmp_path, "energy_meters", mutate(VALID, {"name": ...})), manifest)
    assert spec.name == "energy_meters"


def test_unknown_dbt_selector(tmp_path: Path, manifest: Path) -> None:
    path = write(tmp_path, "energy_meters", mutate(VALID, {"dbt.selector": "enrgy"}))
    with pytest.raises(SpecError) as err:
        load_spec(path, manifest)
    assert str(err.value) == (
        f"{path}: invalid pipeline spec\n  field 'dbt.selector': unknown dbt selector 'enrgy'; "
        "selectors in include/dbt/selectors.yml: ['ecommerce', 'energy']"
    )


def test_missing_manifest(tmp_path: Path) -> None:
    path = write(tmp_path, "energy_meters", VALID)
    with pytest.raises(SpecError, match=r"manifest.json: dbt manifest not found: run `make dbt-manifest`"):
        load_spec(path, tmp_path / "target" / "manifest.json")


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        (
            {"AIRFLOW_CONN_SLACK_ALERTS": '{"conn_type": "postgres", "host": "db"}'},
            "connection 'slack_alerts' (AIRFLOW_CONN_SLACK_ALERTS) has type 'postgres'; "
            "a slack route needs a connection of type 'slackwebhook'",
        ),
        (
            {"AIRFLOW_CONN_SLACK_ONCALL": "slackwebhook://hooks.example.com/T/B"},
            "connection 'slack_alerts' is not declared in the environment (no AIRFLOW_CONN_SLACK_ALERTS); "
            "it declares slack connections ['slack_oncall']",
        ),
    ],
    ids=["wrong-type", "not-declared"],
)
def test_alert_connection_against_the_environment(
    tmp_path: Path, manifest: Path, monkeypatch: pytest.MonkeyPatch, env: dict, reason: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    path = write(tmp_path, "energy_meters", VALID)
    with pytest.raises(SpecError) as err:
        load_spec(path, manifest)
    assert str(err.value) == f"{path}: invalid pipeline spec\n  field 'alerts.slack.conn_id': {reason}"


def test_alert_connections_outside_the_environment_are_left_to_the_check(
    tmp_path: Path, manifest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", "postgres://u:p@db:5432/warehouse")
    path = write(tmp_path, "energy_meters", VALID)
    assert load_spec(path, manifest).name == "energy_meters"
    known = {"slack_alerts": "slackwebhook", "pagerduty_alerts": "http"}
    assert check_specs(tmp_path, manifest, tmp_path / "none.yaml", connection_type=known.get) == [
        Problem(
            str(path),
            "alerts.pagerduty.conn_id",
            "connection 'pagerduty_alerts' has type 'http'; a pagerduty route needs a connection of type "
            "'pagerduty_events'",
        ),
        Problem(
            str(path),
            "alerts.email.conn_id",
            "connection 'smtp_alerts' does not exist; a email route needs one of type 'smtp'",
        ),
    ]


def test_check_specs_finds_what_spans_files(tmp_path: Path, manifest: Path) -> None:
    write(tmp_path, "energy_meters", VALID)
    write(tmp_path, "energy_copy", mutate(VALID, {"name": ...}))  # same selector, same Airbyte connection
    write(
        tmp_path,
        "energy_marts",
        mutate(
            VALID,
            {
                "name": ...,
                "airbyte": ...,
                "schedule": None,
                "trigger_on_assets": ["raw_energy.muid_1", "raw_x.t"],
            },
        ),
    )
    (tmp_path / "stray.yml").write_text("name: stray\n")
    workspace = tmp_path / "airbyte" / "workspace.yaml"
    workspace.parent.mkdir()
    workspace.write_text("connections:\n  - id: 00000000-0000-0000-0000-000000000000\n")
    problems = {str(p).replace(f"{tmp_path}/", "") for p in check_specs(tmp_path, manifest, workspace)}
    assert problems == {
        "stray.yml: pipeline specs end in .yaml (this file is ignored)",
        "energy_copy.yaml: field 'dbt.selector': selector 'energy' is also used by "
        "['energy_marts.yaml', 'energy_meters.yaml']",
        "energy_marts.yaml: field 'dbt.selector': selector 'energy' is also used by "
        "['energy_copy.yaml', 'energy_meters.yaml']",
        "energy_meters.yaml: field 'dbt.selector': selector 'energy' is also used by "
        "['energy_copy.yaml', 'energy_marts.yaml']",
        f"energy_copy.yaml: field 'airbyte.connections.0.id': Airbyte connection {CONN} is also synced by "
        "['energy_meters.yaml']",
        f"energy_meters.yaml: field 'airbyte.connections.0.id': Airbyte connection {CONN} is also synced by "
        "['energy_copy.yaml']",
        f"energy_copy.yaml: field 'airbyte.connections.0.id': Airbyte connection {CONN} is not in "
        "airbyte/workspace.yaml",
        f"energy_meters.yaml: field 'airbyte.connections.0.id': Airbyte connection {CONN} is not in "
        "airbyte/workspace.yaml",
        "energy_marts.yaml: field 'trigger_on_assets.1': no pipeline's Airbyte streams load 'raw_x.t'",
    }


def test_check_specs_reports_each_broken_file(tmp_path: Path, manifest: Path) -> None:
    write(tmp_path, "energy_meters", VALID)
    broken = write(tmp_path, "ecommerce_sales", mutate(ECOMMERCE, {"name": "energy_meters"}))
    assert check_specs(tmp_path, manifest, tmp_path / "none.yaml") == [
        Problem(
            str(broken),
            "name",
            "'energy_meters' differs from the file name 'ecommerce_sales': a pipeline's name is its file's stem "
            "(drop `name`, or rename the file)",
        )
    ]


def test_shipped_specs_pass_the_check() -> None:
    assert [str(p) for p in check_specs()] == []


def test_vocabulary_is_data(tmp_path: Path, manifest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    words = tmp_path / "vocab" / "vocabulary.yaml"
    words.parent.mkdir()
    words.write_text("owners: {grid-team: grid}\ntags: [energy]\n")
    monkeypatch.setattr(paths, "VOCABULARY", words)
    spec = parse_spec(
        write(tmp_path, "energy_meters", mutate(VALID, {"owners": ["grid-team"], "tags": ["energy"]}))
    )
    assert (spec.owners, vocabulary().tags) == (["grid-team"], frozenset({"energy"}))
    words.write_text("owners: {grid-team: grid}\n")
    with pytest.raises(SpecError) as err:
        parse_spec(tmp_path / "energy_meters.yaml")
    assert (
        str(err.value)
        == f"{words}: invalid vocabulary\n  field 'tags': must be a non-empty mapping (or list) of names"
    )


def test_dbt_only_and_airbyte_only_pipelines(tmp_path: Path, manifest: Path) -> None:
    dbt_only = load_spec(
        write(
            tmp_path,
            "energy_marts",
            mutate(
                VALID,
                {"name": ..., "airbyte": ..., "schedule": None, "trigger_on_assets": ["raw_energy.muid_1"]},
            ),
        ),
        manifest,
    )
    airbyte_only = load_spec(
        write(tmp_path, "energy_raw", mutate(VALID, {"name": ..., "dbt": ..., "paused": False})), manifest
    )
    assert (dbt_only.airbyte, dbt_only.windowed, airbyte_only.dbt, airbyte_only.paused) == (
        None,
        False,
        None,
        False,
    )


BREAKERS = {
    "name-of-the-other-pipeline": mutate(ECOMMERCE, {"name": "energy_meters"}),
    "bad-uuid": mutate(ECOMMERCE, {"airbyte.connections.0.id": "not-a-uuid"}),
    "zero-retry-delay": mutate(ECOMMERCE, {"limits.retry_delay": "PT0S"}),
    "duplicate-key": "name: ecommerce_sales\nname: ecommerce_sales\n",
}


@pytest.mark.parametrize("broken", BREAKERS.values(), ids=BREAKERS.keys())
def test_one_broken_spec_does_not_break_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: object
) -> None:
    """In a DagBag, only the broken pipeline's DAG file has an import error; the other loads."""
    from airflow.dag_processing.dagbag import DagBag

    pipelines, dags = tmp_path / "pipelines", tmp_path / "dags"
    pipelines.mkdir()
    dags.mkdir()
    write(pipelines, "energy_meters", VALID)
    broken_path = write(pipelines, "ecommerce_sales", broken)
    for name in ("energy_meters", "ecommerce_sales"):
        (dags / f"{name}.py").write_text((REPO / "dags" / f"{name}.py").read_text())
    monkeypatch.setattr(paths, "PIPELINES_DIR", pipelines)
    bag = DagBag(dag_folder=str(dags))
    assert set(bag.dag_ids) == {"energy_meters"}
    ((where, error),) = bag.import_errors.items()
    assert where.endswith("ecommerce_sales.py")
    assert f"{broken_path}: " in error


def test_airflow_connection_type_reads_the_environment_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    from elt.connections import airflow_connection_type

    monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS", "slackwebhook://hooks.example.com/T/B")
    assert airflow_connection_type("slack_alerts") == "slackwebhook"
