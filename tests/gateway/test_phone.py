"""Phone normalization to strict E.164, and the masked phone/email hints shown in place of them."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import ValidationError
from gateway.messaging.phone import mask_email, mask_phone, normalize_e164

E164 = re.compile(r"\+[1-9][0-9]{7,14}")


@pytest.mark.parametrize(
    ("raw", "e164"),
    [
        ("+14155550123", "+14155550123"),
        ("+1 415 555 0123", "+14155550123"),
        ("+1 (415) 555-0123", "+14155550123"),
        ("+1.415.555.0123", "+14155550123"),
        ("(+44) 20 7946 0958", "+442079460958"),
        ("  +33 6 12 34 56 78  ", "+33612345678"),
        ("+12345678", "+12345678"),  # 8 digits: the shortest accepted
        ("+123456789012345", "+123456789012345"),  # 15 digits: the E.164 maximum
    ],
)
def test_formatted_number_is_normalized(raw: str, e164: str) -> None:
    assert normalize_e164(raw) == e164


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "14155550123",  # no +
        "004414155550123",  # international prefix instead of +
        "+1234567",  # 7 digits
        "+1234567890123456",  # 16 digits
        "+0441234567",  # country codes never start with 0
        "+1 415 CALL NOW",
        "+1415555012a",
        "+1/415/555/0123",
        "+1 415 555 0123 ext 9",
        "++14155550123",
        "1+4155550123",
        "+",
        "+１４１５５５５０１２３",  # full-width digits
        "+١٤١٥٥٥٥٠١٢٣",  # Arabic-Indic digits
        "+1415555012³",  # superscript digit: isdigit() but not a digit
    ],
)
def test_anything_not_strict_e164_is_rejected(raw: str) -> None:
    with pytest.raises(ValidationError) as err:
        normalize_e164(raw)
    assert err.value.field == "phone"


def test_error_names_the_field_given() -> None:
    with pytest.raises(ValidationError) as err:
        normalize_e164("555-0123", field="to.phone")
    assert err.value.field == "to.phone"
    assert str(err.value).startswith("to.phone: ")


def test_error_message_does_not_repeat_the_number() -> None:
    with pytest.raises(ValidationError) as err:
        normalize_e164("+1 415 555 01234567890")
    assert "415" not in str(err.value)
    assert "555" not in err.value.message


def test_very_long_input_is_rejected_without_work() -> None:
    with pytest.raises(ValidationError):
        normalize_e164("+1" + " " * 100_000 + "4155550123")


@settings(max_examples=500)
@given(st.text())
def test_arbitrary_text_is_either_e164_or_a_validation_error(raw: str) -> None:
    try:
        result = normalize_e164(raw)
    except ValidationError:
        return
    assert E164.fullmatch(result)
    assert normalize_e164(result) == result


@given(st.from_regex(E164, fullmatch=True), st.sampled_from([" ", "-", ".", ""]))
def test_every_e164_number_round_trips_through_formatting(e164: str, sep: str) -> None:
    digits = e164[1:]
    formatted = "+" + digits[:2] + sep + digits[2:5] + sep + digits[5:]
    assert normalize_e164(formatted) == e164


# --- hints -----------------------------------------------------------------------------------


def test_phone_hint_keeps_first_digit_and_last_two() -> None:
    assert mask_phone("+15551234567") == "+1********67"
    assert mask_phone("+442079460958") == "+4*********58"
    assert mask_phone("+12345678") == "+1*****78"


@given(st.from_regex(E164, fullmatch=True))
def test_phone_hint_reveals_at_most_three_digits(e164: str) -> None:
    hint = mask_phone(e164)
    assert len(hint) == len(e164)
    assert sum(c.isdigit() for c in hint) == 3
    assert hint[:2] == e164[:2] and hint[-2:] == e164[-2:]


@pytest.mark.parametrize("bad", ["", "+", "555-0123", "+1abc4567890", "+1234567", "hello"])
def test_phone_hint_of_malformed_value_echoes_nothing(bad: str) -> None:
    assert mask_phone(bad) == "[phone]"


@pytest.mark.parametrize(
    ("addr", "hint"),
    [
        ("john@example.com", "j***@e***.com"),
        ("Jane.Doe+clinic@mail.example.org", "J***@m***.org"),
        ("a@b.co.uk", "a***@b***.uk"),
        ("x@localhost", "x***@l***"),
        ('"odd@local"@example.com', '"***@e***.com'),
    ],
)
def test_email_hint_keeps_first_letters_and_tld(addr: str, hint: str) -> None:
    assert mask_email(addr) == hint


@pytest.mark.parametrize("bad", ["", "no-at-sign", "@example.com", "john@"])
def test_email_hint_of_malformed_value_echoes_nothing(bad: str) -> None:
    assert mask_email(bad) == "[email]"


@given(st.emails())
def test_email_hint_shows_only_first_letters_and_tld(addr: str) -> None:
    local, _, domain = addr.rpartition("@")
    name, _, tld = domain.rpartition(".")
    assert mask_email(addr) == f"{local[0]}***@{name[0]}***.{tld}"
