"""decode_event: one test per dead-letter reason, the valid path, and the dead-letter headers."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest
from helpers_events import NOW_MS, feedback, purchase, response, unit_settings, usage, usage_v1

from streams import errors, schemas
from streams.codec import HEADER_SIZE, Decoder, encode, frame
from streams.errors import DeadLetter, RetryableError, dead_letter_headers
from streams.events import Event
from streams.validation import decode_event

S = unit_settings()
DECODER = Decoder(S)
TOPIC = S.source_topics


def decode(event_type, record, *, key=..., topic=None, value=None, now_ms=NOW_MS, settings=S, schema_id=None):
    if key is ...:
        key = record["consumer_id"].encode()
    if value is None:
        value = encode(schema_id or event_type, record)
    return decode_event(DECODER, settings, topic or TOPIC[event_type], key, value, now_ms)


def reason_of(*args, **kwargs) -> str:
    with pytest.raises(DeadLetter) as err:
        decode(*args, **kwargs)
    assert err.value.detail  # every dead letter says what is wrong
    return err.value.reason


# ------------------------------------------------------------------------------------------ valid
@pytest.mark.parametrize("event_type,builder", [("purchase", purchase), ("usage", usage), ("feedback", feedback),
                                                ("response", response)])
def test_valid_events_become_events(event_type, builder):
    record = builder()
    event = decode(event_type, record)
    assert isinstance(event, Event)
    assert event.type == event_type
    assert (event.event_id, event.consumer_id, event.channel, event.region, event.segment) == (
        record["event_id"], record["consumer_id"], "web", "DE", "loyal",
    )  # fmt: skip
    assert (event.product_id, event.category) == ("AUD-001", "audio")
    assert event.occurred_ms == 1_714_564_740_000
    assert event.schema_id == schemas.latest_schema_id(event_type)
    assert event.record["occurred_at"] == datetime(2024, 5, 1, 11, 59, tzinfo=timezone.utc)


def test_purchase_amount_is_a_two_place_decimal():
    event = decode("purchase", purchase(amount=Decimal("12.5")))
    assert event.record["amount"] == Decimal("12.50") and str(event.record["amount"]) == "12.50"


def test_usage_v1_writer_is_valid_and_gets_app_version_none():
    event = decode("usage", usage_v1(), schema_id=201)
    assert event.schema_id == 201 and event.record["app_version"] is None


def test_occurred_at_from_a_writer_without_logical_type_becomes_a_datetime():
    writer = schemas.load_schema(301)
    next(f for f in writer["fields"] if f["name"] == "occurred_at")["type"] = "long"
    record = feedback(occurred_at=1_714_564_740_123)
    decoder = Decoder(schemas={77: writer})
    event = decode_event(decoder, S, S.topic_feedback, b"c-0001", encode(77, record, schema=writer), NOW_MS)
    assert event.occurred_ms == 1_714_564_740_123
    assert event.record["occurred_at"] == datetime(2024, 5, 1, 11, 59, 0, 123000, tzinfo=timezone.utc)


@pytest.mark.parametrize("kind,score", [("survey_response", None), ("survey_response", 0), ("review", None), ("idea", None),
                                        ("survey_invited", None), ("bug_report", None), ("rating", 1), ("rating", 5),
                                        ("nps", 0), ("nps", 10), ("review", 5)])  # fmt: skip
def test_scores_within_their_kind_are_valid(kind, score):
    assert decode("feedback", feedback(kind=kind, score=score)).record["score"] == score


def test_vote_with_target_is_valid():
    assert decode("feedback", feedback(kind="vote", score=None, in_reply_to="ev-idea")).record["in_reply_to"] == "ev-idea"


@pytest.mark.parametrize("kind,status", [("response", None), ("case_closed", None), ("idea_status", "under_review"),
                                         ("idea_status", "planned"), ("idea_status", "in_progress"),
                                         ("idea_status", "shipped"), ("idea_status", "declined")])  # fmt: skip
def test_response_kinds_with_their_status_are_valid(kind, status):
    event = decode("response", response(kind=kind, status=status, text=None))
    assert (event.type, event.record["kind"], event.record["status"]) == ("response", kind, status)
    assert (event.record["in_reply_to"], event.record["team"]) == ("ev-feedback-1", "support")


def test_event_within_the_future_skew_is_valid():
    at = NOW_MS + S.max_future_skew_seconds * 1000
    assert decode("usage", usage(occurred_at=at)).occurred_ms == at


# ------------------------------------------------------------------------------------ each reason
def test_bad_magic_byte():
    value = encode("purchase", purchase())
    assert reason_of("purchase", purchase(), value=b"\x01" + value[1:]) == "bad_magic_byte"
    assert reason_of("purchase", purchase(), value=b'{"event_id": "x"}') == "bad_magic_byte"
    assert reason_of("purchase", purchase(), value=b"") == "bad_magic_byte"


def test_unknown_schema_id():
    value = encode("purchase", purchase())
    assert reason_of("purchase", purchase(), value=frame(999, value[HEADER_SIZE:])) == "unknown_schema_id"


def test_undecodable():
    value = encode("purchase", purchase())
    assert reason_of("purchase", purchase(), value=value[:-3]) == "undecodable"
    assert reason_of("purchase", purchase(), value=value + b"\x01") == "undecodable"
    assert reason_of("purchase", purchase(), value=frame(101, b"\xff" * 40)) == "undecodable"


def test_missing_key():
    assert reason_of("usage", usage(), key=None) == "missing_key"


def test_key_mismatch():
    assert reason_of("usage", usage(), key=b"c-someone-else") == "key_mismatch"
    assert reason_of("usage", usage(), key=b"\xff\xfe") == "key_mismatch"


def test_wrong_event_type():
    assert reason_of("purchase", purchase(), topic=S.topic_usage) == "wrong_event_type"
    assert reason_of("feedback", feedback(), topic=S.topic_purchases) == "wrong_event_type"
    assert reason_of("feedback", feedback(), topic="not.an.input") == "wrong_event_type"
    assert reason_of("response", response(), topic=S.topic_feedback) == "wrong_event_type"
    assert reason_of("feedback", feedback(), topic=S.topic_responses) == "wrong_event_type"


@pytest.mark.parametrize("kind,score", [("rating", 0), ("rating", 6), ("nps", 11), ("nps", -1), ("survey_response", 11),
                                        ("review", 0), ("idea", 11)])  # fmt: skip
def test_score_out_of_range(kind, score):
    assert reason_of("feedback", feedback(kind=kind, score=score)) == "score_out_of_range"


@pytest.mark.parametrize("kind", ["rating", "nps"])
def test_missing_score(kind):
    assert reason_of("feedback", feedback(kind=kind, score=None)) == "missing_score"


def test_missing_status():
    assert reason_of("response", response(kind="idea_status", status=None)) == "missing_status"


@pytest.mark.parametrize("kind", ["response", "case_closed"])
def test_unexpected_status(kind):
    assert reason_of("response", response(kind=kind, status="shipped")) == "unexpected_status"


def test_unknown_response_kind_is_unknown_enum():
    writer = schemas.load_schema(401)
    next(f for f in writer["fields"] if f["name"] == "kind")["type"]["symbols"].append("escalated")
    decoder = Decoder(schemas={499: writer})
    value = encode(499, response(kind="escalated"), schema=writer)
    with pytest.raises(DeadLetter) as err:
        decode_event(decoder, S, S.topic_responses, b"c-0001", value, NOW_MS)
    assert err.value.reason == "unknown_enum" and "escalated" in err.value.detail


def test_unknown_idea_status_is_unknown_enum():
    writer = schemas.load_schema(401)
    next(f for f in writer["fields"] if f["name"] == "status")["type"][1]["symbols"].append("paused")
    decoder = Decoder(schemas={498: writer})
    value = encode(498, response(kind="idea_status", status="paused"), schema=writer)
    with pytest.raises(DeadLetter) as err:
        decode_event(decoder, S, S.topic_responses, b"c-0001", value, NOW_MS)
    assert err.value.reason == "unknown_enum" and "paused" in err.value.detail


def test_negative_amount():
    assert reason_of("purchase", purchase(amount=Decimal("-0.01"))) == "negative_amount"


def test_negative_quantity():
    assert reason_of("purchase", purchase(quantity=-1)) == "negative_quantity"


def test_future_event_time():
    at = NOW_MS + S.max_future_skew_seconds * 1000 + 1
    assert reason_of("usage", usage(occurred_at=at)) == "future_event_time"
    assert reason_of("usage", usage(occurred_at=at), settings=unit_settings(max_future_skew_seconds=0)) == "future_event_time"


@pytest.mark.parametrize("channel", ["email", "WEB", "", "kiosk"])
def test_unknown_channel_is_unknown_enum(channel):
    assert reason_of("feedback", feedback(channel=channel)) == "unknown_enum"


def test_unknown_avro_enum_symbol_is_unknown_enum():
    writer = schemas.load_schema(301)
    next(f for f in writer["fields"] if f["name"] == "kind")["type"]["symbols"].append("complaint")
    decoder = Decoder(schemas={399: writer})
    value = encode(399, feedback(kind="complaint", score=None), schema=writer)
    with pytest.raises(DeadLetter) as err:
        decode_event(decoder, S, S.topic_feedback, b"c-0001", value, NOW_MS)
    assert err.value.reason == "unknown_enum" and "complaint" in err.value.detail


def test_unsupported_currency():
    assert reason_of("purchase", purchase(currency="USD")) == "unsupported_currency"
    assert reason_of("purchase", purchase(currency="eur")) == "unsupported_currency"
    assert decode("purchase", purchase(currency="USD"), settings=unit_settings(currency="USD")).record["currency"] == "USD"


@pytest.mark.parametrize(
    "event_type,record",
    [
        ("purchase", purchase(event_id="")),
        ("purchase", purchase(order_id=" ")),
        ("purchase", purchase(quantity=0)),
        ("purchase", purchase(product_id="")),
        ("usage", usage(session_id="")),
        ("usage", usage(category="")),
        ("usage", usage(duration_ms=-5)),
        ("feedback", feedback(kind="vote", score=None, in_reply_to=None)),
        ("feedback", feedback(region="")),
        ("feedback", feedback(event_id="x" * 300)),
        ("feedback", feedback(occurred_at=1_714_564_740)),  # epoch seconds instead of milliseconds
        ("response", response(in_reply_to="")),  # a response without the feedback it answers
        ("response", response(kind="idea_status", status="planned", in_reply_to=" ")),
        ("response", response(in_reply_to="x" * 300)),
        ("response", response(team="")),
        ("response", response(product_id="")),
    ],
)
def test_invalid_field(event_type, record):
    assert reason_of(event_type, record) == "invalid_field"


def test_empty_consumer_id_with_matching_empty_key_is_invalid_field():
    assert reason_of("usage", usage(consumer_id=""), key=b"") == "invalid_field"


def test_every_decode_reason_is_covered_here():
    tested = {name[len("test_"):] for name in globals() if name.startswith("test_")}
    missing = [r for r in errors.DECODE_REASONS if r not in tested and f"unknown_channel_is_{r}" not in tested]
    assert missing == []


# ---------------------------------------------------------------------------------- robustness
def test_unexpected_exceptions_become_undecodable(monkeypatch):
    monkeypatch.setattr("streams.validation._check_purchase", lambda record, settings: 1 / 0)
    assert reason_of("purchase", purchase()) == "undecodable"


def test_registry_down_is_retryable_not_dead_letter():
    decoder = Decoder(registry_url="http://127.0.0.1:9", timeout=0.3)
    with pytest.raises(RetryableError):
        decode_event(decoder, S, S.topic_purchases, b"c-0001", encode("purchase", purchase()), NOW_MS)


def test_dead_letter_requires_a_known_reason():
    with pytest.raises(ValueError):
        DeadLetter("no_such_reason", "x")
    assert DeadLetter("late_event", "behind the watermark").reason == errors.LATE_EVENT


def test_dead_letter_headers():
    headers = dead_letter_headers("negative_amount", "amount is -1.00; ...", "copulse.purchases", 3, 12345, NOW_MS + 7)
    assert headers == [
        ("copulse.reason", b"negative_amount"),
        ("copulse.detail", b"amount is -1.00; ..."),
        ("copulse.source.topic", b"copulse.purchases"),
        ("copulse.source.partition", b"3"),
        ("copulse.source.offset", b"12345"),
        ("copulse.dead_lettered_at", b"2024-05-01T12:00:00.007Z"),
    ]
    assert all(isinstance(k, str) and isinstance(v, bytes) for k, v in headers)
