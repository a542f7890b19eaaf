"""One KPI catalogue (copulse/scorecard/catalogue.py), three spellings of its formulas: the ``kpi`` view's SQL
(schemas/clickhouse/0004_kpi_views.sql), the Prometheus recording rules (deploy/prometheus/rules) and Python
(``Kpi.value``, the VCI inputs). The same counters go through all three and must give the same KPIs."""

from __future__ import annotations

import datetime as dt
import math
import re
from pathlib import Path

import pytest
import yaml

from copulse.readmodel import SELECT_COLUMNS
from copulse.scorecard.catalogue import CATALOGUE, SCORECARD_KPIS, VIEW_KPIS
from copulse.scorecard.index import kpi_inputs
from copulse.settings import slice_dimensions
from sinks.clickhouse import ClickHouseSink
from sinks.migrations import migrate
from streams.batch import SinkBatch
from streams.kpi_metrics import METRIC_NAMES
from streams.kpis import COUNTERS, kpi_row
from tests.test_views import ch_settings

RECORDING_RULES = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "rules" / "copulse_kpi_recording.yml"
W0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)

#: counters of one window each (slice overall), zeros included
COUNTER_SETS: list[dict[str, int]] = [
    dict(events=50, active_consumers=20, participating_consumers=7, co_creation_actions=11, ideas_submitted=2,
         ratings=8, rating_sum=33, ratings_satisfied=6, nps_responses=9, nps_promoters=5, nps_detractors=2,
         surveys_invited=12, survey_responses=9, orders=6, revenue_minor=123457, purchasers=5, returning_purchasers=2,
         sessions=14, sessions_timed=10, session_ms=754321, feature_uses=9, feature_users=4),
    dict(events=7, active_consumers=3, participating_consumers=1, ratings=3, rating_sum=7, ratings_satisfied=1,
         nps_responses=4, nps_promoters=0, nps_detractors=4, surveys_invited=5, survey_responses=0, orders=3,
         revenue_minor=-1001, purchasers=2, returning_purchasers=2, sessions=1, sessions_timed=1, session_ms=1,
         feature_users=3),
    dict(events=2),  # every denominator 0
]


def _rows() -> list:
    rows = []
    for i, counters in enumerate(COUNTER_SETS):
        start = W0 + dt.timedelta(hours=i)
        rows.append(kpi_row(granularity_seconds=3600, window_start=start, window_end=start + dt.timedelta(hours=1),
                            slice="overall", partition=0, version=1, is_final=1, **counters))
    # feature adoption of a slice grouped by feature: denominator = active consumers of the slice without it
    rows.append(kpi_row(granularity_seconds=3600, window_start=W0, window_end=W0 + dt.timedelta(hours=1),
                        slice="feature", feature="wishlist", partition=0, version=1, is_final=1, active_consumers=3,
                        feature_users=3))
    return rows


def _view_rows(clickhouse_db, clickhouse_settings) -> list[dict]:
    database = clickhouse_db.connection.database
    settings = ch_settings(clickhouse_settings, database)
    migrate(settings)
    with ClickHouseSink(settings) as sink:
        sink.store(SinkBatch(kpi_rows=_rows()))
    rows = clickhouse_db.execute(f"SELECT {', '.join(SELECT_COLUMNS)} FROM `{database}`.kpi "
                                 "ORDER BY slice, window_start")
    return [dict(zip(SELECT_COLUMNS, row)) for row in rows]


def _inputs_of(row: dict) -> dict:
    """Only what the formulas may use: the counters and the view's denominator columns."""
    denominators = {k.denominator_column for k in CATALOGUE.values() if k.denominator_without}
    return {c: row[c] for c in (*COUNTERS, *denominators)}


def _close(a, b, *, abs_tol: float = 1e-9) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=abs_tol)


