"""Fuzzing decode_event: whatever the bytes, it returns an Event or raises DeadLetter -- nothing else."""

from __future__ import annotations

import struct

from helpers_events import NOW_MS, feedback, purchase, unit_settings, usage, usage_v1
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.codec import Decoder, encode
from streams.errors import DECODE_REASONS, DeadLetter
from streams.events import Event
from streams.validation import decode_event

S = unit_settings()
DECODER = Decoder(S)
TOPICS = [S.topic_purchases, S.topic_usage, S.topic_feedback]
SAMPLES = [
    (S.topic_purchases, encode("purchase", purchase())),
    (S.topic_usage, encode("usage", usage(action="session_end", duration_ms=1234, feature=None))),
    (S.topic_usage, encode(201, usage_v1())),
    (S.topic_feedback, encode("feedback", feedback(kind="idea", score=None, text="dark mode please"))),
    (S.topic_feedback, encode("feedback", feedback(kind="vote", score=None, in_reply_to="ev-1"))),
]
KNOWN_IDS = [101, 201, 202, 301]
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(topic: str, key: bytes | None, value: bytes) -> str:
    """'ok' or the dead-letter reason; any other exception fails the test."""
    try:
        event = decode_event(DECODER, S, topic, key, value, NOW_MS)
    except DeadLetter as dead:
        assert dead.reason in DECODE_REASONS
        assert isinstance(dead.detail, str) and dead.detail
        return dead.reason
    assert isinstance(event, Event)
    assert isinstance(event.occurred_ms, int)
    return "ok"


keys = st.one_of(st.none(), st.binary(max_size=20), st.just(b"c-0001"))


@FUZZ
@given(topic=st.sampled_from(TOPICS), key=keys, value=st.binary(max_size=300))
def test_arbitrary_bytes(topic, key, value):
    outcome(topic, key, value)


@FUZZ
@given(
    topic=st.sampled_from(TOPICS),
    schema_id=st.sampled_from(KNOWN_IDS),
    body=st.binary(max_size=300),
)
def test_valid_header_with_arbitrary_body(topic, schema_id, body):
    outcome(topic, b"c-0001", struct.pack(">BI", 0, schema_id) + body)


@st.composite
def mutated(draw):
    topic, value = draw(st.sampled_from(SAMPLES))
    data = bytearray(value)
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["flip", "truncate", "append", "swap_id", "set_byte", "delete"]))
        if kind == "flip" and data:
            bit = draw(st.integers(0, len(data) * 8 - 1))
            data[bit // 8] ^= 1 << (bit % 8)
        elif kind == "truncate":
            del data[draw(st.integers(0, len(data))):]
        elif kind == "append":
            data += draw(st.binary(min_size=1, max_size=16))
        elif kind == "swap_id" and len(data) >= 5:
            new_id = draw(st.one_of(st.sampled_from(KNOWN_IDS), st.integers(0, 2**32 - 1)))
            data[1:5] = new_id.to_bytes(4, "big")
        elif kind == "set_byte" and data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        elif kind == "delete" and data:
            del data[draw(st.integers(0, len(data) - 1))]
    return topic, bytes(data)


@FUZZ
@given(message=mutated(), key=st.one_of(st.just(b"c-0001"), keys), topic_override=st.one_of(st.none(), st.sampled_from(TOPICS)))
def test_mutated_valid_messages(message, key, topic_override):
    topic, value = message
    outcome(topic_override or topic, key, value)


def test_every_single_bit_flip_of_every_sample():
    seen = set()
    for topic, value in SAMPLES:
        for bit in range(len(value) * 8):
            data = bytearray(value)
            data[bit // 8] ^= 1 << (bit % 8)
            seen.add(outcome(topic, b"c-0001", bytes(data)))
    assert {"bad_magic_byte", "unknown_schema_id", "undecodable"} <= seen


def test_every_truncation_of_every_sample_is_a_dead_letter():
    for topic, value in SAMPLES:
        for cut in range(len(value)):
            assert outcome(topic, b"c-0001", value[:cut]) in ("bad_magic_byte", "undecodable")


def test_swapped_schema_ids_between_types():
    for topic, value in SAMPLES:
        for schema_id in KNOWN_IDS:
            outcome(topic, b"c-0001", value[:1] + schema_id.to_bytes(4, "big") + value[5:])
