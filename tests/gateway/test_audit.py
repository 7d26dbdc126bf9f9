"""The tamper-evident audit log: an HMAC hash chain per org, ids only, linear under concurrency."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from datetime import timedelta

import bson
import pytest

from gateway.ids import new_id
from gateway.security.audit import GENESIS, Actor, AuditLog, _canonical
from gateway.security.crypto import Keyring, Sealer

ORG = "6b00000000000000000000aa"
OTHER = "6b00000000000000000000bb"


@pytest.fixture
def audit(store, keyring, clock) -> AuditLog:
    return AuditLog(store, Sealer(keyring), clock)


async def fill(audit: AuditLog, clock, n: int = 6, org: str = ORG) -> list[dict]:
    out = []
    for i in range(n):
        clock.advance(seconds=1)
        out.append(await audit.append(org, f"test.action{i}", Actor("staff", f"s{i}"), ip="192.0.2.1",
                                      thread_id=new_id(), message_id=new_id(), detail={"n": i}))
    return out


async def entries(store, org: str = ORG) -> list[dict]:
    return [d async for d in store.audit.find({"org_id": org}).sort("seq", 1)]


async def test_appended_chain_verifies(audit, store, clock):
    assert await audit.verify(ORG) is None  # an empty chain is intact
    made = await fill(audit, clock)
    stored = await entries(store)
    assert [e["seq"] for e in stored] == [1, 2, 3, 4, 5, 6]
    assert stored[0]["prev"] == GENESIS
    for before, after in zip(stored, stored[1:], strict=False):
        assert after["prev"] == before["mac"]
    assert [e["mac"] for e in stored] == [e["mac"] for e in made]
    assert await audit.verify(ORG) is None
    head = await audit.head(ORG)
    assert head["seq"] == 6 and head["mac"] == stored[-1]["mac"]


@pytest.mark.parametrize("field,value", [
    ("action", "test.innocent"),
    ("outcome", "denied"),
    ("ip", "198.51.100.7"),
    ("actor", {"kind": "system", "id": None}),
    ("detail", {"n": 99}),
    ("thread_id", "6b00000000000000000000ff"),
    ("org_id_extra", "x"),
])
async def test_modifying_any_entry_is_detected_at_its_seq(audit, store, clock, field, value):
    await fill(audit, clock)
    target = (await entries(store))[2]
    await store.audit.update_one({"_id": target["_id"]}, {"$set": {field: value}})
    assert await audit.verify(ORG) == 3


async def test_modified_time_is_detected(audit, store, clock):
    await fill(audit, clock)
    target = (await entries(store))[3]
    await store.audit.update_one({"_id": target["_id"]}, {"$set": {"at": target["at"] - timedelta(hours=1)}})
    assert await audit.verify(ORG) == 4


async def test_removed_field_is_detected(audit, store, clock):
    await fill(audit, clock)
    target = (await entries(store))[1]
    await store.audit.update_one({"_id": target["_id"]}, {"$unset": {"message_id": ""}})
    assert await audit.verify(ORG) == 2


async def test_recomputed_mac_without_the_key_is_detected(audit, store, clock):
    await fill(audit, clock)
    target = (await entries(store))[4]
    forged = {**target, "action": "test.forged"}
    forged["mac"] = hmac.new(b"guessed key" * 3, _canonical(forged), hashlib.sha256).hexdigest()
    await store.audit.replace_one({"_id": target["_id"]}, forged)
    assert await audit.verify(ORG) == 5


@pytest.mark.parametrize("index,bad", [(0, 1), (2, 3), (4, 5)])
async def test_deleting_an_entry_is_detected(audit, store, clock, index, bad):
    await fill(audit, clock)
    target = (await entries(store))[index]
    await store.audit.delete_one({"_id": target["_id"]})
    assert await audit.verify(ORG) == bad


async def test_reordering_entries_is_detected(audit, store, clock):
    await fill(audit, clock)
    e = await entries(store)
    # Swap the seq numbers of entries 2 and 3 (through a free number; seq is unique).
    await store.audit.update_one({"_id": e[1]["_id"]}, {"$set": {"seq": 1000}})
    await store.audit.update_one({"_id": e[2]["_id"]}, {"$set": {"seq": 2}})
    await store.audit.update_one({"_id": e[1]["_id"]}, {"$set": {"seq": 3}})
    assert await audit.verify(ORG) == 2


async def test_inserting_an_entry_is_detected(audit, store, clock):
    await fill(audit, clock)
    e = await entries(store)
    # Make room after seq 3 and slip a forged entry in, chained onto entry 3.
    for entry in reversed(e[3:]):
        await store.audit.update_one({"_id": entry["_id"]}, {"$set": {"seq": entry["seq"] + 1}})
    forged = {**{k: v for k, v in e[3].items() if k != "_id"}, "seq": 4, "prev": e[2]["mac"],
              "action": "test.forged"}
    forged["mac"] = hmac.new(b"not the key", _canonical(forged), hashlib.sha256).hexdigest()
    await store.audit.insert_one(forged)
    assert await audit.verify(ORG) == 4


async def test_appending_a_forged_entry_at_the_head_is_detected(audit, store, clock):
    made = await fill(audit, clock, n=3)
    forged = {**{k: v for k, v in made[-1].items() if k != "_id"}, "seq": 4, "prev": made[-1]["mac"],
              "action": "test.forged"}
    forged["mac"] = Sealer(Keyring.generate()).mac(_canonical(forged))  # a valid MAC, wrong key
    await store.audit.insert_one(forged)
    assert await audit.verify(ORG) == 4


async def test_chains_are_per_org(audit, store, clock):
    await fill(audit, clock, n=3, org=ORG)
    await fill(audit, clock, n=2, org=OTHER)
    assert [e["seq"] for e in await entries(store, OTHER)] == [1, 2]
    target = (await entries(store, ORG))[0]
    await store.audit.update_one({"_id": target["_id"]}, {"$set": {"action": "x"}})
    assert await audit.verify(ORG) == 1
    assert await audit.verify(OTHER) is None


async def test_concurrent_appends_form_one_contiguous_chain(audit, store):
    results = await asyncio.gather(*(
        audit.append(ORG, "test.concurrent", Actor("api", f"k{i}"), detail={"i": i}) for i in range(50)
    ))
    assert sorted(r["seq"] for r in results) == list(range(1, 51))
    stored = await entries(store)
    assert [e["seq"] for e in stored] == list(range(1, 51))
    assert sorted(e["detail"]["i"] for e in stored) == list(range(50))
    assert await audit.verify(ORG) is None


async def test_entries_hold_ids_not_content(audit, clock):
    entry = await audit.append(ORG, "message.send", Actor("api", "key1"), thread_id=new_id(),
                               message_id=new_id(), link_id=new_id(), contact_id=new_id(),
                               detail={"secure": True, "channel": "sms"})
    allowed = {"_id", "org_id", "seq", "at", "action", "actor", "outcome", "ip", "detail", "prev", "mac",
               "thread_id", "message_id", "link_id", "contact_id", "staff_id", "event_id", "job_id"}
    assert set(entry) <= allowed
    with pytest.raises(ValueError):
        await audit.append(ORG, "message.send", Actor("api"), body="the message text")  # type: ignore[arg-type]
    assert entry["at"] == clock.now()


async def test_audit_of_a_real_send_holds_no_body_or_address(gw):
    body = "CANARY-AUDIT Your HIV test result is negative."
    pin = "Pin#Secret9"  # no hex digest can contain it by chance
    await gw.api_send(body=body, secure=True, pin=pin)
    await gw.drain()
    token = gw.last_link_token()
    assert (await gw.open_link(token, pin=pin)).status == 303
    assert (await gw.client.get("/s/thread")).status == 200
    docs = [d async for d in gw.store.audit.find({"org_id": gw.org.id})]
    actions = {d["action"] for d in docs}
    assert {"message.send", "message.accepted", "link.opened", "thread.viewed", "message.viewed"} <= actions
    for d in docs:
        raw = bson.encode(d)
        for secret in (body, "CANARY-AUDIT", token, pin, "5551230001"):
            assert secret.encode() not in raw, (secret, d["action"])
    assert await gw.services.audit.verify(gw.org.id) is None


async def test_the_recorded_head_catches_up_and_cutting_off_the_tail_is_detected(audit, store, clock):
    await fill(audit, clock)
    await audit.flush()
    assert (await store.audit_heads.find_one({"_id": ORG}))["seq"] == 6
    await store.audit.delete_many({"org_id": ORG, "seq": {"$gte": 5}})
    assert await audit.verify(ORG) == 5


async def test_appends_that_come_together_share_head_writes(audit, store):
    written: list[int] = []
    first_write = asyncio.Event()
    save = audit._save_head

    async def slow_save(org_id, head):
        written.append(head["seq"])
        await first_write.wait()  # the database is slow: appends keep coming meanwhile
        await save(org_id, head)

    audit._save_head = slow_save  # type: ignore[method-assign]
    await asyncio.gather(*(audit.append(ORG, "test.burst", Actor("api", f"k{i}")) for i in range(40)))
    assert len(written) == 1  # every append returned while the first head write was in flight
    first_write.set()
    await audit.flush()
    assert written == [written[0], 40]  # then one write for all the others: the latest head
    assert (await store.audit_heads.find_one({"_id": ORG}))["seq"] == 40
    assert await audit.verify(ORG) is None


async def test_the_head_is_written_at_most_once_per_interval_unless_flushed(audit, store, monkeypatch):
    """Page views that audit one after another pay for one head write a second, not one each."""
    monkeypatch.setattr("gateway.security.audit.HEAD_INTERVAL_SECONDS", 60.0)
    saves: list[int] = []
    saved = asyncio.Event()
    save = audit._save_head

    async def counted(org_id, head):
        saves.append(head["seq"])
        await save(org_id, head)
        saved.set()

    audit._save_head = counted  # type: ignore[method-assign]
    await audit.append(ORG, "test.view", Actor("staff", "s1"))
    await asyncio.wait_for(saved.wait(), 10)  # the first head goes out at once
    for i in range(5):
        await audit.append(ORG, "test.view", Actor("staff", f"s{i}"))
    await asyncio.sleep(0.1)
    assert saves == [1]  # the later ones wait for the interval...
    assert (await store.audit_heads.find_one({"_id": ORG}))["seq"] == 1
    await audit.flush()  # ...unless flushed (verify, shutdown): then the latest head, once
    assert saves == [1, 6]
    assert await audit.verify(ORG) is None


async def test_a_waiting_head_is_written_when_its_interval_is_over(audit, store, monkeypatch):
    monkeypatch.setattr("gateway.security.audit.HEAD_INTERVAL_SECONDS", 0.2)
    for i in range(4):
        await audit.append(ORG, "test.view", Actor("staff", f"s{i}"))
    for _ in range(200):  # no flush: the writer goes on its own once the interval is over
        if ((await store.audit_heads.find_one({"_id": ORG})) or {}).get("seq") == 4:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the head was not written after its interval")


async def test_a_head_left_behind_by_a_crash_still_verifies_and_the_next_append_moves_it(audit, store, clock, keyring):
    await fill(audit, clock, n=3)
    await audit.flush()
    # A process that stored entries 4 and 5 and died before recording its head:
    crashed = AuditLog(store, Sealer(keyring), clock)
    crashed._record_head = lambda org_id, head: None  # type: ignore[method-assign]
    await crashed.append(ORG, "test.lost_head", Actor("system"))
    await crashed.append(ORG, "test.lost_head", Actor("system"))
    assert (await store.audit_heads.find_one({"_id": ORG}))["seq"] == 3
    fresh = AuditLog(store, Sealer(keyring), clock)
    assert await fresh.verify(ORG) is None
    entry = await fresh.append(ORG, "test.after", Actor("system"))
    assert entry["seq"] == 6
    await fresh.flush()
    assert (await store.audit_heads.find_one({"_id": ORG}))["seq"] == 6
    assert await fresh.verify(ORG) is None


async def test_a_valid_chain_and_its_signed_head_verify(audit, store, clock):
    made = await fill(audit, clock)
    await audit.flush()
    recorded = await store.audit_heads.find_one({"_id": ORG})
    assert (recorded["seq"], recorded["mac"]) == (6, made[-1]["mac"])
    assert isinstance(recorded["sig"], str) and recorded["sig"]
    assert await audit.verify(ORG) is None


async def test_lowering_the_recorded_head_after_cutting_off_the_tail_is_detected(audit, store, clock):
    made = await fill(audit, clock)
    await audit.flush()
    await store.audit.delete_many({"org_id": ORG, "seq": {"$gte": 5}})
    # Someone with write access but no key lowers the head to the new tail (as the old code wrote it).
    await store.audit_heads.replace_one({"_id": ORG}, {"_id": ORG, "seq": 4, "mac": made[3]["mac"]})
    assert await audit.verify(ORG) == 5


async def test_lowering_the_head_with_a_sig_made_without_the_key_is_detected(audit, store, clock, keyring):
    from gateway.security.audit import _head_bytes

    made = await fill(audit, clock)
    await audit.flush()
    await store.audit.delete_many({"org_id": ORG, "seq": {"$gte": 5}})
    sig = Sealer(Keyring.generate()).mac(_head_bytes(ORG, 4, made[3]["mac"]))  # well formed, wrong key
    await store.audit_heads.replace_one({"_id": ORG}, {"_id": ORG, "seq": 4, "mac": made[3]["mac"], "sig": sig})
    assert await audit.verify(ORG) == 5


@pytest.mark.parametrize("sig", ["0" * 64, "garbage", None, 12])
async def test_a_head_with_a_forged_sig_is_detected(audit, store, clock, sig):
    await fill(audit, clock)
    await audit.flush()
    await store.audit_heads.update_one({"_id": ORG}, {"$set": {"sig": sig}})
    assert await audit.verify(ORG) == 7


async def test_a_head_signed_for_another_org_is_detected(audit, store, clock):
    await fill(audit, clock, n=3, org=ORG)
    await fill(audit, clock, n=3, org=OTHER)
    await audit.flush()
    other = await store.audit_heads.find_one({"_id": OTHER})
    await store.audit_heads.update_one({"_id": ORG}, {"$set": {"sig": other["sig"]}})
    assert await audit.verify(ORG) == 4
    assert await audit.verify(OTHER) is None


async def test_a_deleted_head_is_detected(audit, store, clock):
    await fill(audit, clock)
    await audit.flush()
    await store.audit.delete_many({"org_id": ORG, "seq": {"$gte": 5}})
    await store.audit_heads.delete_one({"_id": ORG})
    assert await audit.verify(ORG) == 5
    assert await audit.verify(OTHER) is None  # no entries and no head: an intact empty chain


async def test_an_audit_log_from_an_earlier_build_moves_to_its_own_database(audit, store, clock):
    """Earlier builds kept the entries in the main database; start-up moves them, once."""
    await fill(audit, clock)
    await audit.flush()
    entries = await store.audit.find({}).to_list(None)
    await store.db["audit"].insert_many(entries)  # where an earlier build kept them
    await store.audit.delete_many({})
    assert await audit.verify(ORG) is not None  # a recorded head without its entries is reported
    assert await store.move_old_audit_log() == len(entries) > 0
    assert "audit" not in await store.db.list_collection_names()
    assert await audit.verify(ORG) is None
    assert await store.move_old_audit_log() == 0
