"""``copulse reconcile``: audit ClickHouse against the input topics, and repair what is safe to repair.

    copulse reconcile --from 2026-05-01T00:00Z --to 2026-05-01T06:00Z [--granularity 1h] [--repair]

1. **Read** the input topics straight from Kafka: every partition from the first record whose
   producer timestamp is >= ``from - margin`` (``offsets_for_times``) up to the end offsets taken at the start.
   Kafka timestamps are producer times, not event times, hence the generous margin (:func:`margin_seconds`).
2. **Recompute** the final KPIs with one fresh :class:`~streams.engine.PartitionEngine` per partition index,
   fed in offset order per source partition (the engine's late decisions depend only on each source
   partition's own prefix) with a constant clock, so no source ever looks idle. Records are decoded as the
   worker does; dead letters are skipped and counted. What depended on the worker's *wall clock* is taken from
   its ``rejected`` table and treated as the worker did: events late because an idle watermark had already
   closed their window (``late`` / ``window_closed``) and events too far ahead of its clock (``dlq`` /
   ``future_event_time``) are left out. First purchases before the read start (returning purchasers) come
   from the raw ``purchases`` table. Enterprise events (``copulse.responses``) are folded like any other, into
   the enterprise counters of their own window.
3. **Compare** every final partial (granularity, window, slice values, source partition) of the windows fully
   inside [from, to) with the newest version of that key in ``kpi_windows``, and every valid event with event
   time in [from, to) with the raw tables (by ``event_id``).
4. **--repair** writes, through the sink (typed inserts), a corrected final row for every differing or missing
   partial (version = newest stored version + 1, so it supersedes it) and every missing raw event (raw tables
   are ReplacingMergeTree: re-inserting is idempotent). Extra rows and windows that are not final yet are
   reported, never touched.

The range is held in memory: audit hours or days, not months. Exit codes: 0 ClickHouse matches the topics (or
--repair fixed every difference), 1 differences (left), 2 usage, configuration or data-availability problem.
"""

from __future__ import annotations

import argparse
import heapq
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

from copulse.readmodel import parse_window_start
from copulse.settings import duration_seconds, slice_dimensions
from sinks.rows import EVENT_TABLES
from streams.engine import Outcome, PartitionEngine
from streams.errors import FUTURE_EVENT_TIME
from streams.errors import WINDOW_CLOSED as WINDOW_CLOSED_REASON
from streams.errors import DeadLetter, RetryableError
from streams.batch import RawEvent, SinkBatch
from streams.events import EVENT_TYPES, Event
from streams.kpis import COUNTERS, KEY_COLUMNS, ROW_COLUMNS, KpiRow, epoch_seconds

EXIT_OK, EXIT_DIFFERENCES, EXIT_USAGE = 0, 1, 2
MIN_EXTRA_MARGIN_SECONDS = 600
FLUSH_EVERY = 20_000  # records fed between engine flushes (closes windows early, bounds memory)
MAX_SHOWN = 50  # difference lines printed
KAFKA_STALL_SECONDS = 30.0

_C0 = len(KEY_COLUMNS)
TOPIC_VARS = {"purchase": "COPULSE_TOPIC_PURCHASES", "usage": "COPULSE_TOPIC_USAGE", "feedback": "COPULSE_TOPIC_FEEDBACK",
              "response": "COPULSE_TOPIC_RESPONSES"}
MATCH, DIFFERS, MISSING, EXTRA, NOT_FINAL = "match", "differs", "missing", "extra", "not final"


class ReconcileError(RuntimeError):
    """Cannot audit (bad option, unreachable service, range not in Kafka); the message says what to do."""


def margin_seconds(settings) -> int:
    """How far before ``from`` (in producer time) the topics are read: the allowed lateness plus the allowed
    future skew of event times, plus max(10 min, 2 x the coarsest granularity). Events of the range are then
    read even when they were produced a little before their event time, and the engine has seen enough of
    each partition's history to make the worker's late and duplicate decisions again."""
    return (settings.allowed_lateness_seconds + settings.max_future_skew_seconds
            + max(MIN_EXTRA_MARGIN_SECONDS, 2 * max(settings.granularity_seconds)))


