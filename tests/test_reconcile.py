"""`copulse reconcile` on the real broker and ClickHouse, with a real worker: it exits 0 when ClickHouse
matches the topics, finds planted differences (a final row altered, a final row and raw events deleted),
`--repair` fixes them and a second run exits 0; a range outside the topics' retention or without data is
refused with a message that says what to do."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest
from kafka import KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient

from streams.kpis import kpi_row
from streams.codec import encode
from streams.kpis import COUNTERS, KEY_COLUMNS, ROW_COLUMNS
from tests.test_engine import T0, random_messages
from tests.test_worker_exactness import avro_record, send_events

pytestmark = pytest.mark.integration

FROM, TO = "2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z"  # T0 .. T0 + 1h: every test event is inside
CLOSE_MS = T0 + 2 * 3600_000  # closer events: far enough ahead to close every window of the range at once
COLS = ", ".join(f"`{c}`" for c in ROW_COLUMNS)
VERSION, FINAL = ROW_COLUMNS.index("version"), ROW_COLUMNS.index("is_final")
EVENTS = len(KEY_COLUMNS)  # index of the first counter, "events"
REVENUE = EVENTS + COUNTERS.index("revenue_minor")


def reconcile(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "copulse.cli", "reconcile", "--from", FROM, "--to", TO, *args],
                          env=dict(os.environ, **env), capture_output=True, text=True, timeout=120)


def send_closers(bootstrap: str, settings) -> None:
    """One valid event per source partition at T0 + 2h: every window of [T0, T0 + 1h) closes by event time
    (no waiting for the idle timeout); their own windows stay open, outside the audited range."""
    common = dict(occurred_ms=CLOSE_MS, channel="web", region="eu", segment=None, product_id="p1", category="shoes")
    own = {"purchase": dict(order_id="close", quantity=1, amount_minor=100, currency="EUR"),
           "usage": dict(session_id="close", action="session_start", feature=None, duration_ms=None, co_creation=False),
           "feedback": dict(kind="review", score=None, text=None, in_reply_to=None)}
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for p in range(settings.partitions):
        for etype, fields in own.items():
            cid = f"closer{p}"
            event = dict(common, event_id=f"close-{etype}-{p}", consumer_id=cid, **fields)
            producer.send(settings.source_topics[etype], key=cid.encode(), partition=p,
                          value=encode(etype, avro_record({"type": etype, "event": event})))
    producer.flush()
    producer.close()


def populated(iso, kafka_bootstrap, seed: int) -> list[dict]:
    """Events in Kafka, a real worker that stored them, every window of the range final in ClickHouse."""
    sent = send_events(kafka_bootstrap, iso.settings, random_messages(seed, 700, consumers=60))
    send_closers(kafka_bootstrap, iso.settings)
    worker = iso.worker()
    worker.start()
    partitions = {m["partition"] for m in sent}
    deadline = time.time() + 90
    while time.time() < deadline:
        assert worker.alive(), f"worker died:\n{worker.log_tail()}"
        try:
            final = iso.client.execute(
                f"SELECT uniqExact(partition) FROM `{iso.database}`.kpi_windows WHERE granularity_seconds = 3600 "
                "AND window_start = toDateTime(%(t0)s) AND slice = 'overall' AND is_final = 1", {"t0": T0 // 1000})[0][0]
        except Exception:  # database not migrated yet
            final = 0
        if final == len(partitions):
            return sent
        time.sleep(1)
    pytest.fail(f"the worker did not close the windows of the range in 90 s:\n{worker.log_tail()}")


def newest(client, database: str, where: str, params: dict) -> dict[tuple, tuple]:
    out: dict[tuple, tuple] = {}
    for row in client.execute(f"SELECT {COLS} FROM `{database}`.kpi_windows WHERE {where}", params):
        key = row[:EVENTS]
        if key not in out or row[VERSION] >= out[key][VERSION]:
            out[key] = row
    return out


def wait_for_mutations(client, database: str) -> None:
    deadline = time.time() + 30
    while client.execute("SELECT count() FROM system.mutations WHERE database = %(db)s AND is_done = 0",
                         {"db": database})[0][0]:
        assert time.time() < deadline, "ALTER ... DELETE did not finish in 30 s"
        time.sleep(0.2)


def test_reconcile_exits_0_when_clickhouse_matches(isolated_worker, kafka_bootstrap):
    iso = isolated_worker()
    populated(iso, kafka_bootstrap, seed=11)
    done = reconcile(iso.env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "result: ClickHouse matches the topics" in done.stdout
    assert " 0 missing" in done.stdout  # raw events
    for line in done.stdout.splitlines():  # the summary table: nothing differs, is missing or extra
        if line.strip().startswith("total"):
            cells = line.split()
            assert int(cells[3]) > 100 and cells[3] == cells[2] and cells[4:7] == ["0", "0", "0"], line
    # one granularity only
    done = reconcile(iso.env, "--granularity", "1h")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "granularities 1h," in done.stdout


MINUTE = "granularity_seconds = 60 AND slice = 'overall' AND window_start = toDateTime(%(t0)s) + 120"
HOUR = "granularity_seconds = 3600 AND slice = 'channel' AND window_start = toDateTime(%(t0)s)"


def test_reconcile_finds_planted_differences_and_repair_fixes_them(isolated_worker, kafka_bootstrap):
    iso = isolated_worker()
    populated(iso, kafka_bootstrap, seed=12)
    client, db = iso.client, iso.database
    t0 = {"t0": T0 // 1000}
    # 1. a final row altered: a newer "final" version of a 1m overall partial with wrong counters
    minute = newest(client, db, MINUTE, t0)
    altered_key, original = sorted(minute.items())[0]
    assert original[FINAL] == 1
    bad = list(original)
    bad[EVENTS] += 1
    bad[REVENUE] += 12_345
    bad[VERSION] += 10
    client.execute(f"INSERT INTO `{db}`.kpi_windows ({COLS}) VALUES", [kpi_row(**dict(zip(ROW_COLUMNS, bad)))], types_check=True)
    # 2. a final row deleted: every version of a 1h channel partial
    hour = newest(client, db, HOUR, t0)
    deleted_key, deleted = sorted(hour.items())[0]
    client.execute(f"ALTER TABLE `{db}`.kpi_windows DELETE WHERE {HOUR} AND channel = %(ch)s AND partition = %(p)s",
                   {**t0, "ch": deleted_key[KEY_COLUMNS.index("channel")],
                    "p": deleted_key[KEY_COLUMNS.index("partition")]})
    # 3. raw events deleted
    gone = client.execute(f"SELECT event_id, source_partition, source_offset FROM `{db}`.purchases "
                          "WHERE occurred_ms >= %(t0)s AND occurred_ms < %(t1)s ORDER BY event_id LIMIT 3",
                          {"t0": T0, "t1": T0 + 3600_000})
    client.execute(f"ALTER TABLE `{db}`.purchases DELETE WHERE event_id IN %(ids)s", {"ids": tuple(g[0] for g in gone)})
    wait_for_mutations(client, db)

    found = reconcile(iso.env)
    assert found.returncode == 1, found.stdout + found.stderr
    out = found.stdout
    assert f"events {original[EVENTS]} / {original[EVENTS] + 1}" in out, out
    assert f"revenue_minor {original[REVENUE]} / {original[REVENUE] + 12345}" in out, out
    assert "differs" in out and "no row in ClickHouse" in out, out
    assert "3 missing (purchases 3)" in out, out
    assert "0 late with reason window_closed" in out, out  # what was left out as the worker did is said

    repaired = reconcile(iso.env, "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "repair: wrote 2 corrected final KPI rows" in repaired.stdout
    assert "3 missing raw events (purchases 3)" in repaired.stdout

    again = reconcile(iso.env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "result: ClickHouse matches the topics" in again.stdout
    # the rows are right: the original counters, final, versions above what was stored
    fixed = newest(client, db, MINUTE, t0)[altered_key]
    assert fixed[EVENTS:VERSION] == original[EVENTS:VERSION] and fixed[FINAL] == 1
    assert fixed[VERSION] == bad[VERSION] + 1
    restored = newest(client, db, HOUR, t0)[deleted_key]
    assert restored[EVENTS:VERSION] == deleted[EVENTS:VERSION] and restored[FINAL] == 1
    back = client.execute(f"SELECT event_id, source_partition, source_offset FROM `{db}`.purchases "
                          "WHERE event_id IN %(ids)s ORDER BY event_id", {"ids": tuple(g[0] for g in gone)})
    assert back == gone


def test_reconcile_refuses_ranges_without_data_or_beyond_retention(isolated_worker, kafka_bootstrap):
    iso = isolated_worker()
    sent = send_events(kafka_bootstrap, iso.settings, random_messages(13, 200, consumers=30))
    bad = reconcile(iso.env, "--granularity", "7m")
    assert bad.returncode == 2 and "is not a configured window size; use one of 1m, 1h" in bad.stderr

    empty = subprocess.run([sys.executable, "-m", "copulse.cli", "reconcile", "--from", "2020-01-01T00:00Z",
                            "--to", "2020-01-02T00:00Z"], env=dict(os.environ, **iso.env), capture_output=True,
                           text=True, timeout=120)
    assert empty.returncode == 2, empty.stdout + empty.stderr
    assert "no valid event with event time in [2020-01-01T00:00:00Z, 2020-01-02T00:00:00Z)" in empty.stderr
    first = min(m["event"]["occurred_ms"] for m in sent)
    assert f"have event times from {datetime.fromtimestamp(first // 1000, UTC):%Y-%m-%dT%H:%M:%SZ} to" in empty.stderr
    assert "pick --from/--to inside the range that has data" in empty.stderr

    topic = iso.settings.topic_purchases
    partition = next(m["partition"] for m in sent if m["type"] == "purchase")
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="copulse-tests")
    try:
        admin.delete_records({TopicPartition(topic, partition): 1}, timeout_ms=30000)  # retention deleted offset 0
    finally:
        admin.close()
    gone = reconcile(iso.env)
    assert gone.returncode == 2, gone.stdout + gone.stderr
    assert "is older than what Kafka still keeps" in gone.stderr
    assert f"{topic} partition {partition}: first kept offset 1" in gone.stderr
    assert "Pick a --from at or after" in gone.stderr


def test_recompute_equals_the_oracle_and_leaves_out_what_the_worker_rejected():
    """No broker: the recomputation alone, on messages with known outcomes. It equals the independent oracle;
    an offset the worker rejected as window_closed is left out (as if never folded) but still expected raw."""
    from collections import defaultdict

    from copulse.reconcile import KafkaRead, Message, Progress, recompute
    from copulse.settings import Settings, slice_dimensions
    from sinks.rows import EVENT_TABLES
    from tests.oracle import expected_kpis
    from tests.test_engine import to_event

    settings = Settings(granularities=["1m", "1h"], allowed_lateness_seconds=30)
    msgs = random_messages(14, 1500, consumers=50)
    messages: dict[tuple[str, int], list[Message]] = defaultdict(list)
    for i, m in enumerate(msgs):
        messages[(m["type"], m["partition"])].append(Message(m["type"], m["offset"], i, to_event(m)))
    keys = list(messages)
    read = KafkaRead(messages, dict(settings.source_topics), dict.fromkeys(keys, 0), dict.fromkeys(keys, 0),
                     {k: len(v) for k, v in messages.items()})
    slices = [(s, slice_dimensions(s)) for s in settings.slices]

    def summed(finals: dict) -> dict:
        out: dict = defaultdict(lambda: dict.fromkeys(COUNTERS, 0))
        for row in finals.values():
            ws = row.window_start * 1000
            values = tuple(row[KEY_COLUMNS.index(d)] for d in slice_dimensions(row[2]))
            for i, c in enumerate(COUNTERS):
                out[(row[0], ws, row[2], values)][c] += row[EVENTS + i]
        return dict(out)

    everything = (0, 2**62)
    result = recompute(settings, read, messages, {}, {}, everything, Progress(open(os.devnull, "w")))
    full = summed(result.finals)
    assert full == expected_kpis(msgs, settings.granularity_seconds, slices, 30)

    victim = msgs[700]  # folded by the engine; pretend the worker found its window closed
    excluded = {(settings.source_topics[victim["type"]], victim["partition"], victim["offset"]): "window_closed"}
    result = recompute(settings, read, messages, excluded, {}, everything, Progress(open(os.devnull, "w")))
    rest = [m for m in msgs if m is not victim]
    assert summed(result.finals) == expected_kpis(rest, settings.granularity_seconds, slices, 30) != full
    assert result.outcomes["worker window_closed"] == 1
    assert victim["event"]["event_id"] in result.raw[EVENT_TABLES[victim["type"]]]


def test_first_purchases_before_the_read_make_purchasers_returning():
    """A purchase before the read start (from the raw table) makes a purchaser of the range returning, as the
    worker's state (which has seen the whole topic) does."""
    from copulse.reconcile import KafkaRead, Message, Progress, recompute
    from copulse.settings import Settings
    from tests.test_engine import to_event

    settings = Settings(granularities=["1m"], slices=["overall"])
    event = dict(event_id="e1", consumer_id="c1", occurred_ms=T0 + 5000, channel="web", region="eu", segment=None,
                 product_id="p1", category="shoes", order_id="o1", quantity=1, amount_minor=1234, currency="EUR")
    messages = {("purchase", 0): [Message("purchase", 7, 0, to_event({"type": "purchase", "event": event}))]}
    read = KafkaRead(messages, dict(settings.source_topics), {("purchase", 0): 0}, {("purchase", 0): 7},
                     {("purchase", 0): 8})
    returning = EVENTS + COUNTERS.index("returning_purchasers")
    for first, want in (({}, 0), ({0: {"c1": T0 - 86400_000}}, 1)):
        result = recompute(settings, read, messages, {}, first, (0, 2**62), Progress(open(os.devnull, "w")))
        (row,) = result.finals.values()
        assert (row[EVENTS], row[REVENUE], row[returning]) == (1, 1234, want)
