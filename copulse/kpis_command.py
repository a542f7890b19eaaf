"""``copulse kpis``: the latest final KPI scorecard from ClickHouse, as a terminal table or JSON.

Reads the ``kpi_final`` / ``kpi`` views as the read-only user (``COPULSE_CLICKHOUSE_READONLY_USER`` /
``_PASSWORD``, default copulse_reader) on the server and database of ``COPULSE_CLICKHOUSE_URL``.

Exit codes: 0 scorecard printed, 1 ClickHouse unreachable / not migrated / refused, 3 no such window yet.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from decimal import Decimal

from clickhouse_driver import errors as ch_errors

from copulse.readmodel import (
    SELECT_COLUMNS,
    UNREACHABLE,
    clickhouse_problem,
    granularity_text,
    iso,
    parse_window_start,
    reader_client,
)
from copulse.scorecard.catalogue import VIEW_KPIS, Kpi, format_value
from copulse.settings import DIMENSIONS, duration_seconds, slice_dimensions
from streams.kpis import COUNTERS

EXIT_OK, EXIT_ERROR, EXIT_NO_DATA = 0, 1, 3
CENT = Decimal("0.01")
MONEY_KPIS = tuple(kpi for kpi in VIEW_KPIS if kpi.unit == "money")


class KpisError(RuntimeError):
    """``copulse kpis`` cannot print a scorecard; ``exit_code`` says why."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR):
        super().__init__(message)
        self.exit_code = exit_code


# --- data --------------------------------------------------------------------------------------------


def fetch_scorecard(
    client, database: str, granularity_seconds: int, slice_name: str, window_start: dt.datetime | None
) -> dict:
    """The scorecard as a plain dict (see ``to_json``). Raises KpisError(EXIT_NO_DATA) if there is none."""
    params = {"g": granularity_seconds, "s": slice_name}
    if window_start is None:
        latest, count = client.execute(
            f"SELECT max(window_start), count() FROM `{database}`.kpi_final "
            "WHERE granularity_seconds = %(g)s AND slice = %(s)s",
            params,
        )[0]
        if not count:
            raise KpisError(
                f"no final {granularity_text(granularity_seconds)} window for slice {slice_name!r} in database "
                f"{database} yet: windows become final once they close (plus the allowed lateness); "
                "try again later, or pick an open window with --window-start",
                EXIT_NO_DATA,
            )
        window_start = latest
    params["ws"] = int(window_start.timestamp())
    rows = client.execute(
        f"SELECT {', '.join(SELECT_COLUMNS)} FROM `{database}`.kpi "
        "WHERE granularity_seconds = %(g)s AND slice = %(s)s AND window_start = toDateTime(%(ws)s, 'UTC') "
        f"ORDER BY {', '.join(DIMENSIONS)}",
        params,
    )
    if not rows:
        raise KpisError(
            f"no {granularity_text(granularity_seconds)} window starting {iso(window_start)} "
            f"for slice {slice_name!r} in database {database}",
            EXIT_NO_DATA,
        )
    records = [dict(zip(SELECT_COLUMNS, row)) for row in rows]
    for record in records:  # the driver drops trailing zeros of Decimals: show money with its 2 places
        for kpi in MONEY_KPIS:
            if record[kpi.name] is not None:
                record[kpi.name] = Decimal(record[kpi.name]).quantize(CENT)
    first = records[0]
    dims = slice_dimensions(slice_name)
    return {
        "granularity_seconds": granularity_seconds,
        "granularity": granularity_text(granularity_seconds),
        "slice": slice_name,
        "window_start": iso(first["window_start"]),
        "window_end": iso(first["window_end"]),
        "is_final": all(r["is_final"] == 1 for r in records),
        "rows": [_row(r, dims) for r in records],
    }


def _row(record: dict, dims: tuple[str, ...]) -> dict:
    kpis = {}
    for kpi in VIEW_KPIS:
        ratio = not kpi.additive
        kpis[kpi.name] = {
            "value": record[kpi.name],
            "numerator": _numerator(kpi, record) if ratio else None,
            "denominator": record[kpi.denominator_column] if ratio else None,
            "unit": kpi.unit,
        }
    return {
        "dimensions": {d: record[d] for d in dims},
        "is_final": record["is_final"] == 1,
        "partials": record["partials"],
        "last_emitted_at": iso(record["last_emitted_at"]),
        "counters": {c: record[c] for c in COUNTERS},
        "kpis": kpis,
    }


def _numerator(kpi: Kpi, record: dict):
    """The numerator in the KPI's unit, without its scale (NPS: promoters - detractors); money exactly."""
    if kpi.unit == "money":
        return (Decimal(kpi.numerator_total(record)) / kpi.numerator_divisor).quantize(CENT)
    return kpi.numerator_value(record)


# --- output ------------------------------------------------------------------------------------------


def _json_default(value):
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        return iso(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def to_json(card: dict) -> str:
    return json.dumps(card, default=_json_default, indent=2)


def _format(value, unit: str, currency: str) -> str:
    text = format_value(value, unit)
    return f"{text} {currency}" if unit == "money" and value is not None else text


def _format_part(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".")
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render_tables(card: dict, currency: str, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    state = "final" if card["is_final"] else "provisional (window still open)"
    console.print(
        f"[bold]KPI scorecard[/bold]  {card['granularity']} window {card['window_start']} – {card['window_end']}"
        f"  slice [bold]{card['slice']}[/bold]  {state}"
    )
    for row in card["rows"]:
        title = ", ".join(f"{k}={v}" for k, v in row["dimensions"].items()) or "overall"
        table = Table(title=title, title_justify="left")
        table.add_column("KPI")
        table.add_column("value", justify="right")
        table.add_column("numerator", justify="right")
        table.add_column("denominator", justify="right")
        for kpi in VIEW_KPIS:
            item = row["kpis"][kpi.name]
            table.add_row(
                kpi.label,
                _format(item["value"], kpi.unit, currency),
                _format_part(item["numerator"]),
                _format_part(item["denominator"]),
            )
        console.print(table)


# --- CLI ---------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--granularity", default="1h", help="window size, e.g. 1m or 1h (default 1h)")
    parser.add_argument("--slice", default="overall", help="slice, e.g. overall, channel, channel+region (default overall)")
    parser.add_argument(
        "--window-start",
        type=parse_window_start,
        help="show this window (ISO 8601, naive = UTC) even if it is still open, instead of the latest final one",
    )
    parser.add_argument("--json", action="store_true", help="print JSON (decimals as strings) instead of tables")
    parser.epilog = "exit codes: 0 printed, 1 ClickHouse unreachable or not migrated, 3 no such window yet"


def run(args, settings) -> int:
    try:
        granularity = duration_seconds(args.granularity)
    except ValueError as exc:
        print(f"copulse kpis: {exc}", file=sys.stderr)
        return EXIT_ERROR
    client = reader_client(settings)
    try:
        card = fetch_scorecard(client, settings.clickhouse["database"], granularity, args.slice, args.window_start)
    except KpisError as exc:
        print(f"copulse kpis: {exc}", file=sys.stderr)
        return exc.exit_code
    except (ch_errors.ServerException, *UNREACHABLE) as exc:
        print(f"copulse kpis: {clickhouse_problem(exc, settings)}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        client.disconnect()
    if args.json:
        print(to_json(card))
    else:
        render_tables(card, settings.currency)
    return EXIT_OK
