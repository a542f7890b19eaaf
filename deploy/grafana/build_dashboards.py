#!/usr/bin/env python3
"""Generate the Grafana dashboards of copulse (deploy/grafana/dashboards/*.json).

    python deploy/grafana/build_dashboards.py          rewrite the JSON files
    python deploy/grafana/build_dashboards.py --check  exit 1 if a committed file differs

Edit this file (queries, panels), not the JSON; KPI panels follow the catalogue
(copulse/scorecard/catalogue.py) and their thresholds are the targets of the default scorecard
(copulse/scorecard/default.yaml) for 1h windows: tests/test_dashboards.py fails when
the committed JSON differs from what this script generates, and runs every query against a real ClickHouse.

ClickHouse panels use the official plugin (grafana-clickhouse-datasource, uid ``copulse-clickhouse``) in SQL
mode with its macros ($__timeFilter(col), $__fromTime, $__toTime, $__interval_s) and read the views of
schemas/clickhouse (kpi_final, kpi, dead_letter_summary) or the raw event tables, unqualified: the data
source's default database is ``copulse``. The SQL is written for ClickHouse 18.16 and current releases alike
(the tests run it on both and compare the rows); an ORDER BY before a LIMIT ends with a unique key, so ties
never make a panel show different rows on different releases.

Enterprise-side and long-term panels (the feedback loop, the idea funnel, lifecycle and retention) read the views
of 0006_loyalty.sql and 0008_feedback_loop.sql (docs/loyalty.md, docs/feedback-loop.md) per ``period`` (a custom
variable: day, week, month; periods are UTC calendar periods, so the time range selects the periods that overlap
it); those views have no dimensions, so the KPI filters do not apply to them.

Filters: ``granularity`` (window seconds) and ``channel``, ``region``, ``category``, ``product`` (All =
``__all``). KPI panels read the slice that groups by exactly the chosen dimensions, in the order of
copulse.settings.DIMENSIONS (none -> ``overall``, channel -> ``channel``, channel and region ->
``channel+region``, product -> ``product_id``, ...). A combination that is not a configured slice
(COPULSE_SLICES) shows "No data". Breakdown panels (by channel, by region, ...) read their own slice and only
follow granularity and time. Raw-event panels (ideas, low ratings) follow every filter freely.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from copulse.scorecard.catalogue import CATALOGUE, VIEW_KPIS, Kpi
from copulse.scorecard.definition import load_scorecard
from copulse.settings import DIMENSIONS, duration_seconds
from deploy.generated import write_or_check

OUT = HERE / "dashboards"

CH = {"type": "grafana-clickhouse-datasource", "uid": "copulse-clickhouse"}
PROM = {"type": "prometheus", "uid": "copulse-prometheus"}
ALL = "__all"
CURRENCY = "currencyEUR"  # unit of revenue and AOV panels; match COPULSE_CURRENCY

#: window size of the targets shown as thresholds: the default of the dashboards' Window variable
TARGET_WINDOW = "1h"


def scorecard_targets(granularity: str = TARGET_WINDOW) -> dict[str, float]:
    """KPI -> target of the shipped default scorecard (copulse/scorecard/default.yaml) for ``granularity``
    windows: the thresholds of the KPI panels, red below and green at or above the target."""
    targets = {}
    for perspective in load_scorecard().targets(duration_seconds(granularity)):
        for kpi in perspective.kpis:
            if kpi.direction != "higher":
                raise ValueError(f"{kpi.name}: lower-is-better targets need inverted thresholds here")
            targets[kpi.name] = kpi.target
    return targets


#: KPI -> target of the default scorecard (KPIs it does not score have no threshold)
TARGETS: dict[str, float] = scorecard_targets()

#: Grafana variable name of a dimension column, where it differs from the column
VARIABLE_NAMES = {"product_id": "product"}
#: Grafana variable -> KPI column of the dimensions the dashboards filter by, in the order of DIMENSIONS
DIMS: tuple[tuple[str, str], ...] = tuple(
    (VARIABLE_NAMES.get(column, column), column) for column in DIMENSIONS if column in ("channel", "region",
                                                                                        "category", "product_id")
)

# ------------------------------------------------------------------------------------------------ SQL
PICKED = (
    "arrayStringConcat(arrayFilter(d -> d != '', ["
    + ", ".join(f"if('${{{var}}}' = '{ALL}', '', '{col}')" for var, col in DIMS)
    + "]), '+')"
)
KPI_FILTER = (
    "granularity_seconds = ${granularity}\n"
    "  AND $__timeFilter(window_start)\n"
    "  AND slice = if(picked = '', 'overall', picked)\n"
    + "".join(f"  AND {col} = if('${{{var}}}' = '{ALL}', '', '${{{var}}}')\n" for var, col in DIMS)
)
RAW_FILTER = "$__timeFilter(occurred_at)\n" + "".join(
    f"  AND ('${{{var}}}' = '{ALL}' OR {col} = '${{{var}}}')\n" for var, col in DIMS
)


def kpi_sql(columns: str, view: str = "kpi_final") -> str:
    """Time series of the chosen slice (see module docstring)."""
    return f"WITH {PICKED} AS picked\nSELECT\n  window_start AS time,\n  {columns}\nFROM {view}\nWHERE {KPI_FILTER}ORDER BY time"


def breakdown_sql(slice_name: str, label: str, value: str) -> str:
    """One series per value of ``label`` (the plugin turns long time series into one series per label)."""
    return (
        f"SELECT\n  window_start AS time,\n  {label},\n  {value}\nFROM kpi_final\n"
        f"WHERE granularity_seconds = ${{granularity}}\n  AND $__timeFilter(window_start)\n  AND slice = '{slice_name}'\n"
        f"ORDER BY time, {label}"
    )


def top_products_sql(columns: str, order: str) -> str:
    return (
        f"SELECT\n  product_id,\n  {columns}\nFROM kpi_final\n"
        "WHERE granularity_seconds = ${granularity}\n  AND $__timeFilter(window_start)\n  AND slice = 'product_id'\n"
        f"GROUP BY product_id\nORDER BY {order} DESC, product_id\nLIMIT 20"
    )


def variable_sql(column: str, slice_name: str) -> str:
    # kpi_windows, not a view: DISTINCT dimension values are duplicate-proof and the primary key
    # (granularity_seconds, window_start, slice, ...) keeps this cheap; the views aggregate everything
    return f"SELECT DISTINCT {column} FROM kpi_windows WHERE slice = '{slice_name}' ORDER BY {column}"


#: the periods of the loyalty and feedback-loop views (docs/loyalty.md): the values of the ``period`` variable
PERIODS = ("day", "week", "month")
#: periods overlapping the dashboard's time range (period_start: the period's first day, a Date)
PERIOD_FILTER = (
    "period = '${period}'\n"
    "  AND period_start <= toDate($__toTime)\n"
    "  AND period_start >= multiIf('${period}' = 'week', toMonday(toDate($__fromTime)), '${period}' = 'month', "
    "toStartOfMonth(toDate($__fromTime)), toDate($__fromTime))\n"
)


def period_sql(columns: str, view: str, start: str = "period_start", where: str = "") -> str:
    """Time series of a per-period view (see the module docstring): one point per period, at its first day (UTC)."""
    extra = f"  AND {where}\n" if where else ""
    return (f"SELECT\n  toDateTime({start}, 'UTC') AS time,\n  {columns}\nFROM {view}\n"
            f"WHERE {PERIOD_FILTER.replace('period_start', start)}{extra}ORDER BY time")


GRANULARITY_SQL = (
    "SELECT DISTINCT granularity_seconds AS value, multiIf(granularity_seconds % 86400 = 0, "
    "concat(toString(intDiv(granularity_seconds, 86400)), 'd'), granularity_seconds % 3600 = 0, "
    "concat(toString(intDiv(granularity_seconds, 3600)), 'h'), granularity_seconds % 60 = 0, "
    "concat(toString(intDiv(granularity_seconds, 60)), 'm'), concat(toString(granularity_seconds), 's')) AS text "
    "FROM kpi_windows ORDER BY value"
)


# ------------------------------------------------------------------------------------------------ JSON helpers
class Layout:
    """Places panels left to right, top to bottom on Grafana's 24-column grid."""

    def __init__(self) -> None:
        self.x = self.y = self.row_h = 0
        self.next_id = 1

    def place(self, w: int, h: int) -> dict:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def newline(self) -> None:
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0

    def id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def ch_target(sql: str, table: bool = False, ref: str = "A") -> dict:
    return {
        "refId": ref,
        "datasource": CH,
        "editorType": "sql",
        "format": 1 if table else 0,  # sqlutil: 0 time series, 1 table
        "queryType": "table" if table else "timeseries",
        "rawSql": sql,
    }


