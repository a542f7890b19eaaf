"""One message from an input topic to state, dead letters and ClickHouse rows.

Steps per message (each a plain call): skip re-deliveries -> decode and validate -> fold into the
partition's window engine -> route dead letters and late events. Every ``flush`` then stores the emitted
KPI rows, raw events and rejects in ClickHouse (blocking with retries: that is the backpressure), writes the
engines' changelog records, waits for their acknowledgements, and only then commits the source offsets.

Errors split two ways: ``DeadLetter`` (bad data: forwarded to the DLQ, counted, never raised) and
``RetryableError`` (a dependency is down: retried with backoff, the partition waits).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

from aiokafka.errors import KafkaError

from copulse.settings import Settings
from streams.batch import RawEvent, Reject, Sink, SinkBatch
from streams import metrics
from streams.codec import Decoder
from streams import changelog
from streams.engine import SOURCE_KEY, Outcome, PartitionEngine
from streams.kpis import KpiRow
from streams.kpi_metrics import KpiExporter
from streams.errors import LATE_EVENT, WINDOW_CLOSED, DeadLetter, RetryableError, dead_letter_headers
from streams.broker_health import BrokerHealth
from streams.validation import decode_event

log = logging.getLogger(__name__)

#: engine outcome of a valid event that is not folded because it is late -> reason on copulse.late
LATE_REASONS = {Outcome.LATE: LATE_EVENT, Outcome.WINDOW_CLOSED: WINDOW_CLOSED}


class Pipeline:
    """Owns the engines of the partitions this worker holds and the flush protocol.

    The source consumer (streams/source.py) hands it batches of records under ``lock``; the engines decide
    what each record changes. ``flush`` stores, persists and commits. Callbacks (all given by streams/app.py):
    ``sink`` (its blocking ``store``: ClickHouse), ``send`` (dead letters and late events; returns the delivery future),
    ``persist`` (changelog records of one partition; returns their delivery futures), ``commit`` (source
    offsets, for consumer-lag monitoring only: where to resume is decided by the persisted clocks)."""

    def __init__(self, settings: Settings, *, sink: Sink,
                 send: Callable[..., Awaitable[asyncio.Future]],
                 persist: Callable[[int, list[tuple[str, bytes | None]]], Awaitable[list[asyncio.Future]]],
                 commit: Callable[[dict[tuple[str, int], int]], Awaitable[None]],
                 health: BrokerHealth | None = None) -> None:
        self.settings = settings
        self.decoder = Decoder(settings)
        self.kpi_exporter = KpiExporter(settings)
        self.topic_types = {topic: t for t, topic in settings.source_topics.items()}
        self.sink, self._send, self._persist, self._commit = sink, send, persist, commit
        self.health = health
        self.engines: dict[int, PartitionEngine] = {}
        self._consumed: dict[str, Any] = {}  # topic -> labelled CONSUMED child
        self._processed: dict[tuple[str, str], Any] = {}  # (type, outcome) -> labelled PROCESSED child
        self._committed: dict[tuple[str, int], int] = {}  # (type, partition) -> next offset last committed
        self.lock = asyncio.Lock()
        self._reset_batch()
        self.handled = 0  # messages handled since the last flush
        self.last_flush = time.time()  # when the last flush ended
        self.last_flush_start = self.last_flush  # and when it started (its provisional rows' cadence)
        self.last_committed_ms = 0

    def _reset_batch(self) -> None:
        self.raw: list[RawEvent] = []
        self.rejects: list[Reject] = []
        # dead letters / late events sent and not yet acknowledged: (delivery future or None, message)
        self.deliveries: list[tuple[asyncio.Future | None, tuple]] = []
        self.max_event_ms = 0
        self.handled = 0

    # ------------------------------------------------------------------ partitions
    def restore(self, partition: int, records: list[tuple[str, bytes]]) -> PartitionEngine:
        engine = self.engines[partition] = PartitionEngine(partition, self.settings)
        engine.restore(changelog.decode(records, engine.intern))
        log.info("partition %d: state restored (%d open windows, %d consumers)",
                 partition, len(engine.windows), len(engine.consumers))
        return engine

    def adopt(self, partition: int, engine: PartitionEngine) -> None:
        """Take back an engine kept in memory across a rebalance (its changelog is unchanged since)."""
        self.engines[partition] = engine

    def release(self, partitions: set[int]) -> dict[int, PartitionEngine]:
        """Partitions revoked, after a flush: stop handling them; returns their engines (kept by the caller
        in case they come back unchanged)."""
        return {p: self.engines.pop(p) for p in partitions if p in self.engines}

    def next_offset(self, event_type: str, partition: int) -> int | None:
        """The offset this partition's source must continue at: its persisted/applied clock + 1 (None: this
        source partition never delivered anything, start at its beginning)."""
        offset = self.engines[partition].wm.clock(SOURCE_KEY[event_type]).offset
        return offset + 1 if offset >= 0 else None

    def hold_source(self, event_type: str, partition: int, now: float) -> None:
        """This source partition has a backlog: it is not idle (streams/watermarks.py)."""
        self.engines[partition].wm.hold(SOURCE_KEY[event_type], now)

    def pause_idle_timers(self, seconds: float) -> None:
        for engine in self.engines.values():
            engine.wm.pause(seconds)

    # ------------------------------------------------------------------ messages
    async def handle_batch(self, topic: str, partition: int, records: list[Any]) -> None:
        """Handle records of one source partition, in offset order (the caller holds ``lock``)."""
        event_type = self.topic_types[topic]
        engine = self.engines[partition]
        now = time.time()
        now_ms = int(now * 1000)
        consumed = self._consumed.get(topic)
        if consumed is None:  # labelled children are cached: .labels() costs more than .inc()
            consumed = self._consumed[topic] = metrics.CONSUMED.labels(topic, event_type)
        consumed.inc(len(records))
        outcomes: dict[Outcome, int] = {}  # counted per batch, like consumed: a metric update costs more than a fold
        for msg in records:
            offset = msg.offset
            if msg.timestamp:
                metrics.PROCESSING_LATENCY.observe(max(0.0, now - msg.timestamp / 1000))
            if engine.is_replay(event_type, offset):
                metrics.REPLAYED.labels(event_type).inc()
                continue
            try:  # the common case without a coroutine; registry outages go through the retrying _decode
                event = decode_event(self.decoder, self.settings, topic, msg.key, msg.value, now_ms)
            except DeadLetter as dead:
                event = dead
            except RetryableError as exc:
                event = await self._decode(topic, msg.key, msg.value, now, exc)
            if isinstance(event, DeadLetter):
                engine.skip(event_type, offset, now)
                await self._reject("dlq", event, topic, partition, offset, msg.key, msg.value, now)
                metrics.DEAD_LETTERED.labels(topic, event.reason).inc()
                continue
            outcome = engine.process(event, offset, now)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if outcome == Outcome.FOLDED:
                self.raw.append(RawEvent(event, partition, offset))
                if event.occurred_ms > self.max_event_ms:
                    self.max_event_ms = event.occurred_ms
            elif outcome in LATE_REASONS:  # valid, kept raw, not folded into any window
                self.raw.append(RawEvent(event, partition, offset))
                reason = DeadLetter(LATE_REASONS[outcome],
                                    f"event time {event.record['occurred_at'].isoformat()} is behind the "
                                    f"watermark of partition {partition}; its window is closed")
                await self._reject("late", reason, topic, partition, offset, msg.key, msg.value, now)
                metrics.LATE.labels(event_type, reason.reason).inc()
        for outcome, n in outcomes.items():
            processed = self._processed.get((event_type, outcome))
            if processed is None:
                processed = self._processed[(event_type, outcome)] = metrics.PROCESSED.labels(event_type, outcome)
            processed.inc(n)
        self.handled += len(records)
        metrics.PENDING.set(self.handled)

    def flush_due(self) -> bool:
        """A full batch, ``sink_flush_seconds`` since the last flush ended, or the provisional rows due: one
        emit interval since the last flush *started* (so rows leave every emit interval, not every emit
        interval plus the time a flush takes)."""
        now = time.time()
        return (self.handled >= self.settings.sink_batch_rows
                or now - self.last_flush >= self.settings.sink_flush_seconds
                or now - self.last_flush_start >= self.settings.emit_interval_seconds)

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

    async def _reject(self, kind: str, dead: DeadLetter, topic: str, partition: int, offset: int,
                      key: bytes | None, value: bytes | None, now: float) -> None:
        target = self.settings.topic_dlq if kind == "dlq" else self.settings.topic_late
        headers = dead_letter_headers(dead.reason, dead.detail, topic, partition, offset, int(now * 1000))
        message = (target, key, value, headers)
        try:
            self.deliveries.append((await self._send(*message), message))
        except KafkaError:  # broker unreachable: sent again by the flush, which waits for it
            self.deliveries.append((None, message))
        self.rejects.append(Reject(kind=kind, reason=dead.reason, topic=topic, partition=partition, offset=offset,
                                   key=key, value_size=len(value or b""), rejected_ms=int(now * 1000)))

    # ------------------------------------------------------------------ flush
    async def flush(self) -> None:
        """The caller holds ``lock``. Store rows, raw events and rejects in ClickHouse (blocking with retries: the backpressure), wait for
        the dead letters' acknowledgements, persist the engines' changelog records (clock records last) and
        wait for theirs, then commit the source offsets the clocks cover. A crash anywhere in between is
        safe: the restored clocks say what is done, and everything after them is handled again."""
        now = self.last_flush_start = time.time()
        raw, rejects, deliveries, max_event_ms = self.raw, self.rejects, self.deliveries, self.max_event_ms
        self._reset_batch()
        rows: list[KpiRow] = []
        records: list[tuple[int, list]] = []
        for p, engine in self.engines.items():
            r, rec = engine.flush(now)
            rows += r
            if rec:
                records.append((p, rec))
        batch = SinkBatch(kpi_rows=rows, events=raw, rejects=rejects)
        if batch:
            await asyncio.to_thread(self.sink.store, batch)
            if rows:
                metrics.EMIT_TO_STORE.observe(time.time() - now)
        await self._until_done(self._confirm_deliveries, deliveries)
        await self._until_done(self._persist_all, records)
        await self._commit_clocks()
        self.last_flush = time.time()
        self._observe(rows, max_event_ms)

    async def _confirm_deliveries(self, deliveries: list[tuple[asyncio.Future | None, tuple]]) -> None:
        """Wait for every dead letter's acknowledgement; send again what failed."""
        for i, (future, message) in enumerate(deliveries):
            try:
                if future is None:
                    raise KafkaError("not sent")
                await future
            except KafkaError:
                future = await self._send(*message)
                deliveries[i] = (future, message)
                await future

    async def _persist_all(self, records: list[tuple[int, list]]) -> None:
        """Write every partition's changelog records (in order) and wait for all acknowledgements. Sending
        them all again after a failure is harmless: the same keys get the same values, in the same order."""
        acks: list[asyncio.Future] = []
        for p, recs in records:
            acks += await self._persist(p, recs)
        await asyncio.gather(*acks)

    async def _until_done(self, step: Callable[[Any], Awaitable[None]], arg: Any) -> None:
        """Run a Kafka step until it succeeds: the broker being away is a dependency outage (retry with
        backoff, consumption waits), never a reason to drop or to crash."""
        delay = 0.5
        while True:
            try:
                await step(arg)
            except KafkaError as exc:
                if self.health is not None:
                    self.health.went_down(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.sink_retry_max_seconds)
                continue
            if delay > 0.5 and self.health is not None:
                self.health.recovered()
            return

    async def _commit_clocks(self) -> None:
        positions = {}
        for p in self.engines:
            for event_type in self.topic_types.values():
                nxt = self.next_offset(event_type, p)
                if nxt is not None and self._committed.get((event_type, p)) != nxt:
                    positions[(event_type, p)] = nxt
        if positions:
            await self._commit(positions)
            self._committed.update(positions)

    def _observe(self, rows: list[KpiRow], max_event_ms: int) -> None:
        self.kpi_exporter.observe(rows)
        metrics.FLUSHES.inc()
        metrics.PENDING.set(self.handled)
        if max_event_ms > self.last_committed_ms:
            self.last_committed_ms = max_event_ms
            metrics.LAST_COMMITTED_EVENT.set(max_event_ms / 1000)
        for row in rows:
            metrics.ROWS_EMITTED.labels(str(bool(row.is_final)).lower()).inc()
            if row.is_final:
                metrics.WINDOWS_CLOSED.labels(str(row.granularity_seconds)).inc()
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
