"""Decode rate on one core, in-process (no Kafka): the shipped catalogue, mixed event types and versions.

    python -m benchmarks.decode [N]      # N messages per measurement, default 200,000

Prints one line per measurement: ``Decoder.decode`` alone, then ``decode_event`` (decode + validation +
``Event``), in messages per second and microseconds per message.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from decimal import Decimal

import fastavro

from copulse.settings import Settings
from streams.codec import Decoder, encode
from streams.validation import decode_event


def samples(settings: Settings) -> list[tuple[str, bytes]]:
    """(topic, value) of one purchase, one usage v2, one usage v1 and one feedback message."""
    at = datetime.now(UTC).replace(microsecond=0)
    common = {"consumer_id": "c-42", "occurred_at": at, "channel": "app", "region": "DE", "segment": "loyal"}
    return [
        (settings.topic_purchases, encode("purchase", {**common, "event_id": "e1", "order_id": "o-1", "product_id": "AUD-001",
                                                       "category": "audio", "quantity": 2, "amount": Decimal("259.80"), "currency": settings.currency})),
        (settings.topic_usage, encode("usage", {**common, "event_id": "e2", "session_id": "s-1", "action": "feature_use", "feature": "search",
                                                "product_id": "AUD-001", "category": "audio", "co_creation": False, "app_version": "5.4.0"})),
        (settings.topic_usage, encode(201, {**common, "event_id": "e3", "session_id": "s-1", "action": "session_end", "product_id": "AUD-001",
                                            "category": "audio", "duration_ms": 61_000, "co_creation": False})),
        (settings.topic_feedback, encode("feedback", {**common, "event_id": "e4", "kind": "nps", "score": 9, "product_id": "AUD-001",
                                                      "category": "audio"})),
    ]  # fmt: skip


def run(n: int) -> None:
    settings = Settings(schema_registry_url=None)
    messages = samples(settings)
    decoder = Decoder(settings)
    now_ms = int(time.time() * 1000)
    for label, fn in (
        ("Decoder.decode", lambda topic, value: decoder.decode(value)),
        ("decode_event (decode + validate + Event)", lambda topic, value: decode_event(decoder, settings, topic, b"c-42", value, now_ms)),
    ):
        started = time.perf_counter()
        for i in range(n):
            topic, value = messages[i & 3]
            fn(topic, value)
        elapsed = time.perf_counter() - started
        print(f"{label}: {n / elapsed:,.0f} msgs/s ({elapsed / n * 1e6:.1f} us/msg, fastavro {fastavro.__version__})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", nargs="?", type=int, default=200_000, help="messages per measurement")
    run(parser.parse_args().n)


if __name__ == "__main__":
    main()
