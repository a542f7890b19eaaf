"""What the worker hands to a sink at every flush: one ``SinkBatch`` of named items.

The worker owns these types and ``sinks/`` implements ``Sink.store`` for them, so types flow one way:
streams -> sinks, never back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from streams.events import Event
from streams.kpis import KpiRow


class RawEvent(NamedTuple):
    """A valid event (folded or late) with where it was read from: one row of its raw table."""

    event: Event
    partition: int  # source partition
    offset: int  # source offset


@dataclass(slots=True)
class Reject:
    """One dead-lettered ('dlq') or late ('late') message, identified by where it was read from."""

    kind: str  # 'dlq' | 'late'
    reason: str  # short machine-readable reason, e.g. 'schema_unknown', 'currency', 'late_event'
    topic: str  # source topic of the rejected message
    partition: int
    offset: int
    key: bytes | None  # Kafka message key (None if the message had none)
    value_size: int  # bytes of the message value (0 if none)
    rejected_ms: int  # epoch ms UTC


@dataclass(slots=True)
class SinkBatch:
    """Everything one flush stores: KPI partials, raw events and rejects."""

    kpi_rows: list[KpiRow] = field(default_factory=list)
    events: list[RawEvent] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.kpi_rows) + len(self.events) + len(self.rejects)


class Sink(Protocol):
    def store(self, batch: SinkBatch) -> None:
        """Store the whole batch; return only when it is stored (blocking is the backpressure). Storing the
        same batch again must be harmless: after a crash the worker replays what it had not persisted."""
