"""Consuming the source topics (every input topic, streams.events.EVENT_TYPES): group membership, where each partition resumes, batches, commits.

One aiokafka consumer in the consumer group ``settings.app_id`` with the range assignor, so partition p of
every source topic goes to the same worker (they are keyed alike and have the same partition count) and one
engine per partition index sees all of a consumer's events.

Where to resume is decided by the persisted state, never by committed offsets:

* on assignment, the new partitions are paused while their engine is restored from the changelog (or kept,
  when this worker held it and nobody wrote its changelog since); then every source partition is sought to
  its persisted clock + 1 (or its beginning when it never delivered anything) and resumed;
* a record past the expected next offset is never accepted silently: the partition is sought back to the
  expected offset. Only when the same record comes first again are the offsets in between known not to exist
  (transaction markers, retention), which is logged once and counted;
* committed offsets follow the persisted clocks (streams/pipeline.py), so consumer lag stays meaningful.

Rebalances keep what they can: revoked partitions are flushed and persisted under the pipeline lock before
they go; their engines are kept in memory and adopted again if the partition comes back unchanged.
Records fetched for a partition before it is ready are dropped (its seek re-reads them); records of a ready
partition are checked against its expected next offset whenever they were fetched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from copulse.settings import Settings
from streams import metrics
from streams.broker_health import BrokerHealth
from streams.engine import PartitionEngine
from streams.pipeline import Pipeline
from streams.state_store import ChangelogStore

log = logging.getLogger(__name__)


class SourceConsumer(ConsumerRebalanceListener):
    def __init__(self, settings: Settings, pipeline: Pipeline, state: ChangelogStore,
                 health: BrokerHealth | None = None) -> None:
        self.settings = settings
        self.health = health
        self.pipeline = pipeline
        self.state = state
        self.topics = list(settings.source_topics.values())
        self.types = {topic: t for t, topic in settings.source_topics.items()}
        self.consumer: AIOKafkaConsumer | None = None
        self.ready: set[int] = set()  # partition indices restored, sought and resumed
        self.generation = 0  # +1 per assignment: a restore of an older assignment does not resume
        # engines of revoked partitions and the changelog end offset they match (None: unknown)
        self.parked: dict[int, tuple[PartitionEngine, int | None]] = {}
        self._expected: dict[TopicPartition, int | None] = {}  # next offset each source partition must deliver
        self._gap_probe: dict[TopicPartition, int] = {}  # first offset seen past a gap, re-read pending
        self._restoring: asyncio.Task | None = None
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        s = self.settings
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap_servers,
            group_id=s.app_id,
            client_id=f"{s.app_id}-source",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            partition_assignment_strategy=(RangePartitionAssignor,),
            session_timeout_ms=int(s.kafka_session_timeout_seconds * 1000),
            heartbeat_interval_ms=int(min(3.0, s.kafka_session_timeout_seconds / 3) * 1000),
            max_poll_interval_ms=int(s.kafka_max_poll_interval_seconds * 1000),
            fetch_max_bytes=32 * 1024 * 1024,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            # A trickle of events is fetched in few requests, not one per message: the broker answers once
            # 8 KiB are ready (~50 events; ~0.1 s at 500 ev/s) or after 500 ms (an idle or demo-rate worker).
            fetch_min_bytes=8 * 1024,
            fetch_max_wait_ms=500,
        )
        await self.consumer.start()
        self.consumer.subscribe(self.topics, listener=self)

    async def stop(self) -> None:
        """Graceful stop: flush and persist everything, commit, then leave the group at once (the partitions
        move to the other workers without waiting for the session timeout)."""
        self._stopping = True
        if self._restoring is not None:
            self._restoring.cancel()
        if self.consumer is None:
            return
        try:
            async with self.pipeline.lock:
                await self._flush(consuming=False)
        finally:
            await self.consumer.stop()
            log.info("source consumer stopped, partitions handed back to the group")

    async def run(self) -> None:
        """Fetch batches and hand them to the pipeline; flush when due. Returns when stopped."""
        consumer, pipeline = self.consumer, self.pipeline
        timeout_ms = int(min(self.settings.sink_flush_seconds, self.settings.emit_interval_seconds) * 1000)
        while not self._stopping:
            if self._restoring is not None and self._restoring.done() and not self._restoring.cancelled():
                self._restoring.result()  # a failed restore stops the worker (another one takes over)
            if self.health is not None and self.health.probe_due():
                await self._probe()
            try:
                batch = await consumer.getmany(timeout_ms=timeout_ms, max_records=self.settings.sink_batch_rows)
            except KafkaError as exc:  # the brokers are away: aiokafka reconnects by itself
                if self.health is not None:
                    self.health.went_down(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(1.0)
                continue
            async with pipeline.lock:
                if self._stopping:
                    return
                for tp, records in batch.items():
                    # partitions being restored are sought when ready: what was fetched for them is dropped
                    if tp.partition in self.ready and records:
                        records = self._in_sequence(tp, records)
                        if records:
                            await pipeline.handle_batch(tp.topic, tp.partition, records)
                if pipeline.flush_due():
                    await self._flush(consuming=True)

    async def _flush(self, *, consuming: bool) -> None:
        """The pipeline's flush (the caller holds its lock), with idleness decided first: idle means "read to
        the end and nothing new", never "not handed anything lately". While consuming, a source partition with
        messages still waiting in Kafka (position below the end the last fetch reported, or no fetch answer
        yet), and every source while Kafka is unreachable, keeps holding the watermark; at a revoke or a stop
        (not consuming) every source does. Else a catch-up that serves partitions one after another, or a
        rebalance, would close windows before their events come. Time the flush is held up by ClickHouse or
        Kafka pauses the idle timers."""
        if not self.pipeline.engines:
            return
        now = time.time()
        hold_all = not consuming or (self.health is not None and self.health.is_down)
        for partition in self.pipeline.engines:
            for topic, event_type in self.types.items():
                tp = TopicPartition(topic, partition)
                if hold_all or partition not in self.ready:
                    self.pipeline.hold_source(event_type, partition, now)
                    continue
                end = self.consumer.last_stable_offset(tp)
                if end is None:
                    end = self.consumer.highwater(tp)
                if end is None or await self.consumer.position(tp) < end:
                    self.pipeline.hold_source(event_type, partition, now)
        started = time.monotonic()
        await self.pipeline.flush()
        blocked = time.monotonic() - started
        if blocked > 1.0:
            self.pipeline.pause_idle_timers(blocked)

    async def _probe(self) -> None:
        """While Kafka is marked down: one metadata request; an answer means it is back."""
        try:
            await asyncio.wait_for(self.state.end_offset(0), timeout=3.0)
        except (KafkaError, asyncio.TimeoutError, OSError):
            self.health.probe_failed()
        else:
            self.health.recovered()

    # ------------------------------------------------------------------ offsets
    def _in_sequence(self, tp: TopicPartition, records: list[Any]) -> list[Any]:
        """The records that continue this source partition without a gap; seeks back on a gap."""
        expected = self._expected.get(tp)
        first = records[0].offset
        if expected is not None and first > expected:
            probe = self._gap_probe.pop(tp, None)
            if probe != first:
                self._gap_probe[tp] = first
                log.warning("%s-%d: got offset %d but %d is next; reading again from %d", tp.topic, tp.partition,
                            first, expected, expected)
                self.consumer.seek(tp, expected)
                metrics.SEEKS_BACK.inc()
                return []
            log.warning("%s-%d: offsets %d..%d do not exist (transaction markers or deleted by retention); "
                        "continuing at %d", tp.topic, tp.partition, expected, first - 1, first)
            metrics.OFFSET_GAPS.inc()
        else:
            self._gap_probe.pop(tp, None)
        # Within a batch the records come from one fetch in offset order (gaps there are transaction markers).
        # Records below the expected offset are re-deliveries: the engine skips what its clock covers.
        self._expected[tp] = max(records[-1].offset + 1, expected or 0)
        return records

    async def commit(self, positions: dict[tuple[str, int], int]) -> None:
        """Commit next offsets {(event type, partition): offset} of the partitions still assigned."""
        assigned = self.consumer.assignment()
        offsets = {}
        for (event_type, partition), offset in positions.items():
            tp = TopicPartition(self.settings.source_topics[event_type], partition)
            if tp in assigned:
                offsets[tp] = offset
        if not offsets:
            return
        try:
            await asyncio.wait_for(self.consumer.commit(offsets), timeout=5.0)
        except (CommitFailedError, IllegalStateError, KafkaError, asyncio.TimeoutError) as exc:
            # harmless: committed offsets only feed lag monitoring; the persisted clocks decide where to resume
            log.debug("offset commit skipped (%s)", exc)

    # ------------------------------------------------------------------ rebalances
    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        partitions = {tp.partition for tp in revoked if tp.topic in self.types}
        if self._restoring is not None:
            self._restoring.cancel()
            self._restoring = None
        async with self.pipeline.lock:
            self.generation += 1
            self.ready -= partitions
            if not self._stopping:
                await self._flush(consuming=False)
            for p, engine in self.pipeline.release(partitions).items():
                self.parked[p] = (engine, self.state.last_end(p))
        if partitions:
            log.info("partitions %s revoked: flushed and persisted", sorted(partitions))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Pause the new partitions and restore them in the background (a restore inside this callback would
        hold up the group's heartbeats)."""
        self.generation += 1
        mine = sorted({tp.partition for tp in assigned if tp.topic in self.types})
        sources = [tp for tp in assigned if tp.topic in self.types]
        self.consumer.pause(*sources)
        self._restoring = asyncio.get_running_loop().create_task(self._restore(mine, sources, self.generation))

    async def _restore(self, partitions: list[int], sources: list[TopicPartition], generation: int) -> None:
        started = time.monotonic()
        try:
            kept = restored = 0
            for p in partitions:
                engine, end_then = self.parked.pop(p, (None, None))
                if engine is not None and end_then is not None and await self.state.end_offset(p) == end_then:
                    async with self.pipeline.lock:
                        self.pipeline.adopt(p, engine)
                    kept += 1
                else:
                    records = await self.state.read(p)
                    async with self.pipeline.lock:
                        self.pipeline.restore(p, records)
                    restored += 1
            self.parked.clear()
            async with self.pipeline.lock:
                if generation != self.generation:
                    return
                for tp in sources:
                    nxt = self.pipeline.next_offset(self.types[tp.topic], tp.partition)
                    if nxt is None:
                        await self.consumer.seek_to_beginning(tp)
                    else:
                        self.consumer.seek(tp, nxt)
                    self._expected[tp] = nxt
                    self._gap_probe.pop(tp, None)
                self.ready = set(partitions)
                self.consumer.resume(*sources)
            log.info("partitions %s assigned: %d engines kept, %d restored from the changelog in %.1f s; "
                     "resuming at the persisted offsets", partitions, kept, restored, time.monotonic() - started)
            metrics.RESTORE_SECONDS.set(time.monotonic() - started)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("restoring partitions %s failed; the worker stops so that another one takes over",
                          partitions)
            raise
