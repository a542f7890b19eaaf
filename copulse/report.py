"""``copulse report``: a self-contained HTML report of the value co-creation scorecard over a time range.

    copulse report --from 2024-05-01T00:00Z --to 2024-05-02T00:00Z --granularity 1h --out report.html

Reads the final KPI windows of the range (``kpi_final``, read-only user) and scores every window with the
scorecard (``--scorecard``, else ``COPULSE_SCORECARD_FILE``, else the shipped default) with the same function the
worker uses (copulse/scorecard/index.py), so all periods are compared with the same targets. The HTML has every chart inlined
(SVG drawn by matplotlib), no external file or network access:

* headline: average and latest index, change over the range, revenue and orders of the range;
* the index over time, every perspective's score over time;
* participation trends (participation rate, co-creation actions per active consumer) and satisfaction trends
  (CSAT, NPS, survey response rate);
* feedback loop & innovation (response rates, time to first response, unanswered feedback, the idea funnel per
  submission cohort, "you said, we did") and loyalty (lifecycle per period, retention by first-seen cohort), from
  the views over the stored raw events (copulse/report_history.py; ``--period`` day, week or month);
* top and bottom products by their average index (slice ``product_id``), with key KPIs pooled over the range;
* a summary table: per perspective and KPI the average, minimum, latest and the target.

``--png DIR`` also writes every chart as a PNG file. Exit codes: 0 written, 1 ClickHouse problem, 2 bad option or
scorecard, 3 no final window in the range (the message says which range has data).
"""

from __future__ import annotations

import argparse
import datetime as dt
import html
import io
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from clickhouse_driver import errors as ch_errors

from copulse.history import PERIODS, auto_period
from copulse.readmodel import (
    SELECT_COLUMNS,
    UNREACHABLE,
    clickhouse_problem,
    dimension_filter,
    granularity_text,
    iso,
    parse_window_start,
    pooled_counters,
    reader_client,
    utc,
)
from copulse.report_history import ReportHistory, chart_makers, fetch_history
from copulse.report_history import render_html as history_html
from copulse.scorecard.catalogue import CATALOGUE, format_value
from copulse.scorecard.definition import Scorecard, ScorecardError, load_scorecard
from copulse.scorecard.index import VciResult, kpi_inputs, score_row
from copulse.settings import duration_seconds

UTC = dt.UTC
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NO_DATA = 0, 1, 2, 3
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


class ReportError(RuntimeError):
    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Window:
    start: dt.datetime
    row: dict
    result: VciResult


@dataclass
class ProductLine:
    product_id: str
    category: str
    windows: int
    scored: int
    index: float | None
    participation_rate: float | None
    csat_avg: float | None
    revenue: float
    orders: int


@dataclass
class ReportData:
    card: Scorecard
    granularity: int
    slice_name: str
    value: str | None
    since: dt.datetime
    until: dt.datetime
    windows: list[Window]
    products: list[ProductLine] = field(default_factory=list)
    product_note: str = ""
    currency: str = "EUR"
    history: ReportHistory | None = None


# ----------------------------------------------------------------------------------------------- data
def _where_dims(slice_name: str, value: str | None) -> tuple[str, dict]:
    try:
        return dimension_filter(slice_name, value)
    except ValueError as exc:
        raise ReportError(str(exc), EXIT_USAGE) from None


