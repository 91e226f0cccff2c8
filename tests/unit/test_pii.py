"""PII normalisation and hashing (``normalize:`` / ``hash:``) with fixed vectors from the
vendors' documentation: input, normalised value, SHA-256 hex.

Sources of the vectors (the hash is the one the page publishes for that normalised value):

* Meta, Conversions API "Customer Information Parameters" and its example payload (the
  same rules as Custom Audiences' "Hashing and Normalizing Data"): ``john_smith@gmail.com``,
  ``12345678901`` (a phone with its country code, no ``+``), ``john``, ``smith``, ``ca``,
  ``us``, ``f``.
* TikTok, "List of supported IDs and formats for a customer file": ``janedoe@gmail.com``
  (Google's Gmail rule, dots removed from the local part, gives the same normalised text).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import polars as pl
import pytest

from undertow.config.models import SyncConfig
from undertow.errors import MappingError
from undertow.pipeline.map import compile_mapping

pytestmark = pytest.mark.unit


def mapped(
    values: dict[str, list[Any]], mappings: dict[str, Any], variant: str | None = None
) -> tuple[list[dict[str, Any]], dict[int, str]]:
    frame = pl.DataFrame(values)
    sync = SyncConfig.model_validate({"model": "m", "destination": "ads", "mappings": mappings})
    result = compile_mapping("to_ads", sync, frame.schema, pii_variant=variant).map(frame)
    return [orjson.loads(p) for p in result.payloads], dict(result.rejected)


def one(value: Any, normalize: str, variant: str = "facebook", **extra: Any) -> Any:
    rows, rejected = mapped(
        {"v": [value]}, {"out": {"column": "v", "normalize": normalize, **extra}}, variant
    )
    assert not rejected, rejected
    return rows[0]["out"]


# (normaliser, variant, input, normalised, documented SHA-256 of the normalised value)
VECTORS = [
    ("email", "facebook", " John_Smith@gmail.com ", "john_smith@gmail.com",
     "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f"),
    ("phone", "facebook", "+1 (234) 567-8901", "12345678901",
     "254aa248acb47dd654ca3ea53f48c2c26d641d23d7e2e93a1ec56258df7674c4"),
    ("first_name", "facebook", "John", "john",
     "96d9632f363564cc3032521409cf22a852f2032eec099ed5967c0d000cec607a"),
    ("last_name", "facebook", " Smith.", "smith",
     "6627835f988e2c5e50533d491163072d3f4f41f5c8b04630150debb3722ca2dd"),
    ("state", "facebook", "California", "ca",
     "6959097001d10501ac7d54c0bdb8db61420f658f2922cc26e46d536119a31126"),
    ("country", "facebook", "United States", "us",
     "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621"),
    ("gender", "facebook", "Female", "f",
     "252f10c83610ebca1a059c0bae8255eba2f95be4d1d7bcfa89d7248a82d9f111"),
    ("email", "google", " Jane.Doe@GMAIL.com", "janedoe@gmail.com",
     "d6117306485ed0e50afab3ac871e98f81699151f30281527d63ff5f233656c69"),
]  # fmt: skip


@pytest.mark.parametrize(("normalize", "variant", "raw", "normal", "digest"), VECTORS)
def test_documented_vectors(
    normalize: str, variant: str, raw: str, normal: str, digest: str
) -> None:
    assert one(raw, normalize, variant) == normal
    assert hashlib.sha256(normal.encode()).hexdigest() == digest
    assert one(raw, normalize, variant, hash="sha256") == digest


@pytest.mark.parametrize(
    ("normalize", "variant", "raw", "normal", "extra"),
    [
        ("phone", "facebook", "(650) 555-1212", "16505551212", {"country": "US"}),
        ("phone", "google", "(650) 555-1212", "+16505551212", {"country": "US"}),
        ("phone", "google", "020 7183 8750", "+442071838750", {"country": "GB"}),
        ("phone", "facebook", "+44 (0)20 7183 8750", "442071838750", {}),
        ("phone", "facebook", "0044 20 7183 8750", "442071838750", {}),
        ("zip", "facebook", "94025-1234", "94025", {}),
        ("zip", "facebook", "SW1A 1AA", "sw1a1aa", {}),
        ("zip", "google", " SW1A 1AA ", "SW1A 1AA", {}),
        ("city", "facebook", "Menlo Park", "menlopark", {}),
        ("state", "facebook", "N.Y.", "ny", {}),
        ("country", "google", "gb", "GB", {}),
        ("gender", "facebook", "M", "m", {}),
        ("date_of_birth", "facebook", "1991-05-26", "19910526", {}),
        ("birth_year", "facebook", "1991-05-26", "1991", {}),
        ("birth_month", "facebook", "5", "05", {}),
        ("birth_day", "facebook", "1991-05-26", "26", {}),
        ("first_name", "facebook", "José", "josé", {}),
        ("first_name", "google", " Mary-Jane ", "mary-jane", {}),
        ("external_id", "facebook", " CRM-0042 ", "CRM-0042", {}),
        ("mobile_ad_id", "facebook", "AECE52E7-03EE-455A-B3C4-E57283966239",
         "aece52e7-03ee-455a-b3c4-e57283966239", {}),
    ],
)  # fmt: skip
def test_rules_per_vendor(
    normalize: str, variant: str, raw: str, normal: str, extra: dict[str, Any]
) -> None:
    assert one(raw, normalize, variant, **extra) == normal


def test_date_columns_and_the_destination_variant() -> None:
    import datetime as dt

    rows, _ = mapped(
        {"d": [dt.date(1991, 5, 26)], "p": ["+1 650 555 1212"]},
        {"DOB": {"column": "d", "normalize": "dob"}, "PH": {"column": "p", "normalize": "phone"}},
        variant="google",
    )
    assert rows == [{"DOB": "19910526", "PH": "+16505551212"}]


def test_values_that_cannot_be_normalised_reject_their_row_with_the_reason() -> None:
    rows, rejected = mapped(
        {
            "id": [1, 2, 3, 4],
            "phone": ["+1 650 555 1212", "call me", "650 555 1212", "+1 650 555 1212"],
            "email": ["a@b.co", "a@b.co", "a@b.co", "nobody"],
        },
        {
            "id": "id",
            "PHONE": {"column": "phone", "normalize": "phone", "hash": "sha256"},
            "EMAIL": {"column": "email", "normalize": "email", "hash": "sha256"},
        },
    )
    assert [r["id"] for r in rows] == [1]
    assert rejected[1] == "field 'PHONE': column 'phone' has no digits"
    assert "has no country code" in rejected[2] and "`country:`" in rejected[2]
    assert rejected[3] == "field 'EMAIL': column 'email' is not an email address (no @)"
    assert "nobody" not in rejected[3]  # a reason never quotes the personal data


def test_an_already_hashed_value_is_not_hashed_twice_and_nulls_stay_null() -> None:
    digest = hashlib.sha256(b"ann@example.com").hexdigest()
    rows, rejected = mapped(
        {"email": [digest.upper(), "Ann@Example.com ", None]},
        {"EMAIL": {"column": "email", "normalize": "email", "hash": "sha256"}},
    )
    assert not rejected
    assert [r["EMAIL"] for r in rows] == [digest, digest, None]


def test_unknown_normaliser_hash_or_variant_names_sync_and_field() -> None:
    frame = {"email": ["a@b.co"]}
    with pytest.raises(MappingError) as caught:
        mapped(frame, {"EMAIL": {"column": "email", "normalize": "emial"}})
    message = str(caught.value)
    assert "sync 'to_ads': mappings.EMAIL: unknown normaliser 'emial'" in message
    assert "did you mean 'email'?" in message
    with pytest.raises(MappingError, match=r"mappings\.EMAIL: unknown hash 'sha265'.*'sha256'"):
        mapped(frame, {"EMAIL": {"column": "email", "hash": "sha265"}})
    with pytest.raises(MappingError, match=r"unknown variant 'facebok'.*did you mean 'facebook'"):
        mapped(frame, {"EMAIL": {"column": "email", "normalize": "email", "variant": "facebok"}})
    with pytest.raises(MappingError, match=r"`cast` does not combine with `normalize`"):
        mapped(frame, {"EMAIL": {"column": "email", "normalize": "email", "cast": "string"}})
    with pytest.raises(MappingError, match=r"`country: XX` is not an ISO 3166-1 alpha-2"):
        mapped(frame, {"P": {"column": "email", "normalize": "phone", "country": "XX"}})
