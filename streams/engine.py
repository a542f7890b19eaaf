"""The windower of one partition index: folds events into event-time window aggregates, exactly.

No Kafka and no Faust in here: the pipeline (streams/pipeline.py) feeds it events and persists the changelog
records ``flush()`` returns. Time is passed in (``now``), so tests drive it with a fake clock. What an event
adds is decided in streams/kpis.py, whether it is late in streams/watermarks.py, how state is stored in
streams/changelog.py.

State, all of it recoverable from the changelog records ``flush()`` returns:

* ``aggregates``: one counter vector per (granularity, window start, slice, slice values).
* ``consumers``: per consumer (a consumer lives in exactly one partition) a ``ConsumerState``: first purchase
  time, recent event ids (deduplication), and membership entries per open window (``slice values + tag`` ->
  the event that added it). Membership entries make distinct counts exact and additive across partitions.
* the source clocks (streams/watermarks.py), written *last* in every flush. Anything at or below a clock's
  offset is fully persisted and is skipped when Kafka re-delivers it after a crash.

Records written before the clock in a flush that did not complete may already be persisted; each record
therefore also remembers the highest offset per source it has applied and skips what it has seen. A distinct
count is incremented by an aggregate iff the membership entry was added by this very event. Consumer records
are written before aggregate records, so a persisted aggregate never contains an event its consumer record
lacks; the entry's adder is then always the one of the original processing order.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from enum import StrEnum

from copulse.settings import DIMENSIONS, Settings, slice_dimensions
from streams import changelog
from streams.changelog import AggregateKey, ConsumerState, Record
from streams.events import EVENT_TYPES, Event
from streams.kpis import (COUNTER_INDEX, COUNTERS, DISTINCT_COUNTER, PURCHASER, KpiRow, contributions,
                          dimension_values)
from streams.watermarks import LATE, NEG_INF, WINDOW_CLOSED, Watermarks

OFFSET_BITS = 40  # an event id's entry and a membership's adder pack (high bits, offset) into one int
OFFSET_MASK = (1 << OFFSET_BITS) - 1
SOURCE_INDEX = {t: i for i, t in enumerate(EVENT_TYPES)}  # stable across restarts
SOURCE_KEY = {t: str(i) for t, i in SOURCE_INDEX.items()}  # the source's key in clocks and ``applied``
RETURNING = COUNTER_INDEX["returning_purchasers"]
DISTINCT_INDEX = {tag: COUNTER_INDEX[name] for tag, name in DISTINCT_COUNTER.items()}  # tag (first char) -> counter

MEMBERSHIP_KEY_CACHE_MAX = 100_000  # slice values per slice whose membership key strings are shared


class Outcome(StrEnum):
    """What ``process`` did with an event (the values label copulse_events_processed_total)."""

    FOLDED = "folded"
    LATE = LATE  # its window ended before its source partition's watermark
    WINDOW_CLOSED = WINDOW_CLOSED  # its window was already closed (after idleness)
    DUPLICATE = "duplicate"  # an event id already folded, from another offset
    REPLAYED = "replayed"  # an offset already reflected in persisted state


@dataclass(slots=True)
class Aggregate:
    counters: list[int] = field(default_factory=lambda: [0] * len(COUNTERS))
    applied: dict[str, int] = field(default_factory=dict)  # source -> highest offset applied
    emitted: int = 0  # version of the last emission
    # in memory only (never persisted): the aggregate's key and whether it waits in to_emit / to_persist
    key: AggregateKey | None = None
    in_emit: bool = False
    in_log: bool = False


def _slice_values_getter(dims: tuple[str, ...]):
    """A function: ``dimension_values(event)`` -> the slice's values tuple."""
    pos = tuple(DIMENSIONS.index(d) for d in dims)
    if not pos:
        return lambda values: ()
    if len(pos) == 1:
        i = pos[0]
        return lambda values: (values[i],)
    return operator.itemgetter(*pos)