def prom_target(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> dict:
    target = {"refId": ref, "datasource": PROM, "expr": expr, "legendFormat": legend or "__auto", "range": not instant}
    if instant:
        target["instant"] = True
        target["format"] = "table"
    return target


#: Grafana unit and decimals of a catalogue unit
UNITS: dict[str, tuple[str, int]] = {"count": ("short", 0), "rate": ("percentunit", 1), "score": ("none", 2),
                                     "nps": ("none", 0), "money": (CURRENCY, 2), "seconds": ("s", 0), "ratio": ("none", 2)}


def panel_unit(kpi: Kpi) -> tuple[str, int]:
    """Grafana unit and decimals of a KPI's panel (additive money, i.e. revenue, without cents)."""
    unit, decimals = UNITS[kpi.unit]
    return unit, 0 if kpi.unit == "money" and kpi.additive else decimals


def kpi_panel(name: str) -> tuple[str, int, float | None]:
    """Unit, decimals and target (None: the default scorecard has none) of a time series of one KPI."""
    return (*panel_unit(CATALOGUE[name]), TARGETS.get(name))


def thresholds(target: float | None) -> dict:
    if target is None:
        return {"mode": "absolute", "steps": [{"color": "blue", "value": None}]}
    return {"mode": "absolute", "steps": [{"color": "red", "value": None}, {"color": "green", "value": target}]}


def field_defaults(unit: str | None = None, decimals: int | None = None, target: float | None = None,
                   **custom) -> dict:
    defaults: dict = {"thresholds": thresholds(target), "color": {"mode": "palette-classic"}}
    if unit:
        defaults["unit"] = unit
    if decimals is not None:
        defaults["decimals"] = decimals
    if custom:
        defaults["custom"] = custom
    return {"defaults": defaults, "overrides": []}


class Dashboard:
    def __init__(self, uid: str, title: str, description: str, kpi_filters: bool = True,
                 refresh: str = "1m", time_from: str = "now-24h", periods: bool = False) -> None:
        self.layout = Layout()
        self.panels: list[dict] = []
        self.data = {
            "uid": uid,
            "title": title,
            "description": description,
            "tags": ["copulse"],
            "timezone": "utc",
            "editable": False,
            "graphTooltip": 1,
            "schemaVersion": 39,
            "version": 1,
            "refresh": refresh,
            "time": {"from": time_from, "to": "now"},
            "timepicker": {},
            "annotations": {"list": [
                {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
                 "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"},
            ]},
            "links": [{"type": "dashboards", "tags": ["copulse"], "asDropdown": True, "title": "copulse dashboards",
                       "includeVars": True, "keepTime": True}],
            "templating": {"list": (variables() if kpi_filters else []) + ([period_variable()] if periods else [])},
            "panels": self.panels,
        }

    def add(self, panel_type: str, title: str, targets: list[dict], w: int = 12, h: int = 8,
            description: str = "", field_config: dict | None = None, options: dict | None = None) -> dict:
        panel = {
            "id": self.layout.id(),
            "type": panel_type,
            "title": title,
            "description": description,
            "gridPos": self.layout.place(w, h),
            "datasource": targets[0]["datasource"] if targets else CH,
            "targets": targets,
            "fieldConfig": field_config or field_defaults(),
            "options": options or {},
        }
        self.panels.append(panel)
        return panel

    def row(self, title: str) -> None:
        self.layout.newline()
        self.panels.append({"id": self.layout.id(), "type": "row", "title": title, "collapsed": False,
                            "gridPos": self.layout.place(24, 1), "panels": []})
        self.layout.newline()

    def text(self, content: str, h: int = 3) -> None:
        self.layout.newline()
        self.panels.append({"id": self.layout.id(), "type": "text", "title": "", "gridPos": self.layout.place(24, h),
                            "options": {"mode": "markdown", "content": content}})
        self.layout.newline()

    # --- common panel kinds ---
    def stat(self, title: str, column: str, unit: str | None = None, decimals: int | None = None,
             target: float | None = None, w: int = 4, description: str = "") -> None:
        text = description or (f"Latest closed window; target {target:g} (thresholds)." if target is not None
                               else "Latest closed window.")
        self.add("stat", title, [ch_target(kpi_sql(column))], w=w, h=5, description=text,
                 field_config=field_defaults(unit, decimals, target),
                 options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                          "graphMode": "area", "colorMode": "background" if target is not None else "value",
                          "justifyMode": "auto", "textMode": "auto", "orientation": "auto"})

    def view_stat(self, title: str, sql: str, unit: str | None = None, decimals: int | None = None,
                  w: int = 4, description: str = "") -> None:
        """A figure of a view with one row (a table query: no time column)."""
        self.add("stat", title, [ch_target(sql, table=True)], w=w, h=5, description=description,
                 field_config=field_defaults(unit, decimals),
                 options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                          "graphMode": "none", "colorMode": "value", "justifyMode": "auto", "textMode": "auto",
                          "orientation": "auto"})

    def series(self, title: str, sql: str, unit: str | None = None, decimals: int | None = None,
               target: float | None = None, w: int = 12, h: int = 8, bars: bool = False, stack: bool = False,
               description: str = "", table: bool = False) -> None:
        custom: dict = {"drawStyle": "bars" if bars else "line", "lineWidth": 2, "fillOpacity": 60 if bars else 10,
                        "showPoints": "auto", "spanNulls": False}
        if stack:
            custom["stacking"] = {"mode": "normal", "group": "A"}
        if target is not None:
            custom["thresholdsStyle"] = {"mode": "line"}
            description = (description + " " if description else "") + f"Dashed line: target {target:g}."
        fc = field_defaults(unit, decimals, target, **custom)
        self.add("timeseries", title, [ch_target(sql, table=table)], w=w, h=h, description=description,
                 field_config=fc, options={"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                                           "tooltip": {"mode": "multi", "sort": "desc"}})

    def table(self, title: str, sql: str, w: int = 12, h: int = 8, description: str = "",
              overrides: list[dict] | None = None) -> None:
        fc = field_defaults()
        fc["overrides"] = overrides or []
        self.add("table", title, [ch_target(sql, table=True)], w=w, h=h, description=description, field_config=fc,
                 options={"showHeader": True, "cellHeight": "sm", "footer": {"show": False}})

    def prom(self, title: str, exprs: list[tuple[str, str]], unit: str | None = None, w: int = 12, h: int = 8,
             description: str = "", stack: bool = False, panel_type: str = "timeseries",
             target: float | None = None) -> None:
        targets = [prom_target(e, legend, ref=chr(65 + i)) for i, (e, legend) in enumerate(exprs)]
        custom: dict = {"drawStyle": "line", "lineWidth": 2, "fillOpacity": 10, "showPoints": "never"}
        if stack:
            custom["stacking"] = {"mode": "normal", "group": "A"}
        if target is not None:
            custom["thresholdsStyle"] = {"mode": "line"}
        fc = field_defaults(unit, None, target, **(custom if panel_type == "timeseries" else {}))
        options = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                   "tooltip": {"mode": "multi", "sort": "desc"}} if panel_type == "timeseries" else {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}, "graphMode": "area",
            "colorMode": "background", "justifyMode": "auto", "textMode": "auto", "orientation": "auto"}
        self.add(panel_type, title, targets, w=w, h=h, description=description, field_config=fc, options=options)

    def json(self) -> dict:
        return self.data


