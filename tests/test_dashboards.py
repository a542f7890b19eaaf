"""Grafana provisioning and dashboards.

* The dashboard JSON is what deploy/grafana/build_dashboards.py generates, well-formed, and only uses the two
  provisioned data sources; provisioning paths match docker-compose.yml's mounts.
* Every ClickHouse query (panels and template variables) is expanded like the official plugin does
  ($__timeFilter(col), $__fromTime, $__toTime, $__interval_s, ${var}) and run, as the read-only user
  copulse_reader, against the real ClickHouse 18.16 in a fresh database filled by the real engine
  (streams.engine.PartitionEngine) over generated events and stored by the real sink: every query returns rows,
  with all filters at All and with each filter set to a real value. The same runs on a current release (embedded
  chDB with the modern migration variant, tests/current_clickhouse.py), and both return the same rows.
  Beside the KPI dataset, both databases hold weeks of generated raw events before it (every type, with the
  generator's enterprise answering feedback and moving ideas): the loyalty and feedback-loop panels run for every
  value of the ``period`` variable and return rows for each.
* Every Prometheus expression of the dashboards and of the rules parses (promtool check rules).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.kpi_dataset import HOURS, T0, stored_on_current, stored_on_legacy

REPO = Path(__file__).resolve().parents[1]
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD_FILES = sorted((GRAFANA / "dashboards").glob("*.json"))
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
CH_UID, PROM_UID = "copulse-clickhouse", "copulse-prometheus"
ALL = "__all"

#: weeks of raw events before the KPI dataset, for the lifecycle, retention, feedback-loop and funnel panels
HISTORY_START, HISTORY_DAYS, HISTORY_MESSAGES = dt.datetime(2025, 10, 15, 6, 0, tzinfo=dt.timezone.utc), 77, 12_000
PERIODS = ("day", "week", "month")
# the test's dashboard time range: the history and the KPI dataset
FROM, TO = int(HISTORY_START.timestamp()), int(T0.timestamp()) + HOURS * 3600 + 1800


def load_builder():
    spec = importlib.util.spec_from_file_location("copulse_build_dashboards", GRAFANA / "build_dashboards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dashboards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in DASHBOARD_FILES}


def all_panels(dashboard: dict):
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def targets(datasource_uid: str):
    """(dashboard title, panel title, target) of every query of that data source."""
    for board in dashboards().values():
        for panel in all_panels(board):
            for target in panel.get("targets", []):
                if (target.get("datasource") or panel.get("datasource") or {}).get("uid") == datasource_uid:
                    yield board["title"], panel["title"], target


# ============================================================================ macro / variable expansion
def expand(sql: str, values: dict[str, str], frm: int = FROM, to: int = TO, interval_s: int = 60) -> str:
    """What the ClickHouse plugin sends: Grafana variables first (raw values; the custom All value is used
    as is), then the plugin's macros."""
    for name, value in values.items():
        sql = sql.replace("${" + name + "}", value)
        sql = re.sub(r"\$" + name + r"\b", value, sql)

    def time_filter(match: re.Match) -> str:
        column = match.group(1).strip()
        return f"{column} >= toDateTime({frm}) AND {column} <= toDateTime({to})"

    sql = re.sub(r"\$__timeFilter\(([^)]*)\)", time_filter, sql)
    sql = sql.replace("$__fromTime", f"toDateTime({frm})").replace("$__toTime", f"toDateTime({to})")
    sql = sql.replace("$__interval_s", str(interval_s))
    leftover = re.findall(r"\$\{?\w+", sql)
    assert not leftover, f"unexpanded {leftover} in:\n{sql}"
    return sql


def test_expander_matches_the_plugin_macros():
    got = expand("SELECT 1 WHERE $__timeFilter(window_start) AND x = '${channel}' AND g = $granularity "
                 "AND m >= $__fromTime AND m <= $__toTime AND i = $__interval_s",
                 {"channel": "web", "granularity": "3600"}, frm=10, to=20, interval_s=30)
    assert got == ("SELECT 1 WHERE window_start >= toDateTime(10) AND window_start <= toDateTime(20) AND x = 'web' "
                   "AND g = 3600 AND m >= toDateTime(10) AND m <= toDateTime(20) AND i = 30")


