"""The integrator API under /api/v1, driven over HTTP against a whole gateway (real DB, Twilio stand-in)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from gateway.messaging.contacts import OPTED_OUT
from gateway.security.api_keys import ApiKeys
from outbound.compose import sms_text
from portal.openapi import OPENAPI
from tests.support.harness import CLIENT_PHONE, PUBLIC_URL

CANARY = "canary-4b1e: your biopsy result is benign"
OTHER_NUMBER = "+15005550007"
OTHER_PHONE = "+15551230002"


async def post_raw(gw: Any, payload: Any, *, key: str | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
    resp = await gw.client.post("/api/v1/messages", json=payload, headers={**gw.auth(key), **(headers or {})})
    return resp.status, await resp.json()


async def get_json(gw: Any, path: str, key: str | None = None) -> tuple[int, Any]:
    resp = await gw.client.get(path, headers=gw.auth(key))
    assert resp.content_type == "application/json"
    return resp.status, await resp.json()


def assert_error(data: Any, code: str, field: str | None = None) -> None:
    assert set(data) == {"error"}, data
    err = data["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert err["code"] == code, data
    if field is not None:
        assert err["field"] == field, data


async def outbox_count(gw: Any) -> int:
    return int(await gw.store.outbox.count_documents({}))


async def second_org(gw: Any) -> tuple[Any, str]:
    org = await gw.services.orgs.create("Lakeside Dental", OTHER_NUMBER)
    key, _ = await ApiKeys(gw.store, gw.clock).create(org.id, "other")
    return org, key


# -- sending ---------------------------------------------------------------------------------

@pytest.mark.parametrize("secure_field", ["absent", None])
async def test_send_defaults_to_secure_and_sms_carries_only_the_link(gw, secure_field):
    payload: dict[str, Any] = {"to": {"phone": CLIENT_PHONE}, "body": CANARY, "channel": "sms"}
    if secure_field != "absent":
        payload["secure"] = secure_field
    status, data = await post_raw(gw, payload)
    assert status == 201, data
    assert set(data) == {"id", "thread_id", "secure", "secure_source", "status"}
    assert data["secure"] is True and data["secure_source"] == "org_default" and data["status"] == "queued"
    await gw.drain()
    sms = gw.sms_to(CLIENT_PHONE)
    assert len(sms) == 1
    token = gw.last_link_token()
    # Exactly the org name and the link: nothing of the message itself.
    expected = sms_text("secure_notice", org_name="Riverside Clinic", url=f"{PUBLIC_URL}/s/{token}")
    assert sms[0]["body"] == expected
    assert "canary" not in sms[0]["body"] and "biopsy" not in sms[0]["body"]


async def test_standard_send_carries_the_body(gw):
    data = await gw.api_send(body="See you Tuesday at 3pm.", secure=False)
    assert data["secure"] is False
    await gw.drain()
    sms = gw.sms_to(CLIENT_PHONE)
    assert [m["body"] for m in sms] == ["See you Tuesday at 3pm."]
    assert "/s/" not in sms[0]["body"]


async def test_org_default_standard_is_followed_when_secure_is_null(gw):
    await gw.services.orgs.update_policy(gw.org.id, secure_default=False)
    data = await gw.api_send(body="Reminder: bring your card.", secure=None)
    assert data["secure"] is False
    secure = await gw.api_send(body=CANARY, secure=True)
    assert secure["secure"] is True


@pytest.mark.parametrize(("payload", "field"), [
    ({"to": {"phone": "5551234"}}, "to.phone"),
    ({"to": {"phone": "+0123"}}, "to.phone"),
    ({"to": {"phone": "+1 555 abc"}}, "to.phone"),
    ({"body": None}, "body"),
    ({"body": ""}, "body"),
    ({"body": "   \n "}, "body"),
    ({"body": "x" * 5001}, "body"),
    ({"colour": "red"}, "colour"),
    ({"secure": "yes"}, "secure"),
    ({"pin": "1234"}, "pin"),
    ({"pin": 123456}, "pin"),
    ({"channel": "fax"}, "channel"),
    ({"to": "+15551230001"}, "to"),
    ({"to": {"phone": CLIENT_PHONE, "fax": "1"}}, "to.fax"),
    ({"allow_sensitive": "true"}, "allow_sensitive"),
])
async def test_invalid_fields_give_422_naming_the_field(gw, payload, field):
    body: dict[str, Any] = {"to": {"phone": CLIENT_PHONE}, "body": "hello", "channel": "sms"}
    body.update(payload)
    status, data = await post_raw(gw, body)
    assert status == 422, data
    assert_error(data, "invalid_field", field)
    assert await outbox_count(gw) == 0
    assert await gw.store.messages.count_documents({}) == 0


async def test_missing_body_is_422_on_body(gw):
    status, data = await post_raw(gw, {"to": {"phone": CLIENT_PHONE}, "channel": "sms"})
    assert status == 422
    assert_error(data, "invalid_field", "body")


async def test_body_of_exactly_5000_characters_is_accepted(gw):
    data = await gw.api_send(body="y" * 5000, secure=True)
    assert data["status"] == "queued"


async def test_error_messages_never_echo_the_phone_number(gw):
    status, data = await post_raw(gw, {"to": {"phone": "+1 555 9876abc"}, "body": "hi"})
    assert status == 422
    assert "9876" not in data["error"]["message"]


async def test_invalid_json_is_400(gw):
    resp = await gw.client.post("/api/v1/messages", data=b'{"to": {', headers={
        **gw.auth(), "Content-Type": "application/json"})
    assert resp.status == 400
    assert_error(await resp.json(), "invalid_json")
    resp = await gw.client.post("/api/v1/messages", data=b'["a list"]', headers={
        **gw.auth(), "Content-Type": "application/json"})
    assert resp.status == 400
    assert_error(await resp.json(), "invalid_json")


async def test_non_json_content_type_is_415(gw):
    resp = await gw.client.post("/api/v1/messages", data={"to": CLIENT_PHONE, "body": "hi"}, headers=gw.auth())
    assert resp.status == 415
    assert (await resp.json())["error"]["code"] == "unsupported_media_type"
    assert await outbox_count(gw) == 0


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer hlk_unknownkey", "Basic dXNlcjpwYXNz", "hlk_x"])
async def test_missing_or_unknown_api_key_is_401(gw, header):
    headers = {"Authorization": header} if header is not None else {}
    resp = await gw.client.post("/api/v1/messages", json={"to": {"phone": CLIENT_PHONE}, "body": "hi"},
                                headers=headers)
    assert resp.status == 401
    assert_error(await resp.json(), "unauthorized")
    for path in ("/api/v1/messages/0123456789abcdef01234567", "/api/v1/threads/0123456789abcdef01234567/messages"):
        r = await gw.client.get(path, headers=headers)
        assert r.status == 401
    assert await outbox_count(gw) == 0


async def test_revoked_api_key_is_401(gw):
    keys = ApiKeys(gw.store, gw.clock)
    key, doc = await keys.create(gw.org.id, "to revoke")
    sent = await gw.api_send(key=key)
    assert await keys.revoke(gw.org.id, doc["_id"])
    status, data = await post_raw(gw, {"to": {"phone": CLIENT_PHONE}, "body": "hi"}, key=key)
    assert status == 401
    assert_error(data, "unauthorized")
    status, _ = await get_json(gw, f"/api/v1/messages/{sent['id']}", key=key)
    assert status == 401


async def test_api_key_is_stored_hashed_only(gw):
    import bson
    for doc in await gw.store.api_keys.find({}).to_list(None):
        assert gw.api_key.encode() not in bson.encode(doc)


async def test_standard_send_that_looks_sensitive_is_refused_unless_allowed(gw):
    body = "Your SSN on file is 123-45-6789."
    status, data = await post_raw(gw, {"to": {"phone": CLIENT_PHONE}, "body": body, "secure": False})
    assert status == 422
    assert_error(data, "sensitive_content")
    assert "123-45-6789" not in data["error"]["message"]
    assert await outbox_count(gw) == 0
    # Explicit override: sent as a standard SMS, as the integrator asked.
    overridden = await gw.api_send(body=body, secure=False, allow_sensitive=True)
    assert overridden["secure"] is False
    # Secure, the same text is fine (the SMS carries only a link).
    ok = await gw.api_send(body=body, secure=True)
    assert ok["secure"] is True
    await gw.drain()
    bodies = [m["body"] for m in gw.sms_to(CLIENT_PHONE)]
    assert len(bodies) == 2
    assert bodies.count(body) == 1


async def test_opted_out_contact_gets_422_and_nothing_is_sent(gw):
    contact, _ = await gw.services.contacts.find_or_create(gw.org.id, phone=CLIENT_PHONE)
    assert await gw.services.contacts.set_consent(gw.org.id, contact.id, "sms", OPTED_OUT, "test")
    for secure in (True, False, None):
        status, data = await post_raw(gw, {"to": {"phone": CLIENT_PHONE}, "body": "hello", "secure": secure})
        assert status == 422
        assert_error(data, "opted_out")
    await gw.drain()
    assert gw.twilio.requests == []
    assert await outbox_count(gw) == 0


async def test_idempotency_key_returns_the_same_message_and_sends_once(gw):
    hdr = {"Idempotency-Key": "order-8812"}
    payload = {"to": {"phone": CLIENT_PHONE}, "body": CANARY}
    s1, first = await post_raw(gw, payload, headers=hdr)
    s2, second = await post_raw(gw, payload, headers=hdr)
    assert s1 == s2 == 201
    assert first["id"] == second["id"] and first["thread_id"] == second["thread_id"]
    s3, third = await post_raw(gw, payload, headers={"Idempotency-Key": "order-8813"})
    assert s3 == 201 and third["id"] != first["id"]
    await gw.drain()
    assert len(gw.sms_to(CLIENT_PHONE)) == 2
    assert await gw.store.messages.count_documents({}) == 2


async def test_idempotency_keys_are_per_org(gw):
    _, key2 = await second_org(gw)
    hdr = {"Idempotency-Key": "shared-key"}
    _, a = await post_raw(gw, {"to": {"phone": CLIENT_PHONE}, "body": "a"}, headers=hdr)
    s, b = await post_raw(gw, {"to": {"phone": CLIENT_PHONE}, "body": "b"}, key=key2, headers=hdr)
    assert s == 201 and b["id"] != a["id"]


async def test_overlong_idempotency_key_is_422(gw):
    status, data = await post_raw(gw, {"to": {"phone": CLIENT_PHONE}, "body": "hi"},
                                  headers={"Idempotency-Key": "k" * 201})
    assert status == 422
    assert_error(data, "invalid_field", "Idempotency-Key")


# -- reading -----------------------------------------------------------------------------------

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


async def test_get_message_shows_status_and_history(gw):
    sent = await gw.api_send(body=CANARY)
    status, m = await get_json(gw, f"/api/v1/messages/{sent['id']}")
    assert status == 200
    assert {"id", "thread_id", "direction", "channel", "secure", "status", "status_history",
            "created_at"} <= set(m)
    assert m["id"] == sent["id"] and m["thread_id"] == sent["thread_id"]
    assert (m["direction"], m["channel"], m["secure"], m["status"]) == ("outbound", "sms", True, "queued")
    assert [h["status"] for h in m["status_history"]] == ["queued"]
    assert ISO.match(m["created_at"]) and all(ISO.match(h["at"]) for h in m["status_history"])
    assert CANARY not in str(m)

    gw.clock.advance(5)
    await gw.drain()
    _, m = await get_json(gw, f"/api/v1/messages/{sent['id']}")
    assert m["status"] == "accepted"
    assert [h["status"] for h in m["status_history"]] == ["queued", "accepted"]
    assert m["status_history"][0]["at"] < m["status_history"][1]["at"]

    sid = gw.sms_to()[0]["sid"]
    assert await gw.status(sid, "delivered") == 200
    _, m = await get_json(gw, f"/api/v1/messages/{sent['id']}")
    assert m["status"] == "delivered"
    assert [h["status"] for h in m["status_history"]][-1] == "delivered"


async def test_a_refused_send_says_why_in_plain_words(gw):
    gw.twilio.fail_next(400, code=21614, message="not a mobile number")
    sent = await gw.api_send(body="Reminder", secure=False)
    await gw.drain()
    _, m = await get_json(gw, f"/api/v1/messages/{sent['id']}")
    assert m["status"] == "failed"
    assert (m["failure_reason_code"], m["failure_reason"]) == ("cannot_receive_sms", "number cannot receive SMS")
    _, page = await get_json(gw, f"/api/v1/threads/{sent['thread_id']}/messages")
    assert page["messages"][0]["failure_reason"] == "number cannot receive SMS"


async def test_a_carrier_opt_out_reported_later_reads_as_opted_out_and_delivered_reads_as_no_failure(gw):
    opted = await gw.api_send(body="Reminder", secure=False)
    fine = await gw.api_send(to={"phone": OTHER_PHONE}, body="Reminder", secure=False)
    await gw.drain()
    _, m = await get_json(gw, f"/api/v1/messages/{opted['id']}")
    assert (m["status"], m["failure_reason"]) == ("accepted", None)  # not failed (yet): nothing to explain
    assert await gw.status(gw.sms_to()[0]["sid"], "undelivered", "21610") == 200
    assert await gw.status(gw.sms_to(OTHER_PHONE)[0]["sid"], "delivered") == 200
    _, m = await get_json(gw, f"/api/v1/messages/{opted['id']}")
    assert (m["status"], m["failure_reason_code"], m["failure_reason"]) == (
        "undelivered", "opted_out", "client opted out")
    _, m = await get_json(gw, f"/api/v1/messages/{fine['id']}")
    assert (m["status"], m["failure_reason_code"], m["failure_reason"]) == ("delivered", None, None)


@pytest.mark.parametrize("mid", ["0123456789abcdef01234567", "nope", "ZZZZZZZZZZZZZZZZZZZZZZZZ", "%24where"])
async def test_unknown_or_malformed_message_id_is_404_json(gw, mid):
    status, data = await get_json(gw, f"/api/v1/messages/{mid}")
    assert status == 404
    assert_error(data, "not_found")


async def test_thread_messages_oldest_first_with_bodies_and_cursor_pages(gw):
    bodies = [f"Message number {i}" for i in range(5)]
    thread_id = None
    for b in bodies:
        sent = await gw.api_send(body=b, secure=(len(b) % 2 == 0))
        thread_id = thread_id or sent["thread_id"]
        assert sent["thread_id"] == thread_id
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        path = f"/api/v1/threads/{thread_id}/messages?limit=2" + (f"&cursor={cursor}" if cursor else "")
        status, page = await get_json(gw, path)
        assert status == 200, page
        pages += 1
        assert len(page["messages"]) <= 2
        seen.extend(page["messages"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 10
    assert pages == 3
    assert [m["body"] for m in seen] == bodies
    assert len({m["id"] for m in seen}) == 5
    for m in seen:
        assert {"id", "direction", "channel", "body", "created_at", "status"} <= set(m)
        assert m["direction"] == "outbound" and m["channel"] == "sms"
    # The default page holds all of them, in the same order.
    _, whole = await get_json(gw, f"/api/v1/threads/{thread_id}/messages")
    assert [m["id"] for m in whole["messages"]] == [m["id"] for m in seen]
    assert whole["next_cursor"] is None


async def test_thread_listing_includes_inbound_replies_decrypted(gw):
    sent = await gw.api_send(body=CANARY)
    await gw.drain()
    await gw.inbound_sms("Thanks, see you then")
    await gw.drain()
    _, page = await get_json(gw, f"/api/v1/threads/{sent['thread_id']}/messages")
    assert [(m["direction"], m["body"]) for m in page["messages"]] == [
        ("outbound", CANARY), ("inbound", "Thanks, see you then")]


@pytest.mark.parametrize("limit", ["0", "1000", "201", "-1", "two"])
async def test_thread_limit_out_of_range_is_422(gw, limit):
    sent = await gw.api_send()
    status, data = await get_json(gw, f"/api/v1/threads/{sent['thread_id']}/messages?limit={limit}")
    assert status == 422
    assert_error(data, "invalid_field", "limit")


async def test_unknown_or_malformed_thread_is_404(gw):
    for tid in ("0123456789abcdef01234567", "not-an-id"):
        status, data = await get_json(gw, f"/api/v1/threads/{tid}/messages")
        assert status == 404
        assert_error(data, "not_found")


# -- tenancy -----------------------------------------------------------------------------------

async def test_other_org_cannot_read_messages_or_threads(gw):
    _, key2 = await second_org(gw)
    sent = await gw.api_send(body=CANARY)
    status, data = await get_json(gw, f"/api/v1/messages/{sent['id']}", key=key2)
    assert status == 404 and CANARY not in str(data)
    status, data = await get_json(gw, f"/api/v1/threads/{sent['thread_id']}/messages", key=key2)
    assert status == 404 and CANARY not in str(data)
    # Its own key still works: the 404 is about ownership, not the ids.
    status, _ = await get_json(gw, f"/api/v1/messages/{sent['id']}")
    assert status == 200
    # Each refusal is an audited denial in the asking org's log (never in the owner's).
    denials = [e async for e in gw.store.audit.find({"action": "authz.deny"})]
    assert [(e["org_id"] != gw.org.id, e["detail"]["object"], e["detail"]["requested"]) for e in denials] == [
        (True, "message", sent["id"]), (True, "thread", sent["thread_id"])]


async def test_same_phone_in_two_orgs_is_two_contacts_and_threads(gw):
    org2, key2 = await second_org(gw)
    a = await gw.api_send(body="From Riverside")
    b = await gw.api_send(key=key2, body="From Lakeside")
    assert a["thread_id"] != b["thread_id"]
    t1 = await gw.store.threads.find_one({"_id": a["thread_id"]})
    t2 = await gw.store.threads.find_one({"_id": b["thread_id"]})
    assert t1["org_id"] == gw.org.id and t2["org_id"] == org2.id
    assert t1["contact_id"] != t2["contact_id"]
    assert await gw.store.contacts.count_documents({"org_id": gw.org.id}) == 1
    # Org 1's thread holds only org 1's message.
    _, page = await get_json(gw, f"/api/v1/threads/{a['thread_id']}/messages")
    assert [m["body"] for m in page["messages"]] == ["From Riverside"]
    # Each org's SMS goes out from its own number.
    await gw.drain()
    assert sorted(m["from"] for m in gw.sms_to()) == sorted([gw.org.sms_sender, OTHER_NUMBER])
    # Opting out with one org does not silence the other.
    await gw.services.contacts.set_consent(org2.id, t2["contact_id"], "sms", OPTED_OUT, "test")
    still = await gw.api_send(body="still fine", secure=False)
    assert still["secure_source"] == "thread"  # the thread is secure: a link, whatever was asked
    status, data = await post_raw(gw, {"to": {"phone": CLIENT_PHONE}, "body": "x"}, key=key2)
    assert status == 422 and data["error"]["code"] == "opted_out"
    await gw.drain()
    assert gw.sms_to()[-1]["from"] == gw.org.sms_sender and len(gw.sms_to()) == 3


# -- OpenAPI and health ------------------------------------------------------------------------

def _resolve(spec: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = spec
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        out = [node["$ref"]] if "$ref" in node else []
        for v in node.values():
            out.extend(_refs(v))
        return out
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _check_structure(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.")
    assert spec["info"]["title"] and spec["info"]["version"]
    for ref in _refs(spec):
        _resolve(spec, ref)  # every $ref points somewhere
    methods = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
    for path, item in spec["paths"].items():
        assert path.startswith("/")
        for method, op in item.items():
            assert method in methods, (path, method)
            assert op["responses"], (path, method)
            for code, resp in op["responses"].items():
                assert re.fullmatch(r"[1-5]\d\d|[1-5]XX|default", code), (path, code)
                assert resp["description"]
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), (path, method)
            for p in op.get("parameters", []):
                assert p["in"] in {"path", "query", "header", "cookie"}
                if p["in"] == "path":
                    assert p["required"] is True


async def test_openapi_is_valid_and_documents_every_api_route(gw):
    resp = await gw.client.get("/api/v1/openapi.json")
    assert resp.status == 200
    spec = await resp.json()
    assert spec == OPENAPI
    _check_structure(spec)
    try:
        from openapi_spec_validator import validate
    except ImportError:
        pass
    else:
        validate(spec)
    registered = set()
    for route in gw.client.app.router.routes():
        path = route.resource.canonical if route.resource else ""
        if path.startswith("/api/v1") and route.method != "HEAD":
            registered.add((path, route.method.lower()))
    assert ("/api/v1/messages", "post") in registered
    documented = {(p, m) for p, item in spec["paths"].items() for m in item}
    missing = registered - documented
    assert not missing, f"routes without OpenAPI docs: {sorted(missing)}"
    assert not (documented - registered), "documented routes that do not exist"


async def test_responses_carry_the_fields_the_openapi_requires(gw):
    schemas = OPENAPI["components"]["schemas"]
    sent = await gw.api_send()
    assert set(schemas["Created"]["required"]) <= set(sent)
    _, m = await get_json(gw, f"/api/v1/messages/{sent['id']}")
    assert set(schemas["Message"]["required"]) <= set(m)
    _, page = await get_json(gw, f"/api/v1/threads/{sent['thread_id']}/messages")
    assert set(schemas["ThreadMessages"]["required"]) <= set(page)
    _, err = await post_raw(gw, {"body": "x"})
    assert set(schemas["Error"]["properties"]["error"]["required"]) <= set(err["error"])


async def test_health_and_readiness(gw):
    resp = await gw.client.get("/healthz")
    assert resp.status == 200
    resp = await gw.client.get("/readyz")
    assert resp.status == 200
    assert (await resp.json())["status"] == "ready"


async def test_unknown_api_path_and_wrong_method_answer_json(gw):
    resp = await gw.client.get("/api/v1/nothing-here", headers=gw.auth())
    assert resp.status == 404
    assert_error(await resp.json(), "not_found")
    resp = await gw.client.delete("/api/v1/messages", headers=gw.auth())
    assert resp.status == 405
    assert_error(await resp.json(), "method_not_allowed")


async def test_concurrent_requests_with_one_idempotency_key_make_one_message(gw):
    import asyncio
    hdr = {"Idempotency-Key": "race-1"}
    payload = {"to": {"phone": CLIENT_PHONE}, "body": CANARY}
    results = await asyncio.gather(*(post_raw(gw, payload, headers=hdr) for _ in range(5)))
    assert {s for s, _ in results} == {201}
    assert len({d["id"] for _, d in results}) == 1
    await gw.drain()
    assert len(gw.sms_to()) == 1
    assert await gw.store.messages.count_documents({}) == 1
    assert await gw.store.outbox.count_documents({}) == 1


async def test_concurrent_sends_to_one_contact_all_succeed(gw):
    import asyncio
    bodies = [f"Note {i}" for i in range(8)]
    results = await asyncio.gather(*(
        post_raw(gw, {"to": {"phone": CLIENT_PHONE}, "body": b, "secure": False}) for b in bodies))
    assert [s for s, _ in results] == [201] * 8, results
    assert len({d["thread_id"] for _, d in results}) == 1
    await gw.drain()
    assert sorted(m["body"] for m in gw.sms_to()) == sorted(bodies)


async def test_an_email_of_another_contact_than_the_phone_is_409_and_nothing_is_sent(gw):
    """Found by the phone, the email belongs to another contact: they are kept apart, and the send
    conflicts with what is stored (valid input, so not a 422)."""
    await gw.api_send(to={"phone": CLIENT_PHONE}, body="First, by SMS.")
    await gw.api_send(to={"email": "robin@example.org"}, body="Second, by email.", channel="email")
    queued = await gw.store.outbox.count_documents({})
    data = await gw.api_send(to={"phone": CLIENT_PHONE, "email": "robin@example.org"}, body="Third.",
                             channel="email", expect=409)
    assert data["error"]["code"] == "conflict" and data["error"]["field"] == "to.email"
    assert CLIENT_PHONE not in data["error"]["message"] and "robin@" not in data["error"]["message"]
    assert await gw.store.outbox.count_documents({}) == queued
    # By SMS the phone's own contact is meant: that one goes out.
    await gw.api_send(to={"phone": CLIENT_PHONE, "email": "robin@example.org"}, body="Fourth.")
