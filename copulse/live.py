"""``copulse live``: the value co-creation scorecard in the terminal, refreshed every few seconds.

Shows, for the newest final window of one granularity and slice (default 1m, overall): the value co-creation
index with its trend against the previous window, every perspective's score, every KPI against its target
(value, target, floor, attainment bar, trend, sample), the feedback loop and idea funnel over all stored history
(response rate, median time to first response, unanswered detractors, ideas shipped of submitted; as of the
newest stored event, copulse/history.py, read at most every 30 s) and the pipeline's health read from the
worker's metrics endpoint (events consumed per second, dead letters, watermark lag, sink state, VCI scoring). Until the first
window is final it says when one is expected.

Scores come from the ``vci`` table the worker writes (copulse/scorecard/job.py) for the scorecard version in force; for
windows the worker has not scored with this version yet they are computed here from ``kpi_final`` with the
same function (copulse/scorecard/index.py), marked "computed here". ClickHouse is read as the read-only user.

Ctrl-C quits. ``--once`` prints one frame and exits (``--svg FILE`` also saves it as SVG).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import math
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from clickhouse_driver import Client
from clickhouse_driver import errors as ch_errors
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from copulse.history import IdeaSummary, LoopSummary, idea_summary, loop_summary
from copulse.readmodel import (
    NOT_MIGRATED_CODES,
    SELECT_COLUMNS,
    dimension_filter,
    granularity_text,
    reader_client,
    utc,
)
from copulse.scorecard.catalogue import CATALOGUE, format_value
from copulse.scorecard.definition import Scorecard, ScorecardError, load_scorecard
from copulse.scorecard.index import score_row
from copulse.scorecard.job import VCI_COLUMNS
from copulse.settings import duration_seconds

UTC = dt.UTC
GOOD, BAD, FLAT = "green", "red", "grey62"
#: the raw event tables of copulse_sink_rows_total (the consumers' events and the enterprise's responses)
RAW_EVENT_TABLES = ("purchases", "usage_events", "feedback", "responses")
#: the feedback-loop panel reads whole views (copulse/history.py): at most once per this many seconds
FEEDBACK_LOOP_REFRESH_SECONDS = 30.0


# ----------------------------------------------------------------------------------------------- data
@dataclass
class KpiLine:
    perspective: str
    name: str
    label: str
    unit: str
    direction: str
    value: float | None
    target: float
    floor: float | None
    weight: float
    sample: float
    attainment: float | None
    insufficient: str
    previous: float | None = None


@dataclass
class WindowScore:
    window_start: dt.datetime
    window_end: dt.datetime
    index: float | None
    perspectives: list[tuple[str, str, float, float | None]]  # name, label, weight, score
    kpis: list[KpiLine]
    active_consumers: int
    events: int
    computed_at: dt.datetime | None  # None: computed here (the worker has not stored it for this version)


@dataclass(frozen=True)
class FeedbackLoopPanel:
    """The feedback loop and the idea funnel over all stored history, as of the newest stored event time."""

    loop: LoopSummary
    ideas: IdeaSummary


def fetch_feedback_loop(client: Client, database: str) -> FeedbackLoopPanel:
    return FeedbackLoopPanel(loop_summary(client, database), idea_summary(client, database))


@dataclass
class LiveState:
    latest: WindowScore | None = None
    previous: WindowScore | None = None
    open_window: tuple[dt.datetime, int] | None = None  # start, events so far (only while nothing is final)
    error: str | None = None
    feedback_loop: FeedbackLoopPanel | None = None


def _labels(card: Scorecard, g: int) -> dict[str, str]:
    return {p.name: p.label for p in card.targets(g)}


def from_vci_row(card: Scorecard, row: dict) -> WindowScore:
    g = int(row["granularity_seconds"])
    plabels = _labels(card, g)
    kpis = []
    for i, name in enumerate(row["kpis"]):
        kdef = CATALOGUE.get(name)
        kpis.append(KpiLine(row["kpi_perspectives"][i], name, kdef.label if kdef else name, kdef.unit if kdef else "",
                            _direction(card, name), row["kpi_values"][i], row["kpi_targets"][i], row["kpi_floors"][i],
                            row["kpi_weights"][i], row["kpi_samples"][i], row["kpi_attainments"][i],
                            row["kpi_insufficient"][i]))
    perspectives = [(n, plabels.get(n, n), w, s) for n, w, s in
                    zip(row["perspectives"], row["perspective_weights"], row["perspective_scores"], strict=True)]
    return WindowScore(utc(row["window_start"]), utc(row["window_end"]), row["vci_index"], perspectives, kpis,
                       int(row["active_consumers"]), int(row["events"]), utc(row["computed_at"]))


def from_kpi_row(card: Scorecard, row: dict) -> WindowScore:
    result = score_row(card, row)
    kpis = [KpiLine(k.target.perspective, k.name, k.target.label, k.target.unit, k.target.direction, k.value,
                    k.target.target, k.target.floor, k.target.weight, k.sample, k.attainment, k.insufficient)
            for k in result.kpis()]
    perspectives = [(p.name, p.label, p.weight, p.score) for p in result.perspectives]
    return WindowScore(utc(row["window_start"]), utc(row["window_end"]), result.index, perspectives, kpis,
                       int(row["active_consumers"]), int(row["events"]), None)


def _direction(card: Scorecard, name: str) -> str:
    for p in card.model.perspectives.values():
        if name in p.kpis:
            return p.kpis[name].direction
    return CATALOGUE[name].direction if name in CATALOGUE else "higher"


def fetch_state(client: Client, database: str, card: Scorecard, granularity: int, slice_name: str,
                value: str | None = None) -> LiveState:
    """The two newest final windows of the slice, scored (stored rows first, else computed here)."""
    where, params = dimension_filter(slice_name, value)
    params.update(g=granularity, s=slice_name, v=card.version_id)
    rows = client.execute(
        f"SELECT {', '.join(VCI_COLUMNS)} FROM `{database}`.vci FINAL "
        f"WHERE granularity_seconds = %(g)s AND slice = %(s)s AND scorecard_version = %(v)s AND {where} "
        "ORDER BY window_start DESC LIMIT 2",
        params,
    )
    scores = [from_vci_row(card, dict(zip(VCI_COLUMNS, r))) for r in rows]
    newest_stored = scores[0].window_start if scores else None
    # windows final but not scored by the worker (yet, or not with this scorecard version): compute here
    kpi_rows = client.execute(
        f"SELECT {', '.join(SELECT_COLUMNS)} FROM `{database}`.kpi_final "
        f"WHERE granularity_seconds = %(g)s AND slice = %(s)s AND {where} "
        + ("AND window_start > toDateTime(%(newest)s, 'UTC') " if newest_stored else "")
        + "ORDER BY window_start DESC LIMIT 2",
        dict(params, newest=int(newest_stored.timestamp()) if newest_stored else 0),
        settings={"enable_optimize_predicate_expression": 1},
    )
    scores += [from_kpi_row(card, dict(zip(SELECT_COLUMNS, r))) for r in kpi_rows]
    scores.sort(key=lambda s: s.window_start, reverse=True)
    state = LiveState()
    if scores:
        state.latest = scores[0]
        state.previous = scores[1] if len(scores) > 1 else None
        if state.previous and state.previous.window_start != state.latest.window_start - dt.timedelta(
                seconds=granularity):
            state.previous = None  # a gap: no trend against an older window
        if state.previous:
            before = {k.name: k.value for k in state.previous.kpis}
            for k in state.latest.kpis:
                k.previous = before.get(k.name)
    else:
        open_rows = client.execute(
            f"SELECT window_start, events FROM `{database}`.kpi "
            f"WHERE granularity_seconds = %(g)s AND slice = %(s)s AND {where} ORDER BY window_start DESC LIMIT 1",
            params,
        )
        if open_rows:
            state.open_window = (utc(open_rows[0][0]), int(open_rows[0][1]))
    return state


# ----------------------------------------------------------------------------------------------- metrics
@dataclass
class PipelineStatus:
    reachable: bool = False
    error: str = ""
    consumed_total: float = 0.0
    dead_lettered_total: float = 0.0
    consumed_rate: float | None = None
    dlq_rate: float | None = None
    watermark_lag_min: float | None = None
    watermark_lag_max: float | None = None
    backpressure: bool = False
    sink_errors: float = 0.0
    vci_last_success: float | None = None
    vci_errors: float = 0.0
    events_stored: float = 0.0
    kpi_rows_stored: float = 0.0
    scraped_at: float = field(default_factory=time.time)


def parse_metrics(text: str, now: float | None = None) -> PipelineStatus:
    from prometheus_client.parser import text_string_to_metric_families

    p = PipelineStatus(reachable=True, scraped_at=now if now is not None else time.time())
    lags = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "copulse_events_consumed_total":
                p.consumed_total += s.value
            elif s.name == "copulse_events_dead_lettered_total":
                p.dead_lettered_total += s.value
            elif s.name == "copulse_watermark_lag_seconds":
                lags.append(s.value)
            elif s.name == "copulse_sink_backpressure":
                p.backpressure = p.backpressure or s.value >= 1
            elif s.name == "copulse_sink_errors_total":
                p.sink_errors += s.value
            elif s.name == "copulse_vci_last_success_timestamp_seconds" and s.value > 0:
                p.vci_last_success = s.value
            elif s.name == "copulse_vci_runs_total" and s.labels.get("outcome") == "error":
                p.vci_errors += s.value
            elif s.name == "copulse_sink_rows_total":
                if s.labels.get("table") == "kpi_windows":
                    p.kpi_rows_stored += s.value
                elif s.labels.get("table") in RAW_EVENT_TABLES:
                    p.events_stored += s.value
    if lags:
        p.watermark_lag_min, p.watermark_lag_max = min(lags), max(lags)
    return p


def scrape(url: str, previous: PipelineStatus | None = None, timeout: float = 2.0) -> PipelineStatus:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return PipelineStatus(reachable=False, error=str(reason))
    p = parse_metrics(text)
    if previous is not None and previous.reachable:
        elapsed = p.scraped_at - previous.scraped_at
        if elapsed > 0 and p.consumed_total >= previous.consumed_total:
            p.consumed_rate = (p.consumed_total - previous.consumed_total) / elapsed
            p.dlq_rate = max(0.0, p.dead_lettered_total - previous.dead_lettered_total) / elapsed
    return p


# ----------------------------------------------------------------------------------------------- rendering
def bar(fraction: float | None, width: int = 12) -> Text:
    if fraction is None:
        return Text("·" * width, style="grey50")
    fraction = min(1.0, max(0.0, fraction))
    full = round(fraction * width)
    colour = "green" if fraction >= 0.8 else "yellow" if fraction >= 0.5 else "red"
    return Text("█" * full, style=colour) + Text("░" * (width - full), style="grey35")


def trend(now: float | None, before: float | None, higher_is_better: bool = True, tolerance: float = 0.005) -> Text:
    """▲/▼ with colour: green when better, red when worse; → when within ``tolerance`` (relative)."""
    if now is None or before is None:
        return Text(" ", style=FLAT)
    scale = max(abs(before), abs(now), 1e-9)
    change = (now - before) / scale
    if abs(change) < tolerance:
        return Text("→", style=FLAT)
    up = now > before
    good = up == higher_is_better
    return Text("▲" if up else "▼", style=GOOD if good else BAD)


def _score_text(score: float) -> Text:
    colour = "green" if score >= 80 else "yellow" if score >= 50 else "red"
    return Text(f"{score:.1f}", style=f"bold {colour}")


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def _when(value: dt.datetime, granularity: int) -> str:
    return value.strftime("%H:%M" if granularity < 86400 else "%Y-%m-%d")


def render(state: LiveState, pipeline: PipelineStatus | None, card: Scorecard, *, granularity: int, slice_name: str,
           value: str | None, settings, now: float | None = None, refresh: float = 5.0):
    now = time.time() if now is None else now
    gtext = granularity_text(granularity)
    where = slice_name + (f" {value}" if value else "")
    title = (f"[bold]copulse live[/bold] · {gtext} windows · slice {where} · scorecard {card.name} "
             f"[dim]{card.version_id}[/dim]")
    parts = []
    if state.error:
        parts.append(Panel(Text(state.error, style="red"), title="ClickHouse", border_style="red"))
    if state.latest is None:
        parts.append(_waiting(state, granularity, settings, now))
    else:
        parts.append(_headline(state, granularity, now))
        parts.append(_scorecard_table(state, settings.currency))
    if state.feedback_loop is not None:
        parts.append(_feedback_loop(state.feedback_loop))
    parts.append(_pipeline(pipeline, settings, now))
    footer = Text(f"refreshed {dt.datetime.fromtimestamp(now, UTC):%H:%M:%S} UTC · every {refresh:g} s · "
                  "Ctrl-C quits", style="grey50")
    parts.append(footer)
    return Panel(Group(*parts), title=title, title_align="left", border_style="cyan", box=box.ROUNDED)


def _headline(state: LiveState, granularity: int, now: float) -> Table:
    latest, previous = state.latest, state.previous
    assert latest is not None
    grid = Table.grid(padding=(0, 2))
    grid.add_column(justify="left")
    grid.add_column(justify="left")
    index = Text("VCI ", style="bold") + (
        Text(f"{latest.index:.1f}", style="bold " + ("green" if latest.index >= 80 else "yellow"
                                                      if latest.index >= 50 else "red"))
        if latest.index is not None else Text("insufficient data", style="italic grey50"))
    index += Text(" / 100  ")
    if previous is not None and latest.index is not None and previous.index is not None:
        index += trend(latest.index, previous.index) + Text(f" {latest.index - previous.index:+.1f} vs previous",
                                                            style="grey62")
    window = (f"window {_when(latest.window_start, granularity)}–{_when(latest.window_end, granularity)} UTC, final · "
              f"{latest.active_consumers:,} active consumers · {latest.events:,} events")
    if latest.computed_at is not None:
        scored = f"scored by the worker at {latest.computed_at:%H:%M:%S}"
    else:
        scored = "computed here (the worker has not stored it for this scorecard version yet)"
    age = now - latest.window_end.timestamp()
    stale = age > 3 * granularity + 120
    info = Text(window + "\n") + Text(scored, style="grey62")
    if stale:
        info += Text(f"\nthe newest final window ended {_ago(age)} ago: is the worker or the generator running?",
                     style="yellow")
    grid.add_row(index, info)
    return grid


def _scorecard_table(state: LiveState, currency: str) -> Table:
    """One table: a bold row per perspective (weight in the index, score 0..100, trend) followed by its KPIs
    (value, target, floor, attainment 0..100 %, trend of the value, sample)."""
    latest, previous = state.latest, state.previous
    assert latest is not None
    before = {name: score for name, _, _, score in previous.perspectives} if previous else {}
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1))
    for name, justify, width in (("perspective / KPI", "left", 30), ("value", "right", 8), ("target", "right", 8),
                                 ("floor", "right", 7), ("attainment", "left", 16), ("", "right", 5),
                                 ("Δ", "center", 1), ("sample", "right", 6)):
        table.add_column(name, justify=justify, no_wrap=True, min_width=width,
                         max_width=None if name == "perspective / KPI" else max(width, 10))
    counted = sum(w for _, _, w, sc in latest.perspectives if sc is not None and w > 0) or 1.0
    for name, label, weight, score in latest.perspectives:
        share = f"{weight / counted:.0%}" if score is not None and weight > 0 else "not counted"
        if score is None:
            shown_bar, shown_score = Text("insufficient data", style="grey50 italic"), Text("—", style="grey50")
        else:
            shown_bar, shown_score = bar(score / 100, 16), _score_text(score)
        table.add_row(Text(label, style="bold") + Text(f" · {share}", style="grey62"), "", "", "", shown_bar,
                      shown_score, trend(score, before.get(name)), "", style="on grey15")
        for k in (k for k in latest.kpis if k.perspective == name):
            if k.insufficient == "small_sample":
                att, pct = Text("too few data", style="grey50 italic"), Text("")  # sample < min_sample
            elif k.insufficient:
                att, pct = Text("no data", style="grey50 italic"), Text("")
            else:
                att, pct = bar(k.attainment, 16), Text(f"{k.attainment * 100:.0f} %")
            label_text = "  " + k.label + (f" ({currency})" if k.unit == "money" else "")
            target_text = ("≤ " if k.direction == "lower" else "") + format_value(k.target, k.unit)
            table.add_row(label_text, format_value(k.value, k.unit), target_text,
                          format_value(k.floor, k.unit) if k.floor is not None else "—", att, pct,
                          trend(k.value, k.previous, k.direction == "higher"), f"{k.sample:,.0f}")
    return table


def _duration(seconds: float | None) -> str:
    return "—" if seconds is None else _ago(seconds)


def _feedback_loop(panel: FeedbackLoopPanel) -> Group:
    """Two lines: the enterprise's answers to all stored feedback and where all stored ideas stand."""
    loop, ideas = panel.loop, panel.ideas
    if loop.as_of is None:
        return Group(Text("feedback loop  ", style="bold") + Text("no feedback stored yet", style="grey62"))
    sep = Text(" · ", style="grey50")
    rate = loop.response_rate
    colour = "grey62" if rate is None else "green" if rate >= 0.8 else "yellow" if rate >= 0.5 else "red"
    first = (Text("feedback loop  ", style="bold")
             + Text(f"response rate {format_value(rate, 'rate')}", style=colour)
             + Text(f" ({loop.answered:,} of {loop.answerable:,})") + sep
             + Text(f"first response median {_duration(loop.median_response_seconds)}, "
                    f"p90 {_duration(loop.p90_response_seconds)}") + sep
             + Text(f"unanswered detractors {loop.backlog_detractors:,}",
                    style="red" if loop.backlog_detractors else "green"))
    second = (Text("innovation     ", style="bold")
              + Text(f"ideas shipped {ideas.shipped:,} of {ideas.submitted:,} "
                     f"({format_value(ideas.adoption_rate, 'rate')}), {ideas.declined:,} declined, "
                     f"{ideas.waiting:,} waiting") + sep
              + Text(f"as of {loop.as_of:%Y-%m-%d %H:%M:%S} UTC (newest stored event)", style="grey62"))
    return Group(first, second)


