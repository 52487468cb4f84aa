"""Pipeline spec validation: each malformed spec is rejected with the file, field and problem."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from elt.spec import SpecError, load_spec

REPO = Path(__file__).resolve().parents[2]
VALID = yaml.safe_load((REPO / "include" / "pipelines" / "energy_meters.yaml").read_text())


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"selectors": {"energy": {}, "ecommerce": {}}}))
    return path


def write(directory: Path, name: str, data: object) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def mutate(path_: str, value: object) -> dict:
    """A copy of the valid spec with one field set (value `...` deletes it)."""
    spec = copy.deepcopy(VALID)
    *parents, last = path_.split(".")
    node = spec
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is ...:
        del node[last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return spec


def test_shipped_specs_are_valid(manifest: Path) -> None:
    for path in sorted((REPO / "include" / "pipelines").glob("*.yaml")):
        spec = load_spec(path, manifest)
        assert spec.name == path.stem


BROKEN = [
    ("name", ..., "field 'name': required field is missing"),
    ("name", "Energy Meters", "field 'name': String should match pattern"),
    ("description", "short", "field 'description': String should have at least 10 characters"),
    ("owners", ["someone-else"], "field 'owners': Value error, unknown owner ['someone-else']"),
    ("owners", [], "field 'owners': List should have at least 1 item"),
    ("tags", ["energy", "misc"], "field 'tags': Value error, unknown tag ['misc']"),
    ("schedule", "every day", "field 'schedule': Value error, 'every day' is not a 5-field cron expression"),
    ("schedule", "61 3 * * *", "field 'schedule': Value error, '61 3 * * *' is not a valid cron expression"),
    ("start_date", "2023-02-30", "field 'start_date': Input should be a valid date"),
    ("airbyte.connections", [], "field 'airbyte.connections': List should have at least 1 item"),
    (
        "airbyte.connections.0.id",
        "not-a-uuid",
        "field 'airbyte.connections.0.id': Input should be a valid UUID",
    ),
    (
        "airbyte.connections.0.streams",
        [],
        "field 'airbyte.connections.0.streams': List should have at least 1 item",
    ),
    ("airbyte.connections.0.streams", ["muid_1", "muid_1"], "stream listed twice: ['muid_1']"),
    (
        "airbyte.poll_interval",
        "PT1H",
        "field 'airbyte.poll_interval': Value error, must be between 1 second and 10 minutes",
    ),
    ("airbyte.connections.0.schema", "raw", "field 'airbyte.connections.0.schema': unknown field"),
    ("dbt.selector", ..., "field 'dbt': Value error, set either 'selector' or 'select'"),
    ("backfill.sync", "sometimes", "field 'backfill.sync': Input should be 'always', 'if_behind' or 'never'"),
    ("limits.retries", -1, "field 'limits.retries': Input should be greater than or equal to 0"),
    (
        "limits.max_active_runs",
        0,
        "field 'limits.max_active_runs': Input should be greater than or equal to 1",
    ),
    ("schedul", "@daily", "field 'schedul': unknown field"),
    ("deadline", "PT0S", "field 'deadline': Value error, must be a positive duration"),
    (
        "alerts.pagerduty.notify_retries",
        True,
        "field 'alerts.pagerduty': Value error, notify_retries is for Slack",
    ),
    ("alerts.email.to", ["not-an-address"], "field 'alerts.email.to.0': String should match pattern"),
]


def test_route_with_a_connection_of_the_wrong_type(tmp_path: Path, manifest: Path, monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS", '{"conn_type": "postgres", "host": "db"}')
    path = write(tmp_path, "energy_meters", VALID)
    with pytest.raises(
        SpecError,
        match=r"energy_meters.yaml: invalid pipeline spec\n  field 'alerts.slack.conn_id': connection 'slack_alerts' .* has type 'postgres'",
    ):
        load_spec(path, manifest)


@pytest.mark.parametrize(("field", "value", "message"), BROKEN, ids=[f"{b[0]}={b[1]!r}" for b in BROKEN])
def test_broken_spec_names_file_field_and_problem(
    tmp_path: Path, manifest: Path, field: str, value: object, message: str
) -> None:
    path = write(tmp_path, "broken", mutate(field, value))
    with pytest.raises(SpecError) as err:
        load_spec(path, manifest)
    text = str(err.value)
    assert str(path) in text or "broken.yaml" in text
    assert message in text, text


def test_not_yaml(tmp_path: Path, manifest: Path) -> None:
    path = write(tmp_path, "broken", "name: [unclosed\n")
    with pytest.raises(SpecError, match=r"broken.yaml: not valid YAML"):
        load_spec(path, manifest)


def test_not_a_mapping(tmp_path: Path, manifest: Path) -> None:
    path = write(tmp_path, "broken", "- just\n- a list\n")
    with pytest.raises(SpecError, match=r"broken.yaml: expected a mapping of fields, got list"):
        load_spec(path, manifest)


def test_unknown_dbt_selector(tmp_path: Path, manifest: Path) -> None:
    path = write(tmp_path, "energy_meters", mutate("dbt.selector", "enrgy"))
    with pytest.raises(
        SpecError,
        match=r"field 'dbt.selector': unknown dbt selector 'enrgy'; selectors .*\['ecommerce', 'energy'\]",
    ):
        load_spec(path, manifest)


def test_duplicate_name(tmp_path: Path, manifest: Path) -> None:
    first = write(tmp_path, "energy_meters", VALID)
    write(tmp_path, "energy_copy", VALID)
    with pytest.raises(
        SpecError, match=r"field 'name': pipeline name 'energy_meters' is already used by .*energy_copy.yaml"
    ):
        load_spec(first, manifest)


def test_missing_manifest(tmp_path: Path) -> None:
    path = write(tmp_path, "energy_meters", VALID)
    with pytest.raises(SpecError, match=r"manifest.json not found: run `make dbt-manifest`"):
        load_spec(path, tmp_path / "target" / "manifest.json")


def test_broken_spec_is_an_import_error_for_its_file_only(
    tmp_path: Path, manifest: Path, monkeypatch
) -> None:
    """In a DagBag, the broken pipeline's DAG file carries the error; the other pipeline loads."""
    from airflow.dag_processing.dagbag import DagBag

    from elt import paths

    pipelines, dags = tmp_path / "pipelines", tmp_path / "dags"
    pipelines.mkdir()
    dags.mkdir()
    write(pipelines, "energy_meters", mutate("airbyte.connections.0.id", "not-a-uuid"))
    ecommerce = yaml.safe_load((REPO / "include" / "pipelines" / "ecommerce_sales.yaml").read_text())
    write(pipelines, "ecommerce_sales", ecommerce)
    for name in ("energy_meters", "ecommerce_sales"):
        (dags / f"{name}.py").write_text((REPO / "dags" / f"{name}.py").read_text())
    monkeypatch.setattr(paths, "PIPELINES_DIR", pipelines)
    bag = DagBag(dag_folder=str(dags))
    assert set(bag.dag_ids) == {"ecommerce_sales"}
    assert len(bag.import_errors) == 1
    ((where, error),) = bag.import_errors.items()
    assert where.endswith("energy_meters.py")
    assert "energy_meters.yaml: invalid pipeline spec" in error
    assert "field 'airbyte.connections.0.id': Input should be a valid UUID" in error
