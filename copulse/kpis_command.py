"""``copulse kpis``: the latest final KPI scorecard from ClickHouse, as a terminal table or JSON; with ``--view``
the history-based figures of the views instead (feedback loop, idea funnel, shipped ideas, lifecycle, retention:
copulse/history.py) per period, as a table, CSV or JSON.

Reads the ``kpi_final`` / ``kpi`` views (or the history views) as the read-only user
(``COPULSE_CLICKHOUSE_READONLY_USER`` / ``_PASSWORD``, default copulse_reader) on the server and database of
``COPULSE_CLICKHOUSE_URL``.

Exit codes: 0 printed, 1 ClickHouse unreachable / not migrated / refused, 2 bad option, 3 no such window yet /
no rows in the range.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import sys
from decimal import Decimal

from clickhouse_driver import errors as ch_errors

from copulse.history import COHORTS, PERIODS, VIEWS, HistoryRange, HistoryView, view_rows
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

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NO_DATA = 0, 1, 2, 3
#: what the scorecard (without --view) is chosen by, with the defaults
SCORECARD_DEFAULTS = {"granularity": "1h", "slice": "overall"}
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
    if isinstance(value, dt.date):
        return value.isoformat()
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
    parser.add_argument("--granularity", help="window size, e.g. 1m or 1h (default 1h)")
    parser.add_argument("--slice", help="slice, e.g. overall, channel, channel+region (default overall)")
    parser.add_argument(
        "--window-start",
        type=parse_window_start,
        help="show this window (ISO 8601, naive = UTC) even if it is still open, instead of the latest final one",
    )
    parser.add_argument("--json", action="store_true", help="print JSON (decimals as strings) instead of tables")
    history = parser.add_argument_group(
        "history views (--view)",
        "figures ClickHouse computes from the stored events over days to months, whole shop: "
        + "; ".join(f"{v.name}: {v.description}" for v in VIEWS.values()),
    )
    history.add_argument("--view", choices=tuple(VIEWS), help="list this view's figures instead of the scorecard")
    history.add_argument("--period", choices=PERIODS, default="week", help="period of the rows (default week)")
    history.add_argument("--cohort", choices=COHORTS, default="first_seen",
                         help="retention: cohorts by first-seen or first-purchase period (default first_seen)")
    history.add_argument("--from", dest="since", type=parse_window_start,
                         help="from the period holding this time (ideas-shipped: shipped at or after it; ISO 8601)")
    history.add_argument("--to", dest="until", type=parse_window_start,
                         help="periods starting before this time (ideas-shipped: shipped before it; ISO 8601)")
    history.add_argument("--last", type=int, default=12,
                         help="only the newest N periods, cohorts or shipped ideas (default 12; 0 = all)")
    history.add_argument("--csv", action="store_true", help="print CSV (one header line, ISO times) instead of a table")
    parser.epilog = ("exit codes: 0 printed, 1 ClickHouse unreachable or not migrated, 2 bad option, 3 no such window "
                     "yet / no rows")


def _usage_problem(args) -> str | None:
    """What is wrong with the combination of options, or None."""
    if args.view is None:
        given = [option for option, name in (("--csv", "csv"), ("--from", "since"), ("--to", "until"))
                 if getattr(args, name)]
        if given:
            return (f"{', '.join(given)} only apply to --view (e.g. --view feedback-loop); the scorecard takes "
                    "--granularity, --slice and --window-start")
        return None
    given = [f"--{name.replace('_', '-')}" for name in ("granularity", "slice", "window_start")
             if getattr(args, name) is not None]
    if given:
        return (f"{', '.join(given)} choose a KPI window of the scorecard; --view {args.view} is per period: use "
                "--period, --from, --to, --last")
    if args.csv and args.json:
        return "--csv and --json: pick one"
    if args.last < 0:
        return "--last must be 0 (all) or more"
    if args.since and args.until and args.until <= args.since:
        return f"--to ({iso(args.until)}) must be after --from ({iso(args.since)})"
    return None


def run(args, settings) -> int:
    problem = _usage_problem(args)
    if problem:
        print(f"copulse kpis: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if args.view is not None:
        return _run_view(args, settings)
    try:
        granularity = duration_seconds(args.granularity or SCORECARD_DEFAULTS["granularity"])
    except ValueError as exc:
        print(f"copulse kpis: {exc}", file=sys.stderr)
        return EXIT_ERROR
    slice_name = args.slice or SCORECARD_DEFAULTS["slice"]
    card, exit_code = _read(settings, lambda client, database: fetch_scorecard(
        client, database, granularity, slice_name, args.window_start))
    if card is None:
        return exit_code
    if args.json:
        print(to_json(card))
    else:
        render_tables(card, settings.currency)
    return EXIT_OK


def _read(settings, read):
    """``read(client, database)`` as the read-only user: (its result, EXIT_OK), or (None, exit code) after saying
    on stderr what went wrong and what to do."""
    client = reader_client(settings)
    try:
        return read(client, settings.clickhouse["database"]), EXIT_OK
    except KpisError as exc:
        print(f"copulse kpis: {exc}", file=sys.stderr)
        return None, exc.exit_code
    except (ch_errors.ServerException, *UNREACHABLE) as exc:
        print(f"copulse kpis: {clickhouse_problem(exc, settings)}", file=sys.stderr)
        return None, EXIT_ERROR
    finally:
        client.disconnect()


# --- history views -----------------------------------------------------------------------------------


def fetch_view(client, database: str, view: HistoryView, *, period: str, cohort: str, within: HistoryRange,
               last: int) -> list[dict]:
    """The view's rows in the range; with ``last`` > 0 only the newest ``last`` periods (retention: cohorts;
    ideas-shipped: ideas). Raises KpisError(EXIT_NO_DATA) when there is none, saying what to try."""
    rows = view_rows(client, database, view, period=period, cohort=cohort, within=within)
    if last:
        if view.per_period:
            keys = sorted({row[view.range_column] for row in rows})[-last:]
            rows = [row for row in rows if row[view.range_column] in set(keys)]
        else:
            rows = rows[:last]  # newest first
    if not rows:
        what = f"{view.name} ({view.view})" + (f" per {period}" if view.per_period else "")
        asked = "" if within == HistoryRange() else (
            f" between {iso(within.since) if within.since else 'the beginning'} and "
            f"{iso(within.until) if within.until else 'now'}")
        hint = ("widen --from/--to or drop them" if asked else
                "the views read the stored raw events: run the worker and a producer (`make run`, or `copulse "
                "generate`), or check COPULSE_CLICKHOUSE_URL")
        raise KpisError(f"no rows of {what}{asked} in database {database}: {hint}", EXIT_NO_DATA)
    return rows


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return iso(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def to_csv(view: HistoryView, rows: list[dict], out=None) -> None:
    """CSV with a header line: exact values (floats as Python prints them, decimals as text, times ISO UTC)."""
    writer = csv.writer(out or sys.stdout, lineterminator="\n")
    writer.writerow(view.columns)
    for row in rows:
        writer.writerow([_cell(row[c]) for c in view.columns])


def _shown(column: str, value) -> str:
    if value is None:
        return "—"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if "rate" in column.split("_"):
        return format_value(value, "rate")
    if column.endswith("_seconds") or column == "seconds_to_ship":
        return f"{value / 3600:,.1f} h"
    if isinstance(value, float):
        return f"{value:,.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render_view(view: HistoryView, rows: list[dict], period: str, console=None) -> None:
    """A table: a row per period (or idea); views with many figures per period are turned, a row per figure and
    a column per period, so that they fit a terminal."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    title = f"{view.name}" + (f" per {period}" if view.per_period else "") + f": {view.description}"
    table = Table(title=title, title_justify="left")
    if view.per_period and len(view.columns) > TURN_ABOVE_COLUMNS:
        key, figures = view.columns[0], view.columns[1:]
        table.add_column(key.replace("_", " "))
        for row in rows:
            table.add_column(_shown(key, row[key]), justify="right")
        for column in figures:
            table.add_row(column.replace("_", " "), *(_shown(column, row[column]) for row in rows))
    else:
        for column in view.columns:
            table.add_column(column.replace("_", " "), justify="left" if column in TEXT_COLUMNS else "right",
                             overflow="fold")
        for row in rows:
            table.add_row(*(_shown(c, row[c]) for c in view.columns))
    console.print(table)
    console.print("durations in hours; rates in %; as of the newest stored event (docs/feedback-loop.md, "
                  "docs/loyalty.md); --csv or --json for exact values", style="grey50")


#: views with more columns than this are shown turned (a row per figure)
TURN_ABOVE_COLUMNS = 10
#: columns shown left-aligned
TEXT_COLUMNS = ("period_start", "cohort_start", "shipped_at", "submitted_at", "idea_id", "submitter", "product_id",
                "category", "text", "current_status", "as_of")


def _run_view(args, settings) -> int:
    view = VIEWS[args.view]
    rows, exit_code = _read(settings, lambda client, database: fetch_view(
        client, database, view, period=args.period, cohort=args.cohort, within=HistoryRange(args.since, args.until),
        last=args.last))
    if rows is None:
        return exit_code
    if args.csv:
        to_csv(view, rows)
    elif args.json:
        print(json.dumps({"view": view.name, "period": args.period if view.per_period else None,
                          "cohort": args.cohort if view.per_cohort else None, "rows": rows},
                         default=_json_default, indent=2))
    else:
        render_view(view, rows, args.period)
    return EXIT_OK
