"""Pre-load the benchmark's input topics with generator output (``copulse.generator``).

Event time is laid out so that the last event falls just before a whole hour H in the past: every 1 m and
1 h window of the data ends at or before H. After the data, every partition of every input topic gets
*end markers* (valid events of its type, one per channel, consumer ``bench-marker-<p>-<channel>``, event time
H + allowed lateness + 1 s, sent to partition p explicitly): it moves every source partition's watermark past H, so all windows of the
data close by event time as soon as the worker has read everything — with the default settings (allowed
lateness 30 s, idle timeout 60 s), nothing waits for the wall clock. The markers' own windows (starting at
H) stay open and are not part of the checks. The data is in event-time order per partition (no jitter), so
no data event is late.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

from benchmarks.common import (
    KAFKA,
    create_topics,
    progress,
    settings_from_env,
    topic_env,
)


@dataclass
class Dataset:
    prefix: str
    topics: list[str]
    partitions: int
    messages: int
    consumers: int
    start_ms: int
    end_ms: int  # the hour boundary H every window of the data ends at or before
    seconds_to_produce: float
    data_events: int = 0  # messages before the end markers (each is in exactly one 1 m and one 1 h window)


def preload(prefix: str, events: int, *, consumers: int, event_time_rate: float, partitions: int = 6,
            seed: int = 1) -> Dataset:
    from copulse.generator import GeneratorOptions, generate_events, produce
    from streams.events import ACTIVITY_TYPES

    env = {"COPULSE_KAFKA_BOOTSTRAP_SERVERS": KAFKA, "COPULSE_PARTITIONS": str(partitions), **topic_env(prefix)}
    settings = settings_from_env(env)
    topics = list(settings.source_topics.values())
    create_topics(topics, partitions)
    span_s = events / event_time_rate
    hour_ms = int(time.time() // 3600 * 3600 * 1000)
    start_ms = hour_ms - int(span_s * 1000)
    options = GeneratorOptions(duration_s=span_s, consumers=consumers, seed=seed, start_ms=start_ms,
                               event_time_rate=event_time_rate)
    progress(f"pre-loading ~{events:,} events ({consumers:,} consumers, {event_time_rate:,.0f} events per second "
             f"of event time, {span_s / 60:.1f} min of event time ending at {time.strftime('%H:%M', time.gmtime(hour_ms / 1000))} UTC) "
             f"into {prefix}.{{purchases,usage,feedback}} ({partitions} partitions)")
    # the generator may step just past the end of its duration: keep every event before H
    # consumer activity only (the peer and the figures of earlier rounds know nothing of enterprise responses)
    messages = itertools.takewhile(lambda m: m.event["occurred_ms"] < hour_ms,
                                   (m for m in generate_events(settings, options) if m.type in ACTIVITY_TYPES))
    stats = produce(settings, messages, kafka=True, progress=False)
    if stats.failed:
        raise RuntimeError(f"pre-load: {stats.failed} sends failed")
    markers = send_end_markers(settings, hour_ms + (settings.allowed_lateness_seconds + 1) * 1000, partitions)
    progress(f"pre-loaded {stats.acked:,} messages + {markers} end markers in {stats.seconds:.1f} s ({stats.rate:,.0f}/s)")
    return Dataset(prefix, topics, partitions, stats.acked + markers, consumers, start_ms, hour_ms, stats.seconds,
                   data_events=stats.acked)


def marker_records(at_ms: int, p: int, channel: str, currency: str = "EUR") -> dict[str, dict]:
    """One valid record per event type for the end marker of partition ``p`` and one channel."""
    from datetime import UTC, datetime
    from decimal import Decimal

    common = {"consumer_id": f"bench-marker-{p}-{channel}", "occurred_at": datetime.fromtimestamp(at_ms / 1000, UTC),
              "channel": channel, "region": "DE", "segment": None, "product_id": "bench-marker", "category": "marker"}
    return {
        "purchase": {**common, "event_id": f"m-p-{p}-{channel}-{at_ms}", "order_id": f"m-{p}-{channel}", "quantity": 1,
                     "amount": Decimal("1.00"), "currency": currency},
        "usage": {**common, "event_id": f"m-u-{p}-{channel}-{at_ms}", "session_id": f"m-{p}-{channel}", "action": "session_start",
                  "co_creation": False},
        "feedback": {**common, "event_id": f"m-f-{p}-{channel}-{at_ms}", "kind": "idea", "text": "end marker"},
        "response": {**common, "event_id": f"m-r-{p}-{channel}-{at_ms}", "kind": "response",
                     "in_reply_to": f"m-f-{p}-{channel}-{at_ms}", "team": "bench", "status": None, "text": None},
    }


def send_partitioned(bootstrap: str, settings, records: list[tuple[int, str, dict]]) -> int:
    """Encode and send (partition, event type, record) to the input topics, keyed by consumer, into the
    given partition; returns once all are acknowledged (the number sent)."""
    from kafka import KafkaProducer

    from streams.codec import encode

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    futures = [producer.send(settings.source_topics[event_type], key=record["consumer_id"].encode(),
                             value=encode(event_type, record), partition=p) for p, event_type, record in records]
    producer.flush()
    for f in futures:
        f.get(timeout=30)
    producer.close()
    return len(futures)


def send_end_markers(settings, at_ms: int, partitions: int) -> int:
    from streams.validation import CHANNELS

    return send_partitioned(settings.kafka_bootstrap_servers, settings, [
        (p, event_type, record) for p in range(partitions) for ch in sorted(CHANNELS)
        for event_type, record in marker_records(at_ms, p, ch, settings.currency).items()])
