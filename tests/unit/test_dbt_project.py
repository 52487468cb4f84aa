"""The dbt project in include/dbt: parses without a database and follows the house rules.

`dbt parse` runs in-process (dbtRunner) with target/log paths in a pytest tmp dir, and
the checks read the manifest.json it writes (the same file the DAGs are rendered from).

`test_windowed_build_against_postgres` also builds the project for real, in a database it
creates and drops itself: on DBT_IT_PG_URL's server when that is set (e.g.
postgresql://postgres:pw@127.0.0.1:5432/postgres), else on the live stack's Postgres (so it is
part of `make test`, not of `make test-fast`).
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from unittest import mock
from urllib.parse import urlsplit

import pytest
from dbt.cli.main import dbtRunner

DBT_DIR = Path(__file__).resolve().parents[2] / "include" / "dbt"
PROJECT = "managed_elt"
LAYER_PREFIXES = {"staging": ("stg_",), "intermediate": ("int_",), "marts": ("fct_", "dim_")}
LAYER_MATERIALIZATIONS = {
    "staging": {"view"},
    "intermediate": {"view", "ephemeral", "table"},
    "marts": {"table", "incremental"},
}
SELECTOR_METHODS = {"tag", "path", "fqn"}


def _run_dbt(args: list[str], tmp: Path, env: dict[str, str] | None = None):
    """Run dbt in-process against include/dbt, writing target/ and logs/ under `tmp`."""
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("WAREHOUSE_", "DBT_"))}
    base_env["DO_NOT_TRACK"] = "1"
    base_env.update(env or {})
    full_args = [
        *args,
        "--project-dir",
        str(DBT_DIR),
        "--profiles-dir",
        str(DBT_DIR),
        "--target-path",
        str(tmp / "target"),
        "--log-path",
        str(tmp / "logs"),
    ]
    with mock.patch.dict(os.environ, base_env, clear=True):
        return dbtRunner().invoke(full_args)


@pytest.fixture(scope="session")
def manifest(tmp_path_factory) -> dict:
    """manifest.json from `dbt parse` with no database and no WAREHOUSE_* variables."""
    tmp = tmp_path_factory.mktemp("dbt_parse")
    result = _run_dbt(["parse", "--no-partial-parse"], tmp)
    assert result.success, f"dbt parse failed: {result.exception}"
    return json.loads((tmp / "target" / "manifest.json").read_text())


def _nodes(manifest: dict, resource_type: str) -> dict[str, dict]:
    return {
        uid: node
        for uid, node in manifest["nodes"].items()
        if node["resource_type"] == resource_type and node["package_name"] == PROJECT
    }


@pytest.fixture(scope="session")
def models(manifest) -> dict[str, dict]:
    found = {node["name"]: node for node in _nodes(manifest, "model").values()}
    assert found, "the dbt project has no models"
    return found


@pytest.fixture(scope="session")
def column_tests(manifest) -> dict[tuple[str, str], set[str]]:
    """(model name, column) -> names of the generic tests attached to it."""
    tests: dict[tuple[str, str], set[str]] = defaultdict(set)
    for node in _nodes(manifest, "test").values():
        meta = node.get("test_metadata")
        attached = node.get("attached_node")
        if meta and attached and node.get("column_name"):
            model = manifest["nodes"][attached]["name"]
            tests[(model, node["column_name"])].add(meta["name"])
    return tests


def _layer(model: dict) -> str:
    return model["fqn"][1]


def test_every_model_is_documented(models):
    undocumented = [name for name, m in models.items() if not m["description"].strip()]
    assert not undocumented, f"models without a YAML description: {undocumented}"
    missing_columns = [name for name, m in models.items() if not m["columns"]]
    assert not missing_columns, f"models without documented columns: {missing_columns}"
    blank = [
        f"{name}.{col}"
        for name, m in models.items()
        for col, spec in m["columns"].items()
        if not spec["description"].strip()
    ]
    assert not blank, f"columns without a description: {blank}"


def test_every_model_has_a_tested_primary_key(models, column_tests):
    without_key = [
        name
        for name in models
        if not any(
            {"unique", "not_null"} <= tests for (model, _), tests in column_tests.items() if model == name
        )
    ]
    assert not without_key, f"models without a column tested unique + not_null: {without_key}"


def test_models_follow_layer_naming_and_materialisation(models):
    problems = []
    for name, model in models.items():
        layer = _layer(model)
        if layer not in LAYER_PREFIXES:
            problems.append(f"{name}: outside staging/intermediate/marts ({model['original_file_path']})")
            continue
        if not name.startswith(LAYER_PREFIXES[layer]):
            problems.append(f"{name}: {layer} models are named {LAYER_PREFIXES[layer]}")
        if model["config"]["materialized"] not in LAYER_MATERIALIZATIONS[layer]:
            problems.append(f"{name}: {layer} model materialised as {model['config']['materialized']}")
        if Path(model["original_file_path"]).stem != name:
            problems.append(f"{name}: file is {model['original_file_path']}")
    assert not problems, "\n".join(problems)


def test_marts_land_in_analytics_marts_and_staging_in_analytics_staging(models):
    wrong = [
        f"{name} -> {m['schema']}"
        for name, m in models.items()
        if _layer(m) in ("marts", "staging") and m["schema"] != f"analytics_{_layer(m)}"
    ]
    assert not wrong, f"models in the wrong schema: {wrong}"


def test_every_source_has_loaded_at_field_and_freshness(manifest):
    sources = [s for s in manifest["sources"].values() if s["package_name"] == PROJECT]
    expected = {
        ("energy_meters", "raw_energy", "muid_1"),
        ("energy_meters", "raw_energy", "muid_2"),
        ("ecommerce", "raw_ecommerce", "users"),
        ("ecommerce", "raw_ecommerce", "products"),
        ("ecommerce", "raw_ecommerce", "purchases"),
    }
    assert {(s["source_name"], s["schema"], s["name"]) for s in sources} == expected
    problems = []
    for source in sources:
        label = f"{source['source_name']}.{source['name']}"
        if source.get("loaded_at_field") != "_airbyte_extracted_at":
            problems.append(f"{label}: loaded_at_field is {source.get('loaded_at_field')!r}")
        freshness = source.get("freshness") or {}
        for level in ("warn_after", "error_after"):
            threshold = freshness.get(level) or {}
            if not (threshold.get("count") and threshold.get("period")):
                problems.append(f"{label}: no freshness {level}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("selector", ["energy", "ecommerce"])
def test_selector_exists_with_a_simple_definition(manifest, models, selector):
    assert selector in manifest["selectors"], f"selectors in manifest: {sorted(manifest['selectors'])}"
    definition = manifest["selectors"][selector]["definition"]
    items = definition.get("union", [definition])
    for item in items:
        assert set(item) <= {"method", "value"}, f"{selector}: not a plain method/value item: {item}"
        assert item["method"] in SELECTOR_METHODS, f"{selector}: method {item['method']!r}"
    tag_values = {item["value"] for item in items if item["method"] == "tag"}
    assert any(tag_values & set(m["tags"]) for m in models.values()), f"{selector} selects no model"


def test_every_model_belongs_to_exactly_one_selector_tag(models):
    wrong = {
        name: m["tags"] for name, m in models.items() if len({"energy", "ecommerce"} & set(m["tags"])) != 1
    }
    assert not wrong, f"models not in exactly one of the energy/ecommerce selectors: {wrong}"


def test_windowed_marts_are_dbt_microbatch_by_utc_day(models):
    for name, bucket in (("fct_energy_hourly", "hour_start_at"), ("fct_energy_daily", "reading_date")):
        config = models[name]["config"]
        assert config["materialized"] == "incremental", name
        assert config["incremental_strategy"] == "microbatch", name
        assert config["event_time"] == bucket and bucket in models[name]["columns"], name
        assert config["batch_size"] == "day" and config["begin"], name
        assert "refuse_windowed_full_refresh" in models[name]["raw_code"], name
    # Batches filter the readings on the start of the interval each reading covers.
    assert models["int_energy_readings_unpivoted"]["config"]["event_time"] == "interval_start_at"


def test_stored_models_that_microbatch_reads_are_indexed_on_their_event_time(manifest, models):
    """A batch reads one day of each parent that has an event_time (dbt filters only those): without
    an index on it every batch of every run scans the parent's whole history."""
    nodes = manifest["nodes"]
    read = {
        parent
        for model in models.values()
        if model["config"].get("incremental_strategy") == "microbatch"
        for parent in model["depends_on"]["nodes"]
        if parent.startswith("model.")
        and nodes[parent]["config"]["materialized"] in ("table", "incremental")
        and nodes[parent]["config"].get("event_time")
    }
    assert "model.managed_elt.int_energy_readings_unpivoted" in read
    unindexed = [
        parent
        for parent in sorted(read)
        if [nodes[parent]["config"]["event_time"]]
        not in [index["columns"] for index in nodes[parent]["config"].get("indexes") or []]
    ]
    assert not unindexed, f"read by microbatch without an index on their event_time: {unindexed}"