def ch_variable(name: str, label: str, sql: str, include_all: bool = True, current: dict | None = None) -> dict:
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": CH,
        "query": sql,
        "definition": sql,
        "refresh": 1,
        "sort": 0,
        "multi": False,
        "includeAll": include_all,
        **({"allValue": ALL} if include_all else {}),
        "current": current or ({"selected": True, "text": "All", "value": "$__all"} if include_all else {}),
        "options": [],
        "hide": 0,
    }


def variables() -> list[dict]:
    return [
        ch_variable("granularity", "Window", GRANULARITY_SQL, include_all=False,
                    current={"selected": True, "text": "1h", "value": "3600"}),
        *(ch_variable(var, var.capitalize(), variable_sql(column, column)) for var, column in DIMS),
    ]


def period_variable() -> dict:
    """The custom ``period`` variable of the loyalty and feedback-loop panels (no query: a fixed list)."""
    options = [{"selected": value == "week", "text": value, "value": value} for value in PERIODS]
    return {"type": "custom", "name": "period", "label": "Period", "query": ",".join(PERIODS),
            "current": {"selected": True, "text": "week", "value": "week"}, "options": options,
            "multi": False, "includeAll": False, "hide": 0}


FILTER_NOTE = (
    "Closed windows of the chosen size (**Window**). KPI panels show the slice matching the filters: none, "
    "**Channel**, **Region**, both, **Category** or **Product** (combinations that are not a configured slice, "
    "COPULSE_SLICES, show *No data*). Panels *by channel / region / category / feature* ignore the dimension "
    "filters. Ratios are numerator / denominator of the window (views `kpi` / `kpi_final`)."
)


