"""The domain services, built once from config and shared by every edge (no transport code here)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.compliance.retention import Retention
from gateway.compliance.subject_data import SubjectData
from gateway.messaging.alerts import StoredStaffAlerts
from gateway.messaging.attachments import Attachments
from gateway.messaging.contacts import Contacts
from gateway.messaging.conversations import Conversations
from gateway.messaging.outbox import Outbox
from gateway.messaging.reply_tokens import ReplyTokens
from gateway.ports import Clock, StaffAlerts
from gateway.runtime.config import Config
from gateway.security.access import BreakGlass
from gateway.security.audit import SYSTEM, AuditLog
from gateway.security.crypto import Keyring, Sealer
from gateway.security.links import Links
from gateway.security.sessions import Sessions
from gateway.security.vault import Vault
from gateway.storage.store import Store
from gateway.tenancy.orgs import Orgs
from gateway.tenancy.staff import Staff


@dataclass(frozen=True, slots=True)
class Services:
    config: Config
    clock: Clock
    store: Store
    sealer: Sealer
    vault: Vault
    audit: AuditLog
    orgs: Orgs
    contacts: Contacts
    links: Links
    sessions: Sessions
    outbox: Outbox
    conversations: Conversations
    reply_tokens: ReplyTokens
    alerts: StaffAlerts
    break_glass: BreakGlass
    staff: Staff
    attachments: Attachments
    retention: Retention
    subject_data: SubjectData

    @property
    def public_url(self) -> str:
        return self.config.server.public_url.rstrip("/")


def build_services(config: Config, store: Store, keyring: Keyring, clock: Clock, *,
                   alerts: StaffAlerts | None = None) -> Services:
    """The services; `alerts` replaces the stored staff alerts (tests pass a recording fake)."""
    sealer = Sealer(keyring)
    vault = Vault(store, sealer, clock)
    audit = AuditLog(store, sealer, clock)

    async def integrity_failure(org_id: str, collection: str, doc_id: str, field: str) -> None:
        await audit.append(org_id, "integrity.fail", SYSTEM, outcome="failed",
                           detail={"collection": collection, "document": doc_id, "field": field})

    vault.on_tamper = integrity_failure  # a tampered field is an audit event (docs/security-model.md, 'Sealed fields')
    contacts = Contacts(store, vault, sealer, clock)
    links = Links(store, audit, clock)
    outbox = Outbox(store, vault, clock)
    reply_tokens = ReplyTokens(store, clock)
    staff = Staff(store, clock)
    # Alerts are mailed through the outbox: every runtime has a mail sender (the SMTP relay, or the
    # sandbox shown at /sandbox when smtp.host is empty: gateway/runtime/app.py build_runtime).
    alerts = alerts if alerts is not None else StoredStaffAlerts(store, clock, outbox=outbox, staff=staff)
    orgs = Orgs(store, clock)
    conversations = Conversations(store, vault, contacts, links, outbox, audit, clock, reply_tokens)
    return Services(
        config=config, clock=clock, store=store, sealer=sealer, vault=vault, audit=audit,
        orgs=orgs, contacts=contacts, links=links, sessions=Sessions(store, clock),
        outbox=outbox, reply_tokens=reply_tokens, alerts=alerts,
        break_glass=BreakGlass(store, vault, audit, alerts, clock), staff=staff,
        attachments=Attachments(store, vault),
        conversations=conversations,
        retention=Retention(store, orgs, audit, clock),
        subject_data=SubjectData(store, orgs, contacts, conversations, vault, clock),
    )
