"""The read side's history figures (copulse/history.py, behind ``copulse kpis --view``, the feedback-loop panel of
``copulse live`` and the feedback-loop and loyalty sections of ``copulse report``) against the independent oracles
(tests/feedback_loop_oracle.py, tests/loyalty_oracle.py): ten weeks of generated events of every type, with the
generator's enterprise answering them, stored through the real sink with crash replays; every figure read through
the read-only user is compared exactly, for every period kind in a range and for all weeks without one. Runs on
ClickHouse 18.16 and on a current release (chDB; the ``migrated`` fixture of tests/test_views.py). ``copulse kpis --view`` end to end
(table, CSV, JSON, errors) runs on the hand-made history of tests/feedback_loop_cases.py."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from urllib.parse import quote

import pytest
from clickhouse_driver import Client
from pydantic import SecretStr
from rich.console import Console

from copulse import report_history
from copulse.cli import main
from copulse.history import (
    FEEDBACK_LOOP,
    IDEA_FUNNEL,
    IDEAS_SHIPPED,
    LIFECYCLE,
    PERIODS,
    RETENTION,
    HistoryRange,
    idea_summary,
    loop_summary,
    period_start,
    view_rows,
)
from copulse.live import _ago, _feedback_loop, fetch_feedback_loop
from copulse.readmodel import reader_client
from copulse.settings import Settings, get_settings
from sinks.migrations import migrate
from sinks.clickhouse import ClickHouseSink
from streams.batch import SinkBatch
from tests.conftest import unique_name
from tests.feedback_loop_cases import AS_OF, hand_made_history
from tests.feedback_loop_oracle import FeedbackLoopOracle, exact_quantile, seconds
from tests.loyalty_oracle import LoyaltyOracle
from tests.test_loyalty import generated_history, store_with_crash_replays
from tests.test_views import LEGACY, migrated  # noqa: F401 (migrated: a fixture)

UTC = dt.timezone.utc
START = dt.datetime(2024, 3, 6, 9, 30, tzinfo=UTC)  # a Wednesday
SPAN_DAYS = 70
MESSAGES = 6000
#: a range inside the span that starts and ends inside a week and a month (partial periods at both ends)
WITHIN = HistoryRange(dt.datetime(2024, 3, 20, 15, tzinfo=UTC), dt.datetime(2024, 5, 2, 12, tzinfo=UTC))
EVERYTHING = HistoryRange()


@pytest.fixture(scope="module")
def history():
    """Every event type of the generator (valid, late, duplicates; invalid ones dead-lettered)."""
    return generated_history(count=MESSAGES, seed=41, start=START, span_days=SPAN_DAYS, enterprise_time_scale=0.3)


# ============================================================================ what the oracles say
def _in_periods(start: dt.date, period: str, within: HistoryRange) -> bool:
    """The read side's rule: periods from the one holding ``since`` to the last one starting before ``until``."""
    if within.since is not None and start < period_start(period, within.since.date()):
        return False
    return within.until is None or dt.datetime.combine(start, dt.time(), UTC) < within.until


def _in_time(ms: int, within: HistoryRange) -> bool:
    moment = dt.datetime.fromtimestamp(ms / 1000, UTC)
    return (within.since is None or moment >= within.since) and (within.until is None or moment < within.until)


def expected_period_rows(oracle_rows: dict, period: str, within: HistoryRange) -> dict:
    return {start: row for (kind, start), row in oracle_rows.items()
            if kind == period and _in_periods(start, period, within)}


def expected_retention(loyalty: LoyaltyOracle, period: str, cohort: str, within: HistoryRange) -> dict:
    return {(start, after): row for (kind, kind_cohort, start, after), row in loyalty.cohorts().items()
            if kind == period and kind_cohort == cohort and _in_periods(start, period, within)
            and _in_periods(row["period_start"], period, HistoryRange(None, within.until))}  # fmt: skip


