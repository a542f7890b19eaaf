"""The history-based sections of ``copulse report``: "Feedback loop & innovation" (the idea funnel per submission
cohort, the feedback loop per period of the feedback, "you said, we did") and "Loyalty" (lifecycle per period,
retention by first-seen cohort), read through copulse/history.py for the report's range, drawn with matplotlib and
rendered as HTML. The KPI windows of the rest of the report are streamed; these figures come from the views over
the stored raw events, are not sliced, and are as of the newest stored event.
"""

from __future__ import annotations

import datetime as dt
import html
from dataclasses import dataclass

from copulse.history import (
    FEEDBACK_LOOP,
    IDEA_FUNNEL,
    IDEAS_SHIPPED,
    LIFECYCLE,
    RETENTION,
    HistoryRange,
    IdeaSummary,
    LoopSummary,
    idea_summary,
    loop_summary,
    view_rows,
)
from copulse.readmodel import iso
from copulse.scorecard.catalogue import format_value

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
#: the funnel's bars, in order, with their colours
FUNNEL_STAGES = (("submitted", "#7f7f7f"), ("reviewed", "#1f77b4"), ("planned", "#9467bd"), ("shipped", "#2ca02c"),
                 ("declined", "#d62728"))
#: lifecycle states: those active in the period (stacked up) and the dormant ones (down)
LIFECYCLE_STATES = (("new_consumers", "new", "#1f77b4"), ("returning_consumers", "returning", "#2ca02c"),
                    ("resurrecting_consumers", "resurrecting", "#ff7f0e"))
#: the retention chart shows at most this many cohorts (the newest) and periods after each
RETENTION_CELLS = 16
NA = '<span class="na">—</span>'


@dataclass
class ReportHistory:
    period: str
    within: HistoryRange
    loop: LoopSummary
    ideas: IdeaSummary
    loop_periods: list[dict]
    funnel: list[dict]
    shipped: list[dict]
    lifecycle: list[dict]
    retention: list[dict]


def fetch_history(client, database: str, period: str, since: dt.datetime, until: dt.datetime) -> ReportHistory:
    within = HistoryRange(since, until)
    return ReportHistory(
        period, within, loop_summary(client, database, within), idea_summary(client, database, within),
        view_rows(client, database, FEEDBACK_LOOP, period=period, within=within),
        view_rows(client, database, IDEA_FUNNEL, period=period, within=within),
        view_rows(client, database, IDEAS_SHIPPED, within=within),
        view_rows(client, database, LIFECYCLE, period=period, within=within),
        view_rows(client, database, RETENTION, period=period, cohort="first_seen", within=within),
    )


# ----------------------------------------------------------------------------------------------- charts
def _period_labels(rows: list[dict], period: str, column: str = "period_start") -> list[str]:
    return [row[column].strftime("%Y-%m" if period == "month" else "%m-%d") for row in rows]


def chart_funnel(history: ReportHistory):
    import matplotlib.pyplot as plt

    rows = history.funnel
    fig, ax = plt.subplots(figsize=(9.5, 3.6))
    width = 0.8 / len(FUNNEL_STAGES)
    for i, (stage, colour) in enumerate(FUNNEL_STAGES):
        ax.bar([x + (i - (len(FUNNEL_STAGES) - 1) / 2) * width for x in range(len(rows))],
               [row[stage] for row in rows], width, label=stage, color=colour)
    ax.set_xticks(range(len(rows)), _period_labels(rows, history.period))
    ax.tick_params(axis="x", labelrotation=45 if len(rows) > 8 else 0)
    ax.set_xlabel(f"submission {history.period} (cohort)")
    ax.set_ylabel("ideas")
    ax.set_title("Idea funnel per submission cohort")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9)
    ax.grid(axis="x", alpha=0)
    return fig


