"""The enterprise side through the real broker, the real worker process and the real ClickHouse, with faults.

The generator's consumer activity and enterprise events (responses, idea status changes, closed cases; valid,
duplicate, late and invalid ones; answers within the window of the feedback they answer and after it closed)
are produced to Kafka at a steady rate while the worker is killed with SIGKILL three times and restarted. Some
answered feedback is held back: part of it is sent only at the very end, after the responses to it (so it
arrives late), part of it is never sent (its responses answer unknown feedback). Then, exactly:

* every unique valid event is in its raw table, and every enterprise event once, with every field as sent;
* every invalid message is in the dead-letter topic with its reason and its original key and bytes, and in the
  ``rejected`` table once; every event the oracle calls late is in ``rejected`` as late, nothing else;
* counts add up: the final worker process's own counters say consumed = processed + dead-lettered + replayed
  (the earlier processes died with theirs), and across the kills the persisted outcome of every message sent
  is one of dead-lettered, stored, duplicate (sent = dead letters + unique valid events + duplicates);
* the feedback-loop and idea-funnel views (backlog, unmatched responses, status changes, "you said, we did"
  included) equal tests/feedback_loop_oracle.py;
* ``kpi_final`` equals tests/oracle.py for every counter the oracle computes (whatever counters it computes:
  the comparison takes their names from the oracle), and no window is left open.

Nothing depends on timing: kills are triggered by conditions (stream progress, and the worker's own counters of
messages handled and flushes completed: one kill most likely before anything was persisted, two after state was
persisted, which the last process must restore), never by sleeps; the producer never pauses long enough for a
source to turn idle (docs/reliability.md), so no event's fate depends on the wall clock.
"""

from __future__ import annotations

import base64
import io
import json
import random
import threading
import time
import urllib.error
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from clickhouse_driver.errors import ServerException
from kafka import KafkaConsumer, TopicPartition

from copulse.generator import INVALID, VALID, GeneratedMessage, GeneratorOptions, generate_events, produce
from copulse.settings import DIMENSIONS, Settings, slice_dimensions
from sinks.rows import EVENT_TABLES
from streams.errors import HEADER_REASON, HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION, HEADER_SOURCE_TOPIC, LATE_EVENT
from tests.feedback_loop_oracle import FeedbackLoopOracle
from tests.oracle import classify
from tests.test_feedback_loop import actual_views, expected_views
from tests.test_loyalty import assert_views_equal
from tests.test_worker_exactness import expected, oracle_input
from tests.test_worker_operations import Producer
from tests.test_worker_responses import RESPONSE_FIELDS, worker_counters

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = 14
MESSAGES = 5000
#: one-minute windows, 10 s lateness: the last window closes within about 20 s of wall clock after the stream
FAULTS = {"COPULSE_GRANULARITIES": '["1m"]', "COPULSE_ALLOWED_LATENESS_SECONDS": "10"}
OPTIONS = dict(count=MESSAGES, seed=SEED, consumers=300, event_time_rate=2, out_of_order_s=5, late_fraction=0.03,
               duplicate_fraction=0.04, invalid_fraction=0.05,
               enterprise_time_scale=1 / 4000)  # answers within seconds to minutes, ideas shipped within ~15 min
START = datetime(2026, 1, 1, tzinfo=UTC)
#: the newest event is placed this far into its finest window, so the last window closes soon after the stream
NEWEST_EVENT_INTO_WINDOW_MS = 57_000
HELD_BACK = 6  # answered feedback sent after its answers, and as many never sent
RATE = 150  # messages per second of wall clock
#: the kills: once this share of the stream was handed to the producer and the running worker handled messages
#: and then completed this many flushes (0: most likely before it persisted anything, a restart from scratch;
#: 2 or 3: after it persisted state, a restart that restores it and resumes where it says)
KILLS = ((0.15, 0), (0.45, 2), (0.75, 3))
#: this share of the stream past a kill's share, the producer waits until that kill happened, so every kill falls
#: mid-stream however slowly a worker restarts; it waits only until the worker it waits for has handled messages
#: and flushed up to three times (seconds, well within the idle timeout), so no source turns idle meanwhile
GATE_AFTER = 0.2