def test_the_custom_window_strategy_is_gone():
    leftovers = [p.name for p in (DBT_DIR / "macros").glob("*.sql") if "replace_window" in p.read_text()]
    assert not leftovers and not (DBT_DIR / "macros" / "data_interval.sql").exists(), leftovers


def test_marts_use_no_run_time_timestamps(models):
    clock = re.compile(r"\b(now\s*\(|current_timestamp|current_date|localtimestamp|run_started_at)", re.I)
    offenders = [name for name, m in models.items() if _layer(m) == "marts" and clock.search(m["raw_code"])]
    assert not offenders, f"marts depending on the clock: {offenders}"


def test_foreign_keys_and_codes_are_tested(column_tests):
    expected = {
        ("fct_purchases", "customer_id"): "relationships",
        ("fct_purchases", "product_id"): "relationships",
        ("fct_energy_hourly", "meter_muid"): "relationships",
        ("fct_energy_daily", "meter_muid"): "relationships",
        ("int_energy_readings_unpivoted", "direction"): "accepted_values",
        ("int_energy_readings_unpivoted", "obis_code"): "accepted_values",
        ("fct_energy_daily", "direction"): "accepted_values",
    }
    missing = [f"{key}: {test}" for key, test in expected.items() if test not in column_tests.get(key, set())]
    assert not missing, f"missing tests: {missing}"


