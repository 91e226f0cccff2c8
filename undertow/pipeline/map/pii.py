"""PII normalisation and hashing for ad audiences, as Polars expressions.

A mapped field may say ``{column: email, normalize: email, hash: sha256}``: the value is
normalised the way the ad platform documents (trimmed, lower-cased, a phone in E.164, a
country as its ISO 3166-1 alpha-2 code, ...) and then hashed with SHA-256 (lower-case hex),
so the platform can match it against its own hashes. ``docs/mapping.md`` has the user's
view and the table of rules per vendor.

Invariants:

* Columnar: every normaliser is a Polars expression over the whole column, except phone
  numbers, whose country rules (trunk prefixes, lengths) live in ``phonenumbers``' metadata:
  those are parsed once per *distinct* value. SHA-256 runs in DuckDB's C++ over the Arrow
  column (Polars has no cryptographic hash).
* A value that cannot be normalised rejects its row: each normaliser yields either the
  normalised text or ``"\\x00"`` + the reason (:data:`BAD`), which the map stage turns into
  ``field 'PHONE': column 'phone' has no digits``. The reason never quotes the value: it is
  personal data.
* A value that already is a SHA-256 hex digest (64 hex characters) is kept as it is
  (lower-cased): neither normalised nor hashed again.
* NULL stays NULL (the sync's ``nulls`` setting decides whether it is sent).

Vendors differ (``variant``): Facebook wants phone digits without the ``+`` and every key
hashed (country and zip too, lower-case); Google wants E.164 with the ``+``, dots removed from
Gmail local parts, and the country and postal code in clear (upper-case country). The
destination declares its variant (``Destination.pii_variant``); a field may name one.
"""

from __future__ import annotations

import datetime as _dt
import threading
from dataclasses import dataclass

import duckdb
import polars as pl

_local = threading.local()

BAD = "\x00"
"""Prefix of a normaliser's output that is a reason for rejecting the row, not a value."""

HASHES = ("sha256",)
VARIANTS = ("facebook", "google")
NORMALIZERS = (
    "email",
    "phone",
    "first_name",
    "last_name",
    "city",
    "state",
    "zip",
    "country",
    "gender",
    "date_of_birth",
    "birth_year",
    "birth_month",
    "birth_day",
    "external_id",
    "mobile_ad_id",
)
ALIASES = {"postcode": "zip", "postal_code": "zip", "dob": "date_of_birth", "madid": "mobile_ad_id"}

SHA256_HEX = r"^[0-9a-f]{64}$"

US_STATES = {
    "alabama": "al", "alaska": "ak", "arizona": "az", "arkansas": "ar", "california": "ca",
    "colorado": "co", "connecticut": "ct", "delaware": "de", "district of columbia": "dc",
    "florida": "fl", "georgia": "ga", "hawaii": "hi", "idaho": "id", "illinois": "il",
    "indiana": "in", "iowa": "ia", "kansas": "ks", "kentucky": "ky", "louisiana": "la",
    "maine": "me", "maryland": "md", "massachusetts": "ma", "michigan": "mi",
    "minnesota": "mn", "mississippi": "ms", "missouri": "mo", "montana": "mt",
    "nebraska": "ne", "nevada": "nv", "new hampshire": "nh", "new jersey": "nj",
    "new mexico": "nm", "new york": "ny", "north carolina": "nc", "north dakota": "nd",
    "ohio": "oh", "oklahoma": "ok", "oregon": "or", "pennsylvania": "pa",
    "rhode island": "ri", "south carolina": "sc", "south dakota": "sd", "tennessee": "tn",
    "texas": "tx", "utah": "ut", "vermont": "vt", "virginia": "va", "washington": "wa",
    "west virginia": "wv", "wisconsin": "wi", "wyoming": "wy", "puerto rico": "pr",
    "guam": "gu", "american samoa": "as", "virgin islands": "vi",
    "northern mariana islands": "mp",
}  # fmt: skip
"""Facebook: "use the 2-character ANSI abbreviation code" for US states."""

