"""The real worker on the real broker and ClickHouse with enterprise events: generator output (consumer events and
responses, valid, invalid, duplicate, late) produced to Kafka. Checked exactly against what was sent:

* every valid unique response (on time or late) is in the raw ``responses`` table once (FINAL / by event_id, as
  docs/clickhouse.md says), with every field as sent; the late ones, and only they, are on the late topic;
* every invalid message is in the DLQ with its reason and its original key and bytes;
* per input topic, consumed = processed + dead-lettered (the worker's own counters), and the responses topic's
  valid messages are folded, duplicate or late exactly as sent;
* the KPI rows equal the oracle: the enterprise counters count the responses of their own window, the consumer
  KPIs the consumer events alone.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from collections import Counter
from datetime import UTC, datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families

from copulse.generator import GeneratorOptions, generate_events, produce
from streams.errors import HEADER_REASON, HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION, HEADER_SOURCE_TOPIC
from tests.test_worker_exactness import expected, oracle_input, wait_for_finals
from tests.worker_harness import WorkerProcess, read_topic

pytestmark = pytest.mark.integration

START = datetime(2026, 1, 1, tzinfo=UTC)
RESPONSE_FIELDS = ("consumer_id", "occurred_ms", "channel", "region", "segment", "product_id", "category", "kind",
                   "in_reply_to", "team", "status", "text")


def worker_counters(env: dict) -> Counter:
    """(metric family, labels...) -> value of the worker's consumed / processed / dead-lettered / replayed / flush counters."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{env['COPULSE_METRICS_PORT']}/metrics", timeout=5).read().decode()
    counts: Counter = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "copulse_events_consumed_total":
                counts[("consumed", labels["topic"])] += sample.value
            elif sample.name == "copulse_events_processed_total":
                counts[("processed", labels["type"], labels["outcome"])] += sample.value
            elif sample.name == "copulse_events_dead_lettered_total":
                counts[("dead_lettered", labels["topic"])] += sample.value
            elif sample.name == "copulse_events_replayed_total":
                counts[("replayed", labels["type"])] += sample.value
            elif sample.name == "copulse_flushes_total":
                counts[("flushes",)] += sample.value
    return counts


def test_responses_land_once_in_clickhouse_bad_ones_in_the_dlq_and_kpis_equal_the_oracle(isolated_worker, tmp_path):
    iso = isolated_worker()
    settings, client, database = iso.settings, iso.client, iso.database
    options = GeneratorOptions(count=4000, seed=14, start_ms=int(START.timestamp() * 1000), consumers=300,
                               event_time_rate=25, out_of_order_s=20, late_fraction=0.03, duplicate_fraction=0.04,
                               invalid_fraction=0.05, enterprise_time_scale=1 / 20_000)
    out = tmp_path / "sent.jsonl"
    stats = produce(settings, generate_events(settings, options), out=out, progress=False)
    assert stats.acked == stats.sent == 4000
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    responses = [m for m in lines if m["type"] == "response"]
    sent_ok = [m for m in responses if m["expected"] != "invalid"]
    unique = {m["event"]["event_id"]: m["event"] for m in sent_ok}
    labels = Counter(m["expected"] for m in responses)
    assert len(unique) > 100 and labels["duplicate"] > 0 and labels["late"] > 0 and labels["invalid"] > 20, labels

    worker = WorkerProcess(iso.env, tmp_path / "worker.log")
    iso.workers.append(worker)
    worker.start()

    # the KPIs: the oracle folds responses into the enterprise counters only
    want = expected(settings, oracle_input(lines))
    assert wait_for_finals(client, database, want, worker, timeout=240) == want, worker.log_tail()

    # every valid unique response once, with every field as sent
    deadline = time.time() + 60
    stored: list = []
    while time.time() < deadline and len(stored) != len(unique):
        stored = client.execute(f"SELECT event_id, {', '.join(RESPONSE_FIELDS)} FROM `{database}`.responses FINAL")
        time.sleep(1)
    assert len(stored) == len({row[0] for row in stored}) == len(unique)
    assert {row[0]: dict(zip(RESPONSE_FIELDS, row[1:])) for row in stored} == {
        eid: {f: e[f] for f in RESPONSE_FIELDS} for eid, e in unique.items()}
    raw = client.execute(f"SELECT count(), uniqExact(event_id) FROM `{database}`.responses")[0]
    assert raw[1] == len(unique) and raw[0] >= len(unique)  # duplicates may be stored twice until a merge

    # every invalid message in the DLQ with its reason and original bytes; exactly the late responses on the late topic
    invalid = {(m["topic"], m["partition"], m["offset"]): m for m in lines if m["expected"] == "invalid"}
    dlq = read_topic(settings.kafka_bootstrap_servers, settings.topic_dlq, len(invalid), timeout=60)
    assert len(dlq) == len(invalid)
    for rec in dlq:
        h = {k: v.decode() for k, v in rec.headers}
        m = invalid[(h[HEADER_SOURCE_TOPIC], int(h[HEADER_SOURCE_PARTITION]), int(h[HEADER_SOURCE_OFFSET]))]
        assert h[HEADER_REASON] == m["reason"]
        assert rec.value == base64.b64decode(m["value_b64"])
        assert rec.key == (m["key"].encode() if m["key"] is not None else None)
    late_responses = client.execute(f"SELECT partition, offset, reason FROM `{database}`.rejected "
                                    "WHERE kind = 'late' AND topic = %(topic)s", {"topic": settings.topic_responses})
    assert sorted(late_responses) == sorted((m["partition"], m["offset"], "late_event") for m in responses
                                            if m["expected"] == "late")

    # counts add up per input topic: consumed = processed + dead-lettered; valid responses are all stored
    counts = worker_counters(iso.env)
    by_topic = Counter(m["topic"] for m in lines)
    dead_by_topic = Counter(topic for topic, _, _ in invalid)
    for event_type, topic in settings.source_topics.items():
        processed = sum(v for k, v in counts.items() if k[0] == "processed" and k[1] == event_type)
        assert counts[("consumed", topic)] == by_topic[topic] == processed + counts[("dead_lettered", topic)]
        assert counts[("dead_lettered", topic)] == dead_by_topic[topic]
    on_responses_topic = [m for m in lines if m["topic"] == settings.topic_responses and m["expected"] != "invalid"]
    assert {outcome: counts[("processed", "response", outcome)] for outcome in ("folded", "duplicate", "late")} == {
        outcome: sum(m["expected"] == label for m in on_responses_topic)
        for outcome, label in (("folded", "valid"), ("duplicate", "duplicate"), ("late", "late"))}
    print(f"responses sent {dict(labels)}; stored once {len(stored)} (raw rows before merges {raw[0]}); "
          f"DLQ {len(dlq)} of which responses topic {dead_by_topic[settings.topic_responses]}; KPI keys {len(want)}")
