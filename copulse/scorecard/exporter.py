"""The VCI gauges: a Prometheus collector of the newest scored window of every label set, fed by the scoring
job (copulse/scorecard/job.py) from the ``vci`` table.

Labels: see copulse/metric_labels.py (shared with the KPI gauges), plus ``scorecard_version``. Families:
``copulse_vci_index`` (0..100, absent while insufficient), ``copulse_vci_perspective_score{perspective}``
(0..100), ``copulse_vci_kpi_attainment{perspective, kpi}`` (0..1), ``copulse_vci_insufficient`` (1 = index
NULL), ``copulse_vci_active_consumers`` (the window's traffic, for low-traffic guards),
``copulse_vci_window_end_timestamp_seconds``; ``copulse_vci_series{slice}`` / ``copulse_vci_series_dropped{slice}``.
Label sets without a window among the newest two of their granularity are dropped, at most
``COPULSE_METRIC_MAX_SERIES_PER_SLICE`` per slice.
"""

from __future__ import annotations

import threading

from prometheus_client.core import CollectorRegistry, GaugeMetricFamily

from copulse.metric_labels import SliceLabels, register_replacing
from streams.kpis import epoch_seconds

__all__ = ["VciExporter"]


class VciExporter:
    """Prometheus collector of the VCI gauges (see the module docstring); ``update(rows)`` replaces the snapshot."""

    def __init__(self, settings, registry: CollectorRegistry | None = None) -> None:
        self._slice_labels = SliceLabels(settings, extra=("scorecard_version",))
        self.slices, self.max_series_per_slice = self._slice_labels.slices, self._slice_labels.max_series_per_slice
        self.dimensions, self.label_names = self._slice_labels.dimensions, self._slice_labels.label_names
        self._lock = threading.Lock()
        self._rows: list[dict] = []
        self._per_slice, self._dropped = self._slice_labels.cap().counts()
        self.registry = register_replacing("vci", self, registry)

    def update(self, rows: list[dict]) -> None:
        """``rows``: vci rows (dicts) of the newest windows; keeps the newest per label set, capped per slice."""
        newest_start: dict[int, int] = {}
        for r in rows:
            g = int(r["granularity_seconds"])
            newest_start[g] = max(newest_start.get(g, 0), epoch_seconds(r["window_start"]))
        best: dict[tuple, dict] = {}
        for r in rows:
            g = int(r["granularity_seconds"])
            if r["slice"] not in self.slices or epoch_seconds(r["window_start"]) + 2 * g <= newest_start[g]:
                continue
            key = self._labels(r)
            if key not in best or epoch_seconds(r["window_start"]) > epoch_seconds(best[key]["window_start"]):
                best[key] = r
        cap = self._slice_labels.cap()
        # sorted: a deterministic choice when a slice has more label sets than allowed
        kept = [(key, best[key]) for key in sorted(best) if cap.admit(key[1])]
        with self._lock:
            self._rows = kept
            self._per_slice, self._dropped = cap.counts()

    def _labels(self, r: dict) -> tuple[str, ...]:
        return (str(int(r["granularity_seconds"])), r["slice"], *(str(r[d]) for d in self.dimensions),
                r["scorecard_version"])

    def describe(self):
        return list(self._families([], {}, {}))

    def collect(self):
        with self._lock:
            rows, per_slice, dropped = list(self._rows), dict(self._per_slice), dict(self._dropped)
        return list(self._families(rows, per_slice, dropped))

    def _families(self, rows, per_slice, dropped):
        labels = list(self.label_names)
        index = GaugeMetricFamily("copulse_vci_index", "Value co-creation index (0..100) of the newest scored final "
                                  "window; absent while the window has too little data", labels=labels)
        perspective = GaugeMetricFamily("copulse_vci_perspective_score", "Perspective score (0..100) of the newest "
                                        "scored final window", labels=[*labels, "perspective"])
        kpi = GaugeMetricFamily("copulse_vci_kpi_attainment", "KPI attainment against its target (0..1) in the "
                                "newest scored final window", labels=[*labels, "perspective", "kpi"])
        insufficient = GaugeMetricFamily("copulse_vci_insufficient", "1 when the newest scored window has too little "
                                         "data for an index", labels=labels)
        active = GaugeMetricFamily("copulse_vci_active_consumers", "Active consumers of the newest scored window "
                                   "(traffic, for low-traffic guards)", labels=labels)
        end = GaugeMetricFamily("copulse_vci_window_end_timestamp_seconds", "End of the newest scored window "
                                "(Unix time)", labels=labels)
        for key, r in rows:
            values = list(key)
            if r["vci_index"] is not None:
                index.add_metric(values, r["vci_index"])
            for name, score in zip(r["perspectives"], r["perspective_scores"], strict=True):
                if score is not None:
                    perspective.add_metric([*values, name], score)
            for name, pname, a in zip(r["kpis"], r["kpi_perspectives"], r["kpi_attainments"], strict=True):
                if a is not None:
                    kpi.add_metric([*values, pname, name], a)
            insufficient.add_metric(values, float(r["insufficient"]))
            active.add_metric(values, float(r["active_consumers"]))
            end.add_metric(values, float(epoch_seconds(r["window_end"])))
        yield from (index, perspective, kpi, insufficient, active, end)
        series = GaugeMetricFamily("copulse_vci_series", "VCI label sets exported, per slice", labels=["slice"])
        for name, n in per_slice.items():
            series.add_metric([name], n)
        yield series
        drops = GaugeMetricFamily("copulse_vci_series_dropped", "VCI label sets not exported because their slice had "
                                  "COPULSE_METRIC_MAX_SERIES_PER_SLICE label sets", labels=["slice"])
        for name, n in dropped.items():
            drops.add_metric([name], n)
        yield drops