def test_unit_tests_cover_unpivot_and_the_covered_interval_buckets(manifest):
    tested = defaultdict(list)
    for unit_test in manifest.get("unit_tests", {}).values():
        tested[unit_test["model"]].append(unit_test)
    assert tested["int_energy_readings_unpivoted"], "no unit test for the unpivot + dedup"
    for model, boundary in (("fct_energy_daily", "00:00:00"), ("fct_energy_hourly", ":00:00")):
        # The reading at a bucket's closing boundary (00:00 / HH:00) must be in a fixture.
        readings = [
            row["reading_at"]
            for test in tested[model]
            for given in test["given"]
            for row in given["rows"] or []
            if "reading_at" in row
        ]
        assert any(r[11:19].endswith(boundary) for r in readings), f"{model}: no reading on a bucket boundary"


def test_profile_reads_only_environment_variables():
    text = (DBT_DIR / "profiles.yml").read_text()
    for field in ("host", "port", "user", "password", "dbname"):
        line = re.search(rf"^\s+{field}:\s*(.+)$", text, re.M)
        assert line, f"profiles.yml has no {field}"
        assert "env_var('WAREHOUSE_" in line.group(1), f"{field} is not read from a WAREHOUSE_* env var"
    assert re.search(r"^\s+schema:\s*analytics\s*$", text, re.M)


# --- opt-in: build against a real Postgres -------------------------------------------------

