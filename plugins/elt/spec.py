"""Pipeline specs: one YAML file in include/pipelines per DAG, validated before any DAG is built.

A broken spec raises `SpecError` naming the file, the field and the problem; the DAG file
that loads it shows that as its import error, and no other pipeline is affected.
"""

from __future__ import annotations

import json
import re
from datetime import date, timedelta
from functools import cache
from pathlib import Path
from typing import Annotated, Literal
from uuid import UUID

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from elt import paths

# Small fixed vocabularies: they keep the UI's filters and the on-call routing meaningful.
OWNERS = frozenset({"data-platform", "energy-analytics", "commerce-analytics"})
TAGS = frozenset({"airbyte", "dbt", "energy", "ecommerce", "finance", "daily", "hourly", "tier-1", "tier-2"})

Identifier = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=200)]
CRON_PRESETS = {"@hourly", "@daily", "@weekly", "@monthly", "@yearly"}
CRON_FIELD = re.compile(r"^[\d*/,\-A-Za-z?LW#]+$")


class SpecError(ValueError):
    """A pipeline spec that cannot become a DAG."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AirbyteStream(_Model):
    name: Identifier
    cursor_field: Identifier | None = Field(
        default=None, description="column whose maximum tells how far the raw table reaches (backfills)"
    )


class AirbyteConnection(_Model):
    id: UUID
    name: Identifier = Field(description="short name, used for the task group id")
    destination_schema: Identifier = Field(description="schema the connection writes its raw tables into")
    streams: list[AirbyteStream] = Field(min_length=1)

    @field_validator("streams", mode="before")
    @classmethod
    def _stream_names(cls, value: object) -> object:
        if isinstance(value, list):
            return [{"name": item} if isinstance(item, str) else item for item in value]
        return value

    @field_validator("streams")
    @classmethod
    def _unique_streams(cls, value: list[AirbyteStream]) -> list[AirbyteStream]:
        names = [stream.name for stream in value]
        if len(names) != len(set(names)):
            raise ValueError(f"stream listed twice: {sorted({n for n in names if names.count(n) > 1})}")
        return value


class Airbyte(_Model):
    conn_id: str = "airbyte_default"
    connections: list[AirbyteConnection] = Field(min_length=1)
    poll_interval: timedelta = Field(default=timedelta(seconds=5), description="how often the wait polls")
    request_timeout: timedelta = Field(default=timedelta(seconds=30), description="per HTTP request")
    sync_timeout: timedelta = Field(
        default=timedelta(hours=2), description="a sync running longer is cancelled"
    )
    transient_error_budget: timedelta = Field(
        default=timedelta(minutes=10),
        description="how long each Airbyte API call retries transient errors (5xx, 429, timeouts)",
    )

    @field_validator("transient_error_budget")
    @classmethod
    def _transient_error_budget(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be positive")
        return value

    @field_validator("poll_interval")
    @classmethod
    def _poll_interval(cls, value: timedelta) -> timedelta:
        if not timedelta(seconds=1) <= value <= timedelta(minutes=10):
            raise ValueError("must be between 1 second and 10 minutes")
        return value

    @field_validator("connections")
    @classmethod
    def _unique_connections(cls, value: list[AirbyteConnection]) -> list[AirbyteConnection]:
        for attr in ("id", "name"):
            seen = [getattr(conn, attr) for conn in value]
            if len(seen) != len(set(seen)):
                raise ValueError(f"two connections share the same {attr}")
        return value


class Dbt(_Model):
    selector: str = Field(description="a selector defined in include/dbt/selectors.yml")
    execution: Literal["watcher", "per_model"] = Field(
        default="watcher",
        description=(
            "watcher: one `dbt build` of the selection, with a task per model that reports its "
            "result (Cosmos ExecutionMode.WATCHER); per_model: a `dbt build` task per model"
        ),
    )


class AlertRoute(_Model):
    conn_id: str
    severity: Literal["critical", "error", "warning", "info"] = "error"
    notify_retries: bool = Field(default=False, description="also post a low-severity line on each retry")


class EmailRoute(AlertRoute):
    to: list[Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]] = Field(min_length=1)


class Alerts(_Model):
    slack: AlertRoute | None = None
    pagerduty: AlertRoute | None = None
    email: EmailRoute | None = None

    @field_validator("pagerduty")
    @classmethod
    def _retries_never_page(cls, value: AlertRoute | None) -> AlertRoute | None:
        if value is not None and value.notify_retries:
            raise ValueError("notify_retries is for Slack and email: a retry never pages")
        return value


class Backfill(_Model):
    sync: Literal["always", "if_behind", "never"] = Field(
        default="if_behind",
        description=(
            "what a backfill run does with the Airbyte sync: always sync; sync only when the raw tables "
            "do not reach the end of the run's window (one sync then serves the whole backfill); never sync"
        ),
    )


class Limits(_Model):
    retries: int = Field(default=2, ge=0, le=10)
    retry_delay: timedelta = timedelta(minutes=2)
    dagrun_timeout: timedelta = timedelta(hours=4)
    max_active_runs: int = Field(default=1, ge=1, le=16)
    max_active_tasks: int = Field(default=8, ge=1, le=64)


class PipelineSpec(_Model):
    name: Identifier
    description: str = Field(min_length=10)
    owners: list[str] = Field(min_length=1)
    tags: list[str] = Field(default_factory=list)
    schedule: str | None = Field(description="cron expression, a preset like @daily, or null for manual runs")
    start_date: date
    catchup: bool = False
    airbyte: Airbyte
    dbt: Dbt
    alerts: Alerts = Alerts()
    deadline: timedelta | None = Field(
        default=None, description="page when a run is not done this long after its interval ends"
    )
    backfill: Backfill = Backfill()
    limits: Limits = Limits()
    doc: str | None = Field(default=None, description="extra notes for the DAG's documentation")

    @field_validator("owners", "tags")
    @classmethod
    def _in_vocabulary(cls, value: list[str], info: ValidationInfo) -> list[str]:
        known, word = (OWNERS, "owner") if info.field_name == "owners" else (TAGS, "tag")
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown {word} {unknown}; known {word}s: {sorted(known)}")
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        if value is None or value in CRON_PRESETS:
            return value
        fields = value.split()
        if len(fields) != 5 or not all(CRON_FIELD.match(f) for f in fields):
            raise ValueError(f"{value!r} is not a 5-field cron expression or one of {sorted(CRON_PRESETS)}")
        from croniter import croniter

        if not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a valid cron expression")
        return value

    @field_validator("deadline")
    @classmethod
    def _deadline(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value <= timedelta(0):
            raise ValueError("must be a positive duration")
        return value

    @model_validator(mode="after")
    def _alerts_need_routes_for_critical(self) -> PipelineSpec:
        if self.deadline is not None and not any(
            (self.alerts.slack, self.alerts.pagerduty, self.alerts.email)
        ):
            raise ValueError("a deadline needs at least one alert route (alerts.slack, .pagerduty or .email)")
        return self

    @property
    def windowed(self) -> bool:
        """Runs cover a real data interval (time-based schedule), so dbt rebuilds exactly that window."""
        return self.schedule is not None


def _format_errors(path: Path, err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown field (check the spelling; see include/pipelines/README.md)"
        elif item["type"] == "missing":
            message = "required field is missing"
        lines.append(f"  field '{field}': {message}")
    return f"{_display(path)}: invalid pipeline spec\n" + "\n".join(lines)


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(paths.REPO))
    except ValueError:
        return str(path)


def parse_spec(path: Path) -> PipelineSpec:
    """Read and validate one spec file (no cross-file checks)."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"{_display(path)}: pipeline spec not found") from None
    except yaml.YAMLError as err:
        raise SpecError(f"{_display(path)}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{_display(path)}: expected a mapping of fields, got {type(raw).__name__}")
    try:
        return PipelineSpec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(_format_errors(path, err)) from None


