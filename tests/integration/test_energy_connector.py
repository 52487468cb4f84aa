"""The energy connector manifest, run the way Airbyte runs a declarative source.

Each test runs the CDK's ``source-declarative-manifest`` entry point from the airbyte venv as a
subprocess (spec|check|discover|read with --manifest-path) against the local meter API and
parses the Airbyte protocol messages it prints.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from dev.meter_api.testing import REPO, airbyte_python, free_port, meter_api

MANIFEST = REPO / "include/airbyte/manifests/energy_meters.yaml"
STREAM_MUIDS = {
    "muid_1": "95ce3367-cbce-4a4d-bbe3-da082831d7bd",
    "muid_2": "1db7649e-9342-4e04-97c7-f0ebb88ed1f8",
}
OBIS = ("0100011D00FF", "0100021D00FF")

# `source-declarative-manifest spec` prints the generic spec (manifest expected inside the config),
# so spec goes through the CDK entrypoint with the manifest loaded, as PyAirbyte does in-process.
SPEC_SCRIPT = """
import sys, yaml
from airbyte_cdk.entrypoint import launch
from airbyte_cdk.sources.declarative.concurrent_declarative_source import ConcurrentDeclarativeSource
launch(ConcurrentDeclarativeSource(source_config=yaml.safe_load(open(sys.argv[1]))), ["spec"])
"""


@dataclass
class Run:
    messages: list[dict]
    returncode: int
    stderr: str

    def of_type(self, kind: str) -> list[dict]:
        return [m for m in self.messages if m["type"] == kind]

    def records(self, stream: str) -> list[dict]:
        return [m["record"]["data"] for m in self.of_type("RECORD") if m["record"]["stream"] == stream]

    def final_state(self) -> list[dict]:
        """The last state per stream, as the platform would persist it."""
        latest = {
            m["state"]["stream"]["stream_descriptor"]["name"]: m["state"] for m in self.of_type("STATE")
        }
        return list(latest.values())

    def errors(self) -> list[dict]:
        return [m["trace"]["error"] for m in self.of_type("TRACE") if m["trace"]["type"] == "ERROR"]


class Connector:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.entrypoint = airbyte_python().parent / "source-declarative-manifest"

    def _file(self, name: str, content: object) -> str:
        path = self.workdir / name
        path.write_text(json.dumps(content))
        return str(path)

    def run(
        self,
        command: str,
        config: dict,
        catalog: dict | None = None,
        state: list | None = None,
        manifest: Path = MANIFEST,
    ) -> Run:
        args = [str(self.entrypoint), command, "--config", self._file("config.json", config)]
        args += ["--manifest-path", str(manifest)]
        if catalog is not None:
            args += ["--catalog", self._file("catalog.json", catalog)]
        if state is not None:
            args += ["--state", self._file("state.json", state)]
        return self._execute(args)

    def spec(self) -> Run:
        return self._execute([str(airbyte_python()), "-c", SPEC_SCRIPT, str(MANIFEST)])

    def _execute(self, args: list[str]) -> Run:
        done = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=self.workdir)
        messages = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        return Run(messages, done.returncode, done.stderr)


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with meter_api() as url:
        yield url


@pytest.fixture(scope="module")
def api(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def connector(tmp_path_factory: pytest.TempPathFactory) -> Connector:
    return Connector(tmp_path_factory.mktemp("connector"))


@pytest.fixture(scope="module")
def catalog(connector: Connector, base_url: str) -> dict:
    """Both streams configured incremental append+dedup, as the energy connection does."""
    streams = connector.run("discover", config(base_url)).of_type("CATALOG")[0]["catalog"]["streams"]
    return {
        "streams": [
            {
                "stream": stream,
                "sync_mode": "incremental",
                "destination_sync_mode": "append_dedup",
                "cursor_field": ["timestamp"],
                "primary_key": [["timestamp"]],
            }
            for stream in streams
        ]
    }


@pytest.fixture(autouse=True)
def clean_api(api: httpx.Client) -> Iterator[None]:
    api.delete("/local/faults").raise_for_status()
    api.delete("/local/stats").raise_for_status()
    yield
    api.delete("/local/faults").raise_for_status()


def config(base_url: str, start: str = "2023-02-01", end: str | None = "2023-02-03", **extra: object) -> dict:
    return {"base_url": base_url, "start_date": start, **({"end_date": end} if end else {}), **extra}


def requests_made(api: httpx.Client, stream: str) -> list[dict]:
    """The measurement requests the sync sent for one stream, by start day then offset."""
    recent = api.get("/local/stats").json()["recent"]
    mine = [r for r in recent if r.get("muid") == STREAM_MUIDS[stream]]
    return sorted(mine, key=lambda r: (r["start"], int(r.get("offset", 0)), r["status"]))


def test_spec_lists_base_url_and_start_date(connector: Connector) -> None:
    run = connector.spec()
    spec = run.of_type("SPEC")[0]["spec"]["connectionSpecification"]
    assert set(spec["required"]) == {"base_url", "start_date"}
    assert spec["properties"]["start_date"]["pattern"] == "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
    assert {"end_date", "page_size", "max_retries"} <= set(spec["properties"])


def test_check_succeeds_against_the_api(connector: Connector, base_url: str) -> None:
    status = connector.run("check", config(base_url)).of_type("CONNECTION_STATUS")[0]["connectionStatus"]
    assert status == {"status": "SUCCEEDED"}


def test_check_fails_clearly_against_a_closed_port(connector: Connector) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    status = connector.run("check", config(url)).of_type("CONNECTION_STATUS")[0]["connectionStatus"]
    assert status["status"] == "FAILED"
    assert "Stream muid_1 is not available" in status["message"]
    assert "Connection refused" in status["message"]


def test_check_rejects_a_malformed_start_date(connector: Connector, base_url: str) -> None:
    status = connector.run("check", config(base_url, start="1.2.2023")).of_type("CONNECTION_STATUS")[0]
    assert status["connectionStatus"]["status"] == "FAILED"
    assert "'1.2.2023' does not match" in status["connectionStatus"]["message"]


def test_discover_offers_incremental_streams_on_timestamp(catalog: dict) -> None:
    streams = {entry["stream"]["name"]: entry["stream"] for entry in catalog["streams"]}
    assert set(streams) == {"muid_1", "muid_2"}
    for stream in streams.values():
        assert "incremental" in stream["supported_sync_modes"]
        assert stream["source_defined_cursor"] is True
        assert stream["default_cursor_field"] == ["timestamp"]
        assert stream["source_defined_primary_key"] == [["timestamp"]]
        properties = stream["json_schema"]["properties"]
        assert properties["timestamp"] == {"type": "string", "format": "date-time"}
        for obis in OBIS:
            assert properties[obis]["type"] == ["number", "null"]


@pytest.fixture(scope="module")
def three_days(connector: Connector, base_url: str, catalog: dict, api: httpx.Client) -> tuple[Run, dict]:
    """One read of 2023-02-01..03 and the requests it made, shared by the read tests."""
    api.delete("/local/stats").raise_for_status()
    run = connector.run("read", config(base_url), catalog)
    return run, {stream: requests_made(api, stream) for stream in STREAM_MUIDS}


@pytest.mark.parametrize("stream", STREAM_MUIDS)
def test_read_returns_every_reading_of_the_api(
    three_days: tuple[Run, dict], api: httpx.Client, stream: str
) -> None:
    run, requests = three_days
    assert run.returncode == 0, run.errors()
    expected = api.get(
        "/meterdata/measurement",
        params={
            "muid": STREAM_MUIDS[stream],
            "measurement": "energy",
            "start": "2023-02-01",
            "stop": "2023-02-04",
        },
    ).json()["data"]
    records = sorted(run.records(stream), key=lambda r: r["timestamp"])
    assert len(records) == 3 * 96
    assert records == expected
    # One whole-day request per day: start/stop one day apart, stop exclusive.
    assert [(r["start"], r["stop"]) for r in requests[stream]] == [
        ("2023-02-01", "2023-02-02"),
        ("2023-02-02", "2023-02-03"),
        ("2023-02-03", "2023-02-04"),
    ]


def test_read_emits_the_last_reading_as_state(three_days: tuple[Run, dict]) -> None:
    run, _ = three_days
    states = {
        s["stream"]["stream_descriptor"]["name"]: s["stream"]["stream_state"] for s in run.final_state()
    }
    assert states == {stream: {"timestamp": "2023-02-03T23:45:00Z"} for stream in STREAM_MUIDS}


def test_incremental_read_fetches_only_newer_days(
    three_days: tuple[Run, dict], connector: Connector, base_url: str, catalog: dict, api: httpx.Client
) -> None:
    first, _ = three_days
    run = connector.run("read", config(base_url, end="2023-02-05"), catalog, first.final_state())
    assert run.returncode == 0, run.errors()
    for stream in STREAM_MUIDS:
        timestamps = sorted(r["timestamp"] for r in run.records(stream))
        assert len(timestamps) == 2 * 96
        assert (timestamps[0], timestamps[-1]) == ("2023-02-04T00:00:00.000Z", "2023-02-05T23:45:00.000Z")
        assert [r["start"] for r in requests_made(api, stream)] == ["2023-02-04", "2023-02-05"]


def test_without_end_date_a_read_stops_at_the_last_complete_day(
    connector: Connector, base_url: str, catalog: dict
) -> None:
    today = datetime.now(UTC).date()
    start = today - timedelta(days=2)
    # end_date "" is what workspace.yaml passes when ENERGY_END_DATE is unset.
    run = connector.run("read", config(base_url, start=str(start), end=None, end_date=""), catalog)
    assert run.returncode == 0, run.errors()
    for stream in STREAM_MUIDS:
        timestamps = sorted(r["timestamp"] for r in run.records(stream))
        assert len(timestamps) == 2 * 96
        assert timestamps[-1] == f"{today - timedelta(days=1)}T23:45:00.000Z"


def test_read_pages_through_a_day(
    connector: Connector, base_url: str, catalog: dict, api: httpx.Client
) -> None:
    run = connector.run("read", config(base_url, end="2023-02-01", page_size=40), catalog)
    assert run.returncode == 0, run.errors()
    for stream in STREAM_MUIDS:
        assert len({r["timestamp"] for r in run.records(stream)}) == 96
        assert [(r["offset"], r["limit"], r["rows"]) for r in requests_made(api, stream)] == [
            ("0", "40", 40),
            ("40", "40", 40),
            ("80", "40", 16),
        ]


@pytest.mark.parametrize("status", [429, 503])
def test_throttling_and_server_errors_are_retried(
    connector: Connector, base_url: str, catalog: dict, api: httpx.Client, status: int
) -> None:
    api.post("/local/faults", json={"status": status, "count": 2, "retry_after": 1}).raise_for_status()
    run = connector.run("read", config(base_url, end="2023-02-01"), catalog)
    assert run.returncode == 0, run.errors()
    assert not run.errors()
    assert all(len(run.records(stream)) == 96 for stream in STREAM_MUIDS)
    stats = api.get("/local/stats").json()
    assert stats["by_status"] == {str(status): 2, "200": 2}


def test_an_api_rejection_fails_the_sync_with_the_api_message(
    connector: Connector, base_url: str, catalog: dict, tmp_path: Path
) -> None:
    broken = tmp_path / "manifest.yaml"
    broken.write_text(MANIFEST.read_text().replace(STREAM_MUIDS["muid_1"], "no-such-meter"))
    run = connector.run("read", config(base_url), catalog, manifest=broken)
    messages = {error["message"] for error in run.errors()}
    assert "Meter API rejected the request: unknown muid 'no-such-meter'" in messages
    assert {e["failure_type"] for e in run.errors()} >= {"config_error"}
