"""The Faust app: three input topics, one state table, one agent, one timer.

    copulse.purchases ─┐
    copulse.usage     ─┼─> agent `kpis` ─> Pipeline.handle ─> engine per partition ─┐
    copulse.feedback  ─┘                                                             │
          timer (idle windows, provisional rows) ─> Pipeline.flush ─> ClickHouse, changelog, acks

All three topics are keyed by consumer_id with the same partition count, so Faust assigns partition p of
each to the same worker together with partition p of the state table's changelog.
"""

from __future__ import annotations

import asyncio
import logging

import faust

from copulse.settings import Settings
from sinks.clickhouse import ClickHouseSink
from sinks.vci import VciJob
from streams.pipeline import Pipeline

log = logging.getLogger(__name__)


def build_app(settings: Settings, sink: ClickHouseSink | None = None) -> faust.App:
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap_servers}",
        store="memory://",
        datadir=settings.worker_data_dir,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        key_serializer="raw",
        value_serializer="raw",
        producer_acks=-1,
        # Faust's default (16 KiB) makes a produce request of every ~10 changelog records; ordering per
        # partition is the same with bigger batches (aiokafka keeps one produce request per broker in flight)
        producer_max_batch_size=900_000,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        broker_session_timeout=settings.kafka_session_timeout_seconds,
        broker_heartbeat_interval=min(3.0, settings.kafka_session_timeout_seconds / 3),
        web_port=settings.web_port,
        web_bind=settings.bind_host,
        stream_wait_empty=False,
        # >= 1 is what makes faust-streaming use its own assignor: it co-partitions the three topics with
        # the changelog and recovers the table on assignment (with 0 it falls back to round-robin).
        table_standby_replicas=1,
    )
    sources = app.topic(*settings.source_topics.values(), key_type=bytes, value_type=bytes)
    state = app.Table("state", key_type=bytes, value_type=bytes, partitions=settings.partitions)
    sink = sink or ClickHouseSink(settings)
    stream_holder: dict = {}

    async def ack(fevent) -> None:
        await stream_holder["stream"].ack(fevent)

    targets = {name: app.topic(name, key_type=bytes, value_type=bytes) for name in (settings.topic_dlq, settings.topic_late)}

    def send(topic: str, key, value, headers) -> None:
        targets[topic].send_soon(key=key, value=value, headers=headers)

    def persist(partition: int, key: str, value: bytes | None) -> None:
        state.send_changelog(partition, key.encode(), value)

    def restore_records(partition: int) -> list[tuple[str, bytes]]:
        """Take this partition's records out of the table (Faust recovered them from the changelog)."""
        found = []
        for raw_key in list(state.data.keys()):
            key = raw_key.decode()
            if key.split("\x1f", 2)[1] == str(partition):
                value = state.data.pop(raw_key)
                if value is not None:
                    found.append((key, value))
        return found

    pipeline = Pipeline(settings, store=sink.store, send=send, persist=persist,
                        flush_producer=app.producer.flush, ack=ack, restore_records=restore_records)
    app.copulse_pipeline = pipeline

    @app.agent(sources)
    async def kpis(stream):
        stream_holder["stream"] = manual = stream.noack()
        async for fevent in manual.events():
            await pipeline.handle(fevent)

    @app.timer(interval=min(settings.sink_flush_seconds, settings.emit_interval_seconds))
    async def tick():
        if not app.rebalancing:
            await pipeline.flush()

    vci_job = VciJob(settings)

    @app.timer(interval=settings.vci_interval_seconds, on_leader=True)
    async def score_vci():
        """Score new final KPI windows into the vci table and the copulse_vci_* gauges (sinks/vci.py)."""
        try:
            await asyncio.to_thread(vci_job.run_safely)  # logs and retries on every problem, never raises
        except Exception:  # noqa: BLE001 - belt and braces: the worker never dies of VCI scoring
            log.exception("VCI scoring run failed; retrying in %.0f s", settings.vci_interval_seconds)

    @app.on_partitions_revoked.connect
    async def on_revoked(app_, revoked, **kwargs) -> None:
        pipeline.drop({tp.partition for tp in revoked if tp.topic in settings.source_topics.values()})

    return app
