"""``copulse worker``: prepare (migrate ClickHouse, create topics, serve /metrics), then run the Faust app
of streams/app.py, exactly as ``faust -A streams.app worker`` would."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--loglevel", default="info", help="Faust worker log level (default: info)")


def run(args, settings) -> int:
    import faust

    from streams import startup

    startup.prepare_or_exit(settings)  # a problem ends the process (exit 1) with a message saying what to do
    from streams.app import app  # built from the environment, like ``settings``

    app.prepared = True
    worker = faust.Worker(app, loglevel=args.loglevel, override_logging=False)
    worker.execute_from_commandline()
    return 0
