"""Shared pieces of the benchmark suite: statistics, isolated worker environments, Kafka/ClickHouse helpers,
progress lines on stderr. Nothing here is timed itself."""

from __future__ import annotations

import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_DIR = Path(__file__).resolve().parents[1]
KAFKA = os.environ.get("COPULSE_KAFKA_BOOTSTRAP_SERVERS", f"localhost:{os.environ.get('COPULSE_KAFKA_PORT', '9092')}")
CLICKHOUSE = {
    "host": "localhost",
    "port": int(os.environ.get("COPULSE_CH_NATIVE_PORT", "9000")),
    "user": "default",
    "password": "",
}
_T0 = time.monotonic()


def progress(text: str) -> None:
    """A progress line on stderr (the table goes to stdout)."""
    print(f"[bench {time.monotonic() - _T0:7.1f}s] {text}", file=sys.stderr, flush=True)


@dataclass
class Stat:
    """Several runs of one figure: median with min and max."""

    values: list[float] = field(default_factory=list)

    def add(self, value: float | None) -> None:
        if value is not None:
            self.values.append(float(value))

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    def fmt(self, spec: str = ",.0f", unit: str = "") -> str:
        if not self.values:
            return "n/a"
        med, lo, hi = self.median, min(self.values), max(self.values)
        if len(self.values) == 1:
            return f"{med:{spec}}{unit} (1 run)"
        return f"{med:{spec}}{unit} [{lo:{spec}}–{hi:{spec}}] n={len(self.values)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_id() -> str:
    return f"{int(time.time()) % 10**6:06d}{random.randrange(1000):03d}"


def topic_env(prefix: str) -> dict[str, str]:
    """COPULSE_TOPIC_* of the benchmark's input topics (shared by every run of one invocation)."""
    return {
        "COPULSE_TOPIC_PURCHASES": f"{prefix}.purchases",
        "COPULSE_TOPIC_USAGE": f"{prefix}.usage",
        "COPULSE_TOPIC_FEEDBACK": f"{prefix}.feedback",
        "COPULSE_TOPIC_RESPONSES": f"{prefix}.responses",
    }


def worker_env(app_id: str, topics_prefix: str, tmp: Path, **overrides: Any) -> dict[str, str]:
    """COPULSE_* variables of one isolated worker: own consumer group / changelog (app id), DLQ and late
    topics, ClickHouse database and ports; input topics shared (``topics_prefix``)."""
    env = {
        "COPULSE_KAFKA_BOOTSTRAP_SERVERS": KAFKA,
        "COPULSE_APP_ID": app_id,
        **topic_env(topics_prefix),
        "COPULSE_TOPIC_DLQ": f"{app_id}.dlq",
        "COPULSE_TOPIC_LATE": f"{app_id}.late",
        "COPULSE_CLICKHOUSE_URL": f"clickhouse://{CLICKHOUSE['user']}@{CLICKHOUSE['host']}:{CLICKHOUSE['port']}/{app_id}",
        "COPULSE_METRICS_PORT": str(free_port()),
        "COPULSE_WEB_PORT": str(free_port()),
        "COPULSE_WORKER_DATA_DIR": str(tmp / app_id),
    }
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def settings_from_env(env: dict[str, str]):
    from copulse.settings import Settings

    return Settings(**{k[len("COPULSE_"):].lower(): v for k, v in env.items() if k.startswith("COPULSE_")})


