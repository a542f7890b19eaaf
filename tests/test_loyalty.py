"""The loyalty views (schemas/clickhouse/0006_loyalty.sql, docs/loyalty.md) against an independent oracle
(tests/loyalty_oracle.py): months of generated events, stored through the real sink into the real ClickHouse,
with duplicates of the same event_id from a crash replay; every figure is compared exactly, before and after
the raw tables merge the duplicates away. A hand-made history checks the definitions without the oracle, and
every documented query of docs/loyalty.md runs. Each test runs on ClickHouse 18.16 and on a current release
(chDB; the ``migrated`` fixture of tests/test_views.py)."""

from __future__ import annotations

import datetime as dt
import zlib
from decimal import Decimal

import pytest

from copulse.generator import DUPLICATE, LATE, VALID, generate_events
from sinks.rows import EVENT_TABLES
from streams.batch import RawEvent, SinkBatch
from streams.codec import Decoder
from streams.errors import DeadLetter
from streams.events import Event
from streams.validation import decode_event
from tests.helpers_events import unit_settings
from tests.loyalty_oracle import LoyaltyOracle
from tests.test_migrations import EXPECTED_OBJECTS
from tests.test_views import documented_queries, migrated  # noqa: F401 (migrated: a fixture)

UTC = dt.timezone.utc
START = dt.datetime(2024, 1, 17, 9, 30, tzinfo=UTC)  # a Wednesday: first week and month are partial
SPAN_DAYS = 130
MESSAGES = 5000
PARTITIONS = 3
BATCH = 400
RAW_TABLES = tuple(EVENT_TABLES.values())

LIFECYCLE = ("active_consumers", "new_consumers", "returning_consumers", "resurrecting_consumers", "dormant_consumers")
COHORT = ("period_start", "cohort_size", "active_consumers", "retention_rate", "purchasers", "revenue")
REPEAT = ("first_purchasers", "matured_30d", "repeat_purchasers_30d", "repeat_rate_30d",
          "matured_90d", "repeat_purchasers_90d", "repeat_rate_90d")  # fmt: skip
STICKINESS = ("days", "consumer_days", "active_consumers", "average_daily_active", "stickiness")
ROLLING = ("dau", "mau", "stickiness", "window_complete")


# ============================================================================ data: generator -> sink
def generated_history(count: int = MESSAGES, seed: int = 14, start: dt.datetime = START, span_days: int = SPAN_DAYS,
                      types: tuple[str, ...] | None = None, **options):
    """(settings, decoded raw events in offset order, generator event dicts of the stored events).

    Valid and late events reach the raw tables (late ones keep their own event time); the generator's
    duplicates are stored too (the same event_id at another offset), as is every invalid message's absence.
    ``types``: keep only events of these types; ``options``: more GeneratorOptions fields."""
    settings = unit_settings()
    messages = generate_events(
        settings, count=count, seed=seed, consumers=300, start_ms=int(start.timestamp() * 1000),
        event_time_rate=count / (span_days * 86400), duplicate_fraction=0.03, late_fraction=0.01,
        invalid_fraction=0.01, **options,
    )  # fmt: skip
    decoder = Decoder(settings)
    wall_ms = int(dt.datetime(2030, 1, 1, tzinfo=UTC).timestamp() * 1000)
    offsets: dict[tuple, int] = {}
    stored, described = [], []
    for msg in messages:
        partition = zlib.crc32(msg.key) % PARTITIONS if msg.key else 0
        offset = offsets.get((msg.topic, partition), 0)
        offsets[(msg.topic, partition)] = offset + 1
        try:
            event = decode_event(decoder, settings, msg.topic, msg.key, msg.value, wall_ms)
        except DeadLetter:
            assert msg.expected not in (VALID, DUPLICATE, LATE), msg.reason
            continue
        assert msg.expected in (VALID, DUPLICATE, LATE)
        if types is not None and msg.type not in types:
            continue
        stored.append(RawEvent(event, partition, offset))
        described.append(dict(msg.event, type=msg.type))
    return settings, stored, described


@pytest.fixture(scope="module")
def history():
    return generated_history()


def store_with_crash_replays(migrated, events: list[RawEvent]) -> int:
    """Store ``events`` in batches through the real sink; after every third batch the two batches before it
    are stored again, as a worker that crashed before committing its offsets would. Returns rows replayed."""
    replayed = 0
    batches = [events[i : i + BATCH] for i in range(0, len(events), BATCH)]
    with migrated.sink() as sink:
        for number, batch in enumerate(batches, 1):
            sink.store(SinkBatch(events=batch))
            if number % 3 == 0:
                again = batches[number - 2] + batch
                sink.store(SinkBatch(events=again))
                replayed += len(again)
    return replayed


