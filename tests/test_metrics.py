"""Prometheus metrics.

* ``KpiExporter`` (streams/kpi_metrics.py) with hand-made KPI rows: finals only, configured slices only, the
  newest window per label set summed over partitions, cap per slice, forgetting stale label sets.
* A real isolated ``copulse worker`` fed with generated events: its /metrics page passes
  ``promtool check metrics``, carries the key pipeline metrics, and counts add up
  (consumed = processed + dead_lettered per topic). The ``copulse_kpi_*`` gauges are checked against
  ClickHouse.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from copulse.settings import Settings
from streams.kpi_metrics import METRIC_NAMES, KpiExporter, metric_name
from streams.kpis import COUNTERS, ROW_COLUMNS, KpiRow
from streams.kpis import kpi_row as make_kpi_row

REPO = Path(__file__).resolve().parents[1]
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
T0 = datetime(2026, 3, 2, 10, 0)


# ============================================================================ helpers
def kpi_row(start: datetime = T0, g: int = 3600, slice: str = "overall", partition: int = 0, final: int = 1,
            **values) -> KpiRow:
    return make_kpi_row(granularity_seconds=g, window_start=start, window_end=start + timedelta(seconds=g),
                        slice=slice, partition=partition, version=2, is_final=final, **values)


def samples(registry: CollectorRegistry) -> dict[tuple, float]:
    """(metric name, frozenset of non-empty labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, frozenset((k, v) for k, v in s.labels.items() if v != ""))] = s.value
    return out


def labels(**kw) -> frozenset:
    return frozenset((k, str(v)) for k, v in kw.items() if v != "")


def exporter(**settings) -> tuple[KpiExporter, CollectorRegistry]:
    registry = CollectorRegistry()
    return KpiExporter(Settings(**settings), registry=registry), registry


def promtool_check_metrics(text: str) -> subprocess.CompletedProcess:
    if not Path(PROMTOOL).exists():
        pytest.fail("promtool is missing: `make provision` installs Debian's prometheus package (gives promtool)")
    return subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60,
                          check=False)


# ============================================================================ KpiExporter unit tests
def test_final_rows_of_the_newest_window_are_summed_over_partitions():
    exp, reg = exporter()
    exp.observe([
        kpi_row(partition=0, ratings=30, rating_sum=140, events=100, session_ms=90_000, revenue_minor=-250),
        kpi_row(partition=3, ratings=10, rating_sum=40, events=50, session_ms=1_500, revenue_minor=12_345),
        kpi_row(partition=5, final=0, ratings=999),  # provisional: ignored
        kpi_row(slice="category", category="audio", ratings=7),  # not a metric slice: ignored
        kpi_row(slice="channel", channel="web", partition=3, ratings=4),
    ])
    got = samples(reg)
    overall = labels(granularity=3600, slice="overall")
    assert got[("copulse_kpi_ratings", overall)] == 40
    assert got[("copulse_kpi_rating_points", overall)] == 180
    assert got[("copulse_kpi_events", overall)] == 150
    assert got[("copulse_kpi_session_seconds", overall)] == pytest.approx(91.5)
    assert got[("copulse_kpi_revenue_minor", overall)] == 12_095
    assert got[("copulse_kpi_window_end_timestamp_seconds", overall)] == T0.replace(tzinfo=UTC).timestamp() + 3600
    assert got[("copulse_kpi_ratings", labels(granularity=3600, slice="channel", channel="web"))] == 4
    assert not any(k[0] == "copulse_kpi_ratings" and ("slice", "category") in k[1] for k in got)
    assert got[("copulse_kpi_series", labels(slice="overall"))] == 1
    assert got[("copulse_kpi_series", labels(slice="channel"))] == 1
    assert got[("copulse_kpi_series", labels(slice="region"))] == 0
    assert got[("copulse_kpi_series_dropped_total", labels(slice="channel"))] == 0
    # one gauge family per counter, named after it except the two renamed for promtool
    names = {k[0] for k in got}
    assert {metric_name(c) for c in COUNTERS} <= names
    assert "copulse_kpi_rating_sum" not in names and "copulse_kpi_session_ms" not in names
    assert METRIC_NAMES["rating_sum"][0] == "rating_points" and METRIC_NAMES["session_ms"][0] == "session_seconds"


