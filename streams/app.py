"""The Faust app: the worker process around the pipeline.

    copulse.purchases ─┐
    copulse.usage     ─┼─> SourceConsumer (streams/source.py) ─> Pipeline.handle_batch ─> engine per partition
    copulse.feedback  ─┘        │ every flush: Pipeline.flush ─> ClickHouse, state changelog, offset commit
                                └ on assignment: engines restored from <app_id>-state-changelog (streams/state_store.py)

Faust runs the process (signals, graceful shutdown, logging), the VCI timer and its web server.
The source topics are consumed by copulse's own aiokafka consumer rather than a Faust agent: where a
partition resumes must follow the persisted engine state exactly (explicit seeks, gaps re-read, the state
restored and the engines kept across rebalances), which Faust's acknowledgement bookkeeping does not allow,
and batches skip Faust's per-message delivery. The app subscribes to no topic of its own, so Faust joins
no consumer group; the source topics' group is ``<app_id>``.
"""

from __future__ import annotations

import asyncio
import logging

import faust
from aiokafka import AIOKafkaProducer
from aiokafka.errors import ConsumerStoppedError
from mode import Service

from copulse.settings import Settings
from sinks.clickhouse import ClickHouseSink
from sinks.vci import VciJob
from streams.broker_health import BrokerHealth
from streams.pipeline import Pipeline
from streams.source import SourceConsumer
from streams.state_store import ChangelogStore

log = logging.getLogger(__name__)


class PipelineService(Service):
    """Starts the producer, the changelog store and the source consumer; runs the consumer loop; on a
    graceful stop flushes, persists and leaves the group before anything else stops."""

    def __init__(self, settings: Settings, sink: ClickHouseSink, **kwargs) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.producer: AIOKafkaProducer | None = None  # aiokafka clients are made inside the running loop
        self.changelog = ChangelogStore(settings.kafka_bootstrap_servers, settings.app_id)
        self.health = BrokerHealth(settings.kafka_bootstrap_servers)
        self.health.install()
        self.pipeline = Pipeline(settings, store=sink.store, send=self._send, persist=self.changelog.write,
                                 commit=self._commit, health=self.health)
        self.source = SourceConsumer(settings, self.pipeline, self.changelog, self.health)

    async def _send(self, topic: str, key: bytes | None, value: bytes | None, headers) -> asyncio.Future:
        return await self.producer.send(topic, key=key, value=value, headers=headers)

    async def _commit(self, positions: dict[tuple[str, int], int]) -> None:
        await self.source.commit(positions)

    async def on_start(self) -> None:
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers, client_id=f"{self.settings.app_id}-producer",
            acks="all", enable_idempotence=True, linger_ms=5, max_batch_size=900_000,
            max_request_size=8 * 1024 * 1024)
        await self.producer.start()
        await self.changelog.start(self.producer)
        await self.source.start()

    async def on_stop(self) -> None:
        await self.source.stop()
        await self.changelog.stop()
        await self.producer.stop()

    @Service.task
    async def _consume(self) -> None:
        try:
            await self.source.run()
        except ConsumerStoppedError:
            pass


class CopulseApp(faust.App):
    """A Faust app that starts the pipeline with the app itself, not after Faust's own rebalance and
    recovery: after a kill -9 that rebalance waits out the dead member's session, and the source consumer
    has nothing to wait for there (its own group does its own waiting)."""

    pipeline_service: PipelineService | None = None

    async def on_start(self) -> None:
        await super().on_start()
        if self.pipeline_service is not None:
            self.add_dependency(self.pipeline_service)  # stopped (flush, leave the group) with the app
            await self.pipeline_service.maybe_start()


def build_app(settings: Settings, sink: ClickHouseSink | None = None) -> faust.App:
    app = CopulseApp(
        f"{settings.app_id}-app",
        broker=f"kafka://{settings.kafka_bootstrap_servers}",
        store="memory://",
        datadir=settings.worker_data_dir,
        topic_partitions=1,
        topic_replication_factor=settings.replication_factor,
        broker_session_timeout=settings.kafka_session_timeout_seconds,
        broker_heartbeat_interval=min(3.0, settings.kafka_session_timeout_seconds / 3),
        web_port=settings.web_port,
        web_bind=settings.bind_host,
    )
    service = PipelineService(settings, sink or ClickHouseSink(settings), loop=app.loop, beacon=app.beacon)
    app.pipeline_service = service

    vci_job = VciJob(settings)

    @app.timer(interval=settings.vci_interval_seconds)
    async def score_vci():
        """Score new final KPI windows into the vci table and the copulse_vci_* gauges (sinks/vci.py): on one
        worker of the group, the one that holds source partition 0 (Faust's own leader election would need a
        second consumer group, whose rebalance after a kill -9 would hold up the whole worker's start)."""
        if 0 not in service.source.ready:
            return
        try:
            await asyncio.to_thread(vci_job.run_safely)  # logs and retries on every problem, never raises
        except Exception:  # noqa: BLE001 - belt and braces: the worker never dies of VCI scoring
            log.exception("VCI scoring run failed; retrying in %.0f s", settings.vci_interval_seconds)

    return app
