"""What a worker needs before it consumes: ClickHouse migrated, topics created, /metrics served.

A worker restarted during a ClickHouse or Kafka outage waits for it (one log line, up to
COPULSE_STARTUP_WAIT_SECONDS) instead of exiting; every error message says what to do.
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger(__name__)


def prepare(settings) -> str | None:
    """Migrate ClickHouse and create the topics; returns an error message (saying what to do) or None."""
    from clickhouse_driver import errors as ch_errors
    from kafka import errors as kafka_errors

    from sinks.migrations import migrate
    from streams.topics import ensure_topics

    ch = settings.clickhouse
    try:
        migrate(settings)
    except (ch_errors.NetworkError, ch_errors.SocketTimeoutError, OSError) as exc:
        return (f"ClickHouse at {ch['host']}:{ch['port']} is unreachable ({exc}). Start the local stack with "
                "`make up`, or point COPULSE_CLICKHOUSE_URL at a running server.")
    try:
        ensure_topics(settings)
    except (kafka_errors.KafkaError, OSError) as exc:
        return (f"Kafka at {settings.kafka_bootstrap_servers} is unreachable ({exc}). Start the local stack with "
                "`make up`, or set COPULSE_KAFKA_BOOTSTRAP_SERVERS.")
    return None


def prepare_patiently(settings) -> str | None:
    """``prepare``, retried with backoff for up to COPULSE_STARTUP_WAIT_SECONDS."""
    deadline = time.monotonic() + settings.startup_wait_seconds
    delay, waiting = 1.0, None
    while True:
        problem = prepare(settings)
        if problem is None:
            if waiting is not None:
                log.info("dependencies back after %.0f s; starting", time.monotonic() - waiting)
            return None
        if time.monotonic() + delay > deadline:
            return problem
        if waiting is None:
            waiting = time.monotonic()
            log.warning("waiting up to %.0f s (COPULSE_STARTUP_WAIT_SECONDS): %s", settings.startup_wait_seconds, problem)
        time.sleep(delay)
        delay = min(delay * 2, 10.0)


def serve_metrics(settings) -> str | None:
    """Serve /metrics (prometheus-client's default registry); returns an error message or None."""
    from prometheus_client import start_http_server

    try:
        start_http_server(settings.metrics_port, addr=settings.bind_host)
    except OSError as exc:
        return (f"cannot serve metrics on {settings.bind_host}:{settings.metrics_port} ({exc}); "
                "stop the process using that port or set COPULSE_METRICS_PORT.")
    log.info("metrics on http://%s:%d/metrics", settings.bind_host, settings.metrics_port)
    return None


def prepare_or_exit(settings) -> None:
    """Everything above, in order, for ``copulse worker`` and ``faust -A streams.app worker`` alike: the first
    problem ends the process (exit 1) with its message, which says what to do."""
    # kafka-python (topic set-up) logs every connection step at INFO: keep its warnings only. clickhouse-driver
    # logs a traceback per failed connection attempt: the start-up wait and the sink say it once each
    logging.getLogger("kafka").setLevel(logging.WARNING)
    logging.getLogger("clickhouse_driver.connection").setLevel(logging.ERROR)
    problem = prepare_patiently(settings) or serve_metrics(settings)
    if problem:
        print(f"copulse worker: {problem}", file=sys.stderr)
        raise SystemExit(1)
