"""Refused requests: counted by reason in switchboard_control_refused_total, logged sparingly.

A flood of oversized or over-deep requests must not become a flood of log lines: each reason
logs at most once per LOG_EVERY_S, saying how many were refused since its last line.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from . import metrics

log = logging.getLogger(__name__)
LOG_EVERY_S = 10.0
_last_logged: dict[str, float] = {}
_unlogged: dict[str, int] = {}


def count(reason: str, message: str, **extra: Any) -> None:
    """One refused request: counted, and logged unless this reason logged within LOG_EVERY_S."""
    metrics.REFUSED.labels(reason).inc()
    now = time.monotonic()
    if now - _last_logged.get(reason, -LOG_EVERY_S) < LOG_EVERY_S:
        _unlogged[reason] = _unlogged.get(reason, 0) + 1
        return
    _last_logged[reason] = now
    log.warning(message, extra={"reason": reason, "refused_since_last_line": _unlogged.pop(reason, 0), **extra})
