"""`copulse kpis` against the real ClickHouse: JSON and tables, open windows, no data, unreachable server."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
from pydantic import SecretStr

from copulse.cli import main
from copulse.settings import Settings, get_settings
from sinks.clickhouse import ClickHouseSink
from streams.batch import SinkBatch
from sinks.migrations import migrate
from streams.kpis import kpi_row

pytestmark = pytest.mark.integration

REPO_DIR = Path(__file__).resolve().parents[1]
UTC = dt.timezone.utc
W1 = dt.datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
W2 = W1 + dt.timedelta(hours=1)  # latest final
W3 = W1 + dt.timedelta(hours=2)  # still open


def ch_url(clickhouse_settings: dict, database: str) -> str:
    ch = clickhouse_settings
    return f"clickhouse://{quote(ch['user'], safe='')}@{ch['host']}:{ch['port']}/{database}"


def _row(window, partition, version, is_final, slice_name="overall", **values):
    return kpi_row(**
        dict(granularity_seconds=3600, window_start=window, window_end=window + dt.timedelta(hours=1),
             slice=slice_name, partition=partition, version=version, is_final=is_final, **values)
    )


FULL = dict(events=50, active_consumers=20, participating_consumers=7, co_creation_actions=11, ideas_submitted=2,
            ratings=8, rating_sum=33, ratings_satisfied=6, nps_responses=9, nps_promoters=5, nps_detractors=2,
            surveys_invited=12, survey_responses=9, orders=6, revenue_minor=123457, purchasers=5,
            returning_purchasers=2, sessions=14, sessions_timed=10, session_ms=754321, feature_uses=9,
            feature_users=4, answerable_feedback=19, follow_up_feedback=5, enterprise_events=13, answers_sent=9,
            cases_closed=3, ideas_under_review=2, ideas_planned=1, ideas_in_progress=0, ideas_shipped=1,
            ideas_declined=0)


def rows() -> list[tuple]:
    half = {k: v // 2 for k, v in FULL.items()}
    rest = {k: FULL[k] - half[k] for k in FULL}
    return [
        _row(W1, 0, 1, 1, events=5, active_consumers=5),
        _row(W2, 0, 1, 0, **{k: 1 for k in FULL}),  # stale version
        _row(W2, 0, 2, 1, **half),
        _row(W2, 1, 4, 1, **rest),
        _row(W3, 0, 1, 0, events=3, active_consumers=2),
        _row(W2, 0, 1, 1, "channel", channel="web", events=4, active_consumers=3, orders=1, revenue_minor=999),
        _row(W2, 1, 1, 1, "channel", channel="app", events=6, active_consumers=4),
    ]


@pytest.fixture
def cli_env(clickhouse_db, clickhouse_settings, monkeypatch):
    """A migrated database with fixture rows, and COPULSE_* pointing `copulse` at it."""
    database = clickhouse_db.connection.database
    settings = Settings(clickhouse_url=ch_url(clickhouse_settings, database),
                        clickhouse_password=SecretStr(clickhouse_settings["password"]))
    migrate(settings)
    with ClickHouseSink(settings) as sink:
        sink.store(SinkBatch(kpi_rows=rows()))
    monkeypatch.setenv("COPULSE_CLICKHOUSE_URL", ch_url(clickhouse_settings, database))
    monkeypatch.setenv("COPULSE_CLICKHOUSE_PASSWORD", clickhouse_settings["password"])
    get_settings.cache_clear()
    yield database
    get_settings.cache_clear()


def test_json_scorecard_of_the_latest_final_window(cli_env, capsys):
    assert main(["kpis", "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["granularity"] == "1h" and card["granularity_seconds"] == 3600 and card["slice"] == "overall"
    assert card["window_start"] == "2024-05-01T11:00:00Z" and card["window_end"] == "2024-05-01T12:00:00Z"
    assert card["is_final"] is True and len(card["rows"]) == 1
    row = card["rows"][0]
    assert row["dimensions"] == {} and row["partials"] == 2 and row["counters"] == FULL
    kpis = row["kpis"]
    assert kpis["participation_rate"] == {"value": 7 / 20, "numerator": 7, "denominator": 20, "unit": "rate"}
    assert kpis["csat_avg"]["value"] == 33 / 8 and kpis["csat_pct"]["value"] == 6 / 8
    assert kpis["nps"] == {"value": 100 * (5 - 2) / 9, "numerator": 3, "denominator": 9, "unit": "nps"}
    assert kpis["survey_response_rate"]["value"] == 9 / 12
    assert kpis["answers_per_feedback"] == {"value": 9 / 19, "numerator": 9, "denominator": 19, "unit": "ratio"}
    assert kpis["cases_closed_per_follow_up"]["value"] == 3 / 5 and kpis["ideas_shipped_per_100_ideas"]["value"] == 50
    assert kpis["revenue"]["value"] == "1234.57"  # Decimals as strings, exact
    assert kpis["aov"] == {"value": "205.76", "numerator": "1234.57", "denominator": 6, "unit": "money"}
    assert kpis["returning_purchaser_rate"]["value"] == 2 / 5
    assert kpis["avg_session_seconds"] == {"value": 754321 / 10000, "numerator": 754.321, "denominator": 10,
                                           "unit": "seconds"}
    assert kpis["feature_adoption"] == {"value": 4 / 20, "numerator": 4, "denominator": 20, "unit": "rate"}


def test_table_scorecard_per_channel(cli_env, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    assert main(["kpis", "--slice", "channel"]) == 0
    out = capsys.readouterr().out
    assert "KPI scorecard" in out and "2024-05-01T11:00:00Z" in out and "final" in out
    assert "channel=app" in out and "channel=web" in out
    for label in ("Participation rate", "CSAT (average 1-5)", "NPS", "Survey response rate", "Average order value",
                  "Returning purchasers", "Average session", "Feature adoption", "Revenue"):
        assert label in out
    assert "9.99 EUR" in out  # web revenue
    assert out.index("channel=app") < out.index("channel=web")


def test_an_open_window_on_request(cli_env, capsys):
    assert main(["kpis", "--json", "--window-start", "2024-05-01T12:00"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["is_final"] is False and card["rows"][0]["counters"]["events"] == 3
    assert card["rows"][0]["kpis"]["csat_avg"]["value"] is None  # no ratings: NULL, not an error
    assert main(["kpis", "--window-start", "2024-05-01T14:00+02:00"]) == 0  # = 12:00 UTC
    assert "provisional" in capsys.readouterr().out


def test_no_final_window_yet(cli_env, capsys):
    assert main(["kpis", "--granularity", "1m"]) == 3
    assert "no final 1m window for slice 'overall'" in capsys.readouterr().err
    assert main(["kpis", "--window-start", "2030-01-01T00:00Z"]) == 3
    assert "no 1h window starting 2030-01-01T00:00:00Z" in capsys.readouterr().err


def test_not_migrated_database(clickhouse_db, clickhouse_settings, monkeypatch, capsys):
    monkeypatch.setenv("COPULSE_CLICKHOUSE_URL", ch_url(clickhouse_settings, clickhouse_db.connection.database))
    get_settings.cache_clear()
    try:
        assert main(["kpis"]) == 1
    finally:
        get_settings.cache_clear()
    assert "run `copulse db migrate`" in capsys.readouterr().err


def test_unreachable_clickhouse(monkeypatch, capsys):
    monkeypatch.setenv("COPULSE_CLICKHOUSE_URL", "clickhouse://default@127.0.0.1:1/copulse")
    get_settings.cache_clear()
    try:
        assert main(["kpis"]) == 1
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err
    assert "ClickHouse is unreachable at 127.0.0.1:1" in err and "start it with `make up`" in err


def test_bad_arguments(capsys):
    assert main(["kpis", "--granularity", "1x"]) == 1
    assert "bad duration" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["kpis", "--window-start", "yesterday"])


def test_the_installed_command_end_to_end(cli_env):
    result = subprocess.run(
        [sys.executable, "-m", "copulse.cli", "kpis", "--json", "--slice", "channel"],
        cwd=REPO_DIR, env=dict(os.environ), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    card = json.loads(result.stdout)
    assert [r["dimensions"] for r in card["rows"]] == [{"channel": "app"}, {"channel": "web"}]
    assert card["rows"][1]["kpis"]["revenue"]["value"] == "9.99"
