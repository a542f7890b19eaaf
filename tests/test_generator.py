"""The event generator: deterministic, realistic, every expectation right, and faithful on the real broker."""

from __future__ import annotations

import base64
import collections
import json
import time
from decimal import Decimal

import pytest
from helpers_events import unit_settings
from kafka.partitioner.default import murmur2

from copulse import cli
from copulse.enterprise import DELAYS_H, follow_up_class
from copulse.generator import GeneratorOptions, generate_events, produce
from streams.codec import Decoder
from streams.kpis import ANSWERABLE_KINDS
from streams.errors import DECODE_REASONS, DeadLetter
from streams.validation import decode_event

S = unit_settings()
START = 1_714_564_800_000  # 2024-05-01T12:00:00Z
MIX = dict(invalid_fraction=0.05, duplicate_fraction=0.03, late_fraction=0.03, out_of_order_s=10)


def generate(n=20_000, settings=S, **kw):
    options = {"count": n, "seed": 7, "start_ms": START, "consumers": 500, **MIX, **kw}
    return list(generate_events(settings, **options))


@pytest.fixture(scope="module")
def messages():
    return generate()


def test_same_seed_and_start_give_identical_messages():
    a, b = generate(3000), generate(3000)
    assert [(m.topic, m.key, m.value, m.expected, m.reason) for m in a] == [(m.topic, m.key, m.value, m.expected, m.reason) for m in b]
    c = generate(3000, seed=8)
    assert [m.value for m in a] != [m.value for m in c]
    d = generate(3000, start_ms=START + 1000)
    assert [m.value for m in a] != [m.value for m in d]


def test_count_and_duration_bound_the_sequence():
    assert len(generate(123)) == 123
    by_duration = list(generate_events(S, duration_s=60, seed=1, start_ms=START, event_time_rate=50))
    assert 2000 < len(by_duration) < 4000
    assert max(m.event["occurred_ms"] for m in by_duration if m.expected == "valid") <= START + 61_000


def test_every_expectation_matches_decode_event(messages):
    decoder = Decoder(S)
    now = START + 10 * 86_400_000  # the worker runs after the generated span; 10-year clocks stay in the future
    for m in messages:
        try:
            decode_event(decoder, S, m.topic, m.key, m.value, now)
            got = None
        except DeadLetter as dead:
            got = dead.reason
        assert got == (m.reason if m.expected == "invalid" else None), (m.seq, m.expected, m.reason, got)


def test_invalid_messages_cover_every_reason(messages):
    reasons = collections.Counter(m.reason for m in messages if m.expected == "invalid")
    assert set(reasons) == set(DECODE_REASONS)


def test_fractions_are_roughly_honoured(messages):
    share = collections.Counter(m.expected for m in messages)
    n = len(messages)
    assert abs(share["invalid"] / n - 0.05) < 0.01
    assert abs(share["duplicate"] / n - 0.03) < 0.01
    assert abs(share["late"] / n - 0.03) < 0.01


def window_rule(messages, settings, partitions=6):
    """The documented late/duplicate semantics applied per source partition (type, partition), in
    offset order, with the partition the default murmur2 partitioner gives each key."""
    lateness = settings.allowed_lateness_seconds * 1000
    finest = min(settings.granularity_seconds) * 1000
    max_ts: dict = {}
    seen: dict = collections.defaultdict(set)
    got = {}
    for m in messages:
        if m.expected == "invalid":
            continue
        source = (m.type, (murmur2(m.key) & 0x7FFFFFFF) % partitions)
        ts = m.event["occurred_ms"]
        end = ts - ts % finest + finest
        if source in max_ts and end <= max_ts[source] - lateness:
            got[m.seq] = "late"
            continue
        got[m.seq] = "duplicate" if m.event["event_id"] in seen[source] else "valid"
        seen[source].add(m.event["event_id"])
        max_ts[source] = max(max_ts.get(source, ts), ts)
    return got


