"""The feedback-loop and idea-funnel views (schemas/clickhouse/0008_feedback_loop.sql, docs/feedback-loop.md)
against an independent oracle (tests/feedback_loop_oracle.py): weeks of generated feedback with the generator's
enterprise answering it, stored through the real sink into the real ClickHouse with crash replays (the same
events twice); every figure of every view is compared exactly, before and after the raw tables merge the
duplicates away. A hand-made history (tests/feedback_loop_cases.py) checks the edge rules with figures worked out
by hand, and every documented query of docs/feedback-loop.md runs. Each test runs on ClickHouse 18.16 and on a
current release (chDB; the ``migrated`` fixture of tests/test_views.py)."""

from __future__ import annotations

import datetime as dt

import pytest

from streams.batch import SinkBatch
from tests.feedback_loop_cases import AS_OF, hand_made_history
from tests.feedback_loop_oracle import FeedbackLoopOracle
from tests.test_loyalty import assert_views_equal, generated_history, store_with_crash_replays
from tests.test_migrations import EXPECTED_OBJECTS
from tests.test_views import documented_queries, migrated  # noqa: F401 (migrated: a fixture)

UTC = dt.timezone.utc
START = dt.datetime(2024, 3, 6, 9, 30, tzinfo=UTC)  # a Wednesday: first week partial
MESSAGES = 30_000  # of every type; only feedback and responses are stored (~3500 rows)
SPAN_DAYS = 80
ENTERPRISE_SCALE = 0.3  # responses within hours, the idea funnel within weeks: most of it completes in the span

LOOP = (
    "answerable_feedback", "answered_feedback", "response_rate", "detractor_feedback", "detractors_answered",
    "detractor_response_rate", "bug_reports", "bug_reports_answered", "bug_report_response_rate",
    "median_response_seconds", "p90_response_seconds", "detractors_matured_48h", "detractors_followed_up_48h",
    "detractor_follow_up_rate_48h", "detractors_maturing_48h", "backlog", "backlog_median_age_seconds",
    "backlog_oldest_age_seconds", "answered_before_feedback", "as_of",
)  # fmt: skip
BACKLOG = ("as_of", "backlog", "backlog_detractors", "backlog_bug_reports", "median_age_seconds", "oldest_age_seconds")
FUNNEL = (
    "submitted", "reviewed", "planned", "in_progress", "shipped", "declined", "waiting", "adoption_rate",
    "median_seconds_to_ship", "p90_seconds_to_ship", "votes", "voters", "voters_per_idea", "status_before_submission",
)  # fmt: skip
SHIPPED = ("submitter", "shipped_at", "seconds_to_ship", "current_status", "votes", "voters", "supporters")
VIEWS = sorted(name for name in EXPECTED_OBJECTS if name.startswith(("feedback_loop", "idea")))


def utc(value):
    """DateTime values as aware UTC datetimes, whichever client read them."""
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value


# ============================================================================ reading the views
def keyed(client, database: str, view: str, key: tuple[str, ...], columns: tuple[str, ...]) -> dict:
    result = client.execute(f"SELECT {', '.join(key + columns)} FROM `{database}`.{view}")
    out = {}
    for row in result:
        k = row[: len(key)]
        assert k not in out, f"{view}: {k} twice"
        out[k[0] if len(key) == 1 else k] = {c: utc(v) for c, v in zip(columns, row[len(key) :])}
    return out


def actual_views(client, database: str) -> dict:
    backlog = client.execute(f"SELECT {', '.join(BACKLOG)} FROM `{database}`.feedback_loop_backlog")
    return {
        "feedback_loop": keyed(client, database, "feedback_loop", ("period", "period_start"), LOOP),
        "backlog": {(): {c: utc(v) for c, v in zip(BACKLOG, row)} for row in backlog},
        "unmatched": {
            k: v["responses"] for k, v in keyed(client, database, "feedback_loop_unmatched_responses",
                                                ("period", "period_start", "kind", "reason"), ("responses",)).items()
        },  # fmt: skip
        "idea_funnel": keyed(client, database, "idea_funnel", ("period", "period_start"), FUNNEL),
        "status_changes": keyed(client, database, "idea_status_changes", ("period", "period_start", "status"),
                                ("status_changes", "ideas")),
        "ideas_shipped": keyed(client, database, "ideas_shipped", ("idea_id",), SHIPPED),
    }  # fmt: skip


def expected_views(oracle: FeedbackLoopOracle) -> dict:
    return {
        "feedback_loop": oracle.feedback_loop(),
        "backlog": {(): oracle.backlog()} if oracle.backlog() else {},
        "unmatched": oracle.unmatched_responses(),
        "idea_funnel": oracle.idea_funnel(),
        "status_changes": oracle.idea_status_changes(),
        "ideas_shipped": oracle.ideas_shipped(),
    }


# ============================================================================ generated weeks
@pytest.fixture(scope="module")
def history():
    """Feedback and enterprise events of the generator (valid, late, duplicates; invalid ones dead-lettered)."""
    return generated_history(count=MESSAGES, seed=21, start=START, span_days=SPAN_DAYS, types=("feedback", "response"),
                             enterprise_time_scale=ENTERPRISE_SCALE)  # fmt: skip


