"""The windower of one partition index: folds events into event-time window aggregates, exactly.

No Kafka and no Faust in here: the pipeline (streams/pipeline.py) feeds it events and persists the changelog
records ``flush()`` returns. Time is passed in (``now``), so tests drive it with a fake clock. What an event
adds is decided in streams/kpis.py, whether it is late in streams/watermarks.py, how distinct counts stay exact
in streams/membership.py, how state is stored in streams/changelog.py.

State, all of it recoverable from the changelog records ``flush()`` returns:

* ``aggregates``: one counter vector per (granularity, window start, slice, slice values). The additive counters
  are persisted; the distinct counters (and returning purchasers) are derived from the memberships, kept up to
  date as events arrive and recounted on restore.
* ``consumers``: per consumer (a consumer lives in exactly one partition) its first purchase time and recent
  event ids (deduplication); ``members``: per open window, each consumer's membership entry.
* the source clocks (streams/watermarks.py), written *last* in every flush. Anything at or below a clock's
  offset is fully persisted and is skipped when Kafka re-delivers it after a crash.

Records written before the clock in a flush that did not complete may already be persisted. Aggregates
therefore remember the highest offset per source they have applied and skip what they have seen; memberships
and event ids are sets, so claiming them again changes nothing. A replay thus re-creates exactly the state
the crash interrupted.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from enum import StrEnum

from copulse.settings import DIMENSIONS, Settings, slice_dimensions
from streams import changelog, membership
from streams.changelog import AggregateKey, ConsumerState, LegacyMembership, Record, WindowKey
from streams.events import EVENT_TYPES, Event
from streams.kpis import (COUNTER_INDEX, COUNTERS, DISTINCT_COUNTER, ORDERS_COUNTER, PURCHASER, KpiRow,
                          contributions, dimension_values)
from streams.watermarks import LATE, NEG_INF, WINDOW_CLOSED, Watermarks

OFFSET_BITS = 40  # an event id's entry packs (event time ms, offset) into one int
OFFSET_MASK = (1 << OFFSET_BITS) - 1
SOURCE_INDEX = {t: i for i, t in enumerate(EVENT_TYPES)}  # stable across restarts
SOURCE_KEY = {t: str(i) for t, i in SOURCE_INDEX.items()}  # the source's key in clocks and ``applied``
RETURNING = COUNTER_INDEX["returning_purchasers"]
EVENTS, ENTERPRISE_EVENTS = COUNTER_INDEX["events"], COUNTER_INDEX["enterprise_events"]
ORDERS = COUNTER_INDEX[ORDERS_COUNTER]
BIT_COUNTERS = tuple((bit, COUNTER_INDEX[name]) for bit, name in DISTINCT_COUNTER.items())  # (bit, counter index)
#: counters derived from memberships: never read back from a persisted aggregate
DERIVED = (RETURNING, ORDERS, *(i for _, i in BIT_COUNTERS))
CELL_CACHE_MAX = 200_000  # distinct cells whose tuples are shared


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


def _legacy_claimed(legacy: list[LegacyMembership], slice_name: str, values: tuple, bit: int,
                    order_id: str | None) -> bool:
    for m in legacy:
        if m.slice_name == slice_name and m.values == values and (m.bits & bit if order_id is None
                                                                   else m.order_id == order_id):
            return True
    return False


def _slice_values_getter(dims: tuple[str, ...]):
    """A function: ``dimension_values(event)`` -> the slice's values tuple."""
    pos = tuple(DIMENSIONS.index(d) for d in dims)
    if len(pos) <= 1:  # a slice of the tuple is a tuple: no Python-level call for the common one-dimension slices
        i = pos[0] if pos else 0
        return operator.itemgetter(slice(i, i + len(pos)))
    return operator.itemgetter(*pos)


