"""The read side on ClickHouse 18.16 and on a current release: every function of ``copulse kpis``,
``copulse report``, ``copulse live``, ``copulse reconcile`` and the VCI scoring job that queries ClickHouse is
called with a client of each release over the same generated data (tests/kpi_dataset.py), and both answers are
equal. On the current release (embedded chDB) the client is tests/current_clickhouse.ChdbClient, so the
functions' own SQL runs unchanged, with its parameters substituted by clickhouse-driver's escaping."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import NamedTuple

import pytest

from copulse import kpis_command, live, reconcile, report
from copulse.readmodel import reader_client
from copulse.scorecard.definition import load_scorecard
from copulse.scorecard.job import TABLE, VCI_COLUMNS, VciJob
from copulse.settings import Settings
from sinks.rows import EVENT_TABLES
from tests.kpi_dataset import HOURS, T0, stored_on_current, stored_on_legacy

pytestmark = pytest.mark.integration

SINCE = T0
UNTIL = T0 + dt.timedelta(hours=HOURS + 1)
GRANULARITIES = (60, 3600)
#: scored by the VCI job; 1m windows stay unscored, so ``copulse live`` scores those itself (its other path)
SCORED = (3600,)


class Side(NamedTuple):
    """The dataset on one release: ``reader`` as the read commands use it, ``admin`` as reconcile and the VCI job."""

    release: str
    database: str
    settings: Settings
    reader: object
    admin: object
    given: object | None  # the client the writing code is given (None: it connects to ``settings``' server)


def score_everything(side: Side) -> None:
    """The VCI scoring job over every final window of the dataset, in batches as ``copulse vci score`` does."""
    job = VciJob(side.settings, client=side.given, export=False)
    try:
        while True:
            done = job.run_once(since=int(SINCE.timestamp()), until=int(UNTIL.timestamp()),
                                granularities=list(SCORED), export=False)
            if all(n < int(side.settings.vci_batch_rows) for n in done.scored.values()):
                break
    finally:
        job.close()


@pytest.fixture(scope="module")
def legacy(clickhouse_settings, kpi_dataset):
    with stored_on_legacy(clickhouse_settings, kpi_dataset, "test_read") as (settings, admin):
        side = Side("18.16", settings.clickhouse["database"], settings, reader_client(settings), admin, None)
        score_everything(side)
        yield side
        side.reader.disconnect()


@pytest.fixture(scope="module")
def current(kpi_dataset):
    with stored_on_current(kpi_dataset, "test_read") as (settings, client):
        side = Side("current", settings.clickhouse["database"], settings, client, client, client)
        score_everything(side)
        yield side


def without_wall_clock(value):
    """Dataclasses and dicts with ``computed_at`` (when the job ran, not what it computed) set to None."""
    if dataclasses.is_dataclass(value):
        fields = {f.name: without_wall_clock(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if "computed_at" in fields:
            fields["computed_at"] = None
        return dataclasses.replace(value, **fields)
    if isinstance(value, dict):
        return {k: None if k == "computed_at" else without_wall_clock(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_wall_clock(v) for v in value]
    return value


def both(function, legacy: Side, current: Side, **kwargs) -> tuple:
    """``function(side, **kwargs)`` on both releases."""
    return tuple(without_wall_clock(function(side, **kwargs)) for side in (legacy, current))


def test_vci_job_scores_the_same_windows(legacy, current):
    def stored(side: Side):
        rows = side.admin.execute(f"SELECT {', '.join(VCI_COLUMNS)} FROM `{side.database}`.{TABLE} FINAL")
        return sorted((dict(zip(VCI_COLUMNS, r)) for r in rows), key=repr)

    old, new = both(stored, legacy, current)
    assert len(old) > 20 and {r["granularity_seconds"] for r in old} == set(SCORED)
    assert new == old
    card = load_scorecard(None, settings=legacy.settings)

    def latest(side: Side):
        job = VciJob(side.settings, client=side.given, scorecard=card, export=False)
        try:
            return sorted(job.latest(card), key=repr)
        finally:
            job.close()

    old, new = both(latest, legacy, current)
    assert old and new == old


@pytest.mark.parametrize("granularity, slice_name", [(3600, "overall"), (3600, "channel"), (60, "channel+region"),
                                                     (60, "feature")])
def test_kpis_scorecard_is_the_same(legacy, current, granularity, slice_name):
    def scorecard(side: Side, window_start=None):
        return kpis_command.fetch_scorecard(side.reader, side.database, granularity, slice_name, window_start)

    newest = both(scorecard, legacy, current)
    assert newest[1] == newest[0]
    earlier = both(scorecard, legacy, current, window_start=T0 + dt.timedelta(seconds=granularity))
    assert earlier[1] == earlier[0] != newest[0]


@pytest.mark.parametrize("slice_name, value", [("overall", None), ("channel", "web")])
def test_report_data_is_the_same(legacy, current, slice_name, value):
    card = load_scorecard(None, settings=legacy.settings)

    def fetch(side: Side):
        data = report.fetch(side.reader, side.database, card, 3600, slice_name, value, SINCE, UNTIL)
        return data.windows, data.products, data.product_note, data.history

    old, new = both(fetch, legacy, current)
    assert old[0] and old[3].lifecycle and new == old  # history: exact against the oracles in tests/test_history.py


@pytest.mark.parametrize("granularity, slice_name, value", [(3600, "overall", None), (60, "channel", "app")])
def test_live_state_is_the_same(legacy, current, granularity, slice_name, value):
    card = load_scorecard(None, settings=legacy.settings)

    def state(side: Side):
        return live.fetch_state(side.reader, side.database, card, granularity, slice_name, value)

    old, new = both(state, legacy, current)
    assert old.latest is not None and new == old


def test_reconcile_reads_the_same(legacy, current):
    settings = legacy.settings
    lo, hi = int(SINCE.timestamp()), int(UNTIL.timestamp())

    def reads(side: Side):
        db = side.database
        return dict(
            rejections=reconcile.worker_rejections(side.admin, db, dict(settings.source_topics)),
            first=[reconcile.first_purchases(side.admin, db, settings.source_topics["purchase"], p, 10**9)
                   for p in range(3)],
            stored=reconcile.stored_rows(side.admin, db, list(GRANULARITIES), lo, hi),
            events={table: reconcile.stored_event_ids(side.admin, db, table, lo * 1000, hi * 1000)
                    for table in EVENT_TABLES.values()},
        )

    old, new = both(reads, legacy, current)
    assert all(old["first"]) and old["stored"] and all(old["events"].values())
    assert new == old
