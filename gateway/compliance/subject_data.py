"""A data subject's own data: the complete export (right of access and portability, GDPR Art. 15
and 20; docs/security-model.md, 'Subject export') and the legal hold that stops erasure (Art. 17(3);
docs/security-model.md, 'Erasure and legal hold').

The export is one JSON document with everything stored about one contact of one org, opened:
the contact (name, addresses, consent and its history, the notes staff left with consent changes,
PIN set or not), their conversation threads, every message with its delivery history, their
attachments (content in base64), the links sent to them (never a token or its hash), the PIN
guard of each of their threads (wrong-PIN count, lock, renewals: ids and counters), and the audit
entries that name them or their threads (ids, actions and times; the chain's MACs stay behind).
Nothing of another contact: every read is scoped to this org and this contact's own ids. Whoever
asks for it is audited by the caller (`contact.exported`).

Once a contact is erased their data key is gone: the export then says so and carries what is
left (ids, times, states), with every sealed field as null.
"""

from __future__ import annotations

import base64
from typing import Any

from gateway.errors import KeyErased, NotFound
from gateway.messaging.contacts import Contacts
from gateway.messaging.conversations import Conversations
from gateway.ports import Clock
from gateway.security.vault import Vault
from gateway.storage.store import Doc, Store
from gateway.tenancy.orgs import Orgs

FORMAT = "hushlink.subject-export/1"
_CHUNK = 500  # ids per $in read of a long conversation's attachments


