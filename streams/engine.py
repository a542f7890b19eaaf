"""The KPI engine of one partition index: folds events into event-time windows, exactly.

No Kafka and no Faust in here: the worker (streams/agents.py) feeds it events and persists what
``flush()`` returns. Time is passed in (``now``), so tests drive it with a fake clock.

State, all of it recoverable from the changelog records ``flush()`` returns:

* ``aggs``: one counter vector per (granularity, window start, slice, slice values) — see streams/kpis.py.
* ``consumers``: per consumer (a consumer lives in exactly one partition): first purchase time, recent
  event ids (deduplication), and membership entries per open window (``slice values + tag`` -> the event
  that added it). Membership entries make distinct counts exact and additive across partitions.
* the source clocks (streams/watermarks.py), written *last* in every flush. Anything at or below a
  clock's offset is fully persisted and is skipped when Kafka re-delivers it after a crash.

Records written before the clock in a flush that did not complete may already be persisted; each record
therefore also remembers the highest offset per source it has applied (``o``) and skips what it has seen.
A distinct count is incremented by an aggregate iff the membership entry was added by this very event.
Consumer records are written before aggregate records, so a persisted aggregate never contains an event
its consumer record lacks; the entry's adder is then always the one of the original processing order.
"""

from __future__ import annotations

import json
import operator
from dataclasses import dataclass, field
from typing import Iterable

from copulse.settings import DIMENSIONS, Settings, slice_dimensions
from streams.events import EVENT_TYPES, Event
from streams.kpis import COUNTERS, KpiRow
from streams.watermarks import NEG_INF, Watermarks

SEP = "\x1f"
OFFSET_BITS = 40
OFFSET_MASK = (1 << OFFSET_BITS) - 1
IDX = {name: i for i, name in enumerate(COUNTERS)}
SOURCE_INDEX = {t: i for i, t in enumerate(EVENT_TYPES)}  # stable across restarts
SOURCE_KEY = {t: str(i) for t, i in SOURCE_INDEX.items()}  # the source's key in clocks and ``applied``

# distinct tags -> counter they feed
TAG_COUNTER = {"a": IDX["active_consumers"], "p": IDX["participating_consumers"], "b": IDX["purchasers"],
               "f": IDX["feature_users"], "o": IDX["orders"]}
RETURNING = IDX["returning_purchasers"]

EKEY_CACHE_MAX = 100_000  # slice values per slice whose membership key strings are shared (then start over)

FOLDED, LATE, WINDOW_CLOSED, DUPLICATE, REPLAYED = "folded", "late", "window_closed", "duplicate", "replayed"


@dataclass(slots=True)
class Agg:
    counters: list[int] = field(default_factory=lambda: [0] * len(COUNTERS))
    applied: dict[str, int] = field(default_factory=dict)  # source index (str) -> highest offset applied
    emitted: int = 0  # version of the last emission
    # in memory only (never persisted): the aggregate's key and whether it is in dirty_emit / dirty_log
    key: tuple | None = None
    in_emit: bool = False
    in_log: bool = False


def event_deltas(event: Event) -> tuple[list[tuple[int, int]], list[str]]:
    """What one event adds to every aggregate it belongs to: (counter index, increment) pairs, and the
    distinct tags it may add (a=active, p=participating, b=purchaser, f=feature user, o:<order>=order)."""
    rec = event.record
    deltas = [(IDX["events"], 1)]
    tags = ["a"]
    if event.type == "purchase":
        deltas.append((IDX["revenue_minor"], int(rec["amount"].scaleb(2))))
        tags += ["b", "o:" + rec["order_id"]]
    elif event.type == "usage":
        action = rec["action"]
        if rec.get("co_creation"):
            deltas.append((IDX["co_creation_actions"], 1))
            tags.append("p")
        if action == "session_start":
            deltas.append((IDX["sessions"], 1))
        elif action == "session_end" and rec.get("duration_ms") is not None:
            deltas += [(IDX["sessions_timed"], 1), (IDX["session_ms"], int(rec["duration_ms"]))]
        elif action == "feature_use":
            deltas.append((IDX["feature_uses"], 1))
            tags.append("f")
    else:  # feedback
        kind, score = rec["kind"], rec.get("score")
        if kind == "survey_invited":
            deltas.append((IDX["surveys_invited"], 1))
        else:
            deltas.append((IDX["co_creation_actions"], 1))
            tags.append("p")
        if kind == "survey_response":
            deltas.append((IDX["survey_responses"], 1))
        elif kind == "idea":
            deltas.append((IDX["ideas_submitted"], 1))
        elif kind == "rating":
            deltas += [(IDX["ratings"], 1), (IDX["rating_sum"], score), (IDX["ratings_satisfied"], int(score >= 4))]
        elif kind == "nps":
            deltas += [(IDX["nps_responses"], 1), (IDX["nps_promoters"], int(score >= 9)),
                       (IDX["nps_detractors"], int(score <= 6))]
    return deltas, tags


