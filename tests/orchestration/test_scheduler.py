"""The scheduler on a manual clock: schedules, pause, queued triggers, `after` DAGs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from orch_support import Workspace

from undertow.errors import ConfigError
from undertow.orchestration.config import cron, every
from undertow.orchestration.schedule import ManualClock, next_after
from undertow.state.store import RunStatus


def test_every_keeps_its_beat_and_collapses_missed_ticks() -> None:
    beat = every("15m")
    start = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert next_after(beat, start, start) == start + timedelta(minutes=15)
    # the server was down for an hour: one run now, then the beat continues
    late = start + timedelta(minutes=61)
    assert next_after(beat, late, start) == start + timedelta(minutes=75)


def test_cron_is_evaluated_in_its_timezone_across_dst() -> None:
    weekdays = cron("0 6 * * 1-5", "Europe/Paris")
    friday = datetime(2026, 3, 27, 12, 0, tzinfo=UTC)
    # Monday after the switch to summer time: 06:00 Paris is 04:00 UTC
    assert next_after(weekdays, friday, None) == datetime(2026, 3, 30, 4, 0, tzinfo=UTC)
    winter = datetime(2026, 1, 5, 7, 0, tzinfo=UTC)  # a Monday, after 06:00 Paris (05:00 UTC)
    assert next_after(weekdays, winter, None) == datetime(2026, 1, 6, 5, 0, tzinfo=UTC)


def test_every_15m_runs_on_time_and_pause_stops_it(ws: Workspace, clock: ManualClock) -> None:
    ws.write(
        """
        a: {model: users, destination: out_a, mappings: {id: id}, schedule: {every: 15m}}
        m: {model: users, destination: out_b, mappings: {id: id}, schedule: manual}
        """
    )
    project = ws.load()
    sched = ws.scheduler(project, clock)
    assert sched.tick() == ["a"]  # never ran: due at once
    assert sched.tick() == []
    clock.advance(minutes=14)
    assert sched.tick() == []
    clock.advance(minutes=1)
    assert sched.tick() == ["a"]
    project.pause("a")
    clock.advance(minutes=30)
    assert sched.tick() == []
    row = project.sync_status("a")
    assert row["paused"] is True and row["next_run_at"] is None
    project.resume("a")
    assert sched.tick() == ["a"]
    assert [r.status for r in sched.records] == [RunStatus.SUCCEEDED] * 3
    assert all(r.trigger == "schedule" for r in sched.records)


def test_cron_schedule_waits_for_its_time(ws: Workspace) -> None:
    ws.write(
        """
        a: {model: users, destination: out_a, mappings: {id: id},
            schedule: {cron: "0 6 * * *", timezone: UTC}}
        """
    )
    clock = ManualClock(datetime(2030, 1, 1, 5, 0, tzinfo=UTC))
    project = ws.load()
    sched = ws.scheduler(project, clock)
    assert sched.tick() == []
    assert project.sync_status("a")["next_run_at"] == "2030-01-01T06:00:00+00:00"
    clock.advance(minutes=59)
    assert sched.tick() == []
    clock.advance(minutes=1)
    assert sched.tick() == ["a"]
    assert project.sync_status("a")["next_run_at"] == "2030-01-02T06:00:00+00:00"


def test_queued_trigger_runs_a_manual_sync_once_full(ws: Workspace, clock: ManualClock) -> None:
    ws.write("m: {model: users, destination: out_a, mappings: {id: id}}")
    project = ws.load()
    sched = ws.scheduler(project, clock)
    assert sched.tick() == []
    project.trigger("m")
    project.trigger("m", full=True)  # two requests before the tick: one full run
    assert sched.tick() == ["m"]
    assert sched.records[-1].full_resync and sched.records[-1].trigger == "api"
    assert sched.tick() == []
    with pytest.raises(ConfigError, match="did you mean 'm'"):
        project.trigger("mm")


def test_after_with_several_parents_waits_for_all(ws: Workspace, clock: ManualClock) -> None:
    ws.write(
        """
        a: {model: users, destination: out_a, mappings: {id: id}}
        b: {model: users, destination: out_b, mappings: {id: id}}
        c: {model: users, destination: out_c, mappings: {id: id}, after: [a, b]}
        d: {model: users, destination: out_d, mappings: {id: id}, after: [c]}
        """
    )
    project = ws.load()
    sched = ws.scheduler(project, clock)
    assert sched.tick() == []
    assert "sync a: never completed" in project.sync_status("c")["waiting_for"]
    project.run(["a"])
    clock.advance(seconds=1)
    assert sched.tick() == []  # b has not completed yet
    project.run(["b"])
    clock.advance(seconds=1)
    assert sched.tick() == ["c"]
    clock.advance(seconds=1)
    assert sched.tick() == ["d"]  # the chain goes on
    clock.advance(seconds=1)
    assert sched.tick() == []  # nothing upstream happened since
    project.run(["a"])
    clock.advance(seconds=1)
    assert sched.tick() == []  # a again, but not b: c keeps waiting for both
    assert project.sync_status("c")["waiting_for"] == ["sync b: not completed since the last run"]
    project.run(["b"])
    clock.advance(seconds=1)
    assert sched.tick() == ["c"]


def test_after_on_success_ignores_failures_completion_does_not(
    ws: Workspace, clock: ManualClock
) -> None:
    ws.write(
        """
        a: {model: broken, destination: out_a, mappings: {id: id}}
        s: {model: users, destination: out_b, mappings: {id: id}, after: [a]}
        c: {model: users, destination: out_c, mappings: {id: id},
            after: [{sync: a, on: completion, within: 1h}]}
        """,
        models="  broken: {source: wh, sql: \"select 'x'::int as id\", primary_key: id}\n",
    )
    project = ws.load()
    sched = ws.scheduler(project, clock)
    [failed] = project.run(["a"])
    assert failed.status == RunStatus.FAILED
    clock.advance(seconds=1)
    assert sched.tick() == ["c"]
    clock.advance(hours=2)
    project.run(["a"])
    clock.advance(hours=2)
    assert sched.tick() == []  # completed, but more than `within: 1h` ago
    assert "more than `within: 1h 00m`" in project.sync_status("c")["waiting_for"][0]


def test_then_triggers_downstream_syncs(ws: Workspace, clock: ManualClock) -> None:
    ws.write(
        """
        a: {model: users, destination: out_a, mappings: {id: id}, then: [b]}
        b: {model: users, destination: out_b, mappings: {id: id}}
        """
    )
    project = ws.load()
    # `undertow run a` runs b after it
    assert [r.sync for r in project.run(["a"])] == ["a", "b"]
    # under the scheduler, b is queued and runs at the next tick
    sched = ws.scheduler(project, clock)
    project.trigger("a", full=True)
    assert sched.tick() == ["a"]
    assert sched.tick() == ["b"]
    assert sched.records[-1].trigger == "then:a"


def test_cycles_are_config_errors_naming_the_cycle(ws: Workspace) -> None:
    ws.write(
        """
        a: {model: users, destination: out_a, mappings: {id: id}, after: [c]}
        b: {model: users, destination: out_b, mappings: {id: id}, after: [a]}
        c: {model: users, destination: out_c, mappings: {id: id}, after: [b]}
        """
    )
    with pytest.raises(ConfigError) as info:
        ws.load()
    message = str(info.value)
    assert "cycle: a -> b -> c -> a" in message
    assert "undertow.yml:" in message and "syncs.a.after" in message


def test_unknown_upstreams_say_did_you_mean(ws: Workspace) -> None:
    ws.write(
        """
        load: {model: users, destination: out_a, mappings: {id: id}}
        a: {model: users, destination: out_b, mappings: {id: id}, after: [lod, {webhook: x}]}
        """
    )
    with pytest.raises(ConfigError) as info:
        ws.load()
    message = str(info.value)
    assert "unknown sync 'lod'; did you mean 'load'?" in message
    assert "unknown webhook 'x'" in message


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("{every: soon}", "expected a duration such as 30s, 15m"),
        ("{cron: 'x y'}", "'x y' is not a cron expression"),
        ("hourly", "schedule 'hourly' is not understood; write `manual`"),
        ("{every: 15m, cron: '* * * * *'}", "exactly one of `every:` or `cron:`"),
        ("{cron: '0 6 * * *', timezone: Mars/Olympus}", "unknown timezone 'Mars/Olympus'"),
        ("{evry: 15m}", "unknown key 'evry'; did you mean 'every'?"),
    ],
)
def test_bad_schedules_say_how_to_write_one(ws: Workspace, schedule: str, expected: str) -> None:
    ws.write(f"a: {{model: users, destination: out_a, mappings: {{id: id}}, schedule: {schedule}}}")
    with pytest.raises(ConfigError) as info:
        ws.load()
    assert expected in str(info.value)
    assert str(info.value).count("syncs.a.schedule") == 1


def test_restart_keeps_schedule_pause_and_queue(ws: Workspace, clock: ManualClock) -> None:
    ws.write(
        """
        a: {model: users, destination: out_a, mappings: {id: id}, schedule: {every: 1h}}
        b: {model: users, destination: out_b, mappings: {id: id}, schedule: {every: 1h}}
        """
    )
    first = ws.load()
    sched = ws.scheduler(first, clock)
    assert sorted(sched.tick()) == ["a", "b"]
    first.pause("b")
    first.trigger("b")
    first.close()
    second = ws.load()  # a new process: everything it knows comes from the state store
    sched = ws.scheduler(second, clock)
    clock.advance(minutes=30)
    assert sched.tick() == ["b"]  # the queued trigger survives, even for a paused sync
    clock.advance(minutes=30)
    assert sched.tick() == ["a"]  # b stays paused