# ------------------------------------------------------------------------------------------- helpers
def iso(value: datetime | int) -> str:
    """ISO 8601 UTC of a datetime (naive = UTC) or epoch milliseconds."""
    if isinstance(value, int):
        value = datetime.fromtimestamp(value / 1000, UTC)
    elif value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def gran_text(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


class Progress:
    """Phase lines and, at most every 2 s, progress lines on stderr."""

    def __init__(self, stream=sys.stderr) -> None:
        self.stream, self.last = stream, 0.0

    def __call__(self, text: str, *, every: bool = False) -> None:
        now = time.monotonic()
        if every and now - self.last < 2:
            return
        self.last = now
        print(f"copulse reconcile: {text}", file=self.stream, flush=True)


@dataclass(slots=True)
class Message:
    """One record of a source partition, decoded."""

    etype: str
    offset: int
    timestamp: int  # producer timestamp, ms
    event: Event | None  # None: a dead letter
    reason: str | None = None


@dataclass
class KafkaRead:
    messages: dict[tuple[str, int], list[Message]]  # (event type, partition) -> messages in offset order
    topics: dict[str, str]  # event type -> topic
    begin: dict[tuple[str, int], int]
    start: dict[tuple[str, int], int]
    end: dict[tuple[str, int], int]

    @property
    def partitions(self) -> list[int]:
        return sorted({p for _, p in self.start})


@dataclass
class Recomputed:
    finals: dict[tuple, tuple] = field(default_factory=dict)  # key columns -> final row
    complete_until: dict[int, int] = field(default_factory=dict)  # partition -> highest own watermark (ms)
    outcomes: Counter = field(default_factory=Counter)
    raw: dict[str, dict[str, tuple[Event, int, int]]] = field(default_factory=lambda: defaultdict(dict))


@dataclass
class Entry:
    key: tuple
    status: str
    expected: KpiRow | None = None
    stored: KpiRow | None = None
    counters: list[tuple[str, int, int]] = field(default_factory=list)


# ----------------------------------------------------------------------------------------- 1. read
def read_kafka(settings, read_from_ms: int, progress: Progress) -> KafkaRead:
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    where = settings.kafka_bootstrap_servers
    try:
        consumer = KafkaConsumer(bootstrap_servers=where.split(","), group_id=None, enable_auto_commit=False,
                                 client_id="copulse-reconcile", request_timeout_ms=30_000)
    except KafkaError as exc:
        raise ReconcileError(f"Kafka does not answer at {where} ({type(exc).__name__}: {exc}); start it "
                             "(`make up`) or fix COPULSE_KAFKA_BOOTSTRAP_SERVERS") from None
    try:
        tps: dict[TopicPartition, tuple[str, int]] = {}
        for etype, topic in settings.source_topics.items():
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                raise ReconcileError(f"topic {topic!r} does not exist on Kafka at {where}; check {TOPIC_VARS[etype]} "
                                     "(it must name the worker's topics) or run `copulse topics create`")
            tps.update({TopicPartition(topic, p): (etype, p) for p in parts})
        begin = consumer.beginning_offsets(list(tps))
        end = consumer.end_offsets(list(tps))
        found = consumer.offsets_for_times({tp: read_from_ms for tp in tps})
        start = {tp: found[tp].offset if found.get(tp) is not None else end[tp] for tp in tps}
        todo = {tp for tp in tps if start[tp] < end[tp]}
        messages: dict[tuple[str, int], list] = {tps[tp]: [] for tp in tps}
        total, got = sum(end[tp] - start[tp] for tp in todo), 0
        consumer.assign(list(todo))
        for tp in todo:
            consumer.seek(tp, start[tp])
        progress(f"reading {total} records from {len(tps)} partitions of {', '.join(settings.source_topics.values())}")
        last_progress = time.monotonic()
        while todo:
            for tp, records in consumer.poll(timeout_ms=500).items():
                kept = [r for r in records if r.offset < end[tp]]
                messages[tps[tp]] += kept
                got += len(kept)
                last_progress = time.monotonic()
            for tp in list(todo):
                if consumer.position(tp) >= end[tp]:
                    todo.discard(tp)
                    consumer.pause(tp)
            if time.monotonic() - last_progress > KAFKA_STALL_SECONDS:
                raise ReconcileError(f"reading from Kafka at {where} stalled for {KAFKA_STALL_SECONDS:.0f} s "
                                     f"({got} of {total} records read); check the broker and run again")
            progress(f"read {got} / {total} records", every=True)
    except KafkaError as exc:
        raise ReconcileError(f"Kafka at {where} failed ({type(exc).__name__}: {exc}); check the broker "
                             "(`make status`) and COPULSE_KAFKA_BOOTSTRAP_SERVERS, then run again") from None
    finally:
        consumer.close()
    return KafkaRead(messages, dict(settings.source_topics), {tps[tp]: begin[tp] for tp in tps},
                     {tps[tp]: start[tp] for tp in tps}, {tps[tp]: end[tp] for tp in tps})


def check_retention(read: KafkaRead, read_from_ms: int, margin_s: int) -> None:
    """Raise when retention may have deleted records the range needs: a partition whose first retained record
    (log start offset > 0) is already at or after ``from - margin``."""
    lost = [k for k in read.start if read.start[k] == read.begin[k] > 0]
    if not lost:
        return
    lines, earliest_ok = [], read_from_ms
    for etype, p in sorted(lost):
        msgs = read.messages.get((etype, p))
        first = msgs[0].timestamp if msgs else None
        lines.append(f"{read.topics[etype]} partition {p}: first kept offset {read.begin[(etype, p)]}, "
                     + (f"produced {iso(first)}" if first is not None else "no record kept"))
        if first is not None:
            earliest_ok = max(earliest_ok, first + margin_s * 1000)
    raise ReconcileError(
        f"--from minus the margin ({iso(read_from_ms)}) is older than what Kafka still keeps (retention deleted "
        "the older records):\n  " + "\n  ".join(lines) + "\n"
        f"Pick a --from at or after {iso(earliest_ok)} (first kept record + margin {margin_s // 60} min); older "
        "ranges can only be checked against a backup of the topics.")


def decode_all(settings, raw: dict, progress: Progress) -> dict[tuple[str, int], list[Message]]:
    """ConsumerRecords -> Messages, decoded and validated as the worker does (clock: now)."""
    from streams.codec import Decoder
    from streams.validation import decode_event

    decoder = Decoder(settings)
    now_ms = int(time.time() * 1000)
    out: dict[tuple[str, int], list[Message]] = {}
    for (etype, p), records in raw.items():
        topic = settings.source_topics[etype]
        msgs = out[(etype, p)] = []
        for r in records:
            try:
                event, reason = decode_event(decoder, settings, topic, r.key, r.value, now_ms), None
            except DeadLetter as dead:
                event, reason = None, dead.reason
            except RetryableError as exc:
                raise ReconcileError(f"{exc}; the Schema Registry must answer (COPULSE_SCHEMA_REGISTRY_URL), "
                                     "run again when it does") from None
            msgs.append(Message(etype, r.offset, r.timestamp, event, reason))
        progress(f"decoded {topic} partition {p}", every=True)
    return out


# -------------------------------------------------------------------------------------- 2. recompute
def worker_rejections(client, database: str, topics: dict[str, str]) -> dict[tuple[str, int, int], str]:
    """(topic, partition, offset) -> reason of the events the worker rejected because of its wall clock."""
    rows = client.execute(
        f"SELECT topic, partition, offset, reason FROM `{database}`.rejected "
        "WHERE topic IN %(topics)s AND ((kind = 'late' AND reason = %(closed)s) OR (kind = 'dlq' AND reason = %(future)s))",
        {"topics": tuple(topics.values()), "closed": WINDOW_CLOSED_REASON, "future": FUTURE_EVENT_TIME})
    return {(t, int(p), int(o)): r for t, p, o, r in rows}


def first_purchases(client, database: str, topic: str, partition: int, before_offset: int) -> dict[str, int]:
    """consumer -> earliest event time of a purchase the worker folded from this source partition before
    ``before_offset`` (late purchases, in ``rejected``, were never folded)."""
    if before_offset <= 0:
        return {}
    rows = client.execute(
        f"SELECT consumer_id, min(occurred_ms) FROM `{database}`.purchases "
        "WHERE source_partition = %(p)s AND source_offset < %(o)s AND source_offset NOT IN "
        f"(SELECT offset FROM `{database}`.rejected WHERE kind = 'late' AND topic = %(t)s AND partition = %(p)s) "
        "GROUP BY consumer_id", {"p": partition, "o": before_offset, "t": topic})
    return {cid: int(ms) for cid, ms in rows}


def recompute(settings, read: KafkaRead, messages: dict[tuple[str, int], list[Message]],
              excluded: dict[tuple[str, int, int], str], first: dict[int, dict[str, int]],
              raw_range: tuple[int, int], progress: Progress) -> Recomputed:
    out = Recomputed()
    now = time.time()  # constant: no source partition ever looks idle while feeding
    far = now + 10 * 366 * 86400  # every source idle for years: every window closes
    lo, hi = raw_range
    for p in read.partitions:
        engine = PartitionEngine(p, settings)
        for cid, ts in first.get(p, {}).items():
            engine.seed_first_purchase(cid, ts)
        streams = [messages.get((t, p), []) for t in EVENT_TYPES]
        fed = 0
        for m in heapq.merge(*streams, key=lambda m: m.timestamp):  # keeps each partition's offset order
            topic = read.topics[m.etype]
            rejected = excluded.get((topic, p, m.offset))
            in_range = m.event is not None and lo <= m.event.occurred_ms < hi
            if m.event is None:
                engine.skip(m.etype, m.offset, now)
                out.outcomes["dead letter"] += 1
            elif rejected is not None:
                engine.skip(m.etype, m.offset, now)
                out.outcomes[f"worker {rejected}"] += 1
                if rejected == WINDOW_CLOSED_REASON and in_range:  # the worker kept it raw
                    out.raw[EVENT_TABLES[m.etype]][m.event.event_id] = RawEvent(m.event, p, m.offset)
            else:
                outcome = engine.process(m.event, m.offset, now)
                out.outcomes[outcome] += 1
                if outcome != Outcome.DUPLICATE and in_range:
                    out.raw[EVENT_TABLES[m.etype]][m.event.event_id] = RawEvent(m.event, p, m.offset)
            fed += 1
            if fed % FLUSH_EVERY == 0:
                _collect(out, engine.flush(now)[0])
                progress(f"partition {p}: {fed} records folded", every=True)
        _collect(out, engine.flush(now)[0])
        own = engine.watermarks()
        out.complete_until[p] = max(own.values()) if own else -(2**62)
        for _ in range(3):  # closes everything; the next flush prunes
            _collect(out, engine.flush(far)[0])
    return out


def _collect(out: Recomputed, rows: list[KpiRow]) -> None:
    for row in rows:
        if row.is_final:
            out.finals[row[:_C0]] = row


# ---------------------------------------------------------------------------------------- 3. compare
def stored_rows(client, database: str, granularities: list[int], since_s: int, until_s: int) -> dict[tuple, KpiRow]:
    """Newest version of every KPI partial of the windows fully inside the range (what ReplacingMergeTree keeps)."""
    cols = ", ".join(f"`{c}`" for c in ROW_COLUMNS)
    rows = client.execute(
        f"SELECT {cols} FROM `{database}`.kpi_windows WHERE granularity_seconds IN %(g)s "
        "AND window_start >= toDateTime(%(since)s) AND window_end <= toDateTime(%(until)s)",
        {"g": tuple(granularities), "since": since_s, "until": until_s})
    newest: dict[tuple, KpiRow] = {}
    for values in rows:
        row = KpiRow._make(epoch_seconds(v) if isinstance(v, datetime) else v for v in values)
        key = row[:_C0]
        if key not in newest or row.version >= newest[key].version:
            newest[key] = row
    return newest


def compare(expected: dict[tuple, KpiRow], stored: dict[tuple, KpiRow], complete_until: dict[int, int]) -> list[Entry]:
    entries = []
    for key in sorted(set(expected) | set(stored), key=lambda k: (k[0], k[1], k[2], k[3:])):
        exp, got = expected.get(key), stored.get(key)
        if got is not None and got.is_final:
            if exp is None:
                entries.append(Entry(key, EXTRA, None, got))
                continue
            diff = [(c, exp[_C0 + i], got[_C0 + i]) for i, c in enumerate(COUNTERS) if exp[_C0 + i] != got[_C0 + i]]
            entries.append(Entry(key, DIFFERS if diff else MATCH, exp, got, diff))
        elif exp is not None and got is None and _complete(key, complete_until):
            entries.append(Entry(key, MISSING, exp, None))
        else:  # the worker has not closed it yet, or it is still open at the end of the topics
            entries.append(Entry(key, NOT_FINAL, exp, got))
    return entries


def _complete(key: tuple, complete_until: dict[int, int]) -> bool:
    """True when the topics hold data past the window's end in its partition: the window is closed by the data."""
    g, start, partition = key[0], key[1], key[KEY_COLUMNS.index("partition")]
    end_ms = (start + g) * 1000
    return end_ms <= complete_until.get(partition, -(2**62))


def stored_event_ids(client, database: str, table: str, lo_ms: int, hi_ms: int) -> set[str]:
    rows = client.execute(f"SELECT DISTINCT event_id FROM `{database}`.`{table}` "
                          "WHERE occurred_ms >= %(lo)s AND occurred_ms < %(hi)s", {"lo": lo_ms, "hi": hi_ms})
    return {r[0] for r in rows}


# ------------------------------------------------------------------------------------------- output
def _values_text(key: tuple) -> str:
    dims = slice_dimensions(key[2])
    return "+".join(key[KEY_COLUMNS.index(d)] for d in dims) or "-"


def print_report(entries: list[Entry], missing_raw: dict[str, list], raw_expected: dict[str, int], out=sys.stdout) -> None:
    by_g: dict[int, Counter] = defaultdict(Counter)
    groups: dict[int, set] = defaultdict(set)
    for e in entries:
        by_g[e.key[0]][e.status] += 1
        groups[e.key[0]].add((e.key[1], e.key[2], _values_text(e.key)))
    header = ("granularity", "windows x slices", "partials", MATCH, DIFFERS, MISSING, EXTRA, NOT_FINAL)
    table = [header]
    total = Counter()
    for g in sorted(by_g):
        c = by_g[g]
        total.update(c)
        table.append((gran_text(g), str(len(groups[g])), str(sum(c.values())),
                      *(str(c[s]) for s in (MATCH, DIFFERS, MISSING, EXTRA, NOT_FINAL))))
    if len(by_g) > 1:
        table.append(("total", str(sum(len(v) for v in groups.values())), str(sum(total.values())),
                      *(str(total[s]) for s in (MATCH, DIFFERS, MISSING, EXTRA, NOT_FINAL))))
    print("\nKPI partials (one row per window, slice values and source partition):", file=out)
    _print_table(table, out)
    shown = [e for e in entries if e.status in (DIFFERS, MISSING, EXTRA)]
    if shown:
        print("\ndifferences (expected = recomputed from Kafka, stored = newest row in ClickHouse):", file=out)
        rows = [("window start", "gran", "slice", "values", "part", "status", "counters (expected / stored)")]
        for e in shown[:MAX_SHOWN]:
            if e.status == DIFFERS:
                what = ", ".join(f"{c} {a} / {b}" for c, a, b in e.counters)
            elif e.status == MISSING:
                what = f"no row in ClickHouse (events {e.expected.events})"
            else:
                what = f"no events in Kafka (stored events {e.stored.events}, version {e.stored.version})"
            rows.append((iso(e.key[1] * 1000), gran_text(e.key[0]), e.key[2], _values_text(e.key),
                         str(e.key[KEY_COLUMNS.index("partition")]), e.status, what))
        _print_table(rows, out)
        if len(shown) > MAX_SHOWN:
            print(f"... and {len(shown) - MAX_SHOWN} more differences (narrow --from/--to or --granularity to see them)",
                  file=out)
    n_missing = sum(len(v) for v in missing_raw.values())
    detail = ", ".join(f"{t} {len(v)}" for t, v in missing_raw.items() if v)
    print(f"\nraw events with event time in the range: {sum(raw_expected.values())} expected, "
          f"{n_missing} missing" + (f" ({detail})" if detail else ""), file=out)


def _print_table(rows: list[tuple], out) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  " + "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip(), file=out)


