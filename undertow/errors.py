"""The errors Undertow raises, grouped by what the caller should do next.

    UndertowError                      root: the CLI prints one red line, exit 1
    ├── ConfigError                    a project file is wrong: file, line, key path
    ├── ModelError                     a model's SQL failed: model, source, position
    ├── SourceError                    a warehouse cannot be reached or read
    ├── StateError                     the state store is unreachable or inconsistent
    │   ├── SyncLockedError            another run of the same sync holds the lock
    │   ├── LockLostError              a run's lock was taken over: it must write nothing more
    │   └── NewerStoreError            a newer Undertow migrated the store: refuse it
    ├── PlanError                      a sync asks for something its destination cannot do
    │   └── DeleteLimitError           a run would delete more than max_deletes /
    │                                  max_delete_ratio allow: nothing sent
    ├── PrimaryKeyError                a model has no usable primary key column
    ├── MappingError                   a mapping cannot be compiled (per-row failures are
    │                                  *rejections*, not exceptions)
    ├── StageCrash                     a stage crashed (a bug, a driver error, a panic in
    │                                  a native library): the run ended failed, the next
    │                                  run starts afresh
    └── DeliveryError                  a destination failed
        ├── RetryableError             429, 5xx, timeouts: try again with backoff
        ├── FatalDeliveryError         bad credentials, retries exhausted, a wait longer
        │                              than max_wait: stop the run, rows stay undelivered
        ├── InterruptedDelivery        Ctrl-C / SIGTERM during a wait: the batch stays
        │                              undelivered, the run ends cancelled
        └── RejectedBatchError         the destination refused the batch's rows (4xx):
                                       reject every row of the batch, keep going

Every message says, in order: what failed, which object, why, and the next step.
Messages pass through :func:`undertow.redact.redact` so a secret never leaks.

Errors cross process boundaries (a Celery worker reports a run's failure to the process
that queued it), so every error survives a pickle round trip with its fields, whatever its
``__init__`` takes: :meth:`UndertowError.__reduce__` rebuilds it from its message and its
attributes, never by calling ``__init__`` again. The data a caller acts on is in fields
(``ConfigError.file``/``line``/``key``, ``ModelError.model``/``source``/``position``,
``DeliveryError.status``/``request_id``/``sync``/``destination``), and
:meth:`UndertowError.fields` gives them as a dict for ``--json`` and the API.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any, TypeVar

from undertow.redact import redact

E = TypeVar("E", bound="UndertowError")


def _restore(cls: type[E], args: tuple[Any, ...], state: dict[str, Any]) -> E:
    """Rebuild a pickled error without calling its ``__init__`` (see the module docstring)."""
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class UndertowError(Exception):
    """Root of every error Undertow raises on purpose."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.raw_message = redact(message)
        self.hint = redact(hint) if hint is not None else None
        text = message if hint is None else f"{message}\n  hint: {hint}"
        super().__init__(redact(text))

    @property
    def message(self) -> str:
        return str(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore, (type(self), self.args, dict(self.__dict__)))

    def fields(self) -> dict[str, Any]:
        """The error's data (no message, no hint): what ``--json`` and the API show."""
        return {
            k: v
            for k, v in vars(self).items()
            if k not in ("raw_message", "hint", "detail", "errors") and not k.startswith("_")
        }


class ConfigError(UndertowError):
    """A project file is wrong. Carries the file, the line and the key path."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        key: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.file = file
        self.line = line
        self.key = key
        self.detail = redact(message if hint is None else f"{message}\n  hint: {hint}")
        """The message without the location (for lists that show the location apart)."""
        where = ""
        if file:
            where = file + (f":{line}" if line else "")
        if key:
            where = f"{where} {key}" if where else key
        super().__init__(f"{where}: {message}" if where else message, hint=hint)


class ConfigErrors(ConfigError):
    """Several configuration problems found in one pass; each is listed."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        lines = [f"{len(errors)} problem(s) in the project:"] + [f"  - {e}" for e in errors]
        UndertowError.__init__(self, "\n".join(lines))
        self.file = errors[0].file if errors else None
        self.line = errors[0].line if errors else None
        self.key = errors[0].key if errors else None
        self.detail = str(self)


