"""The KPI row contract: what one window aggregate holds and how it becomes a ClickHouse row.

One aggregate exists per (granularity, window start, slice values, source partition). Every field is an
additive counter, so partials of different partitions sum exactly into the slice total (each consumer lives
in exactly one partition because the message key is consumer_id). Ratios are never stored: they are
numerator / denominator, computed by the ClickHouse views and PromQL recording rules.
"""

from __future__ import annotations

from decimal import Decimal

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
)

#: Key columns of a KPI row, in order (ClickHouse ORDER BY of the replacing table).
KEY_COLUMNS: tuple[str, ...] = (
    "granularity_seconds",  # UInt32
    "window_start",  # DateTime (UTC)
    "slice",  # String: 'overall', 'channel', 'channel+region', ...
    "channel",  # String dimension value; '' where the slice does not group by it
    "region",
    "category",
    "segment",  # null segment -> 'unknown'
    "product_id",
    "feature",
    "partition",  # UInt16 source partition the partial comes from
)

#: Metadata columns after the counters.
META_COLUMNS: tuple[str, ...] = (
    "window_end",  # DateTime
    "version",  # UInt64, grows with every emission of this key; the final row has the highest
    "is_final",  # UInt8
    "emitted_at",  # DateTime, wall clock of the emission (for emit-to-store latency only)
)

ROW_COLUMNS: tuple[str, ...] = KEY_COLUMNS + COUNTERS + META_COLUMNS


def revenue_decimal(minor: int) -> Decimal:
    """Minor units to an exact 2-place Decimal (12345 -> Decimal('123.45'))."""
    return Decimal(minor).scaleb(-2)
