"""On-call alerting (filled in by the alerting work): callbacks and DAG arguments per pipeline."""

from __future__ import annotations

from typing import Any

from elt.spec import PipelineSpec


def task_callbacks(spec: PipelineSpec) -> dict[str, Any]:
    return {}


def dag_arguments(spec: PipelineSpec) -> dict[str, Any]:
    return {}
