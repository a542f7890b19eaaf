"""The ClickHouse sink: stores KPI partial rows, raw events and rejects, blocking until they are stored.

``ClickHouseSink.store(batch)`` inserts every non-empty table of the batch once (typed data through
clickhouse-driver's native protocol; values are never formatted into SQL). It is blocking on purpose: the
async worker calls it through ``asyncio.to_thread`` and does not consume while it runs, so a ClickHouse outage
pauses consumption instead of dropping or buffering rows without bound (backpressure).

* Transient errors (connection refused/reset, timeouts, server shutting down or overloaded, "too many parts",
  memory limits, network errors) are retried with exponential backoff capped at
  ``settings.sink_retry_max_seconds``; the client reconnects by itself. One log line when ClickHouse becomes
  unavailable and one when it is back, nothing per retry (debug level aside).
* Other errors (unknown table or column, type mismatch, authentication, read-only user, ...) raise
  ``SinkFatalError`` whose message says what to do.
* Storing the same batch twice is harmless: all tables are ReplacingMergeTree keyed so that replays collapse,
  and the views read through argMax/GROUP BY, so the views never show duplicates, merged or not.

The batch type is the worker's (streams/batch.py); this module implements its ``Sink.store``.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable

from clickhouse_driver import Client
from clickhouse_driver import errors as ch_errors
from prometheus_client import Counter, Gauge, Histogram

from sinks.rows import EVENT_COLUMNS, EVENT_TABLES, KPI_COLUMNS, REJECT_COLUMNS, event_row, reject_row
from streams.batch import SinkBatch

__all__ = ["ClickHouseSink", "SinkFatalError", "is_transient"]

log = logging.getLogger(__name__)

KPI_TABLE = "kpi_windows"
REJECT_TABLE = "rejected"

# --- metrics (default registry) --------------------------------------------------------------------
ROWS = Counter("copulse_sink_rows_total", "Rows stored in ClickHouse", ["table"])
INSERTS = Counter("copulse_sink_inserts_total", "Successful INSERT statements", ["table"])
ERRORS = Counter("copulse_sink_errors_total", "Failed ClickHouse operations by kind (transient|fatal)", ["kind"])
INSERT_DURATION = Histogram(
    "copulse_sink_insert_duration_seconds",
    "Duration of successful INSERT statements",
    ["table"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
BACKPRESSURE = Gauge("copulse_sink_backpressure", "1 while store() waits for ClickHouse (consumption paused)")
LAST_SUCCESS = Gauge(
    "copulse_sink_last_success_timestamp_seconds", "Unix time of the last store() that stored everything"
)
for _kind in ("transient", "fatal"):
    ERRORS.labels(kind=_kind)

# --- error classification --------------------------------------------------------------------------
#: Server error codes worth retrying: the same INSERT succeeds later without anybody changing anything.
TRANSIENT_CODES = frozenset(
    {
        3,  # UNEXPECTED_END_OF_FILE
        23,  # CANNOT_READ_FROM_ISTREAM
        24,  # CANNOT_WRITE_TO_OSTREAM
        32,  # ATTEMPT_TO_READ_AFTER_EOF
        159,  # TIMEOUT_EXCEEDED
        173,  # CANNOT_ALLOCATE_MEMORY
        202,  # TOO_MANY_SIMULTANEOUS_QUERIES
        203,  # NO_FREE_CONNECTION
        209,  # SOCKET_TIMEOUT
        210,  # NETWORK_ERROR
        225,  # NO_ZOOKEEPER
        236,  # ABORTED (server shutting down)
        241,  # MEMORY_LIMIT_EXCEEDED
        242,  # TABLE_IS_READ_ONLY (replica lost its keeper session)
        243,  # NOT_ENOUGH_SPACE (waits for an operator; pausing is the right reaction)
        244,  # UNEXPECTED_ZOOKEEPER_ERROR
        252,  # TOO_MANY_PARTS
        285,  # TOO_FEW_LIVE_REPLICAS
        319,  # UNKNOWN_STATUS_OF_INSERT
        394,  # QUERY_WAS_CANCELLED
        425,  # SYSTEM_ERROR
        999,  # KEEPER_EXCEPTION
    }
)
_MIGRATE_CODES = {8, 10, 16, 20, 47, 60, 81}  # missing column/table/database: schema older than the sink
_AUTH_CODES = {192, 193, 194, 516}  # unknown user, wrong password, auth failed
_READONLY_CODES = {164, 497}  # READONLY, ACCESS_DENIED
_DATA_CODES = {6, 27, 41, 53, 69, 70, 72}  # parse/convert/type mismatch


def is_transient(exc: BaseException) -> bool:
    """True for errors that go away by waiting (and reconnecting); False for those that need a person."""
    if isinstance(exc, (ch_errors.NetworkError, ch_errors.SocketTimeoutError, ch_errors.UnexpectedPacketFromServerError)):
        return True
    if isinstance(exc, ch_errors.Error) and getattr(exc, "code", None) in TRANSIENT_CODES:
        return True
    if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout, EOFError, BrokenPipeError)):
        return True
    if isinstance(exc, OSError) and exc.errno in (
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
    ):
        return True
    return False


def _short(exc: BaseException) -> str:
    """One line about an error: 'Code: 60. Table x.y doesn't exist.' (no stack trace, never a password)."""
    text = (getattr(exc, "message", None) or str(exc) or type(exc).__name__).split("Stack trace:")[0]
    text = " ".join(text.replace("DB::Exception: ", "").split())
    code = getattr(exc, "code", None)
    if code is not None and not text.startswith("Code:"):
        text = f"Code: {code}. {text}"
    return text[:300] or type(exc).__name__