COUNTRY_ALIASES = {
    "usa": "us", "unitedstates": "us", "unitedstatesofamerica": "us", "america": "us",
    "uk": "gb", "unitedkingdom": "gb", "greatbritain": "gb", "england": "gb",
    "scotland": "gb", "wales": "gb", "northernireland": "gb", "deutschland": "de",
    "germany": "de", "france": "fr", "canada": "ca", "australia": "au", "spain": "es",
    "italy": "it", "netherlands": "nl", "brazil": "br", "mexico": "mx", "india": "in",
    "japan": "jp", "ireland": "ie",
}  # fmt: skip
"""A few common country names; any other value must already be an alpha-2 code."""

_NO_PHONE_REGION = frozenset({"AQ", "BV", "GS", "HM", "PN", "TF", "UM"})
"""ISO 3166-1 alpha-2 codes with no telephone numbering plan of their own (not in
phonenumbers' region list, which holds every other code)."""


def iso_countries() -> frozenset[str]:
    """Every ISO 3166-1 alpha-2 code, lower-case (phonenumbers' regions plus the few
    territories without a numbering plan; ``001``-style non-geographic entities dropped)."""
    import phonenumbers

    regions = {r for r in phonenumbers.SUPPORTED_REGIONS if len(r) == 2 and r.isalpha()}
    regions -= {"AC", "TA", "XK"}  # Ascension, Tristan da Cunha, Kosovo: not ISO 3166-1 codes
    return frozenset(r.lower() for r in regions | _NO_PHONE_REGION)


@dataclass(frozen=True)
class Pii:
    """What a field asks for: a normaliser, a hash, the vendor variant, a default country."""

    normalize: str | None
    hash: str | None
    variant: str
    country: str | None = None


def bad(reason: str) -> pl.Expr:
    return pl.lit(BAD + reason, dtype=pl.String)