def spec_files(directory: Path | None = None) -> list[Path]:
    directory = directory or paths.PIPELINES_DIR
    return sorted(p for p in directory.glob("*.y*ml") if p.suffix in (".yaml", ".yml"))


def load_spec(path: Path, manifest: Path | None = None) -> PipelineSpec:
    """Validate one spec, including what it shares with the others and with the dbt project."""
    spec = parse_spec(path)
    for other in spec_files(path.parent):
        if other.resolve() == path.resolve():
            continue
        try:
            raw = yaml.safe_load(other.read_text())
        except yaml.YAMLError:
            continue  # that file reports its own error
        if isinstance(raw, dict) and raw.get("name") == spec.name:
            raise SpecError(
                f"{_display(path)}: field 'name': pipeline name {spec.name!r} is already used by "
                f"{_display(other)} (each pipeline name is a dag_id and must be unique)"
            )
    from elt.alerting import connection_type_problems

    problems = connection_type_problems(spec.alerts)
    if problems:
        raise SpecError(
            f"{_display(path)}: invalid pipeline spec\n"
            + "\n".join(f"  field '{field}': {message}" for field, message in problems)
        )
    selectors = dbt_selectors(manifest or paths.DBT_MANIFEST)
    if spec.dbt.selector not in selectors:
        raise SpecError(
            f"{_display(path)}: field 'dbt.selector': unknown dbt selector {spec.dbt.selector!r}; "
            f"selectors in include/dbt/selectors.yml: {sorted(selectors)}"
        )
    return spec


@cache
def _manifest_selectors(manifest: Path, mtime: float) -> frozenset[str]:
    return frozenset(json.loads(manifest.read_text()).get("selectors", {}))


def dbt_selectors(manifest: Path) -> frozenset[str]:
    if not manifest.exists():
        raise SpecError(
            f"dbt manifest {_display(manifest)} not found: run `make dbt-manifest` (it compiles the dbt "
            "project once, so that parsing DAGs never runs dbt)"
        )
    return _manifest_selectors(manifest, manifest.stat().st_mtime)