class SinkFatalError(RuntimeError):
    """ClickHouse refused the data for a reason waiting will not fix; the message says what to do."""


class ClickHouseSink:
    """Blocking, retrying, idempotent writer of SinkBatches. Thread-safe (calls are serialised)."""

    def __init__(
        self,
        settings,
        *,
        connect_timeout: float = 5.0,
        send_receive_timeout: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        initial_backoff: float = 0.2,
        client: Client | None = None,
    ) -> None:
        self.settings = settings
        kwargs = settings.clickhouse
        self.database: str = kwargs["database"]
        self.address = f"{kwargs['host']}:{kwargs['port']}"
        self.user: str = kwargs["user"]
        self.retry_max_seconds = float(settings.sink_retry_max_seconds)
        self.initial_backoff = min(initial_backoff, self.retry_max_seconds)
        self._sleep = sleep
        # a given client (as migrate() and VciJob take one; the tests' embedded current ClickHouse) is used as it is
        self._client = client or Client(
            **kwargs,
            connect_timeout=connect_timeout,
            send_receive_timeout=send_receive_timeout,
            sync_request_timeout=connect_timeout,
            client_name="copulse-sink",
        )
        self._lock = threading.Lock()
        self._unavailable_since: float | None = None
        #: wall-clock seconds of the last outage that ended (for logs/tests), None if none yet
        self.last_outage_seconds: float | None = None

    # --- public ------------------------------------------------------------------------------------
    def store(self, batch: SinkBatch) -> None:
        """Store the whole batch; returns only when every row is in ClickHouse (see module doc)."""
        inserts = self._prepare(batch)
        if not inserts:
            return
        with self._lock:
            total = sum(len(rows) for _, _, rows in inserts)
            delay = self.initial_backoff
            pending = list(inserts)
            while pending:
                table, columns, rows = pending[0]
                try:
                    self._insert(table, columns, rows)
                except SinkFatalError:
                    raise
                except Exception as exc:  # classified below
                    if not is_transient(exc):
                        ERRORS.labels(kind="fatal").inc()
                        self._disconnect()
                        raise SinkFatalError(self._fatal_message(table, exc)) from exc
                    ERRORS.labels(kind="transient").inc()
                    self._disconnect()
                    self._mark_unavailable(exc)
                    self._sleep(delay)
                    delay = min(delay * 2, self.retry_max_seconds)
                    continue
                pending.pop(0)
                delay = self.initial_backoff
            self._mark_available(total)
            LAST_SUCCESS.set(time.time())

    def ping(self) -> bool:
        """True if ClickHouse answers now (no retries)."""
        with self._lock:
            try:
                self._client.execute("SELECT 1")
                return True
            except Exception:
                self._disconnect()
                return False

    def close(self) -> None:
        with self._lock:
            self._disconnect()

    def __enter__(self) -> ClickHouseSink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- internals ---------------------------------------------------------------------------------
    def _prepare(self, batch: SinkBatch) -> list[tuple[str, tuple[str, ...], list[tuple]]]:
        inserts: list[tuple[str, tuple[str, ...], list[tuple]]] = []
        try:
            if batch.events:
                now = int(time.time())
                by_table: dict[str, list[tuple]] = {}
                for raw in batch.events:
                    table = EVENT_TABLES.get(raw.event.type)
                    if table is None:
                        raise ValueError(f"event {raw.event.event_id} has unknown type {raw.event.type!r}")
                    by_table.setdefault(table, []).append(event_row(raw, now))
                for table in EVENT_TABLES.values():
                    if table in by_table:
                        inserts.append((table, EVENT_COLUMNS[table], by_table[table]))
            if batch.rejects:
                inserts.append((REJECT_TABLE, REJECT_COLUMNS, [reject_row(r) for r in batch.rejects]))
            if batch.kpi_rows:
                for row in batch.kpi_rows:
                    if len(row) != len(KPI_COLUMNS):
                        raise ValueError(f"KPI row has {len(row)} values, kpi_windows has {len(KPI_COLUMNS)} columns")
                inserts.append((KPI_TABLE, KPI_COLUMNS, batch.kpi_rows))
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            ERRORS.labels(kind="fatal").inc()
            raise SinkFatalError(f"malformed sink batch: {exc}; this is a bug in the caller, not in ClickHouse") from exc
        return inserts

    def _insert(self, table: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
        query = f"INSERT INTO `{self.database}`.`{table}` ({', '.join(columns)}) VALUES"
        started = time.perf_counter()
        self._client.execute(query, rows, types_check=True)
        INSERT_DURATION.labels(table=table).observe(time.perf_counter() - started)
        INSERTS.labels(table=table).inc()
        ROWS.labels(table=table).inc(len(rows))

    def _disconnect(self) -> None:
        try:
            self._client.disconnect()
        except Exception:  # the connection is already broken; nothing to clean up
            pass

    def _mark_unavailable(self, exc: BaseException) -> None:
        if self._unavailable_since is None:
            self._unavailable_since = time.monotonic()
            BACKPRESSURE.set(1)
            log.warning(
                "ClickHouse unavailable at %s (%s); retrying, consumption paused", self.address, _short(exc)
            )
        else:
            log.debug("ClickHouse still unavailable at %s (%s)", self.address, _short(exc))

    def _mark_available(self, rows: int) -> None:
        if self._unavailable_since is not None:
            self.last_outage_seconds = time.monotonic() - self._unavailable_since
            self._unavailable_since = None
            BACKPRESSURE.set(0)
            log.info("ClickHouse back after %.1f s; %d rows stored", self.last_outage_seconds, rows)

    def _fatal_message(self, table: str, exc: BaseException) -> str:
        code = getattr(exc, "code", None)
        where = f"ClickHouse at {self.address}"
        detail = _short(exc)
        if code in _MIGRATE_CODES:
            return (
                f"{where}: table {self.database}.{table} is missing or older than this copulse ({detail}); "
                "run `copulse db migrate`"
            )
        if code in _AUTH_CODES:
            return (
                f"{where} rejected user {self.user!r} ({detail}); "
                "check the user in COPULSE_CLICKHOUSE_URL and COPULSE_CLICKHOUSE_PASSWORD"
            )
        if code in _READONLY_CODES:
            return (
                f"{where}: user {self.user!r} may not write to {self.database}.{table} ({detail}); "
                "the sink needs a user with INSERT rights, not the read-only copulse_reader"
            )
        if code in _DATA_CODES or isinstance(exc, (TypeError, ValueError, OverflowError, struct.error)):
            return (
                f"{where}: rows for {self.database}.{table} do not match its columns ({detail}); "
                "run `copulse db migrate` if the schema is outdated, otherwise the producer of these rows has a bug"
            )
        return f"{where}: insert into {self.database}.{table} failed ({type(exc).__name__}: {detail})"