@pytest.mark.parametrize(
    "overrides,ooo",
    [({}, 10), ({"granularities": ["1m"], "allowed_lateness_seconds": 0}, 0), ({"granularities": ["5m", "1h"], "allowed_lateness_seconds": 120}, 120)],
)
@pytest.mark.parametrize("partitions", [1, 6])
def test_late_and_duplicate_labels_follow_the_window_rule(overrides, ooo, partitions):
    settings = unit_settings(**overrides)
    msgs = generate(15_000, settings=settings, out_of_order_s=ooo, consumers=200)
    got = window_rule(msgs, settings, partitions)
    wrong = [(m.seq, m.expected, got[m.seq]) for m in msgs if m.seq in got and got[m.seq] != m.expected]
    assert wrong == []


def test_simulation_is_plausible(messages):
    valid = [m for m in messages if m.expected == "valid"]
    by_type = collections.Counter(m.type for m in valid)
    assert by_type["usage"] > by_type["purchase"] > 0 and by_type["feedback"] > 0
    events = {m.event["event_id"]: m.event for m in valid}
    kinds = collections.Counter(m.event.get("kind") for m in valid if m.type == "feedback")
    actions = collections.Counter(m.event.get("action") for m in valid if m.type == "usage")
    for k in ("survey_invited", "survey_response", "rating", "nps", "review", "idea", "vote", "bug_report"):
        assert kinds[k] > 0, k
    for a in ("session_start", "session_end", "feature_use", "beta_use", "customisation", "community_post"):
        assert actions[a] > 0, a
    assert kinds["survey_response"] < kinds["survey_invited"]
    orders = collections.defaultdict(list)
    for m in valid:
        e = m.event
        if m.type == "purchase":
            orders[e["order_id"]].append(e)
            assert e["currency"] == "EUR" and e["quantity"] >= 1
            assert Decimal(e["amount"]).as_tuple().exponent == -2 and Decimal(e["amount"]) > 0
            assert e["amount_minor"] == int(Decimal(e["amount"]) * 100)
        elif m.type == "usage":
            assert e["co_creation"] == (e["action"] in ("beta_use", "customisation", "community_post"))
            assert (e["duration_ms"] is not None) == (e["action"] == "session_end")
            if e["action"] == "feature_use":
                assert e["feature"]
        else:
            if e["kind"] == "rating":
                assert 1 <= e["score"] <= 5
            if e["kind"] == "nps":
                assert 0 <= e["score"] <= 10
            if e["kind"] == "vote":
                assert events[e["in_reply_to"]]["kind"] == "idea"
            if e["kind"] == "survey_response":
                invite = events[e["in_reply_to"]]
                assert invite["kind"] == "survey_invited" and invite["consumer_id"] == e["consumer_id"]
                assert invite["occurred_ms"] <= e["occurred_ms"] + 10_000
    multi_line = [lines for lines in orders.values() if len(lines) > 1]
    assert len(multi_line) > len(orders) / 5  # baskets: several purchase events share an order_id
    assert all(len({(x["consumer_id"], x["channel"]) for x in lines}) == 1 for lines in multi_line)
    schema_ids = collections.Counter(m.schema_id for m in valid if m.type == "usage")
    assert schema_ids[201] > 0 and schema_ids[202] > schema_ids[201]  # old app clients still write v1
    segments = collections.Counter(m.event["segment"] for m in valid)
    assert None in segments and len(segments) >= 5


def test_duplicates_are_byte_identical_resends(messages):
    by_seq = {m.seq: m for m in messages}
    dupes = [m for m in messages if m.expected == "duplicate"]
    assert dupes
    for d in dupes:
        original = by_seq[d.duplicate_of]
        assert original.expected == "valid" and original.seq < d.seq
        assert (d.topic, d.key, d.value) == (original.topic, original.key, original.value)


