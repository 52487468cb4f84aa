"""Local stand-ins for the on-call receivers: a Slack incoming webhook, the PagerDuty Events API v2
and an SMTP server. Everything they receive is recorded and served as JSON for tests.

Run as ``python -m dev.receivers`` (ports from RECEIVERS_HTTP_PORT, default 8025, and
RECEIVERS_SMTP_PORT, default 8026), or in-process with :class:`Receivers`.
"""

from dev.receivers.server import Receivers

__all__ = ["Receivers"]