SEED_SQL = """
create schema raw_energy;
create schema raw_ecommerce;
create table raw_energy.muid_1 (
    measurement text, "timestamp" text, tags json, _0100011d00ff numeric, _0100021d00ff numeric,
    _airbyte_raw_id text, _airbyte_extracted_at timestamptz, _airbyte_meta json,
    _airbyte_generation_id bigint
);
create table raw_energy.muid_2 (like raw_energy.muid_1);
insert into raw_energy.muid_1
select 'energy', to_char(ts at time zone 'utc', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
       '{"muid": "95ce3367-cbce-4a4d-bbe3-da082831d7bd", "quality": "measured"}',
       0.01, null, md5(ts::text || 'm1'), '2023-02-04 01:00+00', '{}', 1
from generate_series('2023-02-01 00:15+00'::timestamptz, '2023-02-04 00:00+00', interval '15 min') ts;
insert into raw_energy.muid_2
select 'energy', to_char(ts at time zone 'utc', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
       '{"muid": "1db7649e-9342-4e04-97c7-f0ebb88ed1f8", "quality": "measured"}',
       null, 0.02, md5(ts::text || 'm2'), '2023-02-04 01:00+00', '{}', 1
from generate_series('2023-02-01 00:15+00'::timestamptz, '2023-02-04 00:00+00', interval '15 min') ts;
-- re-synced reading: the later extraction (1.0) wins
insert into raw_energy.muid_1 values ('energy', '2023-02-02T10:00:00.000Z',
    '{"muid": "95ce3367-cbce-4a4d-bbe3-da082831d7bd", "quality": "measured"}',
    1.0, null, 'resync', '2023-02-05 01:00+00', '{}', 2);
create table raw_ecommerce.users (
    id bigint, created_at timestamp, updated_at timestamp, name text, title text, age bigint,
    email text, telephone text, gender text, language text, academic_degree text, nationality text,
    occupation text, height text, blood_type text, weight bigint, address json,
    _airbyte_raw_id text, _airbyte_extracted_at timestamptz, _airbyte_meta json,
    _airbyte_generation_id bigint
);
create table raw_ecommerce.products (
    id bigint, make text, model text, year bigint, price numeric, created_at timestamp,
    updated_at timestamp, _airbyte_raw_id text, _airbyte_extracted_at timestamptz,
    _airbyte_meta json, _airbyte_generation_id bigint
);
create table raw_ecommerce.purchases (
    id bigint, user_id bigint, product_id bigint, created_at timestamp, updated_at timestamp,
    added_to_cart_at timestamp, purchased_at timestamp, returned_at timestamp,
    _airbyte_raw_id text, _airbyte_extracted_at timestamptz, _airbyte_meta json,
    _airbyte_generation_id bigint
);
insert into raw_ecommerce.users (id, created_at, updated_at, name, age, email, address,
                                 _airbyte_raw_id, _airbyte_extracted_at)
values (1, '2023-01-01', '2023-01-01', 'Ann', 30, 'ann@example.com', '{"city": "Cork"}', 'u1', now()),
       (2, '2023-01-01', '2023-01-02', 'Bob', 40, 'bob@example.com', '{"city": "Oslo"}', 'u2', now());
insert into raw_ecommerce.products (id, make, model, year, price, created_at, updated_at,
                                    _airbyte_raw_id, _airbyte_extracted_at)
values (1, 'Mazda', 'MX-5', 2008, 100, '2023-01-01', '2023-01-01', 'p1', now()),
       (2, 'GMC', 'Jimmy', 1998, 50, '2023-01-01', '2023-01-01', 'p2', now());
insert into raw_ecommerce.purchases (id, user_id, product_id, created_at, updated_at,
                                     added_to_cart_at, purchased_at, returned_at,
                                     _airbyte_raw_id, _airbyte_extracted_at)
values (1, 1, 1, '2023-02-01 09:00', '2023-02-01 09:00', '2023-02-01 09:00', '2023-02-01 09:05', null, 'q1', now()),
       (2, 1, 2, '2023-02-01 10:00', '2023-02-03 10:00', '2023-02-01 10:00', '2023-02-01 10:05',
        '2023-02-03 10:00', 'q2', now()),
       (3, 2, 1, '2023-02-02 10:00', '2023-02-02 10:00', '2023-02-02 10:00', null, null, 'q3', now());
"""

DAILY_SQL = (
    "select reading_date::text, direction, energy_kwh::float, reading_count"
    " from analytics_marts.fct_energy_daily order by 1, 2"
)
ENERGY_RAW_SQL = """
select "timestamp", _0100011d00ff::float, _0100021d00ff::float, _airbyte_extracted_at, _airbyte_raw_id
from raw_energy.{table}
"""


def expected_daily_from_raw(cur) -> dict[tuple[str, str], tuple[float, int]]:
    """(day, direction) -> (kWh, readings), in plain Python over the raw tables.

    The latest extraction of each timestamp wins; a reading at t counts for the UTC day of the
    interval it covers, (t - 15 min, t].
    """
    latest: dict[tuple[str, str], tuple] = {}
    for table in ("muid_1", "muid_2"):
        cur.execute(ENERGY_RAW_SQL.format(table=table))
        for stamp, imported, exported, extracted, raw_id in cur.fetchall():
            key = (table, stamp[:19])
            if key not in latest or (extracted, raw_id) > latest[key][2:]:
                latest[key] = (imported, exported, extracted, raw_id)
    totals: dict[tuple[str, str], tuple[float, int]] = {}
    for (_, stamp), (imported, exported, *_) in latest.items():
        day = (datetime.fromisoformat(stamp) - timedelta(minutes=15)).date().isoformat()
        for direction, value in (("import", imported), ("export", exported)):
            if value is not None:
                kwh, count = totals.get((day, direction), (0.0, 0))
                totals[(day, direction)] = (kwh + value, count + 1)
    return totals


