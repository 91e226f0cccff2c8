"""Redaction as a property: a registered secret never survives :func:`undertow.redact.redact`
in any encoding it can travel in, whatever the secret and whatever text surrounds it.

Each encoding is produced by the library a vendor or a client would use (``json.dumps``,
``orjson``, ``urllib.parse``, ``base64`` of ``user:secret``, ``html.escape``), never by the
code under test.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import re
import string
from collections.abc import Callable, Iterator
from urllib.parse import quote, quote_plus

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from undertow import redact as redact_module
from undertow.console import plain
from undertow.errors import UndertowError
from undertow.redact import MASK, redact, register_secret, trim

pytestmark = pytest.mark.unit

# Secrets as they come: printable ASCII of every kind (tokens, passwords with / " \ & % + :
# and spaces), and some non-ASCII. At least 8 characters: registered secrets are at least 4,
# and the base64 forms of very short ones are too short to mask on their own (documented).
SPECIAL = "/\\\"&%+:'<>= ?#@"
"""What each encoding escapes differently: drawn often, so every encoding is exercised."""
SECRET = st.text(
    alphabet=st.one_of(
        st.sampled_from(string.ascii_letters + string.digits),
        st.sampled_from(SPECIAL),
        st.sampled_from(string.punctuation),
        st.characters(min_codepoint=0xA0, max_codepoint=0x2FFF, categories=["L", "N", "S"]),
    ),
    min_size=8,
    max_size=48,
).filter(lambda s: s.strip() == s)
AROUND = st.text(alphabet=string.ascii_letters + " :,{}\"'=<>", max_size=20)
USER = st.text(alphabet=string.ascii_letters + string.digits + "._-@", min_size=0, max_size=16)


@contextlib.contextmanager
def isolated_secrets(*, empty: bool = False) -> Iterator[None]:
    """Random secrets registered here must not mask text in the tests that run after these
    in the same worker: the registry is put back as it was. ``empty`` starts from no
    registered secret (a test that ran earlier in the worker may have registered a word
    such as ``secret`` that would mask part of the text under test), and keeps each
    example fast: registering a secret recompiles the pattern of every registered one, so
    with the hundreds an earlier test file left in the worker each example took seconds
    (the file took 9 minutes of one worker in ``make test``)."""
    saved = set(redact_module._secrets)
    if empty:
        with redact_module._lock:
            redact_module._secrets.clear()
            redact_module._compiled = None
    try:
        yield
    finally:
        with redact_module._lock:
            redact_module._secrets.clear()
            redact_module._secrets.update(saved)
            redact_module._compiled = None


def _lower_escapes(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), text)


def _json_slash(s: str) -> str:
    return json.dumps(s)[1:-1].replace("/", "\\/")  # PHP, some Java encoders


ENCODINGS: dict[str, Callable[[str], str]] = {
    "raw": lambda s: s,
    "json": lambda s: json.dumps(s)[1:-1],
    "json ensure_ascii=False": lambda s: json.dumps(s, ensure_ascii=False)[1:-1],
    "json with \\/": _json_slash,
    "orjson": lambda s: orjson.dumps(s).decode()[1:-1],
    "url quote": lambda s: quote(s, safe=""),
    "url quote (path)": quote,
    "url quote_plus": quote_plus,
    "url lower-case hex": lambda s: _lower_escapes(quote(s, safe="")),
    "url twice": lambda s: quote(quote(s, safe=""), safe=""),
    "html": html.escape,
    "base64": lambda s: base64.b64encode(s.encode()).decode(),
    "base64 url-safe": lambda s: base64.urlsafe_b64encode(s.encode()).decode(),
}


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@example(secret='pat/na1+"x\\y&z%:w é', before="", after="")
@given(secret=SECRET, before=AROUND, after=AROUND)
def test_a_secret_never_survives_in_any_encoding(
    encoding: str, secret: str, before: str, after: str
) -> None:
    encoded = ENCODINGS[encoding](secret)
    with isolated_secrets(empty=True):  # this secret alone (see isolated_secrets)
        register_secret(secret)
        out = redact(f"{before}{encoded}{after}")
    assert encoded not in out, (encoding, secret, out)
    assert MASK in out


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(secret=SECRET, user=USER)
def test_basic_auth_base64_of_user_colon_secret_is_masked(secret: str, user: str) -> None:
    """HTTP basic auth carries base64("user:secret"); the user is unknown to the redactor,
    so the secret sits at any of three alignments. What is left must not decode to the
    secret: at most one base64 group (4 characters) past the user's own encoding."""
    with isolated_secrets(empty=True):  # this secret alone (see isolated_secrets)
        register_secret(secret)
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            token = encode(f"{user}:{secret}".encode()).decode()
            out = redact(f"Authorization: {token}")
            assert token not in out
            assert MASK in out
            head, _, tail = out.removeprefix("Authorization: ").partition(MASK)
            assert len(head) <= len(encode(f"{user}:".encode()).decode().rstrip("=")) + 4
            assert secret not in _decode(head) and secret not in _decode(tail.split(MASK)[-1])


def _decode(piece: str) -> str:
    try:
        return base64.b64decode(piece + "==", validate=False).decode("utf-8", "replace")
    except ValueError:
        return ""


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(secret=SECRET)
def test_a_secret_in_a_vendor_json_answer_never_reaches_an_error_or_the_terminal(
    secret: str,
) -> None:
    """The 401 that echoes the token, JSON-escaped, through every path a message takes:
    the error built from it, the trimmed body, and the terminal line."""
    with isolated_secrets(empty=True):  # this secret alone (see isolated_secrets)
        register_secret(secret)
        body = json.dumps({"error": "invalid token", "token": secret}).replace("/", "\\/")
        error = UndertowError(f"not authorised: POST /hook -> 401: {body}")
        shown = [str(error), trim(body), plain(body), trim(body, 40)]
    for text in shown:
        for name, encode in ENCODINGS.items():
            assert encode(secret) not in text, (name, text)


def _every_pattern(text: str) -> str:
    """The credential patterns applied unconditionally (what ``redact`` did before it
    skipped the patterns a text cannot match)."""
    for regex, repl in redact_module._PATTERNS:
        text = regex.sub(repl, text)
    return text


CREDENTIALS = [
    "Authorization: Bearer abcd1234efgh",
    "BASIC dXNlcjpwYXNz",
    "token  zzzz9999",
    "https://ada:hunter2@db.example.com/x",
    "/v1?API-KEY=k1k1&access_token=t2t2&Signature=s3&pwd=p4",
    '{"Password": "p\\"q", "x-api-key":"k", "client_secret": "c"}',
    # characters re.IGNORECASE matches to ASCII letters: Kelvin sign, dotless and dotted i,
    # long s
    "api_\u212aey=kelvin1",
    "ap\u0131key=dotless1",
    "ap\u0130key=dotted1",
    "pa\u017fsword=longs1",
    '{"\u017fecret": "longs2"}',
    "b\u0130arer-free text: bearer xyzw1234",
]


@pytest.mark.parametrize("credential", CREDENTIALS)
def test_skipping_patterns_a_text_cannot_match_changes_nothing(credential: str) -> None:
    body = orjson.dumps({"records": [{"id": i, "email": f"u{i}@x.com"} for i in range(2000)]})
    with isolated_secrets(empty=True):  # the patterns alone, whatever ran before
        for text in (credential, f"{body.decode()[:30000]} {credential} {body.decode()[:30000]}"):
            assert redact(text) == _every_pattern(text)
        assert redact(credential) != credential
        assert redact(body.decode()) == body.decode()  # a body with no credential, untouched