# ------------------------------------------------------------------------------------------------ dashboards
RATES_TREND = ("participation_rate", "csat_pct", "survey_response_rate", "returning_purchaser_rate", "feature_adoption")


def scorecard() -> dict:
    d = Dashboard("copulse-scorecard", "Co-creation scorecard",
                  "All value co-creation KPIs of the chosen window size, with targets and trend.")
    d.text(FILTER_NOTE)
    d.row("Latest closed window (sparkline: trend over the time range)")
    for kpi in VIEW_KPIS:
        d.stat(kpi.label, kpi.name, *panel_unit(kpi), TARGETS.get(kpi.name))
    d.row("Trend")
    d.series("Participation, satisfaction and loyalty rates", kpi_sql(", ".join(RATES_TREND)),
             "percentunit", 1, description="Targets: " + ", ".join(
                 f"{k} {TARGETS[k]:g}" for k in RATES_TREND if k in TARGETS))
    d.series("CSAT (average) and NPS", kpi_sql("csat_avg, nps"), "none", 2,
             description=f"Targets: CSAT {TARGETS['csat_avg']:g}, NPS {TARGETS['nps']:g}.")
    d.series("Revenue", kpi_sql("revenue"), CURRENCY, 0, bars=True)
    d.series("Orders, purchasers and active consumers", kpi_sql("orders, purchasers, active_consumers"), "short", 0)
    d.row("Every closed window")
    d.table("Scorecard per window",
            "WITH " + PICKED + " AS picked\nSELECT\n  window_start,\n  window_end,\n  slice,\n  active_consumers,\n"
            "  participation_rate,\n  csat_avg,\n  csat_pct,\n  nps,\n  survey_response_rate,\n  orders,\n  revenue,\n"
            "  aov,\n  returning_purchaser_rate,\n  avg_session_seconds,\n  feature_adoption,\n  partials\n"
            f"FROM kpi_final\nWHERE {KPI_FILTER}ORDER BY window_start DESC\nLIMIT 500",
            w=24, h=10, description="partials: source partitions that contributed to the window.")
    return d.json()


def participation() -> dict:
    d = Dashboard("copulse-participation", "Participation",
                  "Who takes part in value co-creation (reviews, ideas, votes, surveys, beta use) and how consumers "
                  "use the product.")
    d.text(FILTER_NOTE)
    d.series("Participation rate", kpi_sql("participation_rate"), *kpi_panel("participation_rate"))
    d.series("Active and participating consumers", kpi_sql("active_consumers, participating_consumers"), "short", 0)
    d.series("Co-creation actions and ideas", kpi_sql("co_creation_actions, ideas_submitted"), "short", 0, bars=True)
    d.series("Participation rate by channel", breakdown_sql("channel", "channel", "participation_rate"),
             *kpi_panel("participation_rate"))
    d.series("Participation rate by region", breakdown_sql("region", "region", "participation_rate"),
             *kpi_panel("participation_rate"))
    d.series("Feature adoption by feature", breakdown_sql("feature", "feature", "feature_adoption"), "percentunit", 1,
             description="Users of the feature / active consumers of the window (slice 'feature').")
    d.series("Sessions and feature uses", kpi_sql("sessions, feature_uses"), "short", 0, bars=True)
    d.series("Average session", kpi_sql("avg_session_seconds"), *kpi_panel("avg_session_seconds"))
    d.table("Top products by co-creation actions",
            top_products_sql("sum(co_creation_actions) AS actions,\n  sum(ideas_submitted) AS ideas,\n"
                             "  sum(ratings) AS rating_count", "actions"),
            description="Sums over the windows of the time range (slice 'product_id').")
    d.table("Latest ideas",
            "SELECT\n  occurred_at AS time,\n  channel,\n  region,\n  product_id,\n  text\nFROM feedback\n"
            f"WHERE kind = 'idea'\n  AND {RAW_FILTER}ORDER BY occurred_at DESC, event_id\nLIMIT 1 BY event_id\nLIMIT 50",
            description="Raw feedback events (every filter applies).")
    return d.json()


