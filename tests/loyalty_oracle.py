"""Independent oracle of the loyalty views (schemas/clickhouse/0006_loyalty.sql), written plainly from the
definitions in docs/loyalty.md with Python sets and dates, sharing no code or SQL with the views.

Input: the events that reached the raw tables, as the generator describes them (``GeneratedMessage.event``
dicts with ``type``: ``event_id``, ``consumer_id``, ``occurred_ms``, ``kind`` for feedback, ``order_id`` and
``amount_minor`` for purchases). Duplicates (the same event_id more than once) are allowed: each event counts once.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

PERIODS = ("day", "week", "month")
COHORTS = ("first_seen", "first_purchase")
DAY_MS = 86_400_000
REPEAT_DAYS = (30, 90)
ROLLING_DAYS = 30


def utc_day(ms: int) -> dt.date:
    return dt.datetime.fromtimestamp(ms // 1000, tz=dt.timezone.utc).date()


def period_start(period: str, day: dt.date) -> dt.date:
    if period == "day":
        return day
    if period == "week":
        return day - dt.timedelta(days=day.weekday())  # Monday
    return day.replace(day=1)


def period_number(period: str, start: dt.date) -> int:
    """Consecutive periods have consecutive numbers."""
    if period == "day":
        return start.toordinal()
    if period == "week":
        return start.toordinal() // 7
    return start.year * 12 + start.month


@dataclass
class LoyaltyOracle:
    events: list[dict]
    #: consumer -> set of UTC days with activity
    active_days: dict[str, set] = field(default_factory=lambda: defaultdict(set))
    #: event_id -> purchase event (deduplicated)
    purchases: dict[str, dict] = field(default_factory=dict)
    last_event_ms: int = 0

    def __post_init__(self) -> None:
        for event in self.events:
            if event["type"] not in ("purchase", "usage", "feedback"):
                continue  # enterprise events (responses): the company's, not the consumer's activity
            if event["type"] == "feedback" and event["kind"] == "survey_invited":
                continue  # sent by the company: not the consumer's activity
            self.active_days[event["consumer_id"]].add(utc_day(event["occurred_ms"]))
            self.last_event_ms = max(self.last_event_ms, event["occurred_ms"])
            if event["type"] == "purchase":
                self.purchases[event["event_id"]] = event
        every_day = [d for days in self.active_days.values() for d in days]
        self.first_day, self.last_day = min(every_day), max(every_day)
        self.days = [self.first_day + dt.timedelta(days=i) for i in range((self.last_day - self.first_day).days + 1)]

    # --- periods ---------------------------------------------------------------------------------
    def periods(self, period: str) -> list[dt.date]:
        """Starts of every period that holds a day of the range, in order."""
        return sorted({period_start(period, d) for d in self.days})

    def days_in_range(self, period: str, start: dt.date) -> int:
        return sum(1 for d in self.days if period_start(period, d) == start)

    def active(self, period: str) -> dict[dt.date, set]:
        """period start -> consumers active in it."""
        out: dict[dt.date, set] = defaultdict(set)
        for consumer, days in self.active_days.items():
            for d in days:
                out[period_start(period, d)].add(consumer)
        return out

    def purchase_days(self) -> dict[str, set]:
        out: dict[str, set] = defaultdict(set)
        for p in self.purchases.values():
            out[p["consumer_id"]].add(utc_day(p["occurred_ms"]))
        return out

    # --- the views -------------------------------------------------------------------------------
    def consumer_lifecycle(self) -> set[tuple]:
        """{(period, period_start, consumer_id, state)}."""
        out = set()
        for period in PERIODS:
            active = self.active(period)
            seen: set = set()
            previous: set = set()
            for start in self.periods(period):
                now = active.get(start, set())
                for consumer in now:
                    if consumer not in seen:
                        state = "new"
                    elif consumer in previous:
                        state = "returning"
                    else:
                        state = "resurrecting"
                    out.add((period, start, consumer, state))
                for consumer in previous - now:
                    out.add((period, start, consumer, "dormant"))
                seen |= now
                previous = now
        return out

    def lifecycle(self) -> dict[tuple, dict]:
        """(period, period_start) -> counts."""
        states = self.consumer_lifecycle()
        out = {}
        for period in PERIODS:
            for start in self.periods(period):
                here = [s for p, d, _, s in states if p == period and d == start]
                out[(period, start)] = {
                    "active_consumers": sum(1 for s in here if s != "dormant"),
                    "new_consumers": here.count("new"),
                    "returning_consumers": here.count("returning"),
                    "resurrecting_consumers": here.count("resurrecting"),
                    "dormant_consumers": here.count("dormant"),
                }
        return out

    def cohort_members(self) -> dict[tuple, set]:
        """(period, cohort, cohort_start) -> consumers."""
        first_purchase = {c: min(days) for c, days in self.purchase_days().items()}
        out: dict[tuple, set] = defaultdict(set)
        for consumer, days in self.active_days.items():
            for period in PERIODS:
                out[(period, "first_seen", period_start(period, min(days)))].add(consumer)
                if consumer in first_purchase:
                    out[(period, "first_purchase", period_start(period, first_purchase[consumer]))].add(consumer)
        return out

    def cohorts(self) -> dict[tuple, dict]:
        """(period, cohort, cohort_start, periods_after) -> the cohort matrix cell."""
        out = {}
        for period in PERIODS:
            active = self.active(period)
            revenue_minor: dict[tuple, int] = defaultdict(int)
            purchasers: dict[dt.date, set] = defaultdict(set)
            for p in self.purchases.values():
                start = period_start(period, utc_day(p["occurred_ms"]))
                revenue_minor[(start, p["consumer_id"])] += p["amount_minor"]
                purchasers[start].add(p["consumer_id"])
            for (kind, cohort, cohort_start), members in self.cohort_members().items():
                if kind != period:
                    continue
                for start in self.periods(period):
                    if start < cohort_start:
                        continue
                    retained = members & active.get(start, set())
                    out[(period, cohort, cohort_start, period_number(period, start) - period_number(period, cohort_start))] = {
                        "period_start": start,
                        "cohort_size": len(members),
                        "active_consumers": len(retained),
                        "retention_rate": len(retained) / len(members),
                        "purchasers": len(members & purchasers[start]),
                        "revenue": Decimal(sum(revenue_minor[(start, c)] for c in members)) / 100,
                    }
        return out

    def repeat_purchase(self) -> dict[tuple, dict]:
        """(period, cohort_start) -> first purchasers, matured, repeaters and rates for 30 and 90 days."""
        placed: dict[tuple, int] = {}
        for p in self.purchases.values():
            key = (p["consumer_id"], p["order_id"])
            placed[key] = min(placed.get(key, p["occurred_ms"]), p["occurred_ms"])
        orders: dict[str, list[int]] = defaultdict(list)
        for (consumer, _), ms in placed.items():
            orders[consumer].append(ms)
        out: dict[tuple, dict] = {}
        for times in orders.values():
            times.sort()
            first = times[0]
            for period in PERIODS:
                row = out.setdefault((period, period_start(period, utc_day(first))), {"first_purchasers": 0})
                row["first_purchasers"] += 1
                for days in REPEAT_DAYS:
                    until = first + days * DAY_MS
                    matured = until <= self.last_event_ms
                    repeated = len(times) >= 2 and times[1] <= until
                    row[f"matured_{days}d"] = row.get(f"matured_{days}d", 0) + matured
                    row[f"repeat_purchasers_{days}d"] = row.get(f"repeat_purchasers_{days}d", 0) + (matured and repeated)
        for row in out.values():
            for days in REPEAT_DAYS:
                matured = row[f"matured_{days}d"]
                row[f"repeat_rate_{days}d"] = None if matured == 0 else row[f"repeat_purchasers_{days}d"] / matured
        return out

    def stickiness(self) -> dict[tuple, dict]:
        """(period, period_start) -> average daily active / active in the period, for weeks and months."""
        out = {}
        daily = self.active("day")
        for period in ("week", "month"):
            active = self.active(period)
            for start in self.periods(period):
                days = self.days_in_range(period, start)
                consumer_days = sum(len(daily.get(d, ())) for d in self.days if period_start(period, d) == start)
                consumers = len(active.get(start, ()))
                out[(period, start)] = {
                    "days": days,
                    "consumer_days": consumer_days,
                    "active_consumers": consumers,
                    "average_daily_active": consumer_days / days,
                    "stickiness": None if consumers == 0 else consumer_days / (days * consumers),
                }
        return out

    def stickiness_rolling(self) -> dict[dt.date, dict]:
        """day -> DAU, MAU of the 30 days ending that day, their ratio, and whether those days are all stored."""
        daily = self.active("day")
        out = {}
        for day in self.days:
            window = [day - dt.timedelta(days=i) for i in range(ROLLING_DAYS)]
            dau = len(daily.get(day, ()))
            mau = len(set().union(*(daily.get(d, set()) for d in window)))
            out[day] = {
                "dau": dau,
                "mau": mau,
                "stickiness": None if mau == 0 else dau / mau,
                "window_complete": int(window[-1] >= self.first_day),
            }
        return out
