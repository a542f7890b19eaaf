"""Event-time watermarks of one partition index (the same partition number of every source topic).

Each source partition (topic, p) has its own clock: the highest event time folded so far and the highest
offset applied. Its watermark is ``max_ts - allowed_lateness``.

* An event is **late** when the end of its finest-granularity window is at or before the watermark of its
  *own* source partition. That decision depends only on what came before it in the same Kafka partition,
  so it is identical on every replay.
* A window of partition index p **closes** when the combined watermark passes its end. The combined
  watermark is the minimum over the active source partitions (one that has delivered nothing yet counts
  as active with no watermark); a source partition with no event for ``idle_timeout`` seconds of wall
  clock *while the worker is consuming and has read it to its end* is idle and no longer holds it back
  (``hold``: a backlog in Kafka keeps it active; ``pause``: time not spent consuming does not count).
  When every source is idle the
  combined watermark advances with the wall clock, so quiet streams still close their windows.
  The combined watermark never goes backwards.

Because min(active) <= own watermark, an on-time event can never find its window closed — except after
idleness, which is the one case where an event is late because its window already closed (``window_closed``).
``Watermarks.lateness`` makes both decisions; the engine only asks.
"""

from __future__ import annotations

from dataclasses import dataclass

NEG_INF = -(2**62)

LATE, WINDOW_CLOSED = "late", "window_closed"  # the two ways an event can be too late (see above)


@dataclass(slots=True)
class SourceClock:
    offset: int = -1  # highest source offset whose effects are fully persisted/applied
    max_ts: int = NEG_INF  # highest event time (ms) folded from this source partition
    last_seen: float | None = None  # wall clock (s) of the last event; not persisted

    def watermark(self, lateness_ms: int) -> int:
        return self.max_ts - lateness_ms if self.max_ts != NEG_INF else NEG_INF


class Watermarks:
    def __init__(self, window_sizes_ms: list[int], lateness_ms: int, idle_timeout_s: float,
                 sources: tuple[str, ...] = ()) -> None:
        self.window_sizes_ms = sorted(window_sizes_ms)
        self.lateness_ms = lateness_ms
        self.idle_timeout_s = idle_timeout_s
        # Every expected source starts active: one that has delivered nothing yet holds the watermark
        # back until it has been silent for the idle timeout (its data may simply not be fetched yet).
        self.sources: dict[str, SourceClock] = {s: SourceClock() for s in sources}
        self.combined_watermark = NEG_INF

    def clock(self, topic: str) -> SourceClock:
        clock = self.sources.get(topic)
        if clock is None:
            clock = self.sources[topic] = SourceClock()
        return clock

    def own_watermark(self, topic: str) -> int:
        return self.clock(topic).watermark(self.lateness_ms)

    def lateness(self, clock: SourceClock, ts: int) -> str | None:
        """None for an event (of ``clock``'s source partition, event time ``ts``) that is on time; LATE when its
        finest window ends at or before its own source partition's watermark; WINDOW_CLOSED when one of its
        windows has already closed by the combined watermark (only possible after idleness)."""
        finest = self.window_sizes_ms[0]
        if ts - ts % finest + finest <= clock.watermark(self.lateness_ms):
            return LATE
        combined = self.combined_watermark
        for g in self.window_sizes_ms:
            if ts - ts % g + g <= combined:
                return WINDOW_CLOSED
        return None

    def observe(self, topic: str, offset: int, ts: int, now: float) -> None:
        clock = self.clock(topic)
        clock.offset = max(clock.offset, offset)
        if ts > clock.max_ts:
            clock.max_ts = ts
        clock.last_seen = now

    def progress(self, topic: str, offset: int, now: float) -> None:
        """A message that is not folded (dead letter, late) still counts as activity and progress."""
        clock = self.clock(topic)
        clock.offset = max(clock.offset, offset)
        clock.last_seen = now

    def hold(self, topic: str, now: float) -> None:
        """This source partition still has messages waiting in Kafka (the consumer has not reached its end):
        it is not idle, whatever the wall clock says, and keeps holding the watermark."""
        self.clock(topic).last_seen = now

    def pause(self, seconds: float) -> None:
        """The worker did not consume for ``seconds`` (a blocked store, the broker away): idle timers stop
        meanwhile, so nobody's silence is mistaken for idleness."""
        for clock in self.sources.values():
            if clock.last_seen is not None:
                clock.last_seen += seconds

    def advance(self, now: float) -> int:
        """Recompute the combined watermark at wall-clock time ``now``; returns it."""
        active: list[int] = []
        idle: list[tuple[int, float]] = []
        for clock in self.sources.values():
            if clock.last_seen is None:  # new or restored from the changelog: the idle clock starts now
                clock.last_seen = now
            wm = clock.watermark(self.lateness_ms)
            if now - clock.last_seen < self.idle_timeout_s:
                active.append(wm)
            elif clock.max_ts != NEG_INF:
                idle.append((wm, clock.last_seen))
        if active:
            candidate = min(active)
        elif idle:
            wm, last_seen = max(idle)
            newest_seen = max(seen for _, seen in idle)
            candidate = wm + int((now - newest_seen - self.idle_timeout_s) * 1000)
        else:
            candidate = NEG_INF
        if candidate > self.combined_watermark:
            self.combined_watermark = candidate
        return self.combined_watermark
