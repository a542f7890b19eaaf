"""The window engine without a broker: a controllable clock opens, updates and closes windows
deterministically, and simulated crashes (partially persisted flushes, re-delivered offsets) never
change the final KPIs, which must equal the independent oracle exactly."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from copulse.settings import Settings, slice_dimensions
from streams import changelog
from streams.engine import SOURCE_KEY, Outcome, PartitionEngine

FOLDED, LATE, DUPLICATE, REPLAYED = Outcome.FOLDED, Outcome.LATE, Outcome.DUPLICATE, Outcome.REPLAYED
from streams.events import Event
from streams.kpis import COUNTERS, KEY_COLUMNS, META_COLUMNS, ROW_COLUMNS, epoch_seconds
from tests.oracle import expected_kpis

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms
NOW = 1_800_000_000.0  # wall clock of the fake clock (s)


def make_settings(**overrides) -> Settings:
    base = dict(granularities=["1m", "1h"], allowed_lateness_seconds=30, idle_timeout_seconds=5,
                emit_interval_seconds=1)
    base.update(overrides)
    return Settings(**base)


def to_event(msg: dict) -> Event:
    e = msg["event"]
    record = dict(e)
    record["occurred_at"] = datetime.fromtimestamp(e["occurred_ms"] / 1000, UTC)
    if msg["type"] == "purchase":
        record["amount"] = Decimal(e["amount_minor"]).scaleb(-2)
    return Event(type=msg["type"], event_id=e["event_id"], consumer_id=e["consumer_id"], occurred_ms=e["occurred_ms"],
                 channel=e["channel"], region=e["region"], segment=e.get("segment"), product_id=e["product_id"],
                 category=e["category"], schema_id=0, record=record)


def random_messages(seed: int, n: int, partitions: int = 3, consumers: int = 40, late_every: int = 50,
                    dup_every: int = 30, enterprise: bool = False) -> list[dict]:
    """Events over ~6 minutes of event time, some out of order, some late, some duplicated; with ``enterprise``
    also the company's responses, closed cases and idea status changes (after one in five events, a little before
    or up to a minute after it, some duplicated; drawn from their own random stream, so the consumer activity of
    a seed stays the same)."""
    company_rng = random.Random(seed + 1_000_003)
    rng = random.Random(seed)
    offsets = defaultdict(int)
    msgs = []
    ts = T0
    for i in range(n):
        ts += rng.randint(0, 700)
        cid = f"c{rng.randrange(consumers)}"
        part = hash(cid) % partitions if False else int(cid[1:]) % partitions
        jitter = rng.randint(0, 20_000)
        occurred = ts - jitter
        if i % late_every == late_every - 1:
            occurred = ts - 200_000  # far beyond the allowed lateness
        common = dict(event_id=f"e{i}", consumer_id=cid, occurred_ms=occurred,
                      channel=rng.choice(["web", "app", "store"]), region=rng.choice(["eu", "us"]),
                      segment=rng.choice([None, "smb", "enterprise"]), product_id=rng.choice(["p1", "p2", "p3"]),
                      category=rng.choice(["shoes", "bags"]))
        kind = rng.random()
        if kind < 0.3:
            typ = "purchase"
            ev = dict(common, order_id=f"o{i // 2}", quantity=1, amount_minor=rng.randint(100, 99_999), currency="EUR")
        elif kind < 0.65:
            typ = "usage"
            action = rng.choice(["session_start", "session_end", "feature_use", "beta_use", "customisation"])
            ev = dict(common, session_id=f"s{i}", action=action,
                      feature=rng.choice(["search", "wishlist"]) if action == "feature_use" else None,
                      duration_ms=rng.randint(1000, 900_000) if action == "session_end" else None,
                      co_creation=action in ("beta_use", "customisation"))
        else:
            typ = "feedback"
            fk = rng.choice(["survey_invited", "survey_response", "rating", "nps", "review", "idea", "vote"]
                            + ["bug_report"] * enterprise)
            score = {"rating": rng.randint(1, 5), "nps": rng.randint(0, 10)}.get(fk)
            ev = dict(common, kind=fk, score=score, text=None, in_reply_to="e0" if fk == "vote" else None)
        copies = 2 if i % dup_every == dup_every - 1 else 1
        for _ in range(copies):
            msgs.append({"type": typ, "partition": part, "offset": offsets[(typ, part)], "event": ev})
            offsets[(typ, part)] += 1
        if enterprise and company_rng.random() < 1 / 5:
            rk = company_rng.choice(["response", "response", "case_closed", "idea_status"])
            answer = dict(common, event_id=f"r{i}", kind=rk, in_reply_to=f"e{company_rng.randrange(i + 1)}",
                          team="support", text=None, occurred_ms=occurred + company_rng.randint(-5_000, 60_000),
                          status=company_rng.choice(["under_review", "planned", "in_progress", "shipped", "declined"])
                          if rk == "idea_status" else None)
            for _ in range(2 if company_rng.random() < 0.05 else 1):
                msgs.append({"type": "response", "partition": part, "offset": offsets[("response", part)],
                             "event": answer})
                offsets[("response", part)] += 1
    return msgs


class Harness:
    """Plays the worker's role for one partition: feeds messages, flushes, persists changelog records in
    a compacted dict, 'commits' offsets after a completed flush, and can crash in the middle of a flush."""

    def __init__(self, partition: int, settings: Settings, rng: random.Random) -> None:
        self.partition, self.settings, self.rng = partition, settings, rng
        self.changelog: dict[str, bytes] = {}
        self.committed: dict[str, int] = {}  # type -> next offset to read
        self.rows: list[tuple] = []
        self.outcomes: dict[tuple, str] = {}
        self.engine = PartitionEngine(partition, settings)

    def flush(self, now: float, crash: bool = False) -> bool:
        rows, records = self.engine.flush(now)
        self.rows += rows  # rows are stored before the changelog is written
        if crash:  # only a prefix of the records reached Kafka
            records = records[: self.rng.randrange(len(records) + 1)]
        for key, value in records:
            if value is None:
                self.changelog.pop(key, None)
            else:
                self.changelog[key] = value
        return not crash

    def restart(self) -> None:
        self.engine = PartitionEngine(self.partition, self.settings)
        self.engine.restore(changelog.decode(self.changelog.items()))

    def run(self, msgs: list[dict], crashes: int) -> None:
        by_type = defaultdict(list)
        for m in msgs:
            by_type[m["type"]].append(m)
        crash_points = set(self.rng.sample(range(1, max(2, len(msgs))), min(crashes, max(0, len(msgs) - 1))))
        now = NOW
        step = 0
        pending: dict[str, int] = {}
        while True:
            live = [t for t in by_type if self.committed.get(t, 0) + pending.get(t, 0) < len(by_type[t])]
            if not live:
                break
            typ = self.rng.choice(live)  # the interleaving of the three topics differs on every replay
            m = by_type[typ][self.committed.get(typ, 0) + pending.get(typ, 0)]
            pending[typ] = pending.get(typ, 0) + 1
            outcome = self.engine.process(to_event(m), m["offset"], now)
            if outcome != REPLAYED:
                self.outcomes[(typ, m["offset"])] = outcome
            step += 1
            now += 0.01
            if step in crash_points:
                self.flush(now, crash=True)
                pending = {}
                self.restart()
            elif step % 25 == 0:
                self.flush(now)
                for t, n in pending.items():
                    self.committed[t] = self.committed.get(t, 0) + n
                pending = {}
        self.flush(now)
        for t, n in pending.items():
            self.committed[t] = self.committed.get(t, 0) + n
        # every source goes idle: the watermark follows the wall clock and closes all windows
        self.flush(now + self.settings.idle_timeout_seconds + 7200)


def finals(rows: list[tuple]) -> dict[tuple, dict[str, int]]:
    """Newest version per row key (what ReplacingMergeTree keeps), finals only, summed across partitions."""
    newest: dict[tuple, tuple] = {}
    key_len = len(KEY_COLUMNS)
    for row in rows:
        k = row[:key_len]
        v = row[ROW_COLUMNS.index("version")]
        if k not in newest or v >= newest[k][ROW_COLUMNS.index("version")]:
            newest[k] = row
    out: dict[tuple, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTERS, 0))
    for k, row in newest.items():
        assert row[ROW_COLUMNS.index("is_final")] == 1, f"window never finalised: {k}"
        g, start, name = row[0], row[1], row[2]
        dims = slice_dimensions(name)
        values = tuple(row[KEY_COLUMNS.index(d)] for d in dims)
        agg = out[(g, start * 1000, name, values)]
        for i, c in enumerate(COUNTERS):
            agg[c] += row[key_len + i]
    return dict(out)


def run_pipeline(msgs, settings, seed, crashes):
    rng = random.Random(seed)
    rows = []
    outcomes = {}
    for p in sorted({m["partition"] for m in msgs}):
        h = Harness(p, settings, rng)
        h.run([m for m in msgs if m["partition"] == p], crashes)
        rows += h.rows
        outcomes.update({(p,) + k: v for k, v in h.outcomes.items()})
    return rows, outcomes


def oracle(msgs, settings):
    slices = [(s, slice_dimensions(s)) for s in settings.slices]
    return expected_kpis(msgs, settings.granularity_seconds, slices, settings.allowed_lateness_seconds)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_finals_equal_oracle_without_crashes(seed):
    settings = make_settings()
    msgs = random_messages(seed, 600, enterprise=seed != 1)
    rows, outcomes = run_pipeline(msgs, settings, seed, crashes=0)
    assert finals(rows) == oracle(msgs, settings)
    assert LATE in outcomes.values() and DUPLICATE in outcomes.values() and FOLDED in outcomes.values()


@pytest.mark.parametrize("seed", range(11, 31))
def test_finals_equal_oracle_with_crashes(seed):
    settings = make_settings()
    msgs = random_messages(seed, 500, enterprise=True)
    rows, _ = run_pipeline(msgs, settings, seed, crashes=15)
    assert finals(rows) == oracle(msgs, settings)


def test_versions_grow_and_final_is_highest():
    settings = make_settings()
    msgs = random_messages(5, 300)
    rows, _ = run_pipeline(msgs, settings, 5, crashes=0)
    by_key = defaultdict(list)
    for row in rows:
        by_key[row[: len(KEY_COLUMNS)]].append(row)
    vi, fi = ROW_COLUMNS.index("version"), ROW_COLUMNS.index("is_final")
    for emitted in by_key.values():
        versions = [r[vi] for r in emitted]
        assert versions == sorted(versions)
        assert [r[fi] for r in emitted].count(1) == 1 and emitted[-1][fi] == 1


def ev(i, cid, ts, typ="feedback", **fields):
    base = dict(event_id=f"e{i}", consumer_id=cid, occurred_ms=ts, channel="web", region="eu", segment=None,
                product_id="p1", category="c1")
    defaults = {"feedback": dict(kind="rating", score=5, text=None, in_reply_to=None),
                "purchase": dict(order_id=f"o{i}", quantity=1, amount_minor=1000, currency="EUR"),
                "usage": dict(session_id="s", action="session_start", feature=None, duration_ms=None, co_creation=False),
                "response": dict(kind="response", in_reply_to="e0", team="support", status=None, text=None)}
    return {"type": typ, "partition": 0, "offset": i, "event": {**base, **defaults[typ], **fields}}


def test_window_opens_updates_and_closes_by_event_time():
    s = make_settings(granularities=["1m"], slices=["overall"], allowed_lateness_seconds=10)
    e = PartitionEngine(0, s)
    e.flush(NOW)  # purchases and usage never deliver: idle from NOW + 5 s on
    t = NOW + 6
    e.process(to_event(ev(0, "a", T0 + 1_000)), 0, t)
    e.process(to_event(ev(1, "b", T0 + 59_000, score=2)), 1, t)
    rows, _ = e.flush(t)
    assert [(r[ROW_COLUMNS.index("ratings")], r[ROW_COLUMNS.index("is_final")]) for r in rows] == [(2, 0)]
    # watermark = 69 s - 10 s = 59 s: the first minute is still open
    e.process(to_event(ev(2, "a", T0 + 69_000)), 2, t + 0.1)
    rows, _ = e.flush(t + 0.2)
    assert all(r[ROW_COLUMNS.index("is_final")] == 0 for r in rows)
    # watermark 60 s: the first minute closes with exactly its two ratings, csat 1 of 2
    e.process(to_event(ev(3, "a", T0 + 70_000)), 3, t + 0.3)
    rows, _ = e.flush(t + 0.4)
    final = [r for r in rows if r[ROW_COLUMNS.index("is_final")] == 1]
    assert len(final) == 1
    r = dict(zip(ROW_COLUMNS, final[0]))
    assert (r["ratings"], r["rating_sum"], r["ratings_satisfied"], r["active_consumers"]) == (2, 7, 1, 2)
    assert r["window_start"] == epoch_seconds(datetime(2026, 1, 1, 0, 0))
    assert r["window_end"] == epoch_seconds(datetime(2026, 1, 1, 0, 1))
    # an event for the closed minute is late, whatever the wall clock says
    assert e.process(to_event(ev(4, "c", T0 + 5_000)), 4, t + 99999) == LATE


def test_idle_partition_closes_windows_with_wall_clock():
    s = make_settings(granularities=["1m"], slices=["overall"], idle_timeout_seconds=5)
    e = PartitionEngine(0, s)
    e.process(to_event(ev(0, "a", T0 + 1_000)), 0, NOW)
    assert not [r for r in e.flush(NOW + 4)[0] if r[ROW_COLUMNS.index("is_final")]]
    # idle after 5 s; the watermark then advances with the wall clock from -29 s: 60 s later the minute is past
    assert not [r for r in e.flush(NOW + 60)[0] if r[ROW_COLUMNS.index("is_final")]]
    assert [r for r in e.flush(NOW + 100)[0] if r[ROW_COLUMNS.index("is_final")]]


def test_duplicates_count_once_and_returning_purchasers():
    s = make_settings(granularities=["1m"], slices=["overall"])
    msgs = [ev(0, "a", T0 + 1_000, "purchase"), ev(1, "a", T0 + 61_000, "purchase"),
            ev(2, "b", T0 + 62_000, "purchase")]
    dup = dict(msgs[1], offset=3)
    e = PartitionEngine(0, s)
    outcomes = [e.process(to_event(m), m["offset"], NOW) for m in msgs + [dup]]
    assert outcomes == [FOLDED, FOLDED, FOLDED, DUPLICATE]
    rows, _ = e.flush(NOW + 1000)  # idle: everything closes
    minute2 = [dict(zip(ROW_COLUMNS, r)) for r in rows if r.window_start == epoch_seconds(datetime(2026, 1, 1, 0, 1))]
    assert [(r["purchasers"], r["returning_purchasers"], r["orders"], r["revenue_minor"]) for r in minute2] == [(2, 1, 2, 2000)]


def test_source_without_data_holds_the_watermark_until_idle():
    """At start-up one topic's partition may be fetched later than the others: its windows must wait."""
    s = make_settings(granularities=["1m"], slices=["overall"], allowed_lateness_seconds=0, idle_timeout_seconds=5)
    e = PartitionEngine(0, s)
    e.flush(NOW)
    e.process(to_event(ev(0, "a", T0 + 1_000, "usage")), 0, NOW + 1)
    e.process(to_event(ev(1, "a", T0 + 300_000, "usage")), 1, NOW + 1)
    assert all(not r[ROW_COLUMNS.index("is_final")] for r in e.flush(NOW + 2)[0])
    # feedback for the first minute arrives later, still on time: folded, not late
    assert e.process(to_event(ev(0, "b", T0 + 2_000)), 0, NOW + 3) == FOLDED
    # once purchases and feedback have been silent for 5 s, usage alone drives the watermark
    finals = [r for r in e.flush(NOW + 9)[0] if r[ROW_COLUMNS.index("is_final")]]
    assert [(r[ROW_COLUMNS.index("events")], r[ROW_COLUMNS.index("active_consumers")]) for r in finals] == [(2, 2)]