def satisfaction() -> dict:
    d = Dashboard("copulse-satisfaction", "Satisfaction & feedback",
                  "CSAT, NPS and survey responses, with the feedback behind them.")
    d.text(FILTER_NOTE)
    d.series("CSAT (average rating 1-5)", kpi_sql("csat_avg"), *kpi_panel("csat_avg"))
    d.series("CSAT (share of ratings 4-5)", kpi_sql("csat_pct"), *kpi_panel("csat_pct"))
    d.series("NPS", kpi_sql("nps"), *kpi_panel("nps"))
    d.series("NPS promoters and detractors", kpi_sql("nps_promoters, nps_detractors, nps_responses"), "short", 0,
             bars=True)
    d.series("Survey response rate", kpi_sql("survey_response_rate"), *kpi_panel("survey_response_rate"))
    d.series("Surveys invited and answered, ratings", kpi_sql("surveys_invited, survey_responses, ratings"), "short", 0,
             bars=True)
    d.series("CSAT by channel", breakdown_sql("channel", "channel", "csat_avg"), *kpi_panel("csat_avg"))
    d.series("NPS by region", breakdown_sql("region", "region", "nps"), *kpi_panel("nps"))
    d.add("barchart", "Rating distribution",
          [ch_target("SELECT\n  toString(rating_score) AS rating,\n  count() AS ratings\nFROM\n(\n"
                     "  SELECT event_id, any(score) AS rating_score\n  FROM feedback\n"
                     f"  WHERE kind = 'rating'\n  AND {RAW_FILTER}  GROUP BY event_id\n)\n"
                     "GROUP BY rating\nORDER BY rating", table=True)],
          w=8, h=8, description="Raw rating events of the time range (every filter applies).",
          field_config=field_defaults("short", 0),
          options={"orientation": "vertical", "xField": "rating", "showValue": "auto",
                   "legend": {"showLegend": False, "displayMode": "list", "placement": "bottom"}})
    d.table("Low ratings, reviews and bug reports",
            "SELECT\n  occurred_at AS time,\n  kind,\n  score,\n  channel,\n  region,\n  product_id,\n  text\n"
            "FROM feedback\nWHERE kind IN ('rating', 'review', 'bug_report')\n  AND (kind != 'rating' OR score <= 2)\n"
            f"  AND {RAW_FILTER}ORDER BY occurred_at DESC, event_id\nLIMIT 1 BY event_id\nLIMIT 100",
            w=16, h=8, description="Raw feedback events, newest first (every filter applies).")
    return d.json()


def loyalty() -> dict:
    d = Dashboard("copulse-loyalty-revenue", "Loyalty & revenue",
                  "Orders, revenue, average order value and returning purchasers; lifecycle and retention cohorts.",
                  periods=True, refresh=HISTORY_REFRESH)
    d.text(FILTER_NOTE)
    d.series("Revenue", kpi_sql("revenue"), CURRENCY, 0, bars=True)
    d.series("Orders and purchasers", kpi_sql("orders, purchasers, returning_purchasers"), "short", 0)
    d.series("Average order value", kpi_sql("aov"), *kpi_panel("aov"))
    d.series("Returning purchaser rate", kpi_sql("returning_purchaser_rate"), *kpi_panel("returning_purchaser_rate"),
             description="Purchasers whose first purchase seen is before the window / purchasers.")
    d.series("Revenue by category", breakdown_sql("category", "category", "revenue"), CURRENCY, 0, bars=True,
             stack=True)
    d.series("Revenue by channel", breakdown_sql("channel", "channel", "revenue"), CURRENCY, 0, bars=True, stack=True)
    d.series("Returning purchaser rate by region", breakdown_sql("region", "region", "returning_purchaser_rate"),
             *kpi_panel("returning_purchaser_rate"))
    d.table("Top products by revenue",
            # aliases differ from column names: ClickHouse resolves aliases before columns
            top_products_sql("sum(revenue_minor) / 100 AS revenue_total,\n  sum(orders) AS order_count,\n"
                             "  if(order_count = 0, NULL, revenue_total / order_count) AS avg_order_value",
                             "revenue_total"),
            description="Sums over the windows of the time range (slice 'product_id'); revenue in the configured "
                        "currency.",
            overrides=[{"matcher": {"id": "byRegexp", "options": "revenue_total|avg_order_value"},
                        "properties": [{"id": "unit", "value": CURRENCY}, {"id": "decimals", "value": 2}]}])
    d.row("Lifecycle and retention (raw events per Period; the dimension filters do not apply)")
    d.text(LOYALTY_NOTE)
    d.series("Consumer lifecycle", period_sql(
        "new_consumers AS new,\n  returning_consumers AS returning,\n  resurrecting_consumers AS resurrecting,\n"
        "  -toInt64(dormant_consumers) AS dormant", "loyalty_lifecycle"), "short", 0, bars=True, stack=True,
        description="Consumers per period (view loyalty_lifecycle): new (first active period), returning (active in "
                    "the previous period too), resurrecting (back after a gap); dormant (active in the previous "
                    "period, not in this one) drawn below zero.")
    retention = ",\n  ".join(
        f"if(observed >= {n}, maxIf(retention_rate, periods_after = {n}), NULL) AS after_{n}"
        for n in range(1, RETENTION_PERIODS + 1))
    d.table("Retention cohorts",
            "SELECT\n  cohort,\n  cohort_start,\n  any(cohort_size) AS consumers,\n  max(periods_after) AS observed,\n"
            f"  {retention}\nFROM loyalty_cohorts\nWHERE {PERIOD_FILTER.replace('period_start', 'cohort_start')}"
            "GROUP BY cohort, cohort_start\nORDER BY cohort, cohort_start DESC\nLIMIT 100",
            w=24, h=10,
            description="Per cohort (first_seen: period of a consumer's first activity; first_purchase: of their first "
                        "purchase) starting in the time range: its size and the share of it active 1, 2, ... periods "
                        "later (view loyalty_cohorts; empty where the cohort is not that old yet).",
            overrides=[{"matcher": {"id": "byRegexp", "options": "after_.*"},
                        "properties": [{"id": "unit", "value": "percentunit"}, {"id": "decimals", "value": 1}]}])
    return d.json()