@pytest.fixture
def scratch_warehouse(request):
    """A throwaway database on the DBT_IT_PG_URL server (else the stack's), seeded with raw tables."""
    url = os.environ.get("DBT_IT_PG_URL") or request.getfixturevalue("stack")["WAREHOUSE_URL"]
    import psycopg2

    parts = urlsplit(url)
    dbname = f"managed_elt_dbt_it_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(url)
    admin.autocommit = True
    admin.cursor().execute(f'create database "{dbname}"')
    conn = psycopg2.connect(parts._replace(path=f"/{dbname}").geturl())
    conn.autocommit = True
    conn.cursor().execute(SEED_SQL)
    env = {
        "WAREHOUSE_HOST": parts.hostname or "127.0.0.1",
        "WAREHOUSE_PORT": str(parts.port or 5432),
        "WAREHOUSE_USER": parts.username or "",
        "WAREHOUSE_PASSWORD": parts.password or "",
        "WAREHOUSE_DB": dbname,
    }
    try:
        yield conn, env
    finally:
        conn.close()
        admin.cursor().execute(f'drop database "{dbname}" with (force)')
        admin.close()


@pytest.mark.stack
def test_windowed_build_against_postgres(scratch_warehouse, tmp_path):
    conn, env = scratch_warehouse
    cur = conn.cursor()

    def build(*extra: str, ok: bool = True):
        result = _run_dbt(["build", *extra], tmp_path, env)
        failed = [r.node.name for r in (result.result or []) if r.status not in ("success", "pass")]
        if ok:
            assert result.success, f"dbt build {extra} failed: {failed or result.exception}"
        return result

    def daily() -> dict[tuple[str, str], tuple[float, int]]:
        cur.execute(DAILY_SQL)
        return {(d, di): (round(k, 6), c) for d, di, k, c in cur.fetchall()}

    def rounded(totals):
        return {key: (round(kwh, 6), count) for key, (kwh, count) in totals.items()}

    seeded = ["--event-time-start", "2023-02-01", "--event-time-end", "2023-02-04"]
    build(*seeded)
    full = daily()
    assert full == rounded(expected_daily_from_raw(cur))
    # (D, D+1]: the seed's readings run 00:15 .. the next 00:00, so each day is whole
    assert {count for _, count in full.values()} == {96}, full
    cur.execute("select net_revenue::float from analytics_marts.fct_daily_revenue order by purchase_date")
    assert cur.fetchall() == [(100.0,)]

    # change data outside the window, drop half of the import readings inside it
    cur.execute(
        "update raw_energy.muid_1 set _0100011d00ff = 5 where \"timestamp\"::timestamptz <= '2023-02-02T00:00Z';"
        " delete from raw_energy.muid_1 where \"timestamp\"::timestamptz > '2023-02-02T12:00Z'"
        " and \"timestamp\"::timestamptz <= '2023-02-03T00:00Z'"
    )
    window = ["--event-time-start", "2023-02-02T00:00:00", "--event-time-end", "2023-02-03T00:00:00"]
    build("--selector", "energy", *window)
    first = daily()
    build("--selector", "energy", *window)
    assert daily() == first, "re-running the same window changed the mart"
    assert first[("2023-02-02", "import")] == rounded(expected_daily_from_raw(cur))[("2023-02-02", "import")]
    assert first[("2023-02-02", "import")][1] == 48, "readings that vanished inside the window remain"
    assert {k: v for k, v in first.items() if k[0] != "2023-02-02"} == {
        k: v for k, v in full.items() if k[0] != "2023-02-02"
    }, "days outside the window changed"

    # --full-refresh with a window would keep only that window: refused, table untouched
    refused = build("--selector", "energy", "--full-refresh", *window, ok=False)
    assert not refused.success
    assert daily() == first

    build("--selector", "energy", *seeded)  # the whole seeded range rebuilt from the source
    assert daily() == rounded(expected_daily_from_raw(cur))