def test_a_newer_window_replaces_the_older_one_and_late_partials_of_the_old_one_are_ignored():
    exp, reg = exporter()
    nxt = T0 + timedelta(hours=1)
    exp.observe([kpi_row(partition=0, ratings=5), kpi_row(partition=1, ratings=6)])
    exp.observe([kpi_row(start=nxt, partition=0, ratings=2)])
    exp.observe([kpi_row(partition=2, ratings=100)])  # partial of the old window, arriving late
    exp.observe([kpi_row(start=nxt, partition=1, ratings=3)])
    exp.observe([kpi_row(start=nxt, partition=1, ratings=3)])  # replayed: same partial, no double count
    got = samples(reg)
    overall = labels(granularity=3600, slice="overall")
    assert got[("copulse_kpi_ratings", overall)] == 5
    assert got[("copulse_kpi_window_end_timestamp_seconds", overall)] == nxt.replace(tzinfo=UTC).timestamp() + 3600


def test_granularities_are_separate_label_sets():
    exp, reg = exporter()
    exp.observe([kpi_row(g=60, ratings=1), kpi_row(g=3600, ratings=9)])
    got = samples(reg)
    assert got[("copulse_kpi_ratings", labels(granularity=60, slice="overall"))] == 1
    assert got[("copulse_kpi_ratings", labels(granularity=3600, slice="overall"))] == 9


def test_cardinality_cap_per_slice_drops_and_counts_new_label_sets():
    exp, reg = exporter(metric_max_series_per_slice=2)
    rows = [kpi_row(slice="channel", channel=c, ratings=i + 1) for i, c in enumerate(["web", "app", "store"])]
    rows += [kpi_row(slice="region", region=r) for r in ["DE", "FR"]]
    exp.observe(rows)
    exp.observe([kpi_row(slice="channel", channel="store", partition=1)])  # still refused
    exp.observe([kpi_row(slice="channel", channel="web", partition=1, ratings=10)])  # known: accepted
    got = samples(reg)
    channel = lambda c: labels(granularity=3600, slice="channel", channel=c)
    assert got[("copulse_kpi_ratings", channel("web"))] == 11
    assert got[("copulse_kpi_ratings", channel("app"))] == 2
    assert ("copulse_kpi_ratings", channel("store")) not in got
    assert got[("copulse_kpi_series_dropped_total", labels(slice="channel"))] == 2
    assert got[("copulse_kpi_series_dropped_total", labels(slice="region"))] == 0
    assert got[("copulse_kpi_series", labels(slice="channel"))] == 2


def test_label_sets_without_data_for_two_windows_are_forgotten_and_free_their_place():
    exp, reg = exporter(metric_max_series_per_slice=1)
    exp.observe([kpi_row(slice="channel", channel="web", g=60, ratings=1)])
    exp.observe([kpi_row(slice="channel", channel="app", g=60, start=T0 + timedelta(minutes=1))])  # capped
    exp.observe([kpi_row(g=60, start=T0 + timedelta(minutes=2))])  # overall moves on: web is 2 windows old
    exp.observe([kpi_row(slice="channel", channel="app", g=60, start=T0 + timedelta(minutes=2), ratings=3)])
    got = samples(reg)
    assert ("copulse_kpi_ratings", labels(granularity=60, slice="channel", channel="web")) not in got
    assert got[("copulse_kpi_ratings", labels(granularity=60, slice="channel", channel="app"))] == 3
    assert got[("copulse_kpi_series_dropped_total", labels(slice="channel"))] == 1


def test_window_start_as_aware_datetime_or_epoch_seconds():
    exp, reg = exporter()
    aware = T0.replace(tzinfo=UTC)
    epoch = int(aware.timestamp())
    exp.observe([kpi_row(start=aware, partition=0, ratings=1)])
    exp.observe([make_kpi_row(granularity_seconds=3600, window_start=epoch, window_end=epoch + 3600, slice="overall",
                              partition=1, version=2, is_final=1, ratings=2)])
    assert samples(reg)[("copulse_kpi_ratings", labels(granularity=3600, slice="overall"))] == 3


