"""Alerts delivered to local fake Slack, webhook and SMTP servers: one per change of state;
SLA breach and recovery on a manual clock."""

from __future__ import annotations

import email
import hashlib
import hmac
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from orch_support import Workspace

from undertow.orchestration.schedule import ManualClock
from undertow.state.store import RunStatus
from undertow.testing.server import RunningServer, serve_in_thread
from undertow.testing.webhook import WebhookReceiver


@dataclass
class Mailbox:
    messages: list[email.message.Message] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"


@dataclass
class Fakes:
    slack: WebhookReceiver
    slack_server: RunningServer
    hook: WebhookReceiver
    hook_server: RunningServer
    mailbox: Mailbox
    smtp_port: int

    def slack_texts(self) -> list[str]:
        return [r.body["text"] for r in self.slack.requests]

    def hook_bodies(self) -> list[dict[str, Any]]:
        return [r.body for r in self.hook.requests]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def fakes() -> Iterator[Fakes]:
    slack, hook = WebhookReceiver(), WebhookReceiver()
    mailbox = Mailbox()
    port = _free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        with serve_in_thread(slack.app) as s1, serve_in_thread(hook.app) as s2:
            yield Fakes(slack, s1, hook, s2, mailbox, port)
    finally:
        controller.stop()


def alerts_yaml(fakes: Fakes, rules: str) -> str:
    return f"""
    server: {{url: "http://undertow.test"}}
    alerts:
      channels:
        team: {{type: slack, url: "{fakes.slack_server.url}/services/T0/B0/XYZ"}}
        ops: {{type: webhook, url: "{fakes.hook_server.url}/alerts", secret: hook-secret}}
        mail: {{type: email, host: 127.0.0.1, port: {fakes.smtp_port}, from: undertow@acme.test,
               to: data@acme.test, starttls: false}}
      rules:
    {rules}
    """


def test_run_failed_alerts_once_per_change_of_state(
    ws: Workspace, clock: ManualClock, fakes: Fakes
) -> None:
    ws.write(
        "crm: {model: users, destination: out_a, mappings: {id: id, email: email}}",
        extra=alerts_yaml(fakes, "    - {when: run_failed, channels: [team, ops, mail]}"),
    )
    project = ws.load()
    project.orchestration.clock = clock
    assert project.run(["crm"])[0].status == RunStatus.SUCCEEDED
    assert fakes.slack.requests == []  # all well from the start: nothing to say
    ws.sql("alter table users rename to users_gone")
    for _ in range(3):  # three failures in a row: one alert
        clock.advance(minutes=15)
        assert project.run(["crm"])[0].status == RunStatus.FAILED
    [text] = fakes.slack_texts()
    assert "crm: run failed" in text and "project orch" in text
    assert "undertow runs crm" in text and "http://undertow.test/runs/" in text
    assert "users" in text  # why: the error names the missing table
    [body] = fakes.hook_bodies()
    assert body["state"] == "firing" and body["sync"] == "crm" and body["alert"] == "run_failed"
    [request] = fakes.hook.requests
    stamp = request.headers["x-undertow-timestamp"]
    expected = hmac.new(b"hook-secret", stamp.encode() + b"." + request.raw, hashlib.sha256)
    assert request.headers["x-undertow-signature"] == "sha256=" + expected.hexdigest()
    [mail] = fakes.mailbox.messages
    assert mail["Subject"].startswith("[undertow]") and "crm: run failed" in mail["Subject"]
    assert mail["To"] == "data@acme.test"
    ws.sql("alter table users_gone rename to users")
    clock.advance(minutes=15)
    assert project.run(["crm"])[0].status == RunStatus.SUCCEEDED
    assert len(fakes.slack_texts()) == 2
    assert "crm: runs succeed again" in fakes.slack_texts()[1]
    assert "was failing since" in fakes.slack_texts()[1]
    # a restart does not forget that all is well: no alert for the next success
    project.close()
    again = ws.load()
    again.orchestration.clock = clock
    again.run(["crm"])
    assert len(fakes.slack_texts()) == 2


def test_rejected_ratio_alert_points_at_the_errors(
    ws: Workspace, clock: ManualClock, fakes: Fakes
) -> None:
    rules = """
        - {when: rejected_ratio, threshold: 0.2, channels: [ops]}
        - {when: slow_run, slower_than: 1h, channels: [ops]}
    """
    ws.write(
        "crm: {model: users, destination: out_a, mappings: {id: id, n: {column: email, cast: int}}}",
        extra=alerts_yaml(fakes, rules),
    )
    ws.users(10, updated=clock.now())
    project = ws.load()
    project.orchestration.clock = clock
    # every email fails the int cast: all 10 rows rejected
    [run] = project.run(["crm"])
    [body] = fakes.hook_bodies()
    assert body["alert"] == "rejected_ratio" and body["state"] == "firing"
    assert "rejected 10 of 10 row(s) (100.0%; threshold 20.0%)" in body["detail"]
    assert body["command"] == f"undertow errors {run.id}"


