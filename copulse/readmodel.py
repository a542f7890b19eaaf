"""The read model every read-side client shares (``copulse kpis``, ``live``, ``report``, ``reconcile``, the
VCI scoring job): the ClickHouse reader client and what its failures mean, the columns selected from the
``kpi`` / ``kpi_final`` views (schemas/clickhouse/0004_kpi_views.sql), the dimension filter of one slice
value, counters pooled over windows, and time helpers (window start parsing, UTC, ISO text, granularity
text). Epoch seconds come from ``streams.kpis.epoch_seconds``.
"""

from __future__ import annotations

import argparse
import datetime as dt

from clickhouse_driver import Client
from clickhouse_driver import errors as ch_errors

from copulse.scorecard.catalogue import VIEW_KPIS
from copulse.settings import DIMENSIONS, slice_dimensions
from streams.kpis import COUNTERS, epoch_seconds

__all__ = ["NOT_MIGRATED_CODES", "RATIO_COLUMNS", "SELECT_COLUMNS", "UNREACHABLE", "clickhouse_problem",
           "dimension_filter", "epoch_seconds", "granularity_text", "iso", "parse_window_start", "pooled_counters",
           "reader_client", "utc"]

UTC = dt.UTC

#: the view's KPI columns beyond the counters (ratios, revenue, the feature-adoption denominator), view order
RATIO_COLUMNS: tuple[str, ...] = tuple(
    column
    for kpi in VIEW_KPIS
    if kpi.name not in COUNTERS
    for column in ((kpi.denominator_column,) if kpi.denominator_without else ()) + (kpi.name,)
)
#: what every client selects from ``kpi`` / ``kpi_final`` (rows become dicts keyed by these names)
SELECT_COLUMNS: tuple[str, ...] = (
    ("granularity_seconds", "window_start", "window_end", "slice")
    + DIMENSIONS
    + ("is_final", "partials", "last_emitted_at")
    + COUNTERS
    + RATIO_COLUMNS
)


def reader_client(settings) -> Client:
    """A client of the read-only user (``COPULSE_CLICKHOUSE_READONLY_USER``) on COPULSE_CLICKHOUSE_URL's server."""
    kwargs = dict(settings.clickhouse)
    kwargs["user"] = settings.clickhouse_readonly_user
    kwargs["password"] = settings.clickhouse_readonly_password.get_secret_value()
    return Client(**kwargs, connect_timeout=5, send_receive_timeout=60, sync_request_timeout=5)


#: what a lost or never made connection to ClickHouse raises
UNREACHABLE = (ch_errors.NetworkError, ch_errors.SocketTimeoutError, OSError, EOFError)
#: server error codes: no such table / database (not migrated), and authentication of the reader
NOT_MIGRATED_CODES = (60, 81)
_AUTHENTICATION_CODES = (192, 193, 194, 516)


def clickhouse_problem(exc: BaseException, settings) -> str:
    """One line on a failed read (``ch_errors.ServerException`` or one of ``UNREACHABLE``) and what to do."""
    where = f"{settings.clickhouse['host']}:{settings.clickhouse['port']}"
    if not isinstance(exc, ch_errors.ServerException):
        return f"ClickHouse is unreachable at {where} ({str(exc).splitlines()[0]}); start it with `make up`"
    first = exc.message.strip().splitlines()[0]
    if exc.code in NOT_MIGRATED_CODES:
        hint = "run `copulse db migrate`"
    elif exc.code in _AUTHENTICATION_CODES:
        hint = (f"check COPULSE_CLICKHOUSE_READONLY_USER ({settings.clickhouse_readonly_user}) and its password "
                "(deploy/clickhouse/users.xml)")
    else:
        hint = "see the ClickHouse server log"
    return f"ClickHouse at {where} refused the query ({first}); {hint}"


def pooled_counters(rows) -> dict[str, int]:
    """Every counter summed over ``rows`` (kpi view rows as dicts): the KPIs of a range or of several windows
    are the catalogue's formulas over these sums."""
    return {counter: sum(int(row[counter]) for row in rows) for counter in COUNTERS}


def dimension_filter(slice_name: str, value: str | None) -> tuple[str, dict]:
    """SQL condition and parameters selecting one value of a slice ('web', 'web+EU' for channel+region) on
    every dimension column ('' where the slice does not group). Raises ValueError on a wrong value count."""
    dims = slice_dimensions(slice_name)
    values = value.split("+") if value else []
    if dims and len(values) != len(dims):
        raise ValueError(f"slice {slice_name!r} needs --value with {len(dims)} value(s) joined by '+', e.g. "
                         f"--slice channel --value web")
    given = dict(zip(dims, values))
    where = " AND ".join(f"{d} = %(d_{d})s" for d in DIMENSIONS)
    return where, {f"d_{d}": given.get(d, "") for d in DIMENSIONS}


# ----------------------------------------------------------------------------------------------- time
def parse_window_start(text: str) -> dt.datetime:
    """ISO 8601; naive means UTC. '2024-05-01T12:00', '2024-05-01 12:00:00Z', '2024-05-01T14:00+02:00'."""
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date-time: {text!r} (e.g. 2024-05-01T12:00Z)") from None
    return utc(value)


def utc(value: dt.datetime) -> dt.datetime:
    """An aware UTC datetime; naive values (as clickhouse-driver returns them) are taken as UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso(value: dt.datetime) -> str:
    """'2024-05-01T12:00:00Z'."""
    return utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def granularity_text(seconds: int) -> str:
    """3600 -> '1h', 60 -> '1m', 86400 -> '1d', 90 -> '90s'."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