def test_jsonl_records_every_message_faithfully(tmp_path, messages):
    out = tmp_path / "out.jsonl"
    stats = produce(S, iter(messages), out=out, kafka=False, progress=False)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert stats.sent == len(lines) == len(messages)
    for line, m in zip(lines, messages):
        assert line["seq"] == m.seq and line["topic"] == m.topic and line["expected"] == m.expected
        assert line["key"] == (m.key.decode() if m.key is not None else None)
        assert line["partition"] is None and line["offset"] is None
        assert line["type"] == m.type and line["schema_id"] == m.schema_id
        assert line["event"]["occurred_ms"] == m.event["occurred_ms"]
        if m.expected == "invalid":
            assert line["reason"] in DECODE_REASONS and base64.b64decode(line["value_b64"]) == m.value
        else:
            assert line["reason"] is None
        if m.type == "purchase":
            assert isinstance(line["event"]["amount"], str)


def test_generation_to_file_writes_every_message(tmp_path):
    """30,000 messages to a file without Kafka (the rate is printed, never asserted: speed is measured by the
    benchmarks, a timed assertion only measures how busy the machine is; 11k/s on a quiet machine here)."""
    n = 30_000
    started = time.perf_counter()
    stats = produce(S, generate_events(S, count=n, seed=3, start_ms=START, **MIX), out=tmp_path / "fast.jsonl",
                    kafka=False, progress=False)
    print(f"generator to file: {n / (time.perf_counter() - started):,.0f} events/s")
    assert stats.sent == n and len((tmp_path / "fast.jsonl").read_text().splitlines()) == n


def test_cli_writes_the_same_file_for_the_same_seed(tmp_path, monkeypatch):
    for name in ("a", "b"):
        rc = cli.main(["generate", "--no-kafka", "--out", str(tmp_path / f"{name}.jsonl"), "--count", "500",
                       "--seed", "5", "--start", "2024-05-01T12:00:00Z", "--rate", "0", "--invalid-fraction", "0.1",
                       "--duplicate-fraction", "0.05", "--late-fraction", "0.05", "--quiet"])  # fmt: skip
        assert rc == 0
    a, b = (tmp_path / "a.jsonl").read_bytes(), (tmp_path / "b.jsonl").read_bytes()
    assert a == b and a.count(b"\n") == 500
    assert json.loads(a.splitlines()[0])["event"]["occurred_at"].startswith("2024-05-01T12:00:00")


def test_cli_enterprise_time_scale_takes_a_fraction(tmp_path, capsys):
    args = ["generate", "--no-kafka", "--count", "2000", "--seed", "5", "--start", "2024-05-01T12:00:00Z", "--rate", "0",
            "--quiet", "--out"]  # fmt: skip
    assert cli.main([*args, str(tmp_path / "slow.jsonl")]) == 0
    assert cli.main([*args, str(tmp_path / "fast.jsonl"), "--enterprise-time-scale", "1/3600"]) == 0
    responses = {name: sum(json.loads(line)["type"] == "response" for line in (tmp_path / f"{name}.jsonl").open())
                 for name in ("slow", "fast")}
    assert responses["fast"] > responses["slow"]  # 20 s of event time: realistic delays have barely begun
    assert "by type: purchase" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([*args, str(tmp_path / "x.jsonl"), "--enterprise-time-scale", "0"])


