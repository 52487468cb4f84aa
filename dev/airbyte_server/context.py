"""Everything a request handler needs, built once at startup."""

from __future__ import annotations

from dataclasses import dataclass

from .auth import TokenIssuer
from .faults import Faults
from .settings import Settings
from .store import Store, ensure_database
from .supervisor import JobSupervisor
from .workspace import Workspace, load_workspace


@dataclass
class ServerContext:
    settings: Settings
    workspace: Workspace
    store: Store
    faults: Faults
    tokens: TokenIssuer
    supervisor: JobSupervisor

    @classmethod
    def build(cls, settings: Settings) -> ServerContext:
        # Load the workspace first: a bad file or unset variable should fail before anything starts.
        workspace = load_workspace(settings.workspace_file)
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        ensure_database(settings.db_url)
        store = Store(settings.db_url)
        store.create_schema()
        faults = Faults()
        return cls(
            settings=settings,
            workspace=workspace,
            store=store,
            faults=faults,
            tokens=TokenIssuer(settings.client_id, settings.client_secret, settings.token_ttl_seconds),
            supervisor=JobSupervisor(settings, store, faults),
        )
