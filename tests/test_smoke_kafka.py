"""Smoke test of the real Kafka (local stack, testcontainers or COPULSE_KAFKA_BOOTSTRAP_SERVERS)."""

from __future__ import annotations

import uuid

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

pytestmark = pytest.mark.integration


def test_produce_and_consume_on_a_fresh_topic(kafka_bootstrap, topic_factory):
    topic = topic_factory(partitions=3, prefix="smoke")
    payload = uuid.uuid4().bytes

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        metadata = producer.send(topic, key=b"smoke-key", value=payload).get(timeout=30)
    finally:
        producer.close()
    assert metadata.topic == topic

    consumer = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        enable_auto_commit=False,
        consumer_timeout_ms=20000,
    )
    try:
        partition = TopicPartition(topic, metadata.partition)
        consumer.assign([partition])
        consumer.seek(partition, metadata.offset)
        record = next(iter(consumer))
    finally:
        consumer.close()
    assert (record.key, record.value, record.offset) == (b"smoke-key", payload, metadata.offset)


def test_fresh_topic_has_the_requested_partitions(kafka_bootstrap, topic_factory):
    topic = topic_factory(partitions=6)
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
    try:
        assert consumer.partitions_for_topic(topic) == set(range(6))
    finally:
        consumer.close()
