"""``copulse generate``: a seeded simulation of consumers producing purchase, usage and feedback events, and of
the enterprise answering them (responses, idea status changes, closed cases: copulse/enterprise.py).

Generation (:func:`generate_events`) is pure and deterministic: the same seed, start and options give the
same messages byte for byte (every id comes from the seeded RNG, never uuid4 or the clock). Producing
(:func:`produce`) sends them to Kafka and/or writes them to a JSONL file, one line per message with the
partition and offset Kafka assigned, the expected outcome and the event fields, so that an independent
oracle can recompute the exact KPIs.

Expected outcomes of a message (``expected`` in the JSONL):

* ``valid`` -- decodes, is on time (event time jitter stays within the allowed lateness) and is new;
* ``duplicate`` -- a byte-identical re-send (same topic, key and value) of a recent valid message; it is
  recent enough not to be late, so the engine must drop it as a duplicate;
* ``late`` -- a valid event whose time is older than allowed lateness permits: it is keyed and typed like
  an earlier valid message (same topic-partition) and lies more than ``allowed_lateness + finest window``
  before it, so its window is closed however the partitions interleave (enterprise events too);
* ``invalid`` -- exactly one defect, ``reason`` is the dead-letter reason code decode_event must give.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import json
import logging
import math
import random
import sys
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

from streams import errors as R
from copulse.enterprise import Enterprise
from streams.codec import HEADER, MAGIC_BYTE, encode
from streams.events import EVENT_TYPES
from streams.schemas import latest_schema_id, schema_ids
from streams.validation import CHANNELS

log = logging.getLogger(__name__)

VALID, DUPLICATE, LATE, INVALID = "valid", "duplicate", "late", "invalid"

#: the reason codes the generator can produce on purpose (all decode reasons)
INVALID_REASONS: tuple[str, ...] = R.DECODE_REASONS

CHANNEL_WEIGHTS = (35, 30, 15, 5, 10, 5)  # in the order of CHANNELS
DIGITAL = ("web", "app", "marketplace", "partner")
REGIONS = ("DE", "FR", "NL", "ES", "IT", "PL", "SE", "AT")
REGION_WEIGHTS = (30, 18, 10, 12, 12, 8, 5, 5)
SEGMENTS = ("new", "regular", "loyal", "vip", "business", None)
SEGMENT_WEIGHTS = (25, 35, 20, 5, 10, 5)
SEGMENT_ENGAGEMENT = {"new": 0.7, "regular": 1.0, "loyal": 1.6, "vip": 2.5, "business": 1.2, None: 0.8}
CATEGORIES = ("audio", "wearables", "smart_home", "accessories", "software", "services")
FEATURES = (
    "search", "recommendations", "wishlist", "order_tracking", "compare",
    "configurator", "size_guide", "loyalty_wallet", "live_chat", "ar_preview",
)  # fmt: skip
FEATURE_WEIGHTS = (30, 15, 12, 10, 8, 7, 6, 5, 4, 3)
BETA_FEATURES = ("beta_ai_assistant", "beta_voice_search", "beta_3d_configurator")
CUSTOM_FEATURES = ("custom_engraving", "colour_picker", "bundle_builder")
APP_VERSIONS = ("5.2.0", "5.3.1", "5.4.0", "6.0.0-beta")
RATING_WEIGHTS = (5, 7, 15, 35, 38)  # 1..5
NPS_WEIGHTS = (2, 1, 2, 2, 3, 4, 6, 10, 15, 25, 30)  # 0..10
REVIEW_TEXTS = (
    "Works as advertised.", "Battery could last longer.", "Great value for money!",
    "Setup was confusing.", "Love the design.", "Arrived late but works well.",
)  # fmt: skip
IDEA_TEXTS = (
    "Add a dark mode to the app.", "Let me share my wishlist with friends.", "Offer a refill subscription.",
    "Show repairability scores.", "Bundle accessories with the main product.", "Add a trade-in programme.",
)  # fmt: skip
BUG_TEXTS = (
    "App crashes when I open my orders.", "Checkout button does nothing on Safari.",
    "Firmware update stuck at 99%.", "Wrong size shown in the configurator.",
)  # fmt: skip
BAD_CHANNELS = ("email", "kiosk", "fax", "WEB", "social")
IDEA_STATUSES = ("under_review", "planned", "in_progress", "shipped", "declined")
OTHER_CURRENCIES = ("USD", "GBP", "CHF", "SEK", "PLN", "EUR")


def _cum(weights: Iterable[float]) -> list[float]:
    out, total = [], 0.0
    for w in weights:
        total += w
        out.append(total)
    return out


@dataclass(slots=True)
class GeneratedMessage:
    """One Kafka message the generator sends, with what the pipeline is expected to make of it."""

    seq: int  # position in the generated sequence, 0-based
    topic: str
    key: bytes | None
    value: bytes
    type: str  # event type of the record inside (streams.events.EVENT_TYPES)
    schema_id: int  # schema id in the frame (as intended; a corrupted frame may say otherwise)
    expected: str  # 'valid' | 'duplicate' | 'late' | 'invalid'
    reason: str | None  # dead-letter reason code for 'invalid'
    event: dict  # the event's fields, JSON-ready (see event_json)
    duplicate_of: int | None = None  # seq of the original of a duplicate

    def json_line(self, partition: int | None, offset: int | None, error: str | None = None) -> str:
        line: dict[str, Any] = {
            "seq": self.seq,
            "topic": self.topic,
            "partition": partition,
            "offset": offset,
            "key": None if self.key is None else self.key.decode("utf-8", "replace"),
            "type": self.type,
            "schema_id": self.schema_id,
            "expected": self.expected,
            "reason": self.reason,
            "event": self.event,
        }
        if self.duplicate_of is not None:
            line["duplicate_of"] = self.duplicate_of
        if self.expected == INVALID:
            line["value_b64"] = base64.b64encode(self.value).decode()
        if error is not None:
            line["error"] = error
        return json.dumps(line, separators=(",", ":"), ensure_ascii=False)


def event_json(record: dict) -> dict:
    """JSON-ready event fields: occurred_at as ISO-8601 UTC plus ``occurred_ms`` (epoch ms); purchases
    carry ``amount`` as a string ('12.30') plus ``amount_minor`` (1230, cents of the currency)."""
    out = dict(record)
    ms = record["occurred_at"]
    out["occurred_ms"] = ms
    out["occurred_at"] = R.iso_utc_ms(ms) if isinstance(ms, int) and -62135596800000 < ms < 253402300800000 else str(ms)
    amount = record.get("amount")
    if amount is not None:
        out["amount"] = str(amount)
        out["amount_minor"] = int(amount.scaleb(2))
    return out


class _Product:
    __slots__ = ("category", "price_cents", "product_id")

    def __init__(self, product_id: str, category: str, price_cents: int):
        self.product_id = product_id
        self.category = category
        self.price_cents = price_cents


class _Consumer:
    __slots__ = (
        "app_version",
        "channel",
        "cocreation",
        "consumer_id",
        "digital",
        "engagement",
        "invite",
        "key",
        "legacy_usage",
        "orders",
        "region",
        "segment",
        "session",
        "to_rate",
    )  # fmt: skip

    def __init__(self) -> None:
        self.session: tuple | None = None  # (session_id, start_ms, channel, product, steps)
        self.to_rate: _Product | None = None
        self.invite: str | None = None  # event_id of an unanswered survey invitation
        self.orders = 0


@dataclass
class GeneratorOptions:
    count: int | None = None  # messages in total (valid + duplicate + late + invalid); None = endless
    duration_s: float | None = None  # or: stop when event time has advanced this far
    consumers: int = 1000
    seed: int = 1
    start_ms: int | None = None  # event time of the first event, epoch ms UTC; None = now (not reproducible)
    event_time_rate: float = 100.0  # events per second of event time
    out_of_order_s: float = 0.0  # max jitter of on-time events (clamped to the allowed lateness)
    late_fraction: float = 0.0
    duplicate_fraction: float = 0.0
    invalid_fraction: float = 0.0
    usage_v1_share: float = 0.3  # consumers on an old app that still writes usage v1 (schema 201)
    enterprise_time_scale: float = 1.0  # enterprise delays (hours to weeks) x this; 1/360: an hour takes 10 s


class Simulation:
    """The seeded world: consumers, products, sessions, orders, surveys and ideas, and the enterprise."""

    def __init__(self, settings: Any, options: GeneratorOptions):
        if options.consumers < 1:
            raise ValueError("--consumers must be >= 1")
        if options.event_time_rate <= 0:
            raise ValueError("--event-time-rate must be > 0")
        for name in ("late_fraction", "duplicate_fraction", "invalid_fraction"):
            value = getattr(options, name)
            if not 0 <= value <= 1:
                raise ValueError(f"--{name.replace('_', '-')} must be between 0 and 1")
        if options.late_fraction + options.duplicate_fraction + options.invalid_fraction > 1:
            raise ValueError("late + duplicate + invalid fractions must add up to at most 1")
        if options.start_ms is None:
            options.start_ms = parse_start(None)
        self.settings = settings
        self.opt = options
        self.rng = random.Random(options.seed)
        self.topics = settings.source_topics
        self.currency = settings.currency
        self.lateness_ms = settings.allowed_lateness_seconds * 1000
        self.finest_ms = min(settings.granularity_seconds) * 1000
        self.jitter_ms = int(min(options.out_of_order_s, settings.allowed_lateness_seconds) * 1000)
        self.step_mean_s = 1.0 / options.event_time_rate
        self.t_ms = float(options.start_ms)
        self.max_valid_ms = -(2**62)
        self.seq = 0
        self.pending: deque = deque()  # queued follow-up events: (kind, consumer, args)
        self.recent: deque[GeneratedMessage] = deque(maxlen=512)  # recent valid messages (duplicates, late refs)
        self.ideas: deque[tuple[str, _Product]] = deque(maxlen=256)
        self.recent_buyers: deque[tuple[_Consumer, _Product, str]] = deque(maxlen=2048)
        self.usage_ids = schema_ids("usage")
        self.response_id = latest_schema_id("response")
        self.enterprise = Enterprise(self.rng, self._id, options.enterprise_time_scale)
        self._build_products()
        self._build_population()

    # ------------------------------------------------------------------------------ the world
    def _build_products(self) -> None:
        rng = random.Random(f"copulse-products-{self.opt.seed}")
        base = {"audio": 12900, "wearables": 19900, "smart_home": 8900, "accessories": 2490, "software": 4900, "services": 9900}
        self.products: list[_Product] = []
        for category in CATEGORIES:
            for n in range(1, 9):
                price = max(199, int(base[category] * rng.lognormvariate(0, 0.5)) // 10 * 10 - 1)
                self.products.append(_Product(f"{category[:3].upper()}-{n:03d}", category, price))
        rng.shuffle(self.products)
        self.product_cum = _cum(1.0 / (rank + 1) ** 0.9 for rank in range(len(self.products)))

    def _build_population(self) -> None:
        rng = self.rng
        seen: set[str] = set()
        self.population: list[_Consumer] = []
        weights = []
        channel_cum, region_cum, segment_cum = _cum(CHANNEL_WEIGHTS), _cum(REGION_WEIGHTS), _cum(SEGMENT_WEIGHTS)
        for _ in range(self.opt.consumers):
            c = _Consumer()
            while True:
                cid = f"c-{rng.getrandbits(40):010x}"
                if cid not in seen:
                    seen.add(cid)
                    break
            c.consumer_id = cid
            c.key = cid.encode()
            c.segment = SEGMENTS[self._pick(segment_cum)]
            c.region = REGIONS[self._pick(region_cum)]
            c.channel = CHANNELS[self._pick(channel_cum)]
            c.digital = c.channel if c.channel in DIGITAL else ("app" if rng.random() < 0.4 else "web")
            c.engagement = rng.lognormvariate(0, 0.8) * SEGMENT_ENGAGEMENT[c.segment]
            c.cocreation = rng.betavariate(1.2, 6)  # most consumers rarely co-create, a few often
            c.app_version = rng.choice(APP_VERSIONS) if c.digital == "app" else None
            c.legacy_usage = rng.random() < self.opt.usage_v1_share
            self.population.append(c)
            weights.append(c.engagement)
        self.consumer_cum = _cum(weights)

    def _pick(self, cum: list[float]) -> int:
        return bisect.bisect_right(cum, self.rng.random() * cum[-1])

    def _product(self) -> _Product:
        return self.products[self._pick(self.product_cum)]

    def _id(self, prefix: str = "") -> str:
        h = f"{self.rng.getrandbits(128):032x}"
        return f"{prefix}{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:32]}"

    # ------------------------------------------------------------------------------ records
    def _common(self, c: _Consumer, at_ms: int, channel: str) -> dict:
        return {
            "event_id": self._id(),
            "consumer_id": c.consumer_id,
            "occurred_at": at_ms,
            "channel": channel,
            "region": c.region,
            "segment": c.segment,
        }

    def _usage(self, c: _Consumer, at_ms: int, action: str, session: tuple, feature=None, duration=None, product=None):
        r = self._common(c, at_ms, session[2])
        product = product or session[3]
        r.update(
            session_id=session[0],
            action=action,
            feature=feature,
            product_id=product.product_id,
            category=product.category,
            duration_ms=duration,
            co_creation=action in ("beta_use", "customisation", "community_post"),
        )
        if c.legacy_usage:
            r["schema_version"] = 1
            return "usage", self.usage_ids[0], r
        r["schema_version"] = 2
        r["app_version"] = c.app_version
        return "usage", self.usage_ids[-1], r

    def _feedback(self, c, at_ms, channel, kind, product, score=None, text=None, in_reply_to=None):
        r = self._common(c, at_ms, channel)
        r.update(
            schema_version=1,
            kind=kind,
            score=score,
            product_id=product.product_id,
            category=product.category,
            text=text,
            in_reply_to=in_reply_to,
        )
        return "feedback", 301, r

    def _purchase(self, c, at_ms, channel, order_id, product, quantity):
        r = self._common(c, at_ms, channel)
        r.update(
            schema_version=1,
            order_id=order_id,
            product_id=product.product_id,
            category=product.category,
            quantity=quantity,
            amount=Decimal(product.price_cents * quantity).scaleb(-2),
            currency=self.currency,
        )
        return "purchase", 101, r

    def _rating_score(self) -> int:
        return 1 + self._pick(self._rating_cum)

    _rating_cum = _cum(RATING_WEIGHTS)
    _nps_cum = _cum(NPS_WEIGHTS)
    _feature_cum = _cum(FEATURE_WEIGHTS)

    # ------------------------------------------------------------------------------ behaviour
    def _order(self, c: _Consumer, at_ms: int, channel: str) -> tuple:
        """First line of a basket now; the other lines are queued right behind it."""
        rng = self.rng
        order_id = f"o-{self.rng.getrandbits(64):016x}"
        lines = 1 if rng.random() < 0.55 else rng.randint(2, 4)
        products = [self._product() for _ in range(lines)]
        for p in products[1:]:
            qty = 1 if rng.random() < 0.8 else rng.randint(2, 3)
            self.pending.append(("purchase", c, (channel, order_id, p, qty)))
        c.orders += 1
        c.to_rate = products[0] if rng.random() < 0.35 else None
        self.recent_buyers.append((c, products[0], channel))
        qty = 1 if rng.random() < 0.8 else rng.randint(2, 3)
        return self._purchase(c, at_ms, channel, order_id, products[0], qty)

    def _next_valid(self, now_ms: int) -> tuple:
        """(type, schema id, record) of the next on-time event of the simulation (may mutate state)."""
        rng = self.rng
        if self.pending:
            kind, c, args = self.pending.popleft()
            if kind == "purchase":
                channel, order_id, p, qty = args
                return self._purchase(c, now_ms, channel, order_id, p, qty)
            if kind == "nps":
                channel, invite_product = args
                return self._feedback(c, now_ms, channel, "nps", invite_product, score=self._pick(self._nps_cum))
            if kind == "review":
                product, score = args
                return self._feedback(c, now_ms, c.digital, "review", product, score=score, text=rng.choice(REVIEW_TEXTS))
        follow_up = self.enterprise.due(now_ms)  # the enterprise answers feedback, moves ideas, closes cases
        if follow_up is not None:
            return "response", self.response_id, follow_up
        # company-side: invite a recent buyer to a satisfaction survey
        if self.recent_buyers and rng.random() < 0.04:
            c, product, channel = self.recent_buyers.popleft()
            if c.invite is None:
                t, sid, r = self._feedback(c, now_ms, c.digital, "survey_invited", product)
                c.invite = r["event_id"]
                return t, sid, r
        c = self.population[self._pick(self.consumer_cum)]
        session = c.session
        if session is None:
            if c.invite is not None and rng.random() < 0.3:
                invite, c.invite = c.invite, None
                if rng.random() < 0.55:  # answered (others ignore the invitation)
                    score = None if rng.random() < 0.1 else self._pick(self._nps_cum)
                    product = self._product()
                    if rng.random() < 0.6:
                        self.pending.append(("nps", c, (c.digital, product)))
                    return self._feedback(c, now_ms, c.digital, "survey_response", product, score=score, in_reply_to=invite)
            if c.to_rate is not None and rng.random() < 0.5:
                product, c.to_rate = c.to_rate, None
                score = self._rating_score()
                if rng.random() < 0.3:
                    self.pending.append(("review", c, (product, score)))
                return self._feedback(c, now_ms, c.digital, "rating", product, score=score)
            if c.channel in ("store", "call_center") and rng.random() < 0.5:
                return self._order(c, now_ms, c.channel)  # offline purchase, no session
            session = (f"s-{self.rng.getrandbits(64):016x}", now_ms, c.digital, self._product(), 0)
            c.session = session
            return self._usage(c, now_ms, "session_start", session)
        steps = session[4]
        c.session = session = session[:4] + (steps + 1,)
        r = rng.random()
        if r < 0.12 + 0.03 * steps:  # sessions get more likely to end the longer they run
            c.session = None
            return self._usage(c, now_ms, "session_end", session, duration=max(0, now_ms - session[1]))
        r = rng.random()
        co = c.cocreation
        if r < 0.50:
            return self._usage(c, now_ms, "feature_use", session, feature=FEATURES[self._pick(self._feature_cum)], product=self._product())
        if r < 0.60:
            return self._order(c, now_ms, session[2])
        if r < 0.60 + 0.6 * co:  # co-creation: beta use, customisation, community posts, ideas, votes, bugs
            r2 = rng.random()
            if r2 < 0.22:
                return self._usage(c, now_ms, "beta_use", session, feature=rng.choice(BETA_FEATURES))
            if r2 < 0.40:
                return self._usage(c, now_ms, "customisation", session, feature=rng.choice(CUSTOM_FEATURES))
            if r2 < 0.55:
                return self._usage(c, now_ms, "community_post", session)
            if r2 < 0.70:
                t, sid, rec = self._feedback(c, now_ms, session[2], "idea", session[3], text=rng.choice(IDEA_TEXTS))
                self.ideas.append((rec["event_id"], session[3]))
                return t, sid, rec
            if r2 < 0.90 and self.ideas:
                idea_id, product = self.ideas[rng.randrange(len(self.ideas))]
                return self._feedback(c, now_ms, session[2], "vote", product, in_reply_to=idea_id)
            return self._feedback(c, now_ms, session[2], "bug_report", session[3], text=rng.choice(BUG_TEXTS))
        if r < 0.85 and c.to_rate is not None:
            product, c.to_rate = c.to_rate, None
            return self._feedback(c, now_ms, session[2], "rating", product, score=self._rating_score())
        return self._usage(c, now_ms, "feature_use", session, feature=FEATURES[self._pick(self._feature_cum)], product=self._product())

    def _standalone(self, c: _Consumer, at_ms: int, event_type: str) -> tuple:
        """A plausible valid event of ``event_type`` that does not touch the simulation state."""
        rng = self.rng
        product = self._product()
        if event_type == "purchase":
            return self._purchase(c, at_ms, c.digital if rng.random() < 0.7 else c.channel, f"o-{self.rng.getrandbits(64):016x}", product, 1)
        if event_type == "usage":
            session = (f"s-{self.rng.getrandbits(64):016x}", at_ms, c.digital, product, 0)
            return self._usage(c, at_ms, "feature_use", session, feature=FEATURES[self._pick(self._feature_cum)])
        kind = rng.choice(("rating", "nps", "review", "idea", "bug_report"))
        if event_type == "feedback" and kind in ("rating", "review"):
            return self._feedback(c, at_ms, c.digital, kind, product, score=self._rating_score(),
                                  text=rng.choice(REVIEW_TEXTS) if kind == "review" else None)  # fmt: skip
        if event_type == "feedback" and kind == "nps":
            return self._feedback(c, at_ms, c.digital, kind, product, score=self._pick(self._nps_cum))
        if event_type == "feedback":
            return self._feedback(c, at_ms, c.digital, kind, product, text=rng.choice(IDEA_TEXTS if kind == "idea" else BUG_TEXTS))
        # response: about the consumer's latest feedback (a fresh bug report the enterprise heard of elsewhere if none)
        about = self.enterprise.last_feedback.get(c.consumer_id) or self._feedback(c, at_ms, c.digital, "bug_report", product)[2]
        if about["kind"] == "idea":
            record = self.enterprise.record(about, at_ms, "idea_status", "product", status=rng.choice(IDEA_STATUSES))
        else:
            record = self.enterprise.record(about, at_ms, rng.choice(("response", "case_closed")), "support")
        return "response", self.response_id, record

    # ------------------------------------------------------------------------------ messages
    def _message(self, expected, reason, event_type, schema_id, record, *, topic=None, key=..., value=None, consumer=None):
        key_bytes = record["consumer_id"].encode() if key is ... else key
        if value is None:
            value = encode(schema_id, record)
        msg = GeneratedMessage(
            self.seq,
            topic or self.topics[event_type],
            key_bytes,
            value,
            event_type,
            schema_id,
            expected,
            reason,
            event_json(record),
        )
        self.seq += 1
        return msg

    def _tick(self) -> int:
        self.t_ms += self.rng.expovariate(1.0) * self.step_mean_s * 1000
        now = int(self.t_ms)
        if self.jitter_ms and self.rng.random() < 0.3:
            now -= self.rng.randint(0, self.jitter_ms)
        return now

    def next_message(self) -> GeneratedMessage:
        rng = self.rng
        opt = self.opt
        r = rng.random()
        if r < opt.invalid_fraction:
            return self._invalid(int(self.t_ms))
        r -= opt.invalid_fraction
        if r < opt.duplicate_fraction and self.recent:
            return self._duplicate()
        r -= opt.duplicate_fraction
        if r < opt.late_fraction and self.recent:
            return self._late()
        now = self._tick()
        event_type, schema_id, record = self._next_valid(now)
        msg = self._message(VALID, None, event_type, schema_id, record)
        self.max_valid_ms = max(self.max_valid_ms, now)
        self.recent.append(msg)
        if event_type == "feedback":
            self.enterprise.heard(record)
        return msg

    def _duplicate(self) -> GeneratedMessage:
        # the original must still be on time: occurred_ms >= newest valid event time - allowed lateness
        floor = self.max_valid_ms - self.lateness_ms
        original = self.recent[self.rng.randrange(len(self.recent))]
        if original.event["occurred_ms"] < floor:
            original = self.recent[-1]  # the newest valid message always qualifies
        msg = GeneratedMessage(
            self.seq, original.topic, original.key, original.value, original.type, original.schema_id,
            DUPLICATE, None, original.event, duplicate_of=original.seq,
        )  # fmt: skip
        self.seq += 1
        return msg

    def _late(self) -> GeneratedMessage:
        # same topic-partition as an earlier valid message, far enough behind it that the finest window
        # (and so every window) holding the late event closed before it arrives
        ref = self.recent[self.rng.randrange(len(self.recent))]
        c = self._consumer_by_id(ref.event["consumer_id"])
        behind = self.lateness_ms + self.finest_ms + self.rng.randint(1_000, max(2_000, 2 * self.finest_ms + 600_000))
        at = max(ref.event["occurred_ms"] - behind, R_MIN_MS)
        event_type, schema_id, record = self._standalone(c, at, ref.type)
        return self._message(LATE, None, event_type, schema_id, record)

    def _consumer_by_id(self, consumer_id: str) -> _Consumer:
        if not hasattr(self, "_by_id"):
            self._by_id = {c.consumer_id: c for c in self.population}
        return self._by_id[consumer_id]

    def _invalid(self, now_ms: int) -> GeneratedMessage:
        rng = self.rng
        reason = rng.choice(INVALID_REASONS)
        c = self.population[self._pick(self.consumer_cum)]
        types = EVENT_TYPES
        event_type = {
            R.NEGATIVE_AMOUNT: "purchase", R.NEGATIVE_QUANTITY: "purchase", R.UNSUPPORTED_CURRENCY: "purchase",
            R.SCORE_OUT_OF_RANGE: "feedback", R.MISSING_SCORE: "feedback",
            R.MISSING_STATUS: "response", R.UNEXPECTED_STATUS: "response",
        }.get(reason) or rng.choice(types)  # fmt: skip
        event_type, schema_id, record = self._standalone(c, now_ms, event_type)
        kw: dict[str, Any] = {}
        if reason == R.BAD_MAGIC_BYTE:
            if rng.random() < 0.5:  # a producer that sends JSON
                kw["value"] = json.dumps(event_json(record), default=str).encode()
            else:
                good = encode(schema_id, record)
                kw["value"] = bytes([rng.randint(1, 255)]) + good[1:]
        elif reason == R.UNKNOWN_SCHEMA_ID:
            good = encode(schema_id, record)
            schema_id = 990_000 + rng.randrange(10_000)
            kw["value"] = HEADER.pack(MAGIC_BYTE, schema_id) + good[5:]
        elif reason == R.UNDECODABLE:
            good = encode(schema_id, record)
            if rng.random() < 0.5:
                kw["value"] = good[: rng.randint(5, len(good) - 1)]  # truncated
            else:
                kw["value"] = good + bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 4)))  # trailing bytes
        elif reason == R.MISSING_KEY:
            kw["key"] = None
        elif reason == R.KEY_MISMATCH:
            other = self.population[rng.randrange(len(self.population))]
            kw["key"] = (other.consumer_id if other is not c else c.consumer_id + "-x").encode()
        elif reason == R.WRONG_EVENT_TYPE:
            kw["topic"] = self.topics[rng.choice([t for t in types if t != event_type])]
        elif reason == R.SCORE_OUT_OF_RANGE:
            kind = rng.choice(("rating", "nps", "survey_response", "review"))
            record["kind"] = kind
            record["score"] = rng.choice((0, 6, 7, -1)) if kind in ("rating", "review") else rng.choice((11, 12, 100, -1))
            record["in_reply_to"] = None
        elif reason == R.MISSING_SCORE:
            record["kind"] = rng.choice(("rating", "nps"))
            record["score"] = None
        elif reason == R.MISSING_STATUS:
            record["kind"], record["status"] = "idea_status", None
        elif reason == R.UNEXPECTED_STATUS:
            record["kind"], record["status"] = rng.choice(("response", "case_closed")), rng.choice(IDEA_STATUSES)
        elif reason == R.NEGATIVE_AMOUNT:
            record["amount"] = -record["amount"] if record["amount"] else Decimal("-1.00")
        elif reason == R.NEGATIVE_QUANTITY:
            record["quantity"] = -rng.randint(1, 3)
        elif reason == R.FUTURE_EVENT_TIME:
            record["occurred_at"] = now_ms + 3650 * 86_400_000 + rng.randrange(86_400_000)  # a clock 10 years ahead
        elif reason == R.UNKNOWN_ENUM:
            record["channel"] = rng.choice(BAD_CHANNELS)
        elif reason == R.UNSUPPORTED_CURRENCY:
            record["currency"] = rng.choice([x for x in OTHER_CURRENCIES if x != self.currency])
        elif reason == R.INVALID_FIELD:
            own_flaw = {"purchase": "quantity", "response": "in_reply_to"}.get(event_type, "event_id")
            flaw = rng.choice(("event_id", "product_id", "seconds", own_flaw))
            if flaw == "seconds":
                record["occurred_at"] = now_ms // 1000  # epoch seconds instead of milliseconds
            elif flaw == "quantity":
                record["quantity"] = 0
            else:
                record[flaw] = ""
        else:  # pragma: no cover - every decode reason is handled above
            raise AssertionError(reason)
        return self._message(INVALID, reason, event_type, schema_id, record, **kw)


R_MIN_MS = 946_684_800_000 + 86_400_000  # keep late events after 2000-01-02 (validation rejects earlier)


def generate_events(settings: Any, options: GeneratorOptions | None = None, **kwargs: Any) -> Iterator[GeneratedMessage]:
    """The deterministic message sequence. ``generate_events(settings, count=1000, seed=7, start_ms=...)``.

    Keyword arguments are :class:`GeneratorOptions` fields. Stops after ``count`` messages or when event
    time has advanced ``duration_s``; runs forever when neither is given.
    """
    opt = options or GeneratorOptions(**kwargs)
    sim = Simulation(settings, opt)  # fills opt.start_ms when None
    end_ms = opt.start_ms + opt.duration_s * 1000 if opt.duration_s is not None else math.inf
    count = opt.count if opt.count is not None else math.inf
    produced = 0
    while produced < count and sim.t_ms < end_ms:
        yield sim.next_message()
        produced += 1


# ================================================================================================ producing
@dataclass
class ProduceStats:
    sent: int = 0
    acked: int = 0
    failed: int = 0
    by_expected: Counter = field(default_factory=Counter)
    by_type: Counter = field(default_factory=Counter)  # event type of the record inside, every message
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


def make_producer(settings: Any, **overrides: Any):
    from kafka import KafkaProducer

    config = {
        "bootstrap_servers": settings.kafka_bootstrap_servers.split(","),
        "client_id": "copulse-generator",
        "acks": "all",
        "linger_ms": 20,
        "batch_size": 256 * 1024,
        "max_block_ms": 60_000,
    }
    config.update(overrides)
    return KafkaProducer(**config)


def produce(
    settings: Any,
    messages: Iterable[GeneratedMessage],
    *,
    out: str | Path | IO[str] | None = None,
    kafka: bool = True,
    rate: float = 0.0,
    progress: bool = True,
    producer: Any = None,
) -> ProduceStats:
    """Send ``messages`` to Kafka (default murmur2 partitioner on the key) and/or write them to ``out``.

    ``rate`` > 0 paces sending to that many messages per wall-clock second. JSONL lines are written in
    send order once Kafka acknowledged the message (partition/offset from its RecordMetadata); with
    ``kafka=False`` they carry partition/offset null. Flushes at the end; a failed send is written with
    an ``error`` field and counted in ``stats.failed``.
    """
    stats = ProduceStats()
    own_file = False
    fh: IO[str] | None
    if out is None:
        fh = None
    elif isinstance(out, (str, Path)):
        fh = open(out, "w", encoding="utf-8", buffering=1 << 20)
        own_file = True
    else:
        fh = out
    own_producer = False
    if kafka and producer is None:
        producer = make_producer(settings)
        own_producer = True
    pending: deque = deque()
    started = time.monotonic()
    next_report = started + 1.0
    last_sent = 0

    def write_done(block: bool) -> None:
        while pending:
            msg, future = pending[0]
            if not future.is_done:
                if not block:
                    return
                try:
                    future.get(timeout=120)
                except Exception as exc:  # noqa: BLE001 - recorded in the JSONL line below
                    log.debug("send of message %d failed: %r", msg.seq, exc)
            pending.popleft()
            if future.succeeded():
                meta = future.value
                stats.acked += 1
                if fh is not None:
                    fh.write(msg.json_line(meta.partition, meta.offset) + "\n")
            else:
                stats.failed += 1
                if fh is not None:
                    fh.write(msg.json_line(None, None, error=repr(future.exception)) + "\n")

    try:
        for msg in messages:
            if rate > 0:
                due = started + stats.sent / rate
                delay = due - time.monotonic()
                if delay > 0.001:
                    time.sleep(delay)
            if kafka:
                future = producer.send(msg.topic, key=msg.key, value=msg.value)
                pending.append((msg, future))
                if len(pending) >= 2000:
                    write_done(block=len(pending) >= 200_000)
            elif fh is not None:
                fh.write(msg.json_line(None, None) + "\n")
            stats.sent += 1
            stats.by_expected[msg.expected] += 1
            stats.by_type[msg.type] += 1
            now = time.monotonic()
            if now >= next_report:
                if kafka:
                    write_done(block=False)  # keep the file and the acked count current in slow runs
                if fh is not None:
                    fh.flush()
                if progress:
                    print(
                        f"copulse generate: sent {stats.sent} ({stats.sent - last_sent:.0f}/s last second, "
                        f"{stats.sent / (now - started):.0f}/s average) acked {stats.acked} "
                        + " ".join(f"{k}={v}" for k, v in sorted(stats.by_expected.items())),
                        file=sys.stderr,
                        flush=True,
                    )
                last_sent = stats.sent
                next_report = now + 1.0
    finally:
        if kafka and producer is not None:
            producer.flush()
            write_done(block=True)
            if own_producer:
                producer.close()
        if fh is not None:
            fh.flush()
            if own_file:
                fh.close()
        stats.seconds = time.monotonic() - started
    return stats


# ================================================================================================ CLI
def parse_start(text: str | None) -> int:
    """ISO-8601 (naive = UTC) -> epoch ms; None -> now (wall clock, whole milliseconds)."""
    if text is None:
        return int(time.time() * 1000)
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _fraction(text: str) -> float:
    """'0.01' or '1/360' -> a positive float (argparse type)."""
    try:
        value = float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or a fraction such as 1/360") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def add_arguments(parser) -> None:
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--count", type=int, help="messages to send in total (valid + duplicate + late + invalid)")
    size.add_argument("--duration", type=float, metavar="SECONDS", help="stop when event time advanced this far")
    parser.add_argument("--rate", type=float, default=100.0, help="messages per wall-clock second; 0 = as fast as possible (default 100)")
    parser.add_argument("--event-time-rate", type=float, help="events per second of event time (default: --rate, or 100 if --rate is 0)")
    parser.add_argument("--consumers", type=int, default=1000, help="simulated consumers (default 1000)")
    parser.add_argument("--seed", type=int, default=1, help="random seed; same seed + same --start = same messages (default 1)")
    parser.add_argument("--start", help="event time of the first event, ISO-8601 UTC (default: now)")
    parser.add_argument("--out-of-order-seconds", type=float, default=0.0, help="max event-time jitter of on-time events (capped at the allowed lateness)")
    parser.add_argument("--late-fraction", type=float, default=0.0, help="share of events older than the allowed lateness")
    parser.add_argument("--duplicate-fraction", type=float, default=0.0, help="share of byte-identical re-sends")
    parser.add_argument("--invalid-fraction", type=float, default=0.0, help="share of invalid messages (random reason each)")
    parser.add_argument("--enterprise-time-scale", type=_fraction, default=1.0, metavar="F",
                        help="enterprise delays (responses, idea funnel: hours to weeks) x F; 1/360 turns an hour into 10 s (default 1)")
    parser.add_argument("--out", metavar="FILE.jsonl", help="write every message sent, with partition, offset and expectation")
    parser.add_argument("--no-kafka", action="store_true", help="do not produce, only write --out")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def run(args, settings) -> int:
    if args.no_kafka and not args.out:
        print("copulse generate: --no-kafka needs --out FILE.jsonl", file=sys.stderr)
        return 2
    if args.no_kafka and args.count is None and args.duration is None:
        print("copulse generate: --no-kafka needs --count or --duration (the file would grow forever)", file=sys.stderr)
        return 2
    if args.rate < 0:
        print("copulse generate: --rate must be >= 0", file=sys.stderr)
        return 2
    try:
        start_ms = parse_start(args.start)
    except ValueError as exc:
        print(f"copulse generate: bad --start ({exc}); write e.g. 2024-05-01T12:00:00Z", file=sys.stderr)
        return 2
    event_time_rate = args.event_time_rate or (args.rate if args.rate > 0 else 100.0)
    if args.out_of_order_seconds > settings.allowed_lateness_seconds:
        log.warning(
            "--out-of-order-seconds %.1f exceeds the allowed lateness (%d s): capped so on-time events stay on time",
            args.out_of_order_seconds,
            settings.allowed_lateness_seconds,
        )
    options = GeneratorOptions(
        count=args.count,
        duration_s=args.duration,
        consumers=args.consumers,
        seed=args.seed,
        start_ms=start_ms,
        event_time_rate=event_time_rate,
        out_of_order_s=args.out_of_order_seconds,
        late_fraction=args.late_fraction,
        duplicate_fraction=args.duplicate_fraction,
        invalid_fraction=args.invalid_fraction,
        enterprise_time_scale=args.enterprise_time_scale,
    )
    _warn_future(options, args.rate, settings)
    try:
        if not args.no_kafka:
            from streams.topics import ensure_topics

            ensure_topics(settings)  # idempotent; a missing topic would otherwise block every send
        messages = generate_events(settings, options)
        stats = produce(settings, messages, out=args.out, kafka=not args.no_kafka, rate=args.rate, progress=not args.quiet)
    except ValueError as exc:
        print(f"copulse generate: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("copulse generate: interrupted (everything sent so far was flushed and recorded)", file=sys.stderr)
        return 130
    except Exception as exc:
        if type(exc).__module__.startswith("kafka"):
            print(
                f"copulse generate: Kafka at {settings.kafka_bootstrap_servers} failed ({type(exc).__name__}: {exc}); "
                "is it running (`make up`)?",
                file=sys.stderr,
            )
            return 1
        raise
    print(
        f"copulse generate: {stats.sent} messages in {stats.seconds:.1f} s ({stats.rate:.0f}/s), "
        f"acked {stats.acked}, failed {stats.failed}: "
        + ", ".join(f"{k} {v}" for k, v in sorted(stats.by_expected.items()))
        + "; by type: " + ", ".join(f"{t} {stats.by_type[t]}" for t in EVENT_TYPES),
        file=sys.stderr,
    )
    return 1 if stats.failed else 0


def _warn_future(options: GeneratorOptions, rate: float, settings: Any) -> None:
    """Event time racing ahead of the wall clock would make valid events future_event_time dead letters."""
    if options.count is not None:
        span_s = options.count / options.event_time_rate
    elif options.duration_s is not None:
        span_s = options.duration_s
    else:
        span_s = math.inf
    wall_s = span_s * options.event_time_rate / rate if rate > 0 else 0.0
    ahead_s = (options.start_ms / 1000 + span_s) - (time.time() + wall_s)
    if ahead_s > settings.max_future_skew_seconds:
        log.warning(
            "event time will run up to %.0f s ahead of the wall clock (allowed skew %d s): late in the run, "
            "valid events would be dead-lettered as future_event_time. Use an earlier --start, a lower "
            "--event-time-rate or pace with --rate.",
            ahead_s,
            settings.max_future_skew_seconds,
        )
