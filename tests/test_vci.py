"""The VCI formula (copulse/scorecard/index.py) on small fixtures whose results are computed by hand in the comments."""

from __future__ import annotations

import datetime as dt
import logging
import textwrap
from decimal import Decimal
from urllib.parse import quote

import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from copulse.scorecard.definition import load_scorecard, parse_scorecard, scorecard_from_dict
from copulse.scorecard.job import VCI_COLUMNS, VciJob
from copulse.settings import Settings
from copulse.scorecard.index import (
    NO_DATA,
    SMALL_SAMPLE,
    KpiInput,
    attainment,
    compute,
    kpi_inputs,
    score_row,
)
from sinks.clickhouse import ClickHouseSink
from streams.batch import SinkBatch
from sinks.migrations import migrate
from streams.kpis import kpi_row

CARD = parse_scorecard(
    textwrap.dedent(
        """\
        name: fixture
        perspectives:
          money:
            weight: 2
            kpis:
              aov: {target: 100, floor: 50, weight: 1, min_sample: 5}
              revenue: {target: 1000, per: 1h, weight: 1}
          voice:
            weight: 1
            kpis:
              csat_avg: {target: 4.5, floor: 3.0, weight: 3, min_sample: 10}
              nps: {target: 40, weight: 1, min_sample: 10}
          speed:
            weight: 1
            kpis:
              avg_session_seconds: {target: 60, floor: 120, direction: lower}
              participation_rate: {target: 0.5, weight: 0}
        """
    )
)

INPUTS = {
    "aov": KpiInput(80, 10),  # (80 - 50) / (100 - 50) = 0.6
    "revenue": KpiInput(1500, 100),  # 1500 / 1000 = 1.5 -> capped at 1
    "csat_avg": KpiInput(3.6, 20),  # (3.6 - 3.0) / (4.5 - 3.0) = 0.4
    "nps": KpiInput(10, 20),  # 10 / 40 = 0.25
    "avg_session_seconds": KpiInput(90, 50),  # (90 - 120) / (60 - 120) = 0.5
    "participation_rate": KpiInput(0.25, 100),  # 0.5 attainment, weight 0: shown, not scored
}


def test_attainment_cases():
    assert attainment(80, 100, 50, "higher") == pytest.approx(0.6)
    assert attainment(40, 100, 50, "higher") == 0.0  # below the floor
    assert attainment(130, 100, 50, "higher") == 1.0  # capped
    assert attainment(75, 100, None, "higher") == 0.75  # no floor: value / target
    assert attainment(-5, 40, None, "higher") == 0.0  # negative NPS without floor
    assert attainment(-50, 40, -20, "higher") == 0.0
    assert attainment(5, 40, -20, "higher") == pytest.approx(25 / 60)
    assert attainment(90, 60, 120, "lower") == pytest.approx(0.5)  # lower is better, floor above target
    assert attainment(50, 60, 120, "lower") == 1.0
    assert attainment(130, 60, 120, "lower") == 0.0
    assert attainment(90, 60, None, "lower") == pytest.approx(60 / 90)  # no floor: target / value
    assert attainment(30, 60, None, "lower") == 1.0


def test_index_of_a_full_window():
    result = compute(CARD, 3600, INPUTS)
    money, voice, speed = result.perspectives
    assert money.score == pytest.approx(100 * (0.6 + 1.0) / 2)  # 80
    assert voice.score == pytest.approx(100 * (3 * 0.4 + 1 * 0.25) / 4)  # 36.25
    assert speed.score == pytest.approx(50.0)  # the weight-0 KPI does not count
    assert speed.kpis[1].attainment == pytest.approx(0.5) and speed.kpis[1].insufficient == ""
    # (2 * 80 + 1 * 36.25 + 1 * 50) / 4
    assert result.index == pytest.approx(61.5625)
    assert not result.insufficient
    assert result.kpi("revenue").attainment == 1.0 and result.kpi("revenue").target.target == 1000


