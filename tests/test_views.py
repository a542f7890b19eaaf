"""The KPI and dead-letter views compute every ratio exactly, on hand-made partials (several source partitions,
several versions per partition inserted out of order), on the real ClickHouse and, when the chdb package is
installed, on a current ClickHouse release too (the modern migration variant)."""

from __future__ import annotations

import datetime as dt
import re
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from urllib.parse import quote

import pytest
from clickhouse_driver import Client
from clickhouse_driver.errors import ServerException
from pydantic import SecretStr

from copulse.settings import Settings
from sinks.clickhouse import ClickHouseSink
from streams.batch import RawEvent, Reject, SinkBatch
from sinks.migrations import load_migrations, migrate, render, split_statements
from sinks.rows import KPI_COLUMNS
from streams.kpis import kpi_row
from streams.events import Event
from streams.kpis import COUNTERS, revenue_decimal

UTC = dt.timezone.utc
W1 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
W2 = dt.datetime(2024, 5, 1, 13, 0, tzinfo=UTC)
HOUR = dt.timedelta(hours=1)
CLICKHOUSE_DOC = Path(__file__).resolve().parents[1] / "docs" / "clickhouse.md"
READONLY_CODES = {164, 497}

DIMS = ("channel", "region", "category", "segment", "product_id", "feature")
VIEW_KEY = ("granularity_seconds", "window_start", "slice") + DIMS


def ch_settings(clickhouse_settings: dict, database: str, **overrides) -> Settings:
    """Settings for the test ClickHouse only (no Kafka needed)."""
    ch = clickhouse_settings
    return Settings(
        clickhouse_url=f"clickhouse://{quote(ch['user'], safe='')}@{ch['host']}:{ch['port']}/{database}",
        clickhouse_password=SecretStr(ch["password"]),
        **overrides,
    )


def _counters(seed: int) -> dict:
    """Plausible, distinct counter values (denominators >= numerators)."""
    s = seed
    return dict(
        events=40 + s,
        active_consumers=12 + s,
        participating_consumers=5 + s % 4,
        co_creation_actions=9 + s,
        ideas_submitted=s % 3,
        ratings=6 + s % 5,
        rating_sum=(6 + s % 5) * 3 + s % 7,
        ratings_satisfied=3 + s % 3,
        nps_responses=7 + s % 4,
        nps_promoters=2 + s % 3,
        nps_detractors=1 + s % 4,
        surveys_invited=11 + s % 6,
        survey_responses=4 + s % 5,
        orders=3 + s % 4,
        revenue_minor=12345 + 1001 * s,
        purchasers=3 + s % 3,
        returning_purchasers=1 + s % 2,
        sessions=8 + s,
        sessions_timed=5 + s % 3,
        session_ms=123457 + 997 * s,
        feature_uses=6 + s,
        feature_users=2 + s % 5,
    )


def _row(window, slice_name, partition, version, is_final, seed, granularity=3600, **dims):
    return kpi_row(**
        dict(
            granularity_seconds=granularity,
            window_start=window,
            window_end=window + dt.timedelta(seconds=granularity),
            slice=slice_name,
            partition=partition,
            version=version,
            is_final=is_final,
            emitted_at=window + dt.timedelta(seconds=granularity, milliseconds=500 * version),
            **dims,
            **_counters(seed),
        )
    )


