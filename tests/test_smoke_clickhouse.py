"""Smoke test of the real ClickHouse and of the read-only dashboard user copulse_reader."""

from __future__ import annotations

import datetime as dt

import pytest
from clickhouse_driver import Client
from clickhouse_driver.errors import ServerException

pytestmark = pytest.mark.integration

READONLY_CODES = {164, 497}  # READONLY (18.16 and later), ACCESS_DENIED (current releases)


def test_create_insert_select_with_parameters(clickhouse_db):
    clickhouse_db.execute(
        "CREATE TABLE smoke (ts DateTime, channel String, revenue Float64) ENGINE = MergeTree ORDER BY (channel, ts)"
    )
    rows = [
        (dt.datetime(2024, 5, 1, 12, 0, 0), "web", 10.5),
        (dt.datetime(2024, 5, 1, 12, 0, 30), "web", 4.5),
        (dt.datetime(2024, 5, 1, 12, 1, 0), "app'; DROP TABLE smoke; --", 1.0),
    ]
    clickhouse_db.execute("INSERT INTO smoke (ts, channel, revenue) VALUES", rows)

    result = clickhouse_db.execute(
        "SELECT channel, count(), sum(revenue) FROM smoke WHERE channel = %(channel)s GROUP BY channel",
        {"channel": "web"},
    )
    assert result == [("web", 2, 15.0)]
    hostile = clickhouse_db.execute("SELECT count() FROM smoke WHERE channel = %(c)s", {"c": rows[2][1]})
    assert hostile == [(1,)]


def _reader(clickhouse_settings, database):
    return Client(
        host=clickhouse_settings["host"],
        port=clickhouse_settings["port"],
        user="copulse_reader",
        password="copulse_reader",
        database=database,
    )


def test_copulse_reader_can_select_but_not_write(clickhouse_db, clickhouse_settings):
    clickhouse_db.execute("CREATE TABLE kpis (k String, v UInt64) ENGINE = MergeTree ORDER BY k")
    clickhouse_db.execute("INSERT INTO kpis (k, v) VALUES", [("orders", 3)])
    reader = _reader(clickhouse_settings, clickhouse_db.connection.database)
    try:
        assert reader.execute("SELECT k, v FROM kpis WHERE k = %(k)s", {"k": "orders"}) == [("orders", 3)]
        # readonly=2: per-query settings stay allowed (Grafana's ClickHouse plugin sends them)
        assert reader.execute("SELECT 1", settings={"max_result_rows": 1000}) == [(1,)]

        with pytest.raises(ServerException) as insert_error:
            reader.execute("INSERT INTO kpis (k, v) VALUES", [("orders", 4)])
        assert insert_error.value.code in READONLY_CODES

        with pytest.raises(ServerException) as create_error:
            reader.execute("CREATE TABLE sneaky (x UInt8) ENGINE = Memory")
        assert create_error.value.code in READONLY_CODES
    finally:
        reader.disconnect()
    assert clickhouse_db.execute("SELECT sum(v) FROM kpis") == [(3,)]
    assert clickhouse_db.execute("EXISTS TABLE sneaky") == [(0,)]
