"""A hand-made feedback and enterprise history for the feedback-loop views (docs/feedback-loop.md): every edge
rule once, with figures worked out by hand in tests/test_feedback_loop.py. tests/test_views.py stores it too, so
that every view and documented query has rows on its fixture.

Weeks of March 2024 (UTC): Mon 03-04 .. Sun 03-10 and Mon 03-11 .. The newest event (the as-of time) is the
survey invitation of 2024-03-14 12:00:00.000.
"""

from __future__ import annotations

import datetime as dt

from streams.batch import RawEvent
from streams.events import Event

UTC = dt.timezone.utc
AS_OF = dt.datetime(2024, 3, 14, 12, tzinfo=UTC)


def _moment(when: str) -> tuple[dt.datetime, int]:
    moment = dt.datetime.fromisoformat(when).replace(tzinfo=UTC)
    return moment, int(moment.timestamp() * 1000)


def feedback_event(event_id: str, consumer: str, when: str, kind: str, score: int | None = None,
                   in_reply_to: str | None = None) -> RawEvent:
    """A stored feedback event (``when``: ISO time in UTC, milliseconds allowed)."""
    moment, ms = _moment(when)
    record = {"occurred_at": moment, "schema_version": 1, "kind": kind, "score": score, "text": None,
              "in_reply_to": in_reply_to}  # fmt: skip
    return RawEvent(Event("feedback", event_id, consumer, ms, "web", "DE", None, "AUD-001", "audio", 301, record), 0, 0)


def response_event(event_id: str, consumer: str, when: str, kind: str, in_reply_to: str,
                   status: str | None = None) -> RawEvent:
    """A stored enterprise event replying to ``in_reply_to``."""
    moment, ms = _moment(when)
    record = {"occurred_at": moment, "schema_version": 1, "kind": kind, "in_reply_to": in_reply_to,
              "team": "product" if kind == "idea_status" else "support", "status": status, "text": None}  # fmt: skip
    return RawEvent(Event("response", event_id, consumer, ms, "web", "DE", None, "AUD-001", "audio", 401, record), 0, 0)


def hand_made_history() -> list[RawEvent]:
    f, r = feedback_event, response_event
    return [
        # detractors answered exactly 48 h after (followed up in time) and 48 h + 1 ms after (too late)
        f("f1", "a", "2024-03-04T10:00:00", "nps", 3),
        r("r1", "a", "2024-03-06T10:00:00", "response", "f1"),
        r("r1-closed", "a", "2024-03-07T10:00:00", "case_closed", "f1"),
        f("f2", "b", "2024-03-04T12:00:00", "rating", 2),
        r("r2", "b", "2024-03-06T12:00:00.001", "response", "f2"),
        # a response dated an hour before its feedback: delay 0, counted as an anomaly
        f("f3", "c", "2024-03-05T08:00:00", "review", 5),
        r("r3", "c", "2024-03-05T07:00:00", "response", "f3"),
        # a bug report nobody answers
        f("f4", "d", "2024-03-05T09:00:00", "bug_report"),
        # detractors exactly 48 h before the as-of time (matured) and 1 ms younger (still maturing), unanswered
        f("f5", "e", "2024-03-12T12:00:00", "survey_response", 6),
        f("f6", "f", "2024-03-12T12:00:00.001", "nps", 0),
        # enterprise events that count in no figure
        f("f7", "z", "2024-03-08T09:00:00", "survey_invited"),
        r("r7", "z", "2024-03-09T09:00:00", "response", "f7"),  # not_answerable
        r("r-gone", "y", "2024-03-09T10:00:00", "response", "gone"),  # unknown_feedback
        r("s-gone", "y", "2024-03-09T11:00:00", "idea_status", "gone-idea", "planned"),  # unknown_feedback
        r("s-f3", "c", "2024-03-09T12:00:00", "idea_status", "f3", "under_review"),  # not_an_idea
        # i1: reviewed, planned, then declined
        f("i1", "g", "2024-03-04T09:00:00", "idea"),
        r("i1-review", "g", "2024-03-05T09:00:00", "idea_status", "i1", "under_review"),
        r("i1-plan", "g", "2024-03-08T09:00:00", "idea_status", "i1", "planned"),
        r("i1-decline", "g", "2024-03-10T09:00:00", "idea_status", "i1", "declined"),
        # i2: shipped 8 days after submission; in_progress and shipped at the same time: shipped is current;
        # votes: a twice, b, and h (its submitter)
        f("i2", "h", "2024-03-04T11:00:00", "idea"),
        r("i2-review", "h", "2024-03-05T10:00:00", "idea_status", "i2", "under_review"),
        r("i2-plan", "h", "2024-03-07T10:00:00", "idea_status", "i2", "planned"),
        r("i2-start", "h", "2024-03-09T10:00:00", "idea_status", "i2", "in_progress"),
        r("i2-start-again", "h", "2024-03-12T11:00:00", "idea_status", "i2", "in_progress"),
        r("i2-ship", "h", "2024-03-12T11:00:00", "idea_status", "i2", "shipped"),
        f("v1", "a", "2024-03-05T10:00:00", "vote", in_reply_to="i2"),
        f("v2", "a", "2024-03-06T10:00:00", "vote", in_reply_to="i2"),
        f("v3", "b", "2024-03-06T11:00:00", "vote", in_reply_to="i2"),
        f("v4", "h", "2024-03-06T12:00:00", "vote", in_reply_to="i2"),
        # i4: shipped 7 days after submission and declined at the same time: declined is current, shipped reached
        f("i4", "k", "2024-03-06T10:00:00", "idea"),
        r("i4-review", "k", "2024-03-07T10:00:00", "idea_status", "i4", "under_review"),
        r("i4-ship", "k", "2024-03-13T10:00:00", "idea_status", "i4", "shipped"),
        r("i4-decline", "k", "2024-03-13T10:00:00", "idea_status", "i4", "declined"),
        # i3: waiting, one vote
        f("i3", "g", "2024-03-11T10:00:00", "idea"),
        f("v5", "a", "2024-03-12T10:00:00", "vote", in_reply_to="i3"),
        # the newest stored event: the as-of time
        f("f8", "z", "2024-03-14T12:00:00", "survey_invited"),
    ]