def text_of(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    if isinstance(dtype, pl.String):
        return expr
    if isinstance(dtype, pl.Datetime | pl.Date):
        return expr.dt.strftime("%Y-%m-%d")
    return expr.cast(pl.String)


def apply(pii: Pii, frame: pl.DataFrame, column: str, alias: str) -> pl.DataFrame:
    """``frame`` with ``alias``: the column's values normalised and hashed, or ``BAD`` +
    reason. Built in steps (normalise, then hash), each step one column-wise pass."""
    dtype = frame.schema[column]
    expr = pl.col(column)
    clean = text_of(expr, dtype).str.strip_chars()
    if pii.normalize is None:
        out = clean
    elif isinstance(dtype, pl.Date | pl.Datetime) and pii.normalize.startswith(("date", "birth")):
        out = _dates(pii.normalize, expr.cast(pl.Date))
    else:
        out = pl.when(clean == "").then(bad("is empty")).otherwise(normalizer(pii, clean))
    out = pl.when(expr.is_not_null()).then(out)  # NULL stays NULL
    lower = clean.str.to_lowercase()
    step = frame.with_columns(
        pl.when(lower.str.contains(SHA256_HEX)).then(lower).alias(alias + "_hashed"),
        out.alias(alias),
    )
    if pii.hash == "sha256":
        value = pl.col(alias)
        good = value.is_not_null() & ~value.str.starts_with(BAD)
        step = step.with_columns(pl.when(good).then(sha256(value)).otherwise(value).alias(alias))
    elif pii.hash is not None:  # pragma: no cover - the compiler refuses other names
        raise ValueError(pii.hash)
    return step.with_columns(pl.coalesce(alias + "_hashed", alias).alias(alias)).drop(
        alias + "_hashed"
    )


def sha256(expr: pl.Expr) -> pl.Expr:
    """SHA-256 of each value, lower-case hex, computed by DuckDB over the Arrow column."""
    return expr.map_batches(_sha256_batch, return_dtype=pl.String)


def _sha256_batch(series: pl.Series) -> pl.Series:
    values = series.cast(pl.String).to_frame("v").to_arrow()  # noqa: F841 - read by DuckDB
    con = getattr(_local, "con", None)
    if con is None:  # one in-memory connection per thread (connecting costs ~0.1 s)
        con = _local.con = duckdb.connect()
    hashed = con.sql("SELECT sha256(v) AS h FROM values").to_arrow_table()
    return pl.Series(series.name, hashed.column("h"), dtype=pl.String)


def normalizer(pii: Pii, clean: pl.Expr) -> pl.Expr:
    name, fb = pii.normalize, pii.variant == "facebook"
    lower = clean.str.to_lowercase()
    if name == "email":
        return _email(lower, google=not fb)
    if name == "phone":
        return _phone(clean, pii.country, plus=not fb)
    if name in ("first_name", "last_name"):
        if fb:  # "a-z only, lower-case, no punctuation; special characters in UTF-8"
            out = lower.str.replace_all(r"[\p{P}\p{S}\d]", "")
            return _nonempty(out.str.strip_chars(), "has no letters")
        return lower
    if name == "city":
        if fb:  # "a-z only, no punctuation, no special characters, no whitespace"
            return _nonempty(lower.str.replace_all(r"[\p{P}\p{S}\d\s]", ""), "has no letters")
        return clean
    if name == "state":
        spaced = lower.str.replace_all(r"[\p{P}\p{S}\d]", "").str.strip_chars()
        spaced = spaced.str.replace_all(r"\s+", " ")
        out = spaced.replace(US_STATES).str.replace_all(r"\s", "")
        return _nonempty(out, "has no letters")
    if name == "zip":
        if fb:  # "lower-case, no white space; US: the first 5 digits" (the SDK cuts at '-')
            out = lower.str.replace_all(r"\s", "").str.split("-").list.first()
            out = pl.when(out.str.contains(r"^\d{9}$")).then(out.str.slice(0, 5)).otherwise(out)
            return _nonempty(out, "has no characters")
        return clean
    if name == "country":
        letters = lower.str.replace_all(r"[^a-z]", "")
        code = letters.replace(COUNTRY_ALIASES)
        known = code.is_in(sorted(iso_countries()))
        out = pl.when(known).then(code if fb else code.str.to_uppercase())
        return out.otherwise(bad("is not an ISO 3166-1 alpha-2 country code (e.g. us, gb)"))
    if name == "gender":
        word = lower.str.replace_all(r"[^a-z]", "")
        return (
            pl.when(word.is_in(["m", "male", "man"]))
            .then(pl.lit("m"))
            .when(word.is_in(["f", "female", "woman"]))
            .then(pl.lit("f"))
            .otherwise(bad("is not a gender Facebook knows (m or f)"))
        )
    if name in ("date_of_birth", "birth_year", "birth_month", "birth_day"):
        return _date_text(name, clean)
    if name == "external_id":
        return clean
    if name == "mobile_ad_id":  # Facebook MADID: "all lower-case, keep hyphens"
        return lower
    raise ValueError(name)  # pragma: no cover - the compiler refuses unknown names


def _nonempty(expr: pl.Expr, reason: str) -> pl.Expr:
    return pl.when(expr == "").then(bad(reason)).otherwise(expr)


def _email(lower: pl.Expr, *, google: bool) -> pl.Expr:
    ok = lower.str.contains(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    out = lower
    if google:  # Google: remove the periods of a gmail.com / googlemail.com local part
        parts = lower.str.split_exact("@", 1)
        local, domain = parts.struct.field("field_0"), parts.struct.field("field_1")
        gmail = domain.is_in(["gmail.com", "googlemail.com"])
        out = (
            pl.when(gmail)
            .then(
                pl.concat_str([local.str.replace_all(".", "", literal=True), domain], separator="@")
            )
            .otherwise(lower)
        )
    why = pl.when(lower.str.contains("@", literal=True)).then(
        bad("is not an email address (name@domain.tld)")
    )
    return pl.when(ok).then(out).otherwise(why.otherwise(bad("is not an email address (no @)")))


# -- phones ---------------------------------------------------------------------------------


def _phone(clean: pl.Expr, country: str | None, *, plus: bool) -> pl.Expr:
    """E.164 (``+14155552671``; Facebook: ``14155552671``). A number written with its
    country code (``+``, or ``00``) is read as such; any other is read in ``country``."""
    return clean.map_batches(
        lambda s: _phones(s, country, plus), return_dtype=pl.String, is_elementwise=True
    )


def _phones(series: pl.Series, country: str | None, plus: bool) -> pl.Series:
    distinct = series.drop_nulls().unique()
    table = {value: _one_phone(value, country, plus) for value in distinct.to_list()}
    if not table:
        return pl.Series(series.name, [None] * len(series), dtype=pl.String)
    return series.replace_strict(table, default=None, return_dtype=pl.String)


def _one_phone(text: str, country: str | None, plus: bool) -> str:
    import phonenumbers

    digits = "".join(c for c in text if c.isdigit())
    if not digits:
        return BAD + "has no digits"
    written = text.strip()
    inferred = country is None and not written.startswith("+")
    if inferred:
        # no default country: the number carries its own code (Facebook's form "16505551212"),
        # after an international prefix 00 if there is one; only a valid number is read so
        written = "+" + digits.removeprefix("00")
    try:
        parsed = phonenumbers.parse(written, None if written.startswith("+") else country)
    except phonenumbers.NumberParseException as exc:
        if exc.error_type == phonenumbers.NumberParseException.INVALID_COUNTRY_CODE:
            if country is None:
                return BAD + (
                    "has no country code (write it +<code>..., or set `country:` on the field)"
                )
            return BAD + "has no valid country code"
        return BAD + "is not a phone number"
    if inferred and not phonenumbers.is_valid_number(parsed):
        return BAD + "has no country code (write it +<code>..., or set `country:` on the field)"
    if not phonenumbers.is_possible_number(parsed):
        return BAD + "is not a possible phone number for its country (wrong length)"
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return e164 if plus else e164[1:]


# -- dates ----------------------------------------------------------------------------------

_FORMATS = {
    "date_of_birth": "%Y%m%d",
    "birth_year": "%Y",
    "birth_month": "%m",
    "birth_day": "%d",
}


def _dates(name: str, day: pl.Expr) -> pl.Expr:
    year = day.dt.year()
    this_year = _dt.date.today().year
    ok = (year >= 1900) & (year <= this_year)
    return (
        pl.when(ok)
        .then(day.dt.strftime(_FORMATS[name]))
        .otherwise(bad(f"is not a birth date between 1900 and {this_year}"))
    )


def _date_text(name: str, clean: pl.Expr) -> pl.Expr:
    day = pl.coalesce(
        [
            clean.str.to_date("%Y-%m-%d", strict=False),
            clean.str.to_date("%Y%m%d", strict=False),
            clean.str.to_date("%Y/%m/%d", strict=False),
        ]
    )
    parsed = _dates(name, day)
    if name == "date_of_birth":
        return pl.when(day.is_null()).then(bad("is not a date (YYYY-MM-DD)")).otherwise(parsed)
    digits = clean.str.replace_all(r"\D", "")
    width = 4 if name == "birth_year" else 2
    number = digits.cast(pl.Int32, strict=False)
    if name == "birth_year":
        this_year = _dt.date.today().year
        valid = (number >= 1900) & (number <= this_year) & (digits.str.len_chars() == 4)
        what = f"is not a birth year between 1900 and {this_year}"
    else:
        top = 12 if name == "birth_month" else 31
        valid = (number >= 1) & (number <= top) & (digits.str.len_chars() <= 2)
        what = f"is not a {'month (1-12)' if top == 12 else 'day of the month (1-31)'}"
    short = digits.str.zfill(width)
    return (
        pl.when(day.is_not_null())
        .then(parsed)
        .when(valid.fill_null(False))
        .then(short)
        .otherwise(bad(what))
    )
