"""The VCI scoring job: final KPI windows -> ``vci`` table -> Prometheus gauges.

``VciJob.run_once()`` (blocking; the worker runs it every ``COPULSE_VCI_INTERVAL_SECONDS`` through
``asyncio.to_thread`` from a leader-only timer, ``copulse vci score`` runs it by hand):

1. loads the scorecard (``COPULSE_SCORECARD_FILE`` or the shipped default) and reloads it when the file
   changes; an invalid edit is logged with every problem and the last valid scorecard stays in use;
2. records the scorecard version in ``vci_scorecards``;
3. per granularity of ``COPULSE_GRANULARITIES``: reads the ``kpi_final`` windows of the slices in
   ``COPULSE_VCI_SLICES`` from the last ``COPULSE_VCI_LOOKBACK_SECONDS`` that have no ``vci`` row for this
   scorecard version yet, newest first, at most ``COPULSE_VCI_BATCH_ROWS`` per run, scores them with
   :func:`copulse.scorecard.index.score_row` and inserts them (idempotent: ReplacingMergeTree per window, slice values
   and scorecard version);
4. refreshes the gauges from the ``vci`` table: the newest scored window of every label set of the slices
   in ``COPULSE_METRIC_SLICES`` (label sets without a window among the newest two are dropped, at most
   ``COPULSE_METRIC_MAX_SERIES_PER_SLICE`` per slice, like streams/kpi_metrics.py).

``run_safely()`` never raises (the worker must not die of a scorecard typo or a ClickHouse outage): it logs
the first failure, stays quiet while it repeats, and logs when scoring works again.

5. refreshes the feedback-loop gauges (copulse/feedback_metrics.py: time to first response, the backlog of
   unanswered feedback) from the feedback-loop view, as of the newest stored event time, at most every
   ``FEEDBACK_REFRESH_SECONDS`` (the view reads all stored feedback: about a second on a year of events).

The gauges are exported by copulse/scorecard/exporter.py and copulse/feedback_metrics.py; job health: ``copulse_vci_windows_scored_total{granularity}``,
``copulse_vci_runs_total{outcome}``, ``copulse_vci_last_success_timestamp_seconds``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from clickhouse_driver import Client
from prometheus_client import Counter, Gauge
from prometheus_client.core import CollectorRegistry

from copulse.feedback_metrics import FeedbackLoopExporter, read_feedback_loop
from copulse.readmodel import NOT_MIGRATED_CODES, SELECT_COLUMNS, granularity_text, parse_window_start
from copulse.scorecard.definition import Scorecard, ScorecardError, load_scorecard, scorecard_path
from copulse.scorecard.exporter import VciExporter
from copulse.scorecard.index import VciResult, score_row
from copulse.settings import DIMENSIONS, duration_seconds
from streams.kpis import epoch_seconds

log = logging.getLogger(__name__)

TABLE = "vci"
#: the feedback-loop gauges are read from ClickHouse at most this often (their figures move by the hour)
FEEDBACK_REFRESH_SECONDS = 60.0
#: columns of the ``vci`` table (schemas/clickhouse/0005_vci.sql), in the order of ``vci_row``
VCI_COLUMNS: tuple[str, ...] = (
    "granularity_seconds", "window_start", "window_end", "slice", *DIMENSIONS,
    "scorecard_version", "scorecard_name", "vci_index", "insufficient",
    "perspectives", "perspective_weights", "perspective_scores",
    "kpis", "kpi_perspectives", "kpi_values", "kpi_samples", "kpi_targets", "kpi_floors", "kpi_weights",
    "kpi_attainments", "kpi_insufficient",
    "active_consumers", "events", "computed_at",
)

WINDOWS_SCORED = Counter("copulse_vci_windows_scored_total", "KPI windows scored into the vci table", ["granularity"])
RUNS = Counter("copulse_vci_runs_total", "VCI scoring runs by outcome (ok|error)", ["outcome"])
LAST_SUCCESS = Gauge("copulse_vci_last_success_timestamp_seconds", "Unix time of the last successful VCI scoring run")
for _outcome in ("ok", "error"):
    RUNS.labels(outcome=_outcome)


def vci_row(scorecard: Scorecard, kpi: dict, result: VciResult, computed_at: int) -> tuple:
    """The ``vci`` row (VCI_COLUMNS order) of one scored ``kpi_final`` row."""
    kpis = result.kpis()
    return (
        int(kpi["granularity_seconds"]), epoch_seconds(kpi["window_start"]), epoch_seconds(kpi["window_end"]), kpi["slice"],
        *(kpi[d] for d in DIMENSIONS),
        scorecard.version_id, scorecard.name, result.index, 1 if result.insufficient else 0,
        [p.name for p in result.perspectives], [float(p.weight) for p in result.perspectives],
        [p.score for p in result.perspectives],
        [k.name for k in kpis], [k.target.perspective for k in kpis], [k.value for k in kpis],
        [float(k.sample) for k in kpis], [float(k.target.target) for k in kpis], [k.target.floor for k in kpis],
        [float(k.target.weight) for k in kpis], [k.attainment for k in kpis], [k.insufficient for k in kpis],
        int(kpi.get("active_consumers") or 0), int(kpi.get("events") or 0), computed_at,
    )


@dataclass
class RunReport:
    scorecard_version: str = ""
    scored: dict[int, int] = field(default_factory=dict)  # granularity seconds -> windows scored
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.scored.values())


# ----------------------------------------------------------------------------------------------- the job
class VciJob:
    """Scores final KPI windows (module docstring). Construction never fails; problems surface in runs."""

    def __init__(self, settings, *, registry: CollectorRegistry | None = None, scorecard: Scorecard | None = None,
                 client: Client | None = None, export: bool = True) -> None:
        self.settings = settings
        self.database: str = settings.clickhouse["database"]
        self._fixed_scorecard = scorecard
        self._scorecard: Scorecard | None = scorecard
        self._scorecard_stamp: tuple | None = None
        self._registered: set[str] = set()
        self._client = client
        self._own_client = client is None
        self.exporter = VciExporter(settings, registry) if export else None
        self.feedback_exporter = FeedbackLoopExporter(registry) if export else None
        self._feedback_read_at: float | None = None  # time.monotonic() of the last refresh of its gauges
        self._failing: str | None = None
        self._lock = threading.Lock()

    # --- scorecard ------------------------------------------------------------------------------
    def scorecard(self) -> Scorecard:
        """The scorecard in force: reloaded when its file changed; an invalid file keeps the previous one."""
        if self._fixed_scorecard is not None:
            return self._fixed_scorecard
        path = scorecard_path(self.settings)
        try:
            stat = Path(path).stat()
            stamp = (str(path), stat.st_mtime_ns, stat.st_size)
        except OSError:
            stamp = (str(path), None, None)
        if stamp != self._scorecard_stamp:
            try:
                card = load_scorecard(path)
            except ScorecardError as exc:
                self._scorecard_stamp = stamp
                if self._scorecard is None:
                    raise
                log.error("%s\nVCI scoring keeps the previous scorecard %s until the file is fixed", exc,
                          self._scorecard.version_id)
                return self._scorecard
            if self._scorecard is not None and card.version_id != self._scorecard.version_id:
                log.info("scorecard %s changed: version %s -> %s (new rows; old versions stay)", path,
                         self._scorecard.version_id, card.version_id)
            self._scorecard, self._scorecard_stamp = card, stamp
        assert self._scorecard is not None
        return self._scorecard

    # --- ClickHouse ----------------------------------------------------------------------------------
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(**self.settings.clickhouse, connect_timeout=5, send_receive_timeout=120,
                                  sync_request_timeout=5, client_name="copulse-vci")
        return self._client

    def close(self) -> None:
        if self._own_client and self._client is not None:
            with contextlib.suppress(Exception):  # the connection is broken already
                self._client.disconnect()

    def _register(self, card: Scorecard) -> None:
        if card.version_id in self._registered:
            return
        self.client().execute(
            f"INSERT INTO `{self.database}`.vci_scorecards "
            "(scorecard_version, scorecard_name, label, definition, source, registered_at) VALUES",
            [(card.version_id, card.name, card.label or "", json.dumps(card.to_dict(), sort_keys=True), card.source,
              int(time.time()))],
        )
        self._registered.add(card.version_id)

    def pending(self, card: Scorecard, granularity: int, slices: list[str], since: int, until: int,
                limit: int) -> list[dict]:
        """Final KPI windows in [since, until) without a vci row of this scorecard version, newest first."""
        db = self.database
        params = {"g": granularity, "slices": tuple(slices), "lo": since, "hi": until, "v": card.version_id,
                  "n": limit}
        key = ", ".join(("slice", "window_start", *DIMENSIONS))
        rows = self.client().execute(
            f"SELECT {', '.join(SELECT_COLUMNS)} FROM `{db}`.kpi_final "
            "WHERE granularity_seconds = %(g)s AND slice IN %(slices)s "
            "AND window_start >= toDateTime(%(lo)s, 'UTC') AND window_start < toDateTime(%(hi)s, 'UTC') "
            f"AND ({key}) NOT IN (SELECT {key} FROM `{db}`.{TABLE} WHERE granularity_seconds = %(g)s "
            "AND scorecard_version = %(v)s AND window_start >= toDateTime(%(lo)s, 'UTC') "
            "AND window_start < toDateTime(%(hi)s, 'UTC')) "
            f"ORDER BY window_start DESC, {key} LIMIT %(n)s",
            params,
            settings={"enable_optimize_predicate_expression": 1},
        )
        return [dict(zip(SELECT_COLUMNS, row)) for row in rows]

    def run_once(self, *, since: int | None = None, until: int | None = None, granularities: list[int] | None = None,
                 slices: list[str] | None = None, export: bool = True) -> RunReport:
        """Score what is missing (see the module docstring); blocking. Raises on failure."""
        with self._lock:
            started = time.monotonic()
            card = self.scorecard()
            report = RunReport(card.version_id)
            now = int(time.time())
            lo = since if since is not None else now - int(self.settings.vci_lookback_seconds)
            hi = until if until is not None else now + 86400
            self._register(card)
            for g in granularities or self.settings.granularity_seconds:
                rows = self.pending(card, g, list(slices or self.settings.vci_slices), lo, hi,
                                    int(self.settings.vci_batch_rows))
                if rows:
                    computed_at = int(time.time())
                    out = [vci_row(card, r, score_row(card, r), computed_at) for r in rows]
                    self.client().execute(
                        f"INSERT INTO `{self.database}`.{TABLE} ({', '.join(VCI_COLUMNS)}) VALUES", out,
                        types_check=True,
                    )
                    WINDOWS_SCORED.labels(granularity=str(g)).inc(len(out))
                report.scored[g] = len(rows)
            if export and self.exporter is not None:
                self.exporter.update(self.latest(card))
            if export and self.feedback_exporter is not None and (
                    self._feedback_read_at is None or started - self._feedback_read_at >= FEEDBACK_REFRESH_SECONDS):
                self.feedback_exporter.update(read_feedback_loop(self.client(), self.database))
                self._feedback_read_at = started
            report.seconds = time.monotonic() - started
            return report

    def latest(self, card: Scorecard) -> list[dict]:
        """vci rows of the newest two windows per granularity, for the exported slices and this version."""
        db = self.database
        slices = tuple(self.settings.metric_slices)
        params = {"v": card.version_id, "slices": slices}
        newest = self.client().execute(
            f"SELECT granularity_seconds, max(window_start) FROM `{db}`.{TABLE} "
            "WHERE scorecard_version = %(v)s AND slice IN %(slices)s GROUP BY granularity_seconds",
            params,
        )
        out: list[dict] = []
        for g, start in newest:
            params.update(g=g, lo=epoch_seconds(start) - 2 * int(g))
            rows = self.client().execute(
                f"SELECT {', '.join(VCI_COLUMNS)} FROM `{db}`.{TABLE} FINAL "
                "WHERE scorecard_version = %(v)s AND slice IN %(slices)s AND granularity_seconds = %(g)s "
                "AND window_start > toDateTime(%(lo)s, 'UTC')",
                params,
            )
            out += [dict(zip(VCI_COLUMNS, r)) for r in rows]
        return out

    def run_safely(self) -> RunReport | None:
        """``run_once`` that never raises: the first failure is logged, repeats are quiet, recovery is logged."""
        try:
            report = self.run_once()
        except Exception as exc:  # noqa: BLE001 - the worker must survive any scoring problem
            RUNS.labels(outcome="error").inc()
            text = f"{type(exc).__name__}: {str(exc).strip()}"
            if isinstance(exc, ScorecardError):
                text = str(exc)
            if text != self._failing:
                log.warning("VCI scoring failed (retrying every %.0f s): %s", self.settings.vci_interval_seconds,
                            text.split("Stack trace:")[0].strip())
            self._failing = text
            if self._own_client and self._client is not None:
                self.close()
                self._client = None
            return None
        RUNS.labels(outcome="ok").inc()
        LAST_SUCCESS.set(time.time())
        if self._failing is not None:
            log.info("VCI scoring works again (%d windows scored)", report.total)
            self._failing = None
        elif report.total:
            log.debug("VCI: scored %s with scorecard %s in %.2f s", report.scored, report.scorecard_version,
                      report.seconds)
        return report


# ----------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="since", type=parse_window_start,
                        help="score windows starting at or after this time (ISO 8601; default: "
                             "COPULSE_VCI_LOOKBACK_SECONDS ago)")
    parser.add_argument("--to", dest="until", type=parse_window_start,
                        help="score windows starting before this time (default: no limit)")
    parser.add_argument("--granularity", action="append", help="window size to score, repeatable (default: all of "
                        "COPULSE_GRANULARITIES)")
    parser.add_argument("--slice", action="append", help="slice to score, repeatable (default: COPULSE_VCI_SLICES)")
    parser.add_argument("--scorecard", help="scorecard YAML (default: COPULSE_SCORECARD_FILE or the shipped one)")
    parser.epilog = ("Scores every final KPI window of the range that has no VCI row for the scorecard's version "
                     "yet, in batches of COPULSE_VCI_BATCH_ROWS; re-running it adds nothing. Exit codes: 0 done, "
                     "1 ClickHouse problem, 2 invalid scorecard or option.")


def run(args, settings) -> int:
    try:
        card = load_scorecard(args.scorecard, settings=settings)
        granularities = [duration_seconds(g) for g in args.granularity] if args.granularity else None
    except (ScorecardError, ValueError) as exc:
        print(f"copulse vci score: {exc}", file=sys.stderr)
        return 2
    since = int(args.since.timestamp()) if args.since else 0 if args.until else None
    until = int(args.until.timestamp()) if args.until else None
    job = VciJob(settings, scorecard=card, export=False)
    total: dict[int, int] = {}
    try:
        while True:
            report = job.run_once(since=since, until=until, granularities=granularities, slices=args.slice,
                                  export=False)
            for g, n in report.scored.items():
                total[g] = total.get(g, 0) + n
            if all(n < int(settings.vci_batch_rows) for n in report.scored.values()):
                break
    except Exception as exc:  # noqa: BLE001 - one line, then exit 1
        where = f"{settings.clickhouse['host']}:{settings.clickhouse['port']}"
        first = (getattr(exc, "message", None) or str(exc)).strip().splitlines()[0]
        hint = "run `copulse db migrate`" if getattr(exc, "code", None) in NOT_MIGRATED_CODES else "is it up? (`make up`)"
        print(f"copulse vci score: ClickHouse at {where}: {first}; {hint}", file=sys.stderr)
        return 1
    finally:
        job.close()
    scored = ", ".join(f"{granularity_text(g)}: {n}" for g, n in sorted(total.items())) or "nothing"
    print(f"scorecard {card.name} version {card.version_id}: scored {sum(total.values())} window(s) ({scored})")
    return 0
