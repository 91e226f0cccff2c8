"""The live debugger's storage: masking, retention, filters, and what it keeps out."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from undertow import debugger
from undertow.config.models import ProjectConfig
from undertow.debugger import DebugRecorder, mask_body, settings_for
from undertow.destinations import capture
from undertow.errors import UndertowError
from undertow.redact import register_secret
from undertow.state.debug_log import DebugLog
from undertow.state.store import StateStore

pytestmark = pytest.mark.unit


def config(**syncs: dict[str, Any]) -> ProjectConfig:
    base = {"model": "m", "destination": "d"}
    return ProjectConfig.model_validate(
        {"name": "p", "syncs": {name: {**base, **extra} for name, extra in syncs.items()}}
    )


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    yield s
    s.close()


def emit(
    sync: str | None, *, status: int | None = 200, keys: tuple[str, ...] = ("1",), **kw: Any
) -> None:
    with capture.context(sync=sync, batch=0, keys=keys, run_id="r1", operation="upsert"):
        capture.emit(
            method="POST",
            url="https://api.example.com/v1/contacts?api_key=abc",
            started_at=time.time(),
            request_headers={"Authorization": "Bearer sk-live-123456", "X-Trace": "t"},
            request_body=kw.get("body", b'{"email": "ada@example.com", "n": 3, "tags": ["a"]}'),
            status=status,
            response_body=kw.get("answer", b'{"status": "ok"}'),
            error=None if status else "TimeoutError: timed out",
        )


def test_mask_body_keeps_structure_and_hides_every_value() -> None:
    masked = orjson.loads(
        mask_body('{"email": "a@b.c", "n": 3, "x": null, "l": [1, {"k": true}]}') or ""
    )
    assert masked == {"email": "***", "n": "***", "x": None, "l": ["***", {"k": "***"}]}
    assert mask_body("name=ada") == "(masked: 8 bytes, not JSON or trimmed)"
    assert mask_body(None) is None


def test_sync_settings_override_the_project_key_by_key() -> None:
    cfg = ProjectConfig.model_validate(
        {
            "name": "p",
            "debugger": {"keep": 5, "payloads": "masked"},
            "syncs": {
                "a": {"model": "m", "destination": "d", "debugger": {"max_age": "1h"}},
                "b": {"model": "m", "destination": "d"},
            },
        }
    )
    a, b = settings_for(cfg, "a"), settings_for(cfg, "b")
    assert (a.keep, a.payloads, a.max_age) == (5, "masked", timedelta(hours=1))
    assert (b.keep, b.max_age) == (5, timedelta(days=7))


def test_recorder_stores_redacted_exchanges_filed_by_sync_run_and_keys(store: StateStore) -> None:
    register_secret("sk-live-123456")
    recorder = DebugRecorder(config(a={}, b={"debugger": {"enabled": False}}), DebugLog(store))
    with recorder.recording():
        emit("a", keys=("42", "7"))
        emit("a", status=None, keys=("142",))
        emit("b")  # its debugger is off
        emit(None)  # a connection check: no sync
        emit("unknown")
    assert not capture.active()  # no recording: the hook builds no exchange at all
    emit("a")  # outside recording: not this project's
    log = DebugLog(store)
    entries = log.entries("a", bodies=True)
    assert [e.keys for e in entries] == [["142"], ["42", "7"]]
    newest, oldest = entries
    assert oldest.run_id == "r1" and oldest.batch == 0 and oldest.operation == "upsert"
    assert oldest.url == "https://api.example.com/v1/contacts"  # no query string
    assert oldest.request_headers["authorization"] == "***"
    assert newest.status is None and newest.status_class == "error" and newest.error
    assert log.entries("b") == []
    raw = Path(store.engine.url.database or "").read_bytes()
    assert b"sk-live-123456" not in raw and b"api_key=abc" not in raw
    # "why did row 42 fail?": an exact key, not a substring
    assert [e.keys for e in log.entries("a", key="42")] == [["42", "7"]]
    assert [e.keys for e in log.entries("a", key="142")] == [["142"]]
    assert [e.status for e in log.entries("a", status="error")] == [None]
    assert [e.status for e in log.entries("a", status="2xx")] == [200]
    assert [e.status for e in log.entries("a", status="200")] == [200]
    with pytest.raises(ValueError, match="unknown status filter"):
        log.entries("a", status="teapot")


def test_masked_payloads_never_reach_the_store(store: StateStore) -> None:
    recorder = DebugRecorder(config(a={"debugger": {"payloads": "masked"}}), DebugLog(store))
    with recorder.recording():
        emit("a", answer=b'{"message": "ada@example.com is invalid"}')
    [entry] = DebugLog(store).entries("a", bodies=True)
    assert entry.masked
    assert orjson.loads(entry.request_body or "") == {"email": "***", "n": "***", "tags": ["***"]}
    assert orjson.loads(entry.response_body or "") == {"message": "***"}
    assert b"ada@example.com" not in Path(store.engine.url.database or "").read_bytes()


def test_each_sync_keeps_its_newest_n_and_nothing_older_than_max_age(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = DebugRecorder(config(a={"debugger": {"keep": 3}}, b={}), DebugLog(store))
    redacted: list[str] = []
    real = capture._text
    monkeypatch.setattr(capture, "_text", lambda b: redacted.append(str(b)) or real(b))
    monkeypatch.setattr(debugger, "FLUSH_SECONDS", 600.0)  # written when the run ends
    with recorder.recording():
        for i in range(7):
            emit("a", keys=(str(i),), body=f'{{"row": {i}}}'.encode())
        emit("b", keys=("b0",))
    assert [e.keys[0] for e in DebugLog(store).entries("a")] == ["6", "5", "4"]
    # the exchanges pushed out of the ring were never redacted (nor stored)
    assert not any(f'"row": {i}' in text for text in redacted for i in range(4))
    assert all(any(f'"row": {i}' in text for text in redacted) for i in (4, 5, 6))
    assert len(DebugLog(store).entries("b")) == 1
    # a row older than max_age goes at the next write of its sync
    old = datetime.now(UTC) - timedelta(days=8)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("update undertow_debug_exchanges set at = ? where sync = 'b'", (old,))
    with recorder.recording():
        emit("b", keys=("b1",))
    assert [e.keys[0] for e in DebugLog(store).entries("b")] == ["b1"]


def test_a_failing_store_drops_entries_and_never_raises(tmp_path: Path) -> None:
    s = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    recorder = DebugRecorder(config(a={}), DebugLog(s))
    with s.engine.begin() as conn:
        conn.exec_driver_sql("drop table undertow_debug_exchanges")
    with recorder.recording():
        emit("a")
    assert recorder.dropped == 1
    s.close()


def test_project_facade_names_a_missing_entry(tmp_path: Path) -> None:
    from undertow.project import Project

    (tmp_path / "undertow.yml").write_text(
        "name: p\nsources: {w: {type: duckdb, path: w.duckdb}}\n"
        "destinations: {f: {type: file, path: out.jsonl}}\n"
        "models: {m: {source: w, sql: select 1 as id, primary_key: id}}\n"
        "syncs: {s: {model: m, destination: f, mappings: {id: id}}}\n"
    )
    project = Project.load(str(tmp_path))
    try:
        with pytest.raises(UndertowError, match="no debugger entry 99"):
            project.debug_entry(99)
        with pytest.raises(UndertowError, match="unknown status filter"):
            project.debug_entries("s", status="nope")
        with pytest.raises(UndertowError, match=r"unknown sync .t."):
            project.debug_entries("t")
    finally:
        project.close()