@pytest.mark.integration
def test_feedback_loop_views_equal_the_oracle_before_and_after_merges(migrated, history):
    client, database = migrated.client, migrated.database
    _, events, described = history
    assert store_with_crash_replays(migrated, events) > 1000
    stored = client.execute(f"SELECT count(), uniqExact(event_id) FROM `{database}`.responses")[0]
    assert stored[0] > stored[1], "responses must hold duplicates for the test to mean anything"

    oracle = FeedbackLoopOracle(described)
    expected = expected_views(oracle)
    assert_views_equal(actual_views(client, database), expected)

    # the generated weeks are not trivial: answers, detractors followed up and not, a backlog, every funnel stage
    weeks = {k: v for k, v in expected["feedback_loop"].items() if k[0] == "week"}
    assert len(weeks) >= 10
    assert sum(v["answered_feedback"] for v in weeks.values()) > 300
    assert sum(v["detractors_followed_up_48h"] for v in weeks.values()) > 20
    assert sum(v["detractors_matured_48h"] - v["detractors_followed_up_48h"] for v in weeks.values()) > 5
    assert any(v["detractors_maturing_48h"] for v in weeks.values())
    assert expected["backlog"][()]["backlog"] > 100
    funnel = {k: v for k, v in expected["idea_funnel"].items() if k[0] == "month"}
    for column in ("reviewed", "planned", "in_progress", "shipped", "declined", "waiting", "voters"):
        assert sum(v[column] for v in funnel.values()) > 0, column
    assert expected["ideas_shipped"] and expected["status_changes"]

    # every unique response counts in a figure or in feedback_loop_unmatched_responses: none is silently dropped
    answers = client.execute(
        f"SELECT count() FROM `{database}`.feedback_loop_responses AS r ALL INNER JOIN "
        f"(SELECT event_id AS in_reply_to FROM `{database}`.feedback_loop_feedback) AS f USING in_reply_to "
        "WHERE kind != 'idea_status'"
    )[0][0]
    changes = sum(v["status_changes"] for (p, _, _), v in expected["status_changes"].items() if p == "day")
    unmatched = sum(n for (p, *_), n in expected["unmatched"].items() if p == "day")
    assert answers + changes + unmatched == len(oracle.responses)

    for table in ("feedback", "responses"):  # merged: the duplicates are gone, the figures stay the same
        client.execute(f"OPTIMIZE TABLE `{database}`.{table} FINAL")
    assert client.execute(f"SELECT count() - uniqExact(event_id) FROM `{database}`.responses") == [(0,)]
    assert_views_equal(actual_views(client, database), expected)


@pytest.mark.integration
def test_feedback_loop_views_are_empty_without_data(migrated):
    client, database = migrated.client, migrated.database
    for view in VIEWS:
        assert client.execute(f"SELECT count() FROM `{database}`.{view}") == [(0,)], view


