"""Pipeline specs: one YAML file in include/pipelines per DAG, validated before any DAG is built.

A broken spec raises `SpecError` naming the file, the field and the problem; the DAG file that
loads it shows that as its import error, and no other pipeline is affected. Every field is
documented in include/pipelines/README.md.

Building one DAG reads its own spec, the vocabulary and (once per process) the dbt manifest's
selectors, never the other specs: a pipeline's name is its file's stem, so names are unique by
construction. What spans several specs (a selector or an Airbyte connection used twice, an asset
no pipeline publishes, connections outside the environment) is checked by `check_specs`, which
`python -m elt check` and tests/dags run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal
from uuid import UUID

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from elt import paths
from elt.connections import route_problems

Identifier = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=200)]
CRON_PRESETS = {"@hourly", "@daily", "@weekly", "@monthly", "@yearly"}
CRON_FIELD = re.compile(r"^[\d*/,\-A-Za-z?LW#]+$")
# An asset a pipeline can be triggered by: `schema.table` (a raw table an Airbyte stream loads) or a URI.
ASSET_REF = re.compile(r"^([a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*|[a-z][a-z0-9+.-]*://\S+)$")
HELP = "see include/pipelines/README.md"
INVALID = "invalid pipeline spec"


class SpecError(ValueError):
    """A pipeline spec that cannot become a DAG: the file and each (field, problem)."""

    def __init__(self, file: str, problems: list[tuple[str | None, str]], what: str | None = None):
        self.file, self.problems = file, problems
        if what is None and len(problems) == 1:
            text = f"{file}: {problems[0][1]}"
        else:
            lines = [f"  field '{f}': {m}" if f else f"  {m}" for f, m in problems]
            text = f"{file}: {what}\n" + "\n".join(lines)
        super().__init__(text)


@dataclass(frozen=True)
class Problem:
    """One problem `check_specs` found: the file, the field (None for the whole file) and what is wrong."""

    file: str
    field: str | None
    message: str

    def __str__(self) -> str:
        return (
            f"{self.file}: field '{self.field}': {self.message}"
            if self.field
            else f"{self.file}: {self.message}"
        )


# -- YAML: duplicate keys are errors, not "last one wins" -------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line)
            except TypeError:
                continue  # an unhashable key: the base constructor reports it
            if first != key_node.start_mark.line:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} on line {key_node.start_mark.line + 1} "
                    f"(first set on line {first + 1})",
                )
        return super().construct_mapping(node, deep)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file strictly; SpecError naming the file (and line) when it cannot be read."""
    try:
        return yaml.load(path.read_text(), Loader=_StrictLoader)
    except FileNotFoundError:
        raise SpecError(display(path), [(None, "file not found")]) from None
    except yaml.constructor.ConstructorError as err:
        raise SpecError(display(path), [(None, f"not valid YAML: {err.problem}")]) from None
    except yaml.YAMLError as err:
        raise SpecError(display(path), [(None, f"not valid YAML: {err}")]) from None


# -- vocabularies (include/pipelines/vocabulary.yaml) ------------------------------------------------


@dataclass(frozen=True)
class Vocabulary:
    owners: frozenset[str]
    tags: frozenset[str]


@cache
def _read_vocabulary(path: Path, mtime: float) -> Vocabulary:
    raw = read_yaml(path)
    problems = []
    words = {}
    for field in ("owners", "tags"):
        value = raw.get(field) if isinstance(raw, dict) else None
        if not isinstance(value, (dict, list)) or not value or not all(isinstance(w, str) for w in value):
            problems.append((field, "must be a non-empty mapping (or list) of names"))
        else:
            words[field] = frozenset(value)
    if problems:
        raise SpecError(display(path), problems, "invalid vocabulary")
    return Vocabulary(owners=words["owners"], tags=words["tags"])


def vocabulary(path: Path | None = None) -> Vocabulary:
    """The owners and tags a spec may use, read once per process (again when the file changes)."""
    path = path or paths.VOCABULARY
    if not path.exists():
        raise SpecError(display(path), [(None, "vocabulary file not found (owners and tags a spec may use)")])
    return _read_vocabulary(path, path.stat().st_mtime)


# -- durations -------------------------------------------------------------------------------------


def _human(value: timedelta) -> str:
    if value < timedelta(0):
        return f"-{_human(-value)}"
    seconds = int(value.total_seconds())
    if seconds == 0:
        return "0 seconds"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return str(value)


