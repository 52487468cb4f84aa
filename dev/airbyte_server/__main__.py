"""`python -m dev.airbyte_server`: serve the local Airbyte API (settings from the environment)."""

from __future__ import annotations

import logging
import sys

import uvicorn

from .app import create_app
from .context import ServerContext
from .settings import Settings, SettingsError
from .workspace import WorkspaceError


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env()
        context = ServerContext.build(settings)
    except (SettingsError, WorkspaceError) as exc:
        print(f"local Airbyte server: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(create_app(context), host=settings.host, port=settings.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