def fetch(client, database: str, card: Scorecard, granularity: int, slice_name: str, value: str | None,
          since: dt.datetime, until: dt.datetime, *, top: int = 5, period: str | None = None,
          progress=None) -> ReportData:
    """The report's data; ``period`` (day, week, month; default by the range's length) groups the feedback loop,
    idea funnel and loyalty sections."""
    where, params = _where_dims(slice_name, value)
    params.update(g=granularity, s=slice_name, lo=int(since.timestamp()), hi=int(until.timestamp()))
    rng = "window_start >= toDateTime(%(lo)s, 'UTC') AND window_start < toDateTime(%(hi)s, 'UTC')"
    _step(progress, f"reading final {granularity_text(granularity)} windows of slice {slice_name}")
    rows = client.execute(
        f"SELECT {', '.join(SELECT_COLUMNS)} FROM `{database}`.kpi_final "
        f"WHERE granularity_seconds = %(g)s AND slice = %(s)s AND {where} AND {rng} ORDER BY window_start",
        params, settings={"enable_optimize_predicate_expression": 1},
    )
    if not rows:
        raise ReportError(_no_data_message(client, database, granularity, slice_name, value, since, until),
                          EXIT_NO_DATA)
    _step(progress, f"scoring {len(rows)} windows")
    windows = []
    for r in rows:
        row = dict(zip(SELECT_COLUMNS, r))
        windows.append(Window(utc(row["window_start"]), row, score_row(card, row)))
    data = ReportData(card, granularity, slice_name, value, since, until, windows)
    _step(progress, "reading product windows")
    prows = client.execute(
        f"SELECT {', '.join(SELECT_COLUMNS)} FROM `{database}`.kpi_final "
        f"WHERE granularity_seconds = %(g)s AND slice = 'product_id' AND {rng}",
        params, settings={"enable_optimize_predicate_expression": 1},
    )
    if prows:
        _step(progress, f"scoring {len(prows)} product windows")
        data.products = _products([dict(zip(SELECT_COLUMNS, r)) for r in prows], card)
        shown = {p.product_id for p in data.products[:top] + data.products[-top:]}
        if shown:  # the product_id slice does not group by category: look it up in the raw purchases
            found = dict(client.execute(
                f"SELECT product_id, any(category) FROM `{database}`.purchases "
                "WHERE occurred_at >= toDateTime(%(lo)s, 'UTC') AND occurred_at < toDateTime(%(hi)s, 'UTC') "
                "AND product_id IN %(ids)s GROUP BY product_id", dict(params, ids=tuple(sorted(shown)))))
            for p in data.products:
                p.category = p.category or found.get(p.product_id, "")
        if not data.products:
            data.product_note = ("No product had an index in at least half of its windows in this range (too little "
                                 "data per product: try a coarser --granularity or a longer range).")
    else:
        data.product_note = ("No final windows of slice product_id in this range (is product_id in "
                             "COPULSE_SLICES?).")
    period = period or auto_period(since, until)
    _step(progress, f"reading the feedback loop, idea funnel and loyalty per {period}")
    data.history = fetch_history(client, database, period, since, until)
    return data


def _products(rows: list[dict], card: Scorecard) -> list[ProductLine]:
    by_product: dict[str, list[dict]] = {}
    for row in rows:
        by_product.setdefault(row["product_id"], []).append(row)
    out = []
    for product, prow in by_product.items():
        indexes = [score_row(card, r).index for r in prow]
        scored = [i for i in indexes if i is not None]
        pooled = pooled_counters(prow)
        out.append(ProductLine(
            product, _category(prow), len(prow), len(scored), statistics.fmean(scored) if scored else None,
            CATALOGUE["participation_rate"].value(pooled), CATALOGUE["csat_avg"].value(pooled),
            CATALOGUE["revenue"].value(pooled), pooled["orders"],
        ))
    # rank only products with an index in at least half of their windows: one lucky window ranks nobody
    ranked = [p for p in out if p.index is not None and p.scored * 2 >= p.windows]
    ranked.sort(key=lambda p: (-p.index, p.product_id))
    return ranked


def _category(rows: list[dict]) -> str:
    return next((r["category"] for r in rows if r.get("category")), "")


