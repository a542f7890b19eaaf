"""The KPI row contract: what one window aggregate holds and how it becomes a ClickHouse row.

One aggregate exists per (granularity, window start, slice values, source partition). Every field is an
additive counter, so partials of different partitions sum exactly into the slice total (each consumer lives
in exactly one partition because the message key is consumer_id). Ratios are never stored: they are
numerator / denominator, computed by the ClickHouse views and PromQL recording rules.
"""

from __future__ import annotations

import calendar
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

from copulse.settings import DIMENSIONS
from streams.events import ENTERPRISE_TYPES, Event

#: Feedback the company is expected to answer (not its own survey invitations, not votes). The same rule is spelt
#: in SQL by the view feedback_loop_events (schemas/clickhouse/0008_feedback_loop.sql); tests/test_views.py
#: checks they agree.
ANSWERABLE_KINDS = frozenset({"survey_response", "rating", "nps", "review", "bug_report", "idea"})
#: The idea statuses of response.v1.avsc, each with its own counter ``ideas_<status>`` (``ideas_under_review``
#: is an idea taken into review, ``ideas_shipped`` one shipped, ...).
IDEA_STATUS_COUNTED = ("under_review", "planned", "in_progress", "shipped", "declined")


def is_detractor(kind: str, score: int | None) -> bool:
    """An unhappy consumer: an nps or survey_response scored 0-6, a rating or review scored 1-2."""
    if score is None:
        return False
    if kind in ("nps", "survey_response"):
        return score <= 6
    return kind in ("rating", "review") and score <= 2


#: Additive counters of one window aggregate, in ClickHouse column order (all UInt64 except revenue).
COUNTERS: tuple[str, ...] = (
    "events",  # valid, non-duplicate, on-time events folded in
    "active_consumers",  # distinct consumers with any event
    "participating_consumers",  # distinct consumers with >= 1 co-creation action
    "co_creation_actions",  # feedback other than survey_invited + usage with co_creation=true
    "ideas_submitted",
    "ratings",  # kind=rating
    "rating_sum",  # sum of 1..5 scores -> csat_avg = rating_sum / ratings
    "ratings_satisfied",  # ratings >= 4 -> csat_pct = ratings_satisfied / ratings
    "nps_responses",
    "nps_promoters",  # 9..10
    "nps_detractors",  # 0..6 -> nps = 100 * (promoters - detractors) / responses
    "surveys_invited",
    "survey_responses",
    "orders",  # distinct order_id per consumer in the window
    "revenue_minor",  # Int64, minor units (cents) of settings.currency; exact
    "purchasers",
    "returning_purchasers",  # first purchase ever seen is before the window start
    "sessions",  # usage action=session_start
    "sessions_timed",  # session_end events carrying duration_ms
    "session_ms",  # sum of duration_ms of those -> avg_session_seconds = session_ms / 1000 / sessions_timed
    "feature_uses",
    "feature_users",  # distinct consumers with a feature_use
    # --- appended in state format 2 / migration 0009: the enterprise side and what it answers ---
    "answerable_feedback",  # feedback of ANSWERABLE_KINDS (what the company is expected to answer)
    "follow_up_feedback",  # of it what calls for a follow-up case: bug reports and detractors (is_detractor)
    "enterprise_events",  # enterprise events (streams.events.ENTERPRISE_TYPES) folded in, by their own event time
    "answers_sent",  # kind response or case_closed: an answer to a consumer's feedback
    "cases_closed",  # of them case_closed: a detractor's or bug report's follow-up closed
    *(f"ideas_{status}" for status in IDEA_STATUS_COUNTED),  # idea status changes to that status
)

#: Key columns of a KPI row, in order (ClickHouse ORDER BY of the replacing table).
KEY_COLUMNS: tuple[str, ...] = (
    "granularity_seconds",  # UInt32
    "window_start",  # DateTime (UTC), carried as epoch seconds
    "slice",  # String: 'overall', 'channel', 'channel+region', ...
    *DIMENSIONS,  # String dimension values; '' where the slice does not group by it; null segment -> 'unknown'
    "partition",  # UInt16 source partition the partial comes from
)

#: Metadata columns after the counters.
META_COLUMNS: tuple[str, ...] = (
    "window_end",  # DateTime, epoch seconds
    "version",  # UInt64, grows with every emission of this key; the final row has the highest
    "is_final",  # UInt8
    "emitted_at",  # DateTime (epoch seconds), wall clock of the emission (for emit-to-store latency only)
)

ROW_COLUMNS: tuple[str, ...] = KEY_COLUMNS + COUNTERS + META_COLUMNS

#: One KPI partial as the worker emits it and ClickHouse stores it: a named tuple in ROW_COLUMNS order, so
#: clickhouse-driver inserts it as it is. Strings for the slice and dimension values, ints everywhere else;
#: the DateTime columns carry epoch seconds (UTC), so no time zone is ever guessed.
KpiRow = NamedTuple("KpiRow", [(c, str if c == "slice" or c in DIMENSIONS else int) for c in ROW_COLUMNS])

_DATETIME_COLUMNS = ("window_start", "window_end", "emitted_at")
_REQUIRED = ("granularity_seconds", "window_start", "window_end", "slice", "partition", "version")


def epoch_seconds(value: datetime | int | float) -> int:
    """A DateTime value as epoch seconds: aware datetimes in any zone, naive datetimes taken as UTC, or epoch
    seconds (int/float, floored)."""
    if isinstance(value, datetime):
        return calendar.timegm(value.utctimetuple() if value.tzinfo else value.timetuple())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value // 1)
    raise TypeError(f"not a timestamp: {value!r} ({type(value).__name__})")