# ============================================================================ the stream
@dataclass
class Stream:
    messages: list[GeneratedMessage]  # in send order
    sent_after_answers: list[str]  # event ids of answered feedback sent at the end, after the answers
    never_sent: list[str]  # event ids of answered feedback never sent


def generated(settings: Settings, start_ms: int) -> list[GeneratedMessage]:
    return list(generate_events(settings, GeneratorOptions(start_ms=start_ms, **OPTIONS)))


def build_stream(settings: Settings) -> Stream:
    """The generator's messages, the newest event placed late in its window, some answered feedback held back."""
    finest_ms = settings.granularity_seconds[0] * 1000
    start_ms = int(START.timestamp() * 1000)
    newest = max(m.event["occurred_ms"] for m in generated(settings, start_ms) if m.expected != INVALID)
    messages = generated(settings, start_ms + (NEWEST_EVENT_INTO_WINDOW_MS - newest % finest_ms) % finest_ms)
    answered = {m.event["in_reply_to"] for m in messages if m.type == "response" and m.expected != INVALID}
    resent = {m.duplicate_of for m in messages}
    candidates = [m for m in messages[: len(messages) // 2] if m.type == "feedback" and m.expected == VALID
                  and m.event["event_id"] in answered and m.seq not in resent]  # fmt: skip
    held = random.Random(SEED).sample(candidates, 2 * HELD_BACK)
    later, never = sorted(held[:HELD_BACK], key=lambda m: m.seq), held[HELD_BACK:]
    held_seqs = {m.seq for m in held}
    return Stream([m for m in messages if m.seq not in held_seqs] + later,
                  [m.event["event_id"] for m in later], [m.event["event_id"] for m in never])


class GatedProducer(Producer):
    """Sends the messages with the generator's own producer at ``rate`` a second; ``finish()`` returns its JSONL
    lines (partition and offset of every message). Before message ``gate_at[k]`` it waits until ``gates[k][1]``
    is set."""

    def __init__(self, settings: Settings, messages: list[GeneratedMessage], rate: float, gate_at: list[int]) -> None:
        super().__init__(settings.kafka_bootstrap_servers, settings, messages, rate)
        self.settings = settings
        self.gates = [(at, threading.Event()) for at in gate_at]
        self.handed = 0  # messages handed to the producer so far

    def _gated(self):
        for i, msg in enumerate(self.msgs):
            for at, opened in self.gates:
                if i >= at and not opened.wait(timeout=180):
                    raise TimeoutError(f"gate at message {at} never opened")
            yield msg
            self.handed = i + 1

    def run(self) -> None:
        out = io.StringIO()
        try:
            stats = produce(self.settings, self._gated(), out=out, rate=self.rate, progress=False)
            assert stats.acked == stats.sent == len(self.msgs), stats
            self.sent = [json.loads(line) for line in out.getvalue().splitlines()]
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.error = exc


# ============================================================================ waiting and reading
def wait_until(condition: Callable[[], bool], timeout: float, what: str, alive: Callable[[], None],
               every: float = 0.2) -> None:
    """Poll ``condition`` every ``every`` seconds until it holds; fail after ``timeout`` seconds or as soon as
    ``alive`` fails."""
    deadline = time.monotonic() + timeout
    while not condition():
        alive()
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(every)


def handled_by(env: dict) -> int:
    """Messages the running worker process handled (its own counters; 0 before its metrics server is up)."""
    try:
        counts = worker_counters(env)
    except (OSError, urllib.error.URLError):
        return 0
    return int(sum(v for k, v in counts.items() if k[0] in ("processed", "dead_lettered", "replayed")))


def flushes_of(env: dict) -> int:
    """Flushes (rows stored, state persisted, offsets acked) the running worker process completed."""
    try:
        return int(worker_counters(env)[("flushes",)])
    except (OSError, urllib.error.URLError):
        return 0


def kpi_final(client, database: str, counters: tuple[str, ...]) -> tuple[dict, int]:
    """({(granularity s, window start ms, slice, slice values): {counter: value}} of ``kpi_final``, number of
    windows of ``kpi`` still open)."""
    keys = ("granularity_seconds", "window_start", "slice", *DIMENSIONS)
    out: dict[tuple, dict[str, int]] = {}
    for row in client.execute(f"SELECT {', '.join(keys + counters)} FROM `{database}`.kpi_final"):
        granularity, start, name = row[:3]
        dims = dict(zip(DIMENSIONS, row[3 : len(keys)]))
        key = (granularity, int(start.replace(tzinfo=UTC).timestamp() * 1000), name,
               tuple(dims[d] for d in slice_dimensions(name)))  # fmt: skip
        assert key not in out, f"kpi_final: {key} twice"
        out[key] = {c: int(v) for c, v in zip(counters, row[len(keys) :])}
    still_open = client.execute(f"SELECT count() FROM `{database}`.kpi WHERE is_final = 0")[0][0]
    return out, still_open


def stored_ids(client, database: str) -> dict[str, set[str]]:
    """event type -> distinct event ids in its raw table."""
    return {t: {eid for (eid,) in client.execute(f"SELECT DISTINCT event_id FROM `{database}`.{table}")}
            for t, table in EVENT_TABLES.items()}  # fmt: skip


def rejected(client, database: str, kind: str) -> dict[tuple, str]:
    """(topic, partition, offset) -> reason of the messages rejected as ``kind`` (replays counted once)."""
    rows = client.execute(f"SELECT topic, partition, offset, groupUniqArray(reason) FROM `{database}`.rejected "
                          "WHERE kind = %(kind)s GROUP BY topic, partition, offset", {"kind": kind})  # fmt: skip
    assert all(len(reasons) == 1 for *_, reasons in rows), "a message rejected with two reasons"
    return {(t, p, o): reasons[0] for t, p, o, reasons in rows}


def read_dead_letters(bootstrap: str, topic: str, sources: set[tuple], timeout: float = 60) -> list:
    """Every record of the dead-letter topic, read until each of ``sources`` (topic, partition, offset) was seen
    and the topic's end is reached (or the timeout)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    records: list = []
    seen: set[tuple] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records += batch
            seen |= {source_of(r) for r in batch}
        ends = consumer.end_offsets(parts)
        if sources <= seen and all(consumer.position(tp) >= ends[tp] for tp in parts):
            break
    consumer.close()
    return records


def source_of(record) -> tuple:
    h = {k: v.decode() for k, v in record.headers}
    return h[HEADER_SOURCE_TOPIC], int(h[HEADER_SOURCE_PARTITION]), int(h[HEADER_SOURCE_OFFSET])


@dataclass
class Outcome:
    """What the pipeline persisted (or what the oracles say it must persist)."""

    kpis: dict[tuple, dict[str, int]]  # kpi_final: (granularity s, window start ms, slice, values) -> counters
    stored: dict[str, set[str]]  # event type -> distinct event ids in its raw table
    dead_letters: dict[tuple, str]  # (topic, partition, offset) -> reason, rejected as 'dlq'
    late: dict[tuple, str]  # (topic, partition, offset) -> reason, rejected as 'late'
    still_open: int = 0  # windows of ``kpi`` not final

    @classmethod
    def read(cls, client, database: str, counters: tuple[str, ...]) -> Outcome:
        kpis, still_open = kpi_final(client, database, counters)
        return cls(kpis, stored_ids(client, database), rejected(client, database, "dlq"),
                   rejected(client, database, "late"), still_open)  # fmt: skip

    def differences(self, got: Outcome) -> str:
        def wrong(want: dict, have: dict) -> list:
            return sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))

        kpis = wrong(self.kpis, got.kpis)
        stored = {t: len(ids ^ got.stored.get(t, set())) for t, ids in self.stored.items()}
        return (f"{len(kpis)} of {len(self.kpis)} window-slices differ from the oracle (e.g. "
                f"{[(k, self.kpis.get(k), got.kpis.get(k)) for k in kpis[:2]]}); {got.still_open} windows open; raw "
                f"events missing or extra per type {stored}; dead letters missing, extra or with another reason "
                f"{len(wrong(self.dead_letters, got.dead_letters))}; late ones {len(wrong(self.late, got.late))} "
                f"(e.g. {[(k, self.late.get(k), got.late.get(k)) for k in wrong(self.late, got.late)[:3]]})")


# ============================================================================ the test
def test_enterprise_events_exact_through_kill_9(isolated_worker, kafka_bootstrap):
    iso = isolated_worker(**FAULTS)
    settings, client, database = iso.settings, iso.client, iso.database
    stream = build_stream(settings)
    total = len(stream.messages)
    kill_at = [int(share * total) for share, _ in KILLS]
    producer = GatedProducer(settings, stream.messages, RATE, [at + int(GATE_AFTER * total) for at in kill_at])

    worker = iso.worker()

    def alive() -> None:
        assert worker.alive(), f"worker died:\n{worker.log_tail()}"
        assert producer.error is None, f"producer failed: {producer.error!r}"

    started = time.monotonic()
    worker.start()
    producer.start()
    kills = []
    rng = random.Random(SEED)
    for k, (at, (_, flushes_after)) in enumerate(zip(kill_at, KILLS)):
        handled = rng.randrange(50, 400)  # then the kill lands anywhere in a batch or a flush
        wait_until(lambda at=at, handled=handled: producer.handed >= at and handled_by(iso.env) >= handled, 120,
                   f"kill {k + 1}: {at} messages handed to the producer and {handled} handled by the worker", alive)
        persisted = flushes_of(iso.env) + flushes_after
        wait_until(lambda persisted=persisted: flushes_of(iso.env) >= persisted, 60,
                   f"kill {k + 1}: {flushes_after} flushes of the worker after its first {handled} messages", alive)
        kills.append(producer.handed)
        worker.kill9()
        producer.gates[k][1].set()
        worker.start()
    lines = producer.finish()
    produced_s = time.monotonic() - started
    assert all(n < total for n in kills), f"a kill after the stream ended: {kills} of {total}"

    # ---- what was sent, and what the oracles make of it
    sent = oracle_input(lines)
    invalid = {(m["topic"], m["partition"], m["offset"]): m for m in lines if m["expected"] == INVALID}
    unique = {t: {m["event"]["event_id"] for m in sent if m["type"] == t} for t in EVENT_TABLES}
    responses = {m["event"]["event_id"]: m["event"] for m in sent if m["type"] == "response"}
    kpis = expected(settings, sent)
    counters = tuple(dict.fromkeys(c for values in kpis.values() for c in values))  # whatever the oracle computes
    folded, late, duplicates = classify(sent, settings.allowed_lateness_seconds * 1000,
                                        settings.granularity_seconds[0] * 1000)  # fmt: skip
    topics = settings.source_topics
    position_of = {(m["type"], m["event"]["event_id"]): (topics[m["type"]], m["partition"], m["offset"])
                   for m in sent}  # fmt: skip
    late_positions = {position_of[(e["type"], e["event_id"])] for e in late}
    oracle = FeedbackLoopOracle([dict(m["event"], type=m["type"]) for m in sent])
    views = expected_views(oracle)
    timing = preconditions(stream, lines, oracle, views, settings)
    assert set(stream.sent_after_answers) <= {e["event_id"] for e in late}, "feedback sent after its answers is late"

    # ---- everything stored, every window closed and equal to the oracle
    want = Outcome(kpis, unique, dead_letters={p: m["reason"] for p, m in invalid.items()},
                   late=dict.fromkeys(late_positions, LATE_EVENT))  # never window_closed: no source ever idles
    got: list[Outcome] = []
    errors: list[str] = []

    def settled() -> bool:
        try:
            got[:] = [Outcome.read(client, database, counters)]
        except ServerException as exc:  # not migrated yet
            errors[:] = [exc.message]
            return False
        return got[0] == want

    try:
        wait_until(settled, 180, "the final rows, raw events and rejects", alive, every=1)
    except AssertionError:
        pytest.fail(f"{want.differences(got[0]) if got else errors}\n{worker.log_tail()}")
    persisted = got[0]
    settled_s = time.monotonic() - started

    # ---- every enterprise event once, with every field as sent
    stored = client.execute(f"SELECT event_id, {', '.join(RESPONSE_FIELDS)} FROM `{database}`.responses FINAL")
    assert len(stored) == len({row[0] for row in stored}) == len(responses)
    assert {row[0]: dict(zip(RESPONSE_FIELDS, row[1:])) for row in stored} == {
        eid: {f: e[f] for f in RESPONSE_FIELDS} for eid, e in responses.items()}

    # ---- every invalid message dead-lettered with its reason, key and bytes; late ones rejected as late
    dead = read_dead_letters(kafka_bootstrap, settings.topic_dlq, set(invalid))
    assert {source_of(r) for r in dead} == set(invalid)
    for record in dead:
        m = invalid[source_of(record)]
        assert dict(record.headers)[HEADER_REASON].decode() == m["reason"]
        assert record.value == base64.b64decode(m["value_b64"])
        assert record.key == (m["key"].encode() if m["key"] is not None else None)

    # ---- counts add up. The last process's own counters (the killed ones died with theirs): consumed =
    # processed + dead-lettered + replayed. Across the kills, from what is persisted: every message sent is a
    # dead letter, a stored unique event or a re-send of one (a duplicate); none is lost, none counted twice.
    counts = worker_counters(iso.env)
    resumed_from = total - int(sum(v for k, v in counts.items() if k[0] == "consumed"))
    assert resumed_from > 0, "the last process read the whole stream again: no kill left persisted state to restore"
    classified = {e["type"] for e in folded + late + duplicates}
    resends = Counter(e["type"] for e in duplicates)
    for event_type, topic in settings.source_topics.items():
        processed = sum(v for k, v in counts.items() if k[0] == "processed" and k[1] == event_type)
        assert counts[("consumed", topic)] == (
            processed + counts[("dead_lettered", topic)] + counts[("replayed", event_type)]), (topic, counts)
        resent = sum(m["type"] == event_type for m in sent) - len(unique[event_type])
        if event_type in classified:
            assert resent == resends[event_type], (event_type, resent, resends)
        dead_here = sum(position[0] == topic for position in persisted.dead_letters)
        assert sum(m["topic"] == topic for m in lines) == dead_here + len(persisted.stored[event_type]) + resent

    # ---- the feedback-loop and idea-funnel views equal their oracle
    assert_views_equal(actual_views(client, database), views)

    print(f"stream {total} messages ({dict(Counter(m['expected'] for m in lines))}); responses "
          f"{dict(Counter(m['expected'] for m in lines if m['type'] == 'response'))}; kills after {kills} messages; "
          f"produced in {produced_s:.0f} s, settled after {settled_s:.0f} s; {len(kpis)} window-slices x "
          f"{len(counters)} counters; DLQ {len(dead)} records for {len(invalid)} invalid messages; late {len(late)}; "
          f"duplicates {len(duplicates)}; the last process resumed after {resumed_from} persisted messages; "
          f"enterprise events relative to the feedback they answer: {dict(timing)}")


def preconditions(stream: Stream, lines: list[dict], oracle: FeedbackLoopOracle, views: dict,
                  settings: Settings) -> Counter:
    """The stream holds every case the test is about (so a change of the generator cannot empty it silently).
    Returns how the stored enterprise events relate to the window of the feedback they answer (event time)."""
    finest_ms, lateness_ms = settings.granularity_seconds[0] * 1000, settings.allowed_lateness_seconds * 1000
    responses = [m for m in lines if m["type"] == "response"]
    labels = Counter(m["expected"] for m in responses)
    assert labels["duplicate"] >= 3 and labels["late"] >= 2 and labels["invalid"] >= 30, labels
    assert len({m["reason"] for m in responses if m["expected"] == INVALID}) >= 6
    feedback = oracle.feedback
    timing = Counter()
    for r in oracle.responses.values():
        f = feedback.get(r["in_reply_to"])
        if f is None:
            timing["unknown feedback"] += 1
            continue
        window_end = f["occurred_ms"] - f["occurred_ms"] % finest_ms + finest_ms
        timing["within its window" if r["occurred_ms"] < window_end else
               "after its window closed" if r["occurred_ms"] >= window_end + lateness_ms else
               "in the allowed lateness"] += 1
    assert timing["within its window"] >= 20 and timing["after its window closed"] >= 20, timing
    answered_later = [r for r in oracle.responses.values() if r["in_reply_to"] in stream.sent_after_answers]
    unknown = [r for r in oracle.responses.values() if r["in_reply_to"] in stream.never_sent]
    assert len(answered_later) >= HELD_BACK and len(unknown) >= HELD_BACK
    assert all(e in feedback for e in stream.sent_after_answers) and not any(e in feedback for e in stream.never_sent)
    statuses = Counter(r["status"] for r in oracle.responses.values() if r["kind"] == "idea_status")
    assert all(statuses[s] for s in ("under_review", "planned", "in_progress", "shipped", "declined")), statuses
    assert views["ideas_shipped"] and views["unmatched"], "no shipped idea or no unmatched response"
    return timing
