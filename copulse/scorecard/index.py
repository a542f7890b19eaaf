"""The value co-creation index (VCI): pure computation from KPI values, no I/O.

For one window and slice, with the targets the scorecard gives for the window's granularity:

1. **Attainment** of KPI *k* (value *v*, target *t*, floor *f*), always in [0, 1]:

   * with a floor: ``a = clip((v - f) / (t - f), 0, 1)``; the same formula serves both directions (for
     lower-is-better the floor lies above the target, so a value at or below the target scores 1);
   * without a floor, higher is better: ``a = clip(v / t, 0, 1)`` (a floor of 0);
   * without a floor, lower is better: ``a = 1`` if ``v <= t``, else ``t / v``.

   A KPI is **insufficient** when its value is NULL (denominator 0) or its sample (the denominator, e.g.
   ratings for CSAT) is below ``min_sample``; it then has no attainment.

2. **Perspective score** = ``100 * sum(w_k * a_k) / sum(w_k)`` over the perspective's *sufficient* KPIs with
   weight > 0 (weights renormalised over those present). With no such KPI the perspective is insufficient
   (NULL).

3. **Index** = ``sum(W_p * S_p) / sum(W_p)`` over the *sufficient* perspectives with weight > 0 (renormalised
   again), 0..100. If fewer than ``min_perspectives`` perspectives are sufficient, the index is NULL
   (insufficient), never 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from copulse.scorecard.catalogue import SCORECARD_KPIS
from copulse.scorecard.definition import KpiTarget, Scorecard

__all__ = ["KpiInput", "KpiScore", "PerspectiveScore", "VciResult", "attainment", "compute", "kpi_inputs",
           "score_row"]

NO_DATA, SMALL_SAMPLE = "no_data", "small_sample"


@dataclass(frozen=True)
class KpiInput:
    value: float | None  # None: the KPI is undefined in this window (denominator 0)
    sample: float  # the KPI's denominator (ratings, orders, active consumers, ...)


@dataclass(frozen=True)
class KpiScore:
    target: KpiTarget
    value: float | None
    sample: float
    attainment: float | None  # 0..1, None when insufficient
    insufficient: str  # '' (scored), 'no_data' or 'small_sample'

    @property
    def name(self) -> str:
        return self.target.name


@dataclass(frozen=True)
class PerspectiveScore:
    name: str
    label: str
    weight: float
    score: float | None  # 0..100, None when insufficient
    kpis: tuple[KpiScore, ...]

    @property
    def insufficient(self) -> bool:
        return self.score is None


@dataclass(frozen=True)
class VciResult:
    index: float | None  # 0..100, None when insufficient
    perspectives: tuple[PerspectiveScore, ...]

    @property
    def insufficient(self) -> bool:
        return self.index is None

    def kpis(self) -> list[KpiScore]:
        return [k for p in self.perspectives for k in p.kpis]

    def perspective(self, name: str) -> PerspectiveScore:
        return next(p for p in self.perspectives if p.name == name)

    def kpi(self, name: str) -> KpiScore:
        return next(k for k in self.kpis() if k.name == name)


def attainment(value: float, target: float, floor: float | None, direction: str) -> float:
    """Attainment in [0, 1] of ``value`` against ``target`` (see the module docstring)."""
    if floor is not None:
        if target == floor:
            raise ValueError("target and floor must differ")
        a = (value - floor) / (target - floor)
    elif direction == "higher":
        if target <= 0:
            raise ValueError("without a floor the target must be > 0")
        a = value / target
    else:
        if target <= 0:
            raise ValueError("without a floor the target must be > 0")
        a = 1.0 if value <= target else target / value
    return min(1.0, max(0.0, a))


def compute(scorecard: Scorecard, granularity_seconds: int, inputs: Mapping[str, KpiInput]) -> VciResult:
    """The VCI of one window: ``inputs`` maps KPI names to their value and sample (missing = no data)."""
    perspectives = []
    for p in scorecard.targets(granularity_seconds):
        scores = []
        num = den = 0.0
        for t in p.kpis:
            given = inputs.get(t.name)
            value = None if given is None else given.value
            sample = 0.0 if given is None else float(given.sample)
            if value is None:
                scores.append(KpiScore(t, None, sample, None, NO_DATA))
                continue
            if sample < t.min_sample:
                scores.append(KpiScore(t, value, sample, None, SMALL_SAMPLE))
                continue
            a = attainment(value, t.target, t.floor, t.direction)
            scores.append(KpiScore(t, value, sample, a, ""))
            if t.weight > 0:
                num += t.weight * a
                den += t.weight
        score = 100.0 * num / den if den > 0 else None
        perspectives.append(PerspectiveScore(p.name, p.label, p.weight, score, tuple(scores)))
    counted = [p for p in perspectives if p.score is not None and p.weight > 0]
    if len(counted) < scorecard.min_perspectives or not counted:
        index = None
    else:
        index = sum(p.weight * p.score for p in counted) / sum(p.weight for p in counted)
    return VciResult(index, tuple(perspectives))


# ----------------------------------------------------------------------------------------------- KPI rows
def _number(value) -> float | None:
    return None if value is None else float(value)


def kpi_inputs(row: Mapping) -> dict[str, KpiInput]:
    """Value and sample of every scorecard KPI (copulse/scorecard/catalogue.py) from a row of the ``kpi`` /
    ``kpi_final`` views (a mapping of column -> value). The view's KPI columns are used when present (its
    rounded aov, its feature-adoption denominator), else the KPI is computed from the counters."""
    out = {}
    for name, kpi in SCORECARD_KPIS.items():
        if name in row and (row[name] is not None or not kpi.additive):
            value = _number(row[name])
        else:
            value = _number(kpi.value(row))
        sample = kpi.denominator_value(row) if not kpi.additive else row.get(kpi.sample_column)
        out[name] = KpiInput(value, _number(sample) or 0.0)
    return out


def score_row(scorecard: Scorecard, row: Mapping) -> VciResult:
    """The VCI of one ``kpi_final`` row (needs ``granularity_seconds`` and the KPI columns)."""
    return compute(scorecard, int(row["granularity_seconds"]), kpi_inputs(row))
