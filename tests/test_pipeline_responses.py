"""Enterprise events in the pipeline, without Kafka: stored raw and folded into the enterprise counters of their own
window, never into consumer activity; their source's clock moves with their event time like any other."""

from __future__ import annotations

import asyncio
import time
from collections import namedtuple

from helpers_events import response, unit_settings, usage

from streams.codec import encode
from streams.pipeline import Pipeline

Msg = namedtuple("Msg", "offset key value timestamp")
MINUTE_MS = 60_000


class Recorder:
    """The pipeline's callbacks: the sink keeps every batch, sends and changelog writes succeed at once."""

    def __init__(self) -> None:
        self.batches = []

    def store(self, batch) -> None:
        self.batches.append(batch)

    async def send(self, *message):
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def persist(self, partition, records):
        return []

    async def commit(self, positions) -> None:
        return None


def run(settings, feed) -> Recorder:
    recorder = Recorder()

    async def main():
        pipeline = Pipeline(settings, sink=recorder, send=recorder.send, persist=recorder.persist,
                            commit=recorder.commit)
        pipeline.restore(0, [])
        await feed(pipeline)

    asyncio.run(main())
    return recorder


def test_responses_are_stored_raw_and_counted_in_their_own_window_only():
    settings = unit_settings(granularities=["1m"], allowed_lateness_seconds=0, idle_timeout_seconds=1)
    start = (int(time.time() * 1000) // MINUTE_MS - 60) * MINUTE_MS  # an hour ago, on a minute boundary
    uses = [Msg(i, b"c-0001", encode("usage", usage(event_id=f"u{i}", occurred_at=start + i * 20_000)), None)
            for i in range(9)]  # three minutes of usage
    answers = [Msg(i, b"c-0001", encode("response", response(event_id=f"r{i}", occurred_at=start + i * 20_000 + 5)), None)
               for i in range(9)]  # and responses all the while

    async def feed(pipeline):
        await pipeline.handle_batch(settings.topic_usage, 0, uses)
        await pipeline.handle_batch(settings.topic_responses, 0, answers)
        await pipeline.flush()  # purchases and feedback never delivered: they hold the watermark until idle
        await asyncio.sleep(1.2)
        now = time.time()
        for source in ("usage", "response"):  # both still have messages waiting in Kafka: neither is idle
            pipeline.hold_source(source, 0, now)
        await pipeline.flush()

    recorder = run(settings, feed)
    events = [raw.event for batch in recorder.batches for raw in batch.events]
    rows = [row for batch in recorder.batches for row in batch.kpi_rows if row.slice == "overall"]
    assert sorted(e.event_id for e in events if e.type == "response") == [f"r{i}" for i in range(9)]
    finals = [row for row in rows if row.is_final]
    # the first two minutes closed (the response source's clock moved with its event times, 5 ms ahead of usage)
    assert [(row.window_start, row.events, row.enterprise_events, row.answers_sent) for row in finals] == [
        (start // 1000, 3, 3, 3), ((start + MINUTE_MS) // 1000, 3, 3, 3)]
    assert rows and all(row.events == 3 and row.active_consumers == 1 for row in rows)  # usage only: answers make
    # nobody active
