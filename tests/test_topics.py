"""ensure_topics / `copulse topics create` on the real broker: creates the 7 topics once, then is a no-op."""

from __future__ import annotations

import logging
import uuid

import pytest
from helpers_events import unit_settings

from copulse import cli
from streams.topics import ensure_topics, partition_counts, topic_names

pytestmark = pytest.mark.integration


@pytest.fixture
def fresh_settings(kafka_bootstrap):
    """Settings whose 7 topic names (app id too) are unique to this test; the topics are deleted afterwards."""
    from kafka.admin import KafkaAdminClient

    prefix = f"tt_{uuid.uuid4().hex[:10]}"
    settings = unit_settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        partitions=3,
        app_id=prefix,
        **{f"topic_{name}": f"{prefix}.{name}" for name in ("purchases", "usage", "feedback", "responses", "dlq", "late")},
    )
    yield settings
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="copulse-tests")
    try:
        existing = set(admin.list_topics())
        doomed = [t for t in topic_names(settings) if t in existing]
        if doomed:
            admin.delete_topics(doomed, timeout_ms=30_000)
    finally:
        admin.close()


def _counts(settings):
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, client_id="copulse-tests")
    try:
        return partition_counts(admin, topic_names(settings))
    finally:
        admin.close()


def test_ensure_topics_creates_the_seven_topics_once(fresh_settings):
    created = ensure_topics(fresh_settings)
    assert created == topic_names(fresh_settings)
    assert _counts(fresh_settings) == {name: 3 for name in topic_names(fresh_settings)}
    assert ensure_topics(fresh_settings) == []  # idempotent
    assert ensure_topics(fresh_settings) == []


def test_existing_input_topic_with_other_partition_count_is_kept_with_a_warning(fresh_settings, topic_factory, caplog):
    ensure_topics(fresh_settings)
    more = fresh_settings.model_copy(update={"partitions": 5})
    with caplog.at_level(logging.WARNING, logger="streams.topics"):
        assert ensure_topics(more) == []
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "streams.topics"]
    inputs = set(fresh_settings.source_topics.values())
    assert {w.split()[1] for w in warned} == inputs, warned  # dlq/late partition counts do not matter
    assert all("COPULSE_PARTITIONS=5" in w and "3 partitions" in w for w in warned)
    assert _counts(fresh_settings)[fresh_settings.topic_usage] == 3  # never changed


def test_ensure_topics_creates_only_the_missing_ones(fresh_settings, kafka_bootstrap):
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="copulse-tests")
    try:
        admin.create_topics([NewTopic(fresh_settings.topic_dlq, 1, 1)], timeout_ms=30_000, wait_for_metadata=True)
    finally:
        admin.close()
    created = ensure_topics(fresh_settings)
    assert fresh_settings.topic_dlq not in created and len(created) == 6


def test_cli_topics_create(fresh_settings, monkeypatch, capsys):
    monkeypatch.setattr("copulse.settings.get_settings", lambda: fresh_settings)
    assert cli.main(["topics", "create"]) == 0
    first = capsys.readouterr().out
    assert first.count("created") == 7
    assert cli.main(["topics", "create"]) == 0
    second = capsys.readouterr().out
    assert second.count("exists") == 7 and "created" not in second


def test_cli_topics_create_says_what_to_do_when_kafka_is_down(monkeypatch, capsys):
    down = unit_settings(kafka_bootstrap_servers="127.0.0.1:9")
    monkeypatch.setattr("copulse.settings.get_settings", lambda: down)
    assert cli.main(["topics", "create", "--timeout", "3"]) == 1
    assert "make up" in capsys.readouterr().err