# -------------------------------------------------------------------------------------------- repair
def repair(settings, entries: list[Entry], missing_raw: dict[str, list], out=sys.stdout) -> int:
    """Write corrected final rows and missing raw events; returns how many differences are left."""
    from sinks.clickhouse import ClickHouseSink

    now = int(time.time())
    rows = []
    for e in entries:
        if e.status in (DIFFERS, MISSING):
            version = e.stored.version + 1 if e.stored is not None else e.expected.version
            rows.append(e.expected._replace(version=version, is_final=1, emitted_at=now))
    events = [raw for table in missing_raw.values() for raw in table]
    batch = SinkBatch(kpi_rows=rows, events=events)
    if len(batch):
        with ClickHouseSink(settings) as sink:
            sink.store(batch)
    extra = sum(e.status == EXTRA for e in entries)
    print(f"\nrepair: wrote {len(rows)} corrected final KPI rows to kpi_windows (version = newest stored + 1, "
          f"is_final = 1) and {len(events)} missing raw events"
          + (" (" + ", ".join(f"{t} {len(v)}" for t, v in missing_raw.items() if v) + ")" if events else ""), file=out)
    if extra:
        print(f"repair: left {extra} extra rows alone (final rows without events in Kafka are never deleted "
              "automatically); check them and remove wrong ones with ALTER TABLE kpi_windows DELETE WHERE ...",
              file=out)
    return extra