class PartitionEngine:
    def __init__(self, partition: int, settings: Settings) -> None:
        self.partition = partition
        self.granularities = [g * 1000 for g in settings.granularity_seconds]
        self.coarsest = self.granularities[-1]
        self.slices = [(name, slice_dimensions(name)) for name in settings.slices]
        self._slice_getters = [(i, name, _slice_values_getter(dims)) for i, (name, dims) in enumerate(self.slices)]
        self.emit_interval = settings.emit_interval_seconds
        self.wm = Watermarks(self.granularities, settings.allowed_lateness_seconds * 1000,
                             settings.idle_timeout_seconds, tuple(SOURCE_KEY.values()))
        self.aggregates: dict[AggregateKey, Aggregate] = {}
        self.windows: dict[tuple[int, int], set[AggregateKey]] = {}  # (g, window start) -> aggregate keys
        self.consumers: dict[str, ConsumerState] = {}
        self.window_consumers: dict[tuple[int, int], set[str]] = {}
        self.purchasers: dict[AggregateKey, set[str]] = {}  # consumers with a purchase in the aggregate
        # the hot path's view of open windows: (g, ws) -> (window label, per slice index: slice values -> Aggregate)
        self._open: dict[tuple[int, int], tuple[str, list[dict[tuple, Aggregate]]]] = {}
        # per slice index: slice values -> (membership key prefix, tag -> prefix + tag): one shared string each
        self._membership_keys: list[dict[tuple, tuple[str, dict[str, str]]]] = [{} for _ in self.slices]
        self.to_emit: set[AggregateKey] = set()  # changed since their last provisional row
        self.to_persist: set[AggregateKey] = set()  # changed since their last changelog record
        self.consumers_to_persist: set[str] = set()
        self.tombstones: list[str] = []
        self.last_provisional: float | None = None
        self.closed_unpruned: list[tuple[int, int]] = []  # closed in the last flush, pruned in the next
        self._clocks_written: dict = {}  # source clocks of the last clock record written (or restored)

    # ------------------------------------------------------------------ per message
    def is_replay(self, event_type: str, offset: int) -> bool:
        """True when this source offset is already reflected in persisted state: skip it entirely."""
        return offset <= self.wm.clock(SOURCE_KEY[event_type]).offset

    def skip(self, event_type: str, offset: int, now: float) -> None:
        """A message of this source partition that is not an event (a dead letter): progress only."""
        self.wm.progress(SOURCE_KEY[event_type], offset, now)

    def process(self, event: Event, offset: int, now: float) -> Outcome:
        source = SOURCE_KEY[event.type]
        ts = event.occurred_ms
        wm = self.wm
        clock = wm.clock(source)
        if offset <= clock.offset:
            return Outcome.REPLAYED
        too_late = wm.lateness(clock, ts)
        if too_late is not None:
            wm.progress(source, offset, now)
            return Outcome(too_late)
        cid = event.consumer_id
        consumer = self.consumers.get(cid)
        if consumer is None:
            consumer = self.consumers[cid] = ConsumerState()
        consumer_applied = consumer.applied.get(source, -1) >= offset
        seen = consumer.event_ids.get(event.event_id)
        if seen is not None and seen & OFFSET_MASK != offset:
            wm.observe(source, offset, ts, now)
            return Outcome.DUPLICATE
        adder = (int(source) << OFFSET_BITS) | offset
        deltas, tags = contributions(event)
        distinct = [(DISTINCT_INDEX[tag[0]], tag == PURCHASER) for tag in tags]
        values_by_slice = self._slice_memberships(dimension_values(event), tags)
        memberships = consumer.memberships
        purchasers = self.purchasers
        for g in self.granularities:
            ws = ts - ts % g
            wkey = (g, ws)
            window = self._open.get(wkey)
            if window is None:
                window = self._open[wkey] = (changelog.window_label(g, ws), [{} for _ in self.slices])
            label, by_slice = window
            entries = memberships.get(label)
            if entries is None:
                entries = memberships[label] = {}
            self.window_consumers.setdefault(wkey, set()).add(cid)
            for slice_index, name, values, membership_keys in values_by_slice:
                agg = by_slice[slice_index].get(values)
                if agg is None:
                    key = (g, ws, name, values)
                    agg = self.aggregates.get(key)
                    if agg is None:
                        agg = self.aggregates[key] = Aggregate(key=key)
                        self.windows.setdefault(wkey, set()).add(key)
                    by_slice[slice_index][values] = agg
                agg_applied = agg.applied.get(source, -1) >= offset
                counters = agg.counters
                for (counter, is_purchaser), membership_key in zip(distinct, membership_keys):
                    present = entries.get(membership_key)
                    if present is None and not consumer_applied:
                        entries[membership_key] = adder
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
                        self.to_emit.add(agg.key)
                    if not agg.in_log:
                        agg.in_log = True
                        self.to_persist.add(agg.key)
        if not consumer_applied:
            consumer.applied[source] = offset
            consumer.event_ids[event.event_id] = (ts << OFFSET_BITS) | offset
            if event.type == "purchase" and (consumer.first_purchase_ms is None or ts < consumer.first_purchase_ms):
                consumer.first_purchase_ms = ts
            self.consumers_to_persist.add(cid)
        wm.observe(source, offset, ts, now)
        return Outcome.FOLDED

    def _slice_memberships(self, event_values: tuple, tags: list[str]) -> list[tuple[int, str, tuple, list[str]]]:
        """Per slice the event belongs to (it has a value for each of its dimensions): (slice index, name, slice
        values, membership key per tag). Keys of the per-consumer tags are shared strings: less memory, hash
        computed once."""
        out = []
        for slice_index, name, getter in self._slice_getters:
            values = getter(event_values)
            if None in values:
                continue
            cache = self._membership_keys[slice_index]
            known = cache.get(values)
            if known is None:
                if len(cache) >= MEMBERSHIP_KEY_CACHE_MAX:
                    cache.clear()
                known = cache[values] = (changelog.membership_key_prefix(name, values), {})
            prefix, by_tag = known
            keys = []
            for tag in tags:
                key = by_tag.get(tag)
                if key is None:
                    key = prefix + tag
                    if len(tag) == 1:  # per-consumer tags; not the per-order ones
                        by_tag[tag] = key
                keys.append(key)
            out.append((slice_index, name, values, keys))
        return out

    # ------------------------------------------------------------------ flush
    def flush(self, now: float) -> tuple[list[KpiRow], list[Record]]:
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
                rows.append(self._row(key, self.aggregates.pop(key), final=True, emitted_at=emitted_at))
                self.to_emit.discard(key)
                self.to_persist.discard(key)
                self.purchasers.pop(key, None)
                self.tombstones.append(changelog.aggregate_key(self.partition, key))
            self._open.pop(wkey, None)
            self.closed_unpruned.append(wkey)
        due = self.last_provisional is None or now - self.last_provisional >= self.emit_interval
        if due:
            for key in self.to_emit:
                agg = self.aggregates[key]
                agg.in_emit = False
                rows.append(self._row(key, agg, final=False, emitted_at=emitted_at))
            self.to_emit.clear()
            self.last_provisional = now
        return rows, self._changelog_records()

    def _changelog_records(self) -> list[Record]:
        # Order matters: consumers, then aggregates, then the clocks. Kafka keeps the order within the
        # changelog partition, so a persisted aggregate never holds an event its consumer record lacks.
        p = self.partition
        records = [changelog.consumer_record(p, cid, self.consumers.get(cid)) for cid in self.consumers_to_persist]
        self.consumers_to_persist.clear()
        records += [(k, None) for k in self.tombstones]
        self.tombstones = []
        for key in self.to_persist:
            agg = self.aggregates[key]
            agg.in_log = False
            records.append(changelog.aggregate_record(p, key, agg.counters, agg.applied, agg.emitted))
        self.to_persist.clear()
        clocks = {s: [c.offset, c.max_ts] for s, c in self.wm.sources.items()}
        # The clock record only when it says something new: offsets or event times moved, or a window closed
        # (the combined watermark past its end must be persisted). A watermark that merely advances with the
        # wall clock while every source is idle changes nothing a restart needs, so an idle worker writes nothing.
        if records or self.closed_unpruned or clocks != self._clocks_written:
            records.append(changelog.clocks_record(p, clocks, self.wm.combined_watermark))
            self._clocks_written = clocks
        return records

    def _row(self, key: AggregateKey, agg: Aggregate, *, final: bool, emitted_at: int) -> KpiRow:
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

    def _returning(self, key: AggregateKey) -> int:
        """Purchasers of the aggregate whose first purchase is before the window start."""
        ws = key[1]
        count = 0
        for cid in self.purchasers.get(key, ()):
            first = self.consumers[cid].first_purchase_ms
            if first is not None and first < ws:
                count += 1
        return count

    def _prune_window(self, wkey: tuple[int, int]) -> None:
        """Drop a closed window's membership entries (and, for the coarsest granularity, the event ids
        that only mattered while it was open). Kept in memory only: stale entries in persisted consumer
        records are pruned on restore and on the consumer's next write."""
        g, ws = wkey
        label = changelog.window_label(g, ws)
        end = ws + g
        for cid in self.window_consumers.pop(wkey, ()):
            consumer = self.consumers.get(cid)
            if consumer is None:
                continue
            consumer.memberships.pop(label, None)
            if g == self.coarsest:
                ids = consumer.event_ids
                for eid in [e for e, v in ids.items() if (v >> OFFSET_BITS) < end]:
                    del ids[eid]
            if consumer.is_empty():
                del self.consumers[cid]

    # ------------------------------------------------------------------ restore
    def restore(self, stored: changelog.StoredState) -> None:
        """Rebuild from a partition's decoded changelog (streams/changelog.py)."""
        if stored.clocks is not None:
            for source, (offset, max_ts) in stored.clocks.sources.items():
                clock = self.wm.clock(source)
                clock.offset, clock.max_ts = offset, max_ts
            self.wm.combined_watermark = stored.clocks.combined_watermark
            self._clocks_written = {s: [c.offset, c.max_ts] for s, c in self.wm.sources.items()}
        for key, agg in stored.aggregates.items():
            self.aggregates[key] = Aggregate(agg.counters, agg.applied, agg.emitted, key=key, in_emit=True)
            self.windows.setdefault(key[:2], set()).add(key)
            self.to_emit.add(key)
        for cid, consumer in stored.consumers.items():
            self.consumers[cid] = consumer
            for label, entries in consumer.memberships.items():
                g, ws = changelog.parse_window_label(label)
                self.window_consumers.setdefault((g, ws), set()).add(cid)
                for membership_key in entries:
                    slice_name, values, tag = changelog.parse_membership_key(membership_key)
                    if tag == PURCHASER:
                        self.purchasers.setdefault((g, ws, slice_name, values), set()).add(cid)
        # windows closed before the crash: prune what the records still mention
        combined = self.wm.combined_watermark
        if combined != NEG_INF:
            for wkey in [w for w in self.window_consumers if w[0] + w[1] <= combined]:
                self._prune_window(wkey)
            for wkey in [w for w in self.windows if w[0] + w[1] <= combined]:
                self._open.pop(wkey, None)
                for key in self.windows.pop(wkey):  # closed and final, tombstone not persisted yet
                    self.aggregates.pop(key)
                    self.to_emit.discard(key)
                    self.tombstones.append(changelog.aggregate_key(self.partition, key))

    def seed_first_purchase(self, consumer_id: str, occurred_ms: int) -> None:
        """A purchase of this consumer seen before this engine's input starts (``copulse reconcile`` reads a
        range, not the whole history): returning purchasers are decided against it."""
        consumer = self.consumers.setdefault(consumer_id, ConsumerState())
        if consumer.first_purchase_ms is None or occurred_ms < consumer.first_purchase_ms:
            consumer.first_purchase_ms = occurred_ms

    # ------------------------------------------------------------------ introspection
    def open_windows(self) -> dict[int, int]:
        """granularity seconds -> open windows."""
        counts: dict[int, int] = {}
        for g, _ in self.windows:
            counts[g // 1000] = counts.get(g // 1000, 0) + 1
        return counts

    def watermarks(self) -> dict[str, int]:
        """event type -> own watermark (ms) of this partition's source partitions that have data."""
        return {t: self.wm.own_watermark(key) for t, key in SOURCE_KEY.items()
                if self.wm.clock(key).max_ts != NEG_INF}
