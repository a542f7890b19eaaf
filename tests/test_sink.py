"""ClickHouseSink on the real ClickHouse: typed inserts, idempotent replays, fatal errors with a hint, and a
short outage (a TCP proxy in front of the server is cut and restored) that blocks store() until it is over.
The long outage with a real server stop is tests/test_sink_outage.py."""

from __future__ import annotations

import datetime as dt
import logging
import socket
import threading
import time
from decimal import Decimal
from urllib.parse import quote

import pytest
from clickhouse_driver import Client
from prometheus_client import REGISTRY
from pydantic import SecretStr

from copulse.settings import Settings
from sinks.clickhouse import ClickHouseSink, SinkFatalError, is_transient
from streams.batch import RawEvent, Reject, SinkBatch
from sinks.migrations import migrate
from streams.events import Event
from streams.kpis import COUNTERS, kpi_row

pytestmark = pytest.mark.integration

UTC = dt.timezone.utc
T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def ch_settings(clickhouse_settings: dict, database: str, user: str | None = None, password: str | None = None,
                host: str | None = None, port: int | None = None, **overrides) -> Settings:
    """Settings for the test ClickHouse only (no Kafka needed)."""
    ch = clickhouse_settings
    user = ch["user"] if user is None else user
    return Settings(
        clickhouse_url=f"clickhouse://{quote(user, safe='')}@{host or ch['host']}:{port or ch['port']}/{database}",
        clickhouse_password=SecretStr(ch["password"] if password is None else password),
        **overrides,
    )


