"""Consent changed by hand: a staff member opts a contact in or out of a channel, saying why.

The reason is a short code from a fixed list (REASONS), which is all the audit entry and the
consent record carry; what staff type to explain it is sealed with the contact's data key (it may
name the client or their circumstances) and kept on the contact, so it is erased with them. The
consent itself goes through Contacts.set_consent like every other change (keywords, Twilio 21610,
the one-click unsubscribe link), so its ordering rules apply alike.
"""

from __future__ import annotations

from gateway.errors import ValidationError
from gateway.ids import new_id
from gateway.messaging.contacts import OPTED_IN, OPTED_OUT, Contact, Contacts
from gateway.ports import Clock
from gateway.security.audit import Actor, AuditLog
from gateway.security.vault import Vault
from gateway.storage.store import Store

CHANNELS = ("sms", "email")
STATES = (OPTED_IN, OPTED_OUT)
REASONS = {
    "client_asked": "The client asked us (by phone, in person or in writing)",
    "consent_form": "The client signed a consent form",
    "wrong_number": "The number or address is not the client's",
    "correction": "Correcting a mistake in the record",
    "other": "Other (explain in the note)",
}
NOTE_MAX = 500


def validate_change(channel: str, state: str, reason: str, note: str) -> str:
    """Check a change staff asked for; returns the note, trimmed. ValidationError names the field."""
    if channel not in CHANNELS:
        raise ValidationError("channel", "must be sms or email")
    if state not in STATES:
        raise ValidationError("state", f"must be {OPTED_IN} or {OPTED_OUT}")
    if reason not in REASONS:
        raise ValidationError("reason", "choose why consent changes")
    note = note.strip()
    if len(note) > NOTE_MAX:
        raise ValidationError("note", f"must be at most {NOTE_MAX} characters")
    if reason == "other" and not note:
        raise ValidationError("note", "say why consent changes (the reason is Other)")
    if "\x00" in note:
        raise ValidationError("note", "must not contain NUL characters")
    return note


class StaffConsent:
    """Consent changes made by staff (audited, reason code in clear, note sealed)."""

    def __init__(self, store: Store, vault: Vault, contacts: Contacts, audit: AuditLog, clock: Clock) -> None:
        self._store = store
        self._vault = vault
        self._contacts = contacts
        self._audit = audit
        self._clock = clock

    async def change(self, contact: Contact, *, channel: str, state: str, reason: str, note: str,
                     actor: Actor, ip: str | None = None) -> bool:
        """Set the contact's consent on `channel`; False when it already was `state` (nothing recorded)."""
        note = validate_change(channel, state, reason, note)
        org_id = contact.org_id
        if not await self._contacts.set_consent(org_id, contact.id, channel, state, f"staff:{reason}"):
            return False
        if note:
            note_id = new_id()
            sealed = await self._vault.seal(contact.dek_id, org_id, "contacts", contact.id, f"consent_note:{note_id}",
                                            note)
            await self._store.contacts.update_one({"_id": contact.id, "org_id": org_id}, {"$push": {"consent_notes": {
                "_id": note_id, "at": self._clock.now(), "channel": channel, "state": state, "reason": reason,
                "by": actor.id, "note": sealed}}})
        await self._audit.append(org_id, "consent.opt_out" if state == OPTED_OUT else "consent.opt_in", actor, ip=ip,
                                 contact_id=contact.id,
                                 detail={"channel": channel, "source": "staff", "reason": reason, "note": bool(note)})
        return True

    async def notes(self, contact: Contact) -> list[dict[str, object]]:
        """The notes staff left with their changes, newest first, opened (for the contact page)."""
        doc = await self._store.contacts.find_one({"_id": contact.id, "org_id": contact.org_id},
                                                  projection={"consent_notes": 1})
        out: list[dict[str, object]] = []
        for n in reversed((doc or {}).get("consent_notes", [])):
            text = await self._vault.open(contact.org_id, "contacts", contact.id, f"consent_note:{n['_id']}", n["note"])
            out.append({"at": n["at"], "channel": n["channel"], "state": n["state"],
                        "reason": REASONS.get(n["reason"], n["reason"]), "note": text})
        return out
