"""The feedback-loop gauges (copulse/feedback_metrics.py) against an independent oracle: weeks of generated feedback
with the generator's enterprise answering it, stored through the real sink (with crash replays: the same events
twice) into the real ClickHouse 18.16 and the current release (chDB; the ``migrated`` fixture of
tests/test_views.py); every figure the collector reads equals what tests/feedback_loop_oracle.py's feedback items
give, recomputed here plainly, and the scoring job exports exactly those figures on its registry."""

from __future__ import annotations

import datetime as dt

import pytest
from prometheus_client.core import CollectorRegistry

from copulse.feedback_metrics import BASELINE_MS, OPEN_HORIZON_MS, RECENT_MS, read_feedback_loop
from copulse.scorecard.job import VciJob
from streams.batch import SinkBatch
from tests.feedback_loop_cases import feedback_event, response_event
from tests.feedback_loop_oracle import FeedbackLoopOracle, exact_quantile
from tests.test_loyalty import generated_history, store_with_crash_replays
from tests.test_views import migrated  # noqa: F401 (a fixture)

UTC = dt.timezone.utc
START = dt.datetime(2024, 5, 6, 7, 15, tzinfo=UTC)
MESSAGES = 16000  # of every type; only feedback and responses are stored
SPAN_DAYS = 14
ENTERPRISE_SCALE = 0.5


@pytest.fixture(scope="module")
def history():
    return generated_history(count=MESSAGES, seed=33, start=START, span_days=SPAN_DAYS, types=("feedback", "response"),
                             enterprise_time_scale=ENTERPRISE_SCALE)  # fmt: skip


def expected_figures(described: list[dict]) -> dict:
    """The figures from the oracle's view of every answerable feedback, by the definitions of the module docstring."""
    oracle = FeedbackLoopOracle(described)
    as_of = oracle.as_of_ms
    answers = oracle.answers_of()
    items = oracle.feedback_items()
    first_answer = {event_id: min(answers[event_id]) for event_id, item in items.items() if item["answered"]}
    periods = {"recent": (as_of - RECENT_MS, as_of), "baseline": (as_of - RECENT_MS - BASELINE_MS, as_of - RECENT_MS)}
    times = {}
    for period, (after, until) in periods.items():
        delays = [items[e]["delay_ms"] for e, at in first_answer.items() if after < at <= until]
        times[period] = (len(delays), {q: exact_quantile(delays, q) / 1000 for q in (0.5, 0.9)} if delays else {})
    classes = {"all": lambda i: True, "detractor": lambda i: i["detractor"], "bug_report": lambda i: i["bug_report"]}
    backlog, recent, oldest = {}, {}, {}
    for cls, member in classes.items():
        open_ = [i for i in items.values() if not i["answered"] and member(i)]
        backlog[cls] = len(open_)
        recent[cls] = sum(1 for i in open_ if i["occurred_ms"] > as_of - OPEN_HORIZON_MS)
        if open_:
            oldest[cls] = max(i["age_ms"] for i in open_) / 1000
    return {"as_of_ms": as_of, "times": times, "backlog": backlog, "recent": recent, "oldest": oldest}


def actual_figures(figures) -> dict:
    return {"as_of_ms": figures.as_of_ms,
            "times": {p: (t.responses, t.seconds) for p, t in figures.response_times.items()},
            "backlog": figures.backlog, "recent": figures.backlog_recent, "oldest": figures.oldest_age_seconds}


@pytest.mark.integration
def test_feedback_loop_figures_equal_the_oracle_and_are_exported(migrated, history):
    client, database = migrated.client, migrated.database
    assert read_feedback_loop(client, database) is None  # nothing stored yet: no figure at all

    _, events, described = history
    store_with_crash_replays(migrated, events)
    expected = expected_figures(described)
    assert actual_figures(read_feedback_loop(client, database)) == expected

    # the generated weeks are not trivial: both periods have responses, every backlog class is open
    (recent, recent_q), (baseline, baseline_q) = expected["times"]["recent"], expected["times"]["baseline"]
    assert recent >= 20 and baseline >= 100 and recent_q[0.9] > recent_q[0.5] > 0
    assert 0 < expected["recent"]["detractor"] < expected["backlog"]["detractor"]
    assert expected["oldest"]["all"] > expected["oldest"]["bug_report"] > 0

    # the scoring job exports them on its registry (the worker's metrics endpoint), as of the stored event time
    registry = CollectorRegistry()
    job = VciJob(migrated.settings, registry=registry, client=migrated.writer)
    try:
        job.run_once(since=0, until=1)
    finally:
        job.close()
    value = registry.get_sample_value
    assert value("copulse_feedback_as_of_timestamp_seconds") == expected["as_of_ms"] / 1000
    for period, (count, quantiles) in expected["times"].items():
        assert value("copulse_feedback_responses", {"period": period}) == count
        for q, seconds in quantiles.items():
            assert value("copulse_feedback_response_seconds", {"period": period, "percentile": f"{q * 100:g}"}) == seconds
    for cls in ("all", "detractor", "bug_report"):
        assert value("copulse_feedback_backlog", {"class": cls}) == expected["backlog"][cls]
        assert value("copulse_feedback_backlog_recent", {"class": cls}) == expected["recent"][cls]
        assert value("copulse_feedback_backlog_oldest_age_seconds", {"class": cls}) == expected["oldest"][cls]


