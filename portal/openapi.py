"""The OpenAPI 3.1 document served at /api/v1/openapi.json."""

from __future__ import annotations

from typing import Any

from gateway.messaging.delivery import REASONS

_ERROR = {"$ref": "#/components/schemas/Error"}
# What the API accepts, as patterns (gateway/messaging/phone.py, gateway/tenancy/orgs.py validate_email,
# gateway/security/pins.py).
E164 = r"^\+[1-9][0-9]{7,14}$"
EMAIL = r"^[A-Za-z0-9_%+-]{1,20}(\.[A-Za-z0-9_%+-]{1,20}){0,2}@([A-Za-z0-9-]{1,63}\.){1,4}[A-Za-z]{2,63}$"
PIN = r"^([0-9]{6,64}|[^\x00-\x1f]{8,64})$"
# Why a message is secure or standard (gateway/rules/secure.py); null on messages stored before it was recorded.
SECURE_SOURCE = {"enum": ["org_default", "org_forced", "template", "campaign_step", "message", "thread",
                          "sensitive_reply", None],
                 "description": "where secure/standard came from: org_default, org_forced (always-secure policy), "
                                "template, campaign_step, message (the sender's choice), thread (the thread is "
                                "secure), sensitive_reply (a reply that looked sensitive); null for older messages"}

# Why a message was not delivered (gateway/messaging/delivery.py REASONS); null unless the status is
# failed or undelivered.
FAILURE_REASON_CODE = {"enum": [*REASONS, None],
                       "description": "why the message was not delivered, a stable code: "
                                      + ", ".join(REASONS) + "; null unless status is failed or undelivered"}
FAILURE_REASON = {"type": ["string", "null"],
                  "description": "failure_reason_code in plain words (e.g. " + "; ".join(
                      f'"{text}"' for text in REASONS.values()) + "); null unless status is failed or undelivered"}


def _resp(desc: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    body = schema or _ERROR
    return {"description": desc, "content": {"application/json": {"schema": body}}}


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Hushlink API", "version": "1"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                               "field": {"type": "string"}}}}},
            "SendMessage": {
                "type": "object", "required": ["to", "body"], "additionalProperties": False,
                "properties": {
                    "to": {"type": "object", "additionalProperties": False, "properties": {
                        "phone": {"type": "string", "pattern": E164,
                                  "description": "E.164: + and 8 to 15 digits, e.g. +15551234567"},
                        "email": {"type": "string", "maxLength": 254, "pattern": EMAIL},
                        "name": {"type": "string", "maxLength": 120}}},
                    "body": {"type": "string", "minLength": 1, "maxLength": 5000,
                             "description": "not only whitespace, no NUL",
                             "allOf": [{"pattern": r"[^\s\x1c-\x1f\x85]"}, {"pattern": r"^[^\x00]*$"}]},
                    "channel": {"enum": ["sms", "email"], "default": "sms"},
                    "secure": {"type": ["boolean", "null"],
                               "description": "null: the org default. An always-secure org or a secure thread "
                                              "makes the message secure whatever is asked (see secure_source)"},
                    "pin": {"type": "string", "pattern": PIN,
                            "description": "6 or more digits, or 8 or more characters (at most 64)"},
                    "allow_sensitive": {"type": "boolean", "default": False},
                },
                # The address the channel needs: to.phone for SMS (the default), to.email for email.
                "if": {"required": ["channel"], "properties": {"channel": {"const": "email"}}},
                "then": {"properties": {"to": {"required": ["email"]}}},
                "else": {"properties": {"to": {"required": ["phone"]}}},
            },
            "Created": {"type": "object", "required": ["id", "thread_id", "secure", "status"], "properties": {
                "id": {"type": "string"}, "thread_id": {"type": "string"}, "secure": {"type": "boolean"},
                "secure_source": SECURE_SOURCE, "status": {"type": "string"}}},
            "Message": {"type": "object", "required": ["id", "thread_id", "direction", "channel", "secure",
                                                       "status", "status_history", "created_at",
                                                       "failure_reason_code", "failure_reason"],
                        "properties": {
                            "id": {"type": "string"}, "thread_id": {"type": "string"},
                            "direction": {"enum": ["inbound", "outbound"]},
                            "channel": {"enum": ["sms", "email", "portal"]}, "secure": {"type": "boolean"},
                            "secure_source": SECURE_SOURCE, "status": {"type": "string"},
                            "error_code": {"type": ["string", "null"],
                                           "description": "the provider's own error code, as it gave it"},
                            "failure_reason_code": FAILURE_REASON_CODE, "failure_reason": FAILURE_REASON,
                            "status_history": {"type": "array", "items": {"type": "object", "properties": {
                                "status": {"type": "string"}, "at": {"type": "string", "format": "date-time"},
                                "error_code": {"type": "string"}}}},
                            "created_at": {"type": "string", "format": "date-time"}}},
            "ThreadMessages": {"type": "object", "required": ["messages", "next_cursor"], "properties": {
                "messages": {"type": "array", "items": {"type": "object", "properties": {
                    "id": {"type": "string"}, "direction": {"type": "string"}, "channel": {"type": "string"},
                    "body": {"type": ["string", "null"],
                             "description": "null once the contact was erased (its data key destroyed)"},
                    "created_at": {"type": "string", "format": "date-time"},
                    "status": {"type": "string"}, "secure": {"type": "boolean"}, "secure_source": SECURE_SOURCE,
                    "flags": {"type": "array", "items": {"type": "string"}},
                    "failure_reason_code": FAILURE_REASON_CODE, "failure_reason": FAILURE_REASON}}},
                "next_cursor": {"type": ["string", "null"]}}},
        },
    },
    "security": [{"bearer": []}],
    "paths": {
        "/api/v1/openapi.json": {"get": {
            "summary": "This OpenAPI document", "security": [],
            "responses": {"200": _resp("The OpenAPI document", {"type": "object"})}}},
        "/api/v1/messages": {"post": {
            "summary": "Send a message (secure: content sealed, SMS/email carries only a link)",
            "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 200}}],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/SendMessage"}}}},
            "responses": {
                "201": _resp("Queued", {"$ref": "#/components/schemas/Created"}),
                "400": _resp("Malformed JSON"), "401": _resp("Missing or unknown API key"),
                "409": _resp("to.phone and to.email belong to two different contacts"),
                "415": _resp("Not JSON"),
                "422": _resp("Invalid field, opted_out, sensitive_content, or pin_required (the org "
                                    "requires a PIN and the contact has none: give one in pin)"),
                "503": _resp("Database unavailable"),
            }}},
        "/api/v1/messages/{id}": {"get": {
            "summary": "A message and its delivery status history",
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": _resp("The message", {"$ref": "#/components/schemas/Message"}),
                          "401": _resp("Unauthorized"), "404": _resp("Not found")}}},
        "/api/v1/threads/{id}/messages": {"get": {
            "summary": "Messages of a thread, oldest first",
            "parameters": [
                {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
                {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"}},
                {"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}}],
            "responses": {"200": _resp("A page", {"$ref": "#/components/schemas/ThreadMessages"}),
                          "401": _resp("Unauthorized"), "404": _resp("Not found"),
                          "422": _resp("Invalid limit or cursor")}}},
    },
}
