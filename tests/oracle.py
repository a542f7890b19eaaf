"""Independent oracle: exact expected final KPIs from the full list of messages that were sent.

Written plainly from the KPI definitions in docs/kpis.md, on purpose sharing no code with streams/engine.py.
Input messages are dicts with ``type``, ``partition``, ``offset`` and ``event`` (the event's fields, with
``occurred_ms``, ``amount_minor`` for purchases and the type's own fields) — valid messages only; dead
letters are not the oracle's business.

Rules it applies (the documented window semantics):
* per source partition (type, partition), in offset order: an event is late when the end of its finest
  window is <= (highest event time seen before it in that source partition) - allowed lateness;
* a non-late event whose event_id was already folded is a duplicate;
* everything else is folded into every granularity and every slice it belongs to;
* enterprise events (type ``response``: what the company did about feedback) follow the same late and duplicate
  rules in their own source partitions and count in the window of their own event time, in the enterprise
  counters only: they are nobody's consumer activity (not in ``events``, never making a consumer active).
"""

from __future__ import annotations

from collections import defaultdict

#: the event types (written here again on purpose: the oracle shares no code with the worker)
CONSUMER_ACTIVITY = ("purchase", "usage", "feedback")
ENTERPRISE = ("response",)
#: feedback the company answers (docs/feedback-loop.md "Answerable feedback")
ANSWERABLE = {"survey_response", "rating", "nps", "review", "bug_report", "idea"}
IDEA_STATUSES = ("under_review", "planned", "in_progress", "shipped", "declined")


def unhappy(ev: dict) -> bool:
    """docs/feedback-loop.md: nps or survey_response scored 0-6, rating or review scored 1-2."""
    score = ev.get("score")
    if score is None:
        return False
    return score <= 6 if ev["kind"] in ("nps", "survey_response") else ev["kind"] in ("rating", "review") and score <= 2


def slice_values(event: dict, dims: tuple[str, ...]):
    values = []
    for dim in dims:
        if dim == "segment":
            values.append(event.get("segment") or "unknown")
        elif dim == "feature":
            feature = event.get("feature") if event["type"] == "usage" else None
            if feature is None:
                return None
            values.append(feature)
        else:
            values.append(event[dim])
    return tuple(values)


def classify(messages: list[dict], lateness_ms: int, finest_ms: int) -> tuple[list[dict], list[dict], list[dict]]:
    """Split valid messages into (folded, late, duplicate) events."""
    by_source = defaultdict(list)
    for msg in messages:
        if msg["type"] in CONSUMER_ACTIVITY + ENTERPRISE:
            by_source[(msg["type"], msg["partition"])].append(msg)
    folded, late, dupes = [], [], []
    for msgs in by_source.values():
        max_ts = None
        seen_ids = set()
        for msg in sorted(msgs, key=lambda m: m["offset"]):
            ev = dict(msg["event"], type=msg["type"])
            ts = ev["occurred_ms"]
            window_end = ts - ts % finest_ms + finest_ms
            if max_ts is not None and window_end <= max_ts - lateness_ms:
                late.append(ev)
                continue
            if ev["event_id"] in seen_ids:
                dupes.append(ev)
            else:
                seen_ids.add(ev["event_id"])
                folded.append(ev)
            max_ts = ts if max_ts is None else max(max_ts, ts)
    return folded, late, dupes


def expected_kpis(messages: list[dict], granularities_s: list[int], slices: list[tuple[str, tuple[str, ...]]],
                  lateness_s: int) -> dict[tuple, dict[str, int]]:
    """(granularity_seconds, window_start_ms, slice, values) -> {counter: value}."""
    grans = sorted(g * 1000 for g in granularities_s)
    folded, _, _ = classify(messages, lateness_s * 1000, grans[0])
    first_purchase: dict[str, int] = {}
    for ev in folded:
        if ev["type"] == "purchase":
            first_purchase[ev["consumer_id"]] = min(first_purchase.get(ev["consumer_id"], ev["occurred_ms"]), ev["occurred_ms"])
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for ev in folded:
        for g in grans:
            ws = ev["occurred_ms"] // g * g
            for name, dims in slices:
                values = slice_values(ev, dims)
                if values is not None:
                    groups[(g // 1000, ws, name, values)].append(ev)
    result = {}
    for key, evs in groups.items():
        ws = key[1]
        company = [e for e in evs if e["type"] in ENTERPRISE]
        evs = [e for e in evs if e["type"] in CONSUMER_ACTIVITY]
        fb = [e for e in evs if e["type"] == "feedback"]
        us = [e for e in evs if e["type"] == "usage"]
        pu = [e for e in evs if e["type"] == "purchase"]
        ratings = [e["score"] for e in fb if e["kind"] == "rating"]
        nps = [e["score"] for e in fb if e["kind"] == "nps"]
        cocreating = [e for e in fb if e["kind"] != "survey_invited"] + [e for e in us if e["co_creation"]]
        purchasers = {e["consumer_id"] for e in pu}
        timed = [e for e in us if e["action"] == "session_end" and e.get("duration_ms") is not None]
        result[key] = {
            "events": len(evs),
            "active_consumers": len({e["consumer_id"] for e in evs}),
            "participating_consumers": len({e["consumer_id"] for e in cocreating}),
            "co_creation_actions": len(cocreating),
            "ideas_submitted": sum(e["kind"] == "idea" for e in fb),
            "ratings": len(ratings),
            "rating_sum": sum(ratings),
            "ratings_satisfied": sum(s >= 4 for s in ratings),
            "nps_responses": len(nps),
            "nps_promoters": sum(s >= 9 for s in nps),
            "nps_detractors": sum(s <= 6 for s in nps),
            "surveys_invited": sum(e["kind"] == "survey_invited" for e in fb),
            "survey_responses": sum(e["kind"] == "survey_response" for e in fb),
            "orders": len({(e["consumer_id"], e["order_id"]) for e in pu}),
            "revenue_minor": sum(e["amount_minor"] for e in pu),
            "purchasers": len(purchasers),
            "returning_purchasers": sum(first_purchase[c] < ws for c in purchasers),
            "sessions": sum(e["action"] == "session_start" for e in us),
            "sessions_timed": len(timed),
            "session_ms": sum(e["duration_ms"] for e in timed),
            "feature_uses": sum(e["action"] == "feature_use" for e in us),
            "feature_users": len({e["consumer_id"] for e in us if e["action"] == "feature_use"}),
            "answerable_feedback": sum(e["kind"] in ANSWERABLE for e in fb),
            "follow_up_feedback": sum(e["kind"] == "bug_report" or unhappy(e) for e in fb),
            "enterprise_events": len(company),
            "answers_sent": sum(e["kind"] in ("response", "case_closed") for e in company),
            "cases_closed": sum(e["kind"] == "case_closed" for e in company),
            **{f"ideas_{status}": sum(e["kind"] == "idea_status" and e["status"] == status for e in company)
               for status in IDEA_STATUSES},
        }
    return result
