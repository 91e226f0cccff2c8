"""The declarative HTTP kit that SaaS destinations are built on (see ``KIT.md``).

Public through :mod:`undertow.sdk`; import from there in connectors outside Undertow.
"""

from undertow.destinations.kit.auth import Auth, BasicAuth, BearerAuth, HeaderAuth, QueryAuth
from undertow.destinations.kit.endpoints import (
    Call,
    Endpoint,
    Item,
    RawItem,
    Reject,
    accept_all,
    envelope,
    errors_by_field,
    errors_by_index,
    message_of,
    not_confirmed,
    plain,
    results_in_order,
    single,
    whole_reason,
)
from undertow.destinations.kit.http import (
    HttpConfig,
    HttpDestination,
    Stats,
    bisect_allowance,
    parse_json,
)
from undertow.destinations.kit.signals import (
    RateHeaders,
    SlowDown,
    Verdict,
    first_at,
    seconds_from,
    values_at,
)

__all__ = [
    "Auth",
    "BasicAuth",
    "BearerAuth",
    "Call",
    "Endpoint",
    "HeaderAuth",
    "HttpConfig",
    "HttpDestination",
    "Item",
    "QueryAuth",
    "RateHeaders",
    "RawItem",
    "Reject",
    "SlowDown",
    "Stats",
    "Verdict",
    "accept_all",
    "bisect_allowance",
    "envelope",
    "errors_by_field",
    "errors_by_index",
    "first_at",
    "message_of",
    "not_confirmed",
    "parse_json",
    "plain",
    "results_in_order",
    "seconds_from",
    "single",
    "values_at",
    "whole_reason",
]