# ============================================================================ static checks
def test_dashboards_are_generated_and_well_formed():
    builder = load_builder()
    rendered = builder.render()
    assert sorted(rendered) == [p.name for p in DASHBOARD_FILES]
    for name, text in rendered.items():
        assert (GRAFANA / "dashboards" / name).read_text() == text, (
            f"{name} differs from the generator: run python deploy/grafana/build_dashboards.py"
        )
    boards = dashboards()
    titles = {b["title"] for b in boards.values()}
    assert titles == {"Co-creation scorecard", "Participation", "Satisfaction & feedback", "Loyalty & revenue",
                      "Feedback loop & innovation", "Pipeline health"}
    assert len({b["uid"] for b in boards.values()}) == len(boards)
    for board in boards.values():
        ids = [p["id"] for p in all_panels(board)]
        assert len(ids) == len(set(ids)), board["title"]
        for panel in all_panels(board):
            pos = panel["gridPos"]
            assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, (board["title"], panel["title"])
            for target in panel.get("targets", []):
                uid = target["datasource"]["uid"]
                assert uid in (CH_UID, PROM_UID), (board["title"], panel["title"])
                if uid == CH_UID:
                    assert target["editorType"] == "sql" and target["rawSql"].strip()
                    assert target["format"] in (0, 1)
                else:
                    assert target["expr"].strip()
        names = [v["name"] for v in board["templating"]["list"]]
        kpi_filters = ["granularity", "channel", "region", "category", "product"]
        assert names == {"Pipeline health": [], "Feedback loop & innovation": ["period"],
                         "Loyalty & revenue": kpi_filters + ["period"]}.get(board["title"], kpi_filters), board["title"]
        for var in board["templating"]["list"]:
            if var["name"] == "period":  # the periods of the loyalty and feedback-loop views, a fixed list
                assert var["type"] == "custom" and var["query"].split(",") == list(PERIODS)
            else:
                assert var["datasource"]["uid"] == CH_UID and var["query"]
    # the KPI dashboards read the views, the scorecard shows targets as thresholds
    scorecard = boards["copulse-scorecard.json"]
    sqls = [t["rawSql"] for p in all_panels(scorecard) for t in p.get("targets", [])]
    assert all("FROM kpi_final" in s for s in sqls)
    assert "kpi_windows" not in "".join(sqls)
    csat = next(p for p in all_panels(scorecard) if p["title"] == "CSAT (average 1-5)")
    steps = csat["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[-1] == {"color": "green", "value": builder.TARGETS["csat_avg"]}
    assert csat["options"]["graphMode"] == "area"  # the trend sparkline
    pipeline_exprs = " ".join(t["expr"] for p in all_panels(boards["copulse-pipeline.json"])
                              for t in p.get("targets", []) if "expr" in t)
    for metric in ("copulse_events_consumed_total", "copulse_watermark_lag_seconds", "copulse_events_dead_lettered_total",
                   "copulse_events_late_total", "copulse_sink_backpressure", "copulse_sink_insert_duration_seconds_bucket"):
        assert metric in pipeline_exprs


def test_provisioning_matches_docker_compose():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    grafana = compose["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"] if str(v).startswith("./")}
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    assert mounts["/var/lib/grafana/dashboards"] == "./deploy/grafana/dashboards"
    assert "grafana-clickhouse-datasource" in grafana["environment"]["GF_INSTALL_PLUGINS"]

    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/copulse.yml").read_text())["providers"]
    assert [p["options"]["path"] for p in providers] == ["/var/lib/grafana/dashboards"]

    sources = {d["uid"]: d for d in yaml.safe_load((GRAFANA / "provisioning/datasources/copulse.yml").read_text())[
        "datasources"]}
    ch = sources[CH_UID]
    assert ch["type"] == "grafana-clickhouse-datasource"
    assert ch["jsonData"]["protocol"] == "native" and ch["jsonData"]["defaultDatabase"] == "copulse"
    assert ch["jsonData"]["username"] == "${COPULSE_CLICKHOUSE_READONLY_USER}"
    assert ch["secureJsonData"]["password"] == "${COPULSE_CLICKHOUSE_READONLY_PASSWORD}"
    env = grafana["environment"]
    # every ${VAR} of the provisioning file is set in the Grafana container, to the values the stack uses
    lines = (GRAFANA / "provisioning/datasources/copulse.yml").read_text().splitlines()
    text = "\n".join(line.split("#")[0] for line in lines)
    for var in re.findall(r"\$\{(\w+)\}", text):
        assert var in env, f"{var} is not set for the grafana service"
    assert str(env["CLICKHOUSE_PORT"]) == "9000" and env["CLICKHOUSE_HOST"] == "clickhouse"
    assert env["COPULSE_CLICKHOUSE_READONLY_USER"] == "copulse_reader"
    assert sources[PROM_UID]["type"] == "prometheus" and sources[PROM_UID]["url"] == "${PROMETHEUS_URL}"
    assert env["PROMETHEUS_URL"] == "http://prometheus:9090"


