"""The history-based figures of the read side: what ClickHouse's views compute from the stored raw events over
days to months (the feedback loop, the idea funnel, "you said, we did", the lifecycle and retention cohorts of
schemas/clickhouse/0008_feedback_loop.sql and 0006_loyalty.sql; docs/feedback-loop.md and docs/loyalty.md define
every column). ``copulse kpis --view``, ``copulse live`` and ``copulse report`` read them through this module only,
with parameterised queries that run as the read-only user on ClickHouse 18.16 and on current releases.

Ranges: a per-period view keeps the periods (cohorts) whose first day lies in the period holding ``since`` or
later and before ``until``; ``ideas_shipped`` keeps the ideas shipped in [since, until); the summaries keep the
feedback and ideas given in [since, until) (event time). Figures that depend on "now" are as of the newest
stored feedback or enterprise event (``as_of``), never the wall clock.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

__all__ = ["COHORTS", "FEEDBACK_LOOP", "IDEAS_SHIPPED", "IDEA_FUNNEL", "LIFECYCLE", "PERIODS", "RETENTION", "VIEWS",
           "HistoryRange", "HistoryView", "IdeaSummary", "LoopSummary", "auto_period", "idea_summary", "loop_summary",
           "period_start", "view_rows"]

UTC = dt.UTC
PERIODS = ("day", "week", "month")
COHORTS = ("first_seen", "first_purchase")
CENT = Decimal("0.01")


@dataclass(frozen=True)
class HistoryView:
    """One view as the read side shows it: its ``copulse kpis --view`` name, the columns shown (in order) and the
    column a range applies to."""

    name: str
    view: str
    columns: tuple[str, ...]
    range_column: str
    order: str
    per_period: bool = True
    per_cohort: bool = False
    description: str = ""


FEEDBACK_LOOP = HistoryView(
    "feedback-loop", "feedback_loop",
    ("period_start", "answerable_feedback", "answered_feedback", "response_rate", "detractor_feedback",
     "detractors_answered", "detractor_response_rate", "bug_reports", "bug_reports_answered",
     "bug_report_response_rate", "median_response_seconds", "p90_response_seconds", "detractors_matured_48h",
     "detractors_followed_up_48h", "detractor_follow_up_rate_48h", "detractors_maturing_48h", "backlog",
     "backlog_median_age_seconds", "backlog_oldest_age_seconds", "answered_before_feedback", "as_of"),
    "period_start", "period_start",
    description="per period of the feedback: response rates, time to first response, 48 h follow-up, backlog",
)  # fmt: skip
IDEA_FUNNEL = HistoryView(
    "idea-funnel", "idea_funnel",
    ("period_start", "submitted", "reviewed", "planned", "in_progress", "shipped", "declined", "waiting",
     "adoption_rate", "median_seconds_to_ship", "p90_seconds_to_ship", "votes", "voters", "voters_per_idea",
     "status_before_submission"),
    "period_start", "period_start",
    description="per submission period (cohort): submitted -> reviewed -> planned -> in progress -> shipped, declined",
)  # fmt: skip
IDEAS_SHIPPED = HistoryView(
    "ideas-shipped", "ideas_shipped",
    ("shipped_at", "idea_id", "submitter", "product_id", "category", "text", "submitted_at", "seconds_to_ship",
     "current_status", "votes", "voters", "supporters"),
    "shipped_at", "shipped_at DESC, idea_id", per_period=False,
    description="you said, we did: every shipped idea with the consumers who proposed or voted for it",
)  # fmt: skip
LIFECYCLE = HistoryView(
    "lifecycle", "loyalty_lifecycle",
    ("period_start", "active_consumers", "new_consumers", "returning_consumers", "resurrecting_consumers",
     "dormant_consumers"),
    "period_start", "period_start",
    description="per period: active consumers = new + returning + resurrecting; dormant = active before, not now",
)  # fmt: skip
RETENTION = HistoryView(
    "retention", "loyalty_cohorts",
    ("cohort_start", "periods_after", "period_start", "cohort_size", "active_consumers", "retention_rate",
     "purchasers", "revenue"),
    "cohort_start", "cohort_start, periods_after", per_cohort=True,
    description="per cohort (first-seen or first-purchase period) and period after it: retention, purchasers, revenue",
)  # fmt: skip
VIEWS: dict[str, HistoryView] = {v.name: v for v in (FEEDBACK_LOOP, IDEA_FUNNEL, IDEAS_SHIPPED, LIFECYCLE, RETENTION)}


@dataclass(frozen=True)
class HistoryRange:
    """[since, until) in UTC; either end open when None."""

    since: dt.datetime | None = None
    until: dt.datetime | None = None


def period_start(period: str, day: dt.date) -> dt.date:
    """The first day of the period holding ``day`` (ISO week from Monday; calendar month), as the views' calendar."""
    if period == "week":
        return day - dt.timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    return day


