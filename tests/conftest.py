"""Shared fixtures: where the real Kafka and ClickHouse are, and throwaway topics / databases on them.

Endpoints are resolved once per session, in this order:

1. ``COPULSE_KAFKA_BOOTSTRAP_SERVERS`` / ``COPULSE_CLICKHOUSE_URL`` (+ ``COPULSE_CLICKHOUSE_PASSWORD``)
   when set (``make test`` sets both to the local stack);
2. otherwise testcontainers (Kafka in KRaft mode, ClickHouse with the ``copulse_reader`` user) when a
   Docker engine answers;
3. otherwise the local stack of ``make up`` (localhost:9092, localhost:9000, or ``COPULSE_KAFKA_PORT`` /
   ``COPULSE_CH_NATIVE_PORT`` like deploy/stack.sh). If it does not answer the
   test FAILS with "run `make up` first": integration tests are never skipped silently.

Fixtures for tests:

- ``kafka_bootstrap`` -> ``"host:port"``
- ``clickhouse_settings`` -> ``dict`` of ``clickhouse_driver.Client`` keyword arguments (database ``default``)
- ``clickhouse_db`` -> a ``clickhouse_driver.Client`` on a fresh, uniquely named database, dropped afterwards;
  its name is ``client.connection.database``
- ``topic_factory(partitions=6, prefix="test")`` -> name of a fresh topic, deleted afterwards
- ``settings_factory(**overrides)`` -> ``copulse.settings.Settings`` pointed at the resolved endpoints, with a
  unique ``app_id`` and a temporary ``worker_data_dir``; ``database="name"`` points ``clickhouse_url`` at
  that database (e.g. ``settings_factory(database=clickhouse_db.connection.database)``)
"""

from __future__ import annotations

import functools
import os
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest

from copulse.settings import Settings
from tests.worker_harness import free_port

REPO_DIR = Path(__file__).resolve().parents[1]
# the ports deploy/stack.sh uses (same variables, same defaults)
LOCAL_KAFKA = f"localhost:{os.environ.get('COPULSE_KAFKA_PORT', '9092')}"
LOCAL_CLICKHOUSE = {
    "host": "localhost",
    "port": int(os.environ.get("COPULSE_CH_NATIVE_PORT", "9000")),
    "user": "default",
    "password": "",
}
#: users.d file that adds copulse_reader to a stock ClickHouse image (compose and testcontainers)
READER_USERS_D = REPO_DIR / "deploy" / "docker" / "clickhouse-users.d" / "copulse_reader.xml"


def pytest_configure(config):
    # kafka-python's protocol schema loader uses importlib.resources APIs deprecated in 3.11: noise, not ours
    config.addinivalue_line("filterwarnings", "ignore:read_text is deprecated:DeprecationWarning")
    config.addinivalue_line("filterwarnings", "ignore:open_text is deprecated:DeprecationWarning")


