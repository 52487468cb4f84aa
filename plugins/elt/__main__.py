"""Command line: `python -m elt new-pipeline NAME --connection ID` and `python -m elt check [--airbyte]`.

Run from the repository root with `PYTHONPATH=plugins` (the make targets set it).
"""

from __future__ import annotations

import argparse
import sys

from elt import paths


def _new_pipeline(args: argparse.Namespace) -> int:
    from elt.scaffold import ScaffoldError, new_pipeline

    try:
        written = new_pipeline(
            args.name,
            args.connection,
            airbyte_conn_id=args.airbyte_conn_id,
            owner=args.owner,
            schedule=None if args.schedule == "none" else args.schedule,
        )
    except ScaffoldError as err:
        print(f"new-pipeline: {err}", file=sys.stderr)
        return 1
    for path in written:
        try:
            print(f"wrote {path.relative_to(paths.REPO)}")
        except ValueError:
            print(f"wrote {path}")
    print(
        "\nnext:\n"
        "  make dbt-manifest check       # recompile the dbt manifest (the DAG renders from it) and check\n"
        f"  .venv/bin/airflow dags unpause {args.name} && .venv/bin/airflow dags trigger {args.name}"
    )
    return 0


def _check(args: argparse.Namespace) -> int:
    from elt.check import run_check
    from elt.scaffold import ScaffoldError

    try:
        problems = run_check(with_airbyte=args.airbyte, airbyte_conn_id=args.airbyte_conn_id)
    except (ScaffoldError, FileNotFoundError) as err:
        print(f"check: {err}", file=sys.stderr)
        return 2
    for problem in problems:
        print(problem)
    scope = "specs, dbt sources and Airbyte" if args.airbyte else "specs and dbt sources"
    print(f"{len(problems)} problem(s) found across {scope}" if problems else f"ok: {scope} agree")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m elt")
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new-pipeline", help="scaffold a pipeline from an Airbyte connection")
    new.add_argument("name", help="pipeline name = dag_id (lowercase, digits, _)")
    new.add_argument("--connection", required=True, help="Airbyte connection id (UUID)")
    new.add_argument("--owner", default="data-platform", help="owner from the owners vocabulary")
    new.add_argument("--schedule", default="@daily", help="cron or preset; 'none' for manual runs")
    new.set_defaults(run=_new_pipeline)
    check = commands.add_parser("check", help="specs vs dbt sources (and the live Airbyte with --airbyte)")
    check.add_argument("--airbyte", action="store_true", help="also check against the live Airbyte API")
    check.set_defaults(run=_check)
    for sub in (new, check):
        sub.add_argument("--airbyte-conn-id", default="airbyte_default", help="Airflow connection of Airbyte")
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