def test_every_late_outcome_has_a_dead_letter_reason():
    """The worker turns the engine's late outcomes into copulse.late reasons: each must be a known code."""
    WINDOW_CLOSED = Outcome.WINDOW_CLOSED
    from streams.errors import DeadLetter
    from streams.pipeline import LATE_REASONS

    assert set(LATE_REASONS) == {LATE, WINDOW_CLOSED}
    for reason in LATE_REASONS.values():
        assert DeadLetter(reason, "late").reason == reason


def test_state_of_changelog_format_1_restores_exactly():
    """An upgrade mid-stream: tests/fixtures/changelog_v1.json holds what the engine of commit f462719
    (changelog format 1: per-slice membership keys with adders) persisted for half of a message stream,
    its last flush only partly written (consumer records and some aggregates, no clock record), and the rows
    it had emitted. The current engine restores from it, replays from the committed offsets, and the finals
    equal the oracle of the whole stream."""
    import json
    from pathlib import Path

    fixture = json.loads((Path(__file__).parent / "fixtures" / "changelog_v1.json").read_text())
    settings = make_settings()
    msgs = random_messages(7, 900, partitions=2)
    rows = []
    for p, saved in fixture["partitions"].items():
        h = Harness(int(p), settings, random.Random(200 + int(p)))
        h.changelog = {k: v.encode() for k, v in saved["changelog"].items()}
        h.committed = dict(saved["committed"])
        # rows stored before migration 0009 appended counters: ClickHouse gives them 0 for those
        h.rows = [tuple(r[:-len(META_COLUMNS)]) + (0,) * (len(ROW_COLUMNS) - len(r))
                  + tuple(r[-len(META_COLUMNS):]) for r in saved["rows"]]
        h.restart()
        h.run([m for m in msgs if m["partition"] == int(p)], crashes=3)
        rows += h.rows
    # the counters appended later (answerable feedback, ...) count from the upgrade on: the windows open at the
    # upgrade miss what came before it, so only the counters of format 1 are compared here
    v1 = COUNTERS[:COUNTERS.index("feature_users") + 1]

    def format_1_counters(kpis):
        return {key: {c: counters[c] for c in v1} for key, counters in kpis.items()}

    assert format_1_counters(finals(rows)) == format_1_counters(oracle(msgs, settings))