# ============================================================================ ClickHouse: real data, real queries
LEGACY, CURRENT = "18.16", "current"


@pytest.fixture(scope="module")
def history() -> list:
    """Raw events of the weeks before the KPI dataset (decoded, duplicates and late ones included)."""
    from tests.test_loyalty import generated_history

    _, events, _ = generated_history(count=HISTORY_MESSAGES, seed=8, start=HISTORY_START, span_days=HISTORY_DAYS,
                                     enterprise_time_scale=0.3)
    assert max(e.event.occurred_ms for e in events) < T0.timestamp() * 1000
    return events


def store_history(settings, events: list, client=None) -> None:
    from sinks.clickhouse import ClickHouseSink
    from streams.batch import SinkBatch

    with ClickHouseSink(settings, client=client) as sink:
        sink.store(SinkBatch(events=events))


@pytest.fixture(scope="module")
def legacy_reader(clickhouse_settings, kpi_dataset, history):
    """A read-only (copulse_reader) client on a fresh database of ClickHouse 18.16 filled with the dataset."""
    from clickhouse_driver import Client

    ch = clickhouse_settings
    with stored_on_legacy(ch, kpi_dataset, "test_dash") as (settings, _):
        store_history(settings, history)
        client = Client(host=ch["host"], port=ch["port"], user=settings.clickhouse_readonly_user,
                        password=settings.clickhouse_readonly_password.get_secret_value(),
                        database=settings.clickhouse["database"],
                        settings={"max_execution_time": 60})  # the plugin sets it too: readonly=2 allows that
        yield client
        client.disconnect()


@pytest.fixture(scope="module")
def current_reader(kpi_dataset, history):
    """The same on the current release (embedded chDB, modern migration variant; no users there)."""
    with stored_on_current(kpi_dataset, "test_dash") as (settings, client):
        store_history(settings, history, client)
        yield client.in_database(settings.clickhouse["database"])


@pytest.fixture(scope="module", params=[LEGACY, CURRENT])
def reader(request):
    """Each release in turn: the panel tests below run on both."""
    return request.getfixturevalue({LEGACY: "legacy_reader", CURRENT: "current_reader"}[request.param])


_RESULTS: dict[tuple[int, str], list] = {}


def run(client, sql: str) -> list:
    """The rows of a query, run once per client: the per-release tests and the comparison share them."""
    key = (id(client), sql)
    if key not in _RESULTS:
        _RESULTS[key] = client.execute(sql)
    return _RESULTS[key]


def variable_values(client, board: dict) -> dict[str, list[str]]:
    """variable name -> values its query returns (first column, as Grafana uses it)."""
    out = {}
    for var in board["templating"]["list"]:
        if var["type"] == "custom":
            out[var["name"]] = var["query"].split(",")
            continue
        rows = run(client, expand(var["query"], {}))
        out[var["name"]] = [str(r[0]) for r in rows]
    return out


def filter_combinations(values: dict[str, list[str]]) -> list[dict[str, str]]:
    """All filters at All; then each dimension set alone, and channel with region (a configured slice)."""
    base = {"granularity": "3600", **{n: ALL for n in values if n != "granularity"}}
    combos = [base, dict(base, granularity="60")]
    for name in ("channel", "region", "category", "product"):
        combos.append(dict(base, **{name: values[name][0]}))
    combos.append(dict(base, channel=values["channel"][0], region=values["region"][0]))
    return combos


