"""The real worker on the real broker and ClickHouse: final KPI rows equal, exactly, what the independent
oracle computes from the messages that were sent — also when the worker is killed with SIGKILL mid-stream
and restarted several times. And for N valid + M invalid messages, exactly M land in the DLQ with the right
reason and their original bytes, and exactly N are processed."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from clickhouse_driver import Client

from copulse.settings import Settings, slice_dimensions
from streams.codec import encode
from streams.errors import HEADER_REASON, HEADER_SOURCE_OFFSET
from tests.oracle import expected_kpis
from tests.test_engine import random_messages
from tests.worker_harness import WorkerProcess, faust_worker, final_kpis, produce, read_topic, worker_env

pytestmark = pytest.mark.integration


def avro_record(msg: dict) -> dict:
    e = dict(msg["event"])
    rec = {k: v for k, v in e.items() if k not in ("occurred_ms", "amount_minor")}
    rec["occurred_at"] = datetime.fromtimestamp(e["occurred_ms"] / 1000, UTC)
    rec["schema_version"] = 1
    if msg["type"] == "purchase":
        rec["amount"] = Decimal(e["amount_minor"]).scaleb(-2)
    return rec


def send_events(kafka_bootstrap: str, settings: Settings, msgs: list[dict]) -> list[dict]:
    """Produce the messages keyed by consumer; returns them with the partition/offset Kafka gave them."""
    wire = [(m["type"], m["event"]["consumer_id"].encode(), encode(m["type"], avro_record(m))) for m in msgs]
    placed = produce(kafka_bootstrap, settings.source_topics, wire)
    return [dict(m, partition=p["partition"], offset=p["offset"]) for m, p in zip(msgs, placed)]


def expected(settings: Settings, sent: list[dict]) -> dict:
    slices = [(s, slice_dimensions(s)) for s in settings.slices]
    return expected_kpis(sent, settings.granularity_seconds, slices, settings.allowed_lateness_seconds)


def wait_for_finals(client: Client, database: str, want: dict, worker: WorkerProcess, timeout: float = 120) -> dict:
    """Poll the newest rows until they equal ``want`` (returns at once then; hour windows of these tests stay
    provisional until an hour of wall clock passes, so finality is asserted by tests/test_worker_operations.py
    with minute windows) or until the timeout."""
    deadline = time.time() + timeout
    got: dict = {}
    while time.time() < deadline:
        assert worker.alive(), f"worker died:\n{worker.log_tail()}"
        try:
            got, not_final = final_kpis(client, database)
        except Exception:  # database not migrated yet
            got, not_final = {}, 1
        if got == want:
            return got
        time.sleep(2)
    return got


@pytest.fixture
def isolated(isolated_worker):
    """(env, Settings, ClickHouse client, database, workers list) of one isolated worker environment."""
    iso = isolated_worker()
    return iso.env, iso.settings, iso.client, iso.database, iso.workers


def test_final_kpis_equal_oracle(isolated, kafka_bootstrap, tmp_path):
    env, settings, client, database, workers = isolated
    sent = send_events(kafka_bootstrap, settings, random_messages(101, 1500, consumers=200))
    worker = WorkerProcess(env, tmp_path / "worker.log")
    workers.append(worker)
    worker.start()
    want = expected(settings, sent)
    got = wait_for_finals(client, database, want, worker)
    assert got == want


@pytest.mark.slow
def test_final_kpis_equal_oracle_after_kill_9(isolated, kafka_bootstrap, tmp_path):
    env, settings, client, database, workers = isolated
    rng = random.Random(7)
    msgs = random_messages(202, 4000, consumers=300)
    half = len(msgs) // 2
    sent = send_events(kafka_bootstrap, settings, msgs[:half])
    worker = WorkerProcess(env, tmp_path / "worker.log")
    workers.append(worker)
    worker.start()
    for i in range(3):
        time.sleep(rng.uniform(8, 14))  # start-up, rebalance, then mid-stream processing
        if i == 1:
            sent += send_events(kafka_bootstrap, settings, msgs[half:])
        worker.kill9()
        worker.start()
    want = expected(settings, sent)
    got = wait_for_finals(client, database, want, worker, timeout=240)
    assert got == want


INVALID = [
    ("bad_magic_byte", lambda key, value: (key, b"\x01" + value[1:])),
    ("unknown_schema_id", lambda key, value: (key, b"\x00\x00\x00\x27\x0f" + value[5:])),
    ("undecodable", lambda key, value: (key, value[:7])),
    ("missing_key", lambda key, value: (None, value)),
    ("key_mismatch", lambda key, value: (b"someone-else", value)),
]


def test_n_valid_plus_m_invalid(isolated, kafka_bootstrap, tmp_path):
    env, settings, client, database, workers = isolated
    valid = random_messages(303, 300, consumers=50, late_every=10**9, dup_every=10**9)
    wire, reasons = [], {}
    for i, m in enumerate(valid):
        key, value = m["event"]["consumer_id"].encode(), encode(m["type"], avro_record(m))
        wire.append((m["type"], key, value))
        if i % 10 == 0:  # one invalid variant of every tenth message
            reason, mutate = INVALID[(i // 10) % len(INVALID)]
            wire.append((m["type"], *mutate(key, value)))
            reasons[len(wire) - 1] = reason
    placed = produce(kafka_bootstrap, settings.source_topics, wire)
    n, m = len(valid), len(reasons)
    worker = WorkerProcess(env, tmp_path / "worker.log")
    workers.append(worker)
    worker.start()
    dlq = read_topic(kafka_bootstrap, settings.topic_dlq, m, timeout=120)
    assert len(dlq) == m, worker.log_tail()
    by_source = {(settings.source_topics[p["type"]], p["partition"], p["offset"]): i for i, p in enumerate(placed)}
    for rec in dlq:
        headers = dict(rec.headers)
        src = dict(rec.headers)
        i = by_source[(src["copulse.source.topic"].decode(), int(src["copulse.source.partition"]),
                       int(headers[HEADER_SOURCE_OFFSET]))]
        assert headers[HEADER_REASON].decode() == reasons[i]
        assert (rec.key, rec.value) == (wire[i][1], wire[i][2])  # original bytes, unchanged
    deadline = time.time() + 60
    processed = 0
    while time.time() < deadline and processed != n:
        processed = sum(client.execute(f"SELECT uniqExact(event_id) FROM `{database}`.{t}")[0][0]
                        for t in ("purchases", "usage_events", "feedback"))
        time.sleep(1)
    assert processed == n


def generate(env: dict, tmp_path, count: int, seed: int, start: str = "2026-01-01T00:00:00Z") -> list[dict]:
    """Run the real `copulse generate` into the isolated topics; returns its JSONL lines."""
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / f"gen-{seed}.jsonl"
    subprocess.run(
        [sys.executable, "-m", "copulse.cli", "generate", "--count", str(count), "--rate", "0",
         "--event-time-rate", "25", "--consumers", "400", "--seed", str(seed), "--start", start,
         "--out-of-order-seconds", "20", "--late-fraction", "0.02", "--duplicate-fraction", "0.03",
         "--invalid-fraction", "0.03", "--out", str(out), "--quiet"],
        env=dict(os.environ, **env), check=True, timeout=300)
    return [json.loads(line) for line in out.read_text().splitlines()]


def oracle_input(lines: list[dict]) -> list[dict]:
    """Valid, duplicate and late messages as the oracle reads them (invalid ones are not its business)."""
    return [{"type": m["type"], "partition": m["partition"], "offset": m["offset"], "event": m["event"]}
            for m in lines if m["expected"] != "invalid"]


def test_faust_command_line_runs_the_same_worker(isolated, kafka_bootstrap, tmp_path):
    """The app is module-level, so Faust's own `faust -A streams.app worker` runs the worker (start-up included)."""
    env, settings, client, database, workers = isolated
    sent = send_events(kafka_bootstrap, settings, random_messages(102, 400, consumers=50))
    worker = WorkerProcess(env, tmp_path / "faust-worker.log", command=faust_worker(tmp_path / "faust-data"))
    workers.append(worker)
    worker.start()
    want = expected(settings, sent)
    assert wait_for_finals(client, database, want, worker) == want


