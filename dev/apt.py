"""Debian packages the local tools install on demand (redis-server, docker.io, debootstrap)."""

from __future__ import annotations

import os


def apt_install_commands(packages: list[str]) -> list[list[str]]:
    """The commands that install `packages` non-interactively (through sudo unless root)."""
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    # Two installs at once (compose-test in one terminal, `make up` in another): wait for dpkg's lock.
    wait = ["-o", "DPkg::Lock::Timeout=600"]
    return [
        [*sudo, "apt-get", *wait, "update", "-qq"],
        [*sudo, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", *wait, "install", "-y", "-qq", *packages],
    ]
