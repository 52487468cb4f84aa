"""Airflow's [core] hostname_callable for containers on the host network.

Containers with host networking share the host's name; AIRFLOW_HOSTNAME tells Airflow which
container (worker) ran a task, as recorded in each task instance's `hostname`.
"""

from __future__ import annotations

import os
import socket


def get() -> str:
    return os.environ.get("AIRFLOW_HOSTNAME") or socket.getfqdn()