def test_extra_dimension_labels_follow_the_configured_metric_slices():
    exp, reg = exporter(metric_slices=["overall", "category", "channel+region"])
    assert exp.label_names == ("granularity", "slice", "channel", "region", "category")
    exp.observe([kpi_row(slice="category", category="audio", ratings=2),
                 kpi_row(slice="channel+region", channel="web", region="DE", ratings=3)])
    got = samples(reg)
    assert got[("copulse_kpi_ratings", labels(granularity=3600, slice="category", category="audio"))] == 2
    assert got[("copulse_kpi_ratings", labels(granularity=3600, slice="channel+region", channel="web",
                                                region="DE"))] == 3


def test_a_second_exporter_replaces_the_first_on_the_same_registry():
    registry = CollectorRegistry()
    first = KpiExporter(Settings(), registry=registry)
    first.observe([kpi_row(ratings=1)])
    second = KpiExporter(Settings(), registry=registry)  # no "Duplicated timeseries" error
    second.observe([kpi_row(ratings=2)])
    assert samples(registry)[("copulse_kpi_ratings", labels(granularity=3600, slice="overall"))] == 2


def test_exposition_passes_promtool_check_metrics():
    exp, reg = exporter()
    exp.observe([kpi_row(ratings=3, rating_sum=12, session_ms=2000, revenue_minor=999),
                 kpi_row(slice="region", region="DE", ratings=1)])
    result = promtool_check_metrics(generate_latest(reg).decode())
    assert result.returncode == 0, result.stdout + result.stderr


# ============================================================================ the real worker
def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def parse(text: str) -> dict[str, list]:
    """metric family name -> samples (name, labels, value)."""
    return {f.name: list(f.samples) for f in text_string_to_metric_families(text)}


def total(families: dict, sample_name: str, **match) -> float:
    return sum(s.value for fam in families.values() for s in fam
               if s.name == sample_name and all(s.labels.get(k) == v for k, v in match.items()))


@pytest.fixture
def isolated_worker_3(isolated_worker):
    """(env, Settings, ClickHouse client, database, WorkerProcess) of a fresh 3-partition worker (not started)."""
    iso = isolated_worker(COPULSE_PARTITIONS=3)
    return iso.env, iso.settings, iso.client, iso.database, iso.worker()


def latest_final_windows(client, database: str, slices: list[str]) -> dict[tuple, tuple[int, dict]]:
    """What the exporter should show: per (granularity, slice, channel, region) the newest window with final
    rows and the sum of those rows' counters (newest version of every partial); stale label sets left out."""
    cols = ", ".join(f"`{c}`" for c in ROW_COLUMNS)
    rows = client.execute(f"SELECT {cols} FROM `{database}`.kpi_windows WHERE is_final = 1")
    idx = {c: i for i, c in enumerate(ROW_COLUMNS)}
    newest: dict[tuple, int] = {}
    partials: dict[tuple, dict[int, tuple]] = defaultdict(dict)
    for r in rows:
        if r[idx["slice"]] not in slices:
            continue
        key = (str(r[idx["granularity_seconds"]]), r[idx["slice"]], r[idx["channel"]], r[idx["region"]])
        ws = int(r[idx["window_start"]].replace(tzinfo=UTC).timestamp())
        newest[key] = max(newest.get(key, ws), ws)
        partials[(key, ws)][r[idx["partition"]]] = r
    # the exporter forgets label sets two or more windows behind the newest window of their granularity
    newest_by_g: dict[str, int] = {}
    for (g, *_), ws in newest.items():
        newest_by_g[g] = max(newest_by_g.get(g, ws), ws)
    out = {}
    for key, ws in newest.items():
        if ws + 2 * int(key[0]) <= newest_by_g[key[0]]:
            continue
        sums = {c: sum(int(p[idx[c]]) for p in partials[(key, ws)].values()) for c in COUNTERS}
        out[key] = (ws, sums)
    return out


