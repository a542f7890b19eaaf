"""The ``copulse`` command. Each subcommand lives in its own module exposing
``add_arguments(parser)`` and ``run(args, settings) -> int``; this file only wires them together."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from pydantic import ValidationError

from copulse import __version__

#: subcommand -> (module, one-line help). Nested commands use a space ("topics create").
COMMANDS: dict[str, tuple[str, str]] = {
    "worker": ("streams.worker_cli", "run the Faust worker: decode, validate, window KPIs, sink to ClickHouse"),
    "topics create": ("streams.topics", "create the input, dead-letter and late topics (idempotent)"),
    "generate": ("copulse.generator", "produce realistic purchase/usage/feedback events"),
    "db migrate": ("sinks.migrations", "apply ClickHouse migrations (idempotent)"),
    "kpis": ("copulse.kpis_command", "print the latest final KPI scorecard from ClickHouse"),
    "scorecard": ("copulse.scorecard.definition", "validate and print the value co-creation scorecard (targets, weights)"),
    "vci score": ("copulse.scorecard.job", "score final KPI windows into the vci table (what the worker does every few seconds)"),
    "live": ("copulse.live", "live value co-creation scorecard in the terminal (index, perspectives, KPIs, pipeline)"),
    "report": ("copulse.report", "self-contained HTML report of the value co-creation scorecard over a time range"),
    "reconcile": ("copulse.reconcile", "audit ClickHouse against the input topics for a time range (--repair fixes it)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="copulse",
        description="Real-time value co-creation KPIs: Kafka -> Faust -> ClickHouse + Prometheus. "
        "Configuration comes from COPULSE_* environment variables (see README).",
    )
    parser.add_argument("--version", action="version", version=f"copulse {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, (module_name, help_text) in COMMANDS.items():
        parts = name.split(" ")
        holder = top
        if len(parts) == 2:
            if parts[0] not in groups:
                group = top.add_parser(parts[0], help=f"{parts[0]} commands")
                groups[parts[0]] = group.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
            holder = groups[parts[0]]
        sub = holder.add_parser(parts[-1], help=help_text, description=help_text)
        module = importlib.import_module(module_name)
        module.add_arguments(sub)
        sub.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "_module", None):
        parser.print_help()
        return 0
    from copulse.settings import get_settings

    try:
        settings = get_settings()
    except ValidationError as exc:
        print(f"copulse: configuration error, fix these COPULSE_* variables:\n{exc}", file=sys.stderr)
        return 2
    return int(args._module.run(args, settings) or 0)


if __name__ == "__main__":
    sys.exit(main())
