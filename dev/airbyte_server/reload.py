"""Reload include/airbyte/workspace.yaml when it changes, so edits need no server restart.

Called once per API request (app.py). A file that no longer loads keeps the last good
workspace and logs why; the worker processes read the file themselves for every job.
"""

from __future__ import annotations

import logging
import threading

from .context import ServerContext
from .workspace import WorkspaceError, load_workspace

log = logging.getLogger(__name__)
_lock = threading.Lock()
_seen: dict[str, float] = {}


def refresh_workspace(context: ServerContext) -> None:
    path = context.settings.workspace_file
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return
    key = str(path)
    if key not in _seen:
        _seen[key] = mtime  # loaded at start-up
    if _seen[key] == mtime:
        return
    with _lock:
        if _seen[key] == mtime:
            return
        _seen[key] = mtime
        try:
            context.workspace = load_workspace(path)
        except (WorkspaceError, OSError, ValueError) as err:
            log.error("workspace %s changed but does not load, keeping the previous one: %s", path, err)
            return
        log.info("reloaded workspace %s", path)
