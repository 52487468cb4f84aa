"""Generate the dbt docs site that Cosmos's plugin shows in the Airflow UI (Browse → dbt docs).

    make dbt-docs [DIR=...]                     # locally, with `make up` running
    python -m elt.dbt_docs [--target-dir DIR]   # in the images (PYTHONPATH includes plugins/)

(`elt` lives in plugins/, which Airflow puts on sys.path for its own processes only: outside the
images, `make dbt-docs` sets PYTHONPATH and reads the stack's connections and settings from
.local/stack.env.)

`dbt docs generate` queries the warehouse for its catalog, so this runs after the stack is up
(best after a pipeline run, so the marts are in the catalog). The profile comes from the
`warehouse` Airflow connection, like the DAGs' dbt tasks. The output directory is the one
Cosmos serves: `[cosmos] dbt_docs_projects` (AIRFLOW__COSMOS__DBT_DOCS_PROJECTS), project
`managed_elt`, e.g. {"managed_elt": {"dir": "/path/to/dbt_docs", "name": "dbt docs"}}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from unittest import mock

from elt import paths
from elt.dbt import PROJECT_NAME, profile_config

# What Cosmos's plugin reads for the docs page (index.html fetches the two JSON files).
DOCS_FILES = ("index.html", "manifest.json", "catalog.json")


class DocsError(RuntimeError):
    pass


def configured_docs_dir() -> Path:
    """The `dir` of project `managed_elt` in `[cosmos] dbt_docs_projects`."""
    from airflow.configuration import conf

    raw = conf.get("cosmos", "dbt_docs_projects", fallback=None)
    if not raw:
        raise DocsError(
            "[cosmos] dbt_docs_projects is not set (AIRFLOW__COSMOS__DBT_DOCS_PROJECTS); "
            "pass --target-dir or configure it"
        )
    try:
        project = json.loads(raw)[PROJECT_NAME]
        return Path(project["dir"])
    except (ValueError, KeyError, TypeError) as err:
        raise DocsError(
            f"[cosmos] dbt_docs_projects={raw!r} has no {PROJECT_NAME!r} entry with a local 'dir': {err!r}"
        ) from None


def generate(target_dir: Path | None = None) -> Path:
    """Run `dbt docs generate` into `target_dir` (default: the configured one); return the directory."""
    from dbt.cli.main import dbtRunner

    target = (target_dir or configured_docs_dir()).resolve()
    target.mkdir(parents=True, exist_ok=True)
    profile = profile_config()
    # The profile's secrets arrive as environment variables the rendered profiles.yml reads.
    with (
        profile.ensure_profile() as (profile_path, profile_env),
        mock.patch.dict(os.environ, {**profile_env, "DO_NOT_TRACK": "1"}),
    ):
        result = dbtRunner().invoke(
            [
                "docs",
                "generate",
                "--project-dir",
                str(paths.DBT_PROJECT_DIR),
                "--profiles-dir",
                str(profile_path.parent),
                "--profile",
                PROJECT_NAME,
                "--target",
                profile.target_name,
                "--target-path",
                str(target),
                "--log-path",
                str(target / "logs"),
                "--quiet",
            ]
        )
    if not result.success:
        raise DocsError(f"dbt docs generate failed: {result.exception or 'see ' + str(target / 'logs')}")
    missing = [name for name in DOCS_FILES if not (target / name).is_file()]
    if missing:
        raise DocsError(f"dbt docs generate left out {missing} in {target}")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m elt.dbt_docs", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--target-dir", type=Path, help="where to write the site (default: the configured dir)"
    )
    args = parser.parse_args(argv)
    try:
        target = generate(args.target_dir)
    except DocsError as err:
        print(f"elt.dbt_docs: {err}", file=sys.stderr)
        return 1
    print(
        f"dbt docs written to {target}; in the UI: Browse → dbt docs (/cosmos/{PROJECT_NAME}/dbt_docs_index.html)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
