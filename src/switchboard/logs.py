"""Structured JSON logging for every Switchboard process.

Call-related lines pass `extra={"call_sid": ..., "stream_sid": ...}`; those fields (and any
other extra) appear as top-level JSON keys. Formatting is lazy: arguments are only
interpolated when a line is actually emitted.
"""

from __future__ import annotations

import logging
import sys
import time

import orjson

_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str, instance: str | None = None) -> None:
        super().__init__()
        self._static = {"service": service}
        if instance:
            self._static["instance"] = instance

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **self._static,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def setup(service: str, level: str = "INFO", instance: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service, instance))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # websockets logs every handshake failure with a traceback at ERROR; our handlers log those
    # cases themselves with call ids, so keep the library's own lines for debugging only.
    logging.getLogger("websockets").setLevel(max(logging.WARNING, root.level))