class ModelError(UndertowError):
    """A model's SQL failed to compile or run on its source."""

    def __init__(
        self,
        message: str,
        *,
        model: str,
        source: str,
        position: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.model = model
        self.source = source
        self.position = position
        at = f" at character {position}" if position is not None else ""
        super().__init__(f"model {model!r} on source {source!r} failed{at}: {message}", hint=hint)


class SourceError(UndertowError):
    """A warehouse cannot be reached, authenticated against or read."""


class StateError(UndertowError):
    """The state store is unreachable or holds something unexpected."""


class SyncLockedError(StateError):
    """Another run of the same sync holds the lock."""


class LockLostError(StateError):
    """The run's lock was taken over (its heartbeat stopped for longer than its TTL): the run
    stops and writes nothing more; the new holder resumes it from its checkpoints."""


class NewerStoreError(StateError):
    """The store was migrated by a newer Undertow: this process must not read or write it."""


class PlanError(UndertowError):
    """A sync asks its destination for something it cannot do; nothing was sent."""


class DeleteLimitError(PlanError):
    """A run's plan deletes more rows than the sync allows; nothing was sent."""


class PrimaryKeyError(UndertowError):
    """A model's primary key columns are missing."""


class MappingError(UndertowError):
    """A mapping cannot be compiled (unknown column, bad template syntax, bad cast)."""


class StageCrash(UndertowError):
    """A stage of a run crashed on something that is not an UndertowError; the run was
    ended ``failed`` and its change set dropped, so the next run starts afresh."""


def is_crash(exc: BaseException) -> bool:
    """An exception a stage can end its run on: any ``Exception``, and a panic of a native
    library (pyo3's ``PanicException`` derives from ``BaseException``). Not Ctrl-C, not a
    process exit: those leave the run to be resumed."""
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


def crash_message(exc: BaseException) -> str:
    """One line for a crash, redacted: its type, its message, and what happens next."""
    text = " ".join(redact(exc).split())[:300] or "(no message)"  # redacted before cut
    return redact(
        f"the run crashed: {type(exc).__name__}: {text}; the run is failed and the next run "
        "starts afresh (rows accepted before the crash are recorded). This is a bug in "
        "Undertow or a library it uses: please report it with the output of --debug"
    )


class DeliveryError(UndertowError):
    """A destination failed. ``status`` and ``request_id`` are the vendor's answer (when
    there was one); ``sync`` and ``destination`` say whose batch it was."""

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        status: int | None = None,
        request_id: str | None = None,
        sync: str | None = None,
        destination: str | None = None,
    ) -> None:
        self.status = status
        self.request_id = request_id
        self.sync = sync
        self.destination = destination
        super().__init__(message, hint=hint)


class RetryableError(DeliveryError):
    """A transient failure (429, 5xx, timeout, connection reset): retry with backoff."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        hint: str | None = None,
        status: int | None = None,
        request_id: str | None = None,
        sync: str | None = None,
        destination: str | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(
            message,
            hint=hint,
            status=status,
            request_id=request_id,
            sync=sync,
            destination=destination,
        )


class FatalDeliveryError(DeliveryError):
    """A failure no retry will fix (bad credentials, missing object): stop the run."""


class InterruptedDelivery(DeliveryError):
    """The run was stopped while a batch waited (backoff, rate limit): it stays undelivered."""


class RejectedBatchError(DeliveryError):
    """The destination refused the whole batch (4xx): each row is rejected with this."""


def did_you_mean(name: str, choices: Iterable[str]) -> str | None:
    """Return a 'did you mean `x`?' phrase for the closest choice, or None."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"did you mean {match[0]!r}?" if match else None


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> str:
    """A message for a failed lookup that offers the closest names."""
    options = sorted(choices)
    suggestion = did_you_mean(name, options)
    known = ", ".join(repr(o) for o in options) if options else "none are defined"
    text = f"unknown {kind} {name!r}"
    if suggestion:
        text += f"; {suggestion}"
    return f"{text} (known: {known})"