#: refresh of dashboards with panels of the loyalty and feedback-loop views: they read the whole stored history
#: (seconds per query on a year of events: docs/loyalty.md, docs/feedback-loop.md "Cost and limits")
HISTORY_REFRESH = "5m"
#: periods after its start for which the retention table shows a cohort's retention
RETENTION_PERIODS = 8
LOYALTY_NOTE = ("From the raw events (docs/loyalty.md), per UTC **Period** (day, week, month) overlapping the time "
                "range; the newest period is usually incomplete. These views read the whole history: the dashboard refreshes every "
                f"{HISTORY_REFRESH}.")
FEEDBACK_NOTE = (
    "The enterprise side from the raw events (docs/feedback-loop.md), per UTC **Period**. Feedback-loop and funnel "
    "figures count in the period of the *feedback* or *idea* (its cohort), whenever the answer or status change came; "
    "the backlog and ages are as of the newest stored event time, never the wall clock. Alerts: "
    "CopulseFeedbackResponseTimeRegression, CopulseFeedbackDetractorBacklogGrowing (docs/monitoring.md). The views "
    f"read the whole history: the dashboard refreshes every {HISTORY_REFRESH}."
)
FUNNEL_STAGES = ("submitted", "reviewed", "planned", "in_progress", "shipped", "declined", "waiting")


def feedback_innovation() -> dict:
    d = Dashboard("copulse-feedback-innovation", "Feedback loop & innovation",
                  "Does the company answer its consumers, how fast, what is left unanswered, and what becomes of "
                  "their ideas.", kpi_filters=False, time_from="now-90d", periods=True, refresh=HISTORY_REFRESH)
    d.text(FEEDBACK_NOTE)
    d.row("Unanswered feedback now (as of the newest stored event; every period)")
    backlog = "SELECT\n  {}\nFROM feedback_loop_backlog"
    d.view_stat("Unanswered feedback", backlog.format("backlog"), "short", 0,
                description="Answerable feedback without a response or closed case (view feedback_loop_backlog).")
    d.view_stat("Unanswered detractors", backlog.format("backlog_detractors"), "short", 0,
                description="NPS or survey 0-6, rating or review 1-2, unanswered.")
    d.view_stat("Unanswered bug reports", backlog.format("backlog_bug_reports"), "short", 0)
    d.view_stat("Median age of the unanswered", backlog.format("median_age_seconds"), "s", 0)
    d.view_stat("Oldest unanswered", backlog.format("oldest_age_seconds"), "s", 0)
    d.view_stat("As of", backlog.format("toUInt64(as_of) * 1000 AS as_of_time"), "dateTimeAsIso", None,
                description="The newest event time stored in feedback or responses: what the figures are as of.")
    d.row("Feedback loop per period of the feedback")
    d.series("Response rates", period_sql(
        "response_rate,\n  detractor_response_rate,\n  bug_report_response_rate,\n  detractor_follow_up_rate_48h",
        "feedback_loop"), "percentunit", 1,
        description="Answered / answerable feedback of the period, overall, of detractors and of bug reports; "
                    "detractors followed up within 48 h of those at least 48 h old (view feedback_loop).")
    d.series("Time to first response", period_sql("median_response_seconds AS median,\n  p90_response_seconds AS p90",
                                                  "feedback_loop"), "s", 0,
             description="Exact median and p90 of the delay from feedback to its first response, of the answered "
                         "feedback of the period (the newest periods hold only the answers given so far).")
    d.series("Feedback, answers and backlog", period_sql(
        "answerable_feedback AS answerable,\n  answered_feedback AS answered,\n  backlog AS unanswered,\n"
        "  detractor_feedback - detractors_answered AS unanswered_detractors", "feedback_loop"), "short", 0, bars=True,
        description="Answerable feedback of the period, answered and still unanswered (all and detractors).")
    d.series("Age of the unanswered", period_sql(
        "backlog_median_age_seconds AS median_age,\n  backlog_oldest_age_seconds AS oldest_age", "feedback_loop"),
        "s", 0, description="Age (as of the newest stored event) of the unanswered feedback of the period.")
    d.row("Idea funnel per period of submission")
    d.series("Idea funnel", period_sql(",\n  ".join(FUNNEL_STAGES), "idea_funnel"), "short", 0, bars=True,
             description="Ideas submitted in the period and how far they got: reviewed (any status change), planned, "
                         "in progress, shipped (reached that stage or a later one), declined (current status), "
                         "waiting (no status change yet) (view idea_funnel).")
    d.series("Adoption rate", period_sql("adoption_rate", "idea_funnel"), "percentunit", 1,
             description="Shipped / submitted ideas of the period.")
    d.series("Time from submission to shipped", period_sql(
        "median_seconds_to_ship AS median,\n  p90_seconds_to_ship AS p90", "idea_funnel"), "s", 0)
    d.series("Votes per idea", period_sql("votes / submitted AS votes_per_idea,\n  voters_per_idea", "idea_funnel"),
             "none", 2, description="Votes and distinct voters per idea submitted in the period.")
    d.series("Status changes by status", period_sql("status,\n  status_changes", "idea_status_changes")
             .replace("ORDER BY time", "ORDER BY time, status"), "short", 0, bars=True, stack=True,
             description="What the product team did per period of the change (view idea_status_changes).")
    d.table("You said, we did",
            "SELECT\n  shipped_at,\n  submitted_at,\n  seconds_to_ship,\n  supporters,\n  votes,\n  product_id,\n"
            "  text\nFROM ideas_shipped\nWHERE $__timeFilter(shipped_at)\nORDER BY shipped_at DESC, idea_id\nLIMIT 100",
            description="Ideas shipped in the time range with the consumers who proposed or voted for them "
                        "(supporters; view ideas_shipped).",
            overrides=[{"matcher": {"id": "byName", "options": "seconds_to_ship"},
                        "properties": [{"id": "unit", "value": "s"}]}])
    d.table("Enterprise events in no figure",
            "SELECT\n  kind,\n  reason,\n  sum(responses) AS events\nFROM feedback_loop_unmatched_responses\n"
            f"WHERE {PERIOD_FILTER}GROUP BY kind, reason\nORDER BY events DESC, kind, reason",
            description="Responses and status changes about feedback copulse does not hold (unknown_feedback: older "
                        "than the stored history, or lost), about a survey invitation or vote (not_answerable), or "
                        "a status change of a non-idea (not_an_idea) (view feedback_loop_unmatched_responses).")
    d.row("Feedback-loop gauges (Prometheus: the scoring job, as of the newest stored event)")
    d.prom("Time to first response of the last 24 h and its baseline",
           [('max by (period, percentile) (copulse_feedback_response_seconds)', "p{{percentile}} {{period}}")], "s",
           description="First responses sent in the last 24 h (recent) and the 7 days before (baseline); alert "
                       "CopulseFeedbackResponseTimeRegression.")
    d.prom("Unanswered feedback of the last 7 days",
           [('max by (class) (copulse_feedback_backlog_recent)', "{{class}}")], "short",
           description="Alert CopulseFeedbackDetractorBacklogGrowing watches the detractors.")
    return d.json()