def test_distinct_counts_follow_memberships_across_cells_and_restores():
    """A consumer in several cells of a window counts once per slice value; an order spanning two products
    counts once overall and once per product; a purchase that arrives later but happened earlier turns the
    consumer's purchases in later windows into returning ones. The same after a restore mid-way."""
    s = make_settings(granularities=["1h"], slices=["overall", "product_id"], allowed_lateness_seconds=300)
    hour = 3_600_000
    msgs = [ev(0, "a", T0 + hour + 10_000, "purchase", order_id="o1", product_id="p1"),
            ev(1, "a", T0 + hour + 11_000, "purchase", order_id="o1", product_id="p2"),
            ev(2, "a", T0 + hour + 12_000, "usage", product_id="p2"),
            ev(3, "a", T0 + hour - 20_000, "purchase", order_id="o0", product_id="p1")]  # earlier, out of order

    def hour_two(rows):
        newest = {}
        for r in rows:
            if r.window_start == (T0 + hour) // 1000:
                newest[(r.slice, r.product_id)] = dict(zip(ROW_COLUMNS, r))
        return {k: (r["active_consumers"], r["purchasers"], r["returning_purchasers"], r["orders"])
                for k, r in newest.items()}

    expected = {("overall", ""): (1, 1, 1, 1), ("product_id", "p1"): (1, 1, 1, 1), ("product_id", "p2"): (1, 1, 1, 1)}
    e = PartitionEngine(0, s)
    assert [e.process(to_event(m), m["offset"], NOW) for m in msgs] == [FOLDED] * 4
    assert hour_two(e.flush(NOW)[0]) == expected
    for cut in range(len(msgs) + 1):  # persisted after `cut` events, then restored, then the rest replayed
        e = PartitionEngine(0, s)
        for m in msgs[:cut]:
            e.process(to_event(m), m["offset"], NOW)
        _, records = e.flush(NOW)
        restored = PartitionEngine(0, s)
        restored.restore(changelog.decode([(k, v) for k, v in records if v is not None], restored.intern))
        for m in msgs:  # the whole stream again: what was persisted is replayed
            restored.process(to_event(m), m["offset"], NOW)
        assert hour_two(restored.flush(NOW + 10)[0]) == expected, cut


