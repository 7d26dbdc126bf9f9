"""A data subject's own data: the complete export (right of access and portability, GDPR Art. 15
and 20; docs/security-model.md, 'Subject export') and the legal hold that stops erasure (Art. 17(3);
docs/security-model.md, 'Erasure and legal hold').

The export is one JSON document with everything stored about one contact of one org, opened:
the contact (name, addresses, consent and its history, PIN set or not), their conversation
threads, every message with its delivery history, their attachments (content in base64), the
links sent to them (never a token or its hash), and the audit entries that name them or their
threads (ids, actions and times; the chain's MACs stay behind). Nothing of another contact: every
read is scoped to this org and this contact's own ids. Whoever asks for it is audited by the
caller (`contact.exported`).

Once a contact is erased their data key is gone: the export then says so and carries what is
left (ids, times, states), with every sealed field as null.
"""

from __future__ import annotations

import base64
from typing import Any

from gateway.errors import KeyErased, NotFound
from gateway.runtime.services import Services
from gateway.storage.store import Doc

FORMAT = "hushlink.subject-export/1"
_CHUNK = 500  # ids per $in read of a long conversation's attachments


async def export_contact(s: Services, org_id: str, contact_id: str) -> dict[str, Any]:
    doc = await s.store.contacts.find_one({"_id": contact_id, "org_id": org_id})
    if doc is None:
        raise NotFound("contact")
    org = await s.orgs.get(org_id)
    erased = bool(doc.get("erased_at"))
    fields = {f: None for f in ("name", "phone", "email")} if erased else \
        await s.contacts.reveal(contact_id, org_id)
    threads = [t async for t in s.store.threads.find({"org_id": org_id, "contact_id": contact_id}).sort("_id", 1)]
    thread_ids = [t["_id"] for t in threads]
    in_threads = {"org_id": org_id, "thread_id": {"$in": thread_ids}}
    messages = await s.store.messages.find(in_threads).sort("_id", 1).to_list(None)
    return {
        "format": FORMAT,
        "exported_at": _iso(s.clock.now()),
        "organization": {"id": org_id, "name": org.name},
        "contact": {
            "id": contact_id, "created_at": _iso(doc.get("created_at")), "erased_at": _iso(doc.get("erased_at")),
            **fields, "pin_set": bool(doc.get("pin_hash")), "last_channel": doc.get("last_channel"),
            "consent": {ch: _consent(c) for ch, c in (doc.get("consent") or {}).items()},
            "consent_history": [_consent(e) | {"channel": e.get("channel")} for e in doc.get("consent_log", [])],
            "legal_hold": _hold(doc.get("legal_hold")),
        },
        "threads": [{"id": t["_id"], "created_at": _iso(t.get("created_at")), "channel": t.get("channel"),
                     "secure": bool(t.get("secure")), "status": t.get("status")} for t in threads],
        "messages": [await _message(s, m) for m in messages],
        "attachments": await _attachments(s, org_id, [m["_id"] for m in messages if m.get("direction") == "inbound"]),
        "links": [_link(lk) for lk in await s.store.links.find(in_threads).sort("_id", 1).to_list(None)],
        "audit": await _audit(s, org_id, contact_id, thread_ids),
    }


async def _message(s: Services, m: Doc) -> dict[str, Any]:
    author = m.get("author") or {}
    return {
        "id": m["_id"], "thread_id": m["thread_id"], "direction": m.get("direction"), "channel": m.get("channel"),
        "secure": bool(m.get("secure")), "created_at": _iso(m.get("created_at")),
        # Who wrote it, by kind: the client, staff, the API or the system (staff ids are the org's own).
        "author": author.get("kind"),
        "body": await s.conversations.open_body_or_erased(m) if m.get("body") else None,
        "status": m.get("status"), "error_code": m.get("error_code"),
        "status_history": [{"status": h.get("status"), "at": _iso(h.get("at")), "error_code": h.get("error_code")}
                           for h in m.get("status_history", [])],
        "flags": list(m.get("flags", [])),
    }


async def _attachments(s: Services, org_id: str, message_ids: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(0, len(message_ids), _CHUNK):
        found = s.store.attachments.find({"org_id": org_id, "message_id": {"$in": message_ids[i:i + _CHUNK]}})
        async for a in found.sort("_id", 1):
            try:
                name = await s.vault.open(org_id, "attachments", a["_id"], "filename", a["filename"])
                data: bytes | None = await s.vault.open_bytes(org_id, "attachments", a["_id"], "data", a["data"])
            except KeyErased:
                name, data = None, None
            out.append({"id": a["_id"], "message_id": a["message_id"], "filename": name,
                        "content_type": a.get("content_type"), "size": a.get("size"),
                        "data_base64": base64.b64encode(data).decode("ascii") if data is not None else None})
    return out


def _link(lk: Doc) -> dict[str, Any]:
    return {"id": lk["_id"], "thread_id": lk.get("thread_id"), "message_id": lk.get("message_id"),
            "channel": lk.get("channel"), "created_at": _iso(lk.get("created_at")),
            "expires_at": _iso(lk.get("expires_at")), "opened_at": _iso(lk.get("opened_at")),
            "revoked_at": _iso(lk.get("revoked_at")), "locked_at": _iso(lk.get("locked_at")),
            "pin_failures": int(lk.get("failures", 0))}


async def _audit(s: Services, org_id: str, contact_id: str, thread_ids: list[str]) -> list[dict[str, Any]]:
    """Entries naming the contact, or one of their threads (e.g. a staff member reading it)."""
    entries: dict[int, Doc] = {}
    async for e in s.store.audit.find({"org_id": org_id, "contact_id": contact_id}).sort("seq", 1):
        entries[e["seq"]] = e
    for t in thread_ids:
        async for e in s.store.audit.find({"org_id": org_id, "thread_id": t}).sort("seq", 1):
            entries[e["seq"]] = e
    return [{
        "seq": e["seq"], "at": _iso(e.get("at")), "action": e.get("action"), "outcome": e.get("outcome"),
        "actor": {"kind": (e.get("actor") or {}).get("kind"), "id": (e.get("actor") or {}).get("id")},
        "ip": e.get("ip"),
        **{k: e[k] for k in ("thread_id", "message_id", "link_id", "staff_id") if e.get(k)},
        "detail": e.get("detail") or {},
    } for _, e in sorted(entries.items())]


def _consent(c: Doc) -> dict[str, Any]:
    return {"state": c.get("state"), "at": _iso(c.get("at")), "source": c.get("source")}


def _hold(hold: Doc | None) -> dict[str, Any] | None:
    return {"since": _iso(hold.get("at")), "by": hold.get("by")} if hold else None


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None