# ------------------------------------------------------------------------------------------- PromQL evaluation
_SUM = re.compile(r'copulse:kpi_(\w+):sum(\{[^}]*\})?')
_GUARD = re.compile(r"\(([^()]*) > 0\)")
_ARITHMETIC = re.compile(r"^[-+*/() .\de]+$")


def _gauges(counters: dict) -> dict[str, float]:
    """copulse:kpi_<metric>:sum of one window: the counter in the unit the worker exports it in."""
    return {METRIC_NAMES[c][0]: counters.get(c, 0) * METRIC_NAMES[c][1] for c in COUNTERS}


def evaluate_promql(expr: str, gauges: dict[str, float], slice_name: str) -> float | None:
    """The value of a recording rule over the summed gauges of one series (None: no sample)."""
    def metric(match: re.Match) -> str:
        selector = match.group(2) or ""
        excluded = re.search(r'slice!~"([^"]+)"', selector)
        if excluded and re.fullmatch(excluded.group(1), slice_name):
            raise LookupError(slice_name)
        return repr(float(gauges[match.group(1)]))

    try:
        text = _SUM.sub(metric, expr)
    except LookupError:
        return None
    while (guard := _GUARD.search(text)) is not None:
        inner = guard.group(1)
        assert _ARITHMETIC.match(inner), inner
        value = eval(inner)  # noqa: S307 - numbers and + - * / only (checked)
        if not value > 0:
            return None  # the guard drops the sample, as Prometheus does
        text = text[: guard.start()] + repr(float(value)) + text[guard.end():]
    assert _ARITHMETIC.match(text), text
    return eval(text)  # noqa: S307 - numbers and + - * / only (checked)


def _recording_rules() -> dict[str, str]:
    groups = yaml.safe_load(RECORDING_RULES.read_text())["groups"]
    return {rule["record"]: rule["expr"] for group in groups for rule in group["rules"]}


def test_catalogue_formulas_name_counters():
    for kpi in CATALOGUE.values():
        assert {counter for _, counter in kpi.numerator_terms} <= set(COUNTERS), kpi
        assert kpi.denominator is None or kpi.denominator in COUNTERS, kpi


def test_recording_rules_are_the_catalogue_kpis_of_the_view():
    ratios = {name.removeprefix("copulse:kpi_") for name in _recording_rules() if not name.endswith((":sum", ":max"))}
    assert ratios == {k.name for k in VIEW_KPIS if k.name not in COUNTERS}


@pytest.mark.integration
def test_sql_view_promql_and_python_agree_with_the_catalogue(clickhouse_db, clickhouse_settings):
    rules = _recording_rules()
    rows = _view_rows(clickhouse_db, clickhouse_settings)
    assert len(rows) == len(COUNTER_SETS) + 1
    for row in rows:
        where = f"{row['slice']} {row['window_start']}"
        inputs = _inputs_of(row)
        scored = kpi_inputs(row)
        for kpi in VIEW_KPIS:
            python = kpi.value(inputs)
            # the view rounds aov to the cent (half away from zero)
            assert _close(row[kpi.name], python, abs_tol=0.005 if kpi.unit == "money" else 1e-9), \
                f"{kpi.name} of {where}: view {row[kpi.name]!r}, catalogue {python!r}"
            if kpi.name in SCORECARD_KPIS:
                assert _close(scored[kpi.name].value, row[kpi.name]), f"{kpi.name} of {where}: VCI input"
                assert scored[kpi.name].sample == float(row[kpi.sample_column])
            record = f"copulse:kpi_{kpi.name}"
            if record not in rules:
                continue
            promql = evaluate_promql(rules[record], _gauges(inputs), row["slice"])
            if kpi.denominator_without in slice_dimensions(row["slice"]):
                assert promql is None, f"{record} must leave slice {row['slice']} out"
                continue
            assert _close(promql, python, abs_tol=1e-9), f"{record} of {where}: PromQL {promql!r}, catalogue {python!r}"