def chart_feedback_loop(history: ReportHistory):
    import matplotlib.pyplot as plt

    rows = history.loop_periods
    x = range(len(rows))
    fig, (rates, delays) = plt.subplots(1, 2, figsize=(9.5, 3.4))
    for column, label, colour in (("response_rate", "all feedback", PALETTE[0]),
                                  ("detractor_response_rate", "detractors", PALETTE[3]),
                                  ("bug_report_response_rate", "bug reports", PALETTE[1])):
        rates.plot(x, [_pct(row[column]) for row in rows], marker="o", label=label, color=colour)
    rates.set_ylim(0, 105)
    rates.set_ylabel("answered (%)")
    rates.set_title("Response rate")
    rates.legend(fontsize=9)
    for column, label, colour in (("median_response_seconds", "median", PALETTE[0]),
                                  ("p90_response_seconds", "p90", PALETTE[4])):
        delays.plot(x, [_hours(row[column]) for row in rows], marker="o", label=label, color=colour)
    delays.set_ylabel("hours")
    delays.set_title("Time to first response")
    delays.legend(fontsize=9)
    for ax in (rates, delays):
        ax.set_xticks(x, _period_labels(rows, history.period))
        ax.set_xlabel(f"{history.period} of the feedback")
        ax.tick_params(axis="x", labelrotation=45 if len(rows) > 8 else 0)
    fig.tight_layout()
    return fig


def chart_lifecycle(history: ReportHistory):
    import matplotlib.pyplot as plt

    rows = history.lifecycle
    fig, ax = plt.subplots(figsize=(9.5, 3.6))
    x = range(len(rows))
    bottom = [0] * len(rows)
    for column, label, colour in LIFECYCLE_STATES:
        values = [row[column] for row in rows]
        ax.bar(x, values, 0.7, bottom=bottom, label=label, color=colour)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.bar(x, [-row["dormant_consumers"] for row in rows], 0.7, label="dormant", color=PALETTE[7])
    ax.axhline(0, color="#1d2733", linewidth=0.8)
    ax.set_xticks(x, _period_labels(rows, history.period))
    ax.tick_params(axis="x", labelrotation=45 if len(rows) > 8 else 0)
    ax.set_ylabel("consumers")
    ax.set_xlabel(history.period)
    ax.set_title("Lifecycle per period (dormant below the line)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9)
    ax.grid(axis="x", alpha=0)
    return fig


def retention_matrix(history: ReportHistory) -> tuple[list, list[list[float | None]], list[int]]:
    """(cohort starts, retention rates by cohort and periods after, cohort sizes) of the newest cohorts."""
    cohorts: dict = {}
    for row in history.retention:
        cohorts.setdefault(row["cohort_start"], {})[row["periods_after"]] = row
    starts = sorted(cohorts)[-RETENTION_CELLS:]
    width = min(RETENTION_CELLS, max((max(cells) for cells in cohorts.values()), default=-1) + 1)
    matrix = [[cohorts[s][a]["retention_rate"] if a in cohorts[s] else None for a in range(width)] for s in starts]
    sizes = [cohorts[s][0]["cohort_size"] for s in starts]
    return starts, matrix, sizes


def chart_retention(history: ReportHistory):
    import matplotlib.pyplot as plt
    import numpy as np

    starts, matrix, sizes = retention_matrix(history)
    values = np.array([[np.nan if v is None else v * 100 for v in row] for row in matrix], dtype=float)
    fig, ax = plt.subplots(figsize=(9.5, 0.36 * len(starts) + 1.6))
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=100, aspect="auto")
    for r, row in enumerate(values):
        for c, value in enumerate(row):
            if not np.isnan(value):
                ax.text(c, r, f"{value:.0f}", ha="center", va="center", fontsize=8,
                        color="white" if value >= 60 else "#1d2733")
    labels = [f"{s:%Y-%m-%d} ({n:,})" for s, n in zip(starts, sizes, strict=True)]
    ax.set_yticks(range(len(starts)), labels)
    ax.set_xticks(range(values.shape[1]))
    ax.set_xlabel(f"{history.period}s after the first-seen {history.period}")
    ax.set_ylabel(f"first-seen {history.period} (size)")
    ax.set_title("Retention by first-seen cohort (% of the cohort active)")
    ax.grid(False)
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02)
    return fig