@pytest.mark.slow
def test_generator_events_exact_after_repeated_kill_9(isolated, kafka_bootstrap, tmp_path):
    """Generator output (out of order within lateness, duplicates, late and invalid messages) through a
    worker killed with SIGKILL three times: final rows equal the oracle, the DLQ holds every invalid
    message, the late topic every late one, and consumed = processed + dead-lettered."""
    from tests.oracle import classify

    env, settings, client, database, workers = isolated
    lines = generate(env, tmp_path, 3000, seed=21)
    sent = oracle_input(lines)
    _, late, dupes = classify(sent, settings.allowed_lateness_seconds * 1000, settings.granularity_seconds[0] * 1000)
    labels = [m["expected"] for m in lines if m["type"] != "response"]  # responses are stored raw, never late
    assert len(late) == labels.count("late") and len(dupes) == labels.count("duplicate")

    worker = WorkerProcess(env, tmp_path / "worker.log")
    workers.append(worker)
    worker.start()
    rng = random.Random(3)
    for _ in range(3):
        time.sleep(rng.uniform(7, 12))
        worker.kill9()
        worker.start()
    want = expected(settings, sent)
    assert wait_for_finals(client, database, want, worker, timeout=240) == want
    invalid = [m for m in lines if m["expected"] == "invalid"]
    rejected = dict(client.execute(f"SELECT kind, uniqExact(topic, partition, offset) FROM `{database}`.rejected GROUP BY kind"))
    assert rejected.get("dlq") == len(invalid) and rejected.get("late") == len(late)
    by_pos = {(m["topic"], m["partition"], m["offset"]): m["reason"] for m in invalid}
    stored = client.execute(f"SELECT topic, partition, offset, any(reason) FROM `{database}`.rejected "
                            "WHERE kind = 'dlq' GROUP BY topic, partition, offset")
    assert {(t, p, o): r for t, p, o, r in stored} == by_pos