# ============================================================================ reading the views
def rows(client, database: str, view: str, columns: tuple[str, ...]) -> list[dict]:
    return [dict(zip(columns, r)) for r in client.execute(f"SELECT {', '.join(columns)} FROM `{database}`.{view}")]


def actual_views(client, database: str) -> dict:
    """Every loyalty view keyed like the oracle's dicts."""
    lifecycle = rows(client, database, "loyalty_lifecycle", ("period", "period_start") + LIFECYCLE)
    cohorts = rows(client, database, "loyalty_cohorts", ("period", "cohort", "cohort_start", "periods_after") + COHORT)
    repeat = rows(client, database, "loyalty_repeat_purchase", ("period", "cohort_start") + REPEAT)
    stickiness = rows(client, database, "loyalty_stickiness", ("period", "period_start") + STICKINESS)
    rolling = rows(client, database, "loyalty_stickiness_rolling", ("day",) + ROLLING)
    states = client.execute(f"SELECT period, period_start, consumer_id, state FROM `{database}`.loyalty_consumer_lifecycle")
    members = client.execute(
        f"SELECT period, cohort, cohort_start, groupUniqArray(consumer_id) FROM `{database}`.loyalty_cohort_members "
        "GROUP BY period, cohort, cohort_start"
    )
    return {
        "lifecycle": {(r.pop("period"), r.pop("period_start")): r for r in lifecycle},
        "cohorts": {(r.pop("period"), r.pop("cohort"), r.pop("cohort_start"), r.pop("periods_after")): r for r in cohorts},
        "repeat": {(r.pop("period"), r.pop("cohort_start")): r for r in repeat},
        "stickiness": {(r.pop("period"), r.pop("period_start")): r for r in stickiness},
        "rolling": {r.pop("day"): r for r in rolling},
        "states": set(states),
        "members": {(p, c, s): set(m) for p, c, s, m in members},
    }


def expected_views(oracle: LoyaltyOracle) -> dict:
    return {
        "lifecycle": oracle.lifecycle(),
        "cohorts": oracle.cohorts(),
        "repeat": oracle.repeat_purchase(),
        "stickiness": oracle.stickiness(),
        "rolling": oracle.stickiness_rolling(),
        "states": oracle.consumer_lifecycle(),
        "members": oracle.cohort_members(),
    }


def assert_views_equal(actual: dict, expected: dict) -> None:
    for view, want in expected.items():
        got = actual[view]
        assert set(got) == set(want), f"{view}: keys differ: only in ClickHouse {sorted(set(got) - set(want))[:5]}, " \
                                      f"only in the oracle {sorted(set(want) - set(got))[:5]}"
        if isinstance(want, set):
            continue
        for key, expected_row in want.items():
            if not isinstance(expected_row, dict):
                assert got[key] == expected_row, f"{view} {key}: ClickHouse and the oracle differ"
                continue
            for column, value in expected_row.items():
                assert got[key][column] == value, f"{view} {key} {column}: ClickHouse {got[key][column]!r}, oracle {value!r}"
                if column == "revenue":
                    assert isinstance(got[key][column], Decimal)


# ============================================================================ tests
@pytest.mark.integration
def test_loyalty_views_equal_the_oracle_before_and_after_merges(migrated, history):
    client, database = migrated.client, migrated.database
    _, events, described = history
    replayed = store_with_crash_replays(migrated, events)
    assert replayed > 1000

    stored = {t: client.execute(f"SELECT count(), uniqExact(event_id) FROM `{database}`.{t}")[0] for t in RAW_TABLES}
    assert sum(rows_ for rows_, _ in stored.values()) > sum(ids for _, ids in stored.values()), "no duplicates stored"
    assert stored["purchases"][0] > stored["purchases"][1], "purchases must hold duplicates for the test to mean anything"

    oracle = LoyaltyOracle(described)
    expected = expected_views(oracle)
    assert_views_equal(actual_views(client, database), expected)

    # the generated months are not trivial: every state, cohorts over many weeks, repeats, revenue
    lifecycle = expected["lifecycle"]
    for state in LIFECYCLE:
        assert sum(v[state] for (p, _), v in lifecycle.items() if p == "week") > 0, state
    assert len({k[2] for k in expected["cohorts"] if k[0] == "week" and k[1] == "first_purchase"}) >= 10
    assert any(v["repeat_purchasers_30d"] for v in expected["repeat"].values())
    assert any(v["matured_90d"] > v["repeat_purchasers_90d"] for v in expected["repeat"].values())
    monthly = [v for (p, _, _, k), v in expected["cohorts"].items() if p == "month" and k >= 2]
    assert any(v["revenue"] > 0 for v in monthly)

    # lifecycle identities: active = new + returning + resurrecting; previous active = returning + dormant
    actual = actual_views(client, database)["lifecycle"]
    for period in ("day", "week", "month"):
        starts = sorted(s for p, s in actual if p == period)
        for previous, current in zip(starts, starts[1:]):
            now, before = actual[(period, current)], actual[(period, previous)]
            assert now["active_consumers"] == now["new_consumers"] + now["returning_consumers"] + now["resurrecting_consumers"]
            assert before["active_consumers"] == now["returning_consumers"] + now["dormant_consumers"]

    # revenue of all cohorts = revenue of the deduplicated purchases (every purchaser is in one cohort)
    total = client.execute(
        f"SELECT sum(amount) FROM (SELECT event_id, any(amount) AS amount FROM `{database}`.purchases GROUP BY event_id)"
    )[0][0]
    assert sum(v["revenue"] for (p, c, _, _), v in expected["cohorts"].items() if p == "month" and c == "first_seen") == total

    for table in RAW_TABLES:  # merged: the duplicates are gone, the figures stay the same
        client.execute(f"OPTIMIZE TABLE `{database}`.{table} FINAL")
    assert client.execute(f"SELECT count() - uniqExact(event_id) FROM `{database}`.purchases") == [(0,)]
    assert_views_equal(actual_views(client, database), expected)


