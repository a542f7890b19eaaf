"""The worker's items -> ClickHouse rows: raw events and rejects (a KpiRow already is one).

Every function returns a tuple in the column order of its ``*_COLUMNS`` constant, which is the column list
of the INSERT (and matches the migrations in schemas/clickhouse, checked by tests/test_migrations.py).
DateTime columns are sent as integer epoch seconds (UTC), so no time zone is ever guessed on the wire.
"""

from __future__ import annotations

from decimal import Decimal

from streams.batch import RawEvent, Reject
from streams.kpis import ROW_COLUMNS

#: event type -> raw table
EVENT_TABLES: dict[str, str] = {"purchase": "purchases", "usage": "usage_events", "feedback": "feedback",
                                "response": "responses"}

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
    "response": ("kind", "in_reply_to", "team", "status", "text"),
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

KPI_COLUMNS: tuple[str, ...] = ROW_COLUMNS  # a KpiRow (streams/kpis.py) is inserted as it is

#: Reject kinds
REJECT_KINDS = ("dlq", "late")

_CENT = Decimal("0.01")


def event_row(raw: RawEvent, ingested_at: int) -> tuple:
    """The raw-table row of a decoded event (columns EVENT_COLUMNS[EVENT_TABLES[event.type]])."""
    event = raw.event
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
        raw.partition,
        raw.offset,
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
