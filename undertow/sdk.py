"""The public connector SDK: everything a destination needs, in one stable import.

    from undertow.sdk import (
        Capabilities, Endpoint, HttpConfig, HttpDestination, MatchRule, Operation, RateLimit,
        BearerAuth, SlowDown, envelope, errors_by_index,
    )

Modules behind it (``undertow.destinations.*``) may move; names listed in ``__all__`` here
keep working across minor versions. A connector package registers its class under the
``undertow.destinations`` entry point group::

    [project.entry-points."undertow.destinations"]
    acme = "acme_undertow:AcmeDestination"

Its fake builds on :mod:`undertow.testing.fakes` and its tests on
:mod:`undertow.testing.template` (``KIT.md`` walks through all three).

What is here, by what a connector does with it:

* **declare**: :class:`Destination` (generic over its config), :class:`DestinationConfig`,
  :class:`Capabilities`, :class:`MatchRule`, :class:`RateLimit`, :class:`Operation`,
  :class:`DemoProfile`;
* **receive and answer**: :class:`Batch`, :class:`BatchResult`;
* **speak HTTP declaratively**: :class:`HttpDestination`, :class:`HttpConfig`,
  :class:`Endpoint`, :class:`Call`, :class:`Item`, :class:`Reject`, body builders
  (:func:`envelope`, :func:`single`), result readers (:func:`accept_all`,
  :func:`errors_by_index`, :func:`errors_by_field`, :func:`results_in_order`), helpers
  (:func:`message_of`, :func:`values_at`, :func:`first_at`, :func:`parse_json`);
* **authenticate**: :class:`Auth`, :class:`BearerAuth`, :class:`BasicAuth`,
  :class:`HeaderAuth`, :class:`QueryAuth`;
* **slow down**: :class:`SlowDown`, :class:`RateHeaders`, the budget interface
  :class:`RateBudget` and :func:`set_budget_factory` (a Redis budget plugs in there);
* **fail well**: the error classes, :func:`register_secret`, :func:`redact`.
"""

from __future__ import annotations

from undertow.destinations._http import HttpClient, Response, parse_retry_after
from undertow.destinations.base import (
    Batch,
    BatchResult,
    Capabilities,
    DemoProfile,
    Destination,
    DestinationConfig,
    MatchRule,
    Operation,
    RateLimit,
    RunEnd,
)
from undertow.destinations.kit import (
    Auth,
    BasicAuth,
    BearerAuth,
    Call,
    Endpoint,
    HeaderAuth,
    HttpConfig,
    HttpDestination,
    Item,
    QueryAuth,
    RateHeaders,
    Reject,
    SlowDown,
    Stats,
    Verdict,
    accept_all,
    envelope,
    errors_by_field,
    errors_by_index,
    first_at,
    message_of,
    not_confirmed,
    parse_json,
    results_in_order,
    seconds_from,
    single,
    values_at,
    whole_reason,
)
from undertow.destinations.rate import (
    LocalBudget,
    Permit,
    RateBudget,
    budget_for,
    set_budget_factory,
)
from undertow.destinations.retry import RetryPolicy
from undertow.errors import (
    ConfigError,
    DeliveryError,
    FatalDeliveryError,
    InterruptedDelivery,
    RejectedBatchError,
    RetryableError,
    UndertowError,
    did_you_mean,
    unknown_name,
)
from undertow.redact import redact, register_secret, trim

__all__ = [
    "Auth",
    "BasicAuth",
    "Batch",
    "BatchResult",
    "BearerAuth",
    "Call",
    "Capabilities",
    "ConfigError",
    "DeliveryError",
    "DemoProfile",
    "Destination",
    "DestinationConfig",
    "Endpoint",
    "FatalDeliveryError",
    "HeaderAuth",
    "HttpClient",
    "HttpConfig",
    "HttpDestination",
    "InterruptedDelivery",
    "Item",
    "LocalBudget",
    "MatchRule",
    "Operation",
    "Permit",
    "QueryAuth",
    "RateBudget",
    "RateHeaders",
    "RateLimit",
    "Reject",
    "RejectedBatchError",
    "Response",
    "RetryPolicy",
    "RetryableError",
    "RunEnd",
    "SlowDown",
    "Stats",
    "UndertowError",
    "Verdict",
    "accept_all",
    "budget_for",
    "did_you_mean",
    "envelope",
    "errors_by_field",
    "errors_by_index",
    "first_at",
    "message_of",
    "not_confirmed",
    "parse_json",
    "parse_retry_after",
    "redact",
    "register_secret",
    "results_in_order",
    "seconds_from",
    "set_budget_factory",
    "single",
    "trim",
    "unknown_name",
    "values_at",
    "whole_reason",
]
