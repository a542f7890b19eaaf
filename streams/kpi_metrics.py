"""KPI gauges for Prometheus: the latest *final* window of every exported slice, per worker.

The worker calls ``KpiExporter.observe(rows)`` with every batch of ``KpiRow`` it emits (streams/kpis.py). Only final rows (``is_final = 1``) of the slices in ``settings.metric_slices`` count. Per label set
(granularity, slice, dimension values) the exporter keeps the newest final window and the partial of every
source partition of that window; a gauge is the sum over those partials.

Exposed families (label names: ``granularity`` = window seconds as a string, ``slice``, then ``channel``,
``region`` and any other dimension the configured metric slices group by; ``''`` where a slice does not group):

* ``copulse_kpi_<counter>`` for every counter of ``streams.kpis.COUNTERS``, except two renamed to pass
  ``promtool check metrics`` (no ``_sum`` suffix on a gauge, base units): ``rating_sum`` ->
  ``copulse_kpi_rating_points`` and ``session_ms`` -> ``copulse_kpi_session_seconds`` (value / 1000);
* ``copulse_kpi_window_end_timestamp_seconds``: end of the exported window (Unix seconds);
* ``copulse_kpi_series{slice}``: label sets exported now; ``copulse_kpi_series_dropped_total{slice}``: final
  rows not exported because their slice already had ``settings.metric_max_series_per_slice`` label sets.

Several workers: each one owns some partitions and exports the partials of those only, so every query and
rule aggregates with ``sum without(instance, job) (...)`` (the recording rules in deploy/prometheus/rules do).
Partitions close a window within seconds of each other; until the last one has, a gauge briefly shows the
new window's partial sum (alerts use ``for:`` to ride that out).

Label sets whose newest window is two or more windows older than the newest window of the same granularity
(the slice value had no event since) are forgotten, which frees their place under the cap.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily

from copulse.metric_labels import SliceLabels, register_replacing
from streams.kpis import COUNTERS, IDEA_STATUS_COUNTED, KEY_COLUMNS, ROW_COLUMNS, KpiRow

__all__ = ["METRIC_NAMES", "KpiExporter", "metric_name"]

#: counter -> (metric name without the ``copulse_kpi_`` prefix, factor applied to the summed value)
METRIC_NAMES: dict[str, tuple[str, float]] = {c: (c, 1) for c in COUNTERS}
METRIC_NAMES["rating_sum"] = ("rating_points", 1)
METRIC_NAMES["session_ms"] = ("session_seconds", 0.001)

_HELP = {
    "events": "Valid events folded into the window",
    "active_consumers": "Distinct consumers with any event",
    "participating_consumers": "Distinct consumers with at least one co-creation action",
    "co_creation_actions": "Co-creation actions (feedback other than survey invitations, co-creation usage)",
    "ideas_submitted": "Ideas submitted",
    "ratings": "Ratings (1..5)",
    "rating_sum": "Sum of rating scores (csat_avg = rating_points / ratings)",
    "ratings_satisfied": "Ratings of 4 or 5 (csat_pct = ratings_satisfied / ratings)",
    "nps_responses": "NPS responses",
    "nps_promoters": "NPS responses 9..10",
    "nps_detractors": "NPS responses 0..6",
    "surveys_invited": "Survey invitations",
    "survey_responses": "Survey responses",
    "orders": "Distinct orders",
    "revenue_minor": "Revenue in minor units (cents) of the configured currency",
    "purchasers": "Distinct purchasers",
    "returning_purchasers": "Purchasers whose first purchase is before the window",
    "sessions": "Sessions started",
    "sessions_timed": "Sessions ended with a duration",
    "session_ms": "Total duration of timed sessions in seconds (avg = session_seconds / sessions_timed)",
    "feature_uses": "Feature uses",
    "feature_users": "Distinct consumers using a feature",
    "answerable_feedback": "Feedback of the kinds the company answers",
    "follow_up_feedback": "Feedback calling for a follow-up case (bug reports, detractors)",
    "enterprise_events": "Enterprise events (responses, idea status changes, closed cases)",
    "answers_sent": "Answers to feedback (responses and closed cases)",
    "cases_closed": "Follow-up cases closed",
    **{f"ideas_{status}": f"Idea status changes to {status}" for status in IDEA_STATUS_COUNTED},
}
_HELP_SUFFIX = " in the latest final KPI window, summed over this worker's source partitions"

_IDX = {name: i for i, name in enumerate(ROW_COLUMNS)}
_FIRST_COUNTER = len(KEY_COLUMNS)


def metric_name(counter: str) -> str:
    """'ratings' -> 'copulse_kpi_ratings', 'rating_sum' -> 'copulse_kpi_rating_points'."""
    return "copulse_kpi_" + METRIC_NAMES[counter][0]


@dataclass(slots=True)
class _Series:
    window_start: int  # epoch seconds
    window_end: int
    partials: dict[int, tuple[int, ...]] = field(default_factory=dict)  # partition -> counters


class KpiExporter:
    """Prometheus collector of KPI gauges; see the module docstring. Thread-safe.

    ``registry`` defaults to prometheus-client's default registry (the one ``start_http_server`` serves).
    Creating a second exporter on the same registry replaces the first one there (no duplicate error).
    """

    def __init__(self, settings, registry: CollectorRegistry | None = None) -> None:
        labels = SliceLabels(settings)
        self.slices, self.max_series_per_slice = labels.slices, labels.max_series_per_slice
        self.dimensions, self.label_names = labels.dimensions, labels.label_names
        self._dim_idx = tuple(_IDX[d] for d in self.dimensions)
        self._lock = threading.Lock()
        self._series: dict[tuple[str, ...], _Series] = {}
        self._cap = labels.cap()
        self._newest_start: dict[int, float] = {}  # granularity seconds -> newest window start seen
        self.registry = register_replacing("kpi", self, registry)

    # ------------------------------------------------------------------ input
    def observe(self, rows: list[KpiRow]) -> None:
        """Take the KPI rows of one flush (any mix of final/provisional rows, slices and partitions)."""
        wanted = self.slices
        with self._lock:
            touched: set[int] = set()
            for row in rows:
                if not row.is_final:
                    continue
                name = row.slice
                if name not in wanted:
                    continue
                g = row.granularity_seconds
                key = (str(g), name, *(str(row[i]) for i in self._dim_idx))
                start = row.window_start
                counters = row[_FIRST_COUNTER : _FIRST_COUNTER + len(COUNTERS)]
                series = self._series.get(key)
                if series is None:
                    if not self._cap.admit(name):
                        continue
                    series = self._series[key] = _Series(start, row.window_end)
                elif start > series.window_start:
                    series.window_start, series.window_end = start, row.window_end
                    series.partials.clear()
                elif start < series.window_start:
                    continue  # a partial of an older window: the gauge shows the newest one
                series.partials[row.partition] = counters
                if start > self._newest_start.get(g, float("-inf")):
                    self._newest_start[g] = start
                touched.add(g)
            if touched:
                self._expire(touched)

    def _expire(self, granularities: set[int]) -> None:
        for key, series in list(self._series.items()):
            g = int(key[0])
            if g in granularities and series.window_start + 2 * g <= self._newest_start[g]:
                del self._series[key]
                self._cap.release(key[1])

    # ------------------------------------------------------------------ prometheus_client collector
    def describe(self):
        return list(self._families({}))

    def collect(self):
        with self._lock:
            snapshot = {
                key: (s.window_end, [sum(p[i] for p in s.partials.values()) for i in range(len(COUNTERS))])
                for key, s in self._series.items()
            }
            per_slice, dropped = self._cap.counts()
        return list(self._families(snapshot, per_slice, dropped))

    def _families(self, snapshot: dict, per_slice: dict | None = None, dropped: dict | None = None):
        labels = list(self.label_names)
        for i, counter in enumerate(COUNTERS):
            factor = METRIC_NAMES[counter][1]
            family = GaugeMetricFamily(metric_name(counter), _HELP[counter] + _HELP_SUFFIX, labels=labels)
            for key, (_, sums) in snapshot.items():
                family.add_metric(list(key), sums[i] * factor if factor != 1 else sums[i])
            yield family
        family = GaugeMetricFamily(
            "copulse_kpi_window_end_timestamp_seconds",
            "End of the latest final KPI window exported for these labels (Unix time)",
            labels=labels,
        )
        for key, (end, _) in snapshot.items():
            family.add_metric(list(key), end)
        yield family
        family = GaugeMetricFamily("copulse_kpi_series", "KPI label sets exported, per slice", labels=["slice"])
        for name, n in (per_slice or {}).items():
            family.add_metric([name], n)
        yield family
        family = CounterMetricFamily(
            "copulse_kpi_series_dropped",
            "Final KPI rows not exported because their slice had reached COPULSE_METRIC_MAX_SERIES_PER_SLICE label sets",
            labels=["slice"],
        )
        for name, n in (dropped or {}).items():
            family.add_metric([name], n)
        yield family