def rate(metric: str, by: str = "") -> str:
    inner = f"rate({metric}[$__rate_interval])"
    return f"sum by ({by}) ({inner})" if by else f"sum({inner})"


def pipeline() -> dict:
    d = Dashboard("copulse-pipeline", "Pipeline health",
                  "Worker throughput, watermarks, dead letters, late events and the ClickHouse sink.",
                  kpi_filters=False, refresh="30s", time_from="now-3h")
    d.row("Workers and alerts")
    d.prom("Workers up", [('sum(up{job="copulse"})', "workers up")], "short", w=4, h=5, panel_type="stat")
    d.prom("Firing copulse alerts", [('count(ALERTS{alertname=~"Copulse.*", alertstate="firing"}) or vector(0)',
                                      "firing")], "short", w=4, h=5, panel_type="stat", target=1)
    d.prom("Sink backpressure", [("max(copulse_sink_backpressure)", "backpressure")], "short", w=4, h=5,
           panel_type="stat", target=1,
           description="1 while the sink waits for ClickHouse; consumption is paused meanwhile.")
    d.prom("Watermark lag (newest)", [("time() - max(copulse_watermark_timestamp_seconds)", "lag")], "s", w=4, h=5,
           panel_type="stat", target=900)
    d.prom("Pending messages", [("sum(copulse_pending_messages)", "pending")], "short", w=4, h=5, panel_type="stat")
    d.prom("Open windows", [("sum by (granularity) (copulse_windows_open)", "{{granularity}} s")], "short", w=4, h=5,
           panel_type="stat")
    d.row("Throughput")
    d.prom("Messages consumed per second by topic", [(rate("copulse_events_consumed_total", "topic"), "{{topic}}")],
           "reqps", stack=True)
    d.prom("Valid messages by outcome", [(rate("copulse_events_processed_total", "outcome"), "{{outcome}}")], "reqps",
           stack=True, description="folded into windows, duplicate (event_id seen), late, window_closed.")
    d.prom("KPI rows emitted and stored per second",
           [(rate("copulse_kpi_rows_emitted_total", "final"), "emitted final={{final}}"),
            (rate("copulse_sink_rows_total", "table"), "stored {{table}}")], "reqps")
    d.prom("Flushes per second", [(rate("copulse_flushes_total"), "flushes")], "reqps",
           description="Every flush stores rows, persists state and commits offsets.")
    d.row("Event time")
    d.prom("Watermark lag by event type", [("max by (type) (copulse_watermark_lag_seconds)", "{{type}}")], "s",
           target=900, description="Wall clock minus the watermark, per source (max over partitions).")
    d.prom("Newest watermark behind the wall clock",
           [("time() - max by (type) (copulse_watermark_timestamp_seconds)", "{{type}}")], "s", target=900)
    d.prom("Processing latency (Kafka timestamp to handling)",
           [("histogram_quantile(0.5, sum by (le) (rate(copulse_processing_latency_seconds_bucket[$__rate_interval])))",
             "p50"),
            ("histogram_quantile(0.99, sum by (le) (rate(copulse_processing_latency_seconds_bucket[$__rate_interval])))",
             "p99")], "s")
    d.prom("Windows closed per second", [(rate("copulse_windows_closed_total", "granularity"), "{{granularity}} s")],
           "reqps")
    d.row("Dead letters and late events")
    d.prom("Dead-lettered per second by reason", [(rate("copulse_events_dead_lettered_total", "reason"), "{{reason}}")],
           "reqps", stack=True)
    d.prom("Dead-letter ratio by topic",
           [(("sum by (topic) (rate(copulse_events_dead_lettered_total[5m])) / "
              "(sum by (topic) (rate(copulse_events_consumed_total[5m])) > 0)"), "{{topic}}")],
           "percentunit", target=0.05, description="Alert CopulseDeadLetterRatioHigh above 5 % (thresholds.yml).")
    d.prom("Late events per second", [(rate("copulse_events_late_total", "type, reason"), "{{type}} {{reason}}")],
           "reqps", stack=True)
    d.series("Rejected messages per minute by reason (ClickHouse)",
             "SELECT\n  minute AS time,\n  concat(kind, ' ', reason) AS kind_reason,\n  sum(messages) AS rejected\n"
             "FROM dead_letter_summary\nWHERE $__timeFilter(minute)\nGROUP BY time, kind_reason\nORDER BY time, kind_reason",
             "short", 0, bars=True, stack=True, description="dead_letter_summary view: dlq and late, de-duplicated.")
    d.table("Rejected messages by topic and reason (ClickHouse)",
            "SELECT\n  kind,\n  topic,\n  reason,\n  sum(messages) AS rejected,\n  sum(value_bytes) AS bytes\n"
            "FROM dead_letter_summary\nWHERE minute >= toStartOfMinute($__fromTime) AND minute <= $__toTime\n"
            "GROUP BY kind, topic, reason\nORDER BY rejected DESC, kind, topic, reason\nLIMIT 100", w=24)
    d.row("ClickHouse sink")
    d.prom("Insert latency",
           [("histogram_quantile(0.5, sum by (le, table) (rate(copulse_sink_insert_duration_seconds_bucket[$__rate_interval])))",
             "p50 {{table}}"),
            ("histogram_quantile(0.99, sum by (le, table) (rate(copulse_sink_insert_duration_seconds_bucket[$__rate_interval])))",
             "p99 {{table}}")], "s")
    d.prom("Emit to store latency",
           [("histogram_quantile(0.99, sum by (le) (rate(copulse_emit_to_store_seconds_bucket[$__rate_interval])))", "p99"),
            ("histogram_quantile(0.5, sum by (le) (rate(copulse_emit_to_store_seconds_bucket[$__rate_interval])))", "p50")],
           "s", description="From a flush emitting KPI rows to the rows being stored.")
    d.prom("Sink errors per second by kind", [(rate("copulse_sink_errors_total", "kind"), "{{kind}}")], "reqps")
    d.prom("Sink backpressure over time", [("max by (instance) (copulse_sink_backpressure)", "{{instance}}")], "short")
    d.prom("Seconds since the last complete store",
           [("time() - max(copulse_sink_last_success_timestamp_seconds)", "since last store")], "s")
    d.series("Final emission delay per window (ClickHouse)",
             "SELECT\n  window_start AS time,\n  toString(granularity_seconds) AS granularity,\n"
             "  toUInt32(last_emitted_at) - toUInt32(window_end) AS emit_delay_seconds\n"
             "FROM kpi_final\nWHERE $__timeFilter(window_start)\n  AND slice = 'overall'\nORDER BY time",
             "s", 0, description="Seconds from a window's end to its final emission (lateness + idle + flush).")
    d.row("KPI export to Prometheus")
    d.prom("KPI label sets exported and dropped",
           [("sum by (slice) (copulse_kpi_series)", "exported {{slice}}"),
            ("sum by (slice) (increase(copulse_kpi_series_dropped_total[1h]))", "dropped last hour {{slice}}")],
           "short", description="Cap: COPULSE_METRIC_MAX_SERIES_PER_SLICE label sets per slice.")
    d.prom("CSAT and participation from Prometheus (1h windows)",
           [('copulse:kpi_csat_avg{granularity="3600", slice="overall"}', "CSAT"),
            ('copulse:kpi_participation_rate{granularity="3600", slice="overall"} * 5', "participation rate x5")],
           "none", description="Recording rules of deploy/prometheus/rules (what the KPI alerts watch).")
    return d.json()


DASHBOARDS = {
    "copulse-scorecard.json": scorecard,
    "copulse-participation.json": participation,
    "copulse-satisfaction.json": satisfaction,
    "copulse-loyalty-revenue.json": loyalty,
    "copulse-feedback-innovation.json": feedback_innovation,
    "copulse-pipeline.json": pipeline,
}


def render() -> dict[str, str]:
    return {name: json.dumps(build(), indent=2, ensure_ascii=False) + "\n" for name, build in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate deploy/grafana/dashboards/*.json")
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed JSON differs")
    args = parser.parse_args(argv)
    return write_or_check(render(), OUT, check=args.check, tool="build_dashboards",
                          command="python deploy/grafana/build_dashboards.py")


if __name__ == "__main__":
    sys.exit(main())
