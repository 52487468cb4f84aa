"""Where the repository keeps what the DAGs are built from (overridable for deployments)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(os.environ.get("ELT_REPO_ROOT", Path(__file__).resolve().parents[2]))
PIPELINES_DIR = Path(os.environ.get("ELT_PIPELINES_DIR", REPO / "include" / "pipelines"))
# Owners and tags a spec may use: a data file a team edits (not a spec: spec_files skips it). The
# pipelines directory's own, else the repository's.
_VOCABULARY = PIPELINES_DIR / "vocabulary.yaml"
VOCABULARY = Path(
    os.environ.get("ELT_VOCABULARY")
    or (_VOCABULARY if _VOCABULARY.exists() else REPO / "include" / "pipelines" / "vocabulary.yaml")
)
DBT_PROJECT_DIR = Path(os.environ.get("ELT_DBT_PROJECT_DIR", REPO / "include" / "dbt"))
DBT_PROJECT_NAME = os.environ.get("ELT_DBT_PROJECT_NAME", "managed_elt")  # `name:` in dbt_project.yml
# profiles.yml for `dbt parse` only (it reads no secrets); runs use the `warehouse` connection.
DBT_PROFILES_DIR = Path(os.environ.get("ELT_DBT_PROFILES_DIR", DBT_PROJECT_DIR))
DBT_MANIFEST = Path(os.environ.get("ELT_DBT_MANIFEST", DBT_PROJECT_DIR / "target" / "manifest.json"))
AIRBYTE_WORKSPACE = Path(
    os.environ.get("ELT_AIRBYTE_WORKSPACE", REPO / "include" / "airbyte" / "workspace.yaml")
)
