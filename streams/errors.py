"""Explicit error types of the pipeline.

* :class:`DeadLetter` -- the *message* is bad; it goes to the dead-letter topic with headers saying why, and
  processing continues. ``reason`` is one of the short snake_case codes below, ``detail`` tells a human
  what is wrong and what the producer should do about it.
* :class:`RetryableError` -- a *dependency* is down (Schema Registry, ClickHouse); the message is fine and
  must be retried later, never dead-lettered.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum


class Reason(StrEnum):
    """Dead-letter reason codes (header ``copulse.reason``)."""

    BAD_MAGIC_BYTE = "bad_magic_byte"  # not Confluent framing: first byte != 0 or shorter than 5 bytes
    UNKNOWN_SCHEMA_ID = "unknown_schema_id"  # schema id neither shipped nor in the registry
    UNDECODABLE = "undecodable"  # Avro body does not decode (truncated, garbage, trailing bytes, ...)
    MISSING_KEY = "missing_key"  # message has no key
    KEY_MISMATCH = "key_mismatch"  # key != consumer_id of the record
    WRONG_EVENT_TYPE = "wrong_event_type"  # schema of another event type on this topic
    SCORE_OUT_OF_RANGE = "score_out_of_range"
    MISSING_SCORE = "missing_score"  # rating / nps without a score
    MISSING_STATUS = "missing_status"  # idea_status response without a status
    UNEXPECTED_STATUS = "unexpected_status"  # status on a response kind other than idea_status
    NEGATIVE_AMOUNT = "negative_amount"
    NEGATIVE_QUANTITY = "negative_quantity"
    FUTURE_EVENT_TIME = "future_event_time"  # occurred_at too far after the worker's wall clock
    UNKNOWN_ENUM = "unknown_enum"  # channel or enum symbol the reader does not know
    UNSUPPORTED_CURRENCY = "unsupported_currency"  # currency != COPULSE_CURRENCY
    INVALID_FIELD = "invalid_field"  # anything else (empty ids, zero quantity, ...)
    LATE_EVENT = "late_event"  # used by the window engine for copulse.late, never by decoding
    WINDOW_CLOSED = "window_closed"  # window engine: its window was already closed by an idle watermark


# module constants, for ``from streams.errors import UNDECODABLE``
BAD_MAGIC_BYTE = Reason.BAD_MAGIC_BYTE.value
UNKNOWN_SCHEMA_ID = Reason.UNKNOWN_SCHEMA_ID.value
UNDECODABLE = Reason.UNDECODABLE.value
MISSING_KEY = Reason.MISSING_KEY.value
KEY_MISMATCH = Reason.KEY_MISMATCH.value
WRONG_EVENT_TYPE = Reason.WRONG_EVENT_TYPE.value
SCORE_OUT_OF_RANGE = Reason.SCORE_OUT_OF_RANGE.value
MISSING_SCORE = Reason.MISSING_SCORE.value
MISSING_STATUS = Reason.MISSING_STATUS.value
UNEXPECTED_STATUS = Reason.UNEXPECTED_STATUS.value
NEGATIVE_AMOUNT = Reason.NEGATIVE_AMOUNT.value
NEGATIVE_QUANTITY = Reason.NEGATIVE_QUANTITY.value
FUTURE_EVENT_TIME = Reason.FUTURE_EVENT_TIME.value
UNKNOWN_ENUM = Reason.UNKNOWN_ENUM.value
UNSUPPORTED_CURRENCY = Reason.UNSUPPORTED_CURRENCY.value
INVALID_FIELD = Reason.INVALID_FIELD.value
LATE_EVENT = Reason.LATE_EVENT.value
WINDOW_CLOSED = Reason.WINDOW_CLOSED.value

#: every reason code, in declaration order
REASONS: tuple[str, ...] = tuple(r.value for r in Reason)
#: the reason codes decoding/validation can raise (all but the window engine's)
DECODE_REASONS: tuple[str, ...] = tuple(r for r in REASONS if r not in (LATE_EVENT, WINDOW_CLOSED))


class DeadLetter(Exception):
    """The message is bad and goes to the dead-letter topic. Never retried."""

    def __init__(self, reason: str, detail: str):
        reason = str(reason)
        if reason not in REASONS:
            raise ValueError(f"unknown dead-letter reason {reason!r}; use one of {REASONS}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self):  # picklable with both arguments
        return (type(self), (self.reason, self.detail))


class RetryableError(Exception):
    """A dependency (Schema Registry, ClickHouse, ...) is unavailable: retry the same message later."""


#: names of the dead-letter headers
HEADER_REASON = "copulse.reason"
HEADER_DETAIL = "copulse.detail"
HEADER_SOURCE_TOPIC = "copulse.source.topic"
HEADER_SOURCE_PARTITION = "copulse.source.partition"
HEADER_SOURCE_OFFSET = "copulse.source.offset"
HEADER_DEAD_LETTERED_AT = "copulse.dead_lettered_at"


def iso_utc_ms(epoch_ms: int) -> str:
    """1700000000123 -> '2023-11-14T22:13:20.123Z'."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


def dead_letter_headers(
    reason: str, detail: str, topic: str, partition: int, offset: int, now_ms: int
) -> list[tuple[str, bytes]]:
    """Kafka headers of a dead-lettered message (the value and key are forwarded unchanged).

    All header values are UTF-8 text; partition and offset are decimal numbers, the time ISO-8601 UTC.
    """
    return [
        (HEADER_REASON, str(reason).encode()),
        (HEADER_DETAIL, str(detail).encode("utf-8", "replace")),
        (HEADER_SOURCE_TOPIC, str(topic).encode()),
        (HEADER_SOURCE_PARTITION, str(int(partition)).encode()),
        (HEADER_SOURCE_OFFSET, str(int(offset)).encode()),
        (HEADER_DEAD_LETTERED_AT, iso_utc_ms(int(now_ms)).encode()),
    ]