def metric(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def make_events(start: int, count: int) -> list[RawEvent]:
    """Events of all three types with every optional field both set and unset, read from (i % 6, 1000 + i)."""
    events = []
    for i in range(start, start + count):
        when = T0 + dt.timedelta(seconds=i, milliseconds=i % 1000)
        occurred_ms = int(when.timestamp()) * 1000 + i % 1000
        common = dict(event_id=f"ev-{i}", consumer_id=f"c{i % 50}", occurred_ms=occurred_ms,
                      channel=("web", "app", "store")[i % 3], region=("eu", "us")[i % 2],
                      segment=None if i % 4 == 0 else "pro", product_id=f"p{i % 7}", category="audio", schema_id=3)
        record = {"occurred_at": when, "schema_version": 1}
        kind = i % 3
        if kind == 0:
            record.update(order_id=f"o-{i}", quantity=1 + i % 3, amount=Decimal("12.34") + i, currency="EUR")
            events.append(Event(type="purchase", record=record, **common))
        elif kind == 1:
            record.update(session_id=f"s-{i}", action="session_end" if i % 2 else "feature_use",
                          feature=None if i % 2 else "wishlist", duration_ms=1000 * i if i % 2 else None,
                          co_creation=bool(i % 5 == 0), app_version="2.0.1" if i % 4 else None,
                          schema_version=2)
            events.append(Event(type="usage", record=record, **common))
        else:
            record.update(kind="rating" if i % 2 else "idea", score=4 if i % 2 else None,
                          text=None if i % 2 else "make it blue", in_reply_to=None if i % 4 else "ev-1")
            events.append(Event(type="feedback", record=record, **common))
    return [RawEvent(e, i % 6, 1000 + i) for i, e in enumerate(events, start)]


def make_responses(start: int, count: int) -> list[RawEvent]:
    """Enterprise events of every kind, with and without segment, status and text, read from (i % 6, 5000 + i)."""
    events = []
    for i in range(start, start + count):
        when = T0 + dt.timedelta(seconds=i, milliseconds=i % 1000)
        kind = ("response", "idea_status", "case_closed")[i % 3]
        record = {"occurred_at": when, "schema_version": 1, "kind": kind, "in_reply_to": f"ev-{i // 3}",
                  "team": "product" if kind == "idea_status" else "support",
                  "status": ("under_review", "shipped", "declined")[i % 3] if kind == "idea_status" else None,
                  "text": "thanks" if kind == "response" else None}
        events.append(Event(type="response", event_id=f"r-{i}", consumer_id=f"c{i % 50}",
                            occurred_ms=int(when.timestamp()) * 1000 + i % 1000, channel="call_center", region="eu",
                            segment=None if i % 4 == 0 else "pro", product_id=f"p{i % 7}", category="audio",
                            schema_id=401, record=record))
    return [RawEvent(e, i % 6, 5000 + i) for i, e in enumerate(events, start)]


def make_kpi_rows(start: int, count: int, version: int = 1, is_final: int = 1) -> list[tuple]:
    """`count` partials of distinct keys (product_id slice, one partition each)."""
    return [
        kpi_row(**
            dict(granularity_seconds=60, window_start=T0, window_end=T0 + dt.timedelta(minutes=1),
                 slice="product_id", product_id=f"p{i}", partition=i % 6, version=version, is_final=is_final,
                 emitted_at=T0 + dt.timedelta(minutes=1, seconds=2),
                 **{c: (i + 1) * (k + 1) for k, c in enumerate(COUNTERS)})
        )
        for i in range(start, start + count)
    ]


def make_rejects(start: int, count: int) -> list[Reject]:
    return [
        Reject("dlq" if i % 2 else "late", "schema_unknown" if i % 2 else "late", "copulse.purchases", i % 6, i,
               f"c{i}".encode(), 100 + i, int(T0.timestamp() * 1000) + i)
        for i in range(start, start + count)
    ]


@pytest.fixture
def migrated(clickhouse_db, clickhouse_settings):
    database = clickhouse_db.connection.database
    settings = ch_settings(clickhouse_settings, database, sink_retry_max_seconds=1.0)
    migrate(settings)
    return clickhouse_db, database, settings


def snapshot(client: Client, database: str) -> dict:
    """Everything a consumer of the data can see: the views and de-duplicated raw counts."""
    q = client.execute
    return {
        "kpi": sorted(q(f"SELECT * FROM `{database}`.kpi")),
        "kpi_final": sorted(q(f"SELECT * FROM `{database}`.kpi_final")),
        "dead_letters": sorted(q(f"SELECT * FROM `{database}`.dead_letter_summary")),
        "raw": {
            t: q(f"SELECT count(), uniqExact(event_id), uniqExact(consumer_id) FROM `{database}`.{t} FINAL")
            for t in ("purchases", "usage_events", "feedback")
        },
        "rejected": q(f"SELECT count() FROM `{database}`.rejected FINAL"),
    }


def test_store_writes_every_table_with_typed_values(migrated):
    client, database, settings = migrated
    before = {t: metric("copulse_sink_rows_total", table=t) for t in ("kpi_windows", "purchases", "rejected")}
    events = make_events(0, 12)
    batch = SinkBatch(
        kpi_rows=make_kpi_rows(0, 5),
        events=events,
        rejects=make_rejects(0, 3),
    )
    with ClickHouseSink(settings) as sink:
        sink.store(batch)
        sink.store(SinkBatch())  # empty: nothing to do
    counts = {t: client.execute(f"SELECT count() FROM {t}")[0][0]
              for t in ("kpi_windows", "purchases", "usage_events", "feedback", "rejected")}
    assert counts == {"kpi_windows": 5, "purchases": 4, "usage_events": 4, "feedback": 4, "rejected": 3}

    purchase = client.execute(
        "SELECT event_id, consumer_id, occurred_at, occurred_ms, channel, region, segment, product_id, category, "
        "order_id, quantity, amount, currency, schema_version, schema_id, source_partition, source_offset "
        "FROM purchases WHERE event_id = 'ev-3'"
    )[0]
    ms = int((T0 + dt.timedelta(seconds=3)).timestamp()) * 1000 + 3
    assert purchase == ("ev-3", "c3", T0 + dt.timedelta(seconds=3), ms, "web", "us", "pro", "p3", "audio",
                        "o-3", 1, Decimal("15.34"), "EUR", 1, 3, 3, 1003)
    usage = client.execute(
        "SELECT action, feature, duration_ms, co_creation, app_version, schema_version FROM usage_events "
        "ORDER BY event_id"
    )
    assert ("session_end", None, 1000, 0, "2.0.1", 2) in usage
    assert ("feature_use", "wishlist", None, 1, "2.0.1", 2) in usage
    assert ("feature_use", "wishlist", None, 0, None, 2) in usage
    feedback = client.execute("SELECT kind, score, text, in_reply_to FROM feedback ORDER BY event_id")
    assert ("idea", None, "make it blue", "ev-1") in feedback and ("rating", 4, None, None) in feedback
    assert client.execute("SELECT min(ingested_at) > toDateTime('2024-06-01 00:00:00') FROM feedback") == [(1,)]
    kpi = client.execute(f"SELECT events, revenue_minor, {COUNTERS[-1]}, window_end, emitted_at FROM kpi_windows "
                         "WHERE product_id = 'p1'")
    assert kpi == [(2, 2 * (COUNTERS.index("revenue_minor") + 1), 2 * len(COUNTERS),
                    T0 + dt.timedelta(minutes=1), T0 + dt.timedelta(minutes=1, seconds=2))]

    assert metric("copulse_sink_rows_total", table="kpi_windows") - before["kpi_windows"] == 5
    assert metric("copulse_sink_rows_total", table="purchases") - before["purchases"] == 4
    assert metric("copulse_sink_rows_total", table="rejected") - before["rejected"] == 3
    assert metric("copulse_sink_backpressure") == 0
    assert time.time() - metric("copulse_sink_last_success_timestamp_seconds") < 60


def test_storing_the_same_batch_twice_changes_nothing_visible(migrated):
    client, database, settings = migrated
    batch = SinkBatch(kpi_rows=make_kpi_rows(0, 40) + make_kpi_rows(0, 40, version=2),
                      events=make_events(0, 60), rejects=make_rejects(0, 10))
    with ClickHouseSink(settings) as sink:
        sink.store(batch)
        first = snapshot(client, database)
        sink.store(batch)
        second = snapshot(client, database)
        # and a replay of only a part, interleaved with new data, as after a worker crash
        sink.store(SinkBatch(kpi_rows=batch.kpi_rows[10:30], events=batch.events[5:25], rejects=batch.rejects[:4]))
        third = snapshot(client, database)
    assert first == second == third
    assert first["raw"]["purchases"] == [(20, 20, 20)]
    assert len(first["kpi"]) == 40 and len(first["kpi_final"]) == 40
    # stored twice, shown once; after a merge the duplicates are gone from the tables themselves
    assert client.execute("SELECT count() FROM purchases") == [(40 + 7,)]
    for table in ("purchases", "usage_events", "feedback", "kpi_windows", "rejected"):
        client.execute(f"OPTIMIZE TABLE {table} FINAL")
    assert client.execute("SELECT count() FROM purchases") == [(20,)]
    assert client.execute("SELECT count() FROM kpi_windows") == [(40,)]
    assert snapshot(client, database) == first


def test_responses_are_stored_typed_and_replays_collapse(migrated):
    client, database, settings = migrated
    events = make_responses(0, 30)
    with ClickHouseSink(settings) as sink:
        sink.store(SinkBatch(events=events))
        sink.store(SinkBatch(events=events[10:20]))  # replayed after a crash: same rows again
    q = f"SELECT count(), uniqExact(event_id) FROM `{database}`.responses"
    assert client.execute(q) == [(40, 30)]
    assert client.execute(q.replace("responses", "responses FINAL")) == [(30, 30)]
    row = client.execute(
        "SELECT event_id, consumer_id, occurred_at, occurred_ms, channel, region, segment, product_id, category, kind, "
        "in_reply_to, team, status, text, schema_version, schema_id, source_partition, source_offset "
        "FROM responses FINAL WHERE event_id = 'r-4'")
    ms = int((T0 + dt.timedelta(seconds=4)).timestamp()) * 1000 + 4
    assert row == [("r-4", "c4", T0 + dt.timedelta(seconds=4), ms, "call_center", "eu", None, "p4", "audio",
                    "idea_status", "ev-1", "product", "shipped", None, 1, 401, 4, 5004)]
    by_kind = client.execute("SELECT kind, count(), countIf(status IS NULL), countIf(text IS NOT NULL), "
                             "countIf(segment IS NULL) FROM responses FINAL GROUP BY kind ORDER BY kind")
    assert by_kind == [("case_closed", 10, 10, 0, 2), ("idea_status", 10, 0, 0, 3), ("response", 10, 10, 10, 3)]


def test_missing_tables_are_fatal_with_a_migrate_hint(clickhouse_db, clickhouse_settings):
    settings = ch_settings(clickhouse_settings, clickhouse_db.connection.database)  # not migrated
    fatal_before = metric("copulse_sink_errors_total", kind="fatal")
    with ClickHouseSink(settings) as sink, pytest.raises(SinkFatalError, match="run `copulse db migrate`"):
        sink.store(SinkBatch(kpi_rows=make_kpi_rows(0, 1)))
    assert metric("copulse_sink_errors_total", kind="fatal") == fatal_before + 1


def test_read_only_user_is_fatal(migrated, clickhouse_settings):
    _, database, settings = migrated
    reader = ch_settings(clickhouse_settings, database, user=settings.clickhouse_readonly_user,
                         password=settings.clickhouse_readonly_password.get_secret_value())
    with ClickHouseSink(reader) as sink, pytest.raises(SinkFatalError, match="INSERT rights") as error:
        sink.store(SinkBatch(events=make_events(0, 3)))
    assert "copulse_reader" in str(error.value)


def test_wrong_password_is_fatal_and_not_logged(migrated, clickhouse_settings, caplog):
    _, database, _ = migrated
    bad = ch_settings(clickhouse_settings, database, password="not-the-password-x7")
    with ClickHouseSink(bad) as sink, pytest.raises(SinkFatalError, match="COPULSE_CLICKHOUSE_PASSWORD") as error:
        sink.store(SinkBatch(kpi_rows=make_kpi_rows(0, 1)))
    assert "not-the-password-x7" not in str(error.value) and "not-the-password-x7" not in caplog.text


def test_rows_that_do_not_fit_the_columns_are_fatal(migrated):
    _, _, settings = migrated
    row = list(make_kpi_rows(0, 1)[0])
    row[10] = "many"  # events is UInt64
    with ClickHouseSink(settings) as sink:
        with pytest.raises(SinkFatalError, match="do not match its columns"):
            sink.store(SinkBatch(kpi_rows=[tuple(row)]))
        with pytest.raises(SinkFatalError, match="malformed sink batch"):
            sink.store(SinkBatch(kpi_rows=[tuple(row[:-1])]))


def test_error_classification():
    from clickhouse_driver import errors

    assert is_transient(ConnectionRefusedError(111, "Connection refused"))
    assert is_transient(errors.NetworkError("Connection reset by peer"))
    assert is_transient(errors.SocketTimeoutError("timed out"))
    assert is_transient(errors.ServerException("Too many parts (300)", code=252))
    assert is_transient(errors.ServerException("Memory limit exceeded", code=241))
    assert not is_transient(errors.ServerException("Table t doesn't exist", code=60))
    assert not is_transient(errors.ServerException("Cannot insert: readonly", code=164))
    assert not is_transient(errors.TypeMismatchError("Type mismatch"))
    assert not is_transient(ValueError("x"))


class TcpProxy:
    """A loopback TCP forwarder: stop() refuses new connections and cuts open ones, start() serves again on
    the same port. Lets a test take ClickHouse away from the sink without touching the shared server."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener:
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def test_store_blocks_through_an_outage_and_stores_everything_once(migrated, clickhouse_settings, caplog):
    client, database, settings = migrated
    proxy = TcpProxy(clickhouse_settings["host"], clickhouse_settings["port"])
    proxy.start()
    via_proxy = ch_settings(clickhouse_settings, database, host="127.0.0.1", port=proxy.port,
                            sink_retry_max_seconds=0.5)
    caplog.set_level(logging.INFO, logger="sinks.clickhouse")
    transient_before = metric("copulse_sink_errors_total", kind="transient")
    sink = ClickHouseSink(via_proxy)
    try:
        sink.store(SinkBatch(kpi_rows=make_kpi_rows(0, 10), events=make_events(0, 10)))
        proxy.stop()
        done = threading.Event()
        failure: list[BaseException] = []

        def feed():
            try:
                sink.store(SinkBatch(kpi_rows=make_kpi_rows(10, 10), events=make_events(10, 10),
                                     rejects=make_rejects(0, 5)))
            except BaseException as exc:  # asserted below
                failure.append(exc)
            finally:
                done.set()

        feeder = threading.Thread(target=feed)
        feeder.start()
        deadline = time.monotonic() + 10
        while metric("copulse_sink_backpressure") != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert metric("copulse_sink_backpressure") == 1
        time.sleep(2.0)
        assert not done.is_set(), "store() must block while ClickHouse is unreachable"
        proxy.start()
        assert done.wait(15), "store() did not finish after ClickHouse came back"
        feeder.join()
        assert not failure, failure
        assert metric("copulse_sink_backpressure") == 0
        assert metric("copulse_sink_errors_total", kind="transient") > transient_before
        assert sink.last_outage_seconds is not None and sink.last_outage_seconds >= 2.0
    finally:
        sink.close()
        proxy.stop()

    lines = [r.getMessage() for r in caplog.records if r.name == "sinks.clickhouse" and r.levelno >= logging.INFO]
    assert len(lines) == 2, lines  # one line per state change, none per retry
    assert lines[0].startswith(f"ClickHouse unavailable at 127.0.0.1:{proxy.port} (")
    assert lines[0].endswith("); retrying, consumption paused")
    assert lines[1].startswith("ClickHouse back after ") and lines[1].endswith(" s; 25 rows stored")
    assert client.execute("SELECT count(), uniqExact(product_id) FROM kpi_final") == [(20, 20)]
    assert client.execute(
        "SELECT sum(c) FROM (SELECT count() AS c FROM purchases FINAL UNION ALL "
        "SELECT count() AS c FROM usage_events FINAL UNION ALL SELECT count() AS c FROM feedback FINAL)"
    ) == [(20,)]
    assert client.execute("SELECT count() FROM rejected FINAL") == [(5,)]