class Proc:
    """A subprocess in its own session (so we can stop it and its children by process group)."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self.started = time.time()
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, env=dict(os.environ, **env), stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=REPO_DIR)
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 20) -> None:
        if self.alive():
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        self._log.close()

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def stack_pids() -> dict[str, int]:
    """Service -> pid of the local stack's Kafka and ClickHouse (deploy/stack.sh pid; missing ones left out)."""
    pids = {}
    for service in ("kafka", "clickhouse"):
        out = subprocess.run([str(REPO_DIR / "deploy" / "stack.sh"), "pid", service], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip().isdigit():
            pids[service] = int(out.stdout.strip())
    return pids


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process (and its reaped children)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return sum(int(x) for x in fields[11:15]) / ticks
    except OSError:
        return 0.0


def worker_proc(env: dict[str, str], log_path: Path) -> Proc:
    return Proc([sys.executable, "-m", "copulse.cli", "worker", "--loglevel", "warning"], env, log_path)


def scrape(port: int, timeout: float = 2.0) -> dict[str, float]:
    """The worker's Prometheus metrics as {'name{labels}': value} (empty while it does not answer)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


def metric_sum(metrics: dict[str, float], name: str, **labels: str) -> float:
    total = 0.0
    for key, value in metrics.items():
        base = key.split("{", 1)[0]
        if base != name:
            continue
        if all(f'{k}="{v}"' in key for k, v in labels.items()):
            total += value
    return total


# ------------------------------------------------------------------------------------------ Kafka
def kafka_admin():
    from kafka.admin import KafkaAdminClient

    return KafkaAdminClient(bootstrap_servers=KAFKA, client_id="copulse-bench", request_timeout_ms=30000)


def create_topics(names: list[str], partitions: int) -> None:
    from kafka.admin import NewTopic

    admin = kafka_admin()
    try:
        existing = set(admin.list_topics())
        new = [NewTopic(name=n, num_partitions=partitions, replication_factor=1) for n in names if n not in existing]
        if new:
            admin.create_topics(new, timeout_ms=30000, wait_for_metadata=True)
    finally:
        admin.close()


def delete_topics(predicate) -> list[str]:
    admin = kafka_admin()
    try:
        doomed = [t for t in admin.list_topics() if predicate(t)]
        if doomed:
            admin.delete_topics(doomed, timeout_ms=30000)
        return doomed
    except Exception as exc:  # noqa: BLE001 - cleanup only
        progress(f"warning: could not delete topics: {exc}")
        return []
    finally:
        admin.close()


class OffsetWatch:
    """End offsets of the input topics and the committed offsets of a consumer group."""

    def __init__(self, topics: list[str]) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.consumer = KafkaConsumer(bootstrap_servers=KAFKA, enable_auto_commit=False, client_id="copulse-bench-watch")
        self.tps = [TopicPartition(t, p) for t in topics for p in sorted(self.consumer.partitions_for_topic(t) or ())]
        self.end = {tp: off for tp, off in self.consumer.end_offsets(self.tps).items()}
        self.admin = kafka_admin()

    @property
    def total(self) -> int:
        return sum(self.end.values())

    def committed(self, group: str) -> int:
        """Messages of the input topics committed by ``group`` (sum over partitions)."""
        try:
            if hasattr(self.admin, "list_group_offsets"):  # kafka-python >= 3
                offsets = self.admin.list_group_offsets(group).get(group) or {}
            else:
                offsets = self.admin.list_consumer_group_offsets(group)
        except Exception as exc:
            if "GroupIdNotFound" in type(exc).__name__ or "Coordinator" in type(exc).__name__:
                return 0
            raise
        return sum(min(offsets[tp].offset, self.end[tp]) for tp in self.tps if tp in offsets and offsets[tp].offset >= 0)

    def all_committed(self, group: str) -> bool:
        return self.committed(group) >= self.total

    def close(self) -> None:
        self.consumer.close()
        self.admin.close()


# ------------------------------------------------------------------------------------------ ClickHouse
def ch_client(database: str = "default"):
    from clickhouse_driver import Client

    return Client(**{**CLICKHOUSE, "database": database})


def drop_database(name: str) -> None:
    client = ch_client()
    try:
        client.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        client.disconnect()


def machine() -> str:
    import platform

    cores = os.cpu_count()
    try:
        with open("/proc/cpuinfo") as fh:
            model = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "?"
    mem = ""
    try:
        with open("/proc/meminfo") as fh:
            kb = int(next(line.split()[1] for line in fh if line.startswith("MemTotal")))
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration):
        pass
    return f"{cores} cores ({model}){mem}, Python {platform.python_version()}"