def test_row_count_deviation_from_the_recent_average(
    ws: Workspace, clock: ManualClock, fakes: Fakes
) -> None:
    ws.write(
        "crm: {model: users, destination: out_a, mappings: {id: id}}",
        extra=alerts_yaml(fakes, "    - {when: row_count, threshold: 0.5, channels: [ops]}"),
    )
    ws.users(100, updated=clock.now())
    project = ws.load()
    project.orchestration.clock = clock
    for _ in range(3):
        project.run(["crm"])
    assert fakes.hook_bodies() == []
    ws.users(10, updated=clock.now(), plan="pro")  # 90% of the model vanished
    project.run(["crm"])
    [body] = fakes.hook_bodies()
    assert body["alert"] == "row_count" and "read 10 row(s)" in body["detail"]
    assert "average of the last 3 runs is 100" in body["detail"]


def test_sla_breach_and_recovery(ws: Workspace, clock: ManualClock, fakes: Fakes) -> None:
    ws.write(
        "crm: {model: users, destination: out_a, mappings: {id: id}, sla: 1h, schedule: manual}",
        extra=alerts_yaml(fakes, "    - {when: sla, channels: [team]}"),
    )
    project = ws.load()
    sched = ws.scheduler(project, clock)
    project.run(["crm"])
    sched.tick()
    assert project.sync_status("crm")["sla_state"] == "ok"
    clock.advance(minutes=59)
    sched.tick()
    assert fakes.slack_texts() == []
    clock.advance(minutes=2)
    sched.tick()
    sched.tick()  # still breached: no second alert
    [breached] = fakes.slack_texts()
    assert "crm: SLA breached" in breached and "lag 1h 01m against an SLA of 1h 00m" in breached
    assert "undertow status" in breached
    status = project.sync_status("crm")
    assert status["sla_state"] == "breached" and status["lag_s"] == pytest.approx(3660, abs=5)
    project.run(["crm"])
    sched.tick()
    assert len(fakes.slack_texts()) == 2 and "crm: SLA recovered" in fakes.slack_texts()[1]
    assert project.sync_status("crm")["sla_state"] == "ok"


def test_stale_data_alerts_and_recovers(ws: Workspace, clock: ManualClock, fakes: Fakes) -> None:
    ws.users(3, updated=clock.now() - timedelta(hours=3))
    ws.write(
        """
        crm: {model: users, destination: out_a, mappings: {id: id},
              freshness: {column: updated_at, max_age: 2h}}
        """,
        extra=alerts_yaml(fakes, "    - {when: freshness, channels: [team]}"),
    )
    project = ws.load()
    project.orchestration.clock = clock
    project.run(["crm"])
    project.run(["crm"])
    [stale] = fakes.slack_texts()
    assert "crm: data is stale: nothing was sent" in stale and "3h 00m old" in stale
    ws.users(3, updated=clock.now())
    project.run(["crm"])
    assert "crm: data is fresh again" in fakes.slack_texts()[1]


def test_a_broken_channel_does_not_break_the_run(ws: Workspace, clock: ManualClock) -> None:
    ws.write(
        "crm: {model: missing_table_model, destination: out_a, mappings: {id: id}}",
        models='  missing_table_model: {source: wh, sql: "select * from nope", primary_key: id}\n',
        extra="""
        alerts:
          channels: {team: {type: slack, url: "http://127.0.0.1:9/hooks/secret-path"}}
          rules: [{when: run_failed, channels: [team]}]
        """,
    )
    project = ws.load()
    [run] = project.run(["crm"])
    assert run.status == RunStatus.FAILED
    assert project.orchestration.alerts.sent[0].when == "run_failed"


def test_slow_run_alert(ws: Workspace, clock: ManualClock, fakes: Fakes) -> None:
    ws.write(
        "crm: {model: users, destination: out_a, mappings: {id: id}}",
        extra=alerts_yaml(fakes, "    - {when: slow_run, slower_than: 30m, channels: [ops]}"),
    )
    project = ws.load()
    [run] = project.run(["crm"])
    assert fakes.hook_bodies() == []
    run.created_at -= timedelta(minutes=45)  # as if the run had taken 45 minutes
    project.orchestration.after_run(run)
    [body] = fakes.hook_bodies()
    assert body["alert"] == "slow_run" and "took 45m" in body["detail"]
