"""The kit's form bodies (``destinations/kit/form.py``) read and write as urllib does."""

from __future__ import annotations

from urllib.parse import parse_qsl, quote_plus, unquote_to_bytes, urlencode

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from undertow.destinations.kit import form

TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    ["", "%", "%%", "a%2", "%zz", "+", "=", "a=b=c", "%3D", "%3d", "é€😀", "\t\r\n", "%0A"]
)
RAW = st.binary(max_size=30) | st.lists(
    st.sampled_from([b"%", b"=", b"+", b"&", b"2", b"d", b"F", b"z", b"\n", b"\r", b" ", b"\xc3"]),
    max_size=16,
).map(b"".join)


@given(TEXT)
@example('[{"user_id":"a@b.com","user_properties":{"$set":{"plan":"pro 50% off"}}}]')
def test_quote_plus_is_urllibs(text: str) -> None:
    assert form.quote_plus(text) == quote_plus(text).encode()


@given(st.dictionaries(TEXT, TEXT | st.lists(TEXT, max_size=3), max_size=4))
def test_encode_is_urlencode_doseq(fields: dict[str, object]) -> None:
    assert form.encode(fields) == urlencode(fields, doseq=True).encode()


@settings(max_examples=500)
@given(RAW)
@example(b"%")
@example(b"ab%")
@example(b"%3D%41")
@example(b"a%2")
@example(b"%25%32%35")
def test_unquote_plus_is_urllibs(raw: bytes) -> None:
    expected = unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8", "replace")
    assert form.unquote_plus(raw) == expected


@settings(max_examples=300)
@given(st.lists(st.tuples(TEXT, TEXT), max_size=4))
def test_decode_reads_what_urlencode_wrote(pairs: list[tuple[str, str]]) -> None:
    body = urlencode(pairs)
    assert form.decode(body.encode()) == parse_qsl(body, keep_blank_values=True)


@given(RAW)
def test_decode_splits_and_unquotes_any_bytes(raw: bytes) -> None:
    def reference(part: bytes) -> str:
        return unquote_to_bytes(part.replace(b"+", b" ")).decode("utf-8", "replace")

    pairs = (p.partition(b"=") for p in raw.split(b"&") if p)
    assert form.decode(raw) == [(reference(k), reference(v)) for k, _, v in pairs]


def test_a_batch_of_identifications_round_trips() -> None:
    updates = [
        {"user_id": f"user{i}@example.com", "user_properties": {"$set": {"name": "Zoë 100%"}}}
        for i in range(2000)
    ]
    body = form.encode({"api_key": "k", "identification": orjson.dumps(updates)})
    assert (
        body
        == urlencode({"api_key": "k", "identification": orjson.dumps(updates).decode()}).encode()
    )
    decoded = dict(form.decode(body))
    assert orjson.loads(decoded["identification"]) == updates
