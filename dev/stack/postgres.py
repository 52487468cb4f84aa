"""Embedded Postgres from the `pgserver` wheel's binaries, run as an unprivileged user."""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from dev.stack import procs
from dev.stack.config import LOCAL, Postgres

DATA = LOCAL / "pg" / "data"
DATABASES = ("airflow", "warehouse", "airbyte")
UNPRIVILEGED = "nobody"


def bin_dir() -> Path:
    spec = importlib.util.find_spec("pgserver")
    if spec is None or spec.origin is None:
        raise procs.StackError("pgserver is not installed in .venv; run `make install`")
    return Path(spec.origin).parent / "pginstall" / "bin"


def _run_as() -> dict[str, object]:
    """Postgres refuses to run as root: drop to `nobody` when we are root."""
    if os.geteuid() != 0:
        return {}
    user = pwd.getpwnam(UNPRIVILEGED)
    return {"user": user.pw_uid, "group": user.pw_gid}


def _chown_tree(path: Path) -> None:
    ids = _run_as()
    if not ids:
        return
    if path.is_file():
        os.chown(path, ids["user"], ids["group"])
        return
    for root, dirs, files in os.walk(path):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            os.chown(name, ids["user"], ids["group"])


def _check_reachable_by_postgres_user(path: Path) -> None:
    ids = _run_as()
    if not ids:
        return
    probe = subprocess.run(["test", "-x", str(path)], **ids, check=False)
    if probe.returncode != 0:
        raise procs.StackError(
            f"Postgres runs as user '{UNPRIVILEGED}' (it refuses root) and cannot reach {path}. "
            "Clone the repository somewhere all users can read (not under /root), or set STACK_PG_URL "
            "to an existing Postgres server."
        )


def initdb(pg: Postgres) -> bool:
    """Create the cluster on first use; True if it was created now."""
    if (DATA / "PG_VERSION").exists():
        return False
    DATA.mkdir(parents=True, exist_ok=True)
    _chown_tree(DATA.parent)
    _check_reachable_by_postgres_user(DATA)
    with tempfile.NamedTemporaryFile("w", dir=DATA.parent, delete=False) as pwfile:
        pwfile.write(pg.password)
    _chown_tree(Path(pwfile.name))
    try:
        subprocess.run(
            [
                str(bin_dir() / "initdb"),
                "-D",
                str(DATA),
                "-U",
                pg.user,
                f"--pwfile={pwfile.name}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
            ],
            check=True,
            capture_output=True,
            text=True,
            **_run_as(),
        )
    except subprocess.CalledProcessError as err:
        shutil.rmtree(DATA, ignore_errors=True)
        raise procs.StackError(f"initdb failed:\n{err.stderr}") from None
    finally:
        os.unlink(pwfile.name)
    return True


def running() -> int | None:
    """The postmaster's pid if our cluster is running."""
    pidfile = DATA / "postmaster.pid"
    if not pidfile.exists():
        return None
    first = pidfile.read_text().split("\n", 1)[0].strip()
    pid = int(first) if first.isdigit() else None
    if pid and procs.is_alive(pid):
        return pid
    print(f"  postgres: stale {pidfile} (pid {first} is not running)")
    return None


def start(pg: Postgres, env: dict[str, str]) -> None:
    if running():
        return
    procs.require_free_port(pg.port, "Postgres", "STACK_PG_PORT")
    log = procs.log_file("postgres")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.touch()
    _chown_tree(log)
    cmd = [
        str(bin_dir() / "pg_ctl"),
        "-D",
        str(DATA),
        "-l",
        str(log),
        "-w",
        "-t",
        "60",
        "-o",
        f"-p {pg.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c max_connections=200",
        "start",
    ]
    # The default ports lie in Linux's ephemeral range: a client's outgoing connection can hold the
    # port for a moment after the free-port check. Postgres then logs "Address already in use": retry.
    for attempt in range(5):
        logged = log.stat().st_size
        result = subprocess.run(
            cmd, env={**env, procs.MARKER: str(LOCAL)}, capture_output=True, text=True, **_run_as()
        )
        if result.returncode == 0:
            return
        with log.open(errors="replace") as f:
            f.seek(logged)
            logged_now = f.read()
        busy = "Address already in use" in logged_now
        if not busy or attempt == 4:
            break
        time.sleep(3)
    # The log's own lines name the cause (a test's stack home may be gone by the time anyone looks).
    tail = "\n".join(logged_now.strip().splitlines()[-15:])
    raise procs.StackError(
        f"Postgres did not start:\n{result.stdout}{result.stderr}\n{log} ends with:\n{tail}"
    )


def stop() -> bool:
    if not running():
        return False
    subprocess.run(
        [str(bin_dir() / "pg_ctl"), "-D", str(DATA), "-m", "fast", "-w", "stop"],
        capture_output=True,
        check=False,
        **_run_as(),
    )
    return True


def ensure_databases(pg: Postgres) -> None:
    import psycopg

    deadline = time.monotonic() + 30
    while True:
        try:
            conn = psycopg.connect(pg.url("postgres"), autocommit=True, connect_timeout=3)
            break
        except psycopg.OperationalError as err:
            if time.monotonic() > deadline:
                raise procs.StackError(f"cannot connect to Postgres at {pg.host}:{pg.port}: {err}") from None
            time.sleep(0.5)
    with conn:
        existing = {row[0] for row in conn.execute("select datname from pg_database")}
        for name in DATABASES:
            if name not in existing:
                conn.execute(f'create database "{name}"')


def ping(pg: Postgres) -> bool:
    import psycopg

    try:
        with psycopg.connect(pg.url("warehouse"), connect_timeout=2) as conn:
            return conn.execute("select 1").fetchone() == (1,)
    except psycopg.OperationalError:
        return False