# ----------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="since", type=parse_window_start, required=True,
                        help="start of the event-time range (ISO 8601, naive = UTC), e.g. 2026-05-01T00:00Z")
    parser.add_argument("--to", dest="until", type=parse_window_start, required=True,
                        help="end of the range (exclusive); windows fully inside [from, to) are checked")
    parser.add_argument("--granularity", help="one window size to check, e.g. 1h (default: every configured one)")
    parser.add_argument("--repair", action="store_true",
                        help="write corrected final KPI rows and missing raw events to ClickHouse")
    parser.epilog = ("exit codes: 0 ClickHouse matches the topics (or --repair fixed every difference), "
                     "1 differences, 2 bad option, configuration, or range not (or no longer) in Kafka")


def run(args, settings) -> int:
    import logging

    logging.getLogger("kafka").setLevel(logging.WARNING)  # its INFO lines would drown the progress lines
    from sinks.clickhouse import SinkFatalError

    try:
        return _run(args, settings)
    except (ReconcileError, SinkFatalError) as exc:  # the sink's messages also say what to do
        print(f"copulse reconcile: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _run(args, settings) -> int:
    from clickhouse_driver import Client
    from clickhouse_driver import errors as ch_errors

    progress = Progress()
    configured = settings.granularity_seconds
    if args.granularity:
        try:
            g = duration_seconds(args.granularity)
        except ValueError as exc:
            raise ReconcileError(str(exc)) from None
        if g not in configured:
            raise ReconcileError(f"--granularity {args.granularity} is not a configured window size; use one of "
                                 f"{', '.join(settings.granularities)} (COPULSE_GRANULARITIES)")
        grans = [g]
    else:
        grans = configured
    since_ms, until_ms = int(args.since.timestamp() * 1000), int(args.until.timestamp() * 1000)
    if until_ms - since_ms < min(grans) * 1000:
        raise ReconcileError(f"--to must be at least one window ({gran_text(min(grans))}) after --from")
    margin = margin_seconds(settings)
    read_from_ms = since_ms - margin * 1000

    read = read_kafka(settings, read_from_ms, progress)
    check_retention(read, read_from_ms, margin)
    messages = decode_all(settings, read.messages, progress)
    read.messages = messages
    n_read = sum(len(v) for v in messages.values())
    in_range = sum(1 for v in messages.values() for m in v if m.event and since_ms <= m.event.occurred_ms < until_ms)
    if not in_range:
        times = [m.event.occurred_ms for v in messages.values() for m in v if m.event]
        seen = (f"the {n_read} records produced since {iso(read_from_ms)} have event times from {iso(min(times))} "
                f"to {iso(max(times))}" if times else
                f"the topics hold {n_read} valid records produced since {iso(read_from_ms)} (--from minus the margin)")
        raise ReconcileError(f"no valid event with event time in [{iso(since_ms)}, {iso(until_ms)}) in "
                             f"{', '.join(read.topics.values())}: {seen}; pick --from/--to inside the range that has "
                             "data (and check COPULSE_TOPIC_* name the worker's topics)")

    database = settings.clickhouse["database"]
    client = Client(**settings.clickhouse, connect_timeout=5, send_receive_timeout=120, client_name="copulse-reconcile")
    where = f"{settings.clickhouse['host']}:{settings.clickhouse['port']}"
    try:
        progress("reading the worker's rejections and first purchases from ClickHouse")
        excluded = worker_rejections(client, database, read.topics)
        first = {p: first_purchases(client, database, read.topics["purchase"], p, read.start.get(("purchase", p), 0))
                 for p in read.partitions}
        progress(f"recomputing {n_read} records in {len(read.partitions)} partition engines")
        result = recompute(settings, read, messages, excluded, first, (since_ms, until_ms), progress)
        expected = {k: r for k, r in result.finals.items()
                    if k[0] in grans and since_ms <= k[1] * 1000 and (k[1] + k[0]) * 1000 <= until_ms}
        progress("comparing with ClickHouse")
        stored = stored_rows(client, database, grans, since_ms // 1000, until_ms // 1000)
        entries = compare(expected, stored, result.complete_until)
        missing_raw: dict[str, list] = {}
        for table in EVENT_TABLES.values():
            want = result.raw.get(table, {})
            have = stored_event_ids(client, database, table, since_ms, until_ms)
            missing_raw[table] = [v for eid, v in want.items() if eid not in have]
    except ch_errors.ServerException as exc:
        first_line = exc.message.strip().splitlines()[0]
        hint = ("run `copulse db migrate` (and check COPULSE_CLICKHOUSE_URL names the worker's database)"
                if exc.code in (60, 81) else "see the ClickHouse server log")
        raise ReconcileError(f"ClickHouse at {where} refused a query ({first_line}); {hint}") from None
    except (ch_errors.NetworkError, ch_errors.SocketTimeoutError, OSError, EOFError) as exc:
        raise ReconcileError(f"ClickHouse is unreachable at {where} ({str(exc).splitlines()[0]}); start it "
                             "(`make up`) or fix COPULSE_CLICKHOUSE_URL") from None
    finally:
        client.disconnect()

    o = result.outcomes
    print(f"copulse reconcile: windows fully inside [{iso(since_ms)}, {iso(until_ms)}), granularities "
          f"{', '.join(gran_text(g) for g in grans)}, database {database}")
    print(f"read {n_read} records of {', '.join(read.topics.values())} ({len(read.partitions)} partitions) produced "
          f"since {iso(read_from_ms)} (--from minus the margin of {margin // 60} min) up to the end offsets at start")
    print(f"recomputed: {o[Outcome.FOLDED]} folded, {o[Outcome.DUPLICATE]} duplicates, {o[Outcome.LATE]} late, {o['dead letter']} dead "
          "letters skipped" + (f", {o[Outcome.WINDOW_CLOSED]} window_closed" if o[Outcome.WINDOW_CLOSED] else "")
          )
    print(f"left out as the worker did (its decisions depended on its wall clock, see table rejected): "
          f"{o['worker ' + WINDOW_CLOSED_REASON]} late with reason window_closed (an idle watermark had closed "
          f"their window), {o['worker ' + FUTURE_EVENT_TIME]} dead-lettered as future_event_time")
    raw_expected = {t: len(v) for t, v in result.raw.items()}
    print_report(entries, missing_raw, raw_expected)
    counts = Counter(e.status for e in entries)
    if counts[NOT_FINAL]:
        print(f"note: {counts[NOT_FINAL]} partials are not final yet (the worker has not closed them, or their window "
              "is still open at the end of the topics); they are not counted as differences: run again later")
    problems = counts[DIFFERS] + counts[MISSING] + counts[EXTRA] + sum(len(v) for v in missing_raw.values())
    if not problems:
        print("\nresult: ClickHouse matches the topics")
        return EXIT_OK
    if args.repair:
        left = repair(settings, entries, missing_raw)
        if not left:
            print("result: every difference repaired; run again to verify")
            return EXIT_OK
        print(f"result: {left} differences left (see above)")
        return EXIT_DIFFERENCES
    print(f"\nresult: {problems} differences; `copulse reconcile --from {iso(since_ms)} --to {iso(until_ms)}"
          + (f" --granularity {args.granularity}" if args.granularity else "")
          + " --repair` writes the corrected final rows and the missing raw events")
    return EXIT_DIFFERENCES
