"""Runs the real `copulse worker` as a subprocess against the real local Kafka and ClickHouse, with its own
topics, consumer group, ClickHouse database and ports, so tests can kill -9 it and restart it."""

from __future__ import annotations

import json
import os
import signal
import warnings
import socket
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC
from pathlib import Path

from clickhouse_driver import Client
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from copulse.settings import Settings, slice_dimensions
from streams.kpis import COUNTERS, KEY_COLUMNS, ROW_COLUMNS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(name: str, kafka_bootstrap: str, clickhouse: dict, tmp: Path, **overrides) -> dict[str, str]:
    """COPULSE_* variables of an isolated worker named ``name`` (topics, group, database, ports)."""
    env = {
        "COPULSE_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "COPULSE_APP_ID": name,
        "COPULSE_TOPIC_PURCHASES": f"{name}.purchases",
        "COPULSE_TOPIC_USAGE": f"{name}.usage",
        "COPULSE_TOPIC_FEEDBACK": f"{name}.feedback",
        "COPULSE_TOPIC_RESPONSES": f"{name}.responses",
        "COPULSE_TOPIC_DLQ": f"{name}.dlq",
        "COPULSE_TOPIC_LATE": f"{name}.late",
        "COPULSE_CLICKHOUSE_URL": f"clickhouse://{clickhouse.get('user', 'default')}@{clickhouse.get('host', 'localhost')}:"
                                  f"{clickhouse.get('port', 9000)}/{name.replace('-', '_').replace('.', '_')}",
        "COPULSE_CLICKHOUSE_PASSWORD": clickhouse.get("password", ""),
        "COPULSE_METRICS_PORT": str(free_port()),
        "COPULSE_WEB_PORT": str(free_port()),
        "COPULSE_WORKER_DATA_DIR": str(tmp / "worker"),
        "COPULSE_IDLE_TIMEOUT_SECONDS": "8",
        "COPULSE_EMIT_INTERVAL_SECONDS": "1",
        "COPULSE_KAFKA_SESSION_TIMEOUT_SECONDS": "6",
    }
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def settings_from_env(env: dict[str, str]) -> Settings:
    """The Settings a worker started with these COPULSE_* variables sees (JSON lists parsed)."""
    return Settings(**{k[len("COPULSE_"):].lower(): (json.loads(v) if v.startswith("[") else v)
                       for k, v in env.items() if k.startswith("COPULSE_")})


def remove_resources(kafka_bootstrap: str, client: Client, settings: Settings) -> None:
    """Drop the worker's ClickHouse database and delete its topics, Faust's internal ones included."""
    from kafka.admin import KafkaAdminClient

    from streams.topics import topic_names

    client.execute(f"DROP DATABASE IF EXISTS `{settings.clickhouse['database']}`")
    client.disconnect()
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="copulse-tests")
    try:
        # ours plus Faust's (<app_id>-__assignor-__leader, <app_id>-state-changelog)
        mine = [t for t in admin.list_topics() if t in topic_names(settings) or t.startswith(f"{settings.app_id}-")]
        admin.delete_topics(mine, timeout_ms=30000)
    except Exception as exc:  # noqa: BLE001 - cleanup only
        warnings.warn(f"could not delete the test topics: {exc}", stacklevel=1)
    finally:
        admin.close()


COPULSE_WORKER = [sys.executable, "-m", "copulse.cli", "worker", "--loglevel", "warning"]


def faust_worker(datadir: Path) -> list[str]:
    """Faust's own command line for the module-level app (its data directory given, as Faust's CLI wants)."""
    return [sys.executable, "-m", "faust", "-A", "streams.app", "--datadir", str(datadir), "worker", "--loglevel", "warn"]


class WorkerProcess:
    def __init__(self, env: dict[str, str], log_path: Path, command: list[str] = COPULSE_WORKER) -> None:
        self.env = dict(os.environ, **env)
        self.log_path = log_path
        self.command = command
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill9()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def produce(bootstrap: str, topics: dict[str, str], messages: list[tuple[str, bytes | None, bytes]]) -> list[dict]:
    """Send (event type, key, value) in order; returns [{type, partition, offset}] per message."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    futures = [producer.send(topics[t], key=k, value=v) for t, k, v in messages]
    producer.flush()
    out = []
    for (t, _, _), fut in zip(messages, futures):
        md = fut.get(timeout=30)
        out.append({"type": t, "partition": md.partition, "offset": md.offset})
    producer.close()
    return out


def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 60) -> list:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=2000)
    parts = consumer.partitions_for_topic(topic) or set()
    consumer.assign([TopicPartition(topic, p) for p in parts])
    records, deadline = [], time.time() + timeout
    while len(records) < expected and time.time() < deadline:
        for batch in consumer.poll(timeout_ms=1000).values():
            records += batch
    consumer.close()
    return records


def final_kpis(client: Client, database: str) -> tuple[dict, int]:
    """Newest version of every KPI row (what ReplacingMergeTree keeps), summed across partitions.
    Returns ({(g, ws_ms, slice, values): {counter: value}}, number of keys not final yet)."""
    cols = ", ".join(f"`{c}`" for c in ROW_COLUMNS)
    rows = client.execute(f"SELECT {cols} FROM `{database}`.kpi_windows")
    newest: dict[tuple, tuple] = {}
    vi, fi = ROW_COLUMNS.index("version"), ROW_COLUMNS.index("is_final")
    for row in rows:
        k = row[: len(KEY_COLUMNS)]
        if k not in newest or row[vi] >= newest[k][vi]:
            newest[k] = row
    out: dict[tuple, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTERS, 0))
    not_final = 0
    for k, row in newest.items():
        not_final += row[fi] != 1
        g, start, name = row[0], row[1], row[2]
        values = tuple(row[KEY_COLUMNS.index(d)] for d in slice_dimensions(name))
        ws = int(start.replace(tzinfo=UTC).timestamp() * 1000)
        agg = out[(g, ws, name, values)]
        for i, c in enumerate(COUNTERS):
            agg[c] += int(row[len(KEY_COLUMNS) + i])
    return dict(out), not_final
