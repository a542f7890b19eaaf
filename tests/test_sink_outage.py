"""A real ClickHouse outage: a throwaway server (deploy/stack.sh clickhouse-up with its own stack dir and
ports, never the shared one) is stopped for more than 30 s while a feeder keeps calling store() with
numbered batches, then restarted. Every row must end up stored exactly once, store() must block meanwhile,
and the backpressure gauge must go 1 then 0."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from decimal import Decimal

import pytest
from clickhouse_driver import Client
from prometheus_client import REGISTRY

from copulse.settings import Settings
from sinks.clickhouse import ClickHouseSink
from streams.batch import RawEvent, Reject, SinkBatch
from sinks.migrations import migrate
from streams.kpis import kpi_row
from streams.events import Event

pytestmark = [pytest.mark.slow, pytest.mark.integration]

UTC = dt.timezone.utc
T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
OUTAGE_SECONDS = 32
KPI_PER_BATCH, EVENTS_PER_BATCH, REJECTS_PER_BATCH = 40, 30, 3




def batch(number: int) -> SinkBatch:
    """Batch `number`: KPI partials, events and rejects whose ids carry the batch number."""
    kpi_rows = [
        kpi_row(**
            dict(granularity_seconds=60, window_start=T0, window_end=T0 + dt.timedelta(minutes=1),
                 slice="product_id", product_id=f"b{number}-k{j}", partition=j % 6, version=1, is_final=1,
                 events=number * 1000 + j, active_consumers=1, orders=1, revenue_minor=number * 100 + j)
        )
        for j in range(KPI_PER_BATCH)
    ]
    events = []
    for j in range(EVENTS_PER_BATCH):
        when = T0 + dt.timedelta(seconds=number, milliseconds=j)
        events.append(
            Event(type="purchase", event_id=f"b{number}-e{j}", consumer_id=f"c{j}",
                  occurred_ms=int(when.timestamp() * 1000), channel="web", region="eu", segment=None,
                  product_id="p1", category="audio", schema_id=1,
                  record={"order_id": f"o{number}-{j}", "quantity": 1, "amount": Decimal("1.50"), "currency": "EUR",
                          "schema_version": 1})
        )
    rejects = [
        Reject("dlq", "schema_unknown", "copulse.purchases", 0, number * 100 + j, None, 10, int(T0.timestamp()) * 1000)
        for j in range(REJECTS_PER_BATCH)
    ]
    return SinkBatch(kpi_rows=kpi_rows, events=[RawEvent(e, 0, number * 100 + j) for j, e in enumerate(events)],
                     rejects=rejects)


def gauge(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_store_survives_a_real_clickhouse_outage(throwaway_clickhouse, caplog):
    server = throwaway_clickhouse
    settings = Settings(clickhouse_url=f"clickhouse://default@127.0.0.1:{server.port}/copulse",
                        sink_retry_max_seconds=2.0)
    migrate(settings)
    caplog.set_level(logging.INFO, logger="sinks.clickhouse")

    stored: list[tuple[int, float]] = []  # (batch number, monotonic time store() returned)
    failures: list[BaseException] = []
    stop = threading.Event()
    gauge_samples: list[float] = []

    def feeder():
        sink = ClickHouseSink(settings)
        number = 0
        try:
            while not stop.is_set():
                sink.store(batch(number))
                stored.append((number, time.monotonic()))
                number += 1
                time.sleep(0.1)
        except BaseException as exc:  # asserted below
            failures.append(exc)
        finally:
            sink.close()

    def sampler():
        while not stop.is_set():
            value = gauge("copulse_sink_backpressure")
            if not gauge_samples or gauge_samples[-1] != value:
                gauge_samples.append(value)
            time.sleep(0.02)

    threads = [threading.Thread(target=feeder), threading.Thread(target=sampler)]
    for t in threads:
        t.start()
    try:
        _wait(lambda: len(stored) >= 5, 30, "the feeder did not store 5 batches before the outage")
        server.down()
        down_at = time.monotonic()
        time.sleep(3)
        blocked_at = len(stored)
        assert gauge("copulse_sink_backpressure") == 1
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_at)))
        assert len(stored) == blocked_at, "store() returned while ClickHouse was down"
        assert not failures, failures
        server.up()
        _wait(lambda: len(stored) >= blocked_at + 5, 60, "the feeder did not resume after the restart")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not failures, failures
    assert gauge("copulse_sink_backpressure") == 0
    assert gauge_samples[0] == 0 and 1 in gauge_samples and gauge_samples[-1] == 0
    # the batch in flight during the outage returned only after the restart, >= 30 s later
    resumed = [t for n, t in stored if n == blocked_at][0]
    assert resumed - down_at >= 30

    lines = [r.getMessage() for r in caplog.records if r.name == "sinks.clickhouse" and r.levelno >= logging.INFO]
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"ClickHouse unavailable at 127.0.0.1:{server.port} (")
    assert lines[0].endswith("retrying, consumption paused")
    seconds = float(lines[1].split("ClickHouse back after ")[1].split(" s;")[0])
    assert seconds >= 29, lines[1]
    assert lines[1].endswith(f"{KPI_PER_BATCH + EVENTS_PER_BATCH + REJECTS_PER_BATCH} rows stored")

    n = len(stored)
    assert [number for number, _ in stored] == list(range(n))
    client = Client(host="127.0.0.1", port=server.port, database="copulse")
    try:
        per_key = client.execute("SELECT product_id, partials, events, revenue FROM kpi_final ORDER BY product_id")
        expected = sorted(
            (f"b{b}-k{j}", 1, b * 1000 + j, Decimal(b * 100 + j) / 100) for b in range(n) for j in range(KPI_PER_BATCH)
        )
        assert per_key == expected  # every KPI row exactly once, values intact
        assert client.execute("SELECT count(), uniqExact(event_id) FROM purchases FINAL") == [
            (n * EVENTS_PER_BATCH, n * EVENTS_PER_BATCH)
        ]
        assert client.execute("SELECT sum(messages) FROM dead_letter_summary") == [(n * REJECTS_PER_BATCH,)]
    finally:
        client.disconnect()


def _wait(condition, seconds: float, message: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(0.1)
