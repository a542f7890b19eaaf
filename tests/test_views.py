"""The KPI and dead-letter views compute every ratio exactly, on hand-made partials (several source partitions,
several versions per partition inserted out of order), on ClickHouse 18.16 (the local server) and on a current
release (embedded chDB, tests/current_clickhouse.py, with the modern migration variant); every view and every
documented SQL example returns the same rows on both."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

import pytest
from clickhouse_driver import Client
from clickhouse_driver.errors import ServerException
from pydantic import SecretStr

from copulse.scorecard.job import VciJob
from copulse.settings import Settings
from sinks.clickhouse import ClickHouseSink
from streams.batch import RawEvent, Reject, SinkBatch
from sinks.migrations import migrate, split_statements
from sinks.rows import KPI_COLUMNS
from streams.kpis import kpi_row
from streams.events import Event
from streams.kpis import COUNTERS, revenue_decimal
from tests.conftest import unique_name
from tests.current_clickhouse import migrated_database
from tests.feedback_loop_cases import hand_made_history

UTC = dt.timezone.utc
W1 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
W2 = dt.datetime(2024, 5, 1, 13, 0, tzinfo=UTC)
HOUR = dt.timedelta(hours=1)
REPO = Path(__file__).resolve().parents[1]
#: where SQL examples for users are: every ```sql block of these runs in the tests
DOCUMENTS = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))
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


class Migrated(NamedTuple):
    """A migrated database on one ClickHouse release: ``client`` reads, ``writer`` is the client the writing code
    is given (None: it connects to ``settings``' server itself, as in production)."""

    release: str
    client: object
    database: str
    settings: Settings
    writer: object | None

    def sink(self) -> ClickHouseSink:
        return ClickHouseSink(self.settings, client=self.writer)

    def store(self, *batches: SinkBatch) -> None:
        with self.sink() as sink:
            for batch in batches:
                sink.store(batch)

    def score_vci(self) -> None:
        """The VCI scoring job over every final 1h window of the fixture."""
        job = VciJob(self.settings, client=self.writer, export=False)
        try:
            assert job.run_once(since=0, until=int(W2.timestamp()) + 3600, granularities=[3600]).total > 0
        finally:
            job.close()


@contextlib.contextmanager
def _migrated_legacy(clickhouse_settings: dict):
    """A fresh database on ClickHouse 18.16 (the local server), migrated by ``copulse db migrate``'s code."""
    database = unique_name("test_views")
    settings = ch_settings(clickhouse_settings, database)
    migrate(settings)
    client = Client(**{**clickhouse_settings, "database": database})
    try:
        yield Migrated(LEGACY, client, database, settings, None)
    finally:
        client.execute(f"DROP DATABASE IF EXISTS `{database}`")
        client.disconnect()


@contextlib.contextmanager
def _migrated_current():
    """A fresh database on the current release (embedded chDB), migrated the same way: the modern variant."""
    with migrated_database("test_views") as (client, settings):
        yield Migrated(CURRENT, client, settings.clickhouse["database"], settings, client)


LEGACY, CURRENT = "18.16", "current"


@pytest.fixture(params=[LEGACY, CURRENT])
def migrated(request):
    """A migrated database on each release in turn: the exact tests below run on both."""
    if request.param == LEGACY:
        with _migrated_legacy(request.getfixturevalue("clickhouse_settings")) as m:
            yield m
    else:
        with _migrated_current() as m:
            yield m


@pytest.fixture
def both_releases(clickhouse_settings):
    """The same fixture data (KPI partials, raw events replayed, rejects, VCI scores) on both releases."""
    with _migrated_legacy(clickhouse_settings) as legacy, _migrated_current() as current:
        for m in (legacy, current):
            m.store(SinkBatch(kpi_rows=fixture_rows(), events=sample_events(), rejects=sample_rejects()),
                    SinkBatch(events=sample_events(), rejects=sample_rejects()[:2]))  # replayed: nothing counts twice
            m.score_vci()
        yield legacy, current


@pytest.mark.integration
def test_kpi_view_computes_every_ratio_exactly(migrated):
    client, database = migrated.client, migrated.database
    rows = fixture_rows()
    # two inserts so the versions of one key sit in different parts (no merge has happened)
    migrated.store(SinkBatch(kpi_rows=rows[: len(rows) // 2]), SinkBatch(kpi_rows=rows[len(rows) // 2 :]))
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
def sample_rejects() -> list[Reject]:
    base_ms = int(W1.timestamp() * 1000)
    return [
        Reject("dlq", "schema_unknown", "copulse.purchases", 0, 10, b"c1", 100, base_ms + 1000),
        Reject("dlq", "schema_unknown", "copulse.purchases", 1, 10, b"c2", 120, base_ms + 2000),
        Reject("dlq", "currency", "copulse.purchases", 1, 11, None, 90, base_ms + 3000),
        Reject("late", "late", "copulse.usage", 2, 7, b"\xffraw", 60, base_ms + 61000),
    ]


@pytest.mark.integration
def test_dead_letter_summary_counts_each_message_once(migrated):
    client, database = migrated.client, migrated.database
    rejects = sample_rejects()
    migrated.store(SinkBatch(rejects=rejects), SinkBatch(rejects=rejects[:2]))  # the second is a replay
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
def test_reader_can_select_views_but_not_insert(clickhouse_settings):
    """18.16 only: the read-only user is the local server's (deploy/clickhouse/users.xml); chDB has no users."""
    with _migrated_legacy(clickhouse_settings) as migrated:
        _reader_can_select_views_but_not_insert(migrated, clickhouse_settings)


def _reader_can_select_views_but_not_insert(migrated: Migrated, clickhouse_settings: dict) -> None:
    client, database, settings = migrated.client, migrated.database, migrated.settings
    migrated.store(SinkBatch(kpi_rows=fixture_rows()))
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


def documented_queries() -> list[tuple[str, str]]:
    """(file, statement) of every ```sql block of README.md and docs/*.md."""
    out = []
    for path in DOCUMENTS:
        for block in re.findall(r"^```sql\n(.*?)^```", path.read_text(encoding="utf-8"), re.S | re.M):
            out += [(path.relative_to(REPO).as_posix(), statement) for statement in split_statements(block)]
    return out


def sample_events() -> list[RawEvent]:
    """Purchases, usage and feedback of 4 consumers over two months (source position unknown: 0, 0), and the
    hand-made feedback and enterprise history of the feedback-loop tests (March 2024)."""
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
    return [RawEvent(e, 0, 0) for e in events] + hand_made_history()


#: columns holding the wall clock of a write (not the data's): they differ between any two loads
WALL_CLOCK_COLUMNS = ("ingested_at", "computed_at", "registered_at")


def _comparable(client, query: str) -> tuple[list[str], list[tuple]]:
    """Column names and rows of a query, rows sorted (views have no ORDER BY), wall-clock columns left out."""
    rows, types = client.execute(query, with_column_types=True)
    names = [name for name, _ in types]
    keep = [i for i, name in enumerate(names) if name not in WALL_CLOCK_COLUMNS]
    picked = [tuple(row[i] for i in keep) for row in rows]
    return [names[i] for i in keep], sorted(picked, key=repr)


def expected_purchase_cohorts() -> list[tuple]:
    """The cohort example of docs/clickhouse.md (cohort month, month, purchasers, revenue) from sample_events()."""
    purchases = [raw.event for raw in sample_events() if raw.event.type == "purchase"]
    first: dict[str, int] = {}
    for event in purchases:
        first[event.consumer_id] = min(first.get(event.consumer_id, event.occurred_ms), event.occurred_ms)

    def month(ms: int) -> dt.date:
        return dt.datetime.fromtimestamp(ms / 1000, UTC).date().replace(day=1)

    cells: dict[tuple, tuple[set, Decimal]] = {}
    for event in purchases:
        key = (month(first[event.consumer_id]), month(event.occurred_ms))
        consumers, revenue = cells.get(key, (set(), Decimal(0)))
        cells[key] = (consumers | {event.consumer_id}, revenue + event.record["amount"])
    return [(cohort, m, len(consumers), revenue) for (cohort, m), (consumers, revenue) in sorted(cells.items())]


@pytest.mark.integration
def test_every_view_returns_the_same_rows_on_both_releases(both_releases):
    """Every view the migrations create (found in system.tables, so a new view is covered without a change
    here) returns the same rows on 18.16 and on the current release over the same data."""
    legacy, current = both_releases
    views = [name for (name,) in legacy.client.execute(
        "SELECT name FROM system.tables WHERE database = %(db)s AND engine = 'View' ORDER BY name",
        {"db": legacy.database})]
    assert {"kpi", "kpi_final", "kpi_totals", "kpi_partials", "dead_letter_summary", "vci_kpi_attainments"} <= set(views)
    assert [name for (name,) in current.client.execute(
        "SELECT name FROM system.tables WHERE database = %(db)s AND engine = 'View' ORDER BY name",
        {"db": current.database})] == views
    for view in views:
        columns, rows = _comparable(legacy.client, f"SELECT * FROM `{legacy.database}`.`{view}`")
        assert rows, f"view {view} is empty on the fixture: the comparison would prove nothing"
        assert _comparable(current.client, f"SELECT * FROM `{current.database}`.`{view}`") == (columns, rows), view


@pytest.mark.integration
def test_documented_queries_run_and_agree_on_both_releases(both_releases):
    """Every SQL example of README.md and docs/*.md runs on 18.16 and on the current release (database name
    swapped) and returns the same rows on both; rows at all, except examples relative to now() (the fixture
    lies in 2024)."""
    legacy, current = both_releases
    queries = documented_queries()
    assert len(queries) >= 7
    for where, query in queries:
        results = []
        for m in (legacy, current):
            try:
                results.append(_comparable(m.client, query.replace("copulse.", f"`{m.database}`.")))
            except ServerException as exc:
                pytest.fail(f"{where} example fails on ClickHouse {m.release}: {exc.message}\n{query}")
        assert results[0][1] or "now()" in query, f"{where} example returned nothing:\n{query}"
        if where == "docs/clickhouse.md" and "cohort_month" in query:  # an example whose exact answer is easy to recompute
            assert results[0][1] == sorted(expected_purchase_cohorts(), key=repr), query
        assert results[1] == results[0], f"{where} example differs between 18.16 and the current release:\n{query}"


@pytest.mark.integration
def test_the_views_and_the_worker_agree_on_answerable_feedback_and_detractors(migrated):
    """The answerable kinds and the detractor rule are spelt twice: in SQL by feedback_loop_events (the cohort
    figures) and in streams/kpis.py (the streamed answerable_feedback / follow_up_feedback counters). Every kind with
    every score: both say the same."""
    from streams.kpis import ANSWERABLE_KINDS, is_detractor

    kinds = ("survey_invited", "survey_response", "rating", "nps", "review", "idea", "vote", "bug_report")
    events, expected = [], {}
    when = dt.datetime(2024, 6, 1, tzinfo=UTC)
    for kind in kinds:
        for score in (None, *range(0, 11)):
            event_id = f"{kind}-{score}"
            record = {"occurred_at": when, "schema_version": 1, "kind": kind, "score": score, "text": None,
                      "in_reply_to": None}
            events.append(RawEvent(Event(type="feedback", event_id=event_id, consumer_id="c", channel="web",
                                         occurred_ms=int(when.timestamp() * 1000), region="eu", segment=None,
                                         product_id="p", category="c", schema_id=1, record=record), 0, 0))
            expected[event_id] = (int(kind in ANSWERABLE_KINDS), int(is_detractor(kind, score)))
    migrated.store(SinkBatch(events=events))
    got = migrated.client.execute(f"SELECT event_id, is_answerable, is_detractor FROM `{migrated.database}`.feedback_loop_events")
    assert {event_id: (int(a), int(d)) for event_id, a, d in got} == expected