def test_small_sample_kpi_is_left_out_and_weights_renormalised():
    inputs = dict(INPUTS, nps=KpiInput(10, 9))  # 9 responses < min_sample 10
    result = compute(CARD, 3600, inputs)
    nps = result.kpi("nps")
    assert nps.insufficient == SMALL_SAMPLE and nps.attainment is None and nps.value == 10
    assert result.perspective("voice").score == pytest.approx(40.0)  # csat alone: 0.4
    assert result.index == pytest.approx((2 * 80 + 40 + 50) / 4)  # 62.5


def test_insufficient_perspective_is_left_out_and_weights_renormalised():
    inputs = dict(INPUTS, csat_avg=KpiInput(None, 0), nps=KpiInput(10, 3))
    result = compute(CARD, 3600, inputs)
    voice = result.perspective("voice")
    assert voice.insufficient and voice.score is None
    assert [k.insufficient for k in voice.kpis] == [NO_DATA, SMALL_SAMPLE]
    assert result.index == pytest.approx((2 * 80 + 50) / 3)  # 70


def test_nothing_sufficient_gives_null_never_zero():
    result = compute(CARD, 3600, {})
    assert result.index is None and result.insufficient
    assert all(p.score is None for p in result.perspectives)
    assert all(k.insufficient == NO_DATA for k in result.kpis())
    zero = compute(CARD, 3600, {"revenue": KpiInput(0, 10)})  # a real zero is a score of 0, not insufficient
    assert zero.index == 0.0 and zero.perspective("money").score == 0.0


def test_min_perspectives():
    assert scorecard_from_dict(CARD.to_dict()).version_id == CARD.version_id
    strict = scorecard_from_dict({**CARD.to_dict(), "min_perspectives": 3})
    assert strict.version_id != CARD.version_id
    assert compute(strict, 3600, INPUTS).index == pytest.approx(61.5625)
    two = dict(INPUTS, csat_avg=KpiInput(None, 0), nps=KpiInput(None, 0))
    assert compute(strict, 3600, two).index is None
    assert compute(CARD, 3600, two).index == pytest.approx(70.0)


def test_per_scales_additive_targets_to_the_window():
    # 1m window: revenue target 1000 per hour -> 1000 / 60 per minute; 10 / 16.67 = 0.6
    result = compute(CARD, 60, {"revenue": KpiInput(10, 5)})
    assert result.kpi("revenue").target.target == pytest.approx(1000 / 60)
    assert result.kpi("revenue").attainment == pytest.approx(0.6)
    assert result.index == pytest.approx(60.0)  # only money is sufficient, and within it only revenue


def test_by_granularity_overrides_the_default_scorecard():
    card = load_scorecard()
    minute = compute(card, 60, {"participation_rate": KpiInput(0.15, 100)})
    hour = compute(card, 3600, {"participation_rate": KpiInput(0.15, 100)})
    # 1m: (0.15 - 0.05) / (0.25 - 0.05) = 0.5; 1h: below the floor 0.5 -> 0
    assert minute.kpi("participation_rate").attainment == pytest.approx(0.5)
    assert hour.kpi("participation_rate").attainment == 0.0
    assert minute.index is None  # one perspective < min_perspectives 3