def panel_queries(board: dict) -> list[tuple[str, str]]:
    """(panel title, raw SQL) of every ClickHouse query of the board's panels."""
    return [(p["title"], t["rawSql"]) for p in all_panels(board) for t in p.get("targets", [])
            if t["datasource"]["uid"] == CH_UID]


def board_combinations(client, board: dict) -> list[dict[str, str]]:
    """The filter combinations of the KPI filters (if the board has them), each with every period (if it has that
    variable)."""
    values = variable_values(client, board)
    combos = filter_combinations(values) if "granularity" in values else [{}]
    return [dict(combo, period=p) for combo in combos for p in values["period"]] if "period" in values else combos


@pytest.mark.integration
def test_variable_queries_return_values(reader):
    for board in dashboards().values():
        values = variable_values(reader, board)
        if "granularity" not in values:
            continue
        assert values["granularity"] == ["60", "3600"], values["granularity"]
        granularity = next(v for v in board["templating"]["list"] if v["name"] == "granularity")
        assert [r[1] for r in reader.execute(expand(granularity["query"], {}))] == ["1m", "1h"]
        for name in ("channel", "region", "category", "product"):
            assert values[name] and "" not in values[name], (board["title"], name, values[name])


@pytest.mark.integration
@pytest.mark.parametrize("name", [p.name for p in DASHBOARD_FILES])
def test_every_clickhouse_query_returns_rows(reader, name):
    board = dashboards()[name]
    queries = panel_queries(board)
    assert queries or name == "copulse-pipeline.json"
    for combo in board_combinations(reader, board):
        for title, raw in queries:
            sql = expand(raw, combo)
            try:
                rows = run(reader, sql)
            except Exception as exc:  # noqa: BLE001 - show which panel
                pytest.fail(f"{board['title']} / {title} with {combo} failed: {exc}\n{sql}")
            # KPI panels follow the filters (slice of exactly the chosen dimensions): rows for every combination;
            # breakdowns and raw-event panels: rows at least with every filter at All; per-period panels: rows
            # for every period
            must_have_rows = "picked" in raw or all(v in (ALL, "3600") for k, v in combo.items() if k != "period")
            if must_have_rows:
                assert rows, f"{board['title']} / {title} returned no rows with {combo}:\n{sql}"


@pytest.mark.integration
@pytest.mark.parametrize("name", [p.name for p in DASHBOARD_FILES])
def test_every_clickhouse_query_agrees_on_both_releases(legacy_reader, current_reader, name):
    """Every variable and panel query, with every filter combination, returns the same rows on ClickHouse 18.16
    and on the current release (modern migration variant) over the same data (row order aside)."""
    board = dashboards()[name]
    assert variable_values(current_reader, board) == variable_values(legacy_reader, board)
    for combo in board_combinations(legacy_reader, board):
        for title, raw in panel_queries(board):
            sql = expand(raw, combo)
            legacy, current = (sorted(run(client, sql), key=repr) for client in (legacy_reader, current_reader))
            assert current == legacy, f"{board['title']} / {title} with {combo} differs between releases:\n{sql}"


# ============================================================================ Prometheus expressions
def prom_expressions() -> list[tuple[str, str]]:
    out = [(f"{board} / {panel}", t["expr"]) for board, panel, t in targets(PROM_UID)]
    for path in sorted((REPO / "deploy/prometheus/rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                out.append((f"{path.name} / {rule.get('alert') or rule.get('record')}", rule["expr"]))
    return out


def test_every_prometheus_expression_parses(tmp_path):
    exprs = prom_expressions()
    assert len([e for e in exprs if " / " in e[0] and e[0].split(" / ")[0] == "Pipeline health"]) >= 20
    grafana_vars = {"$__rate_interval": "1m", "$__interval": "30s", "$__range": "1h"}
    rules = []
    for i, (where, expr) in enumerate(exprs):
        for var, value in grafana_vars.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"{where}: unexpanded variable in {expr}"
        rules.append({"record": f"copulse_dashboard_check:expr_{i}", "expr": expr})
    path = tmp_path / "expressions.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard-expressions", "rules": rules}]}))
    if not Path(PROMTOOL).exists():
        pytest.fail("promtool is missing: `make provision` installs Debian's prometheus package (gives promtool)")
    result = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr + "\n" + "\n".join(
        f"{i}: {w}" for i, (w, _) in enumerate(exprs))
