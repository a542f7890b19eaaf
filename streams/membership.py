"""A consumer's membership in one window: what makes distinct counts exact.

Distinct counters (active consumers, purchasers, ...; streams/kpis.py) count each consumer once per window
aggregate, and ``orders`` each (consumer, order_id) once. Instead of one membership per slice, the engine keeps
per consumer and window the *cells* it was seen in — a cell is the full tuple of dimension values
(``kpis.dimension_values``) — with the membership bits it claimed there, and the orders it placed there. A
slice's membership is a projection of the cells: the consumer counts in the aggregate (slice, values) for bit b
iff one of its cells with bit b projects onto those values. Consumers mostly stay in one to three cells per
window, so one entry serves all slices.

An entry is a flat list ``[key0, mask0, key1, mask1, ...]``, the smallest Python structure for a handful of
cells: a key is a cell (mask = its membership bits, never 0) or an order key ``(order_id, cell)`` (mask 0).
Entries only grow while their window is open; they are sets, so claiming twice changes nothing — which makes
a replay after a crash idempotent.
"""

from __future__ import annotations

from typing import Callable

Cell = tuple  # the event's value of every dimension, in DIMENSIONS order (None: no value)
Projection = Callable[[Cell], tuple]  # cell -> slice values


def claim(entry: list, cell: Cell, bits: int) -> int:
    """Claim ``bits`` for ``cell``; returns the bits that were not claimed for this cell before."""
    for i in range(0, len(entry), 2):
        if entry[i + 1] and entry[i] == cell:
            old = entry[i + 1]
            new = bits & ~old
            if new:
                entry[i + 1] = old | new
            return new
    entry += (cell, bits)
    return bits


def claim_order(entry: list, order_id: str, cell: Cell) -> bool:
    """Claim an order placed in ``cell``; True when it was not claimed for this cell before."""
    for i in range(0, len(entry), 2):
        if not entry[i + 1]:
            key = entry[i]
            if key[0] == order_id and key[1] == cell:
                return False
    entry += ((order_id, cell), 0)
    return True


def bits_elsewhere(entry: list, cell: Cell) -> int:
    """The membership bits claimed in cells other than ``cell``."""
    bits = 0
    for i in range(0, len(entry), 2):
        if entry[i + 1] and entry[i] != cell:
            bits |= entry[i + 1]
    return bits


def orders_elsewhere(entry: list, order_id: str, cell: Cell) -> bool:
    """Whether the order was claimed in a cell other than ``cell``."""
    for i in range(0, len(entry), 2):
        if not entry[i + 1]:
            key = entry[i]
            if key[0] == order_id and key[1] != cell:
                return True
    return False


def claimed_elsewhere(entry: list, bit: int, project: Projection, values: tuple, cell: Cell) -> bool:
    """Whether a cell other than ``cell`` holds ``bit`` and projects onto ``values``."""
    for i in range(0, len(entry), 2):
        if entry[i + 1] & bit:
            key = entry[i]
            if key != cell and project(key) == values:
                return True
    return False


def ordered_elsewhere(entry: list, order_id: str, project: Projection, values: tuple, cell: Cell) -> bool:
    """Whether the order was claimed in a cell other than ``cell`` that projects onto ``values``."""
    for i in range(0, len(entry), 2):
        if not entry[i + 1]:
            key = entry[i]
            if key[0] == order_id and key[1] != cell and project(key[1]) == values:
                return True
    return False


def projected(entry: list, project: Projection) -> tuple[dict[tuple, int], set[tuple[str, tuple]]]:
    """The entry as one slice sees it: slice values -> membership bits, and the (order_id, slice values) claimed.
    Cells without a value for one of the slice's dimensions are not in the slice."""
    bits: dict[tuple, int] = {}
    orders: set[tuple[str, tuple]] = set()
    for i in range(0, len(entry), 2):
        key, mask = entry[i], entry[i + 1]
        values = project(key if mask else key[1])
        if None in values:
            continue
        if mask:
            bits[values] = bits.get(values, 0) | mask
        else:
            orders.add((key[0], values))
    return bits, orders


def to_items(entry: list) -> list[list]:
    """JSON-ready: ``[bits, *cell]`` per cell, ``[0, order_id, *cell]`` per order."""
    items = []
    for i in range(0, len(entry), 2):
        key, mask = entry[i], entry[i + 1]
        items.append([mask, *key] if mask else [0, key[0], *key[1]])
    return items


def from_items(items: list[list], intern: Callable[[Cell], Cell] | None = None) -> list:
    intern = intern or (lambda cell: cell)
    entry: list = []
    for item in items:
        if item[0]:
            entry += (intern(tuple(item[1:])), item[0])
        else:
            entry += ((item[1], intern(tuple(item[2:]))), 0)
    return entry
