"""python -m dev.receivers: record Slack webhook, PagerDuty Events v2 and SMTP traffic until stopped."""

from __future__ import annotations

import os
import signal
import sys
import threading

from dev.receivers.server import Receivers


def main() -> int:
    host = os.environ.get("RECEIVERS_HOST", "127.0.0.1")
    http_port = int(os.environ.get("RECEIVERS_HTTP_PORT", "8025"))
    smtp_port = int(os.environ.get("RECEIVERS_SMTP_PORT", "8026"))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with Receivers(host, http_port, smtp_port) as receivers:
        print(
            f"receivers: HTTP {receivers.http_url} (Slack /slack/..., PagerDuty /v2/enqueue, GET|DELETE "
            f"/recorded), SMTP {host}:{receivers.smtp_port}",
            flush=True,
        )
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
