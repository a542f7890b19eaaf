"""The Faust app: the worker process around the pipeline. ``copulse worker`` runs it; so does Faust's own
``faust -A streams.app worker`` (both prepare ClickHouse and the topics first and serve /metrics).

    copulse.purchases ─┐
    copulse.usage     ─┤
    copulse.feedback  ─┼─> SourceConsumer (streams/source.py) ─> Pipeline.handle_batch ─> engine per partition
    copulse.responses ─┘        │ every flush: Pipeline.flush ─> ClickHouse, state changelog, offset commit
                                └ on assignment: engines restored from <app_id>-state-changelog (streams/state_store.py)

Faust runs the process (signals, graceful shutdown, logging), the VCI timer and its web server.
The source topics are consumed by copulse's own aiokafka consumer rather than a Faust agent: where a
partition resumes must follow the persisted engine state exactly (explicit seeks, gaps re-read, the state
restored and the engines kept across rebalances), which Faust's acknowledgement bookkeeping does not allow,
and batches skip Faust's per-message delivery. For the same reason the engine state is not a Faust table:
it is written to and restored from copulse's own compacted changelog topic (streams/changelog.py encodes
it, streams/state_store.py reads and writes it). The app subscribes to no topic of its own, so Faust joins
no consumer group; the source topics' group is ``<app_id>``.
"""

from __future__ import annotations

import asyncio
import logging

import faust
from faust.app.base import BootStrategy
from aiokafka import AIOKafkaProducer
from aiokafka.errors import ConsumerStoppedError
from mode import Service

from copulse.settings import Settings, get_settings
from sinks.clickhouse import ClickHouseSink
from copulse.scorecard.job import VciJob
from streams import startup
from streams.batch import Sink
from streams.broker_health import BrokerHealth
from streams.pipeline import Pipeline
from streams.source import SourceConsumer
from streams.state_store import ChangelogStore

log = logging.getLogger(__name__)


class PipelineService(Service):
    """Starts the producer, the changelog store and the source consumer; runs the consumer loop; on a
    graceful stop flushes, persists and leaves the group before anything else stops."""

    def __init__(self, settings: Settings, sink: Sink, **kwargs) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.producer: AIOKafkaProducer | None = None  # aiokafka clients are made inside the running loop
        self.changelog = ChangelogStore(settings.kafka_bootstrap_servers, settings.app_id)
        self.health = BrokerHealth(settings.kafka_bootstrap_servers)
        self.health.install()
        self.pipeline = Pipeline(settings, sink=sink, send=self._send, persist=self.changelog.write,
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


class WorkerBoot(BootStrategy):
    """Faust's services minus its Kafka consumer (with its conductor and tables) and producer: copulse has no
    agent and no Faust table, and brings its own consumer and producer. Without them an idle worker does not
    poll Kafka on Faust's behalf."""

    enable_kafka_consumer = False
    enable_kafka_producer = False


class CopulseApp(faust.App):
    """A Faust app that starts the pipeline with the app itself, not after Faust's own rebalance and
    recovery: after a kill -9 that rebalance waits out the dead member's session, and the source consumer
    has nothing to wait for there (its own group does its own waiting)."""

    BootStrategy = WorkerBoot

    def __init__(self, settings: Settings) -> None:
        super().__init__(
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
        self.settings = settings
        self.prepared = False  # ClickHouse migrated, topics created, /metrics served (streams/startup.py)
        self.pipeline_service: PipelineService | None = None

    async def on_start(self) -> None:
        await super().on_start()
        if not self.prepared:  # started by `faust -A streams.app worker` rather than `copulse worker`
            await asyncio.to_thread(startup.prepare_or_exit, self.settings)
            self.prepared = True
        self.pipeline_service = PipelineService(self.settings, ClickHouseSink(self.settings),
                                                loop=self.loop, beacon=self.beacon)
        self.add_dependency(self.pipeline_service)  # stopped (flush, leave the group) with the app
        await self.pipeline_service.maybe_start()


settings = get_settings()
app = CopulseApp(settings)
vci_job = VciJob(settings)


@app.timer(interval=settings.vci_interval_seconds)
async def score_vci() -> None:
    """Score new final KPI windows into the vci table and the copulse_vci_* gauges (copulse/scorecard/job.py): on one
    worker of the group, the one that holds source partition 0 (Faust's own leader election would need a
    second consumer group, whose rebalance after a kill -9 would hold up the whole worker's start)."""
    service = app.pipeline_service
    if service is None or 0 not in service.source.ready:
        return
    try:
        await asyncio.to_thread(vci_job.run_safely)  # logs and retries on every problem, never raises
    except Exception:  # noqa: BLE001 - belt and braces: the worker never dies of VCI scoring
        log.exception("VCI scoring run failed; retrying in %.0f s", settings.vci_interval_seconds)
