"""Airflow DAG for include/pipelines/ecommerce_sales.yaml; all logic lives in the plugins/elt package."""

from elt.dag_factory import build_pipeline_dag

dag = build_pipeline_dag(__file__)
