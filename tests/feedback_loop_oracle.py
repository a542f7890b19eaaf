"""Independent oracle of the feedback-loop and idea-funnel views (schemas/clickhouse/0008_feedback_loop.sql),
written plainly from the definitions in docs/feedback-loop.md with Python dicts and sorted lists, sharing no code
or SQL with the views (the calendar of periods is the loyalty oracle's).

Input: the events that reached the raw tables, as the generator describes them (``GeneratedMessage.event`` dicts
with ``type``): feedback with ``event_id``, ``consumer_id``, ``occurred_ms``, ``kind``, ``score``,
``in_reply_to``; responses with ``event_id``, ``occurred_ms``, ``kind``, ``in_reply_to``, ``status``. Duplicates
(the same event_id more than once) are allowed: each event counts once.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass

from tests.loyalty_oracle import PERIODS, period_start, utc_day

HOURS_48_MS = 48 * 3_600_000
ANSWERABLE = {"survey_response", "rating", "nps", "review", "bug_report", "idea"}
ANSWERS = {"response", "case_closed"}
#: the funnel, in order; declined is an outcome beside it
STAGES = ("under_review", "planned", "in_progress", "shipped")


def detractor(feedback: dict) -> bool:
    score = feedback.get("score")
    if score is None:
        return False
    if feedback["kind"] in ("nps", "survey_response"):
        return 0 <= score <= 6
    if feedback["kind"] in ("rating", "review"):
        return score <= 2
    return False


def exact_quantile(values: list[int], level: float) -> int:
    """The value at 0-based position floor(level x n) of the n values sorted ascending (the last one for 1)."""
    ordered = sorted(values)
    return ordered[min(int(level * len(ordered)), len(ordered) - 1)]


def seconds(ms: int) -> float:
    return ms / 1000


def ratio(numerator: int, denominator: int) -> float | None:
    return None if denominator == 0 else numerator / denominator


def periods_of(ms: int) -> list[tuple[str, dt.date]]:
    day = utc_day(ms)
    return [(period, period_start(period, day)) for period in PERIODS]


@dataclass
class FeedbackLoopOracle:
    events: list[dict]

    def __post_init__(self) -> None:
        self.feedback: dict[str, dict] = {}
        self.responses: dict[str, dict] = {}
        for event in self.events:
            if event["type"] == "feedback":
                self.feedback[event["event_id"]] = event
            elif event["type"] == "response":
                self.responses[event["event_id"]] = event
        times = [e["occurred_ms"] for e in (*self.feedback.values(), *self.responses.values())]
        self.as_of_ms = max(times) if times else None

    # --- the feedback loop ------------------------------------------------------------------------
    def answers_of(self) -> dict[str, list[int]]:
        """feedback event_id -> event times of the responses / closed cases replying to it."""
        out: dict[str, list[int]] = defaultdict(list)
        for r in self.responses.values():
            if r["kind"] in ANSWERS:
                out[r["in_reply_to"]].append(r["occurred_ms"])
        return out

    def feedback_items(self) -> dict[str, dict]:
        """answerable feedback event_id -> what the views say about it."""
        answers = self.answers_of()
        out = {}
        for event_id, f in self.feedback.items():
            if f["kind"] not in ANSWERABLE:
                continue
            times = answers.get(event_id, [])
            first = min(times) if times else None
            out[event_id] = {
                "occurred_ms": f["occurred_ms"],
                "detractor": detractor(f),
                "bug_report": f["kind"] == "bug_report",
                "answered": first is not None,
                "delay_ms": None if first is None else max(0, first - f["occurred_ms"]),
                "before_feedback": first is not None and first < f["occurred_ms"],
                "age_ms": self.as_of_ms - f["occurred_ms"],
                "matured_48h": self.as_of_ms - f["occurred_ms"] >= HOURS_48_MS,
                "followed_up_48h": first is not None and first - f["occurred_ms"] <= HOURS_48_MS,
            }
        return out

    def feedback_loop(self) -> dict[tuple, dict]:
        """(period, period_start) -> the feedback_loop row."""
        cells: dict[tuple, list[dict]] = defaultdict(list)
        for item in self.feedback_items().values():
            for key in periods_of(item["occurred_ms"]):
                cells[key].append(item)
        as_of = dt.datetime.fromtimestamp(self.as_of_ms // 1000, tz=dt.timezone.utc) if cells else None
        return {key: dict(self._loop_figures(items), as_of=as_of) for key, items in cells.items()}

    def _loop_figures(self, items: list[dict]) -> dict:
        answered = [i for i in items if i["answered"]]
        detractors = [i for i in items if i["detractor"]]
        bugs = [i for i in items if i["bug_report"]]
        matured = [i for i in detractors if i["matured_48h"]]
        followed = [i for i in matured if i["followed_up_48h"]]
        backlog = [i["age_ms"] for i in items if not i["answered"]]
        delays = [i["delay_ms"] for i in answered]
        return {
            "answerable_feedback": len(items),
            "answered_feedback": len(answered),
            "response_rate": ratio(len(answered), len(items)),
            "detractor_feedback": len(detractors),
            "detractors_answered": sum(i["answered"] for i in detractors),
            "detractor_response_rate": ratio(sum(i["answered"] for i in detractors), len(detractors)),
            "bug_reports": len(bugs),
            "bug_reports_answered": sum(i["answered"] for i in bugs),
            "bug_report_response_rate": ratio(sum(i["answered"] for i in bugs), len(bugs)),
            "median_response_seconds": seconds(exact_quantile(delays, 0.5)) if delays else None,
            "p90_response_seconds": seconds(exact_quantile(delays, 0.9)) if delays else None,
            "detractors_matured_48h": len(matured),
            "detractors_followed_up_48h": len(followed),
            "detractor_follow_up_rate_48h": ratio(len(followed), len(matured)),
            "detractors_maturing_48h": len(detractors) - len(matured),
            "backlog": len(backlog),
            "backlog_median_age_seconds": seconds(exact_quantile(backlog, 0.5)) if backlog else None,
            "backlog_oldest_age_seconds": seconds(max(backlog)) if backlog else None,
            "answered_before_feedback": sum(i["before_feedback"] for i in items),
        }

    def backlog(self) -> dict | None:
        """The feedback_loop_backlog row (None when no answerable feedback is stored)."""
        items = list(self.feedback_items().values())
        if not items:
            return None
        open_ = [i for i in items if not i["answered"]]
        ages = [i["age_ms"] for i in open_]
        return {
            "as_of": dt.datetime.fromtimestamp(self.as_of_ms // 1000, tz=dt.timezone.utc),
            "backlog": len(open_),
            "backlog_detractors": sum(i["detractor"] for i in open_),
            "backlog_bug_reports": sum(i["bug_report"] for i in open_),
            "median_age_seconds": seconds(exact_quantile(ages, 0.5)) if ages else None,
            "oldest_age_seconds": seconds(max(ages)) if ages else None,
        }

    def unmatched_responses(self) -> dict[tuple, int]:
        """(period, period_start, kind, reason) -> enterprise events that count in no figure."""
        out: dict[tuple, int] = defaultdict(int)
        for r in self.responses.values():
            target = self.feedback.get(r["in_reply_to"])
            if target is None:
                reason = "unknown_feedback"
            elif r["kind"] == "idea_status":
                reason = None if target["kind"] == "idea" else "not_an_idea"
            else:
                reason = None if target["kind"] in ANSWERABLE else "not_answerable"
            if reason is not None:
                for period, start in periods_of(r["occurred_ms"]):
                    out[(period, start, r["kind"], reason)] += 1
        return dict(out)

    # --- the innovation funnel --------------------------------------------------------------------
    def ideas(self) -> dict[str, dict]:
        """idea event_id -> its funnel facts."""
        changes: dict[str, list[dict]] = defaultdict(list)
        for r in self.responses.values():
            if r["kind"] == "idea_status":
                changes[r["in_reply_to"]].append(r)
        voters: dict[str, set] = defaultdict(set)
        votes: dict[str, int] = defaultdict(int)
        for f in self.feedback.values():
            if f["kind"] == "vote":
                voters[f["in_reply_to"]].add(f["consumer_id"])
                votes[f["in_reply_to"]] += 1
        out = {}
        for idea_id, idea in self.feedback.items():
            if idea["kind"] != "idea":
                continue
            mine = changes.get(idea_id, [])
            reached = {r["status"] for r in mine}
            furthest = max((STAGES.index(s) + 1 for s in reached if s in STAGES), default=0)
            tie_order = {**{s: i for i, s in enumerate(STAGES)}, "declined": len(STAGES)}
            latest = max(mine, key=lambda r: (r["occurred_ms"], tie_order[r["status"]]), default=None)
            shipped_times = [r["occurred_ms"] for r in mine if r["status"] == "shipped"]
            shipped_ms = min(shipped_times) if shipped_times else None
            out[idea_id] = {
                "submitter": idea["consumer_id"],
                "submitted_ms": idea["occurred_ms"],
                "reviewed": bool(mine),
                "furthest": furthest,
                "current_status": latest["status"] if latest else "waiting",
                "shipped_ms": shipped_ms,
                "ship_delay_ms": None if shipped_ms is None else max(0, shipped_ms - idea["occurred_ms"]),
                "status_before_submission": bool(mine) and min(r["occurred_ms"] for r in mine) < idea["occurred_ms"],
                "votes": votes.get(idea_id, 0),
                "voters": len(voters.get(idea_id, set())),
                "supporters": len(voters.get(idea_id, set()) | {idea["consumer_id"]}),
            }
        return out

    def idea_funnel(self) -> dict[tuple, dict]:
        """(period, period_start) of submission -> the idea_funnel row."""
        cells: dict[tuple, list[dict]] = defaultdict(list)
        for idea in self.ideas().values():
            for key in periods_of(idea["submitted_ms"]):
                cells[key].append(idea)
        out = {}
        for key, ideas in cells.items():
            shipped = [i["ship_delay_ms"] for i in ideas if i["shipped_ms"] is not None]
            voters = sum(i["voters"] for i in ideas)
            out[key] = {
                "submitted": len(ideas),
                "reviewed": sum(i["reviewed"] for i in ideas),
                "planned": sum(i["furthest"] >= 2 for i in ideas),
                "in_progress": sum(i["furthest"] >= 3 for i in ideas),
                "shipped": len(shipped),
                "declined": sum(i["current_status"] == "declined" for i in ideas),
                "waiting": sum(not i["reviewed"] for i in ideas),
                "adoption_rate": len(shipped) / len(ideas),
                "median_seconds_to_ship": seconds(exact_quantile(shipped, 0.5)) if shipped else None,
                "p90_seconds_to_ship": seconds(exact_quantile(shipped, 0.9)) if shipped else None,
                "votes": sum(i["votes"] for i in ideas),
                "voters": voters,
                "voters_per_idea": voters / len(ideas),
                "status_before_submission": sum(i["status_before_submission"] for i in ideas),
            }
        return out

    def idea_status_changes(self) -> dict[tuple, dict]:
        """(period, period_start of the change, status) -> status changes of stored ideas and distinct ideas."""
        changes: dict[tuple, int] = defaultdict(int)
        ideas: dict[tuple, set] = defaultdict(set)
        for r in self.responses.values():
            target = self.feedback.get(r["in_reply_to"])
            if r["kind"] != "idea_status" or target is None or target["kind"] != "idea":
                continue
            for period, start in periods_of(r["occurred_ms"]):
                changes[(period, start, r["status"])] += 1
                ideas[(period, start, r["status"])].add(r["in_reply_to"])
        return {key: {"status_changes": n, "ideas": len(ideas[key])} for key, n in changes.items()}

    def ideas_shipped(self) -> dict[str, dict]:
        """idea event_id -> the "you said, we did" row of every idea that was shipped."""
        out = {}
        for idea_id, idea in self.ideas().items():
            if idea["shipped_ms"] is None:
                continue
            out[idea_id] = {
                "submitter": idea["submitter"],
                "shipped_at": dt.datetime.fromtimestamp(idea["shipped_ms"] // 1000, tz=dt.timezone.utc),
                "seconds_to_ship": seconds(idea["ship_delay_ms"]),
                "current_status": idea["current_status"],
                "votes": idea["votes"],
                "voters": idea["voters"],
                "supporters": idea["supporters"],
            }
        return out
