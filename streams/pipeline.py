"""One message from an input topic to state, dead letters and ClickHouse rows.

Steps per message (each a plain call): skip re-deliveries -> decode and validate -> fold into the
partition's window engine -> route dead letters and late events. Every ``flush`` then stores the emitted
KPI rows, raw events and rejects in ClickHouse (blocking with retries: that is the backpressure), writes the
engine's changelog records, flushes the producer, and only then acks the messages so Faust commits them.

Errors split two ways: ``DeadLetter`` (bad data: forwarded to the DLQ, counted, never raised) and
``RetryableError`` (a dependency is down: retried with backoff, the partition waits).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from copulse.settings import Settings
from sinks.clickhouse import SinkBatch
from sinks.rows import Reject
from streams import metrics
from streams.codec import Decoder
from streams.engine import FOLDED, LATE, PartitionEngine
from streams.engine import WINDOW_CLOSED as CLOSED
from streams.kpi_metrics import KpiExporter
from streams.errors import LATE_EVENT, WINDOW_CLOSED, DeadLetter, RetryableError, dead_letter_headers
from streams.validation import decode_event

log = logging.getLogger(__name__)

#: engine outcome of a valid event that is not folded because it is late -> reason on copulse.late
LATE_REASONS = {LATE: LATE_EVENT, CLOSED: WINDOW_CLOSED}


class Pipeline:
    def __init__(self, settings: Settings, *, store: Callable[[SinkBatch], None],
                 send: Callable[..., Any], persist: Callable[[int, str, bytes | None], Any],
                 flush_producer: Callable[[], Any], ack: Callable[[Any], Any],
                 restore_records: Callable[[int], list[tuple[str, bytes]]]) -> None:
        self.settings = settings
        self.decoder = Decoder(settings)
        self.kpi_exporter = KpiExporter(settings)
        self.topic_types = {topic: t for t, topic in settings.source_topics.items()}
        self._store, self._send, self._persist = store, send, persist
        self._flush_producer, self._ack, self._restore_records = flush_producer, ack, restore_records
        self.engines: dict[int, PartitionEngine] = {}
        self._consumed: dict[str, Any] = {}  # topic -> labelled CONSUMED child
        self._processed: dict[tuple[str, str], Any] = {}  # (type, outcome) -> labelled PROCESSED child
        self.lock = asyncio.Lock()
        self._reset_batch()
        self.last_flush = time.time()
        self.last_committed_ms = 0

    def _reset_batch(self) -> None:
        self.pending: list[Any] = []  # Faust events to ack after the next flush
        self.raw: list = []
        self.rejects: list[Reject] = []
        self.max_event_ms = 0

    def engine(self, partition: int) -> PartitionEngine:
        engine = self.engines.get(partition)
        if engine is None:
            engine = self.engines[partition] = PartitionEngine(partition, self.settings)
            engine.restore(self._restore_records(partition))
            log.info("partition %d: state restored (%d open windows, %d consumers)",
                     partition, len(engine.windows), len(engine.consumers))
        return engine

    def drop(self, partitions: set[int]) -> None:
        """Partitions revoked: forget their state and unflushed work; the new owner restores the state
        from the changelog and re-reads the messages that were not committed."""
        for p in partitions:
            self.engines.pop(p, None)
        self.pending = [e for e in self.pending if e.message.partition not in partitions]
        self.raw = [r for r in self.raw if r[1] not in partitions]
        self.rejects = [r for r in self.rejects if r.partition not in partitions]

    # ------------------------------------------------------------------ one message
    async def handle(self, fevent: Any) -> None:
        msg = fevent.message
        topic, partition, offset = msg.topic, msg.partition, msg.offset
        event_type = self.topic_types[topic]
        now = time.time()
        consumed = self._consumed.get(topic)
        if consumed is None:  # labelled children are cached: .labels() costs more than .inc()
            consumed = self._consumed[topic] = metrics.CONSUMED.labels(topic, event_type)
        consumed.inc()
        if msg.timestamp:
            metrics.PROCESSING_LATENCY.observe(max(0.0, now - msg.timestamp))
        engine = self.engines.get(partition) or self.engine(partition)
        if engine.is_replay(event_type, offset):
            metrics.REPLAYED.labels(event_type).inc()
        else:
            try:  # the common case without a coroutine; registry outages go through the retrying _decode
                event = decode_event(self.decoder, self.settings, topic, msg.key, msg.value, int(now * 1000))
            except DeadLetter as dead:
                event = dead
            except RetryableError as exc:
                event = await self._decode(topic, msg.key, msg.value, now, exc)
            if isinstance(event, DeadLetter):
                engine.touch(event_type, offset, now)
                self._reject("dlq", event, topic, partition, offset, msg.key, msg.value, now)
                metrics.DEAD_LETTERED.labels(topic, event.reason).inc()
            else:
                outcome = engine.process(event, offset, now)
                processed = self._processed.get((event_type, outcome))
                if processed is None:
                    processed = self._processed[(event_type, outcome)] = metrics.PROCESSED.labels(event_type, outcome)
                processed.inc()
                if outcome == FOLDED:
                    self.raw.append((event, partition, offset))
                    self.max_event_ms = max(self.max_event_ms, event.occurred_ms)
                elif outcome in LATE_REASONS:  # valid, kept raw, not folded into any window
                    self.raw.append((event, partition, offset))
                    reason = DeadLetter(LATE_REASONS[outcome],
                                        f"event time {event.record['occurred_at'].isoformat()} is behind the "
                                        f"watermark of partition {partition}; its window is closed")
                    self._reject("late", reason, topic, partition, offset, msg.key, msg.value, now)
                    metrics.LATE.labels(event_type, reason.reason).inc()
        self.pending.append(fevent)
        metrics.PENDING.set(len(self.pending))
        if len(self.pending) >= self.settings.sink_batch_rows or now - self.last_flush >= self.settings.sink_flush_seconds:
            await self.flush()

    async def _decode(self, topic: str, key: bytes | None, value: bytes, now: float,
                      error: RetryableError | None = None):
        """decode_event, retried with backoff while it raises RetryableError (``error``: the first attempt's)."""
        delay = 0.5
        while True:
            if error is not None:
                log.warning("%s; retrying in %.1f s", error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.sink_retry_max_seconds)
            try:
                return decode_event(self.decoder, self.settings, topic, key, value, int(now * 1000))
            except DeadLetter as dead:
                return dead
            except RetryableError as exc:
                error = exc

    def _reject(self, kind: str, dead: DeadLetter, topic: str, partition: int, offset: int,
                key: bytes | None, value: bytes | None, now: float) -> None:
        target = self.settings.topic_dlq if kind == "dlq" else self.settings.topic_late
        headers = dead_letter_headers(dead.reason, dead.detail, topic, partition, offset, int(now * 1000))
        self._send(target, key, value, headers)
        self.rejects.append(Reject(kind=kind, reason=dead.reason, topic=topic, partition=partition, offset=offset,
                                   key=key, value_size=len(value or b""), rejected_ms=int(now * 1000)))

    # ------------------------------------------------------------------ flush
    async def flush(self) -> None:
        async with self.lock:
            now = time.time()
            pending, raw, rejects, max_event_ms = self.pending, self.raw, self.rejects, self.max_event_ms
            self._reset_batch()
            rows: list[tuple] = []
            records: list[tuple[int, list]] = []
            for p, engine in self.engines.items():
                r, rec = engine.flush(now)
                rows += r
                records.append((p, rec))
            batch = SinkBatch(kpi_rows=rows, events=[r[0] for r in raw], rejects=rejects,
                              event_positions=[(r[1], r[2]) for r in raw])
            if rows or raw or rejects:
                await asyncio.to_thread(self._store, batch)
                if rows:
                    metrics.EMIT_TO_STORE.observe(time.time() - now)
            for p, recs in records:
                for key, value in recs:
                    self._persist(p, key, value)
            await self._flush_producer()
            for fevent in pending:
                await self._ack(fevent)
            self.last_flush = time.time()
            self._observe(rows, max_event_ms, pending)

    def _observe(self, rows: list[tuple], max_event_ms: int, pending: list) -> None:
        self.kpi_exporter.observe(rows)
        metrics.FLUSHES.inc()
        metrics.PENDING.set(len(self.pending))
        if max_event_ms > self.last_committed_ms:
            self.last_committed_ms = max_event_ms
            metrics.LAST_COMMITTED_EVENT.set(max_event_ms / 1000)
        final_at = len(rows[0]) - 2 if rows else 0
        for row in rows:
            metrics.ROWS_EMITTED.labels(str(bool(row[final_at])).lower()).inc()
            if row[final_at]:
                metrics.WINDOWS_CLOSED.labels(str(row[0])).inc()
        now = time.time()
        open_by_g: dict[int, int] = {g: 0 for g in self.settings.granularity_seconds}
        for p, engine in self.engines.items():
            for g, n in engine.open_windows().items():
                open_by_g[g] = open_by_g.get(g, 0) + n
            for t, wm in engine.watermarks().items():
                metrics.WATERMARK.labels(t, str(p)).set(wm / 1000)
                metrics.WATERMARK_LAG.labels(t, str(p)).set(max(0.0, now - wm / 1000))
        for g, n in open_by_g.items():
            metrics.WINDOWS_OPEN.labels(str(g)).set(n)
