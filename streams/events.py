"""A decoded, validated event: what every pipeline step after decoding works with."""

from __future__ import annotations

from dataclasses import dataclass, field

#: every input event type, one input topic each. Append only: the engine's source keys are positions here.
EVENT_TYPES = ("purchase", "usage", "feedback", "response")
#: what consumers do: the consumer-activity KPIs (active consumers, orders, ...)
ACTIVITY_TYPES = ("purchase", "usage", "feedback")
#: what the enterprise does about it (responses, idea status changes, closed cases): folded into the enterprise
#: counters of their own window (streams/kpis.py), never into the consumer-activity KPIs
ENTERPRISE_TYPES = tuple(t for t in EVENT_TYPES if t not in ACTIVITY_TYPES)


@dataclass(slots=True)
class Event:
    type: str  # one of EVENT_TYPES
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
