"""Pipeline metrics of the worker (prometheus-client, default registry, base units, ``copulse_`` prefix).

Counts add up: for every input topic, consumed = processed + dead_lettered (+ replayed after a restart), where
processed counts valid messages by outcome (folded, duplicate, late, window_closed), enterprise events
included. Sink metrics live in sinks/clickhouse.py.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONSUMED = Counter("copulse_events_consumed_total", "Messages read from an input topic", ["topic", "type"])
PROCESSED = Counter(
    "copulse_events_processed_total",
    "Valid messages handled, by outcome: folded into windows, duplicate event_id, late, window_closed, stored (raw only)",
    ["type", "outcome"],
)
DEAD_LETTERED = Counter("copulse_events_dead_lettered_total", "Invalid messages sent to the DLQ", ["topic", "reason"])
LATE = Counter("copulse_events_late_total", "Valid events too late for their window, sent to the late topic", ["type", "reason"])
REPLAYED = Counter("copulse_events_replayed_total", "Re-delivered messages already reflected in restored state", ["type"])
PROCESSING_LATENCY = Histogram(
    "copulse_processing_latency_seconds",
    "Kafka message timestamp to the message being handled by the worker",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
WATERMARK = Gauge("copulse_watermark_timestamp_seconds", "Event-time watermark per source partition", ["type", "partition"])
WATERMARK_LAG = Gauge("copulse_watermark_lag_seconds", "Wall clock minus the watermark per source partition", ["type", "partition"])
WINDOWS_OPEN = Gauge("copulse_windows_open", "Open windows (partition x granularity)", ["granularity"])
WINDOWS_CLOSED = Counter("copulse_windows_closed_total", "Final KPI rows emitted", ["granularity"])
ROWS_EMITTED = Counter("copulse_kpi_rows_emitted_total", "KPI rows emitted", ["final"])
EMIT_TO_STORE = Histogram(
    "copulse_emit_to_store_seconds",
    "From a flush emitting KPI rows to the rows being stored in ClickHouse",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
FLUSHES = Counter("copulse_flushes_total", "Completed flushes (rows stored, state persisted, offsets acked)")
LAST_COMMITTED_EVENT = Gauge(
    "copulse_last_committed_event_timestamp_seconds", "Highest event time among messages acked for commit"
)
PENDING = Gauge("copulse_pending_messages", "Messages handled but not yet acked (waiting for the next flush)")
SEEKS_BACK = Counter("copulse_source_seeks_back_total", "Source partitions sought back because a record arrived past the expected offset")
OFFSET_GAPS = Counter("copulse_source_offset_gaps_total", "Offset gaps confirmed by re-reading (transaction markers, retention)")
RESTORE_SECONDS = Gauge("copulse_state_restore_seconds", "Duration of the last assignment's state restore (changelog read)")
KAFKA_UP = Gauge("copulse_kafka_up", "1 while the worker reaches the Kafka brokers, 0 during an outage")
KAFKA_OUTAGES = Counter("copulse_kafka_outages_total", "Times the worker lost its connection to the Kafka brokers")
