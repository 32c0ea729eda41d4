"""The daemon loop's timers: named tasks with next-due times, and how long the loop may sleep.

The loop blocks in its source's poll until data arrives or the earliest task is
due, then runs what is due. A periodic task keeps its phase (due every
`interval` from its first run, so tasks of related periods share wake-ups
instead of drifting apart); a one-shot task runs once each time it is
scheduled, so a task with nothing to do (no unsaved state, no firing alert)
costs no wake-up at all. Times are monotonic seconds from an injected clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

Action = Callable[[], object]  # what it returns is ignored


@dataclass(slots=True)
class _Task:
    name: str
    action: Action
    interval: float | None  # None: one-shot, runs when scheduled
    due: float | None  # None: not scheduled
    last_run: float | None = None


class Scheduler:
    """Named periodic and one-shot tasks run by the loop that owns them (one thread)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._tasks: dict[str, _Task] = {}

    def every(self, name: str, interval: float, action: Action, first: float = 0.0) -> None:
        """Run `action` every `interval` seconds, the first time `first` seconds from now."""
        if interval <= 0:
            raise ValueError(f"task {name!r}: interval must be greater than 0")
        self._add(_Task(name, action, interval, self.clock() + first))

    def once(self, name: str, action: Action) -> None:
        """Register a one-shot task: it runs when `schedule`d, then waits to be scheduled again."""
        self._add(_Task(name, action, None, None))

    def _add(self, task: _Task) -> None:
        if task.name in self._tasks:
            raise ValueError(f"task {task.name!r} exists already")
        self._tasks[task.name] = task

    def schedule(self, name: str, delay: float = 0.0) -> None:
        """Make the task due `delay` seconds from now, unless it is due sooner already."""
        self.schedule_at(name, self.clock() + max(0.0, delay))

    def schedule_at(self, name: str, when: float) -> None:
        """Make the task due at monotonic time `when`, unless it is due sooner already."""
        task = self._tasks[name]
        if task.due is None or when < task.due:
            task.due = when

    def cancel(self, name: str) -> None:
        """Leave the task unscheduled (a periodic one stays so until scheduled again)."""
        self._tasks[name].due = None

    def pending(self, name: str) -> bool:
        """Tell whether the task is scheduled."""
        return self._tasks[name].due is not None

    def due(self, name: str) -> float | None:
        """Return when the task is due next (monotonic), None if it is not scheduled."""
        return self._tasks[name].due

    def last_run(self, name: str) -> float | None:
        """Return when the task last ran (monotonic), None if it never did."""
        return self._tasks[name].last_run

    def timeout(self, limit: float) -> float:
        """Return how long the loop may sleep: until the earliest due task, at most `limit`."""
        dues = [t.due for t in self._tasks.values() if t.due is not None]
        if not dues:
            return max(0.0, limit)
        return max(0.0, min(limit, min(dues) - self.clock()))

    def run_due(self) -> list[str]:
        """Run every task due by now, earliest first; return their names.

        A task is rescheduled (periodic: one interval after its due time, or after
        now if it is late by more than that) or unscheduled (one-shot) before its
        action runs, so the action may schedule it again, sooner or later.
        """
        now = self.clock()
        ready = sorted(
            (t for t in self._tasks.values() if t.due is not None and t.due <= now),
            key=lambda t: t.due or 0.0,
        )
        ran: list[str] = []
        for task in ready:
            if task.due is None or task.due > now:
                continue  # an earlier action cancelled or postponed it
            task.last_run = now
            if task.interval is None:
                task.due = None
            else:
                task.due = task.due + task.interval
                if task.due <= now:
                    task.due = now + task.interval
            task.action()
            ran.append(task.name)
        return ran