def expected_loop_summary(oracle: FeedbackLoopOracle, within: HistoryRange) -> dict:
    items = [i for i in oracle.feedback_items().values() if _in_time(i["occurred_ms"], within)]
    answered = [i for i in items if i["answered"]]
    detractors = [i for i in items if i["detractor"]]
    bugs = [i for i in items if i["bug_report"]]
    matured = [i for i in detractors if i["matured_48h"]]
    backlog = [i for i in items if not i["answered"]]
    delays, ages = [i["delay_ms"] for i in answered], [i["age_ms"] for i in backlog]
    return {
        "answerable": len(items), "answered": len(answered), "detractors": len(detractors),
        "detractors_answered": sum(i["answered"] for i in detractors), "bug_reports": len(bugs),
        "bug_reports_answered": sum(i["answered"] for i in bugs),
        "median_response_seconds": seconds(exact_quantile(delays, 0.5)) if delays else None,
        "p90_response_seconds": seconds(exact_quantile(delays, 0.9)) if delays else None,
        "detractors_matured_48h": len(matured),
        "detractors_followed_up_48h": sum(i["followed_up_48h"] for i in matured),
        "backlog": len(backlog), "backlog_detractors": sum(i["detractor"] for i in backlog),
        "backlog_median_age_seconds": seconds(exact_quantile(ages, 0.5)) if ages else None,
        "backlog_oldest_age_seconds": seconds(max(ages)) if ages else None,
        "as_of": dt.datetime.fromtimestamp(oracle.as_of_ms // 1000, UTC),
    }  # fmt: skip


def expected_idea_summary(oracle: FeedbackLoopOracle, within: HistoryRange) -> dict:
    ideas = [i for i in oracle.ideas().values() if _in_time(i["submitted_ms"], within)]
    return {"submitted": len(ideas), "reviewed": sum(i["reviewed"] for i in ideas),
            "shipped": sum(i["shipped_ms"] is not None for i in ideas),
            "declined": sum(i["current_status"] == "declined" for i in ideas),
            "waiting": sum(not i["reviewed"] for i in ideas)}  # fmt: skip


def assert_rows_equal(got: dict, want: dict, what: str) -> None:
    assert set(got) == set(want), f"{what}: only read {sorted(set(got) - set(want))[:4]}, " \
                                  f"only in the oracle {sorted(set(want) - set(got))[:4]}"
    for key, expected in want.items():
        for column, value in expected.items():
            assert got[key][column] == value, f"{what} {key} {column}: read {got[key][column]!r}, oracle {value!r}"


# ============================================================================ the test
@pytest.mark.integration
def test_history_figures_equal_the_oracles(migrated, history):
    _, events, described = history
    store_with_crash_replays(migrated, events)
    reader = reader_client(migrated.settings) if migrated.release == LEGACY else migrated.client  # read-only user
    database = migrated.database
    loop, loyalty = FeedbackLoopOracle(described), LoyaltyOracle(described)
    try:
        for period, within in [(period, WITHIN) for period in PERIODS] + [("week", EVERYTHING)]:
            def read(view, **options):
                return view_rows(reader, database, view, period=period, within=within, **options)

            for view, want in ((FEEDBACK_LOOP, loop.feedback_loop()), (IDEA_FUNNEL, loop.idea_funnel()),
                               (LIFECYCLE, loyalty.lifecycle())):
                rows = read(view)
                assert [r["period_start"] for r in rows] == sorted(r["period_start"] for r in rows)
                got = {r.pop("period_start"): r for r in rows}
                assert_rows_equal(got, expected_period_rows(want, period, within), f"{view.name} {period}")
            for cohort in ("first_seen", "first_purchase"):
                got = {(r["cohort_start"], r["periods_after"]): r for r in read(RETENTION, cohort=cohort)}
                assert_rows_equal(got, expected_retention(loyalty, period, cohort, within), f"retention {period}")
        # the range is not trivial: partial periods at both ends, every figure present
        weeks = view_rows(reader, database, FEEDBACK_LOOP, period="week", within=WITHIN)
        assert len(weeks) >= 6 and weeks[0]["period_start"] < WITHIN.since.date()
        assert sum(r["answered_feedback"] for r in weeks) > 50 and sum(r["backlog"] for r in weeks) > 10

        for within in (EVERYTHING, WITHIN):
            shipped = view_rows(reader, database, IDEAS_SHIPPED, within=within)
            assert [r["shipped_at"] for r in shipped] == sorted((r["shipped_at"] for r in shipped), reverse=True)
            want = {k: v for k, v in loop.ideas_shipped().items()
                    if within.since is None or within.since <= v["shipped_at"] < within.until}
            assert_rows_equal({r["idea_id"]: r for r in shipped}, want, "ideas-shipped")
            summary = loop_summary(reader, database, within)
            assert vars(summary) == expected_loop_summary(loop, within)
            assert vars(idea_summary(reader, database, within)) == expected_idea_summary(loop, within)
        assert shipped and summary.detractors_followed_up_48h and summary.backlog_detractors

        # copulse live: the panel over all history, as of the newest stored event
        panel = fetch_feedback_loop(reader, database)
        assert vars(panel.loop) == expected_loop_summary(loop, EVERYTHING)
        text = _text(_feedback_loop(panel))
        whole = panel.loop
        assert f"response rate {whole.answered / whole.answerable * 100:.1f} %" in text
        assert f"({whole.answered:,} of {whole.answerable:,})" in text
        assert f"first response median {_ago(whole.median_response_seconds)}, " \
               f"p90 {_ago(whole.p90_response_seconds)}" in text
        assert f"unanswered detractors {whole.backlog_detractors:,}" in text
        assert f"ideas shipped {panel.ideas.shipped:,} of {panel.ideas.submitted:,} (" in text
        assert f"as of {whole.as_of:%Y-%m-%d %H:%M:%S} UTC" in text

        # copulse report: the sections show the range's figures (charts are drawn in tests/test_report.py)
        data = report_history.fetch_history(reader, database, "week", WITHIN.since, WITHIN.until)
        assert data.loop == loop_summary(reader, database, WITHIN) and data.funnel and data.retention
        page = report_history.render_html(data, dict.fromkeys(report_history.chart_makers(data), "<svg></svg>"), 5)
        ranged = data.loop
        assert f"{ranged.answered:,} of {ranged.answerable:,} answered" in page
        assert f">{ranged.answered / ranged.answerable * 100:.1f} %<" in page
        assert f">{report_history.duration(ranged.median_response_seconds)}<" in page
        assert f"of {data.ideas.submitted:,} submitted" in page
        assert page.count("<svg") == 4 and "You said, we did" in page and ">Loyalty</h2>" in page
        newest = data.shipped[0]
        assert f"<td class=\"l\">{newest['idea_id']}</td>" in page
        starts, matrix, sizes = report_history.retention_matrix(data)
        assert all(row[0] == 1.0 for row in matrix) and starts == sorted(starts) and all(sizes)
    finally:
        if reader is not migrated.client:
            reader.disconnect()


def _text(renderable) -> str:
    console = Console(record=True, width=200, color_system=None)
    console.print(renderable)
    return console.export_text()


@pytest.mark.integration
def test_history_figures_are_empty_without_data(migrated):
    reader, database = migrated.client, migrated.database
    for view in (FEEDBACK_LOOP, IDEA_FUNNEL, IDEAS_SHIPPED, LIFECYCLE, RETENTION):
        assert view_rows(reader, database, view) == []
    summary = loop_summary(reader, database)
    assert summary.as_of is None and summary.answerable == 0 and summary.response_rate is None
    assert summary.median_response_seconds is None and summary.backlog_oldest_age_seconds is None
    assert vars(idea_summary(reader, database)) == dict(submitted=0, reviewed=0, shipped=0, declined=0, waiting=0)
    assert "no feedback stored yet" in _text(_feedback_loop(fetch_feedback_loop(reader, database)))
    data = report_history.fetch_history(reader, database, "day", WITHIN.since, WITHIN.until)
    assert report_history.chart_makers(data) == {}
    page = report_history.render_html(data, {}, 5)
    for note in ("nothing stored yet", "No idea submitted in the range.", "No answerable feedback in the range.",
                 "No idea shipped in the range.", "No consumer activity in the range."):
        assert note in page


# ============================================================================ copulse kpis --view
@pytest.fixture
def cli_history(clickhouse_settings, monkeypatch):
    """The hand-made history stored in a fresh database on the local server, COPULSE_* pointing at it."""
    ch = clickhouse_settings
    database = unique_name("test_history")
    url = f"clickhouse://{quote(ch['user'], safe='')}@{ch['host']}:{ch['port']}/{database}"
    settings = Settings(clickhouse_url=url, clickhouse_password=SecretStr(ch["password"]))
    migrate(settings)
    with ClickHouseSink(settings) as sink:
        sink.store(SinkBatch(events=hand_made_history()))
    monkeypatch.setenv("COPULSE_CLICKHOUSE_URL", url)
    monkeypatch.setenv("COPULSE_CLICKHOUSE_PASSWORD", ch["password"])
    get_settings.cache_clear()
    yield database
    get_settings.cache_clear()
    admin = Client(**ch)
    admin.execute(f"DROP DATABASE IF EXISTS `{database}`")
    admin.disconnect()


def _described() -> list[dict]:
    return [raw.event.record | {"type": raw.event.type, "event_id": raw.event.event_id,
                                "consumer_id": raw.event.consumer_id, "occurred_ms": raw.event.occurred_ms}
            for raw in hand_made_history()]  # fmt: skip


@pytest.mark.integration
def test_kpis_view_csv_json_and_table(cli_history, capsys):
    oracle = FeedbackLoopOracle(_described())
    assert main(["kpis", "--view", "feedback-loop", "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    want = expected_period_rows(oracle.feedback_loop(), "week", EVERYTHING)
    assert [r["period_start"] for r in rows] == ["2024-03-04", "2024-03-11"]
    for row in rows:
        expected = want[dt.date.fromisoformat(row["period_start"])]
        for column, value in expected.items():
            text = row[column]
            if value is None:
                assert text == "", column
            elif isinstance(value, dt.datetime):
                assert text == value.strftime("%Y-%m-%dT%H:%M:%SZ")
            else:
                assert type(value)(text) == value, column  # floats printed exactly (repr)
    assert rows[0]["response_rate"] == repr(3 / 7) and rows[0]["as_of"] == "2024-03-14T12:00:00Z"

    assert main(["kpis", "--view", "ideas-shipped", "--json"]) == 0
    shipped = json.loads(capsys.readouterr().out)
    assert shipped["view"] == "ideas-shipped" and shipped["period"] is None
    assert [(r["idea_id"], r["shipped_at"], r["supporters"]) for r in shipped["rows"]] == [
        ("i4", "2024-03-13T10:00:00Z", 1), ("i2", "2024-03-12T11:00:00Z", 3)]  # newest first  # fmt: skip

    assert main(["kpis", "--view", "idea-funnel", "--period", "month", "--json"]) == 0
    funnel = json.loads(capsys.readouterr().out)["rows"]
    assert funnel == [{"period_start": "2024-03-01", **{k: v for k, v in oracle.idea_funnel()[
        ("month", dt.date(2024, 3, 1))].items()}}]  # fmt: skip

    assert main(["kpis", "--view", "lifecycle", "--period", "day", "--last", "2"]) == 0
    table = capsys.readouterr().out
    days = sorted(start for kind, start in LoyaltyOracle(_described()).lifecycle() if kind == "day")
    assert "lifecycle per day" in table and f"{days[-1]}" in table and f"{days[-2]}" in table
    assert f"{days[-3]}" not in table
    assert main(["kpis", "--view", "retention", "--cohort", "first_purchase", "--last", "0"]) == 3
    assert "no rows of retention (loyalty_cohorts) per week" in capsys.readouterr().err  # nobody purchased

    assert main(["kpis", "--view", "feedback-loop", "--from", "2024-03-11T00:00Z", "--to", "2024-03-18T00:00Z",
                 "--csv"]) == 0
    assert [r["period_start"] for r in csv.DictReader(io.StringIO(capsys.readouterr().out))] == ["2024-03-11"]
    assert main(["kpis", "--view", "idea-funnel", "--from", "2030-01-01T00:00Z"]) == 3
    err = capsys.readouterr().err
    assert "no rows of idea-funnel (idea_funnel) per week between 2030-01-01T00:00:00Z and now" in err
    assert "widen --from/--to" in err


@pytest.mark.parametrize("arguments, message", [
    (["--view", "lifecycle", "--granularity", "1m"], "--granularity choose a KPI window of the scorecard; "
                                                     "--view lifecycle is per period"),
    (["--csv"], "--csv only apply to --view"),
    (["--from", "2024-03-01T00:00Z"], "--from only apply to --view"),
    (["--view", "idea-funnel", "--csv", "--json"], "--csv and --json: pick one"),
    (["--view", "idea-funnel", "--last", "-1"], "--last must be 0 (all) or more"),
    (["--view", "idea-funnel", "--from", "2024-03-02T00:00Z", "--to", "2024-03-01T00:00Z"], "must be after --from"),
])  # fmt: skip
def test_kpis_view_bad_options(arguments, message, capsys):
    assert main(["kpis", *arguments]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.integration
def test_kpis_view_on_a_database_not_migrated(clickhouse_settings, monkeypatch, capsys):
    ch = clickhouse_settings
    monkeypatch.setenv("COPULSE_CLICKHOUSE_URL",
                       f"clickhouse://{quote(ch['user'], safe='')}@{ch['host']}:{ch['port']}/copulse_nowhere")
    monkeypatch.setenv("COPULSE_CLICKHOUSE_PASSWORD", ch["password"])
    get_settings.cache_clear()
    try:
        assert main(["kpis", "--view", "feedback-loop"]) == 1
    finally:
        get_settings.cache_clear()
    assert "run `copulse db migrate`" in capsys.readouterr().err


def test_period_start_and_auto_period():
    assert period_start("week", dt.date(2024, 3, 10)) == dt.date(2024, 3, 4)
    assert period_start("month", dt.date(2024, 3, 10)) == dt.date(2024, 3, 1)
    assert AS_OF.date() == period_start("day", AS_OF.date())
    from copulse.history import auto_period

    day = dt.timedelta(days=1)
    assert [auto_period(START, START + n * day) for n in (1, 14, 15, 183, 184)] == ["day", "day", "week", "week",
                                                                                    "month"]
