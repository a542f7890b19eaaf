"""The engine's state as changelog records, and back: what streams/state_store.py writes to and reads from
the compacted ``<app_id>-state-changelog`` topic. Pure encoding: no Kafka here.

Three kinds of record per partition index p, keyed ``<kind>\\x1f<p>\\x1f...`` (utf-8), values JSON:

* ``c\\x1f<p>\\x1f<consumer id>`` -> a consumer's state (``ConsumerState``), ``{"o", "fp", "ids", "e"}``;
* ``w\\x1f<p>\\x1f<g ms>\\x1f<window start ms>\\x1f<slice>\\x1f<values...>`` -> an open window aggregate,
  ``[counters, applied, emitted version]``;
* ``k\\x1f<p>`` -> the source clocks, ``{"s": {source: [offset, max event ms]}, "wm": combined watermark}``.

A ``None`` value deletes the key (a closed window's aggregate). The short field names are the stored format:
changelogs written by earlier versions restore unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable

SEP = "\x1f"
CONSUMER, AGGREGATE, CLOCKS = "c", "w", "k"

Record = tuple[str, bytes | None]  # (key, value or None to delete)
_encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode  # compact; values are plain data
AggregateKey = tuple[int, int, str, tuple[str, ...]]  # (granularity ms, window start ms, slice, slice values)


@dataclass(slots=True)
class ConsumerState:
    """What the engine keeps per consumer (a consumer lives in exactly one partition)."""

    #: source -> highest source offset applied to this record (replays below it change nothing)
    applied: dict[str, int] = field(default_factory=dict)
    first_purchase_ms: int | None = None  # earliest purchase seen: decides returning purchasers
    #: recent event ids -> (event time ms << OFFSET_BITS) | source offset: deduplication while their window is open
    event_ids: dict[str, int] = field(default_factory=dict)
    #: "<g ms>:<window start ms>" -> membership key ("slice\x1fvalues...\x1ftag") -> the event that added it
    memberships: dict[str, dict[str, int]] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not self.memberships and not self.event_ids and self.first_purchase_ms is None


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
    consumers: dict[str, ConsumerState] = field(default_factory=dict)


def window_label(granularity_ms: int, start_ms: int) -> str:
    """A window's name inside consumer memberships."""
    return f"{granularity_ms}:{start_ms}"


def parse_window_label(label: str) -> tuple[int, int]:
    g, start = label.split(":")
    return int(g), int(start)


def membership_key_prefix(slice_name: str, values: tuple[str, ...]) -> str:
    """membership key = prefix + tag"""
    return SEP.join((slice_name, *values, ""))


def parse_membership_key(key: str) -> tuple[str, tuple[str, ...], str]:
    """-> (slice, slice values, tag)"""
    slice_name, *values, tag = key.split(SEP)
    return slice_name, tuple(values), tag


def consumer_record(partition: int, consumer_id: str, state: ConsumerState | None) -> Record:
    value = None if state is None else _encode(
        {"o": state.applied, "fp": state.first_purchase_ms, "ids": state.event_ids, "e": state.memberships}).encode()
    return f"{CONSUMER}{SEP}{partition}{SEP}{consumer_id}", value


def aggregate_key(partition: int, key: AggregateKey) -> str:
    g, start, slice_name, values = key
    return SEP.join((AGGREGATE, str(partition), str(g), str(start), slice_name, *values))


def aggregate_record(partition: int, key: AggregateKey, counters: list[int], applied: dict[str, int],
                     emitted: int) -> Record:
    return aggregate_key(partition, key), _encode([counters, applied, emitted]).encode()


def clocks_record(partition: int, sources: dict[str, list[int]], combined_watermark: int) -> Record:
    return f"{CLOCKS}{SEP}{partition}", _encode({"s": sources, "wm": combined_watermark}).encode()


def decode(records: Iterable[tuple[str, bytes]]) -> StoredState:
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
            state.consumers[SEP.join(rest)] = ConsumerState(data["o"], data["fp"], data["ids"], data["e"])
    return state
