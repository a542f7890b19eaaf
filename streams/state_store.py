"""The engines' state as a compacted Kafka topic: ``<app_id>-state-changelog``, one partition per partition
index of the source topics, key -> latest value (``None`` deletes the key).

The worker writes the records each engine flush returns (in order: consumers, aggregates, then the clock
record) and reads a partition back, whole, when it is assigned. Compaction keeps the topic's size close to the
live state, so a restore reads the live state, not the history (topic configs below).

``last_end(p)`` is the changelog end offset this worker knows for partition p (after its own writes or its
own read). When p comes back after a rebalance and the topic's end offset is still that, nobody else wrote
p's state in between and the engine kept in memory is current: no restore needed.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

log = logging.getLogger(__name__)

#: topic configs of the changelog: compacted; segments roll every 10 minutes so the active segment (never
#: compacted) stays small; cleaning starts when 10 % of the log is superseded records; tombstones are kept a
#: day so a slow reader still sees them.
CHANGELOG_CONFIGS = {
    "cleanup.policy": "compact",
    "segment.ms": str(10 * 60 * 1000),
    "segment.bytes": str(64 * 1024 * 1024),
    "min.cleanable.dirty.ratio": "0.1",
    "delete.retention.ms": str(24 * 3600 * 1000),
    "min.compaction.lag.ms": "0",
}


def changelog_topic(app_id: str) -> str:
    return f"{app_id}-state-changelog"


class ChangelogStore:
    def __init__(self, bootstrap: str, app_id: str) -> None:
        self.topic = changelog_topic(app_id)
        self.bootstrap = bootstrap
        self.producer: AIOKafkaProducer | None = None
        self._ends: dict[int, int] = {}
        self._reader: AIOKafkaConsumer | None = None

    async def start(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        self._reader = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False, group_id=None,
                                        auto_offset_reset="earliest", client_id="copulse-state-restore",
                                        fetch_max_bytes=64 * 1024 * 1024, max_partition_fetch_bytes=16 * 1024 * 1024)
        await self._reader.start()

    async def stop(self) -> None:
        if self._reader is not None:
            await self._reader.stop()

    def last_end(self, partition: int) -> int | None:
        return self._ends.get(partition)

    async def end_offset(self, partition: int) -> int:
        tp = TopicPartition(self.topic, partition)
        return (await self._reader.end_offsets([tp]))[tp]

    async def write(self, partition: int, records: list[tuple[str, bytes | None]]) -> list[asyncio.Future]:
        """Queue the records in order (one send after the other, so Kafka keeps their order); returns the
        futures of their acknowledgements: await them all before relying on them."""
        futures = []
        for key, value in records:
            futures.append(await self.producer.send(self.topic, key=key.encode(), value=value, partition=partition))
        if futures:
            futures[-1].add_done_callback(lambda fut, p=partition: self._note_end(p, fut))
        return futures

    def _note_end(self, partition: int, future: asyncio.Future) -> None:
        if not future.cancelled() and future.exception() is None:
            self._ends[partition] = max(self._ends.get(partition, 0), future.result().offset + 1)

    async def read(self, partition: int) -> list[tuple[str, bytes]]:
        """The latest value of every live key of this partition (tombstoned keys left out)."""
        tp = TopicPartition(self.topic, partition)
        reader = self._reader
        started = time.monotonic()
        end = (await reader.end_offsets([tp]))[tp]
        latest: dict[bytes, bytes | None] = {}
        count = 0
        if end > 0:
            reader.assign([tp])
            await reader.seek_to_beginning(tp)
            while await reader.position(tp) < end:
                batch = await reader.getmany(tp, timeout_ms=1000, max_records=50_000)
                for record in batch.get(tp, ()):
                    if record.offset < end:
                        latest[record.key] = record.value
                        count += 1
            reader.assign([])
        self._ends[partition] = end
        records = [(k.decode(), v) for k, v in latest.items() if v is not None]
        log.debug("changelog partition %d: %d records read, %d live keys, %.2f s",
                  partition, count, len(records), time.monotonic() - started)
        return records