def kpi_row(**values: Any) -> KpiRow:
    """A KpiRow by column name: dimensions default to '', counters to 0, is_final to 0 and emitted_at to
    window_end; DateTime columns may be datetimes (naive = UTC) or epoch seconds. granularity_seconds,
    window_start, window_end, slice, partition and version are required. Unknown names raise (catches typos)."""
    unknown = set(values) - set(ROW_COLUMNS)
    if unknown:
        raise ValueError(f"not KPI columns: {sorted(unknown)}")
    missing = set(_REQUIRED) - set(values)
    if missing:
        raise ValueError(f"KPI row needs {sorted(missing)}")
    full: dict[str, Any] = dict.fromkeys(DIMENSIONS, "")
    full.update(dict.fromkeys(COUNTERS, 0))
    full.update(is_final=0, emitted_at=values["window_end"])
    full.update(values)
    for column in _DATETIME_COLUMNS:
        full[column] = epoch_seconds(full[column])
    return KpiRow(**full)


#: Membership bits: the distinct counters an event can claim for its consumer in a window aggregate (each counted
#: once per consumer and aggregate). The bit values are part of the stored changelog format (streams/changelog.py):
#: never change them. Orders are counted the same way, once per (consumer, order_id) and aggregate.
ACTIVE, PARTICIPATING, PURCHASER, FEATURE_USER = 1, 2, 4, 8
DISTINCT_COUNTER = {ACTIVE: "active_consumers", PARTICIPATING: "participating_consumers", PURCHASER: "purchasers",
                    FEATURE_USER: "feature_users"}
ORDERS_COUNTER = "orders"

COUNTER_INDEX = {name: i for i, name in enumerate(COUNTERS)}
_I = COUNTER_INDEX


class Contribution(NamedTuple):
    """What one event adds to every aggregate it belongs to."""

    deltas: list[tuple[int, int]]  # (counter index, increment) of the additive counters
    bits: int  # membership bits it claims for its consumer
    order_id: str | None  # the order it claims (purchases)


_ENTERPRISE = _I["enterprise_events"]
_ANSWER = (_ENTERPRISE, 1), (_I["answers_sent"], 1)
_CASE_CLOSED = (*_ANSWER, (_I["cases_closed"], 1))
_STATUS = {status: ((_ENTERPRISE, 1), (_I[f"ideas_{status}"], 1)) for status in IDEA_STATUS_COUNTED}


def contributions(event: Event) -> Contribution:
    rec = event.record
    if event.type in ENTERPRISE_TYPES:  # the enterprise acting: counted in its own window; no consumer activity
        kind = rec["kind"]
        deltas = (_STATUS[rec["status"]] if kind == "idea_status"
                  else _CASE_CLOSED if kind == "case_closed" else _ANSWER)
        return Contribution(list(deltas), 0, None)
    deltas = [(_I["events"], 1)]
    bits = ACTIVE
    order_id = None
    if event.type == "purchase":
        deltas.append((_I["revenue_minor"], int(rec["amount"].scaleb(2))))
        bits |= PURCHASER
        order_id = rec["order_id"]
    elif event.type == "usage":
        action = rec["action"]
        if rec.get("co_creation"):
            deltas.append((_I["co_creation_actions"], 1))
            bits |= PARTICIPATING
        if action == "session_start":
            deltas.append((_I["sessions"], 1))
        elif action == "session_end" and rec.get("duration_ms") is not None:
            deltas += [(_I["sessions_timed"], 1), (_I["session_ms"], int(rec["duration_ms"]))]
        elif action == "feature_use":
            deltas.append((_I["feature_uses"], 1))
            bits |= FEATURE_USER
    else:  # feedback
        kind, score = rec["kind"], rec.get("score")
        if kind in ANSWERABLE_KINDS:
            deltas.append((_I["answerable_feedback"], 1))
            if kind == "bug_report" or is_detractor(kind, score):
                deltas.append((_I["follow_up_feedback"], 1))
        if kind == "survey_invited":
            deltas.append((_I["surveys_invited"], 1))
        else:
            deltas.append((_I["co_creation_actions"], 1))
            bits |= PARTICIPATING
        if kind == "survey_response":
            deltas.append((_I["survey_responses"], 1))
        elif kind == "idea":
            deltas.append((_I["ideas_submitted"], 1))
        elif kind == "rating":
            deltas += [(_I["ratings"], 1), (_I["rating_sum"], score), (_I["ratings_satisfied"], int(score >= 4))]
        elif kind == "nps":
            deltas += [(_I["nps_responses"], 1), (_I["nps_promoters"], int(score >= 9)),
                       (_I["nps_detractors"], int(score <= 6))]
    return Contribution(deltas, bits, order_id)


def dimension_values(event: Event) -> tuple:
    """The event's value of every dimension, in DIMENSIONS order (None: the event has none, e.g. the feature of
    a purchase; a slice grouping by it leaves the event out)."""
    return (event.channel, event.region, event.category, event.segment or "unknown", event.product_id,
            event.record.get("feature") if event.type == "usage" else None)


def revenue_decimal(minor: int) -> Decimal:
    """Minor units to an exact 2-place Decimal (12345 -> Decimal('123.45'))."""
    return Decimal(minor).scaleb(-2)
