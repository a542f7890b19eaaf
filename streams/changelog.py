"""The engine's state as changelog records, and back: what streams/state_store.py writes to and reads from
the compacted ``<app_id>-state-changelog`` topic. Pure encoding: no Kafka here.

Three kinds of record per partition index p, keyed ``<kind>\\x1f<p>\\x1f...`` (utf-8), values JSON:

* ``c\\x1f<p>\\x1f<consumer id>`` -> a consumer's state: ``{"v": 2, "fp", "ids", "m"}`` (format 2, below);
* ``w\\x1f<p>\\x1f<g ms>\\x1f<window start ms>\\x1f<slice>\\x1f<values...>`` -> an open window aggregate,
  ``[counters, applied, emitted version]``; only the additive counters are read back (distinct counts are
  recounted from the consumers' memberships);
* ``k\\x1f<p>`` -> the source clocks, ``{"s": {source: [offset, max event ms]}, "wm": combined watermark}``.

A ``None`` value deletes the key (a closed window's aggregate, a consumer with nothing left to remember).

Consumer record, format 2: ``fp`` first purchase ms or null; ``ids`` recent event id -> (event ms << 40) |
source offset; ``m`` window label -> the consumer's membership entry in that window (streams/membership.py),
as items ``[bits, *cell]`` and ``[0, order_id, *cell]``. Format 1 (commits before format 2: no ``"v"``, per-slice
membership keys ``"slice\\x1fvalues...\\x1ftag"`` -> the event that added it, under ``"e"``) is still read: its
memberships are kept as *legacy* memberships (``"lg"`` in format 2 records) until their windows close, so a
worker upgraded mid-window counts exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable

from streams import membership
from streams.kpis import ACTIVE, FEATURE_USER, PARTICIPATING, PURCHASER

SEP = "\x1f"
CONSUMER, AGGREGATE, CLOCKS = "c", "w", "k"
FORMAT = 2

Record = tuple[str, bytes | None]  # (key, value or None to delete)
_encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode  # compact; values are plain data
AggregateKey = tuple[int, int, str, tuple[str, ...]]  # (granularity ms, window start ms, slice, slice values)
WindowKey = tuple[int, int]  # (granularity ms, window start ms)
#: format 1 membership tags -> membership bits; "o:<order_id>" was an order
FORMAT_1_TAGS = {"a": ACTIVE, "p": PARTICIPATING, "b": PURCHASER, "f": FEATURE_USER}
FORMAT_1_ORDER = "o:"


@dataclass(slots=True)
class ConsumerState:
    """What the engine keeps per consumer (a consumer lives in exactly one partition) besides its window
    memberships."""

    first_purchase_ms: int | None = None  # earliest purchase seen: decides returning purchasers
    #: recent event ids -> (event time ms << OFFSET_BITS) | source offset: deduplication while their window is open
    event_ids: dict[str, int] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not self.event_ids and self.first_purchase_ms is None


@dataclass(slots=True)
class LegacyMembership:
    """A format-1 membership: the consumer claimed ``bits`` (or ``order_id``) in this slice aggregate."""

    slice_name: str
    values: tuple[str, ...]
    bits: int
    order_id: str | None


@dataclass(slots=True)
class StoredConsumer:
    state: ConsumerState
    entries: dict[WindowKey, list] = field(default_factory=dict)  # window -> membership entry
    legacy: dict[WindowKey, list[LegacyMembership]] = field(default_factory=dict)


@dataclass(slots=True)
class StoredAggregate:
    counters: list[int]
    applied: dict[str, int]  # source -> highest source offset applied
    emitted: int  # version of the last emission


@dataclass(slots=True)
class StoredClocks:
    sources: dict[str, tuple[int, int]]  # source -> (offset, max event time ms)
    combined_watermark: int


@dataclass(slots=True)
class StoredState:
    """One partition's records decoded (latest value per key, tombstones left out)."""

    clocks: StoredClocks | None = None
    aggregates: dict[AggregateKey, StoredAggregate] = field(default_factory=dict)
    consumers: dict[str, StoredConsumer] = field(default_factory=dict)