def fixture_rows() -> list[tuple]:
    """Partials of two 1h windows, with stale versions that must not count."""
    rows = []
    # W1 overall: three partitions, partition 0 with versions 1..3 (v3 final), inserted out of order
    rows += [_row(W1, "overall", 0, 1, 0, 100), _row(W1, "overall", 0, 3, 1, 1), _row(W1, "overall", 0, 2, 0, 200)]
    rows += [_row(W1, "overall", 1, 6, 0, 300), _row(W1, "overall", 1, 7, 1, 2)]
    rows += [_row(W1, "overall", 2, 1, 1, 3)]
    # W1 channel: web from partitions 0 and 1, app from partition 2
    rows += [_row(W1, "channel", 0, 1, 1, 4, channel="web"), _row(W1, "channel", 1, 2, 1, 5, channel="web")]
    rows += [_row(W1, "channel", 2, 1, 0, 400, channel="app"), _row(W1, "channel", 2, 4, 1, 6, channel="app")]
    # W1 feature: adoption denominators come from W1 overall
    rows += [_row(W1, "feature", 0, 1, 1, 7, feature="wishlist"), _row(W1, "feature", 1, 1, 1, 8, feature="wishlist")]
    rows += [_row(W1, "feature", 2, 2, 1, 9, feature="compare")]
    # W1 channel+feature: denominators come from W1 channel with the same channel
    rows += [_row(W1, "channel+feature", 0, 1, 1, 10, channel="web", feature="wishlist")]
    rows += [_row(W1, "channel+feature", 2, 1, 1, 11, channel="app", feature="compare")]
    # W2 overall: partition 1 still open -> not final
    rows += [_row(W2, "overall", 0, 1, 1, 12), _row(W2, "overall", 1, 1, 0, 13)]
    # W2 segment: a window with every denominator 0 -> NULL ratios, revenue 0.00
    zero = kpi_row(**
        dict(granularity_seconds=3600, window_start=W2, window_end=W2 + HOUR, slice="segment", segment="unknown",
             partition=3, version=1, is_final=1, events=2)
    )
    rows.append(zero)
    # 1m granularity, one partition, negative revenue (refunds) and rounding of aov half away from zero
    rows.append(
        kpi_row(**
            dict(granularity_seconds=60, window_start=W1, window_end=W1 + dt.timedelta(minutes=1), slice="overall",
                 partition=0, version=5, is_final=1, events=3, active_consumers=2, orders=2, revenue_minor=-1001,
                 purchasers=2)
        )
    )
    return rows


def _round_half_away(numerator: int, denominator: int) -> int:
    q = (Decimal(abs(numerator)) / Decimal(denominator)).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return int(q) * (-1 if numerator < 0 else 1)


def expected_view(rows: list[tuple]) -> dict[tuple, dict]:
    """The kpi view computed in Python from the partial rows."""
    latest: dict[tuple, dict] = {}
    for row in rows:
        rec = row._asdict()
        key = tuple(rec[c] for c in VIEW_KEY) + (rec["partition"],)
        if key not in latest or rec["version"] > latest[key]["version"]:
            latest[key] = rec
    totals: dict[tuple, dict] = {}
    for rec in latest.values():
        key = tuple(rec[c] for c in VIEW_KEY)
        tot = totals.setdefault(
            key, {**{c: rec[c] for c in VIEW_KEY}, "window_end": rec["window_end"], "is_final": 1, "partials": 0,
                  **{c: 0 for c in COUNTERS}}
        )
        tot["partials"] += 1
        tot["is_final"] = min(tot["is_final"], rec["is_final"])
        for c in COUNTERS:
            tot[c] += rec[c]

    def ratio(n, d):
        return None if d == 0 else n / d

    for key, t in totals.items():
        t["participation_rate"] = ratio(t["participating_consumers"], t["active_consumers"])
        t["csat_avg"] = ratio(t["rating_sum"], t["ratings"])
        t["csat_pct"] = ratio(t["ratings_satisfied"], t["ratings"])
        t["nps"] = ratio(100 * (t["nps_promoters"] - t["nps_detractors"]), t["nps_responses"])
        t["survey_response_rate"] = ratio(t["survey_responses"], t["surveys_invited"])
        t["revenue"] = revenue_decimal(t["revenue_minor"])
        t["aov"] = None if t["orders"] == 0 else revenue_decimal(_round_half_away(t["revenue_minor"], t["orders"]))
        t["returning_purchaser_rate"] = ratio(t["returning_purchasers"], t["purchasers"])
        t["avg_session_seconds"] = ratio(t["session_ms"], 1000 * t["sessions_timed"])
        parts = t["slice"].split("+")
        if "feature" in parts:
            base_slice = "+".join(p for p in parts if p != "feature") or "overall"
            base_key = key[:2] + (base_slice,) + key[3:8] + ("",)
            base = totals.get(base_key)
            t["feature_adoption_denominator"] = base["active_consumers"] if base else 0
        else:
            t["feature_adoption_denominator"] = t["active_consumers"]
        t["feature_adoption"] = ratio(t["feature_users"], t["feature_adoption_denominator"])
    return totals


