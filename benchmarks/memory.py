"""State memory of the window engine versus distinct consumers per hour, measured in a fresh subprocess
that feeds ``streams.engine.PartitionEngine`` directly (no Kafka, no Faust, no ClickHouse).

    python -m benchmarks.memory --consumers 100000

One engine, default slices and granularities (1 m, 1 h). Every consumer has two valid events in the same
hour, 30 s apart (a ``feature_use`` plus a purchase, a rating or a ``session_start``), spread evenly over
the hour; dimensions cycle through 6 channels, 8 regions, 6 segments, 48 products, 10 features. Events are
fed in event-time order with a flush every 5,000 events (rows and changelog records are dropped), so 1 m
windows close and are pruned as event time passes, like in the worker. Measured just before the hour ends,
when the 1 h window holds every consumer (the worker's peak):

* ``rss_state`` = RSS at the end - RSS after start-up (interpreter, imports, empty engine), after gc;
* ``memberships`` = distinct (consumer, window, slice values) the consumers' membership entries project onto;
* ``bytes_per_membership`` = rss_state / memberships: everything the engine holds (membership entries,
  event ids kept for deduplication, aggregates, indexes) per distinct consumer per window and slice.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import json
import time
from decimal import Decimal

CHANNELS = ("web", "app", "store", "call_center", "marketplace", "partner")
REGIONS = ("DE", "FR", "NL", "ES", "IT", "PL", "SE", "AT")
SEGMENTS = ("new", "regular", "loyal", "vip", "business", None)
CATEGORIES = ("audio", "wearables", "smart_home", "accessories", "software", "services")
FEATURES = ("search", "recommendations", "wishlist", "order_tracking", "compare", "configurator", "size_guide",
            "loyalty_wallet", "live_chat", "ar_preview")


def rss() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def events(n: int, hour_ms: int):
    """(occurred_ms, seq, Event) in event-time order: two events per consumer, 30 s apart, in one hour."""
    from streams.events import Event

    span = 3_600_000 - 30_001

    def make(i: int, second: bool):
        ts = hour_ms + i * span // n + (30_000 if second else 0)
        cid = f"c-{i:010x}"
        cat = CATEGORIES[i % 6]
        common = {"consumer_id": cid, "occurred_ms": ts, "channel": CHANNELS[i % 6], "region": REGIONS[(i // 6) % 8],
                  "segment": SEGMENTS[(i // 48) % 6], "product_id": f"{cat[:3].upper()}-{(i // 7) % 8 + 1:03d}",
                  "category": cat, "schema_id": 0}
        eid = f"{i:08x}-{int(second)}aaa-4bbb-8ccc-{i:012x}"
        kind = i % 3 if second else None
        if kind is None:
            return Event(type="usage", event_id=eid, record={"action": "feature_use", "co_creation": False,
                                                              "feature": FEATURES[i % 10]}, **common)
        if kind == 0:
            return Event(type="purchase", event_id=eid, record={"order_id": f"o-{i:016x}", "amount": Decimal("19.99")},
                         **common)
        if kind == 1:
            return Event(type="feedback", event_id=eid, record={"kind": "rating", "score": 4}, **common)
        return Event(type="usage", event_id=eid, record={"action": "session_start", "co_creation": False}, **common)

    firsts = ((hour_ms + i * span // n, 2 * i, i, False) for i in range(n))
    seconds = ((hour_ms + i * span // n + 30_000, 2 * i + 1, i, True) for i in range(n))
    for ts, seq, i, second in heapq.merge(firsts, seconds):
        yield ts, seq, make(i, second)


def measure(n: int) -> dict:
    from copulse.settings import Settings
    from streams import membership
    from streams.engine import SOURCE_INDEX, PartitionEngine

    settings = Settings()
    engine = PartitionEngine(0, settings)
    hour_ms = 1_767_225_600_000  # 2026-01-01T00:00Z
    gc.collect()
    base = rss()
    started = time.perf_counter()
    offsets = dict.fromkeys(SOURCE_INDEX, 0)
    now = 1_800_000_000.0
    # Only consumer activity is fed: the responses source never delivers, so it is idle (holds no window open)
    # once the idle timeout has passed, as in a worker whose responses topic stays empty.
    engine.flush(now)
    now += settings.idle_timeout_seconds + 1
    for k, (_, _, event) in enumerate(events(n, hour_ms)):
        engine.process(event, offsets[event.type], now)
        offsets[event.type] += 1
        if k % 5000 == 4999:
            now += 0.01
            engine.flush(now)
    engine.flush(now)
    feed_seconds = time.perf_counter() - started
    gc.collect()
    state = rss() - base
    memberships = 0
    consumer_windows = 0
    for window_members in engine.members.values():
        for entry in window_members.values():
            consumer_windows += 1
            for _, _, project in engine._projections:
                memberships += len(membership.projected(entry, project)[0])
    return {
        "consumers": n, "events": 2 * n, "rss_state": state, "memberships": memberships,
        "consumer_windows": consumer_windows, "bytes_per_membership": state / memberships if memberships else None,
        "bytes_per_consumer": state / n, "open_windows": len(engine.windows), "aggregates": len(engine.aggregates),
        "feed_seconds": feed_seconds, "events_per_s": 2 * n / feed_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--consumers", type=int, required=True)
    print(json.dumps(measure(parser.parse_args().consumers)), flush=True)


if __name__ == "__main__":
    main()
