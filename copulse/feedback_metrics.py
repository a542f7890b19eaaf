"""The feedback-loop gauges: how fast the company answers its consumers and what is still unanswered, read from
the feedback-loop view ``feedback_loop_feedback`` (schemas/clickhouse/0008_feedback_loop.sql, docs/feedback-loop.md)
by the scoring job (copulse/scorecard/job.py) on every run and exported on the worker's metrics endpoint.

Every figure is as of the newest event time stored in ``feedback`` or ``responses`` (the view's ``as_of_ms``),
never the wall clock, so a replay or a backfill gives the figures of its own history.

* ``copulse_feedback_response_seconds{period, percentile}``: time to first response (exact percentiles 50 and 90,
  as the view computes ``response_delay_ms``; not labelled ``quantile``, the label of summaries) of the first
  responses *sent* in the period: ``recent`` = the last :data:`RECENT_MS` (24 h) before as of, ``baseline`` = the
  :data:`BASELINE_MS` (7 days) before that. The view's per-period figures count feedback by the time it was
  *given* (its cohort), which leaves the newest cohort with only its fast answers; by the time of the answer, a
  team that slows down shows at once. Absent while the period holds no response.
* ``copulse_feedback_responses{period}``: those first responses (the volume behind the quantiles).
* ``copulse_feedback_backlog{class}``: unanswered answerable feedback (``all``, ``detractor``, ``bug_report``),
  the whole stored history (= the view ``feedback_loop_backlog``).
* ``copulse_feedback_backlog_recent{class}``: of it, the feedback given in the last :data:`OPEN_HORIZON_MS`
  (7 days): the backlog a team can still act on (feedback never answered for weeks stays in the whole backlog
  for ever, so only this one can shrink again).
* ``copulse_feedback_backlog_oldest_age_seconds{class}``: age of the oldest unanswered feedback (``all``,
  ``detractor``, ``bug_report``); absent while that backlog is empty.
* ``copulse_feedback_as_of_timestamp_seconds``: the as-of time itself (Unix time).

The view has no per-class oldest age nor the periods by time of answer: one parameterised query over
``feedback_loop_feedback`` computes everything (:func:`read_feedback_loop`). Nothing is exported before the
first answerable feedback is stored.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from prometheus_client.core import CollectorRegistry, GaugeMetricFamily

from copulse.metric_labels import register_replacing

__all__ = ["FeedbackLoopExporter", "FeedbackLoopFigures", "read_feedback_loop"]

DAY_MS = 86_400_000
RECENT_MS = DAY_MS  # responses of the last 24 h ...
BASELINE_MS = 7 * DAY_MS  # ... against those of the 7 days before
OPEN_HORIZON_MS = 7 * DAY_MS  # the actionable backlog: feedback of the last 7 days
QUANTILES = (0.5, 0.9)
#: backlog classes: label -> condition on a row of feedback_loop_feedback
CLASSES = {"all": "1", "detractor": "is_detractor = 1", "bug_report": "is_bug_report = 1"}
PERIODS = {  # label -> condition on the time of the first answer (first_answer_ms)
    "recent": "first_answer_ms > as_of_ms - %(recent_ms)s",
    "baseline": "first_answer_ms > as_of_ms - %(recent_ms)s - %(baseline_ms)s "
                "AND first_answer_ms <= as_of_ms - %(recent_ms)s",
}


@dataclass(frozen=True)
class ResponseTimes:
    """First responses sent in one period and their delays (seconds at each of QUANTILES; empty: none)."""

    responses: int
    seconds: dict[float, float]


@dataclass(frozen=True)
class FeedbackLoopFigures:
    """The feedback loop as of ``as_of_ms`` (see the module docstring)."""

    as_of_ms: int
    response_times: dict[str, ResponseTimes]  # period -> figures
    backlog: dict[str, int]  # class -> unanswered feedback, whole history
    backlog_recent: dict[str, int]  # class -> unanswered feedback of the last OPEN_HORIZON_MS
    oldest_age_seconds: dict[str, float]  # class -> age of its oldest unanswered feedback (absent: none)


def _query(database: str) -> tuple[str, list[str]]:
    """The SELECT of every figure and the names of its columns."""
    columns: list[tuple[str, str]] = [("figures_as_of_ms", "max(as_of_ms)")]  # aliases never shadow a column
    for period, answered_in in PERIODS.items():
        cond = f"is_answered = 1 AND {answered_in}"
        columns.append((f"{period}_responses", f"countIf({cond})"))
        columns += [(f"{period}_q{round(q * 100)}", f"quantileExactIf({q})(response_delay_ms, {cond})") for q in QUANTILES]
    for cls, cond in CLASSES.items():
        backlog = f"in_backlog = 1 AND {cond}"
        columns.append((f"backlog_{cls}", f"countIf({backlog})"))
        columns.append((f"recent_{cls}", f"countIf({backlog} AND occurred_ms > as_of_ms - %(open_ms)s)"))
        columns.append((f"oldest_{cls}", f"maxIf(age_ms, {backlog})"))
    select = ",\n    ".join(f"{expr} AS {name}" for name, expr in columns)
    return (f"SELECT\n    {select}\nFROM `{database}`.feedback_loop_feedback\nHAVING count() > 0",
            [name for name, _ in columns])


def read_feedback_loop(client, database: str) -> FeedbackLoopFigures | None:
    """The figures from ClickHouse (``client``: clickhouse-driver's Client or the like); None before the first
    answerable feedback is stored."""
    sql, names = _query(database)
    rows = client.execute(sql, {"recent_ms": RECENT_MS, "baseline_ms": BASELINE_MS, "open_ms": OPEN_HORIZON_MS})
    if not rows:
        return None
    row = dict(zip(names, rows[0]))
    times = {}
    for period in PERIODS:
        n = int(row[f"{period}_responses"])
        # quantiles of an empty set are 0 on ClickHouse 18.16 and NaN on current releases: no figure at all
        seconds = {q: int(row[f"{period}_q{round(q * 100)}"]) / 1000 for q in QUANTILES} if n else {}
        times[period] = ResponseTimes(n, seconds)
    backlog = {cls: int(row[f"backlog_{cls}"]) for cls in CLASSES}
    return FeedbackLoopFigures(
        as_of_ms=int(row["figures_as_of_ms"]),
        response_times=times,
        backlog=backlog,
        backlog_recent={cls: int(row[f"recent_{cls}"]) for cls in CLASSES},
        oldest_age_seconds={cls: int(row[f"oldest_{cls}"]) / 1000 for cls in CLASSES if backlog[cls]},
    )


class FeedbackLoopExporter:
    """Prometheus collector of the feedback-loop gauges; ``update(figures)`` replaces the snapshot."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._lock = threading.Lock()
        self._figures: FeedbackLoopFigures | None = None
        self.registry = register_replacing("feedback_loop", self, registry)

    def update(self, figures: FeedbackLoopFigures | None) -> None:
        with self._lock:
            self._figures = figures

    def describe(self):
        return list(self._families(None))

    def collect(self):
        with self._lock:
            figures = self._figures
        return list(self._families(figures))

    @staticmethod
    def _families(f: FeedbackLoopFigures | None):
        seconds = GaugeMetricFamily(
            "copulse_feedback_response_seconds", "Time to first response of the first responses sent in the period "
            "(recent: last 24 h, baseline: the 7 days before), exact percentile", labels=["period", "percentile"])
        responses = GaugeMetricFamily("copulse_feedback_responses", "First responses sent in the period (recent: "
                                      "last 24 h, baseline: the 7 days before)", labels=["period"])
        backlog = GaugeMetricFamily("copulse_feedback_backlog", "Unanswered answerable feedback (whole stored "
                                    "history) by class", labels=["class"])
        recent = GaugeMetricFamily("copulse_feedback_backlog_recent", "Unanswered answerable feedback given in the "
                                   "last 7 days by class", labels=["class"])
        oldest = GaugeMetricFamily("copulse_feedback_backlog_oldest_age_seconds", "Age of the oldest unanswered "
                                   "feedback by class", labels=["class"])
        as_of = GaugeMetricFamily("copulse_feedback_as_of_timestamp_seconds", "Newest event time stored in feedback "
                                  "or responses: the time the feedback-loop figures are as of (Unix time)")
        if f is not None:
            for period, times in f.response_times.items():
                responses.add_metric([period], times.responses)
                for q, value in times.seconds.items():
                    seconds.add_metric([period, f"{q * 100:g}"], value)
            for cls in CLASSES:
                backlog.add_metric([cls], f.backlog[cls])
                recent.add_metric([cls], f.backlog_recent[cls])
                if cls in f.oldest_age_seconds:
                    oldest.add_metric([cls], f.oldest_age_seconds[cls])
            as_of.add_metric([], f.as_of_ms / 1000)
        yield from (seconds, responses, backlog, recent, oldest, as_of)
