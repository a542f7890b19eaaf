"""THE KPI catalogue: every KPI copulse knows, written once as a formula over the additive counters of
streams/kpis.py (``COUNTERS``).

A KPI is a ratio of counters (see :class:`Kpi`) or, without a denominator, an additive counter.

Everything else derives from this table: the ``copulse kpis`` table (KPIs with ``in_view``), scorecard
validation (known KPI ids, the direction type, which KPIs need ``per``), the VCI inputs
(copulse/scorecard/index.py), the Prometheus recording rules (deploy/prometheus/render_rules.py), the Grafana panels
(deploy/grafana/build_dashboards.py) and the report. The SQL views (schemas/clickhouse/0004_kpi_views.sql)
spell the same ratios in SQL; tests/test_kpi_catalogue.py checks that the view, the recording rules and
:meth:`Kpi.value` agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

__all__ = ["CATALOGUE", "Direction", "Kpi", "SCORECARD_KPIS", "VIEW_KPIS", "format_value"]

Direction = Literal["higher", "lower"]


@dataclass(frozen=True)
class Kpi:
    """One KPI: ``scale * (numerator / numerator_divisor) / denominator``, NULL when the denominator is 0;
    without a denominator ``scale * numerator / numerator_divisor``, an additive KPI that grows with the window
    and the slice (orders, revenue, ...). ``numerator`` names counters joined by ' - '
    (``"nps_promoters - nps_detractors"``)."""

    name: str
    label: str
    unit: str  # count | money | rate | score | nps | seconds | ratio (how it is shown: format_value)
    numerator: str
    denominator: str | None = None  # a counter; None: an additive KPI
    numerator_divisor: int = 1  # unit of the numerator: 100 minor units per currency unit, 1000 ms per second
    scale: int = 1  # 100 for NPS (-100..100) and "per 100"
    direction: Direction = "higher"  # which way is better
    in_view: bool = False  # a column of the kpi / kpi_final views, shown by `copulse kpis` and Grafana
    scorable: bool = True  # may appear in a scorecard
    #: for slices that group by this dimension the denominator is the one of the same slice without it (the
    #: view's ``<name>_denominator`` column); the Prometheus recording rule leaves those slices out
    denominator_without: str | None = None

    @property
    def additive(self) -> bool:
        return self.denominator is None

    @property
    def numerator_terms(self) -> tuple[tuple[int, str], ...]:
        """(sign, counter) of every term of the numerator."""
        first, *rest = self.numerator.split(" - ")
        return ((1, first.strip()), *((-1, term.strip()) for term in rest))

    @property
    def denominator_column(self) -> str | None:
        """The kpi view column holding the denominator of a row."""
        if self.denominator_without:
            return f"{self.name}_denominator"
        return self.denominator

    @property
    def sample_column(self) -> str:
        """The column compared with a scorecard's ``min_sample``: the denominator, or active consumers."""
        return self.denominator_column or "active_consumers"

    def numerator_total(self, counters: Mapping) -> int | float:
        """The numerator's counters combined, in counter units (missing counters count 0)."""
        return sum(sign * _number(counters.get(counter)) for sign, counter in self.numerator_terms)

    def numerator_value(self, counters: Mapping) -> int | float:
        """The numerator in the KPI's unit (currency units, seconds)."""
        total = self.numerator_total(counters)
        return total if self.numerator_divisor == 1 else total / self.numerator_divisor

    def denominator_value(self, counters: Mapping) -> int | float | None:
        """The denominator of a row (the view's denominator column when present), None for additive KPIs."""
        if self.denominator is None:
            return None
        column = self.denominator_column
        return _number(counters.get(column) if column in counters else counters.get(self.denominator))

    def value(self, counters: Mapping) -> float | None:
        """The KPI of one window from its counters (a kpi view row or any mapping); None when undefined."""
        numerator = self.numerator_value(counters)
        scaled = numerator if self.scale == 1 else self.scale * numerator
        if self.denominator is None:
            return scaled
        denominator = self.denominator_value(counters)
        return None if not denominator else scaled / denominator


def _number(value) -> int | float:
    if value is None:
        return 0
    return float(value) if isinstance(value, Decimal) else value