RATIOS = (
    "participation_rate", "csat_avg", "csat_pct", "nps", "survey_response_rate", "revenue", "aov",
    "returning_purchaser_rate", "avg_session_seconds", "feature_adoption_denominator", "feature_adoption",
)
COMPARED = VIEW_KEY + ("window_end", "is_final", "partials") + COUNTERS + RATIOS


def _actual(client: Client, database: str, view: str = "kpi") -> dict[tuple, dict]:
    rows = client.execute(f"SELECT {', '.join(COMPARED)} FROM `{database}`.{view}")
    out = {}
    for row in rows:
        rec = dict(zip(COMPARED, row))
        rec["window_start"] = int(rec["window_start"].timestamp())
        rec["window_end"] = int(rec["window_end"].timestamp())
        out[tuple(rec[c] for c in VIEW_KEY)] = rec
    return out


def assert_view_matches(actual: dict, expected: dict) -> None:
    assert set(actual) == set(expected)
    for key, exp in expected.items():
        got = actual[key]
        for column in COMPARED:
            assert got[column] == exp[column], f"{column} of {key}: view {got[column]!r}, expected {exp[column]!r}"
            if column in ("revenue", "aov") and exp[column] is not None:
                assert isinstance(got[column], Decimal)


@pytest.fixture
def migrated(clickhouse_db, clickhouse_settings):
    database = clickhouse_db.connection.database
    settings = ch_settings(clickhouse_settings, database)
    migrate(settings)
    return clickhouse_db, database, settings