def boundary_history() -> list:
    """Events on the edges of the periods, as of 2024-03-14 12:00 (the survey invitation, the newest event)."""
    return [
        feedback_event("f1", "c1", "2024-03-10T00:00:00", "nps", 3),
        response_event("r1", "c1", "2024-03-13T12:00:00", "response", "f1"),  # exactly 24 h before as of: baseline
        response_event("r1b", "c1", "2024-03-14T00:00:00", "case_closed", "f1"),  # not the first answer
        feedback_event("f2", "c2", "2024-03-10T00:00:00", "rating", 5),
        response_event("r2", "c2", "2024-03-13T12:00:00.001", "response", "f2"),  # 1 ms later: recent
        feedback_event("f5", "c5", "2024-03-05T00:00:00", "rating", 4),
        response_event("r5", "c5", "2024-03-06T12:00:00", "response", "f5"),  # exactly 8 days before: in no period
        feedback_event("f6", "c6", "2024-03-05T00:00:00", "review", 4),
        response_event("r6", "c6", "2024-03-06T12:00:00.001", "response", "f6"),  # 1 ms later: baseline
        feedback_event("f3", "c3", "2024-03-06T12:00:00", "bug_report"),  # unanswered, 8 days old
        feedback_event("f7", "c7", "2024-03-07T12:00:00", "bug_report"),  # unanswered, exactly 7 days: not recent
        feedback_event("f4", "c4", "2024-03-13T00:00:00", "nps", 2),  # unanswered detractor, 1.5 days old
        feedback_event("v1", "c8", "2024-03-13T00:00:00", "vote", in_reply_to="f9"),  # not answerable
        feedback_event("s1", "c9", "2024-03-14T12:00:00", "survey_invited"),  # the as-of time
    ]


@pytest.mark.integration
def test_period_edges_by_hand_and_refresh_at_most_every_minute(migrated):
    """Figures worked out by hand on the edges: the recent period is (as of - 24 h, as of], the baseline
    (as of - 8 days, as of - 24 h], the recent backlog holds feedback younger than 7 days."""
    from copulse.scorecard import job as job_module

    events = boundary_history()
    migrated.store(SinkBatch(events=events), SinkBatch(events=events[::3]))  # replayed: nothing counts twice
    figures = read_feedback_loop(migrated.client, migrated.database)
    assert figures.as_of_ms == int(dt.datetime(2024, 3, 14, 12, tzinfo=UTC).timestamp() * 1000)
    assert actual_figures(figures)["times"] == {
        "recent": (1, {0.5: 302400.001, 0.9: 302400.001}),  # f2: 3.5 days and 1 ms
        # f6 129 600.001 s, f1 302 400 s: both quantiles are the element at position floor(q x 2) = 1
        "baseline": (2, {0.5: 302400.0, 0.9: 302400.0}),
    }
    assert figures.backlog == {"all": 3, "detractor": 1, "bug_report": 2}
    assert figures.backlog_recent == {"all": 1, "detractor": 1, "bug_report": 0}
    assert figures.oldest_age_seconds == {"all": 691200.0, "detractor": 129600.0, "bug_report": 691200.0}

    registry = CollectorRegistry()
    job = VciJob(migrated.settings, registry=registry, client=migrated.writer)
    try:
        job.run_once(since=0, until=1)
        assert registry.get_sample_value("copulse_feedback_backlog", {"class": "detractor"}) == 1
        migrated.store(SinkBatch(events=[feedback_event("f8", "c8", "2024-03-14T11:00:00", "nps", 0)]))
        job.run_once(since=0, until=1)  # within FEEDBACK_REFRESH_SECONDS: not read again
        assert registry.get_sample_value("copulse_feedback_backlog", {"class": "detractor"}) == 1
        job._feedback_read_at -= job_module.FEEDBACK_REFRESH_SECONDS
        job.run_once(since=0, until=1)
        assert registry.get_sample_value("copulse_feedback_backlog", {"class": "detractor"}) == 2
    finally:
        job.close()


def test_exposition_passes_promtool_check_metrics_and_is_empty_before_any_feedback():
    from prometheus_client import generate_latest

    from copulse.feedback_metrics import FeedbackLoopExporter, FeedbackLoopFigures, ResponseTimes
    from tests.test_metrics import promtool_check_metrics

    registry = CollectorRegistry()
    exporter = FeedbackLoopExporter(registry)
    assert b"copulse_feedback_backlog{" not in generate_latest(registry)  # nothing stored yet: no sample
    exporter.update(FeedbackLoopFigures(
        as_of_ms=1_716_121_702_006,
        response_times={"recent": ResponseTimes(3, {0.5: 60.5, 0.9: 7200.0}), "baseline": ResponseTimes(0, {})},
        backlog={"all": 5, "detractor": 2, "bug_report": 0}, backlog_recent={"all": 3, "detractor": 1, "bug_report": 0},
        oldest_age_seconds={"all": 86400.25, "detractor": 3600.0}))  # fmt: skip
    text = generate_latest(registry).decode()
    assert 'copulse_feedback_response_seconds{percentile="90",period="recent"} 7200.0' in text
    assert 'percentile="90",period="baseline"' not in text and 'copulse_feedback_responses{period="baseline"} 0.0' in text
    assert 'copulse_feedback_backlog_oldest_age_seconds{class="bug_report"}' not in text
    assert "copulse_feedback_as_of_timestamp_seconds 1.716121702006e+09" in text
    result = promtool_check_metrics(text)
    assert result.returncode == 0, result.stdout + result.stderr
