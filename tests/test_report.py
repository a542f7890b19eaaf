"""`copulse report` on real data: generated events -> decode/validate -> the real window engine
(streams.engine.PartitionEngine) -> the real ClickHouse sink into a fresh database -> the HTML report."""

from __future__ import annotations

import datetime as dt
import re
import time
import zlib
from collections import defaultdict
from urllib.parse import quote

import pytest
from pydantic import SecretStr

from copulse.cli import main
from copulse.readmodel import SELECT_COLUMNS
from copulse.scorecard.definition import load_scorecard
from copulse.scorecard.index import score_row
from copulse.settings import Settings, get_settings

pytestmark = pytest.mark.integration

UTC = dt.UTC
T0 = dt.datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
HOURS = 6


def populate(settings: Settings, hours: int = HOURS, rate: float = 6.0) -> None:
    """``rate`` events per second of event time for ``hours`` hours, through the real engine and sink."""
    from copulse.generator import generate_events
    from sinks.clickhouse import ClickHouseSink
    from streams.batch import RawEvent, SinkBatch
    from sinks.migrations import migrate
    from streams.codec import Decoder
    from streams.engine import Outcome, PartitionEngine
    from streams.errors import DeadLetter
    from streams.validation import decode_event

    migrate(settings)
    STORED_RAW = (Outcome.FOLDED, Outcome.LATE, Outcome.WINDOW_CLOSED)
    partitions = 3
    count = int(hours * 3600 * rate)
    messages = generate_events(settings, count=count, seed=5, consumers=600, start_ms=int(T0.timestamp() * 1000),
                               event_time_rate=rate)
    decoder = Decoder(settings)
    engines = {p: PartitionEngine(p, settings) for p in range(partitions)}
    offsets: dict[tuple[str, int], int] = defaultdict(int)
    sink = ClickHouseSink(settings)
    batch = SinkBatch()
    clock = 0.0
    wall_ms = int(time.time() * 1000)

    def flush(now: float) -> None:
        nonlocal batch
        for engine in engines.values():
            batch.kpi_rows += engine.flush(now)[0]
        sink.store(batch)
        batch = SinkBatch()

    for i, msg in enumerate(messages):
        partition = zlib.crc32(msg.key) % partitions if msg.key else 0
        offset = offsets[(msg.topic, partition)]
        offsets[(msg.topic, partition)] += 1
        try:
            event = decode_event(decoder, settings, msg.topic, msg.key, msg.value, wall_ms)
        except DeadLetter:
            continue
        clock = max(clock, event.occurred_ms / 1000 + 2)
        if engines[partition].process(event, offset, clock) in STORED_RAW:  # as streams/pipeline.py keeps them
            batch.events.append(RawEvent(event, partition, offset))
        if i % 2000 == 1999:
            flush(clock)
    flush(clock)
    flush(clock + settings.idle_timeout_seconds + 2 * 3600)  # every source idle: all windows close
    sink.close()


@pytest.fixture(scope="module")
def report_db(clickhouse_settings):
    from clickhouse_driver import Client

    from tests.conftest import unique_name

    name = unique_name("test_report")
    ch = clickhouse_settings
    url = f"clickhouse://{quote(ch['user'], safe='')}@{ch['host']}:{ch['port']}/{name}"
    settings = Settings(clickhouse_url=url, clickhouse_password=SecretStr(ch["password"]),
                        granularities=["1h"], slices=["overall", "channel", "product_id"],
                        max_future_skew_seconds=10 * 365 * 86400)
    populate(settings)
    yield url, settings
    admin = Client(**ch)
    admin.execute(f"DROP DATABASE IF EXISTS {name}")
    admin.disconnect()


@pytest.fixture
def cli(report_db, clickhouse_settings, monkeypatch):
    url, settings = report_db
    monkeypatch.setenv("COPULSE_CLICKHOUSE_URL", url)
    monkeypatch.setenv("COPULSE_CLICKHOUSE_PASSWORD", clickhouse_settings["password"])
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()