def _waiting(state: LiveState, granularity: int, settings, now: float) -> Panel:
    gtext = granularity_text(granularity)
    lateness = int(settings.allowed_lateness_seconds)
    current = int(now // granularity * granularity)
    first_close = current + granularity + lateness
    lines = [
        Text(f"Waiting for the first final {gtext} window.", style="bold yellow"),
        Text(f"A window becomes final at its end plus the allowed lateness ({lateness} s) and is scored within "
             f"{settings.vci_interval_seconds:g} s after that."),
    ]
    if state.open_window is not None:
        start, events = state.open_window
        end = start.timestamp() + granularity
        lines.append(Text(f"Open window {_when(start, granularity)}–"
                          f"{dt.datetime.fromtimestamp(end, UTC):%H:%M} UTC: {events:,} events so far; "
                          f"final at about {dt.datetime.fromtimestamp(end + lateness, UTC):%H:%M:%S} UTC "
                          f"(in {_ago(max(0.0, end + lateness - now))})."))
    else:
        lines.append(Text(f"No KPI window in ClickHouse yet: once events flow, the window of "
                          f"{dt.datetime.fromtimestamp(current, UTC):%H:%M} UTC is final at about "
                          f"{dt.datetime.fromtimestamp(first_close, UTC):%H:%M:%S} UTC."))
    return Panel(Group(*lines), border_style="yellow")


def _pipeline(p: PipelineStatus | None, settings, now: float) -> Group:
    if p is None:
        return Group()
    if not p.reachable:
        return Group(Text(f"pipeline: worker metrics unreachable at {metrics_url(settings)} ({p.error}): "
                          "is `copulse worker` running?", style="yellow"))
    sep = Text("  ·  ", style="grey50")
    rate = "…" if p.consumed_rate is None else f"{p.consumed_rate:,.1f}/s"
    dlq = "…" if p.dlq_rate is None else f"{p.dlq_rate:,.2f}/s"
    if p.watermark_lag_min is None:
        lag = Text("watermark lag —")
    else:
        colour = "green" if p.watermark_lag_max < 60 else "yellow" if p.watermark_lag_max < 900 else "red"
        lag = Text(f"watermark lag {p.watermark_lag_min:.1f} s (max {p.watermark_lag_max:.1f} s)", style=colour)
    sink = Text("sink waiting for ClickHouse", style="bold red") if p.backpressure else Text("sink ok", style="green")
    if p.vci_last_success is not None:
        ago = now - p.vci_last_success
        vci = Text(f"VCI scored {_ago(ago)} ago", style="green" if ago < 4 * settings.vci_interval_seconds
                   else "yellow")
    else:
        vci = Text("VCI scoring: no run yet", style="grey62")
    first = Text("pipeline  ", style="bold") + Text(f"consumed {rate} ({p.consumed_total:,.0f} total)") + sep \
        + Text(f"dead letters {dlq}") + sep + lag
    second = Text("          ") + Text(f"stored {p.events_stored:,.0f} events, {p.kpi_rows_stored:,.0f} KPI rows") \
        + sep + sink + sep + vci
    return Group(first, second)


def metrics_url(settings) -> str:
    return f"http://127.0.0.1:{settings.metrics_port}/metrics"


# ----------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--granularity", default="1m", help="window size (default 1m: a new window every minute)")
    parser.add_argument("--slice", default="overall", help="slice (default overall)")
    parser.add_argument("--value", help="slice value(s) joined by '+', e.g. --slice channel --value web")
    parser.add_argument("--refresh", type=float, default=5.0, help="seconds between refreshes (default 5)")
    parser.add_argument("--metrics-url", help="worker metrics endpoint (default http://127.0.0.1:"
                        "$COPULSE_METRICS_PORT/metrics)")
    parser.add_argument("--scorecard", help="scorecard YAML (default: COPULSE_SCORECARD_FILE or the shipped one)")
    parser.add_argument("--once", action="store_true", help="print one frame and exit")
    parser.add_argument("--svg", help="with --once: also save the frame as SVG (for screenshots)")
    parser.add_argument("--width", type=int, help="console width (default: the terminal's)")
    parser.epilog = "Ctrl-C quits. Exit codes: 0 quit, 2 bad option or scorecard."


def run(args, settings) -> int:
    try:
        card = load_scorecard(args.scorecard, settings=settings)
        granularity = duration_seconds(args.granularity)
        dimension_filter(args.slice, args.value)
    except (ScorecardError, ValueError) as exc:
        print(f"copulse live: {exc}", file=sys.stderr)
        return 2
    url = args.metrics_url or metrics_url(settings)
    database = settings.clickhouse["database"]
    where = f"{settings.clickhouse['host']}:{settings.clickhouse['port']}"
    holder: dict = {"client": None, "pipeline": None, "feedback_loop": None, "feedback_loop_at": -math.inf}

    def frame():
        state = LiveState()
        try:
            if holder["client"] is None:
                holder["client"] = reader_client(settings)
            state = fetch_state(holder["client"], database, card, granularity, args.slice, args.value)
            if time.monotonic() - holder["feedback_loop_at"] >= FEEDBACK_LOOP_REFRESH_SECONDS:
                holder["feedback_loop"] = fetch_feedback_loop(holder["client"], database)
                holder["feedback_loop_at"] = time.monotonic()
            state.feedback_loop = holder["feedback_loop"]
        except ch_errors.ServerException as exc:
            first = exc.message.strip().splitlines()[0]
            hint = " (run `copulse db migrate`)" if exc.code in NOT_MIGRATED_CODES else ""
            state.error = f"ClickHouse at {where} refused the query: {first}{hint}"
        except Exception as exc:  # noqa: BLE001 - unreachable, timeouts: show and retry next refresh
            state.error = f"ClickHouse unreachable at {where} ({str(exc).splitlines()[0] if str(exc) else exc!r}); " \
                          "retrying"
            if holder["client"] is not None:
                with contextlib.suppress(Exception):  # the connection is broken already
                    holder["client"].disconnect()
                holder["client"] = None
        holder["pipeline"] = scrape(url, holder["pipeline"])
        return render(state, holder["pipeline"], card, granularity=granularity, slice_name=args.slice,
                      value=args.value, settings=settings, refresh=args.refresh)

    if args.once:
        console = Console(record=bool(args.svg), width=args.width)
        holder["pipeline"] = scrape(url)  # two scrapes a second apart give a rate
        time.sleep(1.0)
        console.print(frame())
        if args.svg:
            console.save_svg(args.svg, title="copulse live")
        return 0
    console = Console(width=args.width)
    try:
        with Live(frame(), console=console, refresh_per_second=4, screen=False, transient=False) as live:
            while True:
                time.sleep(args.refresh)
                live.update(frame())
    except KeyboardInterrupt:
        pass
    finally:
        if holder["client"] is not None:
            holder["client"].disconnect()
    console.print("copulse live: stopped")
    return 0