def window_label(granularity_ms: int, start_ms: int) -> str:
    """A window's name inside consumer memberships."""
    return f"{granularity_ms}:{start_ms}"


def parse_window_label(label: str) -> tuple[int, int]:
    g, start = label.split(":")
    return int(g), int(start)


def consumer_record(partition: int, consumer_id: str, state: ConsumerState | None,
                    entries: dict[WindowKey, list] | None = None,
                    legacy: dict[WindowKey, list[LegacyMembership]] | None = None) -> Record:
    """A consumer's record: its state and its membership entry per open window (None: delete the record)."""
    key = f"{CONSUMER}{SEP}{partition}{SEP}{consumer_id}"
    if state is None:
        return key, None
    data = {"v": FORMAT, "fp": state.first_purchase_ms, "ids": state.event_ids,
            "m": {window_label(*w): membership.to_items(entry) for w, entry in (entries or {}).items()}}
    if legacy:
        data["lg"] = {window_label(*w): [[m.slice_name, list(m.values), m.bits, m.order_id] for m in ms]
                      for w, ms in legacy.items()}
    return key, _encode(data).encode()


def aggregate_key(partition: int, key: AggregateKey) -> str:
    g, start, slice_name, values = key
    return SEP.join((AGGREGATE, str(partition), str(g), str(start), slice_name, *values))


def aggregate_record(partition: int, key: AggregateKey, counters: list[int], applied: dict[str, int],
                     emitted: int) -> Record:
    return aggregate_key(partition, key), _encode([counters, applied, emitted]).encode()


def clocks_record(partition: int, sources: dict[str, list[int]], combined_watermark: int) -> Record:
    return f"{CLOCKS}{SEP}{partition}", _encode({"s": sources, "wm": combined_watermark}).encode()


def decode(records: Iterable[tuple[str, bytes]], intern=None) -> StoredState:
    """The latest records of one partition -> StoredState. ``intern`` (cell tuple -> shared tuple) lets equal
    cells share one object."""
    state = StoredState()
    for key, value in records:
        kind, _partition, *rest = key.split(SEP)
        data = json.loads(value)
        if kind == CLOCKS:
            state.clocks = StoredClocks({s: (o, ts) for s, (o, ts) in data["s"].items()}, data["wm"])
        elif kind == AGGREGATE:
            g, start, slice_name, *values = rest
            counters, applied, emitted = data
            state.aggregates[(int(g), int(start), slice_name, tuple(values))] = StoredAggregate(counters, applied, emitted)
        elif kind == CONSUMER:
            state.consumers[SEP.join(rest)] = _decode_consumer(data, intern)
    return state


def _decode_consumer(data: dict, intern) -> StoredConsumer:
    consumer = StoredConsumer(ConsumerState(data["fp"], data["ids"]))
    if "v" not in data:  # format 1
        for label, entries in data["e"].items():
            consumer.legacy[parse_window_label(label)] = [_format_1_membership(k) for k in entries]
        return consumer
    for label, items in data["m"].items():
        consumer.entries[parse_window_label(label)] = membership.from_items(items, intern)
    for label, memberships in data.get("lg", {}).items():
        consumer.legacy[parse_window_label(label)] = [LegacyMembership(s, tuple(v), b, o) for s, v, b, o in memberships]
    return consumer


def _format_1_membership(key: str) -> LegacyMembership:
    slice_name, *values, tag = key.split(SEP)
    if tag.startswith(FORMAT_1_ORDER):
        return LegacyMembership(slice_name, tuple(values), 0, tag[len(FORMAT_1_ORDER):])
    return LegacyMembership(slice_name, tuple(values), FORMAT_1_TAGS[tag], None)