def _no_data_message(client, database, granularity, slice_name, value, since, until) -> str:
    what = f"slice {slice_name}" + (f" {value}" if value else "")
    asked = f"between {iso(since)} and {iso(until)}"
    have = client.execute(
        f"SELECT granularity_seconds, min(window_start), max(window_end), count() FROM `{database}`.kpi_final "
        "WHERE slice = %(s)s GROUP BY granularity_seconds ORDER BY granularity_seconds", {"s": slice_name},
    )
    same = [h for h in have if int(h[0]) == granularity]
    if same:
        _, lo, hi, n = same[0]
        return (f"no final {granularity_text(granularity)} window of {what} {asked}; final {granularity_text(granularity)} windows of "
                f"{slice_name} exist from {iso(lo)} to {iso(hi)} ({n} rows): pick --from/--to inside that range")
    if have:
        others = ", ".join(f"{granularity_text(int(g))} from {iso(lo)} to {iso(hi)}" for g, lo, hi, _ in have)
        return (f"no final {granularity_text(granularity)} window of {what} at all; slice {slice_name} has final windows of "
                f"other sizes: {others} (use --granularity)")
    return (f"no final window of slice {slice_name} in database {database} at all: run the worker and a producer "
            "(`make run`) or check COPULSE_CLICKHOUSE_URL")


def _step(progress, text: str) -> None:
    if progress is not None:
        progress(text)


# ----------------------------------------------------------------------------------------------- charts
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "svg.fonttype": "none", "font.size": 10, "axes.titlesize": 12, "axes.titleweight": "bold",
        "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
        "legend.frameon": False, "figure.dpi": 100,
    })
    return plt


def _time_axis(ax, data: ReportData) -> None:
    import matplotlib.dates as mdates

    span = (data.windows[-1].start - data.windows[0].start).total_seconds() if data.windows else 0
    fmt = "%H:%M" if span <= 86400 else "%m-%d %H:%M" if span <= 7 * 86400 else "%Y-%m-%d"
    ax.xaxis.set_major_formatter(mdates.DateFormatter(fmt, tz=UTC))
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(minticks=4, maxticks=9))
    ax.set_xlabel("window start (UTC)")


def _times(data: ReportData) -> list[dt.datetime]:
    return [w.start.replace(tzinfo=None) for w in data.windows]


def _nan(value) -> float:
    return math.nan if value is None else float(value)


def _marker(data: ReportData) -> dict:
    return {"marker": "o", "markersize": 3.5} if len(data.windows) <= 60 else {}


def chart_index(data: ReportData):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9.5, 3.4))
    values = [_nan(w.result.index) for w in data.windows]
    ax.plot(_times(data), values, color=PALETTE[0], linewidth=2, label="VCI", **_marker(data))
    ax.axhline(80, color="#2ca02c", linewidth=1, linestyle="--", label="80 = good")
    ax.axhline(50, color="#d62728", linewidth=1, linestyle=":", label="50 = weak")
    ax.set_ylim(0, 100)
    ax.set_ylabel("index (0–100)")
    ax.set_title("Value co-creation index over time")
    _time_axis(ax, data)
    ax.legend(loc="lower left", ncol=3, fontsize=9)
    return fig


def chart_perspectives(data: ReportData):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9.5, 3.6))
    for i, p in enumerate(data.card.targets(data.granularity)):
        values = [_nan(w.result.perspective(p.name).score) for w in data.windows]
        ax.plot(_times(data), values, color=PALETTE[i % len(PALETTE)], linewidth=1.6,
                label=f"{p.label} ({p.weight:g})", **_marker(data))
    ax.set_ylim(0, 100)
    ax.set_ylabel("score (0–100)")
    ax.set_title("Perspective scores over time (weight in the index in brackets)")
    _time_axis(ax, data)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3, fontsize=9)
    return fig


def _kpi_series(data: ReportData, name: str) -> list[float]:
    return [_nan(kpi_inputs(w.row)[name].value) for w in data.windows]


def chart_participation(data: ReportData):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9.5, 3.4))
    rate = [v * 100 for v in _kpi_series(data, "participation_rate")]
    ax.plot(_times(data), rate, color=PALETTE[2], linewidth=2, label="participation rate (%)", **_marker(data))
    ax.set_ylabel("participation rate (%)", color=PALETTE[2])
    ax.set_ylim(bottom=0)
    right = ax.twinx()
    right.plot(_times(data), _kpi_series(data, "co_creation_per_active_consumer"), color=PALETTE[4], linewidth=1.6,
               linestyle="--", label="co-creation actions per active consumer", **_marker(data))
    right.set_ylabel("actions per active consumer", color=PALETTE[4])
    right.set_ylim(bottom=0)
    right.grid(False)
    right.spines["right"].set_visible(True)
    ax.set_title("Participation and co-creation")
    _time_axis(ax, data)
    lines = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], loc="lower left", fontsize=9)
    return fig