def test_kpi_inputs_from_a_kpi_view_row():
    row = {
        "granularity_seconds": 3600, "events": 50, "active_consumers": 20, "participating_consumers": 7,
        "co_creation_actions": 11, "ideas_submitted": 2, "ratings": 8, "rating_sum": 33, "ratings_satisfied": 6,
        "nps_responses": 9, "nps_promoters": 5, "nps_detractors": 2, "surveys_invited": 12, "survey_responses": 9,
        "orders": 6, "revenue_minor": 123457, "purchasers": 5, "returning_purchasers": 2, "sessions": 14,
        "sessions_timed": 10, "session_ms": 754321, "feature_uses": 9, "feature_users": 4,
        "revenue": Decimal("1234.57"), "aov": Decimal("205.76"), "csat_avg": 33 / 8, "nps": 100 * 3 / 9,
        "feature_adoption_denominator": 20, "feature_adoption": 0.2, "participation_rate": 0.35,
    }
    got = kpi_inputs(row)
    assert got["revenue"] == KpiInput(1234.57, 20)
    assert got["aov"] == KpiInput(205.76, 6)  # the view's rounded value, sample = orders
    assert got["csat_avg"] == KpiInput(33 / 8, 8)
    assert got["csat_pct"] == KpiInput(6 / 8, 8)  # derived from counters when the column is absent
    assert got["nps"].value == pytest.approx(100 * 3 / 9) and got["nps"].sample == 9
    assert got["survey_response_rate"] == KpiInput(9 / 12, 12)
    assert got["revenue_per_active_consumer"].value == pytest.approx(1234.57 / 20)
    assert got["orders_per_active_consumer"] == KpiInput(6 / 20, 20)
    assert got["co_creation_per_active_consumer"] == KpiInput(11 / 20, 20)
    assert got["ideas_per_100_active_consumers"] == KpiInput(10.0, 20)
    assert got["returning_purchaser_rate"] == KpiInput(2 / 5, 5)
    assert got["avg_session_seconds"].value == pytest.approx(75.4321) and got["avg_session_seconds"].sample == 10
    assert got["feature_adoption"] == KpiInput(0.2, 20)
    assert got["orders"] == KpiInput(6, 20) and got["active_consumers"] == KpiInput(20, 20)
    # denominators 0 -> no value
    empty = kpi_inputs({"granularity_seconds": 60, "active_consumers": 0, "ratings": 0, "csat_avg": None})
    assert empty["csat_avg"].value is None and empty["participation_rate"].value is None
    assert empty["revenue"].value == 0.0
    # the whole default scorecard on that row (1h targets, small samples -> insufficient)
    result = score_row(load_scorecard(), row)
    assert result.index is None
    assert result.kpi("csat_avg").insufficient == SMALL_SAMPLE


# ============================================================================ scoring job on the real ClickHouse
UTC = dt.UTC
H0 = dt.datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
COUNTS = {"events": 500, "active_consumers": 100, "participating_consumers": 30, "co_creation_actions": 60, "ideas_submitted": 4,
              "ratings": 40, "rating_sum": 150, "ratings_satisfied": 30, "nps_responses": 20, "nps_promoters": 10, "nps_detractors": 4,
              "surveys_invited": 40, "survey_responses": 20, "orders": 25, "revenue_minor": 200000, "purchasers": 20,
              "returning_purchasers": 12, "sessions": 80, "sessions_timed": 50, "session_ms": 4_500_000, "feature_uses": 90,
              "feature_users": 60}
JOB_CARD = textwrap.dedent(
    """\
    name: job fixture
    perspectives:
      money:
        weight: 1
        kpis:
          aov: {target: 100, floor: 50, min_sample: 10}
      voice:
        weight: 1
        kpis:
          csat_avg: {target: 4.5, floor: 3.0, min_sample: 10}
    """
)


def kpi_rows() -> list[tuple]:
    def row(start, slice_name="overall", final=1, partition=0, **over):
        values = dict(COUNTS, **over)
        return kpi_row(**dict(granularity_seconds=3600, window_start=start,
                                      window_end=start + dt.timedelta(hours=1), slice=slice_name, partition=partition,
                                      version=1, is_final=final, **values))

    return [
        row(H0),  # aov 80 -> 0.6, csat 3.75 -> 0.5: index 55
        row(H0 + dt.timedelta(hours=1), ratings=5, rating_sum=20),  # csat sample 5 < 10: index = money = 60
        row(H0 + dt.timedelta(hours=1), "channel", channel="web", revenue_minor=100000, orders=10),  # aov 100 -> 1: 75
        row(H0 + dt.timedelta(hours=1), "channel", channel="app", orders=0, revenue_minor=0, ratings=0,
            rating_sum=0),  # nothing sufficient: NULL
        row(H0 + dt.timedelta(hours=2), final=0),  # still open: not scored
    ]