# ============================================================================ hand-made edge rules
@pytest.mark.integration
def test_feedback_loop_edge_rules_on_a_hand_made_history(migrated):
    """Figures worked out by hand (tests/feedback_loop_cases.py says what each event is for), replayed once."""
    client, database = migrated.client, migrated.database
    events = hand_made_history()
    migrated.store(SinkBatch(events=events), SinkBatch(events=events[::2]))
    db = f"`{database}`"
    assert [utc(t) for (t,) in client.execute(f"SELECT as_of FROM {db}.feedback_loop_horizon")] == [AS_OF]

    def week(view, columns, start, extra=""):
        return client.execute(
            f"SELECT {columns} FROM {db}.{view} WHERE period = 'week' AND period_start = %(s)s {extra}",
            {"s": dt.date.fromisoformat(start)},
        )

    # week of 03-04: f1 f2 f3 f4 and the ideas i1 i2 i4 (an idea status change is no answer); answered f1, f2, f3
    assert week("feedback_loop", "answerable_feedback, answered_feedback, response_rate, detractor_feedback, "
                "detractors_answered, bug_reports, bug_reports_answered, bug_report_response_rate", "2024-03-04") == [
        (7, 3, 3 / 7, 2, 2, 1, 0, 0.0)]  # fmt: skip
    # delays 0 (f3, answered before it was given), 172 800 s (f1), 172 800.001 s (f2): median = middle, p90 = last
    assert week("feedback_loop", "median_response_seconds, p90_response_seconds, answered_before_feedback",
                "2024-03-04") == [(172800.0, 172800.001, 1)]  # fmt: skip
    # f1 answered exactly 48 h after: followed up; f2 48 h + 1 ms after: not
    assert week("feedback_loop", "detractors_matured_48h, detractors_followed_up_48h, detractor_follow_up_rate_48h, "
                "detractors_maturing_48h", "2024-03-04") == [(2, 1, 0.5, 0)]  # fmt: skip
    # backlog f4, i1, i2, i4 aged 788 400, 874 800, 867 600, 698 400 s: median = the upper of the two middle ones
    assert week("feedback_loop", "backlog, backlog_median_age_seconds, backlog_oldest_age_seconds", "2024-03-04") == [
        (4, 867600.0, 874800.0)]  # fmt: skip
    # week of 03-11: f5 exactly 48 h old (matured), f6 1 ms younger (maturing), i3; nothing answered
    assert week("feedback_loop", "answerable_feedback, answered_feedback, median_response_seconds, detractor_feedback, "
                "detractor_response_rate, bug_report_response_rate, detractors_matured_48h, "
                "detractors_followed_up_48h, detractor_follow_up_rate_48h, detractors_maturing_48h, backlog, "
                "backlog_median_age_seconds, backlog_oldest_age_seconds", "2024-03-11") == [
        (3, 0, None, 2, 0.0, None, 1, 0, 0.0, 1, 3, 172800.0, 266400.0)]  # fmt: skip
    backlog = client.execute(f"SELECT {', '.join(BACKLOG)} FROM {db}.feedback_loop_backlog")
    assert [tuple(utc(v) for v in row) for row in backlog] == [(AS_OF, 7, 2, 1, 698400.0, 874800.0)]

    unmatched = client.execute(
        f"SELECT kind, reason, responses FROM {db}.feedback_loop_unmatched_responses WHERE period = 'month' "
        "ORDER BY kind, reason"
    )
    assert unmatched == [("idea_status", "not_an_idea", 1), ("idea_status", "unknown_feedback", 1),
                         ("response", "not_answerable", 1), ("response", "unknown_feedback", 1)]  # fmt: skip

    # i1 planned then declined, i2 shipped (shipped wins its tie with in_progress), i4 shipped and declined at the
    # same time (declined is current, shipped reached); ship delays 691 200 s (i2) and 604 800 s (i4)
    assert week("idea_funnel", ", ".join(FUNNEL), "2024-03-04") == [
        (3, 3, 3, 2, 2, 2, 0, 2 / 3, 691200.0, 691200.0, 4, 3, 1.0, 0)]  # fmt: skip
    assert week("idea_funnel", ", ".join(FUNNEL), "2024-03-11") == [
        (1, 0, 0, 0, 0, 0, 1, 0.0, None, None, 1, 1, 1.0, 0)]  # fmt: skip
    ideas = client.execute(
        f"SELECT idea_id, current_status, furthest_stage, votes, voters, supporters FROM {db}.idea_funnel_ideas "
        "ORDER BY idea_id"
    )
    assert ideas == [("i1", "declined", 2, 0, 0, 1), ("i2", "shipped", 4, 4, 3, 3), ("i3", "waiting", 0, 1, 1, 2),
                     ("i4", "declined", 4, 0, 0, 1)]  # fmt: skip
    shipped = client.execute(
        f"SELECT idea_id, submitter, submitted_at, shipped_at, seconds_to_ship, current_status, supporters "
        f"FROM {db}.ideas_shipped ORDER BY idea_id"
    )
    assert [tuple(utc(v) for v in row) for row in shipped] == [
        ("i2", "h", dt.datetime(2024, 3, 4, 11, tzinfo=UTC), dt.datetime(2024, 3, 12, 11, tzinfo=UTC), 691200.0,
         "shipped", 3),
        ("i4", "k", dt.datetime(2024, 3, 6, 10, tzinfo=UTC), dt.datetime(2024, 3, 13, 10, tzinfo=UTC), 604800.0,
         "declined", 1),
    ]  # fmt: skip
    changes = client.execute(
        f"SELECT period_start, status, status_changes, ideas FROM {db}.idea_status_changes WHERE period = 'week' "
        "ORDER BY period_start, status"
    )
    assert [(str(s), st, n, i) for s, st, n, i in changes] == [
        ("2024-03-04", "declined", 1, 1), ("2024-03-04", "in_progress", 1, 1), ("2024-03-04", "planned", 2, 2),
        ("2024-03-04", "under_review", 3, 3),
        ("2024-03-11", "declined", 1, 1), ("2024-03-11", "in_progress", 1, 1), ("2024-03-11", "shipped", 2, 2),
    ]  # fmt: skip

    # and the oracle agrees with the hand-made figures
    described = [raw.event.record | {"type": raw.event.type, "event_id": raw.event.event_id,
                                     "consumer_id": raw.event.consumer_id, "occurred_ms": raw.event.occurred_ms}
                 for raw in events]  # fmt: skip
    assert_views_equal(actual_views(client, database), expected_views(FeedbackLoopOracle(described)))


# ============================================================================ documented queries
@pytest.mark.integration
def test_documented_feedback_loop_queries_run(migrated, history):
    """Every SQL example of docs/feedback-loop.md runs and returns rows for the generated weeks."""
    client, database = migrated.client, migrated.database
    migrated.store(SinkBatch(events=history[1]), SinkBatch(events=hand_made_history()))  # unmatched responses too
    queries = [query for where, query in documented_queries() if where == "docs/feedback-loop.md"]
    assert len(queries) >= 6
    for query in queries:
        rows = client.execute(query.replace("copulse.", f"`{database}`."))
        assert rows, f"docs/feedback-loop.md example returned nothing:\n{query}"
