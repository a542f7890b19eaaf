"""Builders of valid event records and settings for the codec / validation / generator tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

from copulse.settings import Settings

#: a fixed 'now' of the worker for unit tests: 2024-05-01T12:00:00Z
NOW_MS = 1_714_564_800_000
T0 = datetime(2024, 5, 1, 11, 59, tzinfo=UTC)


def unit_settings(**overrides) -> Settings:
    """Settings with the documented defaults, independent of COPULSE_* variables of the environment."""
    values = dict(
        topic_purchases="copulse.purchases",
        topic_usage="copulse.usage",
        topic_feedback="copulse.feedback",
        topic_responses="copulse.responses",
        topic_dlq="copulse.dlq",
        topic_late="copulse.late",
        currency="EUR",
        max_future_skew_seconds=300,
        allowed_lateness_seconds=30,
        granularities=["1m", "1h"],
        schema_registry_url=None,
    )
    values.update(overrides)
    return Settings(**values)


def common(consumer_id: str = "c-0001") -> dict:
    record = {
        "event_id": "ev-" + uuid.uuid5(uuid.NAMESPACE_URL, consumer_id).hex[:12],
        "consumer_id": consumer_id,
        "occurred_at": T0,
        "channel": "web",
        "region": "DE",
        "segment": "loyal",
    }
    return record


def purchase(**overrides) -> dict:
    record = common(overrides.get("consumer_id", "c-0001"))
    record.update(
        schema_version=1,
        order_id="o-1",
        product_id="AUD-001",
        category="audio",
        quantity=2,
        amount=Decimal("259.80"),
        currency="EUR",
    )
    record.update(overrides)
    return record


def usage(**overrides) -> dict:
    record = common(overrides.get("consumer_id", "c-0001"))
    record.update(
        schema_version=2,
        session_id="s-1",
        action="feature_use",
        feature="search",
        product_id="AUD-001",
        category="audio",
        duration_ms=None,
        co_creation=False,
        app_version="5.4.0",
    )
    record.update(overrides)
    return record


def usage_v1(**overrides) -> dict:
    record = usage(**overrides)
    record.pop("app_version", None)
    record["schema_version"] = 1
    return record


def feedback(**overrides) -> dict:
    record = common(overrides.get("consumer_id", "c-0001"))
    record.update(
        schema_version=1,
        kind="rating",
        score=4,
        product_id="AUD-001",
        category="audio",
        text=None,
        in_reply_to=None,
    )
    record.update(overrides)
    return record


def response(**overrides) -> dict:
    """A response of the enterprise to a feedback event of consumer c-0001 (kind response, status null)."""
    record = common(overrides.get("consumer_id", "c-0001"))
    record.update(
        event_id="ev-response-1",
        schema_version=1,
        kind="response",
        in_reply_to="ev-feedback-1",
        team="support",
        status=None,
        product_id="AUD-001",
        category="audio",
        text="Thanks, we are on it.",
    )
    record.update(overrides)
    return record


BUILDERS = {"purchase": purchase, "usage": usage, "feedback": feedback, "response": response}
