"""Decode + validate one Kafka message into an :class:`~streams.events.Event`, or say why it is bad.

The worker calls :func:`decode_event` once per message. It returns an Event, raises
:class:`~streams.errors.DeadLetter` (the message goes to ``copulse.dlq`` with :func:`dead_letter_headers`),
or raises :class:`~streams.errors.RetryableError` when the Schema Registry is unreachable. Bad bytes never
produce any other exception: anything unexpected while decoding becomes ``DeadLetter("undecodable")``.

Checks, in this order (a message with several defects gets the first reason):

1. topic is an input topic and the writer schema is of that topic's event type -> wrong_event_type
2. framing, schema id, Avro body -> bad_magic_byte, unknown_schema_id, undecodable, unknown_enum
3. key present and equal to consumer_id -> missing_key, key_mismatch
4. common fields: non-empty ids, channel in :data:`CHANNELS`, occurred_at plausible and not more than
   ``max_future_skew_seconds`` after the worker's clock -> invalid_field, unknown_enum, future_event_time
5. per type: currency, quantity, amount (purchase); duration (usage); score by kind, vote target (feedback);
   reply target, team and status by kind (response) -> missing_status, unexpected_status, invalid_field
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from streams.codec import Decoder
from streams.errors import (
    FUTURE_EVENT_TIME,
    INVALID_FIELD,
    KEY_MISMATCH,
    MISSING_KEY,
    MISSING_SCORE,
    MISSING_STATUS,
    NEGATIVE_AMOUNT,
    NEGATIVE_QUANTITY,
    SCORE_OUT_OF_RANGE,
    UNDECODABLE,
    UNEXPECTED_STATUS,
    UNKNOWN_ENUM,
    UNSUPPORTED_CURRENCY,
    WRONG_EVENT_TYPE,
    DeadLetter,
    RetryableError,
)
from streams.events import Event

#: the channels copulse knows; anything else is dead-lettered as unknown_enum
CHANNELS = ("web", "app", "store", "call_center", "marketplace", "partner")

#: feedback kind -> (min, max, required). Kinds not listed: score optional, 0..10 when present.
SCORE_RULES: dict[str, tuple[int, int, bool]] = {
    "rating": (1, 5, True),
    "nps": (0, 10, True),
    "survey_response": (0, 10, False),
    "review": (1, 5, False),
}
DEFAULT_SCORE_RULE = (0, 10, False)

#: the response kind whose ``status`` is required; every other kind must leave it null
IDEA_STATUS = "idea_status"

#: ids longer than this are invalid_field (they become state keys and label values)
MAX_ID_LENGTH = 256
#: occurred_at before 2000-01-01 is invalid_field (usually seconds sent instead of milliseconds)
MIN_OCCURRED_MS = 946_684_800_000
#: decimal(18, 2): at most 16 digits before the point
MAX_AMOUNT = Decimal("9999999999999999.99")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_TWO_PLACES = -2


def decode_event(decoder: Decoder, settings: Any, topic: str, key: bytes | None, value: bytes, now_ms: int) -> Event:
    """Decode and validate one message of an input topic. See the module docstring for the checks."""
    try:
        return _decode_event(decoder, settings, topic, key, value, now_ms)
    except (DeadLetter, RetryableError):
        raise
    except Exception as exc:  # noqa: BLE001 - contract: bad bytes never raise anything but DeadLetter
        raise DeadLetter(
            UNDECODABLE, f"message could not be decoded ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None


def event_type_for_topic(settings: Any, topic: str) -> str:
    for event_type, source_topic in settings.source_topics.items():
        if topic == source_topic:
            return event_type
    raise DeadLetter(
        WRONG_EVENT_TYPE,
        f"topic {topic!r} is not an input topic ({', '.join(settings.source_topics.values())}); "
        "produce events to the topic of their type",
    )


def _decode_event(decoder: Decoder, settings: Any, topic: str, key: bytes | None, value: bytes, now_ms: int) -> Event:
    event_type = event_type_for_topic(settings, topic)
    ws, record = decoder.decode(value, event_type)

    consumer_id = record["consumer_id"]
    if key is None:
        raise DeadLetter(MISSING_KEY, "message has no key; set the key to the consumer_id (UTF-8)")
    try:
        key_text = key.decode("utf-8") if isinstance(key, (bytes, bytearray, memoryview)) else str(key)
    except UnicodeDecodeError:
        raise DeadLetter(KEY_MISMATCH, "key is not valid UTF-8; set the key to the consumer_id (UTF-8)") from None
    if key_text != consumer_id:
        raise DeadLetter(
            KEY_MISMATCH,
            f"key {key_text[:80]!r} differs from consumer_id {consumer_id[:80]!r}; key every message by its "
            "consumer_id so all events of a consumer land in one partition",
        )

    event_id = record["event_id"]
    _require_id(event_id, "event_id")
    _require_id(consumer_id, "consumer_id")
    _require_id(record["region"], "region")
    product_id = record["product_id"]
    category = record["category"]
    _require_id(product_id, "product_id")
    _require_id(category, "category")
    channel = record["channel"]
    if channel not in CHANNELS:
        raise DeadLetter(
            UNKNOWN_ENUM, f"channel {channel[:80]!r} is not one of {sorted(CHANNELS)}; send a known channel"
        )

    occurred = record["occurred_at"]
    if isinstance(occurred, datetime):
        occurred_ms = (occurred - _EPOCH) // _ONE_MS
    else:  # a registry writer schema without the timestamp-millis logical type
        occurred_ms = int(occurred)
        record["occurred_at"] = _EPOCH + timedelta(milliseconds=occurred_ms)
    if occurred_ms < MIN_OCCURRED_MS:
        raise DeadLetter(
            INVALID_FIELD,
            f"occurred_at {occurred_ms} is before 2000-01-01; send epoch milliseconds UTC (not seconds)",
        )
    skew_ms = settings.max_future_skew_seconds * 1000
    if occurred_ms > now_ms + skew_ms:
        raise DeadLetter(
            FUTURE_EVENT_TIME,
            f"occurred_at is {(occurred_ms - now_ms) / 1000:.0f} s after the worker's clock "
            f"(allowed: {settings.max_future_skew_seconds} s); fix the producer's clock or time zone "
            "(occurred_at is epoch milliseconds UTC)",
        )

    if event_type == "purchase":
        _check_purchase(record, settings)
    elif event_type == "usage":
        _check_usage(record)
    elif event_type == "feedback":
        _check_feedback(record)
    else:
        _check_response(record)

    return Event(
        event_type,
        event_id,
        consumer_id,
        occurred_ms,
        channel,
        record["region"],
        record.get("segment"),
        product_id,
        category,
        ws.schema_id,
        record,
    )


def _require_id(text: str, name: str) -> None:
    if not text or text.isspace():
        raise DeadLetter(INVALID_FIELD, f"{name} is empty; every event needs a non-empty {name}")
    if len(text) > MAX_ID_LENGTH:
        raise DeadLetter(INVALID_FIELD, f"{name} is {len(text)} characters long; keep it <= {MAX_ID_LENGTH}")


def _check_purchase(record: dict, settings: Any) -> None:
    _require_id(record["order_id"], "order_id")
    currency = record["currency"]
    if currency != settings.currency:
        raise DeadLetter(
            UNSUPPORTED_CURRENCY,
            f"currency {currency[:20]!r} is not {settings.currency}; copulse keeps revenue in one currency "
            f"(COPULSE_CURRENCY), convert amounts to {settings.currency} before producing",
        )
    quantity = record["quantity"]
    if quantity < 0:
        raise DeadLetter(NEGATIVE_QUANTITY, f"quantity is {quantity}; send returns as their own events, not negative quantities")
    if quantity == 0:
        raise DeadLetter(INVALID_FIELD, "quantity is 0; a purchase line needs quantity >= 1")
    amount = record["amount"]
    if not isinstance(amount, Decimal):
        raise DeadLetter(INVALID_FIELD, "amount is not a decimal; write it as bytes with logicalType decimal(18, 2)")
    if amount < 0:
        raise DeadLetter(NEGATIVE_AMOUNT, f"amount is {amount}; amounts must be >= 0 (send refunds as their own events)")
    if amount.as_tuple().exponent != _TWO_PLACES or amount > MAX_AMOUNT:
        raise DeadLetter(INVALID_FIELD, f"amount {amount} does not fit decimal(18, 2); write scale 2, at most 18 digits")


def _check_usage(record: dict) -> None:
    _require_id(record["session_id"], "session_id")
    duration = record.get("duration_ms")
    if duration is not None and duration < 0:
        raise DeadLetter(INVALID_FIELD, f"duration_ms is {duration}; send the session length in ms (>= 0) or null")


def _check_feedback(record: dict) -> None:
    kind = record["kind"]
    score = record.get("score")
    low, high, required = SCORE_RULES.get(kind, DEFAULT_SCORE_RULE)
    if score is None:
        if required:
            raise DeadLetter(MISSING_SCORE, f"{kind} without a score; send a score from {low} to {high}")
    elif not low <= score <= high:
        raise DeadLetter(SCORE_OUT_OF_RANGE, f"{kind} score {score} is outside {low}..{high}; send a score from {low} to {high}")
    if kind == "vote" and not record.get("in_reply_to"):
        raise DeadLetter(INVALID_FIELD, "vote without in_reply_to; set in_reply_to to the event_id of the idea voted on")


def _check_response(record: dict) -> None:
    kind = record["kind"]
    if not record["in_reply_to"].strip():
        raise DeadLetter(INVALID_FIELD, f"{kind} without in_reply_to; set in_reply_to to the event_id of the feedback "
                                        "answered or closed, or of the idea whose status changed")
    _require_id(record["in_reply_to"], "in_reply_to")
    _require_id(record["team"], "team")
    status = record.get("status")
    if kind == IDEA_STATUS and status is None:
        raise DeadLetter(MISSING_STATUS, "idea_status without a status; send under_review, planned, in_progress, "
                                         "shipped or declined")
    if kind != IDEA_STATUS and status is not None:
        raise DeadLetter(UNEXPECTED_STATUS, f"{kind} with status {status!r}; only idea_status carries a status "
                                            "(send a separate idea_status event for the idea)")
