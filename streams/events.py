"""A decoded, validated event: what every pipeline step after decoding works with."""

from __future__ import annotations

from dataclasses import dataclass, field

EVENT_TYPES = ("purchase", "usage", "feedback")


@dataclass(slots=True)
class Event:
    type: str  # 'purchase' | 'usage' | 'feedback'
    event_id: str
    consumer_id: str
    occurred_ms: int  # event time, epoch milliseconds UTC (from the event, never the wall clock)
    channel: str
    region: str
    segment: str | None
    product_id: str
    category: str
    schema_id: int  # writer schema id from the Confluent frame
    #: The full record decoded with the current reader schema. Logical types are decoded:
    #: record["occurred_at"] is an aware UTC datetime, record["amount"] a Decimal (2 places).
    record: dict = field(repr=False)
