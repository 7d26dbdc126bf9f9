"""What a client was shown: the first view of a thread in a session and the first view of each
outbound message, both audited before the content goes out (HIPAA 164.312(b), audit controls)."""

from __future__ import annotations

from gateway.ports import Clock
from gateway.security.audit import Actor, AuditLog
from gateway.security.sessions import Sessions
from gateway.storage.store import Doc, Store


class ClientViews:
    def __init__(self, store: Store, sessions: Sessions, audit: AuditLog, clock: Clock) -> None:
        self._store = store
        self._sessions = sessions
        self._audit = audit
        self._clock = clock

    async def thread_viewed(self, session: Doc, docs: list[Doc], ip: str) -> None:
        """Once per session: a thread view, and 'viewed' on each outbound message not yet seen."""
        if not await self._sessions.claim_flag(session, "viewed"):
            return
        actor = Actor("client", session["contact_id"])
        try:
            await self._audit.append(session["org_id"], "thread.viewed", actor, ip=ip,
                                     thread_id=session["thread_id"], contact_id=session["contact_id"],
                                     link_id=session["link_id"])
        except BaseException:
            # Not audited, so not viewed: the next request claims the view again (and audits it)
            # instead of showing the conversation unaudited.
            await self._sessions.update(session, viewed=False)
            raise
        await self.messages_shown(session, docs, ip)

    async def messages_shown(self, session: Doc, docs: list[Doc], ip: str) -> None:
        """'viewed' (and its audit entry) on each outbound message shown for the first time: on the
        thread page, and when live updates bring it to an open page."""
        actor = Actor("client", session["contact_id"])
        now = self._clock.now()
        for d in docs:
            if d["direction"] == "outbound" and not d.get("viewed_at"):
                res = await self._store.messages.update_one({"_id": d["_id"], "viewed_at": None},
                                                            {"$set": {"viewed_at": now}})
                if res.modified_count:
                    await self._audit.append(session["org_id"], "message.viewed", actor, ip=ip,
                                             thread_id=session["thread_id"], message_id=d["_id"])
