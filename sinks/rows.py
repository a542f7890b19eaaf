"""Python values -> ClickHouse rows: decoded events, rejects and KPI partial rows.

Every function returns a tuple in the column order of its ``*_COLUMNS`` constant, which is the column list
of the INSERT (and matches the migrations in schemas/clickhouse, checked by tests/test_migrations.py).
DateTime columns are sent as integer epoch seconds (UTC), so no time zone is ever guessed on the wire.
"""

from __future__ import annotations

import calendar
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from streams.events import Event
from streams.kpis import COUNTERS, KEY_COLUMNS, ROW_COLUMNS

#: event type -> raw table
EVENT_TABLES: dict[str, str] = {"purchase": "purchases", "usage": "usage_events", "feedback": "feedback"}

_COMMON_HEAD = (
    "event_id",
    "consumer_id",
    "occurred_at",
    "occurred_ms",
    "channel",
    "region",
    "segment",
    "product_id",
    "category",
)
_COMMON_TAIL = ("schema_version", "schema_id", "source_partition", "source_offset", "ingested_at")

#: type-specific record fields of each event type, in column order
EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    "purchase": ("order_id", "quantity", "amount", "currency"),
    "usage": ("session_id", "action", "feature", "duration_ms", "co_creation", "app_version"),
    "feedback": ("kind", "score", "text", "in_reply_to"),
}

#: raw table -> its INSERT columns
EVENT_COLUMNS: dict[str, tuple[str, ...]] = {
    EVENT_TABLES[t]: _COMMON_HEAD + fields + _COMMON_TAIL for t, fields in EVENT_FIELDS.items()
}

REJECT_COLUMNS: tuple[str, ...] = (
    "kind",
    "reason",
    "topic",
    "partition",
    "offset",
    "key",
    "value_size",
    "rejected_at",
    "rejected_ms",
)

KPI_COLUMNS: tuple[str, ...] = ROW_COLUMNS
_KPI_DATETIME_INDEXES = tuple(i for i, c in enumerate(ROW_COLUMNS) if c in ("window_start", "window_end", "emitted_at"))

_DIMENSIONS = tuple(c for c in KEY_COLUMNS if c not in ("granularity_seconds", "window_start", "slice", "partition"))

#: Reject kinds
REJECT_KINDS = ("dlq", "late")

_CENT = Decimal("0.01")


@dataclass(slots=True)
class Reject:
    """One dead-lettered ('dlq') or late ('late') message, identified by where it was read from."""

    kind: str  # 'dlq' | 'late'
    reason: str  # short machine-readable reason, e.g. 'schema_unknown', 'currency', 'late'
    topic: str  # source topic of the rejected message
    partition: int
    offset: int
    key: bytes | None  # Kafka message key (None if the message had none)
    value_size: int  # bytes of the message value (0 if none)
    rejected_ms: int  # epoch ms UTC; use the message timestamp where possible so replays are identical


def epoch_seconds(value: datetime | int | float) -> int:
    """A DateTime value for ClickHouse: aware datetimes in any zone, naive datetimes taken as UTC, or
    epoch seconds (int/float, floored)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return calendar.timegm(value.timetuple())
        return calendar.timegm(value.utctimetuple())
    if isinstance(value, bool):
        raise TypeError(f"not a timestamp: {value!r}")
    if isinstance(value, (int, float)):
        return int(value // 1)
    raise TypeError(f"not a timestamp: {value!r} ({type(value).__name__})")


def kpi_row(row: tuple) -> tuple:
    """A KPI partial in ROW_COLUMNS order with its DateTime values normalised to epoch seconds."""
    if len(row) != len(KPI_COLUMNS):
        raise ValueError(f"KPI row has {len(row)} values, ROW_COLUMNS has {len(KPI_COLUMNS)}")
    values = list(row)
    for i in _KPI_DATETIME_INDEXES:
        values[i] = epoch_seconds(values[i])
    return tuple(values)


def kpi_row_from_dict(values: Mapping) -> tuple:
    """A ROW_COLUMNS tuple from a mapping: dimensions default to '', counters to 0, is_final to 0 and
    emitted_at to window_end. granularity_seconds, window_start, window_end, slice, partition and version are
    required. Unknown names raise (catches typos)."""
    unknown = set(values) - set(KPI_COLUMNS)
    if unknown:
        raise ValueError(f"not KPI columns: {sorted(unknown)}")
    missing = {"granularity_seconds", "window_start", "window_end", "slice", "partition", "version"} - set(values)
    if missing:
        raise ValueError(f"KPI row needs {sorted(missing)}")
    defaults: dict = {c: "" for c in _DIMENSIONS}
    defaults.update({c: 0 for c in COUNTERS})
    defaults.update(is_final=0, emitted_at=values["window_end"])
    defaults.update(values)
    return tuple(defaults[c] for c in KPI_COLUMNS)


def event_row(event: Event, partition: int, offset: int, ingested_at: int) -> tuple:
    """The raw-table row of a decoded event (columns EVENT_COLUMNS[EVENT_TABLES[event.type]])."""
    record = event.record
    specific = []
    for name in EVENT_FIELDS[event.type]:
        value = record.get(name)
        if name == "co_creation":
            value = 1 if value else 0
        elif name == "amount" and value is not None and not isinstance(value, Decimal):
            value = Decimal(str(value)).quantize(_CENT)
        specific.append(value)
    return (
        event.event_id,
        event.consumer_id,
        event.occurred_ms // 1000,
        event.occurred_ms,
        event.channel,
        event.region,
        event.segment,
        event.product_id,
        event.category,
        *specific,
        int(record.get("schema_version") or 1),
        event.schema_id,
        partition,
        offset,
        ingested_at,
    )


def reject_row(reject: Reject) -> tuple:
    if reject.kind not in REJECT_KINDS:
        raise ValueError(f"reject kind must be one of {REJECT_KINDS}, got {reject.kind!r}")
    key = None if reject.key is None else bytes(reject.key).decode("utf-8", errors="backslashreplace")
    return (
        reject.kind,
        reject.reason,
        reject.topic,
        reject.partition,
        reject.offset,
        key,
        reject.value_size,
        reject.rejected_ms // 1000,
        reject.rejected_ms,
    )
