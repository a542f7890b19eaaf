"""The enterprise side of ``copulse generate``: how a company answers the feedback its consumers give.

:class:`Enterprise` hears every valid feedback event the simulation sends and schedules, in event time, what
the company does about it (topic ``copulse.responses``, keyed by the consumer the feedback came from):

* **response** -- an answer to a feedback event. Detractors (NPS or survey 0-6, ratings and reviews 1-2) and
  bug reports are answered more often and faster than the rest; some feedback is never answered. Response
  times are log-normal: a median of hours and a long tail of days.
* **case_closed** -- most answered detractor and bug-report follow-ups are closed later (``in_reply_to`` is the
  original feedback).
* **idea_status** -- the idea funnel: most ideas are reviewed (``under_review``), then decided by their votes:
  ideas with many votes are ``planned``, go ``in_progress`` and are mostly ``shipped``; most others are
  ``declined`` or simply stay waiting.

Delays are realistic at ``time_scale`` 1 (hours to weeks) and multiplied by it: ``1/360`` turns an hour into 10 s
of event time, for demos and tests whose event time spans minutes. A follow-up is emitted at the first tick of the
simulation at or after its due time (so it is on time like every other event). Everything is drawn from the
simulation's seeded RNG: the same seed gives the same enterprise.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

# the kinds the company answers at all (invitations and votes get no answer; ideas also get the funnel) and who
# is unhappy: the worker's rules (streams/kpis.py), so the generator simulates what the KPIs count
from streams.kpis import ANSWERABLE_KINDS, is_detractor

HOUR_MS = 3_600_000

#: kind of follow-up -> (median delay in hours at time scale 1, log-normal sigma: the long tail)
DELAYS_H: dict[str, tuple[float, float]] = {
    "bug_report": (3.0, 1.2),  # quality answers bug reports first
    "detractor": (4.0, 1.3),  # support calls back unhappy consumers
    "other": (30.0, 1.1),  # thanks for a review, a good rating, an idea
    "case_closed": (24.0, 1.0),  # after the response
    "review": (72.0, 0.8),  # an idea is looked at
    "decision": (7 * 24.0, 0.7),  # planned or declined, by the votes gathered until then
    "start": (14 * 24.0, 0.6),  # planned -> in_progress
    "ship": (21 * 24.0, 0.6),  # in_progress -> shipped (or, rarely, declined)
}
#: share of answered feedback
ANSWER_RATE = {"bug_report": 0.85, "detractor": 0.75, "other": 0.25}
CLOSE_RATE = 0.8  # answered detractor / bug-report follow-ups that are closed
REVIEW_RATE = 0.65  # ideas that ever get under_review; the rest wait
DECLINE_UNPLANNED = 0.6  # reviewed ideas not planned: declined (else they keep waiting)
SHIP_RATE = 0.9  # started ideas that ship
#: how many scheduled follow-ups are kept (an endless realistic run); beyond it feedback stays unanswered
MAX_SCHEDULED = 200_000

TEAMS = {"bug_report": "quality", "detractor": "support", "other": "community", "idea": "product"}
RESPONSE_TEXTS = {
    "bug_report": ("Thanks, we reproduced it; a fix is on its way.", "Fixed in the next update, sorry!"),
    "detractor": ("Sorry to hear that; we called you to sort it out.", "We refunded the delivery fee."),
    "other": ("Thanks for your feedback!", "Glad you like it.", "Thanks, we passed it on to the product team."),
}  # fmt: skip
WAITING_TEXT = "Thanks for the idea; it is not planned for now and stays on our list."


def plan_probability(votes: int) -> float:
    """Votes drive shipping: the chance that a reviewed idea with ``votes`` votes is planned."""
    return min(0.85, 0.05 + 0.12 * votes)


def follow_up_class(feedback: dict) -> str:
    """'bug_report' | 'detractor' | 'other': who answers, how often and how fast."""
    if feedback["kind"] == "bug_report":
        return "bug_report"
    return "detractor" if is_detractor(feedback["kind"], feedback.get("score")) else "other"


@dataclass(slots=True)
class _Idea:
    feedback: dict  # the idea event's fields
    votes: int = 0


class Enterprise:
    """Schedules and emits the company's follow-ups of the feedback it hears (see the module docstring)."""

    def __init__(self, rng: random.Random, new_id: Callable[[], str], time_scale: float = 1.0) -> None:
        if time_scale <= 0:
            raise ValueError("--enterprise-time-scale must be > 0")
        self.rng = rng
        self.new_id = new_id
        self.time_scale = time_scale
        self.scheduled: list[tuple[int, int, str, dict, str | None]] = []  # (due ms, tie, kind, feedback, status)
        self._tie = 0
        self.ideas: dict[str, _Idea] = {}  # ideas waiting for their decision, by event_id
        self.last_feedback: dict[str, dict] = {}  # consumer_id -> its latest answerable feedback

    # ------------------------------------------------------------------------------------ hearing
    def heard(self, feedback: dict) -> None:
        """A valid feedback event was sent (``feedback``: its record, occurred_at in epoch ms)."""
        kind = feedback["kind"]
        if kind == "vote":
            idea = self.ideas.get(feedback.get("in_reply_to") or "")
            if idea is not None:
                idea.votes += 1
            return
        if kind not in ANSWERABLE_KINDS:
            return
        self.last_feedback[feedback["consumer_id"]] = feedback
        at = feedback["occurred_at"]
        if kind == "idea":
            if self.rng.random() < REVIEW_RATE and self._schedule(at, "review", "idea_status", feedback, "under_review"):
                self.ideas[feedback["event_id"]] = _Idea(feedback)  # its votes count until it is decided
            return
        cls = follow_up_class(feedback)
        if self.rng.random() < ANSWER_RATE[cls]:
            self._schedule(at, cls, "response", feedback)

    def _schedule(self, after_ms: int, delay: str, kind: str, feedback: dict, status: str | None = None) -> bool:
        """Schedule a follow-up ``delay`` (a DELAYS_H key) after ``after_ms``; False when the schedule is full."""
        if len(self.scheduled) >= MAX_SCHEDULED:
            return False
        median_h, sigma = DELAYS_H[delay]
        delay_ms = median_h * HOUR_MS * self.time_scale * math.exp(sigma * self.rng.gauss(0.0, 1.0))
        self._tie += 1
        heapq.heappush(self.scheduled, (after_ms + max(1, int(delay_ms)), self._tie, kind, feedback, status))
        return True

    # ----------------------------------------------------------------------------------- emitting
    def due(self, now_ms: int) -> dict | None:
        """The record of the next follow-up due at ``now_ms`` (emitted at ``now_ms``), or None."""
        if not self.scheduled or self.scheduled[0][0] > now_ms:
            return None
        _, _, kind, feedback, status = heapq.heappop(self.scheduled)
        if kind == "response":
            cls = follow_up_class(feedback)
            if cls != "other" and self.rng.random() < CLOSE_RATE:
                self._schedule(now_ms, "case_closed", "case_closed", feedback)
            return self.record(feedback, now_ms, "response", TEAMS[cls], text=self.rng.choice(RESPONSE_TEXTS[cls]))
        if kind == "case_closed":
            return self.record(feedback, now_ms, "case_closed", TEAMS[follow_up_class(feedback)])
        return self._idea_status(feedback, now_ms, status)

    def _idea_status(self, idea_event: dict, now_ms: int, status: str) -> dict:
        """Emit ``status`` for the idea and schedule its next step (the decision uses the votes so far)."""
        idea_id = idea_event["event_id"]
        if status == "under_review":
            self._schedule(now_ms, "decision", "idea_status", idea_event, "decide")
        elif status == "decide":
            idea = self.ideas.pop(idea_id, None)
            if self.rng.random() < plan_probability(idea.votes if idea is not None else 0):
                status = "planned"
                self._schedule(now_ms, "start", "idea_status", idea_event, "in_progress")
            elif self.rng.random() < DECLINE_UNPLANNED:
                status = "declined"
            else:  # it keeps waiting under review: the consumer is told so, and nothing more happens to it
                return self.record(idea_event, now_ms, "response", TEAMS["idea"], text=WAITING_TEXT)
        elif status == "in_progress":
            self._schedule(now_ms, "ship", "idea_status", idea_event, "ship")
        elif status == "ship":
            status = "shipped" if self.rng.random() < SHIP_RATE else "declined"
        return self.record(idea_event, now_ms, "idea_status", TEAMS["idea"], status=status)

    def record(self, feedback: dict, at_ms: int, kind: str, team: str, *, status: str | None = None,
               text: str | None = None, channel: str | None = None) -> dict:
        """A ResponseEvent record about ``feedback``: keyed by its consumer, with its product and dimensions."""
        if channel is None:
            channel = "call_center" if kind != "idea_status" and team == "support" and self.rng.random() < 0.4 \
                else feedback["channel"]
        return {
            "event_id": self.new_id(),
            "consumer_id": feedback["consumer_id"],
            "occurred_at": at_ms,
            "channel": channel,
            "region": feedback["region"],
            "segment": feedback["segment"],
            "schema_version": 1,
            "kind": kind,
            "in_reply_to": feedback["event_id"],
            "team": team,
            "status": status,
            "product_id": feedback["product_id"],
            "category": feedback["category"],
            "text": text,
        }
