"""`copulse live`: rendering (unit) and, end to end, a real worker fed by `copulse generate` in real time whose
VCI rows and metrics the live view shows; Ctrl-C (SIGINT) ends it cleanly."""

from __future__ import annotations

import datetime as dt
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
import warnings

import pytest
from rich.console import Console

from copulse.live import (
    KpiLine,
    LiveState,
    PipelineStatus,
    WindowScore,
    parse_metrics,
    render,
    trend,
)
from copulse.scorecard.definition import load_scorecard
from copulse.settings import Settings

UTC = dt.UTC
START = dt.datetime(2024, 5, 1, 12, 3, tzinfo=UTC)


def text_of(renderable, width: int = 140) -> str:
    console = Console(record=True, width=width, color_system=None)
    console.print(renderable)
    return console.export_text()


def window(start: dt.datetime, index: float | None, csat: float, *, stored: bool = True) -> WindowScore:
    kpis = [
        KpiLine("satisfaction", "csat_avg", "CSAT (average 1-5)", "score", "higher", csat, 4.4, 3.0, 0.4, 25,
                (csat - 3.0) / 1.4, ""),
        KpiLine("satisfaction", "nps", "NPS", "nps", "higher", 20.0, 50.0, -20.0, 0.35, 4, None, "small_sample"),
        KpiLine("financial", "aov", "Average order value", "money", "higher", 321.5, 350.0, 150.0, 0.3, 130,
                0.8575, ""),
    ]
    perspectives = [("financial", "Financial", 0.25, 85.75), ("satisfaction", "Satisfaction", 0.25,
                                                              100 * (csat - 3.0) / 1.4)]
    return WindowScore(start, start + dt.timedelta(minutes=1), index, perspectives, kpis, 650, 1800,
                       start + dt.timedelta(minutes=1, seconds=40) if stored else None)


def test_render_latest_window_with_trends():
    settings = Settings(metrics_port=9464, allowed_lateness_seconds=30, vci_interval_seconds=15, currency="EUR")
    card = load_scorecard()
    latest = window(START, 72.4, 4.1)
    state = LiveState(latest=latest, previous=window(START - dt.timedelta(minutes=1), 69.3, 4.3))
    for k, before in zip(latest.kpis, (4.3, 20.0, 300.0), strict=True):
        k.previous = before
    pipeline = parse_metrics(METRICS)
    pipeline.consumed_rate, pipeline.dlq_rate = 31.25, 0.5
    pipeline.vci_last_success = START.timestamp() + 100
    out = text_of(render(state, pipeline, card, granularity=60, slice_name="overall", value=None, settings=settings,
                         now=START.timestamp() + 110))
    assert "VCI 72.4 / 100" in out and "▲ +3.1 vs previous" in out
    assert "window 12:03–12:04 UTC, final" in out and "650 active consumers" in out
    assert "scored by the worker at 12:04:40" in out
    assert "Financial · 50%" in out and "Satisfaction · 50%" in out
    lines = {line.split("│")[1].strip().split("  ")[0]: line for line in out.splitlines() if "│" in line}
    assert "4.10" in lines["CSAT (average 1-5)"] and "4.40" in lines["CSAT (average 1-5)"]
    assert "▼" in lines["CSAT (average 1-5)"] and "79 %" in lines["CSAT (average 1-5)"]
    assert "too few data" in lines["NPS"] and "→" in lines["NPS"]
    assert "321.50" in lines["Average order value (EUR)"] and "▲" in lines["Average order value (EUR)"]
    assert "consumed 31.2/s (1,500 total)" in out and "dead letters 0.50/s" in out
    assert "watermark lag 2.0 s (max 7.5 s)" in out and "sink ok" in out
    assert "VCI scored 10 s ago" in out and "stored 1,500 events, 300 KPI rows" in out


def test_render_waiting_and_unreachable_worker():
    settings = Settings(metrics_port=9464, allowed_lateness_seconds=30, vci_interval_seconds=15, currency="EUR")
    now = START.timestamp() + 20
    state = LiveState(open_window=(START, 420))
    out = text_of(render(state, PipelineStatus(reachable=False, error="Connection refused"), load_scorecard(),
                         granularity=60, slice_name="overall", value=None, settings=settings, now=now))
    assert "Waiting for the first final 1m window" in out
    assert "Open window 12:03–12:04 UTC: 420 events so far; final at about 12:04:30 UTC (in 70 s)" in out
    assert "worker metrics unreachable at http://127.0.0.1:9464/metrics (Connection refused)" in out
    out = text_of(render(LiveState(error="ClickHouse unreachable at localhost:9000"), None, load_scorecard(),
                         granularity=60, slice_name="overall", value=None, settings=settings, now=now))
    assert "ClickHouse unreachable" in out and "No KPI window in ClickHouse yet" in out