@pytest.fixture
def vci_db(clickhouse_db, clickhouse_settings):
    database = clickhouse_db.connection.database
    ch = clickhouse_settings
    settings = Settings(clickhouse_url=f"clickhouse://{quote(ch['user'], safe='')}@{ch['host']}:{ch['port']}/{database}",
                        clickhouse_password=SecretStr(ch["password"]), granularities=["1h"])
    migrate(settings)
    with ClickHouseSink(settings) as sink:
        sink.store(SinkBatch(kpi_rows=kpi_rows()))
    return settings, clickhouse_db


def stored(client, database: str) -> list[dict]:
    rows = client.execute(f"SELECT {', '.join(VCI_COLUMNS)} FROM {database}.vci ORDER BY scorecard_version, "
                          "window_start, slice, channel")
    return [dict(zip(VCI_COLUMNS, r)) for r in rows]


def sample(registry: CollectorRegistry, name: str, **labels) -> float | None:
    return registry.get_sample_value(name, labels)


@pytest.mark.integration
def test_job_scores_final_windows_once_and_exports_gauges(vci_db):
    settings, client = vci_db
    database = client.connection.database
    card = parse_scorecard(JOB_CARD)
    registry = CollectorRegistry()
    job = VciJob(settings, scorecard=card, registry=registry)
    try:
        report = job.run_once(since=0)
        assert report.scored == {3600: 4} and report.scorecard_version == card.version_id
        rows = stored(client, database)
        assert len(rows) == 4 and {r["scorecard_version"] for r in rows} == {card.version_id}
        first, web, app, second = rows[0], rows[2], rows[1], rows[3]
        assert (first["slice"], first["window_start"].hour) == ("overall", 10)
        assert first["vci_index"] == pytest.approx(55.0) and first["insufficient"] == 0
        assert first["perspectives"] == ["money", "voice"]
        assert first["perspective_scores"] == pytest.approx([60.0, 50.0])
        assert first["kpis"] == ["aov", "csat_avg"] and first["kpi_values"] == pytest.approx([80.0, 3.75])
        assert first["kpi_attainments"] == pytest.approx([0.6, 0.5]) and first["kpi_targets"] == [100.0, 4.5]
        assert first["kpi_samples"] == [25.0, 40.0] and first["active_consumers"] == 100
        assert second["vci_index"] == pytest.approx(60.0) and second["kpi_insufficient"] == ["", "small_sample"]
        assert second["perspective_scores"][1] is None
        assert web["channel"] == "web" and web["vci_index"] == pytest.approx((100 + 50) / 2)
        assert app["channel"] == "app" and app["vci_index"] is None and app["insufficient"] == 1
        assert app["kpi_insufficient"] == ["no_data", "no_data"]
        # the tidy views
        per = client.execute(f"SELECT perspective, score FROM {database}.vci_perspective_scores "
                             "WHERE slice = 'overall' AND window_start = toDateTime('2024-05-01 10:00:00', 'UTC') "
                             "ORDER BY perspective")
        assert per == [("money", pytest.approx(60.0)), ("voice", pytest.approx(50.0))]
        kpis = client.execute(f"SELECT kpi, attainment, insufficient_reason FROM {database}.vci_kpi_attainments "
                              "WHERE slice = 'overall' AND window_start = toDateTime('2024-05-01 11:00:00', 'UTC') "
                              "ORDER BY kpi")
        assert kpis == [("aov", pytest.approx(0.6), ""), ("csat_avg", None, "small_sample")]
        registered = client.execute(f"SELECT scorecard_version, scorecard_name FROM {database}.vci_scorecards")
        assert registered == [(card.version_id, "job fixture")]
        # gauges: newest window per label set
        common = {"granularity": "3600", "scorecard_version": card.version_id, "region": ""}
        assert sample(registry, "copulse_vci_index", slice="overall", channel="", **common) == pytest.approx(60.0)
        assert sample(registry, "copulse_vci_perspective_score", slice="overall", channel="", perspective="money",
                      **common) == pytest.approx(60.0)
        assert sample(registry, "copulse_vci_perspective_score", slice="overall", channel="", perspective="voice",
                      **common) is None
        assert sample(registry, "copulse_vci_kpi_attainment", slice="overall", channel="", perspective="money",
                      kpi="aov", **common) == pytest.approx(0.6)
        assert sample(registry, "copulse_vci_index", slice="channel", channel="web", **common) == pytest.approx(75.0)
        assert sample(registry, "copulse_vci_index", slice="channel", channel="app", **common) is None
        assert sample(registry, "copulse_vci_insufficient", slice="channel", channel="app", **common) == 1.0
        assert sample(registry, "copulse_vci_active_consumers", slice="overall", channel="", **common) == 100.0
        assert sample(registry, "copulse_vci_window_end_timestamp_seconds", slice="overall", channel="",
                      **common) == (H0 + dt.timedelta(hours=2)).timestamp()
        assert sample(registry, "copulse_vci_series", slice="channel") == 2.0
        # idempotent: nothing new to score, nothing rewritten
        assert job.run_once(since=0).scored == {3600: 0}
        assert stored(client, database) == rows
    finally:
        job.close()


