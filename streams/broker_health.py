"""Kafka outages in one warning and one recovery line, instead of a flood of client errors.

While the brokers are unreachable, aiokafka (ours and Faust's) retries on its own and logs every failed
attempt. ``BrokerHealth`` is a logging filter on the worker's handlers: the first connection-level error
turns into one WARNING ("Kafka at ... unavailable"), the metric ``copulse_kafka_up`` drops to 0 and further
connection errors are swallowed. The source consumer probes the cluster with backoff while it is down
(``probe_due`` / ``recovered``); the first answer logs one line ("Kafka back after N s") and sets the
metric back to 1. Other errors pass through untouched.
"""

from __future__ import annotations

import logging
import threading
import time

from streams import metrics

log = logging.getLogger(__name__)

#: loggers of the Kafka clients whose connection errors mean "broker unreachable"
CLIENT_LOGGERS = ("aiokafka", "kafka", "faust.transport", "faust.tables", "faust.app", "mode")
#: fragments of their messages that are about reaching the brokers (not about data)
CONNECTION_SIGNS = (
    "connect", "nodenotready", "requesttimedout", "kafkatimeouterror", "errno 111", "unable to request metadata",
    "unable to update metadata",
)


class BrokerHealth(logging.Filter):
    def __init__(self, bootstrap: str, max_backoff: float = 10.0) -> None:
        super().__init__()
        self.bootstrap = bootstrap
        self.max_backoff = max_backoff
        self.down_since: float | None = None
        self.suppressed = 0
        self._next_probe = 0.0
        self._backoff = 0.5
        self._lock = threading.Lock()  # Faust's consumer logs from its own thread
        metrics.KAFKA_UP.set(1)

    @property
    def is_down(self) -> bool:
        return self.down_since is not None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(CLIENT_LOGGERS):
            return True
        text = record.getMessage().lower()
        if record.exc_info and record.exc_info[1] is not None:
            text += " " + type(record.exc_info[1]).__name__.lower() + " " + str(record.exc_info[1]).lower()
        if not any(sign in text for sign in CONNECTION_SIGNS):
            return True
        self.went_down(record.getMessage())
        return False

    def went_down(self, reason: str) -> None:
        with self._lock:
            if self.down_since is not None:
                self.suppressed += 1
                return
            self.down_since = time.monotonic()
            self.suppressed = 0
            self._backoff = 0.5
            self._next_probe = self.down_since + self._backoff
        metrics.KAFKA_UP.set(0)
        metrics.KAFKA_OUTAGES.inc()
        log.warning("Kafka at %s unavailable (%s); the clients retry with backoff, results wait until it is back",
                    self.bootstrap, reason[:200])

    def probe_due(self) -> bool:
        return self.down_since is not None and time.monotonic() >= self._next_probe

    def probe_failed(self) -> None:
        self._backoff = min(self._backoff * 2, self.max_backoff)
        self._next_probe = time.monotonic() + self._backoff

    def recovered(self) -> None:
        with self._lock:
            if self.down_since is None:
                return
            down_for, self.down_since = time.monotonic() - self.down_since, None
        log.info("Kafka back after %.1f s (%d client errors suppressed meanwhile)", down_for, self.suppressed)
        metrics.KAFKA_UP.set(1)

    def install(self) -> None:
        """Filter every handler of the root logger (Faust's and copulse's log lines go there)."""
        for handler in logging.getLogger().handlers:
            handler.addFilter(self)
