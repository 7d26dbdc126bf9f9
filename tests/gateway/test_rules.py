"""The core decisions (gateway/rules/): each one a table of inputs and the answer it must give."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.errors import SensitiveContent
from gateway.rules.may_send import may_send
from gateway.rules.pin import pin_for_link
from gateway.rules.reply_route import Route, reply_route
from gateway.rules.secure import (
    SecureDecision,
    check_standard_content,
    decide_inbound,
    decide_outbound,
    describe,
)
from gateway.tenancy.orgs import OrgPolicy

DEFAULT_SECURE = OrgPolicy(secure_default=True)
DEFAULT_STANDARD = OrgPolicy(secure_default=False)
FORCED = OrgPolicy(secure_default=False, secure_forced=True)


@pytest.mark.parametrize(("policy", "message", "thread", "step", "template", "expected"), [
    # The org's always-secure policy beats everything, an explicit standard choice included.
    (FORCED, False, False, False, False, SecureDecision(True, "org_forced")),
    (FORCED, None, False, None, None, SecureDecision(True, "org_forced")),
    # A secure thread stays secure whatever the message asks.
    (DEFAULT_STANDARD, False, True, False, False, SecureDecision(True, "thread")),
    # Then the sender's own choice, both ways.
    (DEFAULT_SECURE, False, False, True, True, SecureDecision(False, "message")),
    (DEFAULT_STANDARD, True, False, False, False, SecureDecision(True, "message")),
    # Then a campaign step, then a template.
    (DEFAULT_STANDARD, None, False, True, False, SecureDecision(True, "campaign_step")),
    (DEFAULT_SECURE, None, False, None, False, SecureDecision(False, "template")),
    # Nothing chosen: the org default.
    (DEFAULT_SECURE, None, False, None, None, SecureDecision(True, "org_default")),
    (DEFAULT_STANDARD, None, False, None, None, SecureDecision(False, "org_default")),
])
def test_outbound_secure_precedence_and_source(policy, message, thread, step, template, expected):
    assert decide_outbound(policy, message=message, thread_secure=thread, campaign_step=step,
                           template=template) == expected


@pytest.mark.parametrize(("policy", "thread", "sensitive", "expected"), [
    (FORCED, False, False, SecureDecision(True, "org_forced")),
    (DEFAULT_STANDARD, True, True, SecureDecision(True, "thread")),
    (DEFAULT_STANDARD, False, True, SecureDecision(True, "sensitive_reply")),
    (DEFAULT_SECURE, False, False, SecureDecision(False, "thread")),
])
def test_inbound_secure_precedence_and_source(policy, thread, sensitive, expected):
    assert decide_inbound(policy, thread_secure=thread, sensitive=sensitive) == expected


def test_standard_text_that_looks_sensitive_is_refused_unless_confirmed_or_secure():
    text = "SSN 123-45-6789"
    standard = decide_outbound(DEFAULT_STANDARD, message=None, thread_secure=False)
    with pytest.raises(SensitiveContent) as err:
        check_standard_content(text, standard, DEFAULT_STANDARD, allow_sensitive=False)
    assert err.value.kinds == ["ssn"]
    check_standard_content(text, standard, DEFAULT_STANDARD, allow_sensitive=True)
    check_standard_content(text, decide_outbound(FORCED, message=False, thread_secure=False), FORCED,
                           allow_sensitive=False)
    terms = OrgPolicy(secure_default=False, sensitive_terms=("biopsy",))
    with pytest.raises(SensitiveContent):
        check_standard_content("the biopsy is booked", standard, terms, allow_sensitive=False)


@pytest.mark.parametrize(("secure", "source", "words"), [
    (True, "org_default", "secure: organization default"),
    (True, "org_forced", "secure: always-secure policy"),
    (True, "thread", "secure: thread is secure"),
    (True, "sensitive_reply", "secure: sensitive content in reply"),
    (False, "message", "standard: chosen by sender"),
    (False, "org_default", "standard: organization default"),
    (False, "thread", "standard: thread is standard"),
    (True, None, None),  # stored before the source was recorded: nothing special
    (True, "garbage", None),
])
def test_secure_source_in_plain_words(secure, source, words):
    assert describe(secure, source) == words


@pytest.mark.parametrize(("given", "thread", "contact", "required", "source", "asks", "on_link", "missing"), [
    ("h-given", "h-thread", "h-contact", False, "thread", "h-given", "h-given", False),
    (None, "h-thread", "h-contact", True, "thread", "h-thread", None, False),
    (None, None, "h-contact", True, "contact", "h-contact", None, False),
    (None, None, None, False, "none", None, None, False),
    (None, None, None, True, "none", None, None, True),
])
def test_which_pin_a_link_asks_for(given, thread, contact, required, source, asks, on_link, missing):
    pin = pin_for_link(given_pin_hash=given, thread_pin_hash=thread, contact_pin_hash=contact, pin_required=required)
    assert (pin.source, pin.pin_hash, pin.link_pin_hash, pin.required, pin.missing) == (
        source, asks, on_link, required, missing)


@dataclass
class Person:
    """A contact as the rules see it."""

    has_phone: bool = True
    has_email: bool = True
    last_channel: str | None = None
    out: tuple[str, ...] = ()
    consent: dict[str, Any] = field(default_factory=dict)

    def opted_out(self, channel: str) -> bool:
        return channel in self.out


@pytest.mark.parametrize(("person", "thread_channel", "expected"), [
    (Person(last_channel="email"), "sms", Route("sms", "thread")),
    # Opted out of the thread's channel: the last used one.
    (Person(last_channel="email", out=("sms",)), "sms", Route("email", "last_used")),
    # The thread's address is gone (no email any more): the last used one.
    (Person(has_email=False, last_channel="sms"), "email", Route("sms", "last_used")),
    # No thread channel and no last channel: SMS if there is a phone, else email.
    (Person(), None, Route("sms", "fallback")),
    (Person(has_phone=False), None, Route("email", "fallback")),
    (Person(out=("sms",)), None, Route("email", "fallback")),
    # Nothing reachable: the fallback, so the send can refuse it with the precise reason.
    (Person(has_email=False, out=("sms",)), "sms", Route("sms", "fallback")),
])
def test_reply_route_precedence(person, thread_channel, expected):
    assert reply_route(person, thread_channel=thread_channel) == expected


def test_may_send_refuses_opt_out_missing_pin_and_marketing_without_consent():
    no_pin = pin_for_link(given_pin_hash=None, thread_pin_hash=None, contact_pin_hash=None, pin_required=True)
    has_pin = pin_for_link(given_pin_hash=None, thread_pin_hash=None, contact_pin_hash="h", pin_required=True)
    assert may_send(Person(out=("sms",)), channel="sms", secure=True, pin=has_pin).reason == "opted_out"
    assert may_send(Person(out=("sms",)), channel="email", secure=True, pin=has_pin).allowed
    assert may_send(Person(), channel="sms", secure=True, pin=no_pin).reason == "pin_required"
    assert may_send(Person(), channel="sms", secure=False, pin=None).allowed  # standard: no link, no PIN
    assert may_send(Person(), channel="sms", secure=True, pin=has_pin).allowed
    assert may_send(Person(), channel="sms", secure=False, pin=None, purpose="marketing").reason == "no_consent"
    opted_in = Person(consent={"sms": {"state": "opted_in"}})
    assert may_send(opted_in, channel="sms", secure=False, pin=None, purpose="marketing").allowed