def test_trend_is_direction_aware():
    assert trend(5, 4).plain == "▲" and trend(5, 4).style == "green"
    assert trend(5, 4, higher_is_better=False).style == "red"
    assert trend(4, 5).plain == "▼" and trend(100, 100.1).plain == "→"
    assert trend(None, 3).plain == " "


METRICS = textwrap.dedent(
    """\
    # TYPE copulse_events_consumed_total counter
    copulse_events_consumed_total{topic="copulse.usage",type="usage"} 1000.0
    copulse_events_consumed_total{topic="copulse.feedback",type="feedback"} 500.0
    # TYPE copulse_events_dead_lettered_total counter
    copulse_events_dead_lettered_total{reason="bad_schema_id",topic="copulse.usage"} 12.0
    # TYPE copulse_watermark_lag_seconds gauge
    copulse_watermark_lag_seconds{partition="0",type="usage"} 2.0
    copulse_watermark_lag_seconds{partition="1",type="usage"} 7.5
    # TYPE copulse_sink_backpressure gauge
    copulse_sink_backpressure 0.0
    # TYPE copulse_sink_rows_total counter
    copulse_sink_rows_total{table="usage_events"} 1000.0
    copulse_sink_rows_total{table="feedback"} 450.0
    copulse_sink_rows_total{table="responses"} 50.0
    copulse_sink_rows_total{table="kpi_windows"} 300.0
    # TYPE copulse_vci_last_success_timestamp_seconds gauge
    copulse_vci_last_success_timestamp_seconds 1.7145648e+09
    """
)


def test_parse_metrics():
    p = parse_metrics(METRICS)
    assert p.reachable and p.consumed_total == 1500 and p.dead_lettered_total == 12
    assert (p.watermark_lag_min, p.watermark_lag_max) == (2.0, 7.5)
    assert p.events_stored == 1500 and p.kpi_rows_stored == 300 and not p.backpressure
    assert p.vci_last_success == 1714564800.0


# ============================================================================ end to end with a real worker
LIVE_CARD = textwrap.dedent(
    """\
    name: live test
    min_perspectives: 1
    perspectives:
      satisfaction: {weight: 1, kpis: {csat_avg: {target: 4.5, floor: 3.0, min_sample: 1}}}
      participation: {weight: 1, kpis: {participation_rate: {target: 0.3, floor: 0, min_sample: 1}}}
      financial: {weight: 1, kpis: {aov: {target: 350, floor: 100, min_sample: 1}}}
    """
)


