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
