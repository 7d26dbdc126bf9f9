"""What reaches the log (issue 9): structured fields do, personal data never does.

Through the handler `hushlink` installs (gateway.security.redact.configure_logging), JSON lines and plain
text: fields passed as `extra=` are written (redacted), and the access log of serve's listener
writes no query values.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import aiohttp
import pytest

from gateway.runtime.app import create_app
from gateway.security.redact import configure_logging
from gateway.security.tokens import new_token
from inbound.mail.parse import parse_message
from outbound.twilio_sms import TwilioSmsSender
from portal.listener import start_http
from tests.support.harness import ORG_NUMBER
from tests.support.twilio_standin import TwilioStandIn

PHONE = "+15551230001"
EMAIL = "alice@example.org"


class Log:
    """configure_logging into a buffer; the root logger is put back afterwards."""

    def __init__(self, json_lines: bool = True) -> None:
        self.stream = io.StringIO()
        configure_logging("INFO", json=json_lines, stream=self.stream)

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def lines(self, msg: str) -> list[dict[str, object]]:
        return [line for line in map(json.loads, self.text.splitlines()) if line["msg"] == msg]


@pytest.fixture
def log() -> Iterator[Log]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield Log()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def plain_log() -> Iterator[Log]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield Log(json_lines=False)
    root.handlers[:] = handlers
    root.setLevel(level)


def test_extra_fields_reach_the_json_line_and_personal_data_in_them_is_masked(log: Log) -> None:
    token = new_token()
    logging.getLogger("gateway.x").info("sent", extra={"to": PHONE, "email": EMAIL, "token": token, "attempt": 2})
    (line,) = log.lines("sent")
    assert line["attempt"] == 2
    assert line["to"] == "+1********01" and line["email"] == "a***@e***.org" and line["token"] == "[token]"
    assert PHONE not in log.text and EMAIL not in log.text and token not in log.text


def test_extra_fields_reach_the_plain_text_line_as_key_value(plain_log: Log) -> None:
    token = new_token()
    logging.getLogger("gateway.x").warning("retry", extra={"fields": {"job_id": "j1", "link": f"/s/{token}"},
                                                           "to": PHONE, "note": "two words"})
    line = plain_log.text.strip()
    assert line.endswith('retry job_id=j1 link=/s/[token] to=+1********01 note="two words"'), line
    assert token not in line and PHONE not in line


async def test_twilio_sender_extras_are_written(log: Log, twilio: TwilioStandIn) -> None:
    sender = TwilioSmsSender(twilio.account_sid, twilio.auth_token, api_base=twilio.base_url, timeout=3)
    try:
        sent = await sender.send_sms(from_number=ORG_NUMBER, to_number=PHONE, body="hello", status_callback=None)
    finally:
        await sender.close()
    (line,) = log.lines("twilio accepted sms")
    assert line["provider_id"] == sent.provider_id  # a Twilio SID is an id, kept
    assert line["to"] not in (None, PHONE) and "*" in str(line["to"])
    assert PHONE not in log.text


def test_mail_parser_extras_are_written(log: Log) -> None:
    many_parts = b"".join(b"Content-Type: text/plain\r\n" for _ in range(1001))
    parse_message(b"From: " + EMAIL.encode() + b"\r\n" + many_parts + b"\r\nbody\r\n")
    (line,) = log.lines("mail body skipped")
    assert line["parts"] == 1001 and line["multiparts"] == 0


async def test_the_access_log_writes_the_path_without_query_values(log: Log, gw) -> None:  # type: ignore[no-untyped-def]
    token = new_token()
    runner, site = await start_http(create_app(gw.runtime, workers=False), "127.0.0.1", 0,
                                    header_timeout=5, keepalive_timeout=5)
    try:
        async with aiohttp.ClientSession() as http:
            url = (f"http://127.0.0.1:{site.port}/staff/login?next=%2Fstaff%2Fcontacts%3Fq%3D{EMAIL}"
                   f"&q=%2B15551230001&q=again&t={token}")
            async with http.get(url, allow_redirects=False) as resp:
                await resp.read()
    finally:
        await runner.cleanup()
    (access,) = [line for line in map(json.loads, log.text.splitlines()) if line["logger"] == "aiohttp.access"]
    assert '"GET /staff/login?next=&q=&t= HTTP/1.1"' in str(access["msg"]), access
    for secret in ("5551230001", "alice", "contacts", token, "again"):
        assert secret not in log.text