#: dimension -> its position in the tuple ``_dimension_values`` builds once per event
_DIM_POS = {"channel": 0, "region": 1, "category": 2, "segment": 3, "product_id": 4, "feature": 5}


def _dimension_values(event: Event) -> tuple:
    """Every dimension's value of an event at once (same values as :func:`dimension_value`)."""
    return (event.channel, event.region, event.category, event.segment or "unknown", event.product_id,
            event.record.get("feature") if event.type == "usage" else None)


def _values_getter(dims: tuple[str, ...]):
    """A function: the tuple of ``_dimension_values`` -> the slice's values tuple."""
    pos = tuple(_DIM_POS[d] for d in dims)
    if not pos:
        return lambda dv: ()
    if len(pos) == 1:
        i = pos[0]
        return lambda dv: (dv[i],)
    return operator.itemgetter(*pos)


def dimension_value(event: Event, dim: str) -> str | None:
    if dim == "segment":
        return event.segment or "unknown"
    if dim == "feature":
        return event.record.get("feature") if event.type == "usage" else None
    return getattr(event, dim)


class PartitionEngine:
    def __init__(self, partition: int, settings: Settings) -> None:
        self.partition = partition
        self.granularities = [g * 1000 for g in settings.granularity_seconds]
        self.finest, self.coarsest = self.granularities[0], self.granularities[-1]
        self.slices = [(name, slice_dimensions(name)) for name in settings.slices]
        self._slice_getters = [(i, name, _values_getter(dims)) for i, (name, dims) in enumerate(self.slices)]
        self.emit_interval = settings.emit_interval_seconds
        self.wm = Watermarks(settings.allowed_lateness_seconds * 1000, settings.idle_timeout_seconds,
                             tuple(str(i) for i in SOURCE_INDEX.values()))
        self.aggs: dict[tuple, Agg] = {}
        self.windows: dict[tuple[int, int], set[tuple]] = {}  # (g, ws) -> agg keys
        self.consumers: dict[str, dict] = {}
        self.window_consumers: dict[tuple[int, int], set[str]] = {}
        self.purchasers: dict[tuple, set[str]] = {}  # agg key -> consumers with a purchase in it
        # (g, ws) -> (membership label "g:ws", per slice index: slice values -> Agg): the hot path's view of aggs
        self._win: dict[tuple[int, int], tuple[str, list[dict[tuple, Agg]]]] = {}
        # per slice index: slice values -> (membership key prefix, tag -> prefix + tag), shared strings
        self._ekeys: list[dict[tuple, tuple[str, dict[str, str]]]] = [{} for _ in self.slices]
        self.dirty_emit: set[tuple] = set()
        self.dirty_log: set[tuple] = set()
        self.dirty_consumers: set[str] = set()
        self.tombstones: list[str] = []
        self.last_provisional: float | None = None
        self.closed_unpruned: list[tuple[int, int]] = []  # closed in the last flush, pruned in the next
        self._clocks_written: dict = {}  # source clocks of the last clock record written (or restored)

    # ------------------------------------------------------------------ per message
    def is_replay(self, event_type: str, offset: int) -> bool:
        """True when this source offset is already reflected in persisted state: skip it entirely."""
        return offset <= self.wm.clock(str(SOURCE_INDEX[event_type])).offset

    def touch(self, event_type: str, offset: int, now: float) -> None:
        """A message of this source partition that was not folded (a dead letter): progress only."""
        self.wm.touch(str(SOURCE_INDEX[event_type]), offset, now)

    def process(self, event: Event, offset: int, now: float) -> str:
        source = SOURCE_KEY[event.type]
        ts = event.occurred_ms
        wm = self.wm
        clock = wm.clock(source)
        if offset <= clock.offset:
            return REPLAYED
        if ts - ts % self.finest + self.finest <= clock.watermark(wm.lateness_ms):
            wm.touch(source, offset, now)
            return LATE
        combined = wm.combined
        for g in self.granularities:
            if ts - ts % g + g <= combined:
                wm.touch(source, offset, now)
                return WINDOW_CLOSED
        cid = event.consumer_id
        consumer = self.consumers.get(cid)
        if consumer is None:
            consumer = self.consumers[cid] = {"o": {}, "fp": None, "ids": {}, "e": {}}
        consumer_applied = consumer["o"].get(source, -1) >= offset
        seen = consumer["ids"].get(event.event_id)
        if seen is not None and seen & OFFSET_MASK != offset:
            wm.observe(source, offset, ts, now)
            return DUPLICATE
        adder = (int(source) << OFFSET_BITS) | offset
        deltas, tags = event_deltas(event)
        tag_info = [(TAG_COUNTER[tag[0]], tag == "b") for tag in tags]
        dv = _dimension_values(event)
        values_by_slice = []
        for si, name, getter in self._slice_getters:
            values = getter(dv)
            if None not in values:
                # one shared string per membership key (slice values + tag): less memory, hash computed once
                known = self._ekeys[si].get(values)
                if known is None:
                    if len(self._ekeys[si]) >= EKEY_CACHE_MAX:
                        self._ekeys[si].clear()
                    known = self._ekeys[si][values] = (SEP.join((name, *values, "")), {})
                prefix, by_tag = known
                ekeys = []
                for tag in tags:
                    ekey = by_tag.get(tag)
                    if ekey is None:
                        ekey = prefix + tag
                        if len(tag) == 1:  # a, p, b, f; not the per-order tags
                            by_tag[tag] = ekey
                    ekeys.append(ekey)
                values_by_slice.append((si, name, values, ekeys))
        member = consumer["e"]
        purchasers = self.purchasers
        for g in self.granularities:
            ws = ts - ts % g
            wkey = (g, ws)
            win = self._win.get(wkey)
            if win is None:
                win = self._win[wkey] = (f"{g}:{ws}", [{} for _ in self.slices])
            label, index = win
            entries = member.get(label)
            if entries is None:
                entries = member[label] = {}
            self.window_consumers.setdefault(wkey, set()).add(cid)
            for si, name, values, ekeys in values_by_slice:
                agg = index[si].get(values)
                if agg is None:
                    key = (g, ws, name, values)
                    agg = self.aggs.get(key)
                    if agg is None:
                        agg = self.aggs[key] = Agg(key=key)
                        self.windows.setdefault(wkey, set()).add(key)
                    index[si][values] = agg
                agg_applied = agg.applied.get(source, -1) >= offset
                counters = agg.counters
                for (counter, is_purchaser), ekey in zip(tag_info, ekeys):
                    present = entries.get(ekey)
                    if present is None and not consumer_applied:
                        entries[ekey] = adder
                        first = True
                    else:
                        first = present == adder
                    if first:
                        if is_purchaser:
                            purchasers.setdefault(agg.key, set()).add(cid)
                        if not agg_applied:
                            counters[counter] += 1
                if not agg_applied:
                    for i, inc in deltas:
                        counters[i] += inc
                    agg.applied[source] = offset
                    if not agg.in_emit:
                        agg.in_emit = True
                        self.dirty_emit.add(agg.key)
                    if not agg.in_log:
                        agg.in_log = True
                        self.dirty_log.add(agg.key)
        if not consumer_applied:
            consumer["o"][source] = offset
            consumer["ids"][event.event_id] = (ts << OFFSET_BITS) | offset
            if event.type == "purchase" and (consumer["fp"] is None or ts < consumer["fp"]):
                consumer["fp"] = ts
            self.dirty_consumers.add(cid)
        wm.observe(source, offset, ts, now)
        return FOLDED

    # ------------------------------------------------------------------ flush
    def flush(self, now: float, *, force_provisional: bool = False) -> tuple[list[KpiRow], list[tuple[str, bytes | None]]]:
        """Emit KPI rows (finals of closed windows, provisional rows when due) and the changelog records
        that persist the state, the source clocks last. ``now`` is the wall clock (epoch seconds): it only
        drives idle watermarks, the provisional cadence and ``emitted_at``. Returns (rows, records)."""
        # Membership of windows closed by the previous flush is pruned only now: that flush's clock record
        # (with the watermark past their end) is persisted, so no consumer record without their entries can
        # be restored next to a watermark that still has them open.
        for wkey in self.closed_unpruned:
            self._prune_window(wkey)
        self.closed_unpruned = []
        combined = self.wm.advance(now)
        rows: list[KpiRow] = []
        emitted_at = int(now)
        for wkey in sorted(self.windows, key=lambda w: w[1] + w[0]):
            g, ws = wkey
            if ws + g > combined:
                continue
            for key in self.windows.pop(wkey):
                rows.append(self._row(key, self.aggs.pop(key), final=True, emitted_at=emitted_at))
                self.dirty_emit.discard(key)
                self.dirty_log.discard(key)
                self.purchasers.pop(key, None)
                self.tombstones.append(self._agg_record_key(key))
            self._win.pop(wkey, None)
            self.closed_unpruned.append(wkey)
        due = self.last_provisional is None or now - self.last_provisional >= self.emit_interval
        if (due or force_provisional) and self.dirty_emit:
            for key in self.dirty_emit:
                agg = self.aggs[key]
                agg.in_emit = False
                rows.append(self._row(key, agg, final=False, emitted_at=emitted_at))
            self.dirty_emit.clear()
            self.last_provisional = now
        elif due:
            self.last_provisional = now
        # Order matters: consumers, then aggregates, then the clocks. Kafka keeps the order within the
        # changelog partition, so a persisted aggregate never holds an event its consumer record lacks.
        records: list[tuple[str, bytes | None]] = []
        for cid in self.dirty_consumers:
            consumer = self.consumers.get(cid)
            records.append((f"c{SEP}{self.partition}{SEP}{cid}", json.dumps(consumer).encode() if consumer else None))
        self.dirty_consumers.clear()
        records += [(k, None) for k in self.tombstones]
        self.tombstones = []
        for key in self.dirty_log:
            agg = self.aggs[key]
            agg.in_log = False
            records.append((self._agg_record_key(key), json.dumps([agg.counters, agg.applied, agg.emitted]).encode()))
        self.dirty_log.clear()
        clocks = {s: [c.offset, c.max_ts] for s, c in self.wm.sources.items()}
        # The clock record only when it says something new: offsets or event times moved, or a window closed
        # (the combined watermark past its end must be persisted). A watermark that merely advances with the
        # wall clock while every source is idle changes nothing a restart needs, so an idle worker writes nothing.
        if records or self.closed_unpruned or clocks != self._clocks_written:
            records.append((f"k{SEP}{self.partition}", json.dumps({"s": clocks, "wm": self.wm.combined}).encode()))
            self._clocks_written = clocks
        return rows, records

    def _row(self, key: tuple, agg: Agg, *, final: bool, emitted_at: int) -> KpiRow:
        g, ws, name, values = key
        counters = list(agg.counters)
        counters[RETURNING] = self._returning(key)
        version = 2 * counters[0] + int(final)
        agg.emitted = version
        dims = dict(zip(slice_dimensions(name), values))
        return KpiRow(
            g // 1000, ws // 1000, name, *(dims.get(d, "") for d in DIMENSIONS), self.partition,
            *counters,
            (ws + g) // 1000, version, int(final), emitted_at,
        )

    def _returning(self, key: tuple) -> int:
        ws = key[1]
        count = 0
        for cid in self.purchasers.get(key, ()):
            fp = self.consumers[cid]["fp"]
            if fp is not None and fp < ws:
                count += 1
        return count

    def _prune_window(self, wkey: tuple[int, int]) -> None:
        """Drop a closed window's membership entries (and, for the coarsest granularity, the event ids
        that only mattered while it was open). Kept in memory only: stale entries in persisted consumer
        records are pruned on restore and on the consumer's next write."""
        g, ws = wkey
        label = f"{g}:{ws}"
        end = ws + g
        for cid in self.window_consumers.pop(wkey, ()):
            consumer = self.consumers.get(cid)
            if consumer is None:
                continue
            consumer["e"].pop(label, None)
            if g == self.coarsest:
                ids = consumer["ids"]
                for eid in [e for e, v in ids.items() if (v >> OFFSET_BITS) < end]:
                    del ids[eid]
            if not consumer["e"] and not consumer["ids"] and consumer["fp"] is None:
                del self.consumers[cid]

    def _agg_record_key(self, key: tuple) -> str:
        g, ws, name, values = key
        return SEP.join(("w", str(self.partition), str(g), str(ws), name, *values))

    # ------------------------------------------------------------------ restore
    def restore(self, records: Iterable[tuple[str, bytes]]) -> None:
        """Rebuild from the latest changelog record per key (tombstones already removed)."""
        consumers = []
        for key, value in records:
            parts = key.split(SEP)
            data = json.loads(value)
            if parts[0] == "k":
                for source, (offset, max_ts) in data["s"].items():
                    clock = self.wm.clock(source)
                    clock.offset, clock.max_ts = offset, max_ts
                self.wm.combined = data["wm"]
                self._clocks_written = {s: [c.offset, c.max_ts] for s, c in self.wm.sources.items()}
            elif parts[0] == "w":
                g, ws, name, values = int(parts[2]), int(parts[3]), parts[4], tuple(parts[5:])
                counters, applied, emitted = data
                agg_key = (g, ws, name, values)
                self.aggs[agg_key] = Agg(counters, applied, emitted, key=agg_key, in_emit=True)
                self.windows.setdefault((g, ws), set()).add(agg_key)
                self.dirty_emit.add(agg_key)
            elif parts[0] == "c":
                consumers.append((SEP.join(parts[2:]), data))
        for cid, consumer in consumers:
            self.consumers[cid] = consumer
            for label, entries in consumer["e"].items():
                g, ws = map(int, label.split(":"))
                self.window_consumers.setdefault((g, ws), set()).add(cid)
                for ekey in entries:
                    *slice_values, tag = ekey.split(SEP)
                    if tag == "b":
                        self.purchasers.setdefault((g, ws, slice_values[0], tuple(slice_values[1:])), set()).add(cid)
        # windows closed before the crash: prune what the records still mention
        combined = self.wm.combined
        if combined != NEG_INF:
            for wkey in [w for w in self.window_consumers if w[0] + w[1] <= combined]:
                self._prune_window(wkey)
            for wkey in [w for w in self.windows if w[0] + w[1] <= combined]:
                self._win.pop(wkey, None)
                for key in self.windows.pop(wkey):  # closed and final, tombstone not persisted yet
                    self.aggs.pop(key)
                    self.dirty_emit.discard(key)
                    self.tombstones.append(self._agg_record_key(key))

    def seed_first_purchase(self, consumer_id: str, occurred_ms: int) -> None:
        """A purchase of this consumer seen before this engine's input starts (``copulse reconcile`` reads a
        range, not the whole history): returning purchasers are decided against it."""
        consumer = self.consumers.setdefault(consumer_id, {"o": {}, "fp": None, "ids": {}, "e": {}})
        if consumer["fp"] is None or occurred_ms < consumer["fp"]:
            consumer["fp"] = occurred_ms

    # ------------------------------------------------------------------ introspection
    def open_windows(self) -> dict[int, int]:
        """granularity seconds -> open windows."""
        counts: dict[int, int] = {}
        for g, _ in self.windows:
            counts[g // 1000] = counts.get(g // 1000, 0) + 1
        return counts

    def watermarks(self) -> dict[str, int]:
        """event type -> own watermark (ms) of this partition's source partitions that have data."""
        return {t: self.wm.own(str(i)) for t, i in SOURCE_INDEX.items()
                if self.wm.clock(str(i)).max_ts != NEG_INF}
