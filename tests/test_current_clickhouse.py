"""tests/current_clickhouse.py's client answers like clickhouse-driver: the same query, parameters and rows give
the same Python values on ClickHouse 18.16 (through clickhouse-driver) and on the embedded current release."""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal

import pytest
from clickhouse_driver import Client
from clickhouse_driver.errors import ServerException

from tests.conftest import unique_name
from tests.current_clickhouse import MINIMUM_VERSION, current_clickhouse

TYPED = """
SELECT toDateTime('2024-05-01 12:00:00', 'UTC') AS utc_time, toDateTime('2024-05-01 12:00:00') AS server_time,
       toDate('2024-05-01') AS day, toDecimal64(-10.01, 2) AS money, toDecimal128('123456789012.34', 2) AS big,
       toUInt64(18446744073709551615) AS u64, toInt64(-9223372036854775808) AS i64, 1 / 3 AS ratio, nan AS not_a_number,
       CAST(NULL AS Nullable(Float64)) AS nothing, toNullable('x') AS maybe, [0.1, 0.25] AS floats,
       tuple(1, 'a') AS pair, ['a\\'b', 'c\\\\d'] AS texts, 'üñí' AS unicode, CAST('web' AS Enum8('web' = 1)) AS enum
"""
PARAMS = {"text": "it's a \\ back'slash", "when": dt.datetime(2024, 5, 1, 12, 0, 30, tzinfo=dt.UTC),
          "ids": ("a", "b'c"), "number": 7, "decimal": Decimal("12.34"), "nothing": None, "floats": [0.5, 1.5]}
WITH_PARAMS = ("SELECT %(text)s AS text, toDateTime(%(when)s, 'UTC') AS at, 'b''c' IN %(ids)s AS found, "
               "%(number)s + 1 AS number, toDecimal64(%(decimal)s, 2) AS money, isNull(%(nothing)s) AS missing, "
               "arraySum(%(floats)s) AS total")


@pytest.fixture
def legacy(clickhouse_settings):
    client = Client(**clickhouse_settings)
    yield client
    client.disconnect()


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b and getattr(a, "tzinfo", None) == getattr(b, "tzinfo", None)


def test_current_release_is_current():
    assert current_clickhouse().version >= MINIMUM_VERSION


@pytest.mark.integration
def test_typed_values_and_parameters_come_back_as_clickhouse_driver_returns_them(legacy):
    current = current_clickhouse()
    for query, params in ((TYPED, None), (WITH_PARAMS, PARAMS)):
        old, old_types = legacy.execute(query, params, with_column_types=True)
        new, new_types = current.execute(query, params, with_column_types=True)
        assert [n for n, _ in new_types] == [n for n, _ in old_types]
        assert len(new) == len(old) == 1
        for name, o, n in zip([n for n, _ in old_types], old[0], new[0]):
            assert same(o, n), f"{name}: 18.16 gives {o!r}, the current release {n!r}"


@pytest.mark.integration
def test_inserted_rows_read_back_alike(legacy):
    current = current_clickhouse()
    rows = [("it's", dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC), Decimal("-1.05"), None, [1, 2], True),
            ("back\\slash\nnew line", 1714564800, Decimal("0.10"), "x", [], False)]
    for client in (legacy, current):
        database = unique_name("test_adapter")
        client.execute(f"CREATE DATABASE `{database}`")
        try:
            client.execute(f"CREATE TABLE `{database}`.t (s String, at DateTime('UTC'), d Decimal(18, 2), "
                           "n Nullable(String), a Array(UInt8), b UInt8) ENGINE = MergeTree ORDER BY s")
            client.execute(f"INSERT INTO `{database}`.t (s, at, d, n, a, b) VALUES", rows, types_check=True)
            back = client.execute(f"SELECT s, toUnixTimestamp(at), d, n, a, b FROM `{database}`.t ORDER BY s")
        finally:
            client.execute(f"DROP DATABASE IF EXISTS `{database}`")
        assert back == [("back\\slash\nnew line", 1714564800, Decimal("0.10"), "x", [], 0),
                        ("it's", 1714564800, Decimal("-1.05"), None, [1, 2], 1)], client


def test_server_errors_raise_clickhouse_drivers_exception_with_the_code():
    with pytest.raises(ServerException) as error:
        current_clickhouse().execute("SELECT * FROM no_such_database.no_such_table")
    assert error.value.code in (60, 81)