def format_value(value: Any, unit: str, *, na: str = "—") -> str:
    """A KPI value as people read it, by its unit (live view, report, ``copulse kpis``)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return na
    if unit == "rate":
        return f"{value * 100:.1f} %"
    if unit == "score":
        return f"{value:.2f}"
    if unit == "nps":
        return f"{value:+.1f}"
    if unit == "money":
        return f"{value:,.2f}"
    if unit == "seconds":
        return f"{value:.0f} s"
    if unit == "ratio":
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    if unit == "index":
        return f"{value:.1f}"
    return f"{value:,.0f}"


_KPIS = (
    Kpi("active_consumers", "Active consumers", "count", "active_consumers", in_view=True),
    Kpi("participation_rate", "Participation rate", "rate", "participating_consumers", "active_consumers",
        in_view=True),
    Kpi("co_creation_actions", "Co-creation actions", "count", "co_creation_actions", in_view=True),
    Kpi("co_creation_per_active_consumer", "Co-creation actions per active consumer", "ratio",
        "co_creation_actions", "active_consumers"),
    Kpi("ideas_submitted", "Ideas submitted", "count", "ideas_submitted", in_view=True),
    Kpi("ideas_per_100_active_consumers", "Ideas per 100 active consumers", "ratio", "ideas_submitted",
        "active_consumers", scale=100),
    Kpi("csat_avg", "CSAT (average 1-5)", "score", "rating_sum", "ratings", in_view=True),
    Kpi("csat_pct", "CSAT (share satisfied)", "rate", "ratings_satisfied", "ratings", in_view=True),
    Kpi("nps", "NPS", "nps", "nps_promoters - nps_detractors", "nps_responses", scale=100, in_view=True),
    Kpi("survey_response_rate", "Survey response rate", "rate", "survey_responses", "surveys_invited", in_view=True),
    Kpi("orders", "Orders", "count", "orders", in_view=True),
    Kpi("orders_per_active_consumer", "Orders per active consumer", "ratio", "orders", "active_consumers"),
    Kpi("revenue", "Revenue", "money", "revenue_minor", numerator_divisor=100, in_view=True),
    Kpi("revenue_per_active_consumer", "Revenue per active consumer", "money", "revenue_minor", "active_consumers",
        numerator_divisor=100),
    Kpi("aov", "Average order value", "money", "revenue_minor", "orders", numerator_divisor=100, in_view=True),
    Kpi("purchaser_rate", "Purchaser rate", "rate", "purchasers", "active_consumers"),
    Kpi("returning_purchaser_rate", "Returning purchasers", "rate", "returning_purchasers", "purchasers",
        in_view=True),
    Kpi("sessions", "Sessions", "count", "sessions", in_view=True),
    Kpi("avg_session_seconds", "Average session", "seconds", "session_ms", "sessions_timed", numerator_divisor=1000,
        in_view=True),
    Kpi("feature_adoption", "Feature adoption", "rate", "feature_users", "active_consumers", in_view=True,
        denominator_without="feature"),
    # the enterprise side, as flows in the window (schemas/clickhouse/0009_enterprise_counters.sql); the cohort
    # figures (which feedback got answered, how fast) are the feedback-loop views, docs/feedback-loop.md
    Kpi("answers_sent", "Answers sent", "count", "answers_sent", in_view=True),
    Kpi("answers_per_feedback", "Answers per answerable feedback", "ratio", "answers_sent", "answerable_feedback",
        in_view=True),
    Kpi("cases_closed_per_follow_up", "Closed cases per follow-up needed", "ratio", "cases_closed", "follow_up_feedback",
        in_view=True),
    Kpi("ideas_shipped", "Ideas shipped", "count", "ideas_shipped", in_view=True),
    Kpi("ideas_shipped_per_100_ideas", "Ideas shipped per 100 submitted", "ratio", "ideas_shipped", "ideas_submitted",
        scale=100, in_view=True),
    Kpi("events", "Events", "count", "events", in_view=True, scorable=False),
)

#: name -> KPI, in display order
CATALOGUE: dict[str, Kpi] = {k.name: k for k in _KPIS}
#: the KPIs the kpi / kpi_final views compute (``copulse kpis``, Grafana), in display order
VIEW_KPIS: tuple[Kpi, ...] = tuple(k for k in _KPIS if k.in_view)
#: the KPIs a scorecard may use
SCORECARD_KPIS: dict[str, Kpi] = {k.name: k for k in _KPIS if k.scorable}