def test_changelog_keeps_live_consumers_only():
    """Once its windows have closed, a consumer without a purchase has nothing left to remember: its changelog
    record is deleted, so a restore reads the live consumers, not every consumer ever seen. A purchaser keeps its
    record (its first purchase decides returning purchasers later; what it says of closed windows is pruned on
    restore)."""
    s = make_settings(granularities=["1m"], slices=["overall"], idle_timeout_seconds=5)
    e = PartitionEngine(0, s)
    e.process(to_event(ev(0, "a", T0 + 1_000, "usage")), 0, NOW)
    e.process(to_event(ev(1, "b", T0 + 2_000, "purchase")), 0, NOW)
    log: dict[str, bytes] = {}
    for now in (NOW, NOW + 1000, NOW + 1001):  # fold; close the minute (idle); prune it
        for key, value in e.flush(now)[1]:
            if value is None:
                log.pop(key, None)
            else:
                log[key] = value
    consumers = {k.split(changelog.SEP)[-1]: v for k, v in log.items() if k.startswith(changelog.CONSUMER)}
    assert set(consumers) == {"b"}
    assert changelog.decode(log.items()).consumers["b"].state.first_purchase_ms == T0 + 2_000


def test_enterprise_events_count_in_their_own_window_and_make_nobody_active():
    """Responses, closed cases and idea status changes fold into the window of their own event time, in the
    enterprise counters only; a duplicate counts once; the row's version still grows with each of them."""
    s = make_settings(granularities=["1m"], slices=["overall", "channel"], allowed_lateness_seconds=10)
    e = PartitionEngine(0, s)
    e.process(to_event(ev(0, "a", T0 + 1_000, kind="nps", score=3)), 0, NOW)
    e.process(to_event(ev(1, "a", T0 + 2_000, kind="vote", score=None)), 1, NOW)
    e.process(to_event(ev(2, "a", T0 + 3_000, kind="idea", score=None)), 2, NOW)
    e.process(to_event(ev(3, "a", T0 + 3_500, kind="bug_report", score=None)), 3, NOW)
    first = {(r.slice, r.version) for r in e.flush(NOW)[0]}
    answers = [ev(10, "b", T0 + 4_000, "response"), ev(11, "b", T0 + 5_000, "response", kind="case_closed"),
               ev(12, "b", T0 + 6_000, "response", kind="idea_status", status="shipped"),
               ev(12, "b", T0 + 6_000, "response", kind="idea_status", status="shipped")]  # the same event again
    outcomes = [e.process(to_event(m), offset, NOW + 1) for offset, m in enumerate(answers)]
    assert outcomes == [FOLDED, FOLDED, FOLDED, DUPLICATE]
    rows = {r.slice: r for r in e.flush(NOW + 2)[0]}
    overall = rows["overall"]
    assert (overall.events, overall.active_consumers, overall.answerable_feedback, overall.follow_up_feedback) == (4, 1, 3, 2)
    assert (overall.enterprise_events, overall.answers_sent, overall.cases_closed, overall.ideas_shipped,
            overall.ideas_declined) == (3, 2, 1, 1, 0)
    assert {(r.slice, r.version) for r in rows.values()} == {(name, v + 6) for name, v in first}
    assert dict(zip(ROW_COLUMNS, rows["channel"]))["channel"] == "web" and rows["channel"].answers_sent == 2