class PartitionEngine:
    def __init__(self, partition: int, settings: Settings) -> None:
        self.partition = partition
        self.granularities = [g * 1000 for g in settings.granularity_seconds]
        self.coarsest = self.granularities[-1]
        self.slices = [(name, slice_dimensions(name)) for name in settings.slices]
        self._projections = [(i, name, _slice_values_getter(dims)) for i, (name, dims) in enumerate(self.slices)]
        self.emit_interval = settings.emit_interval_seconds
        self.wm = Watermarks(self.granularities, settings.allowed_lateness_seconds * 1000,
                             settings.idle_timeout_seconds, tuple(SOURCE_KEY.values()))
        self.aggregates: dict[AggregateKey, Aggregate] = {}
        self.windows: dict[WindowKey, set[AggregateKey]] = {}  # (g, window start) -> aggregate keys
        self.consumers: dict[str, ConsumerState] = {}
        self.members: dict[WindowKey, dict[str, list]] = {}  # window -> consumer id -> membership entry
        #: format-1 memberships restored from an older changelog: consumer id -> window -> memberships, until
        #: their windows close
        self.legacy: dict[str, dict[WindowKey, list[LegacyMembership]]] = {}
        # the hot path's view of open windows: (g, ws) -> per slice index: slice values -> Aggregate
        self._open: dict[WindowKey, list[dict[tuple, Aggregate]]] = {}
        self._cells: dict[tuple, tuple] = {}  # interned cells: equal cells share one tuple
        self.to_emit: set[AggregateKey] = set()  # changed since their last provisional row
        self.to_persist: set[AggregateKey] = set()  # additive counters changed since their last changelog record
        self.consumers_to_persist: set[str] = set()
        self.tombstones: list[str] = []
        self.last_provisional: float | None = None
        self.closed_unpruned: list[WindowKey] = []  # closed in the last flush, pruned in the next
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
        seen = consumer.event_ids.get(event.event_id)
        if seen is None:
            consumer.event_ids[event.event_id] = (ts << OFFSET_BITS) | offset
        elif seen & OFFSET_MASK != offset:
            wm.observe(source, offset, ts, now)
            return Outcome.DUPLICATE
        deltas, bits, order_id = contributions(event)
        if bits & PURCHASER:
            self._purchase_seen(cid, consumer, ts)
        first_purchase = consumer.first_purchase_ms
        cell = self.intern(dimension_values(event))
        for g in self.granularities:
            ws = ts - ts % g
            wkey = (g, ws)
            by_slice = self._open.get(wkey)
            if by_slice is None:
                by_slice = self._open_window(wkey)
            window_members = self.members[wkey]
            entry = window_members.get(cid)
            if entry is None:
                entry = window_members[cid] = []
            # an enterprise event claims nothing (bits 0): its entry may stay empty, which still lets the
            # window's close prune the consumer's event ids
            new_bits = membership.claim(entry, cell, bits) if bits else 0
            new_order = order_id is not None and membership.claim_order(entry, order_id, cell)
            legacy = self.legacy[cid].get(wkey) if self.legacy and cid in self.legacy else None
            # A new claim counts in a slice unless another cell with the same bit projects onto the same values:
            # when no other cell holds any of the new bits (the usual case) it counts in every slice.
            alone = not legacy and not (new_bits and membership.bits_elsewhere(entry, cell) & new_bits) \
                and not (new_order and membership.orders_elsewhere(entry, order_id, cell))
            for slice_index, name, project in self._projections:
                values = project(cell)
                if None in values:
                    continue
                agg = by_slice[slice_index].get(values)
                if agg is None:
                    agg = by_slice[slice_index][values] = self._aggregate((g, ws, name, values))
                counters = agg.counters
                changed = False
                if agg.applied.get(source, -1) < offset:
                    for i, inc in deltas:
                        counters[i] += inc
                    agg.applied[source] = offset
                    changed = True
                    if not agg.in_log:
                        agg.in_log = True
                        self.to_persist.add(agg.key)
                if new_bits:
                    for bit, counter in BIT_COUNTERS:
                        if new_bits & bit and (alone or not (
                                membership.claimed_elsewhere(entry, bit, project, values, cell)
                                or legacy and _legacy_claimed(legacy, name, values, bit, None))):
                            counters[counter] += 1
                            if bit == PURCHASER and first_purchase < ws:
                                counters[RETURNING] += 1
                            changed = True
                if new_order and (alone or not (
                        membership.ordered_elsewhere(entry, order_id, project, values, cell)
                        or legacy and _legacy_claimed(legacy, name, values, 0, order_id))):
                    counters[ORDERS] += 1
                    changed = True
                if changed and not agg.in_emit:
                    agg.in_emit = True
                    self.to_emit.add(agg.key)
        self.consumers_to_persist.add(cid)
        wm.observe(source, offset, ts, now)
        return Outcome.FOLDED

    def intern(self, cell: tuple) -> tuple:
        """Equal cells share one tuple (also passed to ``changelog.decode``)."""
        shared = self._cells.get(cell)
        if shared is None:
            if len(self._cells) >= CELL_CACHE_MAX:
                self._cells.clear()
            shared = self._cells[cell] = cell
        return shared

    def _open_window(self, wkey: WindowKey) -> list[dict[tuple, Aggregate]]:
        by_slice = self._open[wkey] = [{} for _ in self.slices]
        self.members.setdefault(wkey, {})
        return by_slice

    def _aggregate(self, key: AggregateKey) -> Aggregate:
        agg = self.aggregates.get(key)
        if agg is None:
            agg = self.aggregates[key] = Aggregate(key=key)
            self.windows.setdefault(key[:2], set()).add(key)
        return agg

    def _purchase_seen(self, cid: str, consumer: ConsumerState, ts: int) -> None:
        """A purchase at ``ts``: if it is the consumer's earliest, its purchases in windows that start after
        ``ts`` (and not after the previous first purchase) now count as returning."""
        previous = consumer.first_purchase_ms
        if previous is not None and previous <= ts:
            return
        consumer.first_purchase_ms = ts
        if previous is None:
            return  # no purchase before: no purchaser membership anywhere
        for wkey in self.members:
            ws = wkey[1]
            if ts < ws <= previous:
                for agg in self._purchaser_aggregates(wkey, cid):
                    agg.counters[RETURNING] += 1
                    if not agg.in_emit:
                        agg.in_emit = True
                        self.to_emit.add(agg.key)

    def _purchaser_aggregates(self, wkey: WindowKey, cid: str):
        """The open aggregates of this window in which the consumer counts as a purchaser."""
        entry = self.members.get(wkey, {}).get(cid, ())
        legacy = self.legacy.get(cid, {}).get(wkey, ())
        for _, name, project in self._projections:
            values = {v for v, bits in membership.projected(entry, project)[0].items() if bits & PURCHASER}
            values.update(m.values for m in legacy if m.slice_name == name and m.bits & PURCHASER)
            for v in values:
                agg = self.aggregates.get((*wkey, name, v))
                if agg is not None:
                    yield agg

    # ------------------------------------------------------------------ flush
    def flush(self, now: float) -> tuple[list[KpiRow], list[Record]]:
        """Emit KPI rows (finals of closed windows, provisional rows when due) and the changelog records
        that persist the state, the source clocks last. ``now`` is the wall clock (epoch seconds): it only
        drives idle watermarks, the provisional cadence and ``emitted_at``. Returns (rows, records)."""
        # Memberships of windows closed by the previous flush are pruned only now: that flush's clock record
        # (with the watermark past their end) is persisted, so no consumer record without them can be restored
        # next to a watermark that still has them open.
        for wkey in self.closed_unpruned:
            self._prune_window(wkey)
        self.closed_unpruned = []
        combined = self.wm.advance(now)
        rows: list[KpiRow] = []
        emitted_at = int(now)
        for wkey in sorted(self.windows.keys() | self.members.keys(), key=lambda w: w[1] + w[0]):
            g, ws = wkey
            if ws + g > combined:
                continue
            for key in self.windows.pop(wkey, ()):
                rows.append(self._row(key, self.aggregates.pop(key), final=True, emitted_at=emitted_at))
                self.to_emit.discard(key)
                self.to_persist.discard(key)
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
        records = [self._consumer_record(cid) for cid in self.consumers_to_persist]
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

    def _consumer_record(self, cid: str) -> Record:
        entries = {wkey: m[cid] for wkey, m in self.members.items() if cid in m}
        return changelog.consumer_record(self.partition, cid, self.consumers.get(cid), entries,
                                         self.legacy.get(cid))

    def _row(self, key: AggregateKey, agg: Aggregate, *, final: bool, emitted_at: int) -> KpiRow:
        g, ws, name, values = key
        counters = agg.counters
        # grows with every event folded into the aggregate (consumer activity or enterprise), +1 for the final
        version = 2 * (counters[EVENTS] + counters[ENTERPRISE_EVENTS]) + int(final)
        agg.emitted = version
        dims = dict(zip(slice_dimensions(name), values))
        return KpiRow(
            g // 1000, ws // 1000, name, *(dims.get(d, "") for d in DIMENSIONS), self.partition,
            *counters,
            (ws + g) // 1000, version, int(final), emitted_at,
        )

    def _prune_window(self, wkey: WindowKey) -> None:
        """Drop a closed window's memberships (and, for the coarsest granularity, the event ids that only
        mattered while it was open; consumers left with nothing are deleted from the changelog too)."""
        g, ws = wkey
        window_members = self.members.pop(wkey, {})
        if self.legacy:
            for cid in list(self.legacy):
                windows = self.legacy[cid]
                windows.pop(wkey, None)
                if not windows:
                    del self.legacy[cid]
        if g != self.coarsest:
            return
        end = ws + g
        for cid in window_members:
            consumer = self.consumers.get(cid)
            if consumer is None:
                continue
            ids = consumer.event_ids
            for eid in [e for e, v in ids.items() if (v >> OFFSET_BITS) < end]:
                del ids[eid]
            if consumer.is_empty():
                del self.consumers[cid]
                self.consumers_to_persist.add(cid)  # nothing left to remember: its record is deleted

    # ------------------------------------------------------------------ restore
    def restore(self, stored: changelog.StoredState) -> None:
        """Rebuild from a partition's decoded changelog (``changelog.decode(records, engine.intern)``)."""
        if stored.clocks is not None:
            for source, (offset, max_ts) in stored.clocks.sources.items():
                clock = self.wm.clock(source)
                clock.offset, clock.max_ts = offset, max_ts
            self.wm.combined_watermark = stored.clocks.combined_watermark
            self._clocks_written = {s: [c.offset, c.max_ts] for s, c in self.wm.sources.items()}
        combined = self.wm.combined_watermark

        def closed(wkey: WindowKey) -> bool:
            return combined != NEG_INF and wkey[0] + wkey[1] <= combined

        for key, agg in stored.aggregates.items():
            if closed(key[:2]):  # closed and final before the crash; its tombstone was not persisted yet
                self.tombstones.append(changelog.aggregate_key(self.partition, key))
                continue
            # records written before counters were appended (streams/kpis.py) hold fewer: the new ones start at 0
            counters = list(agg.counters) + [0] * (len(COUNTERS) - len(agg.counters))
            for i in DERIVED:
                counters[i] = 0
            self.aggregates[key] = Aggregate(counters, agg.applied, agg.emitted, key=key)
            self.windows.setdefault(key[:2], set()).add(key)
        for cid, stored_consumer in stored.consumers.items():
            consumer = stored_consumer.state
            ids = consumer.event_ids
            for eid in [e for e, v in ids.items() if closed(self._coarsest_window(v >> OFFSET_BITS))]:
                del ids[eid]
            for wkey, entry in stored_consumer.entries.items():
                if not closed(wkey):
                    self.members.setdefault(wkey, {})[cid] = entry
            for wkey, legacy in stored_consumer.legacy.items():
                if not closed(wkey):
                    self.members.setdefault(wkey, {}).setdefault(cid, [])
                    self.legacy.setdefault(cid, {})[wkey] = legacy
            if consumer.is_empty() and not any(cid in m for m in self.members.values()):
                self.consumers_to_persist.add(cid)  # nothing left to remember: deleted
            else:
                self.consumers[cid] = consumer
        for wkey, window_members in self.members.items():
            for cid in window_members:
                self._recount(wkey, cid)
        for key, agg in self.aggregates.items():
            agg.in_emit = True
            self.to_emit.add(key)

    def _coarsest_window(self, ts: int) -> WindowKey:
        return self.coarsest, ts - ts % self.coarsest

    def _recount(self, wkey: WindowKey, cid: str) -> None:
        """Add one consumer's memberships in a window to the derived counters of its aggregates."""
        g, ws = wkey
        entry = self.members[wkey][cid]
        legacy = self.legacy.get(cid, {}).get(wkey, ())
        consumer = self.consumers.get(cid)
        first_purchase = consumer.first_purchase_ms if consumer is not None else None
        for slice_index, name, project in self._projections:
            bits, orders = membership.projected(entry, project)
            for m in legacy:
                if m.slice_name == name:
                    if m.order_id is None:
                        bits[m.values] = bits.get(m.values, 0) | m.bits
                    else:
                        orders.add((m.order_id, m.values))
            for values, mask in bits.items():
                counters = self._aggregate((g, ws, name, values)).counters
                for bit, counter in BIT_COUNTERS:
                    if mask & bit:
                        counters[counter] += 1
                if mask & PURCHASER and first_purchase is not None and first_purchase < ws:
                    counters[RETURNING] += 1
            for _, values in orders:
                self._aggregate((g, ws, name, values)).counters[ORDERS] += 1

    def seed_first_purchase(self, consumer_id: str, occurred_ms: int) -> None:
        """A purchase of this consumer seen before this engine's input starts (``copulse reconcile`` reads a
        range, not the whole history): returning purchasers are decided against it."""
        consumer = self.consumers.get(consumer_id)
        if consumer is None:
            consumer = self.consumers[consumer_id] = ConsumerState()
        self._purchase_seen(consumer_id, consumer, occurred_ms)

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