@pytest.mark.integration
def test_kpi_view_computes_every_ratio_exactly(migrated):
    client, database, settings = migrated
    rows = fixture_rows()
    with ClickHouseSink(settings) as sink:
        # two inserts so the versions of one key sit in different parts (no merge has happened)
        sink.store(SinkBatch(kpi_rows=rows[: len(rows) // 2]))
        sink.store(SinkBatch(kpi_rows=rows[len(rows) // 2 :]))
    expected = expected_view(rows)
    actual = _actual(client, database)
    assert_view_matches(actual, expected)

    # spot checks written out by hand, so the Python oracle is not the only judge
    w1 = int(W1.timestamp())
    overall = actual[(3600, w1, "overall", "", "", "", "", "", "")]
    c1, c2, c3 = _counters(1), _counters(2), _counters(3)  # newest version of partitions 0, 1, 2
    assert overall["partials"] == 3 and overall["is_final"] == 1
    assert overall["events"] == c1["events"] + c2["events"] + c3["events"] == 126
    active = c1["active_consumers"] + c2["active_consumers"] + c3["active_consumers"]
    assert overall["participation_rate"] == (
        c1["participating_consumers"] + c2["participating_consumers"] + c3["participating_consumers"]
    ) / active
    assert overall["revenue"] == Decimal("430.41")  # 13346 + 14347 + 15348 cents
    wishlist = actual[(3600, w1, "feature", "", "", "", "", "", "wishlist")]
    assert wishlist["feature_adoption_denominator"] == active
    assert wishlist["feature_adoption"] == (_counters(7)["feature_users"] + _counters(8)["feature_users"]) / active
    web_wishlist = actual[(3600, w1, "channel+feature", "web", "", "", "", "", "wishlist")]
    web_active = _counters(4)["active_consumers"] + _counters(5)["active_consumers"]
    assert web_wishlist["feature_adoption_denominator"] == web_active
    w2 = int(W2.timestamp())
    assert actual[(3600, w2, "overall", "", "", "", "", "", "")]["is_final"] == 0
    empty = actual[(3600, w2, "segment", "", "", "", "unknown", "", "")]
    assert empty["revenue"] == Decimal("0.00")
    assert all(empty[c] is None for c in RATIOS if c not in ("revenue", "feature_adoption_denominator"))
    minute = actual[(60, w1, "overall", "", "", "", "", "", "")]
    assert minute["revenue"] == Decimal("-10.01") and minute["aov"] == Decimal("-5.01")  # -500.5 cents

    final = _actual(client, database, "kpi_final")
    assert set(final) == {k for k, v in expected.items() if v["is_final"] == 1}
    assert (3600, w2, "overall", "", "", "", "", "", "") not in final


@pytest.mark.integration
def test_dead_letter_summary_counts_each_message_once(migrated):
    client, database, settings = migrated
    base_ms = int(W1.timestamp() * 1000)
    rejects = [
        Reject("dlq", "schema_unknown", "copulse.purchases", 0, 10, b"c1", 100, base_ms + 1000),
        Reject("dlq", "schema_unknown", "copulse.purchases", 1, 10, b"c2", 120, base_ms + 2000),
        Reject("dlq", "currency", "copulse.purchases", 1, 11, None, 90, base_ms + 3000),
        Reject("late", "late", "copulse.usage", 2, 7, b"\xffraw", 60, base_ms + 61000),
    ]
    with ClickHouseSink(settings) as sink:
        sink.store(SinkBatch(rejects=rejects))
        sink.store(SinkBatch(rejects=rejects[:2]))  # a replay
    summary = client.execute(
        f"SELECT minute, kind, topic, reason, messages, value_bytes FROM `{database}`.dead_letter_summary "
        "ORDER BY minute, kind, topic, reason"
    )
    assert [(m.strftime("%H:%M"), k, t, r, n, b) for m, k, t, r, n, b in summary] == [
        ("12:00", "dlq", "copulse.purchases", "currency", 1, 90),
        ("12:00", "dlq", "copulse.purchases", "schema_unknown", 2, 220),
        ("12:01", "late", "copulse.usage", "late", 1, 60),
    ]
    keys = client.execute(f"SELECT key FROM `{database}`.rejected FINAL ORDER BY kind, topic, partition, offset")
    assert [k for (k,) in keys] == ["c1", "c2", None, "\\xffraw"]


@pytest.mark.integration
def test_reader_can_select_views_but_not_insert(migrated, clickhouse_settings):
    client, database, settings = migrated
    with ClickHouseSink(settings) as sink:
        sink.store(SinkBatch(kpi_rows=fixture_rows()))
    reader = Client(
        host=clickhouse_settings["host"],
        port=clickhouse_settings["port"],
        user=settings.clickhouse_readonly_user,
        password=settings.clickhouse_readonly_password.get_secret_value(),
        database=database,
    )
    try:
        for view in ("kpi", "kpi_final", "kpi_totals", "dead_letter_summary"):
            reader.execute(f"SELECT count() FROM {view}")
        assert reader.execute("SELECT count() FROM kpi_final WHERE slice = %(s)s", {"s": "feature"}) == [(2,)]
        for table in ("purchases", "usage_events", "feedback", "rejected"):
            assert reader.execute(f"SELECT count() FROM {table}") == [(0,)]
        with pytest.raises(ServerException) as error:
            reader.execute(f"INSERT INTO kpi_windows ({', '.join(KPI_COLUMNS)}) VALUES", [fixture_rows()[0]])
        assert error.value.code in READONLY_CODES
        with pytest.raises(ServerException) as error:
            reader.execute("DROP TABLE kpi_windows")
        assert error.value.code in READONLY_CODES
    finally:
        reader.disconnect()
    assert client.execute("SELECT count() FROM kpi_windows") == [(len(fixture_rows()),)]


def documented_queries(page: Path, section: str | None = None) -> list[str]:
    """The ```sql examples of a docs page, or of its '## section' only."""
    text = page.read_text(encoding="utf-8")
    if section is not None:
        match = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
        assert match, f"{page.name} lacks the section '## {section}'"
        text = match.group(1)
    return [q.strip().rstrip(";") for q in re.findall(r"```sql\n(.*?)```", text, re.S)]


def _documented_queries() -> list[str]:
    return documented_queries(CLICKHOUSE_DOC, "ClickHouse tables and views")


def sample_events() -> list[RawEvent]:
    """Purchases, usage and feedback of 4 consumers over two months (source position unknown: 0, 0)."""
    events = []
    for i in range(24):
        consumer = f"c{i % 4}"
        when = dt.datetime(2024, 4, 20, 10, tzinfo=UTC) + dt.timedelta(days=2 * i, minutes=i)
        common = dict(consumer_id=consumer, occurred_ms=int(when.timestamp() * 1000), channel=("web", "app")[i % 2],
                      region="eu", segment=None if i % 3 else "pro", product_id=f"p{i % 3}", category="shoes",
                      schema_id=1)
        record = {"occurred_at": when, "schema_version": 1}
        if i % 3 == 0:
            record.update(order_id=f"o{i}", quantity=1 + i % 2, amount=Decimal("19.99") * (1 + i % 2), currency="EUR")
            events.append(Event(type="purchase", event_id=f"e{i}", record=record, **common))
        elif i % 3 == 1:
            record.update(session_id=f"s{i}", action="feature_use", feature="wishlist", duration_ms=None,
                          co_creation=False, app_version="2.1.0")
            events.append(Event(type="usage", event_id=f"e{i}", record=record, **common))
        else:
            record.update(kind="rating", score=4, text="nice", in_reply_to=None)
            events.append(Event(type="feedback", event_id=f"e{i}", record=record, **common))
    return [RawEvent(e, 0, 0) for e in events]


@pytest.mark.integration
def test_documented_example_queries_run(migrated):
    """Every SQL example of the docs section runs on the real server (database name swapped)."""
    client, database, settings = migrated
    with ClickHouseSink(settings) as sink:
        sink.store(SinkBatch(kpi_rows=fixture_rows(), events=sample_events()))
        sink.store(SinkBatch(events=sample_events()))  # replayed: examples must not double count
    queries = _documented_queries()
    assert len(queries) >= 5
    returned = [client.execute(query.replace("copulse.", f"`{database}`.")) for query in queries]
    # the fixture lies in 2024: examples relative to now() return nothing, the others must return rows
    for query, rows in zip(queries, returned):
        assert rows or "now()" in query, f"docs/clickhouse.md example returned nothing:\n{query}"


def sql_literal(value) -> str:
    """A Python value as a ClickHouse SQL literal (for chdb, which takes no parameters here)."""
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(value)


def test_views_on_current_clickhouse_release():
    """The modern migration variant and the views on a current ClickHouse (embedded by the chdb package)."""
    chdb_session = pytest.importorskip("chdb.session", reason="chdb (embedded current ClickHouse) is not installed")
    import tempfile

    with tempfile.TemporaryDirectory() as path:
        session = chdb_session.Session(path)
        try:
            version_text = session.query("SELECT version()", "CSV").data().strip().strip('"')
            version = tuple(int(p) for p in version_text.split("."))
            assert version >= (20, 3)
            session.query("CREATE DATABASE IF NOT EXISTS modern")
            for migration in load_migrations():
                for statement in split_statements(render(migration.template, "modern", version)):
                    session.query(statement)
            types = session.query(
                "SELECT type FROM system.columns WHERE database = 'modern' AND table = 'purchases' AND name = 'channel'",
                "CSV",
            ).data()
            assert "LowCardinality(String)" in types
            rows = fixture_rows()
            values = ", ".join("(" + ", ".join(sql_literal(v) for v in r) + ")" for r in rows)
            session.query(f"INSERT INTO modern.kpi_windows ({', '.join(KPI_COLUMNS)}) VALUES {values}")
            result = session.query(
                f"SELECT {', '.join(COMPARED)} FROM modern.kpi ORDER BY {', '.join(VIEW_KEY)}", "JSONCompact"
            )
            import json

            data = json.loads(result.data())["data"]
            actual = {}
            for row in data:
                rec = dict(zip(COMPARED, row))
                for c in ("window_start", "window_end"):
                    rec[c] = int(dt.datetime.fromisoformat(rec[c]).replace(tzinfo=UTC).timestamp())
                for c in ("revenue", "aov"):
                    rec[c] = None if rec[c] is None else Decimal(str(rec[c])).quantize(Decimal("0.01"))
                for c in COUNTERS + ("granularity_seconds", "is_final", "partials", "feature_adoption_denominator"):
                    rec[c] = int(rec[c])
                actual[tuple(rec[c] for c in VIEW_KEY)] = rec
            assert_view_matches(actual, expected_view(rows))
            finals = session.query("SELECT count() FROM modern.kpi_final", "CSV").data().strip()
            assert int(finals) == sum(1 for v in expected_view(rows).values() if v["is_final"] == 1)
            for query in _documented_queries():  # the documented examples parse and run on the current release too
                session.query(query.replace("copulse.", "modern."))
        finally:
            session.close()
