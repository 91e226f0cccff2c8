"""Errors cross process boundaries (a Celery worker reports a run's failure to the process
that queued it): every error survives a pickle round trip with its fields and its message,
and carries no secret into the pickle."""

from __future__ import annotations

import pickle

import pytest

from undertow import errors
from undertow.errors import (
    ConfigError,
    ConfigErrors,
    DeliveryError,
    FatalDeliveryError,
    ModelError,
    RetryableError,
    SyncLockedError,
    UndertowError,
)
from undertow.redact import register_secret

pytestmark = pytest.mark.unit


def state(value: object) -> object:
    """An error as comparable data: its type, message and fields (nested errors too)."""
    if isinstance(value, BaseException):
        return (type(value), str(value), {k: state(v) for k, v in vars(value).items()})
    if isinstance(value, list):
        return [state(v) for v in value]
    return value


def roundtrip(error: UndertowError) -> UndertowError:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert state(copy) == state(error)
    return copy  # type: ignore[no-any-return]


def test_model_error_keeps_its_fields() -> None:
    error = ModelError("syntax error", model="users", source="wh", position=12, hint="fix it")
    copy = roundtrip(error)
    assert isinstance(copy, ModelError)
    assert (copy.model, copy.source, copy.position, copy.hint) == ("users", "wh", 12, "fix it")
    assert copy.fields() == {"model": "users", "source": "wh", "position": 12}


def test_config_errors_keep_every_error() -> None:
    error = ConfigErrors(
        [
            ConfigError("bad type", file="undertow.yml", line=3, key="sources.wh.type"),
            ConfigError("missing", file="syncs/a.yml", line=9, key="syncs.a.model"),
        ]
    )
    copy = roundtrip(error)
    assert isinstance(copy, ConfigErrors)
    assert [(e.file, e.line, e.key) for e in copy.errors] == [
        ("undertow.yml", 3, "sources.wh.type"),
        ("syncs/a.yml", 9, "syncs.a.model"),
    ]
    assert (copy.file, copy.line) == ("undertow.yml", 3)


def test_delivery_errors_carry_status_request_id_sync_destination() -> None:
    error = RetryableError(
        "POST /v1 -> 429",
        retry_after=2.5,
        status=429,
        request_id="req-1",
        sync="users_out",
        destination="crm",
    )
    copy = roundtrip(error)
    assert isinstance(copy, RetryableError)
    assert copy.fields() == {
        "retry_after": 2.5,
        "status": 429,
        "request_id": "req-1",
        "sync": "users_out",
        "destination": "crm",
    }
    fatal = roundtrip(FatalDeliveryError("401", status=401, destination="crm"))
    assert isinstance(fatal, DeliveryError) and fatal.status == 401


def test_every_error_class_of_the_tree_round_trips() -> None:
    """Each class of ``undertow.errors``, built with the arguments its ``__init__`` takes."""
    made = 0
    for name in dir(errors):
        cls = getattr(errors, name)
        if not (isinstance(cls, type) and issubclass(cls, UndertowError)):
            continue
        if cls is ConfigErrors:
            error: UndertowError = cls([ConfigError("x", key="k")])
        elif cls is ModelError:
            error = cls("x", model="m", source="s")
        else:
            error = cls("something failed", hint="do this")
        roundtrip(error)
        made += 1
    assert made >= 14


def test_a_registered_secret_never_reaches_the_pickle() -> None:
    secret = "s3cr3t-token-value-42"
    register_secret(secret)
    error = SyncLockedError(f"lock held; token {secret} leaked", hint=f"use {secret}")
    data = pickle.dumps(error)
    assert secret.encode() not in data
    assert secret not in str(roundtrip(error))