@pytest.mark.integration
def test_real_worker_metrics_pass_promtool_and_add_up(isolated_worker_3):
    from copulse.generator import generate_events, produce

    env, settings, client, database, worker = isolated_worker_3
    now_ms = int(time.time() * 1000)
    # two hours of event time ending ~10 min ago, so most 1m and 1h windows close while the test runs
    messages = list(generate_events(settings, count=900, seed=6, consumers=150, start_ms=now_ms - 7_800_000,
                                    event_time_rate=900 / 7200, invalid_fraction=0.05, duplicate_fraction=0.03,
                                    late_fraction=0.02))
    stats = produce(settings, messages, progress=False)
    assert stats.acked == len(messages) and stats.failed == 0
    invalid = sum(m.expected == "invalid" for m in messages)
    assert invalid > 0

    worker.start()
    port = int(env["COPULSE_METRICS_PORT"])
    deadline = time.time() + 150
    families: dict = {}
    while time.time() < deadline:
        assert worker.alive(), f"worker died:\n{worker.log_tail()}"
        try:
            families = parse(scrape(port))
        except OSError:  # not listening yet
            time.sleep(1)
            continue
        if total(families, "copulse_events_consumed_total") >= len(messages) and \
                total(families, "copulse_flushes_total") > 0 and total(families, "copulse_pending_messages") == 0:
            break
        time.sleep(1)
    text = scrape(port)
    families = parse(text)

    # 1. the whole page passes promtool's linter (base units, _total counters, HELP on everything)
    result = promtool_check_metrics(text)
    assert result.returncode == 0, result.stdout + result.stderr

    # 2. the key metrics are there
    for name in ("copulse_events_consumed", "copulse_events_processed", "copulse_events_dead_lettered",
                 "copulse_watermark_timestamp_seconds", "copulse_watermark_lag_seconds", "copulse_windows_open",
                 "copulse_flushes", "copulse_processing_latency_seconds", "copulse_sink_rows",
                 "copulse_sink_insert_duration_seconds", "copulse_sink_backpressure", "copulse_sink_errors",
                 "copulse_kpi_rows_emitted", "copulse_pending_messages"):
        assert name in families, f"{name} missing from /metrics"
    assert total(families, "copulse_sink_backpressure") == 0
    assert total(families, "copulse_sink_errors_total") == 0

    # 3. counts add up, per topic: consumed = processed + dead_lettered (a fresh worker replays nothing)
    consumed = total(families, "copulse_events_consumed_total")
    assert consumed == len(messages), worker.log_tail()
    assert total(families, "copulse_events_replayed_total") == 0
    for event_type, topic in settings.source_topics.items():
        c = total(families, "copulse_events_consumed_total", topic=topic)
        p = total(families, "copulse_events_processed_total", type=event_type)
        d = total(families, "copulse_events_dead_lettered_total", topic=topic)
        assert c == p + d, (topic, c, p, d)
        assert c == sum(m.topic == topic for m in messages)
    assert total(families, "copulse_events_dead_lettered_total") == invalid

    # 4. the KPI gauges: equal to the newest final windows in ClickHouse
    key_of = lambda s: (s.labels["granularity"], s.labels["slice"], s.labels["channel"], s.labels["region"])
    deadline = time.time() + 60
    while True:
        families = parse(scrape(port))
        got = {key_of(s): s.value for s in families.get("copulse_kpi_events", [])}
        want = latest_final_windows(client, database, settings.metric_slices)
        if got and got == {k: v[1]["events"] for k, v in want.items()}:
            break
        assert time.time() < deadline, f"KPI gauges {got} != ClickHouse {want}"
        time.sleep(2)
    ends = {key_of(s): s.value for s in families["copulse_kpi_window_end_timestamp_seconds"]}
    for key, (ws, sums) in want.items():
        assert ends[key] == ws + int(key[0])
        ratings = {key_of(s): s.value for s in families["copulse_kpi_ratings"]}
        assert ratings[key] == sums["ratings"]
    assert {k[1] for k in got} <= set(settings.metric_slices)
    assert promtool_check_metrics(scrape(port)).returncode == 0
