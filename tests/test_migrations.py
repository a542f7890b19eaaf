"""Migrations: rendering per server version, idempotence, concurrency, checksums, and the row contract."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

import pytest
from clickhouse_driver import Client
from pydantic import SecretStr

from copulse.settings import Settings
from sinks.migrations import (
    MigrationError,
    load_migrations,
    migrate,
    parse_server_version,
    render,
    split_statements,
)
from sinks.rows import EVENT_COLUMNS, KPI_COLUMNS, REJECT_COLUMNS
from streams.kpis import COUNTERS, KEY_COLUMNS, ROW_COLUMNS
from tests.current_clickhouse import current_clickhouse, current_settings

REPO_DIR = Path(__file__).resolve().parents[1]
LEGACY = (18, 16, 1)
MODERN = (24, 8, 4, 13)
EXPECTED_OBJECTS = {
    "schema_migrations",
    "purchases",
    "usage_events",
    "feedback",
    "responses",
    "kpi_windows",
    "rejected",
    "dead_letter_summary",
    "kpi_partials",
    "kpi_totals",
    "kpi",
    "kpi_final",
    "vci",
    "vci_scorecards",
    "vci_perspective_scores",
    "vci_kpi_attainments",
    "loyalty_consumer_days",
    "loyalty_horizon",
    "loyalty_period_days",
    "loyalty_periods",
    "loyalty_activity",
    "loyalty_consumer_lifecycle",
    "loyalty_lifecycle",
    "loyalty_cohort_members",
    "loyalty_cohorts",
    "loyalty_repeat_purchase",
    "loyalty_stickiness",
    "loyalty_stickiness_rolling",
    "feedback_loop_events",
    "feedback_loop_responses",
    "feedback_loop_period_days",
    "feedback_loop_horizon",
    "feedback_loop_feedback",
    "feedback_loop",
    "feedback_loop_backlog",
    "feedback_loop_unmatched_responses",
    "idea_funnel_ideas",
    "idea_funnel",
    "idea_status_changes",
    "ideas_shipped",
}


def ch_settings(clickhouse_settings: dict, database: str, **overrides) -> Settings:
    """Settings for the test ClickHouse only (no Kafka needed)."""
    ch = clickhouse_settings
    return Settings(
        clickhouse_url=f"clickhouse://{quote(ch['user'], safe='')}@{ch['host']}:{ch['port']}/{database}",
        clickhouse_password=SecretStr(ch["password"]),
        **overrides,
    )


@pytest.fixture
def fresh_database(clickhouse_settings):
    """A database name that does not exist yet (migrate must create it); dropped afterwards."""
    name = f"test_mig_{uuid.uuid4().hex[:12]}"
    yield name
    admin = Client(**clickhouse_settings)
    admin.execute(f"DROP DATABASE IF EXISTS {name}")
    admin.disconnect()


class Target(NamedTuple):
    """A fresh database (not created yet) on one ClickHouse release, and an admin client of that server."""

    release: str
    database: str
    settings: Settings
    client: object  # clickhouse-driver's Client, or the embedded current release's (tests/current_clickhouse.py)
    given_client: object | None  # what migrate() is given: None connects to the server of ``settings``

    def migrate(self) -> list[str]:
        return migrate(self.settings, client=self.given_client)


@contextlib.contextmanager
def _legacy_target(clickhouse_settings: dict, database: str):
    client = Client(**clickhouse_settings)
    try:
        yield Target("18.16", database, ch_settings(clickhouse_settings, database), client, None)
    finally:
        client.disconnect()


@contextlib.contextmanager
def _current_target():
    client = current_clickhouse()
    database = f"test_mig_{uuid.uuid4().hex[:12]}"
    try:
        yield Target("current", database, current_settings(database), client, client)
    finally:
        client.execute(f"DROP DATABASE IF EXISTS `{database}`")


@pytest.fixture(params=["18.16", "current"])
def target(request):
    """A fresh database on ClickHouse 18.16 (legacy variant) and on a current release (modern variant) in turn."""
    if request.param == "18.16":
        with _legacy_target(request.getfixturevalue("clickhouse_settings"),
                            request.getfixturevalue("fresh_database")) as t:
            yield t
    else:
        with _current_target() as t:
            yield t


# --- rendering (no server) ---------------------------------------------------------------------------


def test_migration_files_are_numbered_without_gaps():
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert all(len(m.checksum) == 64 for m in migrations)


@pytest.mark.parametrize("version", [LEGACY, (19, 17, 4), (20, 1)])
def test_legacy_render_uses_only_18_16_features(version):
    for migration in load_migrations():
        sql = "\n".join(split_statements(render(migration.template, "copulse", version)))
        for modern in ("LowCardinality", "DateTime64", "CODEC", "TTL", "{{", "}}", "OR REPLACE"):
            assert modern not in sql, f"{migration.name} uses {modern} on {version}"
        assert "`copulse`." in sql


def test_modern_render_uses_low_cardinality():
    rendered = {m.name: render(m.template, "copulse", MODERN) for m in load_migrations()}
    raw = rendered["0001_raw_events.sql"]
    assert "channel          LowCardinality(String)" in raw
    assert "segment          LowCardinality(Nullable(String))" in raw
    assert "{{" not in "".join(rendered.values())
    # the KPI contract columns stay plain String (dimension values are keys of the replacing table)
    assert "LowCardinality" not in rendered["0002_kpi_windows.sql"]


def test_render_refuses_unsafe_database_names():
    with pytest.raises(MigrationError):
        render("SELECT 1 FROM `{{db}}`.t", "x`; DROP DATABASE y; --", LEGACY)


def test_split_statements_respects_quotes_and_comments():
    sql = "-- heading; not a statement\nSELECT 'a;b' -- tail; comment\n;\n\nSELECT `we;ird`;\n-- only a comment;\n"
    assert split_statements(sql) == ["SELECT 'a;b'", "SELECT `we;ird`"]


def test_parse_server_version():
    assert parse_server_version("18.16.1") == (18, 16, 1)
    assert parse_server_version("24.8.4.13") == (24, 8, 4, 13)


def test_print_sql_cli_renders_the_modern_variant_without_a_server(capsys):
    from copulse.cli import main

    assert main(["db", "migrate", "--print-sql", "--server-version", "24.8"]) == 0
    out = capsys.readouterr().out
    assert "LowCardinality(String)" in out and "CREATE VIEW IF NOT EXISTS" in out


# --- real ClickHouse ---------------------------------------------------------------------------------


def _objects(client: Client, database: str) -> dict[str, str]:
    return dict(client.execute("SELECT name, engine FROM system.tables WHERE database = %(d)s", {"d": database}))


def _columns(client: Client, database: str, table: str) -> list[tuple[str, str]]:
    return client.execute(
        "SELECT name, type FROM system.columns WHERE database = %(d)s AND table = %(t)s",
        {"d": database, "t": table},
    )


@pytest.mark.integration
def test_migrate_creates_database_and_is_idempotent(target):
    names = [m.name for m in load_migrations()]
    assert target.migrate() == names
    assert target.migrate() == []
    assert target.migrate() == []
    client, fresh_database = target.client, target.database
    objects = _objects(client, fresh_database)
    assert set(objects) == EXPECTED_OBJECTS
    assert objects["kpi_windows"] == "ReplacingMergeTree" and objects["kpi"] == "View"
    recorded = client.execute(
        f"SELECT version, name, checksum, variant FROM {fresh_database}.schema_migrations FINAL ORDER BY version"
    )
    variant = "legacy" if target.release == "18.16" else "modern"
    assert recorded == [(m.version, m.name, m.checksum, variant) for m in load_migrations()]


@pytest.mark.integration
def test_current_release_gets_the_modern_variant_with_the_legacy_columns(clickhouse_settings, fresh_database):
    """Every table and view of the modern variant (current release) has the columns of the legacy one (18.16), in
    the same order and of the same types once LowCardinality(T) is read as T; the raw tables' text dimensions are
    LowCardinality there."""
    with _legacy_target(clickhouse_settings, fresh_database) as legacy, _current_target() as current:
        legacy.migrate()
        current.migrate()
        objects = _objects(legacy.client, legacy.database)
        assert _objects(current.client, current.database) == objects
        low_cardinality = set()
        for name in objects:
            legacy_columns = _columns(legacy.client, legacy.database, name)
            current_columns = _columns(current.client, current.database, name)
            plain = [(column, re.sub(r"LowCardinality\((.*)\)$", r"\1", type_)) for column, type_ in current_columns]
            assert plain == legacy_columns, name
            low_cardinality |= {f"{name}.{column}" for column, type_ in current_columns if "LowCardinality" in type_}
        assert {"purchases.channel", "purchases.segment", "usage_events.feature", "feedback.kind"} <= low_cardinality


@pytest.mark.integration
def test_tables_match_the_row_contract(target):
    target.migrate()
    client, fresh_database = target.client, target.database
    kpi = _columns(client, fresh_database, "kpi_windows")
    assert tuple(name for name, _ in kpi) == ROW_COLUMNS == KPI_COLUMNS
    types = dict(kpi)
    assert types["granularity_seconds"] == "UInt32" and types["partition"] == "UInt16"
    assert all(types[c] == ("Int64" if c == "revenue_minor" else "UInt64") for c in COUNTERS)
    assert all(types[c] == "String" for c in KEY_COLUMNS[2:-1])
    assert types["version"] == "UInt64" and types["is_final"] == "UInt8"
    assert all(types[c] == "DateTime('UTC')" for c in ("window_start", "window_end", "emitted_at"))
    keys = client.execute(
        "SELECT sorting_key, partition_key FROM system.tables WHERE database = %(d)s AND name = 'kpi_windows'",
        {"d": fresh_database},
    )[0]
    assert [c.strip() for c in keys[0].split(",")] == list(KEY_COLUMNS)
    assert keys[1] == "toYYYYMM(window_start)"
    for table, columns in EVENT_COLUMNS.items():
        actual = _columns(client, fresh_database, table)
        assert tuple(name for name, _ in actual) == columns, table
        assert dict(actual)["occurred_at"] == "DateTime('UTC')"
    assert dict(_columns(client, fresh_database, "purchases"))["amount"] == "Decimal(18, 2)"
    assert tuple(name for name, _ in _columns(client, fresh_database, "rejected")) == REJECT_COLUMNS
    # every counter and every ratio reaches the public view
    kpi_view = {name for name, _ in _columns(client, fresh_database, "kpi")}
    assert set(COUNTERS) <= kpi_view
    assert {
        "participation_rate", "csat_avg", "csat_pct", "nps", "survey_response_rate", "revenue", "aov",
        "returning_purchaser_rate", "avg_session_seconds", "feature_adoption", "feature_adoption_denominator",
        "is_final", "window_end",
    } <= kpi_view
    assert dict(_columns(client, fresh_database, "kpi"))["revenue"] == "Decimal(18, 2)"


@pytest.mark.integration
def test_concurrent_migrations_in_threads(clickhouse_settings):
    """Rounds of 4 threads migrating one fresh database at once: none fails, the result is complete."""
    admin = Client(**clickhouse_settings)
    try:
        for _ in range(5):
            database = f"test_mig_{uuid.uuid4().hex[:12]}"
            settings = ch_settings(clickhouse_settings, database)
            errors: list[BaseException] = []
            barrier = threading.Barrier(4)

            def work(barrier=barrier, settings=settings, errors=errors):
                try:
                    barrier.wait()
                    migrate(settings)
                except BaseException as exc:  # collected and asserted below
                    errors.append(exc)

            threads = [threading.Thread(target=work) for _ in range(4)]
            try:
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(120)
                assert not errors, errors
                assert set(_objects(admin, database)) == EXPECTED_OBJECTS
                assert migrate(settings) == []
            finally:
                admin.execute(f"DROP DATABASE IF EXISTS {database}")
    finally:
        admin.disconnect()


@pytest.mark.integration
def test_concurrent_migrations_in_processes(clickhouse_settings, fresh_database):
    """Three `copulse db migrate` processes (as three workers starting together) into one new database."""
    ch = clickhouse_settings
    env = {
        **os.environ,
        "COPULSE_CLICKHOUSE_URL": f"clickhouse://{quote(ch['user'], safe='')}@{ch['host']}:{ch['port']}/{fresh_database}",
        "COPULSE_CLICKHOUSE_PASSWORD": ch["password"],
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "copulse.cli", "db", "migrate"],
            cwd=REPO_DIR,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    results = [(p.wait(120), *p.communicate()) for p in procs]
    for code, out, err in results:
        assert code == 0, f"exit {code}\n{out}\n{err}"
        assert f"database {fresh_database}" in out
    client = Client(**clickhouse_settings)
    try:
        assert set(_objects(client, fresh_database)) == EXPECTED_OBJECTS
    finally:
        client.disconnect()
    assert migrate(ch_settings(clickhouse_settings, fresh_database)) == []


@pytest.mark.integration
def test_an_edited_applied_migration_is_refused(clickhouse_settings, fresh_database, tmp_path):
    settings = ch_settings(clickhouse_settings, fresh_database)
    first = tmp_path / "0001_things.sql"
    first.write_text("CREATE TABLE IF NOT EXISTS `{{db}}`.things (x UInt8) ENGINE = MergeTree() ORDER BY x;\n")
    assert migrate(settings, migrations=load_migrations(tmp_path)) == ["0001_things.sql"]
    (tmp_path / "0002_more.sql").write_text(
        "CREATE TABLE IF NOT EXISTS `{{db}}`.more (y {{lc:String}}) ENGINE = MergeTree() ORDER BY y;\n"
    )
    assert migrate(settings, migrations=load_migrations(tmp_path)) == ["0002_more.sql"]
    first.write_text(first.read_text() + "-- edited\n")
    with pytest.raises(MigrationError, match="0001_things.sql was changed after it was applied"):
        migrate(settings, migrations=load_migrations(tmp_path))


def test_badly_named_migration_is_refused(tmp_path):
    (tmp_path / "1_oops.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="NNNN_lower_snake_name.sql"):
        load_migrations(tmp_path)


@pytest.mark.integration
def test_migrate_cli_reports_unreachable_server(capsys, monkeypatch):
    from copulse.cli import main
    from copulse.settings import get_settings

    # nothing listens on port 1 of the loopback: connection refused at once
    monkeypatch.setenv("COPULSE_CLICKHOUSE_URL", "clickhouse://default@127.0.0.1:1/copulse")
    get_settings.cache_clear()
    try:
        assert main(["db", "migrate"]) == 1
    finally:
        get_settings.cache_clear()
    assert "unreachable at 127.0.0.1:1" in capsys.readouterr().err


@pytest.mark.integration
def test_upgrade_to_the_enterprise_counters_keeps_stored_windows(target):
    """A database at 0008 with KPI rows of the 22 counters of that time: 0009 appends the enterprise counters (0 in
    the stored rows), recreates the views over them, and the sink's full rows go in next to the old ones."""
    from sinks.clickhouse import ClickHouseSink
    from streams.batch import SinkBatch
    from streams.kpis import kpi_row

    migrations = load_migrations()
    at_0008 = [m for m in migrations if m.version <= 8]
    assert migrate(target.settings, migrations=at_0008, client=target.given_client)[-1] == "0008_feedback_loop.sql"
    db = target.database
    old_counters = COUNTERS[:COUNTERS.index("feature_users") + 1]
    old_columns = KEY_COLUMNS + old_counters + ("window_end", "version", "is_final", "emitted_at")
    target.client.execute(
        f"INSERT INTO `{db}`.kpi_windows ({', '.join(old_columns)}) VALUES",
        [(3600, 1_714_561_200, "overall", "", "", "", "", "", "", 0, *range(1, len(old_counters) + 1),
          1_714_564_800, 45, 1, 1_714_564_801)],
        types_check=True)
    assert target.migrate() == ["0009_enterprise_counters.sql"]
    new = kpi_row(granularity_seconds=3600, window_start=1_714_561_200, window_end=1_714_564_800, slice="overall",
                  partition=1, version=7, is_final=1, events=3, answerable_feedback=4, answers_sent=2,
                  follow_up_feedback=1, cases_closed=1, ideas_submitted=2, ideas_shipped=1)
    with ClickHouseSink(target.settings, client=target.given_client) as sink:
        sink.store(SinkBatch(kpi_rows=[new]))
    columns = ("events", "ideas_submitted", *COUNTERS[len(old_counters):], "answers_per_feedback",
               "cases_closed_per_follow_up", "ideas_shipped_per_100_ideas", "partials")
    got = dict(zip(columns, target.client.execute(f"SELECT {', '.join(columns)} FROM `{db}`.kpi_final")[0]))
    assert got == {"events": 1 + 3, "ideas_submitted": COUNTERS.index("ideas_submitted") + 1 + 2,
                   "answerable_feedback": 4, "follow_up_feedback": 1, "enterprise_events": 0, "answers_sent": 2,
                   "cases_closed": 1, "ideas_under_review": 0, "ideas_planned": 0, "ideas_in_progress": 0,
                   "ideas_shipped": 1, "ideas_declined": 0, "answers_per_feedback": 0.5,
                   "cases_closed_per_follow_up": 1.0, "ideas_shipped_per_100_ideas": 100 / 7, "partials": 2}