def auto_period(since: dt.datetime, until: dt.datetime) -> str:
    """Days for a range up to 2 weeks, weeks up to 6 months, months beyond."""
    days = (until - since).total_seconds() / 86400
    return "day" if days <= 14 else "week" if days <= 183 else "month"


def _last_day(until: dt.datetime) -> dt.date:
    """The last day that starts before ``until``."""
    return (until - dt.timedelta(microseconds=1)).date()


def _range_filter(view: HistoryView, period: str | None, within: HistoryRange) -> tuple[list[str], dict]:
    conditions, params = [], {}
    if view.per_period:
        if within.since is not None:
            conditions.append(f"{view.range_column} >= %(first)s")
            params["first"] = period_start(period, within.since.date())
        if within.until is not None:
            conditions.append(f"{view.range_column} <= %(last)s")
            params["last"] = _last_day(within.until)
            if view.per_cohort:  # the cells of the cohorts up to the range's end
                conditions.append("period_start <= %(last)s")
    else:
        if within.since is not None:
            conditions.append(f"{view.range_column} >= toDateTime(%(lo)s, 'UTC')")
            params["lo"] = int(within.since.timestamp())
        if within.until is not None:
            conditions.append(f"{view.range_column} < toDateTime(%(hi)s, 'UTC')")
            params["hi"] = int(within.until.timestamp())
    return conditions, params


def view_rows(client, database: str, view: HistoryView, *, period: str = "week", cohort: str = "first_seen",
              within: HistoryRange = HistoryRange()) -> list[dict]:
    """The view's rows (dicts keyed by ``view.columns``) for one period kind (and cohort kind), in ``within``."""
    if period not in PERIODS:
        raise ValueError(f"unknown period {period!r}: use one of {', '.join(PERIODS)}")
    if cohort not in COHORTS:
        raise ValueError(f"unknown cohort {cohort!r}: use one of {', '.join(COHORTS)}")
    conditions, params = _range_filter(view, period, within)
    if view.per_period:
        conditions.insert(0, "period = %(period)s")
        params["period"] = period
    if view.per_cohort:
        conditions.insert(1, "cohort = %(cohort)s")
        params["cohort"] = cohort
    where = f"WHERE {' AND '.join(conditions)} " if conditions else ""
    rows = client.execute(
        f"SELECT {', '.join(view.columns)} FROM `{database}`.{view.view} {where}ORDER BY {view.order}", params
    )
    out = [dict(zip(view.columns, row)) for row in rows]
    for row in out:
        for column, value in row.items():
            if isinstance(value, dt.datetime):  # DateTime('UTC'): aware UTC whichever client read it
                row[column] = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
            elif isinstance(value, Decimal):  # the driver drops trailing zeros: money with its 2 places
                row[column] = value.quantize(CENT)
    return out


# ----------------------------------------------------------------------------------------------- summaries
def _rate(numerator: str, denominator: str) -> property:
    """A read-only attribute: numerator / denominator of two count fields, None when the denominator is 0."""

    def rate(self) -> float | None:
        bottom = getattr(self, denominator)
        return None if bottom == 0 else getattr(self, numerator) / bottom

    return property(rate, doc=f"{numerator} / {denominator} (None when {denominator} is 0)")