def test_cli_refuses_unbounded_file_only_runs(tmp_path, capsys):
    assert cli.main(["generate", "--no-kafka", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert cli.main(["generate", "--no-kafka", "--count", "5"]) == 2
    assert "--out" in capsys.readouterr().err


def test_options_are_validated():
    with pytest.raises(ValueError):
        list(generate_events(S, GeneratorOptions(count=1, late_fraction=0.6, invalid_fraction=0.6, start_ms=START)))
    with pytest.raises(ValueError):
        list(generate_events(S, GeneratorOptions(count=1, consumers=0, start_ms=START)))


# ---------------------------------------------------------------------------------- real broker
@pytest.mark.integration
def test_jsonl_partitions_and_offsets_match_what_kafka_holds(kafka_bootstrap, topic_factory, tmp_path):
    from kafka import KafkaConsumer, TopicPartition

    topics = {t: topic_factory(partitions=3, prefix=f"gen_{t}") for t in ("purchases", "usage", "feedback", "responses")}
    settings = unit_settings(
        kafka_bootstrap_servers=kafka_bootstrap, **{f"topic_{t}": name for t, name in topics.items()},
    )  # fmt: skip
    now_ms = int(time.time() * 1000)
    options = GeneratorOptions(count=3000, seed=11, start_ms=now_ms - 3_600_000, consumers=300, invalid_fraction=0.1,
                               duplicate_fraction=0.02, late_fraction=0.02, enterprise_time_scale=1 / 3600)  # fmt: skip
    sent = list(generate_events(settings, options))
    out = tmp_path / "sent.jsonl"
    started = time.perf_counter()
    stats = produce(settings, iter(sent), out=out, progress=False)
    print(f"produced {stats.sent} in {time.perf_counter() - started:.2f} s")
    assert stats.acked == stats.sent == 3000 and stats.failed == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["seq"] for line in lines] == list(range(3000))
    n_invalid = sum(line["expected"] == "invalid" for line in lines)
    assert 200 < n_invalid < 400 and 3000 - n_invalid > 2500

    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False, consumer_timeout_ms=10_000)
    try:
        parts = [TopicPartition(t, p) for t in topics.values() for p in range(3)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        held = {}
        deadline = time.time() + 60
        while len(held) < 3000 and time.time() < deadline:
            for records in consumer.poll(timeout_ms=1000).values():
                for r in records:
                    held[(r.topic, r.partition, r.offset)] = (r.key, r.value)
    finally:
        consumer.close()
    assert len(held) == 3000
    decoder = Decoder(settings)
    for line, msg in zip(lines, sent):
        key, value = held[(line["topic"], line["partition"], line["offset"])]
        assert key == msg.key and value == msg.value
        if msg.key is not None and msg.expected != "invalid":
            assert line["partition"] == (murmur2(msg.key) & 0x7FFFFFFF) % 3  # default partitioner on the key
        try:
            decode_event(decoder, settings, line["topic"], key, value, now_ms + 60_000)
            reason = None
        except DeadLetter as dead:
            reason = dead.reason
        assert reason == line["reason"]


# ---------------------------------------------------------------------------------- enterprise side
ENTERPRISE_SCALE = 1 / 20_000  # an hour of enterprise delay takes 0.18 s of event time: the whole funnel in minutes


@pytest.fixture(scope="module")
def enterprise_messages():
    return generate(30_000, enterprise_time_scale=ENTERPRISE_SCALE)


def test_enterprise_events_answer_earlier_feedback_of_the_same_consumer(enterprise_messages):
    valid = [m for m in enterprise_messages if m.expected == "valid"]
    feedback = {m.event["event_id"]: m.event for m in valid if m.type == "feedback"}
    responses = [m.event for m in valid if m.type == "response"]
    assert len(responses) > 500
    answered_before: set[str] = set()
    for r in responses:
        about = feedback[r["in_reply_to"]]  # always a feedback event that was sent before
        assert about["occurred_ms"] < r["occurred_ms"]
        assert all(r[k] == about[k] for k in ("consumer_id", "region", "segment", "product_id", "category"))
        if r["kind"] == "idea_status":
            assert about["kind"] == "idea" and r["status"] is not None and r["team"] == "product"
        else:
            assert r["status"] is None and about["kind"] not in ("vote", "survey_invited")
        if r["kind"] == "case_closed":  # a follow-up of a detractor or a bug report, after its response
            assert follow_up_class(about) != "other" and r["in_reply_to"] in answered_before
        if r["kind"] == "response":
            answered_before.add(r["in_reply_to"])
    kinds = collections.Counter(r["kind"] for r in responses)
    assert kinds["response"] > kinds["case_closed"] > 0 and kinds["idea_status"] > 0


def test_detractors_and_bugs_are_answered_more_often_and_faster(enterprise_messages):
    valid = [m for m in enterprise_messages if m.expected == "valid"]
    end = max(m.event["occurred_ms"] for m in valid)
    first_answer: dict[str, int] = {}
    for m in valid:
        if m.type == "response" and m.event["kind"] == "response":
            first_answer.setdefault(m.event["in_reply_to"], m.event["occurred_ms"])
    # feedback old enough that nearly every answer it gets has come (30 median delays of "other")
    horizon = 30 * DELAYS_H["other"][0] * 3_600_000 * ENTERPRISE_SCALE
    answerable = [m.event for m in valid if m.type == "feedback" and m.event["kind"] in ANSWERABLE_KINDS
                  and m.event["kind"] != "idea" and m.event["occurred_ms"] < end - horizon]
    by_class = collections.defaultdict(list)
    for f in answerable:
        by_class[follow_up_class(f)].append(f)
    rate = {c: sum(f["event_id"] in first_answer for f in fs) / len(fs) for c, fs in by_class.items()}
    delays = {c: sorted(first_answer[f["event_id"]] - f["occurred_ms"] for f in fs if f["event_id"] in first_answer)
              for c, fs in by_class.items()}
    median = {c: d[len(d) // 2] for c, d in delays.items()}
    assert rate["bug_report"] > rate["other"] and rate["detractor"] > rate["other"] and rate["other"] < 0.5
    assert median["bug_report"] < median["other"] and median["detractor"] < median["other"]
    longest = delays["other"][-1]
    assert longest > 5 * median["other"]  # a long tail
    assert any(f["event_id"] not in first_answer for f in by_class["detractor"])  # some never answered


def test_the_idea_funnel_is_ordered_mostly_declined_or_waiting_and_votes_drive_shipping(enterprise_messages):
    valid = [m for m in enterprise_messages if m.expected == "valid"]
    ideas = [m.event["event_id"] for m in valid if m.type == "feedback" and m.event["kind"] == "idea"]
    votes = collections.Counter(m.event["in_reply_to"] for m in valid if m.type == "feedback" and m.event["kind"] == "vote")
    path = collections.defaultdict(list)
    for m in valid:
        if m.type == "response" and m.event["kind"] == "idea_status":
            path[m.event["in_reply_to"]].append(m.event["status"])
    allowed = (["under_review", "planned", "in_progress", "shipped"], ["under_review", "planned", "in_progress", "declined"],
               ["under_review", "declined"])
    for statuses in path.values():
        assert any(statuses == p[: len(statuses)] for p in allowed), statuses
    final = collections.Counter(s[-1] for s in path.values())
    shipped = [i for i, s in path.items() if s[-1] == "shipped"]
    declined = [i for i, s in path.items() if s == ["under_review", "declined"]]
    assert final["shipped"] > 0 and final["declined"] > 0
    assert final["shipped"] < (len(ideas) - final["shipped"]) / 3  # most ideas are declined or still waiting
    assert sum(votes[i] for i in shipped) / len(shipped) > sum(votes[i] for i in declined) / len(declined)


def test_enterprise_invalid_late_and_duplicate_controls(enterprise_messages):
    response = [m for m in enterprise_messages if m.type == "response"]
    expected = collections.Counter(m.expected for m in response)
    assert expected["invalid"] and expected["late"] and expected["duplicate"]
    reasons = collections.Counter(m.reason for m in response if m.expected == "invalid")
    assert reasons["missing_status"] and reasons["unexpected_status"] and reasons["invalid_field"]
    assert all(m.topic == S.topic_responses for m in response if m.expected != "invalid")
