"""The peer: a subset of copulse's job written idiomatically with Quix Streams, on the same topics.

    python -m benchmarks.quix_peer --topics P,U,F --group G --database DB [--commit-interval 1]

Computes, per 1-minute event-time tumbling window:

* events per channel: ``group_by(channel)`` (Quix repartitions through a topic) -> ``tumbling_window(1 min,
  grace 10 min).count().current()``; the sink keeps the newest (highest) count per minute and channel;
* distinct active consumers: the input is keyed by consumer_id, so ``tumbling_window(1 min, grace 30 s)
  .count().final(closing_strategy="partition")`` emits one row per (consumer, minute) with an event, then
  ``group_by("all")`` -> ``tumbling_window(1 min, grace 10 min).count().current()``; the sink keeps the newest
  (highest) count per minute. (A single global window reducing into a set would re-serialize the whole set
  to the state store on every message — Quix serializes state values on every ``set`` — so the two-stage
  count is the idiomatic scalable form; ``.current()`` because a second-stage window only closes when later
  first-stage windows close.)

Grace: after a ``group_by`` a partition interleaves the events of all input partitions, which in a replay
are minutes of event time apart, so a window after a ``group_by`` with a 30 s grace drops most of them as
late (measured: a third of the events per channel were missing with ``final()`` and grace 30 s). Hence
``.current()`` with a 10 min grace there: nothing has to close, nothing is dropped, every update is written
(Quix emits one row per message into the sink). The first stage reads the input partitions directly and
uses copulse's allowed lateness (30 s).

Values are decoded with the same fastavro-based ``streams.codec.Decoder`` copulse uses, wrapped in a Quix
``Deserializer``; event time is ``occurred_at`` (a ``timestamp_extractor``). Results go to ClickHouse through
a ``BatchingSink`` (tables ``peer_channel_minute`` and ``peer_active_minute`` in DB), written at every
checkpoint like copulse's sink. First-stage windows close when their partition's stream time passes end + grace;
the end markers of benchmarks/load.py (one per channel, partition and topic) close the last ones.

The first consumed message's wall-clock time is written to ``--first-file`` (one write).
"""

from __future__ import annotations

import argparse
import logging
import time
from datetime import UTC, datetime, timedelta


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", default="localhost:9092")
    parser.add_argument("--topics", required=True, help="purchases,usage,feedback topic names")
    parser.add_argument("--group", required=True)
    parser.add_argument("--database", required=True)
    parser.add_argument("--ch-port", type=int, default=9000)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--commit-interval", type=float, default=1.0)
    parser.add_argument("--first-file", required=True)
    args = parser.parse_args()

    from clickhouse_driver import Client
    from quixstreams import Application
    from quixstreams.models.serializers import Deserializer
    from quixstreams.sinks import BatchingSink

    from streams.codec import Decoder

    decoder = Decoder()

    class AvroDeserializer(Deserializer):
        def __call__(self, value: bytes, ctx):
            return decoder.decode(value)[1]

    epoch, one_ms = datetime(1970, 1, 1, tzinfo=UTC), timedelta(milliseconds=1)

    def event_time(value, headers, timestamp, timestamp_type) -> int:
        return (value["occurred_at"] - epoch) // one_ms

    client = Client(host="localhost", port=args.ch_port, user="default", database="default")
    client.execute(f"CREATE DATABASE IF NOT EXISTS `{args.database}`")
    client.execute(f"CREATE TABLE IF NOT EXISTS `{args.database}`.peer_channel_minute (window_start UInt64, channel String, "
                   "events UInt64) ENGINE = ReplacingMergeTree ORDER BY (window_start, channel)")
    client.execute(f"CREATE TABLE IF NOT EXISTS `{args.database}`.peer_active_minute (window_start UInt64, "
                   "active_consumers UInt64) ENGINE = ReplacingMergeTree ORDER BY window_start")

    class ClickHouseSink(BatchingSink):
        def __init__(self, table: str, columns: tuple[str, ...], row) -> None:
            super().__init__()
            self.table, self.columns, self.row = table, columns, row

        def write(self, batch) -> None:
            rows = [self.row(item.key, item.value) for item in batch]
            if rows:
                client.execute(f"INSERT INTO `{args.database}`.{self.table} ({', '.join(self.columns)}) VALUES", rows)

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        commit_interval=args.commit_interval,
        state_dir=args.state_dir,
        loglevel="WARNING",
    )
    names = args.topics.split(",")
    topics = [app.topic(n, key_deserializer="str", value_deserializer=AvroDeserializer(), timestamp_extractor=event_time)
              for n in names]
    sdf = app.dataframe(topics[0])
    for t in topics[1:]:
        sdf = sdf.concat(app.dataframe(t))

    first = {"done": False}

    def mark_first(value):
        if not first["done"]:
            first["done"] = True
            with open(args.first_file, "w") as fh:
                fh.write(repr(time.time()))

    sdf = sdf.update(mark_first)
    # only what the two KPIs need travels through the repartition topics (JSON)
    sdf = sdf.apply(lambda e: {"channel": e["channel"], "consumer_id": e["consumer_id"]})

    minute, grace = 60_000, 30_000  # grace = copulse's allowed lateness
    late_ok = 600_000  # after a group_by: input partitions are interleaved minutes apart in a replay
    by_channel = (sdf.group_by("channel", name="channel")
                  .tumbling_window(minute, grace_ms=late_ok).count().current())
    by_channel.sink(ClickHouseSink("peer_channel_minute", ("window_start", "channel", "events"),
                                   lambda key, v: (v["start"], key, v["value"])))

    per_consumer = sdf.tumbling_window(minute, grace_ms=grace).count().final(closing_strategy="partition")
    active = (per_consumer.group_by(lambda v: "all", name="all")
              .tumbling_window(minute, grace_ms=late_ok).count().current())
    active.sink(ClickHouseSink("peer_active_minute", ("window_start", "active_consumers"),
                               lambda key, v: (v["start"], v["value"])))
    logging.getLogger("quixstreams").setLevel(logging.WARNING)
    app.run()


if __name__ == "__main__":
    main()
