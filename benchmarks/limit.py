"""The Python limit: a plain aiokafka consumer that only fetches the input topics and Avro-decodes every
value with ``streams.codec.Decoder`` (no validation, no state, no sink, no commits).

    python -m benchmarks.limit --topics P,U,F --expect N [--no-decode]

Prints one JSON line: {"messages", "first", "last", "cpu"} with wall-clock times of the first and last
message handled and the process CPU seconds between them. ``--no-decode`` only fetches (the client's cost).
Faust's consumer is aiokafka too, so this is the ceiling a worker on the same client can approach.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time


async def consume(args) -> dict:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.codec import Decoder

    decoder = Decoder()
    decode = decoder.decode
    consumer = AIOKafkaConsumer(bootstrap_servers=args.bootstrap, enable_auto_commit=False, group_id=None,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=1 << 20)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in args.topics.split(",") for p in partitions(args.bootstrap, t)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        n, first, cpu0 = 0, None, 0.0
        while n < args.expect:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for records in batches.values():
                if first is None:
                    first, cpu0 = time.time(), time.process_time()
                if args.no_decode:
                    n += len(records)
                else:
                    for rec in records:
                        decode(rec.value)
                    n += len(records)
        return {"messages": n, "first": first, "last": time.time(), "cpu": time.process_time() - cpu0}
    finally:
        await consumer.stop()


def partitions(bootstrap: str, topic: str) -> list[int]:
    """Partition ids of a topic (aiokafka >= 0.13 answers None for topics it does not track yet)."""
    from kafka import KafkaConsumer

    probe = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        return sorted(probe.partitions_for_topic(topic) or ())
    finally:
        probe.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", default="localhost:9092")
    parser.add_argument("--topics", required=True)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--no-decode", action="store_true")
    print(json.dumps(asyncio.run(consume(parser.parse_args()))), flush=True)


if __name__ == "__main__":
    main()
