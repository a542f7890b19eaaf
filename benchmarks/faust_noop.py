"""Faust's own ceiling: the copulse worker's Faust set-up (same App settings, one agent over the three
topics, ``stream.noack()``, manual ack) with an agent that does nothing but ack every event — no decode,
no state, no changelog, no sink. What is left is fetching, Faust's delivery to the agent, acks and commits.

    python -m benchmarks.faust_noop --topics P,U,F --app-id ID --first-file F --web-port N

Timed by the driver from the first event (written to ``--first-file``) to every input offset committed.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", default="localhost:9092")
    parser.add_argument("--topics", required=True)
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--first-file", required=True)
    parser.add_argument("--web-port", type=int, required=True)
    parser.add_argument("--datadir", required=True)
    args = parser.parse_args()

    import faust

    app = faust.App(
        args.app_id, broker=f"kafka://{args.bootstrap}", store="memory://", datadir=args.datadir,
        key_serializer="raw", value_serializer="raw", producer_acks=-1, consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0, web_port=args.web_port, web_bind="127.0.0.1", stream_wait_empty=False,
    )
    sources = app.topic(*args.topics.split(","), key_type=bytes, value_type=bytes)
    first = {"done": False}

    @app.agent(sources)
    async def noop(stream):
        manual = stream.noack()
        async for event in manual.events():
            if not first["done"]:
                first["done"] = True
                with open(args.first_file, "w") as fh:  # noqa: ASYNC230 - once, a few bytes
                    fh.write(repr(time.time()))
            await manual.ack(event)

    faust.Worker(app, loglevel="warning", override_logging=False).execute_from_commandline()


if __name__ == "__main__":
    main()