def chart_satisfaction(data: ReportData):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9.5, 3.4))
    ax.plot(_times(data), _kpi_series(data, "csat_avg"), color=PALETTE[0], linewidth=2, label="CSAT (1–5)",
            **_marker(data))
    ax.set_ylim(1, 5)
    ax.set_ylabel("CSAT, average rating (1–5)", color=PALETTE[0])
    right = ax.twinx()
    right.plot(_times(data), _kpi_series(data, "nps"), color=PALETTE[1], linewidth=1.6, label="NPS (−100..100)",
               **_marker(data))
    right.plot(_times(data), [v * 100 for v in _kpi_series(data, "survey_response_rate")], color=PALETTE[7],
               linewidth=1.2, linestyle=":", label="survey response rate (%)", **_marker(data))
    right.set_ylim(-100, 100)
    right.set_ylabel("NPS / response rate (%)", color=PALETTE[1])
    right.grid(False)
    right.spines["right"].set_visible(True)
    ax.set_title("Satisfaction")
    _time_axis(ax, data)
    lines = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], loc="lower left", ncol=3, fontsize=9)
    return fig


def chart_products(data: ReportData, top: int):
    plt = _plt()
    best = data.products[:top]
    worst = [p for p in data.products[-top:] if p not in best]
    shown = best + worst
    fig, ax = plt.subplots(figsize=(9.5, 0.34 * len(shown) + 1.2))
    labels = [p.product_id + (f" ({p.category})" if p.category else "") for p in shown]
    colours = [PALETTE[2]] * len(best) + [PALETTE[3]] * len(worst)
    bars = ax.barh(range(len(shown)), [p.index for p in shown], color=colours)
    ax.set_yticks(range(len(shown)), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("average index over the range (0–100)")
    ax.set_title(f"Top {len(best)} (green) and bottom {len(worst)} (red) products by index")
    for rect, p in zip(bars, shown, strict=True):
        ax.text(rect.get_width() + 1, rect.get_y() + rect.get_height() / 2, f"{p.index:.1f}", va="center",
                fontsize=9)
    ax.grid(axis="y", alpha=0)
    fig.tight_layout()
    return fig


def svg_and_png(fig, png_path: Path | None) -> str:
    import matplotlib.pyplot as plt

    if not fig.get_tight_layout():
        fig.tight_layout()
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    if png_path is not None:
        fig.savefig(png_path, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: the SVG is inlined in HTML


# ----------------------------------------------------------------------------------------------- HTML
CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Helvetica,Arial,sans-serif;margin:0;background:#f4f6f8;
color:#1d2733}
main{max-width:1040px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:32px 0 8px;border-bottom:2px solid #dde3ea;padding-bottom:4px}
h3{font-size:16px;margin:20px 0 6px}
.meta{color:#5b6b7b;font-size:14px;margin-bottom:18px}
.cards{display:flex;gap:14px;flex-wrap:wrap}
.card{flex:1 1 0;background:#fff;border-radius:8px;padding:12px 14px;min-width:130px;box-shadow:0 1px 3px rgba(0,0,0,.08)}
.card .label{font-size:12px;color:#5b6b7b;text-transform:uppercase;letter-spacing:.04em}
.card .value{font-size:26px;font-weight:700;margin-top:2px}.card .sub{font-size:12px;color:#5b6b7b}
figure{background:#fff;border-radius:8px;padding:12px;margin:14px 0;box-shadow:0 1px 3px rgba(0,0,0,.08)}
figure svg{width:100%;height:auto}figcaption{font-size:13px;color:#5b6b7b;margin-top:4px}
table{border-collapse:collapse;width:100%;background:#fff;font-size:13px;box-shadow:0 1px 3px rgba(0,0,0,.08)}
th,td{padding:5px 9px;text-align:right;border-bottom:1px solid #e8ecf0}th{background:#eef2f6;font-weight:600}
td.l,th.l{text-align:left}tr.p td{background:#f7f9fb;font-weight:600}
.good{color:#1a7f37}.mid{color:#9a6700}.bad{color:#c62828}.na{color:#8a96a3;font-style:italic}
.note{font-size:13px;color:#5b6b7b}
"""


def _cls(score: float | None) -> str:
    if score is None:
        return "na"
    return "good" if score >= 80 else "mid" if score >= 50 else "bad"


def _num(value: float | None, unit: str = "index") -> str:
    return format_value(value, unit, na='<span class="na">—</span>')


def _stats(values: list[float | None]) -> tuple[float | None, float | None, float | None, int]:
    present = [v for v in values if v is not None]
    if not present:
        return None, None, None, 0
    return statistics.fmean(present), min(present), values[-1], len(present)


def render_html(data: ReportData, charts: dict[str, str], top: int) -> str:
    card = data.card
    e = html.escape
    indexes = [w.result.index for w in data.windows]
    avg, low, _, n_scored = _stats(indexes)
    first = next((i for i in indexes if i is not None), None)
    latest = next((i for i in reversed(indexes) if i is not None), None)
    pooled = pooled_counters([w.row for w in data.windows])
    revenue, orders = CATALOGUE["revenue"].value(pooled), pooled["orders"]
    g = granularity_text(data.granularity)
    what = data.slice_name + (f" = {data.value}" if data.value else "")
    span = f"{iso(data.since)} – {iso(data.until)}"
    out = [(f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Value co-creation report "
           f"{e(span)}</title><style>{CSS}</style></head><body><main>")]
    out.append("<h1>Value co-creation report</h1>")
    out.append(f"<div class=\"meta\">{e(span)} · {g} windows · slice <b>{e(what)}</b> · scorecard "
               f"<b>{e(card.name)}</b> version <code>{e(card.version_id)}</code> · generated "
               f"{iso(dt.datetime.now(UTC))} by copulse report</div>")
    change = None if first is None or latest is None else latest - first
    cards = [
        ("average index", _num(avg), f"{n_scored} of {len(data.windows)} windows scored", _cls(avg)),
        ("latest index", _num(latest), f"window {data.windows[-1].start:%Y-%m-%d %H:%M} UTC", _cls(latest)),
        ("change over the range", "—" if change is None else f"{change:+.1f}", "latest minus first scored window",
         "" if change is None else "good" if change >= 0 else "bad"),
        ("lowest index", _num(low), "worst window of the range", _cls(low)),
        (f"revenue ({data.currency})", f"{revenue:,.0f}", f"{orders:,} orders", ""),
    ]
    out.append('<div class="cards">')
    for label, value, sub, cls in cards:
        out.append(f'<div class="card"><div class="label">{e(label)}</div><div class="value {cls}">{value}</div>'
                   f'<div class="sub">{e(sub)}</div></div>')
    out.append("</div>")
    sections = [
        ("index", "Value co-creation index",
         (f"Weighted mean of the perspective scores of each {g} window (0–100); gaps are windows with too little "
         f"data (fewer than {card.min_perspectives} perspective(s) with enough data).")),
        ("perspectives", "Perspectives",
         "Each perspective's score is the weighted mean of its KPIs' attainment against their targets (0–100)."),
        ("participation", "Participation and co-creation",
         ("Share of active consumers with a co-creation action (reviews, ideas, votes, survey answers, beta use, "
         "customisation, community posts) and co-creation actions per active consumer.")),
        ("satisfaction", "Satisfaction",
         "Average rating (CSAT, left axis), net promoter score and survey response rate (right axis)."),
    ]
    for key, title, caption in sections:
        out.append(f"<h2>{e(title)}</h2><figure>{charts[key]}<figcaption>{e(caption)}</figcaption></figure>")
    if data.history is not None:
        out.append(history_html(data.history, charts, top))
    out.append("<h2>Products</h2>")
    if data.products:
        out.append(f"<figure>{charts['products']}<figcaption>Average index of each product's {g} windows "
                   "(slice product_id) with enough data; KPIs below are pooled over the range."
                   "</figcaption></figure>")
        out.append(_products_table(data, top))
    else:
        out.append(f'<p class="note">{e(data.product_note)}</p>')
    out.append("<h2>Summary</h2>")
    out.append(_summary_table(data))
    out.append(f'<p class="note">Attainment per KPI: with a floor (value − floor) / (target − floor), without one '
               f'value / target (lower-is-better: target / value), clipped to 0–1. KPIs with a sample below their '
               f'minimum are left out and the weights renormalised; so are perspectives without such a KPI. '
               f'Scorecard file: {e(card.source)}.</p>')
    out.append("</main></body></html>")
    return "\n".join(out)


def _products_table(data: ReportData, top: int) -> str:
    best = data.products[:top]
    worst = [p for p in data.products[-top:] if p not in best]
    rows = [('<table><tr><th class="l">rank</th><th class="l">product</th><th class="l">category</th><th>index</th>'
            f'<th>windows scored</th><th>participation</th><th>CSAT</th><th>revenue ({data.currency})</th>'
            '<th>orders</th></tr>')]
    total = len(data.products)
    for rank, p in [(i + 1, p) for i, p in enumerate(best)] + [(total - len(worst) + i + 1, p)
                                                               for i, p in enumerate(worst)]:
        rows.append(f'<tr><td class="l">{rank}</td><td class="l">{html.escape(p.product_id)}</td>'
                    f'<td class="l">{html.escape(p.category)}</td><td class="{_cls(p.index)}">{_num(p.index)}</td>'
                    f'<td>{p.scored} / {p.windows}</td><td>{_num(p.participation_rate, "rate")}</td>'
                    f'<td>{_num(p.csat_avg, "score")}</td><td>{p.revenue:,.2f}</td><td>{p.orders:,}</td></tr>')
    rows.append("</table>")
    return "".join(rows)


def _summary_table(data: ReportData) -> str:
    rows = [('<table><tr><th class="l">perspective / KPI</th><th>weight</th><th>target</th><th>floor</th>'
            '<th>average</th><th>lowest</th><th>latest</th><th>avg attainment</th><th>windows with data</th></tr>')]
    idx = [w.result.index for w in data.windows]
    avg, low, last, n = _stats(idx)
    rows.append(f'<tr class="p"><td class="l">Value co-creation index</td><td></td><td></td><td></td>'
                f'<td class="{_cls(avg)}">{_num(avg)}</td><td>{_num(low)}</td><td>{_num(last)}</td><td></td>'
                f'<td>{n} / {len(idx)}</td></tr>')
    for p in data.card.targets(data.granularity):
        scores = [w.result.perspective(p.name).score for w in data.windows]
        avg, low, last, n = _stats(scores)
        rows.append(f'<tr class="p"><td class="l">{html.escape(p.label)}</td><td>{p.weight:g}</td><td></td><td></td>'
                    f'<td class="{_cls(avg)}">{_num(avg)}</td><td>{_num(low)}</td><td>{_num(last)}</td><td></td>'
                    f'<td>{n} / {len(scores)}</td></tr>')
        for k in p.kpis:
            scored = [w.result.kpi(k.name) for w in data.windows]
            values = [s.value if not s.insufficient else None for s in scored]
            attain = [s.attainment for s in scored]
            kavg, klow, klast, kn = _stats(values)
            aavg = _stats(attain)[0]
            unit = CATALOGUE[k.name].unit
            label = k.label + (f" ({data.currency})" if unit == "money" else "")
            target = ("≤ " if k.direction == "lower" else "") + _num(k.target, unit)
            rows.append(f'<tr><td class="l">&nbsp;&nbsp;{html.escape(label)}</td><td>{k.weight:g}</td>'
                        f'<td>{target}</td><td>{_num(k.floor, unit) if k.floor is not None else "—"}</td>'
                        f'<td>{_num(kavg, unit)}</td><td>{_num(klow, unit)}</td><td>{_num(klast, unit)}</td>'
                        f'<td class="{_cls(None if aavg is None else aavg * 100)}">'
                        f'{"—" if aavg is None else f"{aavg * 100:.0f} %"}</td><td>{kn} / {len(values)}</td></tr>')
    rows.append("</table>")
    return "".join(rows)


def build(data: ReportData, *, top: int = 5, png_dir: Path | None = None, progress=None) -> str:
    """The report's HTML; with ``png_dir`` every chart is also written there as PNG."""
    if png_dir is not None:
        png_dir.mkdir(parents=True, exist_ok=True)
    makers = {"index": chart_index, "perspectives": chart_perspectives, "participation": chart_participation,
              "satisfaction": chart_satisfaction}
    if data.products:
        makers["products"] = lambda d: chart_products(d, top)
    if data.history is not None:
        for name, make in chart_makers(data.history).items():
            makers[name] = lambda d, make=make: make(d.history)
    charts = {}
    for name, make in makers.items():
        _step(progress, f"drawing chart {name}")
        charts[name] = svg_and_png(make(data), png_dir / f"{name}.png" if png_dir else None)
    return render_html(data, charts, top)


# ----------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="since", type=parse_window_start, required=True,
                        help="first window start to include (ISO 8601, naive = UTC), e.g. 2024-05-01T00:00Z")
    parser.add_argument("--to", dest="until", type=parse_window_start, required=True,
                        help="windows starting before this time are included (ISO 8601)")
    parser.add_argument("--granularity", default="1h", help="window size (default 1h)")
    parser.add_argument("--slice", default="overall", help="slice (default overall)")
    parser.add_argument("--value", help="slice value(s) joined by '+', e.g. --slice channel --value web")
    parser.add_argument("--out", default="report.html", help="HTML file to write (default report.html)")
    parser.add_argument("--png", help="also write every chart as PNG into this directory")
    parser.add_argument("--top", type=int, default=5, help="top and bottom products to show (default 5)")
    parser.add_argument("--scorecard", help="scorecard YAML (default: COPULSE_SCORECARD_FILE or the shipped one)")
    parser.add_argument("--period", choices=PERIODS,
                        help="periods of the feedback loop, idea funnel and loyalty sections (default: day up to 2 "
                             "weeks of range, week up to 6 months, month beyond)")
    parser.epilog = ("exit codes: 0 written, 1 ClickHouse problem, 2 bad option or scorecard, 3 no final window in "
                     "the range (the message says which range has data)")


def run(args, settings) -> int:
    from rich.console import Console

    err = Console(stderr=True)
    try:
        card = load_scorecard(args.scorecard, settings=settings)
        granularity = duration_seconds(args.granularity)
        if args.until <= args.since:
            raise ValueError(f"--to ({iso(args.until)}) must be after --from ({iso(args.since)})")
        if args.top < 1:
            raise ValueError("--top must be at least 1")
    except (ScorecardError, ValueError) as exc:
        print(f"copulse report: {exc}", file=sys.stderr)
        return EXIT_USAGE
    client = reader_client(settings)
    out = Path(args.out)
    try:
        with err.status("copulse report: starting", spinner="dots") as status:
            def progress(text: str) -> None:
                status.update(f"copulse report: {text}")

            data = fetch(client, settings.clickhouse["database"], card, granularity, args.slice, args.value,
                         args.since, args.until, top=args.top, period=args.period, progress=progress)
            data.currency = settings.currency
            text = build(data, top=args.top, png_dir=Path(args.png) if args.png else None, progress=progress)
            progress(f"writing {out}")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text, encoding="utf-8")
    except ReportError as exc:
        print(f"copulse report: {exc}", file=sys.stderr)
        return exc.exit_code
    except (ch_errors.ServerException, *UNREACHABLE) as exc:
        print(f"copulse report: {clickhouse_problem(exc, settings)}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        client.disconnect()
    scored = sum(1 for w in data.windows if w.result.index is not None)
    print(f"copulse report: wrote {out} ({out.stat().st_size // 1024} KB): {len(data.windows)} {granularity_text(granularity)} "
          f"windows ({scored} with an index), {len(data.products)} products"
          + (f"; PNG charts in {args.png}" if args.png else ""))
    return EXIT_OK
