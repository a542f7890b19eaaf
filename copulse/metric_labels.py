"""Label sets of the KPI and VCI gauges (streams/kpi_metrics.py, copulse/scorecard/exporter.py): which
dimensions label them, the cap of label sets per slice, and one collector of a kind per registry.

Labels: ``granularity`` (window seconds as text), ``slice``, then ``channel``, ``region`` and any other
dimension the configured metric slices (``COPULSE_METRIC_SLICES``) group by, in the order of
``copulse.settings.DIMENSIONS``; ``''`` where a slice does not group. At most
``COPULSE_METRIC_MAX_SERIES_PER_SLICE`` label sets per slice are exported; the others are counted as dropped.
"""

from __future__ import annotations

import threading

from prometheus_client.core import REGISTRY, CollectorRegistry

from copulse.settings import DIMENSIONS, slice_dimensions

__all__ = ["SeriesCap", "SliceLabels", "register_replacing"]

#: dimensions that always label a gauge, whether or not a metric slice groups by them
ALWAYS_LABELLED = ("channel", "region")


class SliceLabels:
    """The exported slices and label names of one exporter (``extra`` label names go last)."""

    def __init__(self, settings, extra: tuple[str, ...] = ()) -> None:
        self.slices: tuple[str, ...] = tuple(dict.fromkeys(settings.metric_slices))
        self.max_series_per_slice = int(settings.metric_max_series_per_slice)
        grouped = {d for s in self.slices for d in slice_dimensions(s)}
        self.dimensions: tuple[str, ...] = tuple(d for d in DIMENSIONS if d in {*ALWAYS_LABELLED} | grouped)
        self.label_names: tuple[str, ...] = ("granularity", "slice", *self.dimensions, *extra)

    def cap(self) -> SeriesCap:
        return SeriesCap(self.slices, self.max_series_per_slice)


class SeriesCap:
    """Label sets exported and dropped per slice, at most ``limit`` exported per slice."""

    def __init__(self, slices: tuple[str, ...], limit: int) -> None:
        self.limit = limit
        self.per_slice: dict[str, int] = dict.fromkeys(slices, 0)
        self.dropped: dict[str, int] = dict.fromkeys(slices, 0)

    def admit(self, slice_name: str) -> bool:
        """Count a new label set of ``slice_name``: True if it is exported, False (and counted) if dropped."""
        if self.per_slice[slice_name] >= self.limit:
            self.dropped[slice_name] += 1
            return False
        self.per_slice[slice_name] += 1
        return True

    def release(self, slice_name: str) -> None:
        """A label set of ``slice_name`` is no longer exported."""
        self.per_slice[slice_name] -= 1

    def counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """Copies of (exported, dropped) per slice."""
        return dict(self.per_slice), dict(self.dropped)


_REGISTERED: dict[tuple[str, int], tuple[CollectorRegistry, object]] = {}
_REGISTERED_LOCK = threading.Lock()


def register_replacing(kind: str, collector, registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """Register ``collector`` on ``registry`` (default: prometheus-client's default registry), replacing the
    collector of the same ``kind`` registered there before (a second exporter raises no duplicate error)."""
    registry = REGISTRY if registry is None else registry
    with _REGISTERED_LOCK:
        previous = _REGISTERED.get((kind, id(registry)))
        if previous is not None and previous[0] is registry:
            try:
                registry.unregister(previous[1])
            except KeyError:  # already unregistered by someone else
                pass
        registry.register(collector)
        _REGISTERED[(kind, id(registry))] = (registry, collector)
    return registry