def unique_name(prefix: str) -> str:
    """``prefix_<12 hex>``: valid as a Kafka topic and as a ClickHouse database name."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@functools.lru_cache(maxsize=1)
def _docker_answers() -> bool:
    """True when a Docker engine answers a ping within ~2 s (never raises). Asked at most once."""
    try:
        import docker

        client = docker.from_env(timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _kafka_answers(bootstrap: str) -> str | None:
    """None when a metadata request succeeds, else the error text."""
    from kafka.admin import KafkaAdminClient

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="copulse-tests", request_timeout_ms=5000)
        try:
            admin.list_topics()
        finally:
            admin.close()
    except Exception as exc:  # NoBrokersAvailable, timeouts, ...
        return f"{type(exc).__name__}: {exc}"
    return None


def _clickhouse_answers(kwargs: dict) -> str | None:
    from clickhouse_driver import Client

    try:
        Client(**kwargs, connect_timeout=3, send_receive_timeout=10).execute("SELECT 1")
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@pytest.fixture(scope="session")
def kafka_bootstrap():
    """Bootstrap servers of a Kafka that answers (env, else testcontainers, else the local stack)."""
    bootstrap = os.environ.get("COPULSE_KAFKA_BOOTSTRAP_SERVERS")
    if bootstrap:
        error = _kafka_answers(bootstrap)
        if error:
            pytest.fail(f"Kafka at COPULSE_KAFKA_BOOTSTRAP_SERVERS={bootstrap} does not answer ({error})")
        yield bootstrap
    elif _docker_answers():
        try:
            from testcontainers.community.kafka import KafkaContainer
        except ImportError:  # testcontainers < 4.5
            from testcontainers.kafka import KafkaContainer

        container = KafkaContainer().with_kraft().with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
        with container:
            yield container.get_bootstrap_server()
    else:
        error = _kafka_answers(LOCAL_KAFKA)
        if error:
            pytest.fail(f"Kafka of the local stack does not answer at {LOCAL_KAFKA} ({error}): run `make up` first")
        yield LOCAL_KAFKA


@pytest.fixture(scope="session")
def clickhouse_settings():
    """``clickhouse_driver.Client(**clickhouse_settings)`` reaches a ClickHouse that answers, database ``default``."""
    if os.environ.get("COPULSE_CLICKHOUSE_URL"):
        from copulse.settings import Settings

        kwargs = {**Settings().clickhouse, "database": "default"}
        error = _clickhouse_answers(kwargs)
        if error:
            pytest.fail(f"ClickHouse at COPULSE_CLICKHOUSE_URL does not answer ({error})")
        yield kwargs
    elif _docker_answers():
        try:
            from testcontainers.community.clickhouse import ClickHouseContainer
        except ImportError:  # testcontainers < 4.5
            from testcontainers.clickhouse import ClickHouseContainer

        container = ClickHouseContainer("clickhouse/clickhouse-server:latest").with_volume_mapping(
            str(READER_USERS_D), "/etc/clickhouse-server/users.d/copulse_reader.xml"
        )
        with container:
            yield {
                "host": container.get_container_host_ip(),
                "port": int(container.get_exposed_port(container.port)),
                "user": container.username,
                "password": container.password,
                "database": "default",
            }
    else:
        kwargs = {**LOCAL_CLICKHOUSE, "database": "default"}
        error = _clickhouse_answers(kwargs)
        if error:
            pytest.fail(
                f"ClickHouse of the local stack does not answer at localhost:{kwargs['port']} ({error}): "
                "run `make up` first"
            )
        yield kwargs


@pytest.fixture(scope="session")
def kpi_dataset():
    """The sink batches of the generated KPI dataset (tests/kpi_dataset.py), made once per test run."""
    from tests.kpi_dataset import generate_batches

    return generate_batches()


@pytest.fixture
def clickhouse_db(clickhouse_settings):
    """A ``clickhouse_driver.Client`` connected to a fresh database ``test_<hex>``; dropped after the test."""
    from clickhouse_driver import Client

    name = unique_name("test")
    admin = Client(**clickhouse_settings)
    admin.execute(f"CREATE DATABASE {name}")
    client = Client(**{**clickhouse_settings, "database": name})
    try:
        yield client
    finally:
        client.disconnect()
        admin.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.disconnect()


@pytest.fixture
def topic_factory(kafka_bootstrap):
    """``topic_factory(partitions=6, prefix="test") -> name``: a fresh topic, deleted after the test."""
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="copulse-tests")
    created: list[str] = []

    def make(partitions: int = 6, prefix: str = "test") -> str:
        name = unique_name(prefix)
        admin.create_topics(
            [NewTopic(name=name, num_partitions=partitions, replication_factor=1)],
            timeout_ms=30000,
            wait_for_metadata=True,
        )
        created.append(name)
        return name

    try:
        yield make
    finally:
        if created:
            try:
                admin.delete_topics(created, timeout_ms=30000)
            finally:
                admin.close()
        else:
            admin.close()


@pytest.fixture
def settings_factory(kafka_bootstrap, clickhouse_settings, tmp_path):
    """``settings_factory(**overrides) -> Settings`` for the resolved Kafka and ClickHouse.

    Defaults: database ``copulse``, a unique ``app_id`` (fresh consumer group and Faust tables) and
    ``worker_data_dir`` under ``tmp_path``. ``database=...`` picks another database; every other keyword
    is a ``Settings`` field and wins over the defaults.
    """
    from pydantic import SecretStr

    from copulse.settings import Settings

    def make(database: str = "copulse", **overrides) -> Settings:
        ch = clickhouse_settings
        user = quote(ch["user"], safe="")
        values = {
            "kafka_bootstrap_servers": kafka_bootstrap,
            "clickhouse_url": f"clickhouse://{user}@{ch['host']}:{ch['port']}/{database}",
            "clickhouse_password": SecretStr(ch["password"]),
            "app_id": unique_name("copulse_test"),
            "worker_data_dir": str(tmp_path / "worker"),
        }
        values.update(overrides)
        return Settings(**values)

    return make

# --- throwaway servers (own stack dir and ports) that a test may stop and start again ------------------
STACK = REPO_DIR / "deploy" / "stack.sh"


@dataclass
class ThrowawayServer:
    """One service of a second local stack: ``deploy/stack.sh <service>-up`` / ``<service>-down``."""

    service: str  # kafka | clickhouse
    port: int
    env: dict

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _stack(self, command: str) -> None:
        result = subprocess.run(
            ["bash", str(STACK), f"{self.service}-{command}"], env=self.env, cwd=REPO_DIR, capture_output=True,
            text=True, timeout=240)
        assert result.returncode == 0, f"deploy/stack.sh {self.service}-{command} failed:\n{result.stdout}\n{result.stderr}"

    def up(self) -> None:
        self._stack("up")

    def down(self) -> None:
        self._stack("down")


def _throwaway(service: str, tmp_path: Path, **ports: int):
    server = ThrowawayServer(service, next(iter(ports.values())),
                             {**os.environ, "COPULSE_STACK_DIR": str(tmp_path / f"{service}-stack"),
                              **{k: str(v) for k, v in ports.items()}})
    server.up()
    try:
        yield server
    finally:
        server.down()


@pytest.fixture
def throwaway_clickhouse(tmp_path):
    yield from _throwaway("clickhouse", tmp_path, COPULSE_CH_NATIVE_PORT=free_port(), COPULSE_CH_HTTP_PORT=free_port())


@pytest.fixture
def throwaway_kafka(tmp_path):
    yield from _throwaway("kafka", tmp_path, COPULSE_KAFKA_PORT=free_port(), COPULSE_KAFKA_CONTROLLER_PORT=free_port())


@dataclass
class IsolatedWorker:
    """Everything one real worker of a test owns: its COPULSE_* environment (own topics, consumer group,
    database, ports, data dir), its Settings, a ClickHouse client and the worker processes started."""

    env: dict
    settings: Settings
    client: object
    database: str
    log_path: Path
    workers: list = field(default_factory=list)

    def worker(self, cls=None):
        from tests.worker_harness import WorkerProcess

        process = (cls or WorkerProcess)(self.env, self.log_path)
        self.workers.append(process)
        return process


@pytest.fixture
def isolated_worker(request, kafka_bootstrap, clickhouse_settings, tmp_path):
    """Factory: ``isolated_worker(**COPULSE_overrides) -> IsolatedWorker`` with topics created. Stops its
    workers and removes its topics and database afterwards."""
    from clickhouse_driver import Client

    from streams.topics import ensure_topics
    from tests.worker_harness import remove_resources, settings_from_env, worker_env

    made: list[IsolatedWorker] = []

    def make(clickhouse: dict | None = None, **overrides) -> IsolatedWorker:
        name = f"cpx_{request.node.name[:18].strip('[]_').replace('[', '_').replace('-', '_')}_{len(made)}{uuid.uuid4().hex[:6]}"
        env = worker_env(name, kafka_bootstrap, clickhouse or clickhouse_settings, tmp_path, **overrides)
        settings = settings_from_env(env)
        ensure_topics(settings)
        client = Client(**{**(clickhouse or clickhouse_settings), "database": "default"})
        made.append(IsolatedWorker(env, settings, client, settings.clickhouse["database"],
                                   tmp_path / f"{name}.log"))
        return made[-1]

    yield make
    for iso in made:
        for process in iso.workers:
            process.stop()
        remove_resources(kafka_bootstrap, iso.client, iso.settings)