LOYALTY_VIEWS = sorted(name for name in EXPECTED_OBJECTS if name.startswith("loyalty_"))


@pytest.mark.integration
def test_loyalty_views_are_empty_without_activity(migrated):
    """No activity (only a company-side survey invitation): no range, no periods, no rows and no error."""
    client, database = migrated.client, migrated.database
    with migrated.sink() as sink:
        sink.store(SinkBatch(events=[_event("a", "2024-01-02T10:00:00", "feedback", kind="survey_invited")]))
    for view in LOYALTY_VIEWS:
        assert client.execute(f"SELECT count() FROM `{database}`.{view}") == [(0,)], view


def _event(consumer: str, when: str, event_type: str = "usage", **record) -> RawEvent:
    moment = dt.datetime.fromisoformat(when).replace(tzinfo=UTC)
    ms = int(moment.timestamp() * 1000)
    event_id = f"{consumer}-{event_type}-{when}-{record.get('order_id', '')}"
    defaults = {
        "purchase": dict(quantity=1, currency="EUR"),
        "usage": dict(session_id="s", action="session_start", feature=None, duration_ms=None, co_creation=False,
                      app_version=None),
        "feedback": dict(score=None, text=None, in_reply_to=None),
    }[event_type]
    base = {"occurred_at": moment, "schema_version": 1, **defaults, **record}
    event = Event(event_type, event_id, consumer, ms, "web", "DE", None, "AUD-001", "audio", 1, base)
    return RawEvent(event, 0, 0)


