"""Background processes tracked by pid files, with clear messages for the usual trouble."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from dev.stack.config import LOCAL, LOG_DIR, MARKER, RUN_DIR


class StackError(SystemExit):
    """A problem the user can act on; printed without a traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(f"stack: {message}")


def pid_file(name: str) -> Path:
    return RUN_DIR / f"{name}.pid"


def log_file(name: str) -> Path:
    return LOG_DIR / f"{name}.log"


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def start_time(pid: int) -> str:
    """The kernel's start time of a process: with the pid, it identifies the process for sure."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def is_ours(pid: int) -> bool:
    """True if the process was started by this stack.

    The environment marker is checked first; Airflow and Postgres overwrite their
    /proc environ when they set a process title, so a process working in this stack's
    home (services run there, Postgres in its data directory under it) counts too.
    """
    proc = Path(f"/proc/{pid}")
    try:
        if f"{MARKER}={LOCAL}".encode() in (proc / "environ").read_bytes().split(b"\0"):
            return True
        cwd = os.readlink(proc / "cwd")
        return cwd == str(LOCAL) or cwd.startswith(f"{LOCAL}/")
    except OSError:
        return False


def parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def descends_from(pid: int, ancestors: set[int]) -> bool:
    seen = 0
    while pid > 1 and seen < 64:
        if pid in ancestors:
            return True
        pid, seen = parent(pid), seen + 1
    return False


def orphans(live: set[int]) -> list[int]:
    """Our processes that no live service owns: what a killed service left behind
    (task runners, log servers, connector subprocesses were reparented away from it)."""
    return [pid for pid in stragglers() if not descends_from(pid, live)]


def running_pid(name: str) -> int | None:
    """The pid of a running service, cleaning up (and saying so) a stale pid file."""
    path = pid_file(name)
    if not path.exists():
        return None
    pid_text, _, started = path.read_text().strip().partition(" ")
    pid = int(pid_text) if pid_text.isdigit() else None
    if pid and is_alive(pid) and start_time(pid) == started:
        return pid
    why = "is not running" if not pid or not is_alive(pid) else "is now another program"
    print(f"  {name}: stale pid file {path} (pid {pid_text} {why}); removed it")
    path.unlink()
    return None


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def require_free_port(port: int, service: str, env_var: str) -> None:
    if port_in_use(port):
        raise StackError(
            f"port {port} for {service} is already taken by another program. "
            f"Stop it, or choose another port with {env_var}=<port> (e.g. `{env_var}={port + 1} make up`)."
        )


# The processes this one started, by pid: their exit codes, and no zombies left unreaped.
_children: dict[int, subprocess.Popen[bytes]] = {}


def start(name: str, cmd: Sequence[str], env: dict[str, str], cwd: Path, **popen: object) -> int:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    env = {**env, MARKER: str(LOCAL)}
    with open(log_file(name), "ab") as log:
        proc = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **popen,
        )
    pid_file(name).write_text(f"{proc.pid} {start_time(proc.pid)}")
    _children[proc.pid] = proc
    return proc.pid


def exit_code(pid: int) -> int | None:
    """The exit code of a process this one started, once it has ended; None while it runs, or if
    this process did not start it."""
    child = _children.get(pid)
    return child.poll() if child else None


def stop(name: str, timeout: float = 20) -> bool:
    return bool(stop_all([name], timeout))


def stop_all(names: Sequence[str], timeout: float = 20) -> list[str]:
    """SIGTERM every named service's process group at once, wait up to `timeout` for them all to
    exit, SIGKILL what is left: the services shut down side by side (each takes 1-8 s, more under
    load), not one after another. Returns the names that were running."""
    pids = {name: pid for name in names if (pid := running_pid(name)) is not None}
    for pid in pids.values():
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(is_alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    for name, pid in pids.items():
        if is_alive(pid):
            _signal_group(pid, signal.SIGKILL)
        pid_file(name).unlink(missing_ok=True)
    return list(pids)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def stragglers() -> list[int]:
    """Processes started by this stack that are still alive (any process group); never this
    process or its ancestors (e.g. a shell whose working directory is inside the stack's home)."""
    me, mine = os.getpid(), set()
    while me > 1 and len(mine) < 64:
        mine.add(me)
        me = parent(me)
    pids = (int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit())
    return [pid for pid in pids if pid not in mine and is_ours(pid) and is_alive(pid)]


def kill_stragglers(timeout: float = 10, pids: list[int] | None = None) -> list[int]:
    pids = stragglers() if pids is None else pids
    for pid in pids:
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(is_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids:
        if is_alive(pid):
            _signal_group(pid, signal.SIGKILL)
    return pids


def port_open(port: int) -> Callable[[], bool]:
    return lambda: port_in_use(port)


def log_tail(log: Path | None, lines: int = 15) -> str:
    if not log or not log.exists():
        return ""
    tail = log.read_text(errors="replace").splitlines()[-lines:]
    return f"\n  last lines of {log}:\n    " + "\n    ".join(tail)


def wait_until(
    check: Callable[[], bool],
    what: str,
    timeout: float,
    log: Path | None = None,
    watch: Callable[[], None] | None = None,
) -> None:
    """Poll check() until it holds; watch() runs between polls and may raise (a process died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if watch:
            watch()
        time.sleep(0.5)
    raise StackError(f"{what} did not become healthy within {timeout:.0f}s{log_tail(log)}")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False
