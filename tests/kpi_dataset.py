"""The generated KPI dataset several tests read on both ClickHouse releases (tests/test_dashboards.py,
tests/test_read_side.py): 6000 generated events (3% invalid, 2% duplicates, 1% late, out of order) over three
hours, decoded, validated and folded by the real engine (streams.engine.PartitionEngine, three partitions, fake
clock) into the sink batches the worker would store, then stored by the real sink.
"""

from __future__ import annotations

import contextlib
import time
import zlib
from collections import defaultdict
from datetime import UTC, datetime

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)  # first generated event
HOURS = 3
#: the worker configuration the dataset is generated with (1m and 1h windows, quick closing)
DATASET_SETTINGS = dict(granularities=["1m", "1h"], allowed_lateness_seconds=30, idle_timeout_seconds=5,
                        emit_interval_seconds=60)


def generate(settings) -> tuple[list, dict]:
    """Generated events -> decode/validate -> PartitionEngine per partition (fake clock): the sink batches the
    worker would store, and counts of what happened to the events."""
    from copulse.generator import generate_events
    from streams.batch import RawEvent, Reject, SinkBatch
    from streams.codec import Decoder
    from streams.engine import Outcome, PartitionEngine
    from streams.errors import DeadLetter
    from streams.validation import decode_event

    partitions = 3
    count = 6000
    messages = generate_events(settings, count=count, seed=3, consumers=400, start_ms=int(T0.timestamp() * 1000),
                               event_time_rate=count / (HOURS * 3600), invalid_fraction=0.03,
                               duplicate_fraction=0.02, late_fraction=0.01, out_of_order_s=5)
    decoder = Decoder(settings)
    engines = {p: PartitionEngine(p, settings) for p in range(partitions)}
    offsets: dict[tuple[str, int], int] = defaultdict(int)
    batches: list[SinkBatch] = []
    batch = SinkBatch()
    stats: dict[str, int] = defaultdict(int)
    clock = 0.0
    wall_ms = int(time.time() * 1000)

    def flush(now: float) -> None:
        nonlocal batch
        for engine in engines.values():
            rows, _ = engine.flush(now)
            batch.kpi_rows += rows
        batches.append(batch)
        stats["kpi_rows"] += len(batch.kpi_rows)
        batch = SinkBatch()

    for i, msg in enumerate(messages):
        partition = zlib.crc32(msg.key) % partitions if msg.key else 0
        offset = offsets[(msg.topic, partition)]
        offsets[(msg.topic, partition)] += 1
        event_ms = msg.event.get("occurred_ms") if isinstance(msg.event, dict) else None
        clock = max(clock, (event_ms or 0) / 1000 + 2)
        try:
            event = decode_event(decoder, settings, msg.topic, msg.key, msg.value, wall_ms)
        except DeadLetter as dead:
            engines[partition].skip(msg.type if msg.type in ("purchase", "usage", "feedback") else "feedback",
                                     offset, clock)
            batch.rejects.append(Reject("dlq", dead.reason, msg.topic, partition, offset, msg.key, len(msg.value),
                                        int(clock * 1000)))
            stats["dlq"] += 1
            continue
        clock = max(clock, event.occurred_ms / 1000 + 2)
        outcome = engines[partition].process(event, offset, clock)
        stats[outcome] += 1
        if outcome == Outcome.FOLDED:
            batch.events.append(RawEvent(event, partition, offset))
        elif outcome not in (Outcome.DUPLICATE, Outcome.REPLAYED):
            batch.events.append(RawEvent(event, partition, offset))
            batch.rejects.append(Reject("late", "late_event" if outcome == "late" else outcome, msg.topic, partition,
                                        offset, msg.key, len(msg.value), int(clock * 1000)))
        if i % 400 == 399:
            flush(clock)
    flush(clock)
    flush(clock + settings.idle_timeout_seconds + 2 * 3600)  # every source idle: all windows close
    return batches, dict(stats)


def populate(settings, batches: list, client=None) -> None:
    """Migrate the database of ``settings`` and store the batches through the real sink (``client``: the
    embedded current ClickHouse; None: the server of ``settings``)."""
    from sinks.clickhouse import ClickHouseSink
    from sinks.migrations import migrate

    migrate(settings, client=client)
    with ClickHouseSink(settings, client=client) as sink:
        for batch in batches:
            sink.store(batch)


def generate_batches() -> list:
    """The sink batches of the dataset (checked to hold dead letters and enough folded events)."""
    from copulse.settings import Settings

    batches, stats = generate(Settings(**DATASET_SETTINGS))
    assert stats["dlq"] > 0 and stats["folded"] > 1000, stats
    return batches


@contextlib.contextmanager
def stored_on_legacy(clickhouse_settings: dict, batches: list, prefix: str):
    """``(settings, admin client)`` of a fresh database of ClickHouse 18.16 (the local server) holding the
    dataset; dropped afterwards."""
    from urllib.parse import quote

    from clickhouse_driver import Client
    from pydantic import SecretStr

    from copulse.settings import Settings
    from tests.conftest import unique_name

    ch = clickhouse_settings
    database = unique_name(prefix)
    settings = Settings(clickhouse_url=f"clickhouse://{quote(ch['user'], safe='')}@{ch['host']}:{ch['port']}/{database}",
                        clickhouse_password=SecretStr(ch["password"]), **DATASET_SETTINGS)
    admin = Client(**{**ch, "database": "default"})
    try:
        populate(settings, batches)
        yield settings, admin
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS `{database}`")
        admin.disconnect()


@contextlib.contextmanager
def stored_on_current(batches: list, prefix: str):
    """``(settings, client)`` of a fresh database of the current release (embedded chDB, modern migration
    variant) holding the dataset; dropped afterwards."""
    from tests.current_clickhouse import migrated_database

    with migrated_database(prefix, **DATASET_SETTINGS) as (client, settings):
        populate(settings, batches, client)
        yield settings, client
