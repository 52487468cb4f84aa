"""`elt check`: each disagreement between specs, dbt sources and Airbyte names the file and field."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from elt import check, paths

REPO = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((REPO / "include" / "pipelines" / "energy_meters.yaml").read_text())
CONN = "4d2f7268-e2ac-4fa7-a3a6-97286f22d617"


def spec(name: str, connection_id: str = CONN, schema: str = "raw_energy", selector: str = "energy") -> dict:
    data = copy.deepcopy(BASE)
    if "name" in data:
        data["name"] = name
    conn = data["airbyte"]["connections"][0]
    conn.update(id=connection_id, destination_schema=schema)
    data["dbt"]["selector"] = selector
    return data


def manifest(*tables: tuple[str, str], selectors=("energy",)) -> dict:
    sources = {
        f"source.managed_elt.s.{t}": {
            "package_name": "managed_elt",
            "source_name": "s",
            "name": t,
            "identifier": t,
            "schema": schema,
            "original_file_path": "models/staging/s/_s__sources.yml",
        }
        for schema, t in tables
    }
    sources["source.other_pkg.x.y"] = {"package_name": "other_pkg", "name": "y", "schema": "raw_energy"}
    return {
        "metadata": {"project_name": "managed_elt"},
        "sources": sources,
        "selectors": dict.fromkeys(selectors),
    }


@pytest.fixture
def pipelines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(paths, "PIPELINES_DIR", tmp_path)
    return tmp_path


def write(directory: Path, filename: str, data: dict) -> None:
    (directory / filename).write_text(yaml.safe_dump(data))


def problems(pipelines: Path, man: dict) -> list[str]:
    specs, found = check.load_specs(pipelines)
    return [str(p) for p in found + check.dbt_problems(specs, man)]


def test_agreeing_spec_and_sources_have_no_problems(pipelines):
    write(pipelines, "energy.yaml", spec("energy"))
    assert problems(pipelines, manifest(("raw_energy", "muid_1"), ("raw_energy", "muid_2"))) == []


def test_stream_without_dbt_source_names_file_and_field(pipelines):
    write(pipelines, "energy.yaml", spec("energy"))
    found = problems(pipelines, manifest(("raw_energy", "muid_1"), ("raw_other", "muid_2")))
    assert found == [
        f"{pipelines / 'energy.yaml'}: field 'airbyte.connections.0.streams.1': "
        "no dbt source reads raw_energy.muid_2 (dbt has it in schema raw_other)"
    ]


def test_unsynced_source(pipelines):
    write(pipelines, "energy.yaml", spec("energy"))
    tables = [("raw_energy", "muid_1"), ("raw_energy", "muid_2"), ("raw_energy", "muid_3")]
    assert problems(pipelines, manifest(*tables)) == [
        "models/staging/s/_s__sources.yml: field 'sources.s.tables.muid_3': reads raw_energy.muid_3, "
        "but no pipeline's connection syncs that stream"
    ]


def test_run_check_reports_what_spans_files(pipelines):
    write(pipelines, "a.yaml", spec("a"))
    write(pipelines, "b.yaml", spec("b"))
    write(pipelines, "c.yaml", spec("c", selector="nope"))
    found = [str(p) for p in check.run_check(directory=pipelines, manifest=paths.DBT_MANIFEST)]
    assert (
        f"b.yaml: field 'airbyte.connections.0.id': Airbyte connection {CONN} is also synced by"
        in " ".join(found)
    ), found
    assert any("c.yaml: field 'dbt.selector': unknown dbt selector 'nope'" in p for p in found), found


def test_broken_spec_is_reported_not_raised(pipelines):
    (pipelines / "broken.yaml").write_text("name: [unclosed")
    found = problems(pipelines, manifest())
    assert len(found) == 1 and "broken.yaml: not valid YAML" in found[0], found


class FakeConnections:
    """The SDK's connections resource, answering with an official GetConnection body."""

    def __init__(self, body: dict) -> None:
        self.body = body

    def get_connection(self, request):
        assert request.connection_id == CONN
        return SimpleNamespace(raw_response=SimpleNamespace(json=lambda: self.body))


def airbyte_body(schema="raw_energy", streams=None) -> dict:
    streams = streams or [
        {"name": "muid_1", "syncMode": "incremental_deduped_history", "cursorField": ["timestamp"]},
        {"name": "muid_2", "syncMode": "incremental_deduped_history", "cursorField": ["timestamp"]},
    ]
    return {
        "connectionId": CONN,
        "namespaceDefinition": "custom_format",
        "namespaceFormat": schema,
        "configurations": {"streams": streams},
    }


def airbyte_problems(pipelines: Path, body: dict) -> list[str]:
    specs, _ = check.load_specs(pipelines)
    return [str(p) for p in check.airbyte_problems(specs, SimpleNamespace(connections=FakeConnections(body)))]


def test_airbyte_agrees(pipelines):
    write(pipelines, "energy.yaml", spec("energy"))
    assert airbyte_problems(pipelines, airbyte_body()) == []


def test_airbyte_renamed_schema_missing_stream_and_lost_cursor(pipelines):
    write(pipelines, "energy.yaml", spec("energy"))
    body = airbyte_body(
        schema="raw_meters",
        streams=[{"name": "muid_1", "syncMode": "full_refresh_overwrite"}, {"name": "muid_two"}],
    )
    file = pipelines / "energy.yaml"
    assert airbyte_problems(pipelines, body) == [
        f"{file}: field 'airbyte.connections.0.destination_schema': 'raw_energy', but Airbyte connection "
        f"{CONN} writes into 'raw_meters'",
        f"{file}: field 'airbyte.connections.0.streams.0.cursor_field': backfills rely on cursor 'timestamp', "
        "but Airbyte syncs 'muid_1' as full_refresh_overwrite (no cursor)",
        f"{file}: field 'airbyte.connections.0.streams.1': stream 'muid_2' is not synced by Airbyte "
        f"connection {CONN} (it syncs ['muid_1', 'muid_two'])",
    ]


def test_cli_fails_on_problems(tmp_path):
    """The command `make test-fast` runs exits non-zero when a spec disagrees with dbt."""
    bad = tmp_path / "pipelines"
    bad.mkdir()
    write(bad, "energy_meters.yaml", spec("energy_meters", schema="raw_elsewhere"))
    env = {"PYTHONPATH": str(REPO / "plugins"), "ELT_PIPELINES_DIR": str(bad), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "elt", "check"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        "energy_meters.yaml: field 'airbyte.connections.0.streams.0': no dbt source reads raw_elsewhere.muid_1"
        in (result.stdout)
    )


def test_shipped_pipelines_agree_with_the_manifest():
    assert [str(p) for p in check.run_check(manifest=paths.DBT_MANIFEST)] == []