def expected_indexes(settings: Settings, since: str = "2024-05-01 08:00:00", until: str = "2024-05-01 14:00:00") -> list[float | None]:
    """The index of every final overall hour window starting in [since, until) (UTC), scored independently."""
    from clickhouse_driver import Client

    ch = settings.clickhouse
    client = Client(**ch)
    rows = client.execute(f"SELECT {', '.join(SELECT_COLUMNS)} FROM kpi_final WHERE granularity_seconds = 3600 "
                          "AND slice = 'overall' AND window_start >= toDateTime(%(since)s, 'UTC') "
                          "AND window_start < toDateTime(%(until)s, 'UTC') ORDER BY window_start",
                          {"since": since, "until": until})
    client.disconnect()
    card = load_scorecard()
    return [score_row(card, dict(zip(SELECT_COLUMNS, r))).index for r in rows]


def test_report_from_real_data(cli, tmp_path, capsys):
    out, png = tmp_path / "report.html", tmp_path / "png"
    rc = main(["report", "--from", "2024-05-01T08:00Z", "--to", "2024-05-01T14:00Z", "--granularity", "1h",
               "--out", str(out), "--png", str(png)])
    assert rc == 0, capsys.readouterr().err
    assert f"wrote {out}" in capsys.readouterr().out
    text = out.read_text()
    # self-contained: inline SVG charts, no external resources
    assert text.count("<svg") == 9
    assert not re.search(r'(src|href)="(http|//)', text) and "<script" not in text
    for title in ("Value co-creation index over time", "Perspective scores over time", "Participation and co-creation",
                  "Satisfaction", "products by index", "Summary", "Feedback loop &amp; innovation",
                  "Idea funnel per submission cohort", "Response rate", "Time to first response", "You said, we did",
                  "Lifecycle per period", "Retention by first-seen cohort"):
        assert title in text, title
    for perspective in ("Financial", "Satisfaction", "Participation &amp; co-creation", "Loyalty",
                        "Usage &amp; innovation"):
        assert perspective in text
    # the numbers: the average of the per-window indexes computed independently from kpi_final
    indexes = [i for i in expected_indexes(cli) if i is not None]
    assert len(indexes) >= 4
    assert f">{sum(indexes) / len(indexes):.1f}<" in text  # average index card
    assert f">{indexes[-1]:.1f}<" in text  # latest index
    assert re.search(r"\d+ of 6 windows scored", text)
    # product ids of the generator's catalogue in the top/bottom table, revenue in the summary card
    assert re.search(r"<td class=\"l\">[A-Z]{3}-\d{3}</td>", text)
    assert "REVENUE (EUR)" in text.upper() and "orders" in text
    # PNG files: one per chart, real PNGs
    files = sorted(p.name for p in png.iterdir())
    assert files == ["feedback_loop.png", "idea_funnel.png", "index.png", "lifecycle.png", "participation.png",
                     "perspectives.png", "products.png", "retention.png", "satisfaction.png"]
    assert all((png / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in files)


def test_report_without_data_in_range_says_where_data_is(cli, tmp_path, capsys):
    rc = main(["report", "--from", "2024-06-01T00:00Z", "--to", "2024-06-02T00:00Z", "--out", str(tmp_path / "x.html")])
    err = capsys.readouterr().err
    assert rc == 3
    assert "no final 1h window of slice overall between 2024-06-01T00:00:00Z and 2024-06-02T00:00:00Z" in err
    assert "exist from 2024-05-01T08:00:00Z to 2024-05-01T" in err
    assert not (tmp_path / "x.html").exists()
    rc = main(["report", "--from", "2024-05-01T08:00Z", "--to", "2024-05-01T14:00Z", "--granularity", "1m",
               "--out", str(tmp_path / "x.html")])
    assert rc == 3 and "other sizes: 1h from 2024-05-01T08:00:00Z" in capsys.readouterr().err


def test_report_for_one_channel_and_bad_options(cli, tmp_path, capsys):
    out = tmp_path / "web.html"
    assert main(["report", "--from", "2024-05-01T08:00Z", "--to", "2024-05-01T14:00Z", "--slice", "channel",
                 "--value", "web", "--out", str(out)]) == 0
    assert "slice <b>channel = web</b>" in out.read_text()
    assert main(["report", "--from", "2024-05-01T08:00Z", "--to", "2024-05-01T14:00Z", "--slice", "channel",
                 "--out", str(out)]) == 2
    assert "needs --value" in capsys.readouterr().err
    assert main(["report", "--from", "2024-05-02T00:00Z", "--to", "2024-05-01T00:00Z"]) == 2
    assert "must be after --from" in capsys.readouterr().err
