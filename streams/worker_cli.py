"""``copulse worker``: prepare (migrate ClickHouse, create topics, serve /metrics), then run the Faust app
of streams/app.py, exactly as ``faust -A streams.app worker`` would."""

from __future__ import annotations

import sys


def add_arguments(parser) -> None:
    parser.add_argument("--loglevel", default="info", help="Faust worker log level (default: info)")


def run(args, settings) -> int:
    import faust

    from streams import startup

    problem = startup.prepare_all(settings)
    if problem:
        print(f"copulse worker: {problem}", file=sys.stderr)
        return 1
    from streams.app import app  # built from the environment, like ``settings``

    app.prepared = True
    worker = faust.Worker(app, loglevel=args.loglevel, override_logging=False)
    worker.execute_from_commandline()
    return 0
