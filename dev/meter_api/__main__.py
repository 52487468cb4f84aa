"""Run the local meter API: ``python -m dev.meter_api`` (METER_API_HOST, METER_API_PORT)."""

from __future__ import annotations

import os

import uvicorn

from dev.meter_api.app import create_app


def main() -> None:
    host = os.environ.get("METER_API_HOST", "127.0.0.1")
    port = int(os.environ.get("METER_API_PORT", "8010"))
    uvicorn.run(create_app(), host=host, port=port, log_level=os.environ.get("METER_API_LOG_LEVEL", "info"))


if __name__ == "__main__":
    main()