def chart_makers(history: ReportHistory) -> dict:
    """The chart functions (each takes the ReportHistory) by name, for the sections that have rows."""
    makers = {}
    if history.funnel:
        makers["idea_funnel"] = chart_funnel
    if history.loop_periods:
        makers["feedback_loop"] = chart_feedback_loop
    if history.lifecycle:
        makers["lifecycle"] = chart_lifecycle
    if history.retention:
        makers["retention"] = chart_retention
    return makers


# ----------------------------------------------------------------------------------------------- HTML
def _pct(rate: float | None) -> float:
    return float("nan") if rate is None else rate * 100


def _hours(seconds: float | None) -> float:
    return float("nan") if seconds is None else seconds / 3600


def _rate(value: float | None) -> str:
    return format_value(value, "rate", na=NA)


def duration(seconds: float | None) -> str:
    """'45 min', '5.2 h', '3.4 days'; a dash when None."""
    if seconds is None:
        return NA
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _card(label: str, value: str, sub: str, cls: str = "") -> str:
    return (f'<div class="card"><div class="label">{html.escape(label)}</div><div class="value {cls}">{value}</div>'
            f'<div class="sub">{html.escape(sub)}</div></div>')


def _figure(chart: str, caption: str) -> str:
    return f"<figure>{chart}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _table(headers: list[str], rows: list[list[str]], left: int = 1) -> str:
    head = "".join(f'<th class="l">{h}</th>' if i < left else f"<th>{h}</th>" for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td class="l">{c}</td>' if i < left else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(history: ReportHistory, svgs: dict[str, str], top: int) -> str:
    e = html.escape
    loop, ideas = history.loop, history.ideas
    as_of = f"as of {iso(loop.as_of)}" if loop.as_of else "nothing stored yet"
    span = f"{iso(history.within.since)} – {iso(history.within.until)}"
    out = ['<h2 id="feedback-loop">Feedback loop &amp; innovation</h2>',
           f'<p class="note">From the stored feedback and the enterprise\'s answers ({e(as_of)}, the newest stored '
           f'event; whole shop, not sliced). Cards: feedback and ideas given {e(span)}; charts and tables: every '
           f'{history.period} (cohort of the feedback or idea) overlapping the range. Definitions: '
           "docs/feedback-loop.md.</p>"]
    followed = (f"{loop.detractors_followed_up_48h:,} of {loop.detractors_matured_48h:,} detractors within 48 h"
                if loop.detractors_matured_48h else "no detractor 48 h old yet")
    out.append('<div class="cards">' + "".join((
        _card("response rate", _rate(loop.response_rate), f"{loop.answered:,} of {loop.answerable:,} answered"),
        _card("detractors answered", _rate(loop.detractor_response_rate),
              f"{loop.detractors_answered:,} of {loop.detractors:,}; bug reports "
              f"{format_value(loop.bug_report_response_rate, 'rate')}"),
        _card("time to first response", duration(loop.median_response_seconds),
              f"median; p90 {_plain(duration(loop.p90_response_seconds))}"),
        _card("followed up in 48 h", _rate(loop.detractor_follow_up_rate_48h), followed),
        _card("unanswered", f"{loop.backlog:,}",
              f"{loop.backlog_detractors:,} detractors; oldest {_plain(duration(loop.backlog_oldest_age_seconds))}"),
        _card("ideas shipped", f"{ideas.shipped:,}",
              f"of {ideas.submitted:,} submitted ({format_value(ideas.adoption_rate, 'rate')}); "
              f"{ideas.declined:,} declined, {ideas.waiting:,} waiting"),
    )) + "</div>")
    sections = (
        ("idea_funnel", f"Ideas per {history.period} of submission and how far they got as of now: reviewed = any "
         "status change; planned and shipped = reached that stage (or a later one); declined = current status.",
         _funnel_table, "No idea submitted in the range."),
        ("feedback_loop", f"Answerable feedback per {history.period} in which it was given: share answered (a "
         "response or a closed case) and the exact median and p90 of the time to its first answer. Young periods "
         "look worse until their answers arrive.", _loop_table, "No answerable feedback in the range."),
    )
    for name, caption, table, empty in sections:
        if name in svgs:
            out.append(_figure(svgs[name], caption) + table(history))
        else:
            out.append(f'<p class="note">{empty}</p>')
    out.append("<h3>You said, we did</h3>")
    if history.shipped:
        out.append(_shipped_table(history, top))
    else:
        out.append('<p class="note">No idea shipped in the range.</p>')
    out.append('<h2 id="loyalty">Loyalty</h2>')
    out.append(f'<p class="note">Consumers active per {history.period} (any purchase, usage or feedback of '
               "theirs) from the stored events; whole shop. Definitions: docs/loyalty.md.</p>")
    if "lifecycle" in svgs:
        out.append(_figure(svgs["lifecycle"], "New: first active period; returning: active in this and the "
                           "previous period; resurrecting: active again after a gap; dormant: active in the "
                           "previous period, not in this one. The newest period is normally still incomplete."))
        out.append(_lifecycle_table(history))
    if "retention" in svgs:
        out.append(_figure(svgs["retention"], f"Share of each first-seen {history.period}'s consumers active "
                           f"0, 1, 2, ... {history.period}s later (up to the end of the range; the newest "
                           f"{RETENTION_CELLS} cohorts)."))
    if not history.lifecycle:
        out.append('<p class="note">No consumer activity in the range.</p>')
    return "\n".join(out)


def _plain(text: str) -> str:
    return "—" if text == NA else text


def _funnel_table(history: ReportHistory) -> str:
    rows = [[f"{r['period_start']}", f"{r['submitted']:,}", f"{r['reviewed']:,}", f"{r['planned']:,}",
             f"{r['in_progress']:,}", f"{r['shipped']:,}", f"{r['declined']:,}", f"{r['waiting']:,}",
             _rate(r["adoption_rate"]), duration(r["median_seconds_to_ship"]),
             format_value(r["voters_per_idea"], "ratio", na=NA)] for r in history.funnel]
    return _table([f"submitted ({history.period})", "submitted", "reviewed", "planned", "in progress", "shipped",
                   "declined", "waiting", "adoption", "median to ship", "voters per idea"], rows)


def _loop_table(history: ReportHistory) -> str:
    rows = [[f"{r['period_start']}", f"{r['answerable_feedback']:,}", f"{r['answered_feedback']:,}",
             _rate(r["response_rate"]), _rate(r["detractor_response_rate"]), _rate(r["bug_report_response_rate"]),
             duration(r["median_response_seconds"]), duration(r["p90_response_seconds"]),
             _rate(r["detractor_follow_up_rate_48h"]), f"{r['backlog']:,}", duration(r["backlog_oldest_age_seconds"])]
            for r in history.loop_periods]
    return _table([f"feedback ({history.period})", "answerable", "answered", "response rate", "detractors",
                   "bug reports", "median first response", "p90", "detractors followed up in 48 h", "unanswered",
                   "oldest unanswered"], rows)


def _shipped_table(history: ReportHistory, top: int) -> str:
    shown = history.shipped[: 2 * top]
    rows = [[f"{r['shipped_at']:%Y-%m-%d %H:%M}", html.escape(r["idea_id"]), html.escape(r["product_id"]),
             html.escape(r["text"]), duration(r["seconds_to_ship"]), f"{r['supporters']:,}", f"{r['votes']:,}"]
            for r in shown]
    more = len(history.shipped) - len(shown)
    note = (f'<p class="note">and {more:,} more shipped in the range (<code>copulse kpis --view ideas-shipped</code>).'
            "</p>" if more > 0 else "")
    return _table(["shipped (UTC)", "idea", "product", "idea text", "time to ship", "consumers to tell", "votes"],
                  rows, left=4) + note


def _lifecycle_table(history: ReportHistory) -> str:
    rows = [[f"{r['period_start']}", f"{r['active_consumers']:,}", f"{r['new_consumers']:,}",
             f"{r['returning_consumers']:,}", f"{r['resurrecting_consumers']:,}", f"{r['dormant_consumers']:,}"]
            for r in history.lifecycle]
    return _table([history.period, "active", "new", "returning", "resurrecting", "dormant"], rows)
