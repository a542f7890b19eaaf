"""A current ClickHouse release inside the test process, beside ClickHouse 18.16 (the local server).

Every migration, view, dashboard query, documented query and read-side query runs on both. The current
release is chDB: ClickHouse built as a library, the ``chdb`` package of the dev extras (no server, no port).
:class:`ChdbClient` gives it the part of clickhouse-driver's ``Client`` that copulse uses, so the project's
own code runs on it unchanged: ``migrate(settings, client=...)`` (which renders the modern variant for it),
``ClickHouseSink(settings, client=...)``, ``VciJob(settings, client=...)`` and every read-side function that
takes a client.

* ``execute(query, params)``: ``%(name)s`` parameters are substituted by clickhouse-driver's own escaping, as
  clickhouse-driver does on the client before sending, so both servers get the same SQL text;
* ``execute("INSERT ... VALUES", rows)``: the rows become a VALUES list of the same escaped literals;
* ``settings={...}`` becomes the query's SETTINGS clause;
* results come back typed as clickhouse-driver returns them (aware datetimes for ``DateTime('UTC')``,
  naive for ``DateTime``, ``Decimal``, lists, tuples, ``None``): the server's JSON with its column types;
* a server error raises clickhouse-driver's ``ServerException`` with the server's error code.

chDB allows one embedded server per process: :func:`current_clickhouse` opens it once (in a temporary
folder removed at exit) and every test gets its own database in it.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import functools
import json
import re
import shutil
import tempfile
from decimal import Decimal
from types import SimpleNamespace

import pytz
from clickhouse_driver.errors import ServerException
from clickhouse_driver.util.escape import escape_param, escape_params
from pydantic import SecretStr

from copulse.settings import Settings
from tests.conftest import unique_name

#: the oldest release that counts as current here (the modern migration variant starts at 20.3)
MINIMUM_VERSION = (24, 1)
#: the JSON the results are read from: exact decimals, nan/inf as text
_OUTPUT_SETTINGS = ("output_format_json_quote_decimals = 1", "output_format_json_quote_denormals = 1",
                    "output_format_json_quote_64bit_integers = 0")
_ERROR_CODE = re.compile(r"Code: (\d+)")
_INSERT_VALUES = re.compile(r"^\s*INSERT\s+INTO\s.*\bVALUES\s*$", re.I | re.S)


class _Session:
    """The one chDB session of the process and the database its unqualified names resolve in."""

    def __init__(self, session) -> None:
        self.session = session
        self.database = "default"
        for setting in _OUTPUT_SETTINGS:
            session.query(f"SET {setting}")

    def query(self, sql: str, database: str) -> str:
        if database != self.database:
            self.session.query(f"USE `{database}`")
            self.database = database
        return self.session.query(sql, "JSONCompact").data()


class ChdbClient:
    """clickhouse-driver's ``Client`` API over a chDB session (module docstring); like ``Client(database=...)``,
    unqualified names resolve in ``database``."""

    def __init__(self, session: _Session, database: str = "default") -> None:
        self._session = session
        self.database = database
        rows = self.execute("SELECT version(), timezone()")
        self.version_text, timezone = rows[0]
        self.version = tuple(int(p) for p in re.findall(r"\d+", self.version_text))
        # what clickhouse-driver's escaping reads from a connection: the server's time zone
        self._context = SimpleNamespace(server_info=SimpleNamespace(get_timezone=lambda: timezone))

    def in_database(self, database: str) -> ChdbClient:
        """A client of the same server whose unqualified names resolve in ``database``."""
        return ChdbClient(self._session, database)

    def execute(self, query: str, params=None, *, with_column_types: bool = False, settings: dict | None = None,
                types_check: bool = False):
        if isinstance(params, (list, tuple)):
            if not _INSERT_VALUES.match(query):
                raise ValueError(f"rows given for a query that is not INSERT ... VALUES: {query[:80]}")
            if not params:
                return []
            query = query + " " + ", ".join(_row_literal(row, self._context) for row in params)
        elif params is not None:
            query = query % escape_params(params, self._context)
        if settings:
            query += " SETTINGS " + ", ".join(f"{name} = {_setting(value)}" for name, value in settings.items())
        try:
            text = self._session.query(query, self.database)
        except Exception as exc:  # chdb's own error type; turned into the driver's
            match = _ERROR_CODE.search(str(exc))
            raise ServerException(str(exc), code=int(match.group(1)) if match else None) from exc
        if not text.strip():
            return ([], []) if with_column_types else []
        result = json.loads(text)
        types = [(column["name"], column["type"]) for column in result["meta"]]
        converters = [_converter(t) for _, t in types]
        rows = [tuple(convert(v) for convert, v in zip(converters, row)) for row in result["data"]]
        return (rows, types) if with_column_types else rows

    def disconnect(self) -> None:
        """Nothing to do: the embedded server lives as long as the process."""


def _setting(value) -> str:
    return str(int(value)) if isinstance(value, bool) else repr(value)


def _row_literal(row, context) -> str:
    # clickhouse-driver sends booleans as 1/0 to integer columns
    values = tuple(int(v) if isinstance(v, bool) else v for v in row)
    return str(escape_param(values, context))


# ------------------------------------------------------------------------------ ClickHouse type -> Python
def _split_arguments(text: str) -> list[str]:
    """'UInt8, Array(String), Decimal(18, 2)' -> the three types (commas inside brackets/quotes kept)."""
    parts, depth, quote, current = [], 0, False, []
    for ch in text:
        if ch == "'" and (not current or current[-1] != "\\"):
            quote = not quote
        elif not quote and ch == "(":
            depth += 1
        elif not quote and ch == ")":
            depth -= 1
        elif not quote and ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    parts.append("".join(current).strip())
    return parts


@functools.lru_cache(maxsize=None)
def _converter(type_name: str):
    """A function turning the JSON value of a column of that ClickHouse type into clickhouse-driver's value."""
    name, _, rest = type_name.partition("(")
    arguments = _split_arguments(rest[:-1]) if rest else []
    if name in ("Nullable", "LowCardinality", "SimpleAggregateFunction"):
        inner = _converter(arguments[-1])
        return lambda v: None if v is None else inner(v)
    if name == "Array":
        inner = _converter(arguments[0])
        return lambda v: [inner(x) for x in v]
    if name == "Tuple":
        inners = [_converter(a.split(" ", 1)[1] if re.match(r"^\w+ \w", a) else a) for a in arguments]
        return lambda v: tuple(f(x) for f, x in zip(inners, v.values() if isinstance(v, dict) else v))
    if name in ("DateTime", "DateTime64"):
        zone_args = [a for a in arguments if a.startswith("'")]
        zone = pytz.timezone(zone_args[0].strip("'")) if zone_args else None

        def to_datetime(v):
            value = dt.datetime.fromisoformat(v)
            return zone.localize(value) if zone else value

        return to_datetime
    if name in ("Date", "Date32"):
        return dt.date.fromisoformat
    if name.startswith("Decimal"):
        return lambda v: Decimal(str(v))
    if re.match(r"^U?Int\d+$", name):
        return int
    if name.startswith("Float"):
        return float
    if name == "Bool":
        return bool
    return lambda v: v  # String, FixedString, UUID, Enum*: text as clickhouse-driver returns it


