"""``copulse worker``: migrate ClickHouse, create topics, serve metrics, run the Faust worker."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def add_arguments(parser) -> None:
    parser.add_argument("--loglevel", default="info", help="Faust worker log level (default: info)")


def run(args, settings) -> int:
    import faust
    from prometheus_client import start_http_server

    from sinks.migrations import migrate
    from streams.app import build_app
    from streams.topics import ensure_topics

    migrate(settings)
    ensure_topics(settings)
    start_http_server(settings.metrics_port, addr=settings.bind_host)
    log.info("metrics on http://%s:%d/metrics", settings.bind_host, settings.metrics_port)
    app = build_app(settings)
    worker = faust.Worker(app, loglevel=args.loglevel, override_logging=False)
    worker.execute_from_commandline()
    return 0
