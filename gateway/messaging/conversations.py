"""Threads and messages: the one service the edges call to send, receive and read (the core service).

Each job lives in a module of its own, with its own collaborators; `Conversations` builds them from
the shared ones and exposes their methods under the names the edges use:
  gateway/messaging/threads.py        thread_for, threads_for, get_thread, assign, set_status, mark_read, list_threads
  gateway/messaging/sending.py        send, reply_staff; pin_in_force, set_thread_pin
  gateway/messaging/notices.py        send_link_notice, issue_link_notices, notice_permission (Notice)
  gateway/messaging/inbound_record.py record_inbound, record_inbound_many (Inbound)
  gateway/messaging/history.py        get_message, messages, latest_messages, open_body, open_body_or_erased
"""

from __future__ import annotations

from gateway.messaging.contacts import Contacts
from gateway.messaging.history import History
from gateway.messaging.inbound_record import Inbound, InboundRecorder
from gateway.messaging.notices import Notice, Notices
from gateway.messaging.outbox import Outbox
from gateway.messaging.reply_tokens import ReplyTokens
from gateway.messaging.sending import MAX_BODY, Sender, Sent, ThreadPins, refuse, validate_body
from gateway.messaging.threads import CHANNELS, NEUTRAL_PREVIEW, AssigneeFilter, Threads
from gateway.ports import Clock
from gateway.security.audit import AuditLog
from gateway.security.links import Links
from gateway.security.vault import Vault
from gateway.storage.recent import Recent
from gateway.storage.store import Store

# Names the edges import from here (the module they knew before the split).
__all__ = ["CHANNELS", "MAX_BODY", "NEUTRAL_PREVIEW", "AssigneeFilter", "Conversations", "Inbound", "Notice",
           "Sent", "refuse", "validate_body"]


class Conversations:
    def __init__(
        self, store: Store, vault: Vault, contacts: Contacts, links: Links, outbox: Outbox,
        audit: AuditLog, clock: Clock, reply_tokens: ReplyTokens,
    ) -> None:
        # Newest-first pages, one index window at a time (gateway/storage/recent.py); shared by the
        # thread list and the message pages, and by the staff pages that read windows of their own.
        self.recent = Recent()
        threads = Threads(store, audit, clock, self.recent)
        history = History(store, vault, self.recent)
        sender = Sender(store, vault, contacts, threads, links, outbox, reply_tokens, audit, clock)
        pins = ThreadPins(store, threads)
        notices = Notices(store, threads, links, outbox, reply_tokens, audit)
        inbound = InboundRecorder(store, vault, contacts, threads, clock)

        self.thread_for = threads.thread_for
        self.threads_for = threads.threads_for
        self.get_thread = threads.get_thread
        self.assign = threads.assign
        self.set_status = threads.set_status
        self.mark_read = threads.mark_read
        self.list_threads = threads.list_threads

        self.send = sender.send
        self.reply_staff = sender.reply_staff
        self.pin_in_force = pins.pin_in_force
        self.set_thread_pin = pins.set_thread_pin

        self.send_link_notice = notices.send_link_notice
        self.issue_link_notices = notices.issue_link_notices
        self.notice_permission = notices.notice_permission

        self.record_inbound = inbound.record_inbound
        self.record_inbound_many = inbound.record_inbound_many

        self.get_message = history.get_message
        self.messages = history.messages
        self.latest_messages = history.latest_messages
        self.open_body = history.open_body
        self.open_body_or_erased = history.open_body_or_erased