def test_an_enterprise_source_holds_windows_like_any_other_until_idle():
    """Enterprise events fold into windows, so their source holds the combined watermark while it is active
    (otherwise answers read after the activity would find their window closed, depending on timing); a sparse
    responses topic, read to its end and silent for the idle timeout, stops holding it."""
    s = make_settings(granularities=["1m"], slices=["overall"], allowed_lateness_seconds=10, idle_timeout_seconds=600)
    e = PartitionEngine(0, s)
    for typ in ("purchase", "usage", "feedback"):
        e.process(to_event(ev(0, "a", T0 + 1_000, typ)), 0, NOW)
    assert e.process(to_event(ev(0, "a", T0 + 2_000, "response")), 0, NOW) == FOLDED
    for typ in ("purchase", "usage", "feedback"):
        e.process(to_event(ev(1, "a", T0 + 75_000, typ)), 1, NOW + 1)
    assert not [r for r in e.flush(NOW + 2)[0] if r.is_final]  # the answers' clock is at 2 s: the minute stays open
    assert e.process(to_event(ev(1, "a", T0 + 50_000, "response")), 1, NOW + 3) == FOLDED
    e.wm.hold(SOURCE_KEY["response"], NOW + 500)  # a backlog in Kafka: not idle, whatever the wall clock says
    assert not [r for r in e.flush(NOW + 601)[0] if r.is_final]
    finals = [r for r in e.flush(NOW + 1101)[0] if r.is_final]  # read to its end and silent for 600 s: idle
    assert [(r.window_start, r.events, r.enterprise_events, r.answers_sent) for r in finals] == [(T0 // 1000, 3, 2, 2)]
