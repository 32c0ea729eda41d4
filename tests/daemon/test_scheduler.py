"""The loop's scheduler, driven by an injected monotonic clock."""

from __future__ import annotations

import pytest

from monitord.scheduler import Scheduler


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make() -> tuple[Scheduler, Clock, list[str]]:
    clock = Clock()
    return Scheduler(clock), clock, []


def test_periodic_task_runs_at_start_then_every_interval() -> None:
    """A periodic task is due at once (first=0), then `interval` after each run."""
    sched, clock, ran = make()
    sched.every("expire", 60.0, lambda: ran.append("expire"))
    assert sched.timeout(5.0) == 0.0
    assert sched.run_due() == ["expire"]
    assert sched.timeout(100.0) == 60.0
    clock.now += 59.9
    assert sched.run_due() == []
    clock.now += 0.1
    assert sched.run_due() == ["expire"]
    assert ran == ["expire", "expire"]


def test_periodic_tasks_keep_their_phase() -> None:
    """A periodic task run a little late stays on its grid, so a 5 s and a 15 s task keep
    sharing one wake-up every 15 s; run later than a whole interval, it starts over from now."""
    sched, clock, ran = make()
    sched.every("status", 5.0, lambda: ran.append("status"))
    sched.every("watchdog", 15.0, lambda: ran.append("watchdog"))
    wakeups = 0
    while ran.count("status") < 12:
        sched.run_due()
        wakeups += 1
        clock.now += sched.timeout(60.0) + 0.003  # each wake-up a little late
    assert ran.count("watchdog") == 4 and wakeups == 12
    assert clock.now == pytest.approx(1000.0 + 60.0 + 0.003)  # lateness does not add up
    clock.now += 40.0  # a stall longer than both intervals
    assert sched.run_due() == ["status", "watchdog"]
    assert sched.due("status") == pytest.approx(clock.now + 5.0)


def test_first_run_can_be_delayed() -> None:
    """`first` puts the first run later than now."""
    sched, clock, _ = make()
    sched.every("status", 5.0, lambda: None, first=5.0)
    assert sched.run_due() == []
    assert sched.timeout(30.0) == 5.0


def test_timeout_is_capped_by_limit_and_never_negative() -> None:
    """The loop sleeps until the earliest task, at most `limit`, and not at all when late."""
    sched, clock, _ = make()
    sched.every("a", 10.0, lambda: None, first=10.0)
    sched.every("b", 3.0, lambda: None, first=3.0)
    assert sched.timeout(5.0) == 3.0
    assert sched.timeout(1.0) == 1.0
    clock.now += 4.0
    assert sched.timeout(5.0) == 0.0


def test_nothing_scheduled_sleeps_the_whole_limit() -> None:
    """With only unscheduled one-shot tasks the loop sleeps `limit`: idle costs no wake-ups."""
    sched, _, _ = make()
    sched.once("checkpoint", lambda: None)
    sched.once("alerts", lambda: None)
    assert sched.timeout(5.0) == 5.0
    assert sched.run_due() == []


def test_one_shot_runs_once_per_schedule() -> None:
    """A one-shot task runs when scheduled, then stays idle until scheduled again."""
    sched, clock, ran = make()
    sched.once("checkpoint", lambda: ran.append("checkpoint"))
    sched.schedule("checkpoint", 2.0)
    assert sched.pending("checkpoint")
    clock.now += 2.0
    assert sched.run_due() == ["checkpoint"]
    assert not sched.pending("checkpoint")
    clock.now += 100.0
    assert sched.run_due() == []
    assert ran == ["checkpoint"]
    assert sched.last_run("checkpoint") == 1002.0


def test_sooner_schedule_wins() -> None:
    """Scheduling a due task again keeps the sooner of the two times."""
    sched, clock, _ = make()
    sched.once("checkpoint", lambda: None)
    sched.schedule("checkpoint", 5.0)
    sched.schedule("checkpoint", 10.0)
    assert sched.due("checkpoint") == 1005.0
    sched.schedule("checkpoint")  # rotation: now
    assert sched.due("checkpoint") == 1000.0
    sched.schedule_at("checkpoint", 999.0)
    assert sched.due("checkpoint") == 999.0


def test_action_may_reschedule_itself() -> None:
    """An action that cannot finish now schedules itself again (the busy checkpoint writer)."""
    sched, clock, _ = make()
    attempts: list[float] = []

    def try_save() -> None:
        attempts.append(clock.now)
        if len(attempts) < 3:
            sched.schedule("checkpoint", 0.1)

    sched.once("checkpoint", try_save)
    sched.schedule("checkpoint")
    for _ in range(5):
        sched.run_due()
        clock.now += 0.1
    assert attempts == pytest.approx([1000.0, 1000.1, 1000.2])
    assert not sched.pending("checkpoint")


def test_cancel_and_periodic_reschedule() -> None:
    """A cancelled periodic task stays idle until scheduled again, then keeps its interval."""
    sched, clock, ran = make()
    sched.every("watchdog", 15.0, lambda: ran.append("watchdog"))
    sched.run_due()
    sched.cancel("watchdog")
    clock.now += 30.0
    assert sched.run_due() == []
    sched.schedule("watchdog")
    assert sched.run_due() == ["watchdog"]
    assert sched.due("watchdog") == clock.now + 15.0


def test_due_tasks_run_earliest_first_and_a_cancelled_one_is_skipped() -> None:
    """Due tasks run in due order; one cancelled by an earlier action does not run."""
    sched, clock, ran = make()
    sched.once("late", lambda: ran.append("late"))
    sched.once("early", lambda: (ran.append("early"), sched.cancel("late")))
    sched.once("middle", lambda: ran.append("middle"))
    sched.schedule("late", 3.0)
    sched.schedule("middle", 2.0)
    sched.schedule("early", 1.0)
    clock.now += 5.0
    assert sched.run_due() == ["early", "middle"]
    assert ran == ["early", "middle"]


def test_bad_definitions_are_refused() -> None:
    """Two tasks of one name, or a periodic task without a positive interval, are bugs."""
    sched, _, _ = make()
    sched.once("reload", lambda: None)
    with pytest.raises(ValueError, match="exists"):
        sched.once("reload", lambda: None)
    with pytest.raises(ValueError, match="interval"):
        sched.every("spin", 0.0, lambda: None)