@pytest.mark.integration
def test_a_changed_scorecard_is_a_new_version_and_leaves_old_rows_alone(vci_db, tmp_path, caplog):
    settings, client = vci_db
    database = client.connection.database
    path = tmp_path / "card.yaml"
    path.write_text(JOB_CARD)
    settings = settings.model_copy(update={"scorecard_file": str(path)})
    job = VciJob(settings, registry=CollectorRegistry())
    try:
        assert job.run_once(since=0).total == 4
        old = stored(client, database)
        old_version = old[0]["scorecard_version"]
        path.write_text(JOB_CARD.replace("target: 100, floor: 50", "target: 120, floor: 50"))
        with caplog.at_level(logging.INFO, logger="copulse.scorecard.job"):
            report = job.run_once(since=0)
        assert report.total == 4 and report.scorecard_version != old_version
        assert "changed: version" in caplog.text
        rows = stored(client, database)
        assert len(rows) == 8
        assert [r for r in rows if r["scorecard_version"] == old_version] == old  # untouched, same computed_at
        new = [r for r in rows if r["scorecard_version"] == report.scorecard_version]
        assert new[0]["kpi_targets"] == [120.0, 4.5]
        assert new[0]["kpi_attainments"][0] == pytest.approx((80 - 50) / (120 - 50))
        # an invalid edit keeps the last valid scorecard and says what is wrong
        path.write_text(JOB_CARD.replace("floor: 3.0", "floor: 5.0"))
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="copulse.scorecard.job"):
            assert job.run_once(since=0).scorecard_version == report.scorecard_version
        assert "floor 5 must be below target 4.5" in caplog.text and "keeps the previous scorecard" in caplog.text
        assert len(client.execute(f"SELECT scorecard_version FROM {database}.vci_scorecards FINAL")) == 2
    finally:
        job.close()


def test_run_safely_survives_clickhouse_down_and_logs_once(caplog):
    settings = Settings(clickhouse_url="clickhouse://default@127.0.0.1:1/nowhere")
    job = VciJob(settings, registry=CollectorRegistry())
    with caplog.at_level(logging.WARNING, logger="copulse.scorecard.job"):
        assert job.run_safely() is None
        assert job.run_safely() is None
    assert caplog.text.count("VCI scoring failed") == 1


def test_run_safely_survives_an_invalid_first_scorecard(tmp_path, caplog):
    bad = tmp_path / "bad.yaml"
    bad.write_text(JOB_CARD.replace("target: 100", "target: lots"))
    job = VciJob(Settings(scorecard_file=str(bad), clickhouse_url="clickhouse://default@127.0.0.1:1/nowhere"),
                 registry=CollectorRegistry())
    with caplog.at_level(logging.WARNING, logger="copulse.scorecard.job"):
        assert job.run_safely() is None
    assert "VCI scoring failed" in caplog.text and "line 6: perspectives.money.kpis.aov.target" in caplog.text
