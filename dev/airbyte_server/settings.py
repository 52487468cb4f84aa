"""Server settings, read once from the environment the stack runner provides."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_WORKSPACE_FILE = REPO_ROOT / "include" / "airbyte" / "workspace.yaml"
API_PREFIX = "/api/public/v1"


class SettingsError(RuntimeError):
    """The environment is missing or mis-sets something the server needs."""


def _required(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise SettingsError(f"environment variable {name} must be set for the local Airbyte server")
    return value


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    db_url: str
    client_id: str
    client_secret: str
    state_dir: Path
    workspace_file: Path
    # Connector virtualenvs (pip_url sources). Default: under state_dir. The stack runner shares one
    # directory between all the stacks of a checkout, so a connector is installed once, not per stack.
    connectors_root: Path | None = None
    # Airbyte's own tokens live 3 minutes; the SDK refreshes 60 s before expiry.
    token_ttl_seconds: int = 180

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            host=os.environ.get("LOCAL_AIRBYTE_HOST", "127.0.0.1"),
            port=int(os.environ.get("LOCAL_AIRBYTE_PORT", "8000")),
            db_url=_required("LOCAL_AIRBYTE_DB_URL"),
            client_id=_required("LOCAL_AIRBYTE_CLIENT_ID"),
            client_secret=_required("LOCAL_AIRBYTE_CLIENT_SECRET"),
            state_dir=Path(
                os.environ.get("LOCAL_AIRBYTE_STATE_DIR", REPO_ROOT / ".local" / "airbyte")
            ).resolve(),
            workspace_file=Path(os.environ.get("LOCAL_AIRBYTE_WORKSPACE", DEFAULT_WORKSPACE_FILE)).resolve(),
            token_ttl_seconds=int(os.environ.get("LOCAL_AIRBYTE_TOKEN_TTL_SECONDS", "180")),
            connectors_root=(
                Path(os.environ["LOCAL_AIRBYTE_CONNECTORS_DIR"]).resolve()
                if os.environ.get("LOCAL_AIRBYTE_CONNECTORS_DIR")
                else None
            ),
        )

    def job_dir(self, job_id: int) -> Path:
        return self.state_dir / "jobs" / str(job_id)

    def job_log(self, job_id: int) -> Path:
        return self.job_dir(job_id) / "job.log"

    @property
    def connectors_dir(self) -> Path:
        return self.connectors_root or self.state_dir / "connectors"