# ------------------------------------------------------------------------------ the embedded server
@functools.lru_cache(maxsize=1)
def current_clickhouse() -> ChdbClient:
    """The process's chDB server (opened on first use). Fails, never skips, when chdb is missing: the dev
    extras install it, so a missing one is a broken environment that would hide the current release."""
    try:
        import chdb.session
    except ImportError as exc:  # pragma: no cover - environment problem
        raise RuntimeError(
            f"the chdb package (current ClickHouse, embedded) is not installed ({exc}): pip install -e '.[dev]'"
        ) from exc
    path = tempfile.mkdtemp(prefix="copulse-chdb-")
    atexit.register(shutil.rmtree, path, True)
    client = ChdbClient(_Session(chdb.session.Session(path)))
    if client.version < MINIMUM_VERSION:
        raise RuntimeError(f"chdb embeds ClickHouse {client.version_text}, older than {MINIMUM_VERSION}")
    return client


def current_settings(database: str, **overrides) -> Settings:
    """Settings naming ``database``; the ClickHouse address in them is never contacted (the client is given)."""
    return Settings(clickhouse_url=f"clickhouse://default@chdb-embedded:9000/{database}",
                    clickhouse_password=SecretStr(""), **overrides)


@contextlib.contextmanager
def migrated_database(prefix: str, **overrides):
    """``(client, settings)`` of a fresh database of the embedded server with every migration applied by
    ``copulse db migrate``'s own code (the modern variant); dropped afterwards."""
    from sinks.migrations import migrate

    client = current_clickhouse()
    settings = current_settings(unique_name(prefix), **overrides)
    try:
        migrate(settings, client=client)
        yield client, settings
    finally:
        client.execute(f"DROP DATABASE IF EXISTS `{settings.clickhouse['database']}`")