class SubjectData:
    """The subject export (see the module docstring)."""

    def __init__(self, store: Store, orgs: Orgs, contacts: Contacts, conversations: Conversations, vault: Vault,
                 clock: Clock) -> None:
        self._store = store
        self._orgs = orgs
        self._contacts = contacts
        self._conversations = conversations
        self._vault = vault
        self._clock = clock

    async def export_contact(self, org_id: str, contact_id: str) -> dict[str, Any]:
        store = self._store
        doc = await store.contacts.find_one({"_id": contact_id, "org_id": org_id})
        if doc is None:
            raise NotFound("contact")
        org = await self._orgs.get(org_id)
        erased = bool(doc.get("erased_at"))
        fields = {f: None for f in ("name", "phone", "email")} if erased else \
            await self._contacts.reveal(contact_id, org_id)
        threads = [t async for t in store.threads.find({"org_id": org_id, "contact_id": contact_id}).sort("_id", 1)]
        thread_ids = [t["_id"] for t in threads]
        in_threads = {"org_id": org_id, "thread_id": {"$in": thread_ids}}
        messages = await store.messages.find(in_threads).sort("_id", 1).to_list(None)
        guards = await store.link_guards.find({"org_id": org_id, "contact_id": contact_id}).to_list(None)
        return {
            "format": FORMAT,
            "exported_at": _iso(self._clock.now()),
            "organization": {"id": org_id, "name": org.name},
            "contact": {
                "id": contact_id, "created_at": _iso(doc.get("created_at")), "erased_at": _iso(doc.get("erased_at")),
                **fields, "pin_set": bool(doc.get("pin_hash")), "last_channel": doc.get("last_channel"),
                "consent": {ch: _consent(c) for ch, c in (doc.get("consent") or {}).items()},
                "consent_history": [_consent(e) | {"channel": e.get("channel")} for e in doc.get("consent_log", [])],
                "consent_notes": [await self._consent_note(org_id, contact_id, n)
                                  for n in doc.get("consent_notes", [])],
                "legal_hold": _hold(doc.get("legal_hold")),
            },
            "threads": [{"id": t["_id"], "created_at": _iso(t.get("created_at")), "channel": t.get("channel"),
                         "secure": bool(t.get("secure")), "status": t.get("status")} for t in threads],
            "messages": [await self._message(m) for m in messages],
            "attachments": await self._attachments(
                org_id, [m["_id"] for m in messages if m.get("direction") == "inbound"]),
            "links": [_link(lk) for lk in await store.links.find(in_threads).sort("_id", 1).to_list(None)],
            "link_guards": [_guard(g) for g in sorted(guards, key=lambda g: str(g.get("thread_id")))],
            "audit": await self._audit(org_id, contact_id, thread_ids),
        }

    async def _consent_note(self, org_id: str, contact_id: str, n: Doc) -> dict[str, Any]:
        """A note staff left with a consent change (gateway/messaging/consent.py), opened; null once erased."""
        try:
            text: str | None = await self._vault.open(org_id, "contacts", contact_id, f"consent_note:{n['_id']}",
                                                      n["note"])
        except KeyErased:
            text = None
        return {"id": n["_id"], "at": _iso(n.get("at")), "channel": n.get("channel"), "state": n.get("state"),
                "reason": n.get("reason"), "by": n.get("by"), "note": text}

    async def _message(self, m: Doc) -> dict[str, Any]:
        author = m.get("author") or {}
        return {
            "id": m["_id"], "thread_id": m["thread_id"], "direction": m.get("direction"), "channel": m.get("channel"),
            "secure": bool(m.get("secure")), "created_at": _iso(m.get("created_at")),
            # Who wrote it, by kind: the client, staff, the API or the system (staff ids are the org's own).
            "author": author.get("kind"),
            "body": await self._conversations.open_body_or_erased(m) if m.get("body") else None,
            "status": m.get("status"), "error_code": m.get("error_code"),
            "status_history": [{"status": h.get("status"), "at": _iso(h.get("at")), "error_code": h.get("error_code")}
                               for h in m.get("status_history", [])],
            "flags": list(m.get("flags", [])),
        }

    async def _attachments(self, org_id: str, message_ids: list[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for i in range(0, len(message_ids), _CHUNK):
            found = self._store.attachments.find({"org_id": org_id, "message_id": {"$in": message_ids[i:i + _CHUNK]}})
            async for a in found.sort("_id", 1):
                try:
                    name = await self._vault.open(org_id, "attachments", a["_id"], "filename", a["filename"])
                    data: bytes | None = await self._vault.open_bytes(org_id, "attachments", a["_id"], "data",
                                                                      a["data"])
                except KeyErased:
                    name, data = None, None
                out.append({"id": a["_id"], "message_id": a["message_id"], "filename": name,
                            "content_type": a.get("content_type"), "size": a.get("size"),
                            "data_base64": base64.b64encode(data).decode("ascii") if data is not None else None})
        return out

    async def _audit(self, org_id: str, contact_id: str, thread_ids: list[str]) -> list[dict[str, Any]]:
        """Entries naming the contact, or one of their threads (e.g. a staff member reading it)."""
        entries: dict[int, Doc] = {}
        async for e in self._store.audit.find({"org_id": org_id, "contact_id": contact_id}).sort("seq", 1):
            entries[e["seq"]] = e
        for t in thread_ids:
            async for e in self._store.audit.find({"org_id": org_id, "thread_id": t}).sort("seq", 1):
                entries[e["seq"]] = e
        return [{
            "seq": e["seq"], "at": _iso(e.get("at")), "action": e.get("action"), "outcome": e.get("outcome"),
            "actor": {"kind": (e.get("actor") or {}).get("kind"), "id": (e.get("actor") or {}).get("id")},
            "ip": e.get("ip"),
            **{k: e[k] for k in ("thread_id", "message_id", "link_id", "staff_id") if e.get(k)},
            "detail": e.get("detail") or {},
        } for _, e in sorted(entries.items())]


def _guard(g: Doc) -> dict[str, Any]:
    """A thread's PIN guard (gateway/security/links.py): ids and counters, nothing sealed."""
    return {"thread_id": g.get("thread_id"), "pin_failures": int(g.get("failures", 0)),
            "locked_at": _iso(g.get("locked_at")), "renewals": int(g.get("renewals", 0)),
            "renewals_since": _iso(g.get("renewals_since"))}


def _link(lk: Doc) -> dict[str, Any]:
    return {"id": lk["_id"], "thread_id": lk.get("thread_id"), "message_id": lk.get("message_id"),
            "channel": lk.get("channel"), "created_at": _iso(lk.get("created_at")),
            "expires_at": _iso(lk.get("expires_at")), "opened_at": _iso(lk.get("opened_at")),
            "revoked_at": _iso(lk.get("revoked_at")), "locked_at": _iso(lk.get("locked_at")),
            "pin_failures": int(lk.get("failures", 0))}


def _consent(c: Doc) -> dict[str, Any]:
    return {"state": c.get("state"), "at": _iso(c.get("at")), "source": c.get("source")}


def _hold(hold: Doc | None) -> dict[str, Any] | None:
    return {"since": _iso(hold.get("at")), "by": hold.get("by")} if hold else None


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None