@dataclass(frozen=True)
class LoopSummary:
    """The feedback loop of the answerable feedback given in a range (all of it without one), as of ``as_of``.
    Rates are None when their denominator is 0; durations are seconds."""

    answerable: int
    answered: int
    detractors: int
    detractors_answered: int
    bug_reports: int
    bug_reports_answered: int
    median_response_seconds: float | None
    p90_response_seconds: float | None
    detractors_matured_48h: int
    detractors_followed_up_48h: int
    backlog: int
    backlog_detractors: int
    backlog_median_age_seconds: float | None
    backlog_oldest_age_seconds: float | None
    as_of: dt.datetime | None  # None: nothing stored yet

    response_rate = _rate("answered", "answerable")
    detractor_response_rate = _rate("detractors_answered", "detractors")
    bug_report_response_rate = _rate("bug_reports_answered", "bug_reports")
    detractor_follow_up_rate_48h = _rate("detractors_followed_up_48h", "detractors_matured_48h")


@dataclass(frozen=True)
class IdeaSummary:
    """The ideas submitted in a range (all of them without one) and where they stand as of the newest event."""

    submitted: int
    reviewed: int
    shipped: int
    declined: int
    waiting: int

    adoption_rate = _rate("shipped", "submitted")


def _event_time_filter(column: str, within: HistoryRange) -> tuple[str, dict]:
    conditions, params = [], {}
    if within.since is not None:
        conditions.append(f"{column} >= %(lo_ms)s")
        params["lo_ms"] = int(within.since.timestamp() * 1000)
    if within.until is not None:
        conditions.append(f"{column} < %(hi_ms)s")
        params["hi_ms"] = int(within.until.timestamp() * 1000)
    return (f"WHERE {' AND '.join(conditions)}" if conditions else ""), params


def loop_summary(client, database: str, within: HistoryRange = HistoryRange()) -> LoopSummary:
    """The feedback loop pooled over the feedback given in ``within`` (exact: one pass over the answerable
    feedback, the medians over its own delays, with the views' definitions)."""
    where, params = _event_time_filter("occurred_ms", within)
    row = client.execute(
        "SELECT count() AS answerable, sum(is_answered) AS answered, sum(is_detractor) AS detractors, "
        "sum(is_detractor * is_answered), sum(is_bug_report), sum(is_bug_report * is_answered), "
        "if(answered = 0, NULL, quantileExactIf(0.5)(response_delay_ms, is_answered = 1) / 1000), "
        "if(answered = 0, NULL, quantileExactIf(0.9)(response_delay_ms, is_answered = 1) / 1000), "
        "sum(is_detractor * is_matured_48h), sum(is_detractor * is_matured_48h * is_followed_up_48h), "
        "sum(in_backlog) AS backlog, sum(in_backlog * is_detractor), "
        "if(backlog = 0, NULL, quantileExactIf(0.5)(age_ms, in_backlog = 1) / 1000), "
        "if(backlog = 0, NULL, maxIf(age_ms, in_backlog = 1) / 1000), max(as_of_ms) "
        f"FROM `{database}`.feedback_loop_feedback {where}",
        params,
    )[0]
    counts = [int(v) for v in row[:6]]
    as_of = _as_of(client, database) if counts[0] == 0 else dt.datetime.fromtimestamp(row[14] // 1000, UTC)
    return LoopSummary(*counts, row[6], row[7], int(row[8]), int(row[9]), int(row[10]), int(row[11]), row[12],
                       row[13], as_of)


def _as_of(client, database: str) -> dt.datetime | None:
    rows = client.execute(f"SELECT as_of_ms FROM `{database}`.feedback_loop_horizon")
    return dt.datetime.fromtimestamp(rows[0][0] // 1000, UTC) if rows else None


def idea_summary(client, database: str, within: HistoryRange = HistoryRange()) -> IdeaSummary:
    """The ideas submitted in ``within``: how many, reviewed (any status change), shipped, declined (current
    status), waiting (no status change yet)."""
    where, params = _event_time_filter("submitted_ms", within)
    row = client.execute(
        "SELECT count(), sum(status_changes > 0), sum(is_shipped), sum(current_status = 'declined'), "
        f"sum(status_changes = 0) FROM `{database}`.idea_funnel_ideas {where}",
        params,
    )[0]
    return IdeaSummary(*(int(v) for v in row))
