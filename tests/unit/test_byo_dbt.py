"""`dbt.select`/`dbt.exclude` as an alternative to `dbt.selector`, rendered from the compiled manifest."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from elt.dag_factory import dag_from_spec
from elt.spec import PipelineSpec

REPO = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((REPO / "include" / "pipelines" / "energy_meters.yaml").read_text())


def spec_with(dbt: dict) -> PipelineSpec:
    data = copy.deepcopy(BASE)
    data["dbt"] = dbt
    return PipelineSpec.model_validate(data)


def models(dag) -> set[str]:
    return {t.split(".")[1] for t in dag.task_ids if t.startswith("dbt.") and t.endswith(".run")}


def test_select_and_exclude_pick_the_nodes():
    dag = dag_from_spec(spec_with({"select": ["tag:energy"], "exclude": ["fct_energy_daily", "dim_meters"]}))
    assert models(dag) == {
        "stg_energy_meters__muid_1",
        "stg_energy_meters__muid_2",
        "int_energy_readings_unpivoted",
        "fct_energy_hourly",
    }


def test_selector_still_selects_the_same_as_its_tag():
    by_selector = models(dag_from_spec(spec_with({"selector": "energy"})))
    assert by_selector == models(dag_from_spec(spec_with({"select": ["tag:energy"]})))
    assert "fct_energy_daily" in by_selector


@pytest.mark.parametrize(
    "dbt, message",
    [
        ({"selector": "energy", "select": ["tag:energy"]}, "either 'selector' or 'select'"),
        ({}, "either 'selector' or 'select'"),
        ({"selector": "energy", "exclude": ["dim_meters"]}, "'exclude' goes with 'select'"),
    ],
)
def test_one_way_of_selecting(dbt, message):
    with pytest.raises(ValueError, match=message):
        spec_with(dbt)


def test_dbt_only_and_airbyte_only_pipelines_build():
    """Specs without an `airbyte` or a `dbt` section (model_copy: the spec side may not allow them yet)."""
    full = spec_with({"selector": "energy"})
    dbt_only = dag_from_spec(full.model_copy(update={"airbyte": None}))
    assert not [t for t in dbt_only.task_ids if t.startswith("airbyte_")]
    assert "fct_energy_daily" in models(dbt_only)
    airbyte_only = dag_from_spec(full.model_copy(update={"dbt": None}))
    assert set(airbyte_only.task_ids) == {"airbyte_energy.sync", "airbyte_energy.wait"}


def test_a_project_with_local_packages_and_its_own_schema_macro_compiles(tmp_path, monkeypatch):
    """`python -m elt.dbt` installs packages.yml (a local package: no network) and keeps the project's macros."""
    import json
    import shutil

    from elt import dbt, paths

    project = tmp_path / "their_dbt"
    shutil.copytree(
        paths.DBT_PROJECT_DIR, project, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages")
    )
    package = tmp_path / "house_macros"
    (package / "macros").mkdir(parents=True)
    (package / "dbt_project.yml").write_text("name: house_macros\nversion: '1.0.0'\nconfig-version: 2\n")
    (package / "macros" / "cents.sql").write_text("{% macro cents(x) %}({{ x }} * 100){% endmacro %}\n")
    (project / "packages.yml").write_text("packages:\n  - local: ../house_macros\n")
    # Their convention: a custom schema is used as is (dbt's default would prefix the target schema).
    (project / "macros" / "generate_schema_name.sql").write_text(
        "{% macro generate_schema_name(custom, node) %}{{ custom | trim if custom else target.schema }}{% endmacro %}\n"
    )
    monkeypatch.setattr(paths, "DBT_PROJECT_DIR", project)
    monkeypatch.setattr(paths, "DBT_PROFILES_DIR", project)
    monkeypatch.setattr(paths, "DBT_MANIFEST", project / "target" / "manifest.json")
    assert dbt.compile_manifest() == 0
    manifest = json.loads((project / "target" / "manifest.json").read_text())
    assert "macro.house_macros.cents" in manifest["macros"]
    assert manifest["nodes"]["model.managed_elt.stg_ecommerce__users"]["schema"] == "staging"
    assert manifest["nodes"]["model.managed_elt.fct_purchases"]["schema"] == "marts"