@pytest.mark.integration
def test_loyalty_definitions_on_a_hand_made_history(migrated):
    """Figures worked out by hand (not by the oracle) for three consumers over five weeks of 2024."""
    client, database = migrated.client, migrated.database
    events = [
        # a: weeks 1, 2 and 4; first purchase on Tue 2024-01-02 (order o1 with two lines), repeats 30 days later
        _event("a", "2024-01-02T10:00:00", "purchase", order_id="o1", amount=Decimal("10.00")),
        _event("a", "2024-01-02T10:05:00", "purchase", order_id="o1", amount=Decimal("5.50")),
        _event("a", "2024-01-09T08:00:00"),
        _event("a", "2024-02-01T10:00:00", "purchase", order_id="o2", amount=Decimal("20.00")),
        # b: week 1 only, and an invitation in week 3 that is the company's act, not b's
        _event("b", "2024-01-03T23:59:59"),
        _event("b", "2024-01-17T12:00:00", "feedback", kind="survey_invited"),
        # c: first seen in week 2 (an idea), first purchase in week 5, active in week 6
        _event("c", "2024-01-08T00:00:00", "feedback", kind="idea", text="dark mode"),
        _event("c", "2024-01-29T09:00:00", "purchase", order_id="o9", amount=Decimal("0.99")),
        _event("c", "2024-02-05T09:00:00"),  # the last activity: the horizon
    ]
    with migrated.sink() as sink:
        sink.store(SinkBatch(events=events))
        sink.store(SinkBatch(events=events[:2]))  # replayed purchase lines must not add revenue

    def lifecycle(period, start):
        return client.execute(
            f"SELECT {', '.join(LIFECYCLE)} FROM `{database}`.loyalty_lifecycle WHERE period = %(p)s AND period_start = %(s)s",
            {"p": period, "s": dt.date.fromisoformat(start)},
        )[0]

    # weeks start on Mondays: 01-01, 01-08, 01-15, 01-22, 01-29, 02-05
    assert lifecycle("week", "2024-01-01") == (2, 2, 0, 0, 0)  # a, b new
    assert lifecycle("week", "2024-01-08") == (2, 1, 1, 0, 1)  # c new, a returning, b dormant
    assert lifecycle("week", "2024-01-15") == (0, 0, 0, 0, 2)  # a, c dormant (b's invitation is not activity)
    assert lifecycle("week", "2024-01-22") == (0, 0, 0, 0, 0)
    assert lifecycle("week", "2024-01-29") == (2, 0, 0, 2, 0)  # a, c resurrecting
    assert lifecycle("week", "2024-02-05") == (1, 0, 1, 0, 1)  # c returning, a dormant
    assert lifecycle("month", "2024-02-01") == (2, 0, 2, 0, 1)  # a, c returning, b dormant
    assert client.execute(f"SELECT count() FROM `{database}`.loyalty_lifecycle WHERE period = 'week'") == [(6,)]

    cohorts = client.execute(
        f"SELECT cohort_start, periods_after, cohort_size, active_consumers, purchasers, revenue "
        f"FROM `{database}`.loyalty_cohorts WHERE period = 'week' AND cohort = 'first_purchase' "
        "ORDER BY cohort_start, periods_after"
    )
    assert [(str(s), k, n, a, p, r) for s, k, n, a, p, r in cohorts] == [
        ("2024-01-01", 0, 1, 1, 1, Decimal("15.50")),
        ("2024-01-01", 1, 1, 1, 0, Decimal("0.00")),
        ("2024-01-01", 2, 1, 0, 0, Decimal("0.00")),
        ("2024-01-01", 3, 1, 0, 0, Decimal("0.00")),
        ("2024-01-01", 4, 1, 1, 1, Decimal("20.00")),
        ("2024-01-01", 5, 1, 0, 0, Decimal("0.00")),
        ("2024-01-29", 0, 1, 1, 1, Decimal("0.99")),
        ("2024-01-29", 1, 1, 1, 0, Decimal("0.00")),
    ]
    seen = client.execute(
        f"SELECT cohort_start, cohort_size, groupArray(active_consumers) FROM "
        f"(SELECT * FROM `{database}`.loyalty_cohorts WHERE period = 'month' AND cohort = 'first_seen' "
        "ORDER BY periods_after) GROUP BY cohort_start, cohort_size ORDER BY cohort_start"
    )
    assert [(str(s), n, a) for s, n, a in seen] == [("2024-01-01", 3, [3, 2])]

    # a: second order o2 placed 2024-02-01T10:00, 30 days 0 h after o1 (10:00 on 01-02): a repeat within 30 days;
    # a is matured for 30 days (horizon 02-05 09:00 >= 02-01 10:00), not for 90; c is not matured for 30 days
    repeat = client.execute(
        f"SELECT cohort_start, {', '.join(REPEAT)} FROM `{database}`.loyalty_repeat_purchase WHERE period = 'month'"
    )
    assert repeat == [(dt.date(2024, 1, 1), 2, 1, 1, 1.0, 0, 0, None)]

    # January from 01-02 (the first stored day): 30 days; consumer-days a 2 (01-02, 01-09), b 1, c 2 (01-08, 01-29)
    sticky = client.execute(
        f"SELECT days, consumer_days, active_consumers, stickiness FROM `{database}`.loyalty_stickiness "
        "WHERE period = 'month' AND period_start = '2024-01-01'"
    )
    assert sticky == [(30, 5, 3, 5 / (30 * 3))]
    rolling = client.execute(
        f"SELECT day, dau, mau, window_complete FROM `{database}`.loyalty_stickiness_rolling WHERE dau > 0 ORDER BY day"
    )
    assert [(str(d), dau, mau, w) for d, dau, mau, w in rolling] == [
        ("2024-01-02", 1, 1, 0), ("2024-01-03", 1, 2, 0), ("2024-01-08", 1, 3, 0), ("2024-01-09", 1, 3, 0),
        ("2024-01-29", 1, 3, 0), ("2024-02-01", 1, 3, 1), ("2024-02-05", 1, 2, 1),
    ]  # fmt: skip


@pytest.mark.integration
def test_documented_loyalty_queries_run(migrated, history):
    """Every SQL example of docs/loyalty.md runs on the real server and returns rows for the generated months."""
    client, database = migrated.client, migrated.database
    store_with_crash_replays(migrated, history[1])
    queries = loyalty_queries()
    assert len(queries) >= 6
    for query in queries:
        assert client.execute(query.replace("copulse.", f"`{database}`.")), f"docs/loyalty.md example returned nothing:\n{query}"


def loyalty_queries() -> list[str]:
    """The SQL examples of docs/loyalty.md."""
    return [query for where, query in documented_queries() if where == "docs/loyalty.md"]