@pytest.fixture
def live_stack(isolated_worker, tmp_path):
    (tmp_path / "card.yaml").write_text(LIVE_CARD)
    iso = isolated_worker(COPULSE_PARTITIONS=2, COPULSE_GRANULARITIES='["10s"]', COPULSE_ALLOWED_LATENESS_SECONDS=1,
                          COPULSE_IDLE_TIMEOUT_SECONDS=2, COPULSE_SLICES='["overall", "channel"]',
                          COPULSE_VCI_SLICES='["overall", "channel"]', COPULSE_METRIC_SLICES='["overall"]',
                          COPULSE_VCI_INTERVAL_SECONDS=2, COPULSE_SCORECARD_FILE=str(tmp_path / "card.yaml"))
    worker = iso.worker()
    full_env = dict(os.environ, **iso.env)
    generator = None
    try:
        worker.start()
        with open(tmp_path / "generate.log", "ab") as log:
            generator = subprocess.Popen([sys.executable, "-m", "copulse.cli", "generate", "--rate", "60",
                                          "--consumers", "150", "--seed", "9"], env=full_env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        yield iso.settings, worker, full_env, generator
    finally:
        if generator is not None and generator.poll() is None:
            os.killpg(generator.pid, signal.SIGTERM)
            generator.wait(timeout=30)


@pytest.mark.integration
def test_live_shows_what_the_worker_scored(live_stack):
    from clickhouse_driver import Client

    settings, worker, env, generator = live_stack
    client = Client(**settings.clickhouse)
    deadline = time.time() + 150
    rows: list = []
    while len(rows) < 2:
        assert worker.alive(), worker.log_tail()
        assert generator.poll() is None, "generator exited"
        assert time.time() < deadline, f"no VCI rows from the worker's timer\n{worker.log_tail()}"
        time.sleep(2)
        try:
            rows = client.execute("SELECT window_start, vci_index FROM vci FINAL WHERE slice = 'overall' "
                                  "AND granularity_seconds = 10 ORDER BY window_start DESC LIMIT 3")
        except Exception:  # noqa: BLE001 - the worker migrates on start; the table may not exist yet
            rows = []
    assert all(r[1] is not None for r in rows), rows
    # the gauges on the worker's metrics endpoint
    with urllib.request.urlopen(f"http://127.0.0.1:{settings.metrics_port}/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    assert 'copulse_vci_index{' in metrics and 'slice="overall"' in metrics
    assert 'copulse_vci_perspective_score{' in metrics and 'perspective="satisfaction"' in metrics
    # one frame of `copulse live`
    result = subprocess.run([sys.executable, "-m", "copulse.cli", "live", "--granularity", "10s", "--once",
                             "--width", "140"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    newest = client.execute("SELECT vci_index FROM vci FINAL WHERE slice = 'overall' AND granularity_seconds = 10 "
                            "ORDER BY window_start DESC LIMIT 3")
    client.disconnect()
    assert any(f"VCI {i:.1f} / 100" in out for (i,) in newest + rows), out
    assert "scorecard live test" in out and "scored by the worker at" in out
    for label in ("Satisfaction", "Participation", "Financial", "CSAT (average 1-5)", "Participation rate"):
        assert label in out
    assert "consumed " in out and "/s (" in out and "watermark lag" in out and "VCI scored" in out
    # the feedback-loop panel (its figures are checked exactly in tests/test_history.py)
    assert "feedback loop  response rate" in out and "unanswered detractors" in out, out
    assert re.search(r"innovation +ideas shipped [\d,]+ of [\d,]+ \(", out), out
    # Ctrl-C ends the live view cleanly
    live = subprocess.Popen([sys.executable, "-m", "copulse.cli", "live", "--granularity", "10s", "--refresh", "1",
                             "--width", "140"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(4)
    assert live.poll() is None, live.communicate()
    live.send_signal(signal.SIGINT)
    stdout, stderr = live.communicate(timeout=20)
    assert live.returncode == 0, stderr
    assert "copulse live: stopped" in stdout and "Traceback" not in stderr


@pytest.mark.integration
def test_make_run_main_job_stops_what_it_started_on_ctrl_c(kafka_bootstrap, clickhouse_settings, tmp_path):
    """`make run`'s main job on the running stack: worker, generator and live view start; a Ctrl-C (SIGINT to the
    foreground process group, as a terminal sends it) stops the generator and the worker and leaves the stack up."""
    from clickhouse_driver import Client
    from kafka.admin import KafkaAdminClient

    from tests.worker_harness import worker_env

    name = f"cpm_{random.randrange(10**8)}"
    env = dict(os.environ, **worker_env(name, kafka_bootstrap, clickhouse_settings, tmp_path, COPULSE_PARTITIONS=2))
    env.pop("COPULSE_STACK_DIR", None)
    log = tmp_path / "make_run.log"
    with open(log, "wb") as out:
        job = subprocess.Popen([sys.executable, "-m", "copulse.mainjob", "--no-provision", "--rate", "20"],
                               env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 180
        while "live scorecard follows" not in log.read_text(errors="replace"):
            assert job.poll() is None, log.read_text(errors="replace")
            assert time.time() < deadline, log.read_text(errors="replace")
            time.sleep(1)
        time.sleep(8)
        text = log.read_text(errors="replace")
        pids = [int(line.split("(pid ")[1].split(")")[0]) for line in text.splitlines()
                if line.startswith("make run: ") and " started (pid " in line]
        assert len(pids) == 2 and all(_alive(p) for p in pids), text
        os.killpg(job.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        assert job.wait(timeout=90) == 0, log.read_text(errors="replace")
        text = log.read_text(errors="replace")
        assert "make run: generator stopped" in text and "make run: worker stopped" in text
        assert "stack was already running" in text and "stopping the stack" not in text and "make run: done" in text
        assert not any(_alive(p) for p in pids)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        client = Client(**{**clickhouse_settings, "database": "default"})
        client.execute(f"DROP DATABASE IF EXISTS `{name}`")
        client.disconnect()
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="copulse-tests")
        try:
            admin.delete_topics([t for t in admin.list_topics() if t.startswith(name)], timeout_ms=30000)
        except Exception as exc:  # noqa: BLE001 - cleanup only
            warnings.warn(f"could not delete the test topics: {exc}", stacklevel=1)
        finally:
            admin.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False