def Duration(low: timedelta, high: timedelta, why: str = "") -> Any:
    """A timedelta that must be positive and within [low, high]."""

    def check(value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError(f"must be a positive duration (got {_human(value)})")
        if not low <= value <= high:
            raise ValueError(f"must be between {_human(low)} and {_human(high)}{why} (got {_human(value)})")
        return value

    return Annotated[timedelta, AfterValidator(check)]


SECOND, MINUTE, DAY = timedelta(seconds=1), timedelta(minutes=1), timedelta(days=1)


# -- the model -------------------------------------------------------------------------------------


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
    expect_rows: bool = Field(
        default=True,
        description="warn on-call (Slack/email, severity warning) when a successful sync loaded 0 rows",
    )

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
    poll_interval: Duration(SECOND, 10 * MINUTE) = Field(  # type: ignore[valid-type]
        default=timedelta(seconds=5), description="how often the wait polls"
    )
    request_timeout: Duration(SECOND, 10 * MINUTE) = Field(  # type: ignore[valid-type]
        default=timedelta(seconds=30), description="per HTTP request to Airbyte"
    )
    sync_timeout: Duration(SECOND, 7 * DAY) = Field(  # type: ignore[valid-type]
        default=timedelta(hours=2), description="a sync running longer is cancelled"
    )
    transient_error_budget: Duration(SECOND, DAY) = Field(  # type: ignore[valid-type]
        default=timedelta(minutes=10),
        description="how long each Airbyte API call retries transient errors (5xx, 429, timeouts)",
    )

    @field_validator("connections")
    @classmethod
    def _unique_connections(cls, value: list[AirbyteConnection]) -> list[AirbyteConnection]:
        for attr in ("id", "name"):
            seen = [getattr(conn, attr) for conn in value]
            if len(seen) != len(set(seen)):
                raise ValueError(f"two connections share the same {attr}")
        return value

    @model_validator(mode="after")
    def _poll_within_timeout(self) -> Airbyte:
        if self.poll_interval >= self.sync_timeout:
            raise ValueError("poll_interval must be shorter than sync_timeout")
        return self


class Dbt(_Model):
    selector: str | None = Field(
        default=None, description="a selector defined in the dbt project's selectors.yml"
    )
    select: list[str] = Field(default_factory=list, description="dbt node selection, instead of a selector")
    exclude: list[str] = Field(default_factory=list, description="dbt nodes to leave out of `select`")
    execution: Literal["watcher", "per_model"] = Field(
        default="watcher",
        description=(
            "watcher: one `dbt build` of the selection, with a task per model that reports its "
            "result (Cosmos ExecutionMode.WATCHER); per_model: a `dbt build` task per model"
        ),
    )
    freshness: Literal["error", "warn", "off"] = Field(
        default="error",
        description=(
            "`dbt source freshness` after the syncs, before the models: 'error' fails the run when a "
            "source is past its error_after; 'warn' only logs stale sources; 'off' does not check"
        ),
    )

    @model_validator(mode="after")
    def _one_selection(self) -> Dbt:
        # Cosmos renders either a YAML selector or select/exclude, never both.
        if bool(self.selector) == bool(self.select):
            raise ValueError("set either 'selector' or 'select' (with optional 'exclude'), not both")
        if self.selector and self.exclude:
            raise ValueError("'exclude' goes with 'select'; a selector has its own exclude")
        return self


class AlertRoute(_Model):
    conn_id: str = Field(min_length=1)
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

    def routes(self) -> dict[str, str]:
        """{kind: conn_id} of the routes set."""
        return {
            kind: route.conn_id for kind in ("slack", "pagerduty", "email") if (route := getattr(self, kind))
        }


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
    # Airflow caps a retry delay at [core] max_task_retry_delay (24 hours by default).
    retry_delay: Duration(SECOND, DAY) = timedelta(minutes=2)  # type: ignore[valid-type]
    dagrun_timeout: Duration(SECOND, 30 * DAY) = timedelta(hours=4)  # type: ignore[valid-type]
    max_active_runs: int = Field(default=1, ge=1, le=16)
    max_active_tasks: int = Field(default=8, ge=1, le=64)


class PipelineSpec(_Model):
    name: Identifier = Field(default="", validate_default=True, description="the dag_id: the file's stem")
    description: str = Field(min_length=10)
    owners: list[str] = Field(min_length=1)
    tags: list[str] = Field(default_factory=list)
    schedule: str | None = Field(
        default=None, description="cron expression, a preset like @daily, or null for manual/asset runs"
    )
    trigger_on_assets: list[str] = Field(
        default_factory=list, description="run when all these assets are updated (`schema.table` or a URI)"
    )
    start_date: date
    catchup: bool = False
    paused: bool | None = Field(
        default=None, description="false: the DAG starts unpaused when first deployed"
    )
    airbyte: Airbyte | None = None
    dbt: Dbt | None = None
    alerts: Alerts = Alerts()
    deadline: Duration(SECOND, 30 * DAY) | None = Field(  # type: ignore[valid-type]
        default=None,
        description=(
            "page when a run is not done this long after its data interval ends (PT6H on a daily "
            "schedule: the marts for day D are ready by D+1 06:00); counted from the window, not from "
            "when the run was queued or cleared; runs without a window, failed runs and backfills do not "
            "page for it"
        ),
    )
    backfill: Backfill = Backfill()
    limits: Limits = Limits()
    doc: str | None = Field(default=None, description="extra notes for the DAG's documentation")

    @field_validator("name", mode="before")
    @classmethod
    def _name_is_file_stem(cls, value: object, info: ValidationInfo) -> object:
        stem = (info.context or {}).get("file_stem")
        if value in (None, ""):
            if stem is None:
                raise ValueError("required field is missing")
            return stem
        if stem is not None and value != stem:
            raise ValueError(
                f"{value!r} differs from the file name {stem!r}: a pipeline's name is its file's stem "
                "(drop `name`, or rename the file)"
            )
        return value

    @field_validator("owners", "tags")
    @classmethod
    def _in_vocabulary(cls, value: list[str], info: ValidationInfo) -> list[str]:
        words = (info.context or {}).get("vocabulary") or vocabulary()
        known, word = (words.owners, "owner") if info.field_name == "owners" else (words.tags, "tag")
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(
                f"unknown {word} {unknown}; known {word}s: {sorted(known)} (include/pipelines/vocabulary.yaml)"
            )
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

    @field_validator("trigger_on_assets")
    @classmethod
    def _asset_refs(cls, value: list[str]) -> list[str]:
        bad = [ref for ref in value if not ASSET_REF.match(ref)]
        if bad:
            raise ValueError(f"{bad} are not `schema.table` or an asset URI")
        if len(set(value)) != len(value):
            raise ValueError("an asset is listed twice")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PipelineSpec:
        if self.airbyte is None and self.dbt is None:
            raise ValueError("a pipeline needs `airbyte`, `dbt` or both")
        if self.schedule is not None and self.trigger_on_assets:
            raise ValueError("set either `schedule` or `trigger_on_assets`, not both")
        if self.deadline is not None and not self.alerts.routes():
            raise ValueError("a deadline needs at least one alert route (alerts.slack, .pagerduty or .email)")
        return self

    @property
    def windowed(self) -> bool:
        """Runs cover a real data interval (time-based schedule), so dbt rebuilds exactly that window."""
        return self.schedule is not None


# -- loading ---------------------------------------------------------------------------------------


def display(path: Path) -> str:
    """The path as users see it: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(paths.REPO.resolve()))
    except ValueError:
        return str(path)


def _problems(err: ValidationError) -> list[tuple[str | None, str]]:
    problems: list[tuple[str | None, str]] = []
    for item in err.errors():
        field = ".".join(str(part) for part in item["loc"]) or None
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = f"unknown field (check the spelling; {HELP})"
        elif item["type"] == "missing":
            message = "required field is missing"
        problems.append((field, message))
    return problems


def parse_spec(path: Path) -> PipelineSpec:
    """Read and validate one spec file on its own (no environment, manifest or other specs)."""
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise SpecError(display(path), [(None, f"expected a mapping of fields, got {type(raw).__name__}")])
    try:
        return PipelineSpec.model_validate(raw, context={"file_stem": path.stem, "vocabulary": vocabulary()})
    except ValidationError as err:
        raise SpecError(display(path), _problems(err), INVALID) from None


def environment_problems(spec: PipelineSpec) -> list[tuple[str, str]]:
    """(field, message) for alert routes the environment's AIRFLOW_CONN_* contradicts."""
    return route_problems(spec.alerts.routes())


def check_environment(spec: PipelineSpec, file: str | None = None) -> None:
    problems = environment_problems(spec)
    if problems:
        raise SpecError(file or f"include/pipelines/{spec.name}.yaml", list(problems), INVALID)


def spec_files(directory: Path | None = None) -> list[Path]:
    """The pipeline specs: every *.yaml of the directory but the vocabulary."""
    directory = directory or paths.PIPELINES_DIR
    return sorted(p for p in directory.glob("*.yaml") if p.name != paths.VOCABULARY.name)


def load_spec(path: Path, manifest: Path | None = None) -> PipelineSpec:
    """Validate one spec for building its DAG: the file, the environment's connections, the dbt selector."""
    spec = parse_spec(path)
    check_environment(spec, display(path))
    if spec.dbt is not None and spec.dbt.selector:
        selectors = dbt_selectors(manifest or paths.DBT_MANIFEST)
        if spec.dbt.selector not in selectors:
            raise SpecError(
                display(path),
                [
                    (
                        "dbt.selector",
                        f"unknown dbt selector {spec.dbt.selector!r}; "
                        f"selectors in include/dbt/selectors.yml: {sorted(selectors)}",
                    )
                ],
                INVALID,
            )
    return spec


def load_all_specs(
    directory: Path | None = None, manifest: Path | None = None
) -> tuple[dict[Path, PipelineSpec], list[Problem]]:
    """Every spec that loads, and a Problem for each one that does not."""
    specs: dict[Path, PipelineSpec] = {}
    problems: list[Problem] = []
    for path in spec_files(directory):
        try:
            specs[path] = load_spec(path, manifest)
        except SpecError as err:
            problems += [Problem(err.file, field, message) for field, message in err.problems]
    return specs, problems


def check_specs(
    directory: Path | None = None,
    manifest: Path | None = None,
    workspace: Path | None = None,
    connection_type: Callable[[str], str | None] | None = None,
) -> list[Problem]:
    """Everything wrong with the pipeline specs, each with file and field; [] when all is well.

    Per file what building its DAG checks, plus what spans files: a dbt selector or an Airbyte
    connection used by two pipelines (two DAGs would build the same models or sync the same
    connection concurrently), an Airbyte connection id not in `workspace` (default
    include/airbyte/workspace.yaml when it exists), a `trigger_on_assets` table no pipeline's
    streams load, and, with `connection_type` (conn_id -> conn_type or None when missing, e.g. from
    Airflow's connections), every alert route's connection.
    """
    directory = directory or paths.PIPELINES_DIR
    specs, problems = load_all_specs(directory, manifest)
    problems += [
        Problem(display(p), None, "pipeline specs end in .yaml (this file is ignored)")
        for p in directory.glob("*.yml")
    ]
    workspace = workspace if workspace is not None else paths.AIRBYTE_WORKSPACE
    known_connections = _workspace_connection_ids(workspace) if workspace.exists() else None
    selector_users: dict[str, list[str]] = {}
    connection_users: dict[UUID, list[str]] = {}
    loaded_tables = set()
    for path, spec in specs.items():
        if spec.dbt is not None and spec.dbt.selector:
            selector_users.setdefault(spec.dbt.selector, []).append(display(path))
        for conn in spec.airbyte.connections if spec.airbyte else []:
            connection_users.setdefault(conn.id, []).append(display(path))
            loaded_tables |= {f"{conn.destination_schema}.{s.name}" for s in conn.streams}
    for path, spec in specs.items():
        file = display(path)
        if spec.dbt is not None and len(users := selector_users.get(spec.dbt.selector, [])) > 1:
            others = [u for u in users if u != file]
            problems.append(
                Problem(file, "dbt.selector", f"selector {spec.dbt.selector!r} is also used by {others}")
            )
        for i, conn in enumerate(spec.airbyte.connections if spec.airbyte else []):
            field = f"airbyte.connections.{i}.id"
            if len(users := connection_users[conn.id]) > 1:
                others = [u for u in users if u != file]
                problems.append(
                    Problem(file, field, f"Airbyte connection {conn.id} is also synced by {others}")
                )
            if known_connections is not None and str(conn.id) not in known_connections:
                problems.append(
                    Problem(file, field, f"Airbyte connection {conn.id} is not in {display(workspace)}")
                )
        for i, ref in enumerate(spec.trigger_on_assets):
            if "://" not in ref and ref not in loaded_tables:
                problems.append(
                    Problem(file, f"trigger_on_assets.{i}", f"no pipeline's Airbyte streams load {ref!r}")
                )
        if connection_type is not None:
            problems += [
                Problem(file, f, m) for f, m in route_problems(spec.alerts.routes(), connection_type)
            ]
    return problems


def _workspace_connection_ids(workspace: Path) -> frozenset[str]:
    raw = read_yaml(workspace)
    return frozenset(str(c.get("id")) for c in (raw or {}).get("connections") or [] if isinstance(c, dict))


# -- the dbt manifest, read once per process ------------------------------------------------------


@cache
def _manifest_selectors(manifest: Path, mtime: float) -> frozenset[str]:
    return frozenset(json.loads(manifest.read_text()).get("selectors", {}))


def dbt_selectors(manifest: Path) -> frozenset[str]:
    if not manifest.exists():
        raise SpecError(
            display(manifest),
            [
                (
                    None,
                    "dbt manifest not found: run `make dbt-manifest` (it compiles the dbt project once, "
                    "so that parsing DAGs never runs dbt)",
                )
            ],
        )
    return _manifest_selectors(manifest, manifest.stat().st_mtime)
