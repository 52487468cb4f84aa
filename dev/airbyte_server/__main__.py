"""`python -m dev.airbyte_server`: serve the local Airbyte API (settings from the environment)."""

from __future__ import annotations

import logging
import sys

import uvicorn

from .app import create_app
from .context import ServerContext
from .settings import Settings, SettingsError
from .workspace import WorkspaceError

# On SIGTERM, requests still in flight after this long are cancelled and the shutdown goes on (the
# supervisor stops the job workers). Without it, a request held by an injected hang or drop-reply
# fault kept the server up until `dev.stack down` killed it, 20 s later, with no shutdown run.
GRACEFUL_SHUTDOWN_SECONDS = 3


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env()
        context = ServerContext.build(settings)
    except (SettingsError, WorkspaceError) as exc:
        print(f"local Airbyte server: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        create_app(context),
        host=settings.host,
        port=settings.port,
        log_level="info",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
