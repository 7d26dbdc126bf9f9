"""Envelope encryption, AAD binding, tokens, keyring handling, crypto-shredding and PIN hashes."""

from __future__ import annotations

import ast
import base64
import os
import re
import stat
from pathlib import Path

import pytest
from bson import Binary

from gateway.errors import ConfigError, IntegrityError, ValidationError
from gateway.ids import new_id
from gateway.security.crypto import Keyring, Sealer, aad, load_or_create_keyring, write_keyring
from gateway.security.pins import generate_pin, hash_secret, needs_rehash, validate_pin, verify_secret
from gateway.security.tokens import looks_like_token, new_token, token_hash
from gateway.security.vault import Vault

ORG = "6b0000000000000000000001"
OTHER_ORG = "6b0000000000000000000002"
ARGON2 = re.compile(r"^\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+$")


def nonce_of(sealed: bytes) -> bytes:
    start = 2 + sealed[1]
    return sealed[start:start + 12]


# -- sealing ------------------------------------------------------------------------------------
def test_seal_open_roundtrip_and_format():
    sealer = Sealer(Keyring.generate())
    dek = sealer.new_data_key()
    where = aad(ORG, "messages", "m1", "body")
    for text in ("", "hello", "ünïcödé ✓ 🙂", "x" * 10_000):
        sealed = sealer.seal("contact:c1", dek, text, where)
        assert sealed[0] == 1
        assert Sealer.dek_id_of(sealed) == "contact:c1"
        assert sealer.open(dek, sealed, where).decode() == text
        if text:
            assert text.encode() not in sealed
    raw = bytes(range(256))
    assert sealer.open(dek, sealer.seal("k", dek, raw, where), where) == raw


@pytest.mark.parametrize("moved", [
    (ORG, "messages", "m2", "body"),        # another document
    (ORG, "messages", "m1", "preview"),     # another field
    (ORG, "contacts", "m1", "body"),        # another collection
    (OTHER_ORG, "messages", "m1", "body"),  # another organization
])
def test_ciphertext_is_bound_to_its_place(moved):
    sealer = Sealer(Keyring.generate())
    dek = sealer.new_data_key()
    sealed = sealer.seal("contact:c1", dek, "secret result", aad(ORG, "messages", "m1", "body"))
    with pytest.raises(IntegrityError):
        sealer.open(dek, sealed, aad(*moved))


def test_any_flipped_byte_is_detected():
    """Format byte, nonce, ciphertext and tag. (The key-id header only picks the key: changing it
    picks another key or none, which the vault test below covers.)"""
    sealer = Sealer(Keyring.generate())
    dek = sealer.new_data_key()
    where = aad(ORG, "messages", "m1", "body")
    sealed = sealer.seal("contact:c1", dek, "secret result", where)
    for i in [0, 1, *range(2 + sealed[1], len(sealed))]:
        for mask in (0x01, 0x80):
            tampered = bytearray(sealed)
            tampered[i] ^= mask
            with pytest.raises(IntegrityError):
                sealer.open(dek, bytes(tampered), where)
    for cut in (0, 1, 5, len(sealed) - 1):
        with pytest.raises(IntegrityError):
            sealer.open(dek, sealed[:cut], where)
    with pytest.raises(IntegrityError):
        sealer.open(sealer.new_data_key(), sealed, where)


def test_nonces_are_never_reused():
    sealer = Sealer(Keyring.generate())
    dek = sealer.new_data_key()
    where = aad(ORG, "messages", "m1", "body")
    sealed = [sealer.seal("contact:c1", dek, "same plaintext", where) for _ in range(2000)]
    assert len({nonce_of(s) for s in sealed}) == 2000
    assert len(set(sealed)) == 2000
    assert all(len(nonce_of(s)) == 12 for s in sealed)


def test_wrapped_data_keys_are_bound_to_their_id():
    sealer = Sealer(Keyring.generate())
    dek = sealer.new_data_key()
    kek_id, wrapped = sealer.wrap(dek, "contact:a")
    assert dek not in wrapped
    assert sealer.unwrap(kek_id, wrapped, "contact:a") == dek
    with pytest.raises(IntegrityError):
        sealer.unwrap(kek_id, wrapped, "contact:b")
    with pytest.raises(IntegrityError):
        sealer.unwrap("k99", wrapped, "contact:a")


def test_blind_index_is_keyed_and_per_org():
    ring = Keyring.generate()
    a = Sealer(ring).blind_index(ORG, "phone", "+15551230001")
    assert a == Sealer(ring).blind_index(ORG, "phone", "+15551230001")
    assert a != Sealer(ring).blind_index(OTHER_ORG, "phone", "+15551230001")
    assert a != Sealer(Keyring.generate()).blind_index(ORG, "phone", "+15551230001")
    assert "5551230001" not in a


# -- tokens ------------------------------------------------------------------------------------------
def test_link_tokens_are_256_bit_random_and_unique():
    tokens = [new_token() for _ in range(10_000)]
    assert len(set(tokens)) == 10_000
    for t in tokens:
        assert len(t) == 43 and looks_like_token(t)
        assert len(base64.urlsafe_b64decode(t + "=")) == 32
    assert len({token_hash(t) for t in tokens[:1000]}) == 1000
    assert token_hash(tokens[0]) != tokens[0] and len(token_hash(tokens[0])) == 64


def test_token_module_uses_the_os_csprng_only():
    source = Path(__file__).resolve().parents[2] / "gateway" / "security" / "tokens.py"
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert "secrets" in imported
    assert not imported & {"random", "uuid", "time"}


async def test_tampered_outbox_field_fails_the_job_instead_of_the_dispatcher(gw):
    """A corrupted key id in a sealed field is an IntegrityError: the job fails, delivery goes on."""
    bad = await gw.api_send(body="first", secure=True)
    job = await gw.store.outbox.find_one({"message_id": bad["id"]})
    tampered = bytearray(job["link_token"])
    tampered[4] ^= 0x80  # inside the key id: no longer valid UTF-8
    await gw.store.outbox.update_one({"_id": job["_id"]}, {"$set": {"link_token": Binary(bytes(tampered))}})
    good = await gw.api_send(body="second", secure=True)
    await gw.drain()
    assert (await gw.store.outbox.find_one({"_id": job["_id"]}))["state"] == "failed"
    assert (await gw.store.messages.find_one({"_id": bad["id"]}))["status"] == "failed"
    assert (await gw.store.messages.find_one({"_id": good["id"]}))["status"] == "accepted"
    assert len(gw.twilio.messages) == 1
    # The tampering is an audit event (docs/security-model.md, 'Sealed fields'), naming where, never what.
    [failure] = [e async for e in gw.store.audit.find({"org_id": gw.org.id, "action": "integrity.fail"})]
    assert failure["outcome"] == "failed"
    assert failure["detail"] == {"collection": "outbox", "document": job["_id"], "field": "link_token"}


async def test_a_message_body_moved_to_another_message_is_refused_and_audited(gw):
    first = await gw.api_send(body="first secret", secure=True)
    second = await gw.api_send(body="second secret", secure=True)
    stolen = (await gw.store.messages.find_one({"_id": first["id"]}))["body"]
    await gw.store.messages.update_one({"_id": second["id"]}, {"$set": {"body": stolen}})
    resp = await gw.client.get(f"/api/v1/threads/{second['thread_id']}/messages", headers=gw.auth())
    assert resp.status == 500 and "first secret" not in await resp.text()
    failures = [e async for e in gw.store.audit.find({"action": "integrity.fail"})]
    assert [e["detail"] for e in failures] == [{"collection": "messages", "document": second["id"], "field": "body"}]


# -- vault: rotation and shredding --------------------------------------------------------------------
async def seal_in_vault(vault: Vault, dek_id: str, doc_id: str, text: str) -> Binary:
    await vault.create_key(dek_id, ORG)
    return await vault.seal(dek_id, ORG, "messages", doc_id, "body", text)


async def test_vault_detects_ciphertext_moved_between_documents(store, keyring, clock):
    vault = Vault(store, Sealer(keyring), clock)
    m1, m2 = new_id(), new_id()
    s1 = await seal_in_vault(vault, "contact:a", m1, "first secret")
    s2 = await seal_in_vault(vault, "contact:a", m2, "second secret")
    assert await vault.open(ORG, "messages", m1, "body", s1) == "first secret"
    with pytest.raises(IntegrityError):
        await vault.open(ORG, "messages", m2, "body", s1)  # copied into another document
    with pytest.raises(IntegrityError):
        await vault.open(ORG, "messages", m1, "preview", s1)  # copied into another field
    with pytest.raises(IntegrityError):
        await vault.open(OTHER_ORG, "messages", m1, "body", s1)
    assert await vault.open(ORG, "messages", m2, "body", s2) == "second secret"


async def test_vault_reports_every_tampered_byte_as_an_integrity_error(store, keyring, clock):
    vault = Vault(store, Sealer(keyring), clock)
    mid = new_id()
    sealed = bytes(await seal_in_vault(vault, "contact:t", mid, "secret"))
    for i in range(len(sealed)):
        tampered = bytearray(sealed)
        tampered[i] ^= 0x80
        with pytest.raises(IntegrityError):
            await vault.open(ORG, "messages", mid, "body", bytes(tampered))


async def test_rotation_rewraps_data_keys_and_old_data_still_opens(store, keyring, clock):
    vault = Vault(store, Sealer(keyring), clock)
    mid = new_id()
    sealed = await seal_in_vault(vault, "contact:r", mid, "sealed before rotation")
    await seal_in_vault(vault, "contact:r2", new_id(), "another")

    rotated = keyring.rotated()
    assert rotated.active != keyring.active and set(keyring.keks) < set(rotated.keks)
    only_new = Keyring(rotated.active, {rotated.active: rotated.keks[rotated.active]},
                       rotated.index_key, rotated.mac_key)
    with pytest.raises(IntegrityError):  # before re-wrapping, the new KEK alone can't open it
        await Vault(store, Sealer(only_new), clock).open(ORG, "messages", mid, "body", sealed)

    assert await Vault(store, Sealer(rotated), clock).rewrap_all() == 2
    async for doc in store.keys.find({}):
        assert doc["kek_id"] == rotated.active
    assert await Vault(store, Sealer(rotated), clock).open(ORG, "messages", mid, "body", sealed) \
        == "sealed before rotation"
    # The old KEK can now be retired entirely.
    assert await Vault(store, Sealer(only_new), clock).open(ORG, "messages", mid, "body", sealed) \
        == "sealed before rotation"


async def test_destroying_a_data_key_shreds_what_it_sealed(store, keyring, clock):
    vault = Vault(store, Sealer(keyring), clock)
    gone, kept = new_id(), new_id()
    s_gone = await seal_in_vault(vault, "contact:gone", gone, "erase me")
    s_kept = await seal_in_vault(vault, "contact:kept", kept, "keep me")
    await vault.destroy("contact:gone")
    with pytest.raises(IntegrityError):
        await vault.open(ORG, "messages", gone, "body", s_gone)
    with pytest.raises(IntegrityError):  # another process, no cache
        await Vault(store, Sealer(keyring), clock).open(ORG, "messages", gone, "body", s_gone)
    with pytest.raises(IntegrityError):
        await vault.seal("contact:gone", ORG, "messages", new_id(), "body", "new data")
    doc = await store.keys.find_one({"_id": "contact:gone"})
    assert "wrapped" not in doc and doc["destroyed_at"] is not None
    assert await vault.open(ORG, "messages", kept, "body", s_kept) == "keep me"
    assert await vault.rewrap_all() == 1  # the destroyed key is not resurrected


# -- keyring file ---------------------------------------------------------------------------------------
def test_keyring_file_is_created_private_and_reloaded(tmp_path):
    path = tmp_path / "keys" / "keyring.json"
    ring = load_or_create_keyring(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_or_create_keyring(path)
    assert again == ring
    assert "keks" not in repr(ring) or base64.b64encode(ring.keks["k1"]).decode() not in repr(ring)
    write_keyring(path, ring.rotated())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_keyring(path).active == "k2"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_keyring_file_readable_by_others_is_refused(tmp_path, mode):
    path = tmp_path / "keyring.json"
    load_or_create_keyring(path)
    os.chmod(path, mode)
    with pytest.raises(ConfigError) as err:
        load_or_create_keyring(path)
    assert err.value.key == "keys.keyring_file"


@pytest.mark.parametrize("text", ["", "{}", "not json", '{"active": "k9", "keks": {}, "index_key": "", "mac_key": ""}',
                                  '{"active": "k1", "keks": {"k1": "c2hvcnQ="}, "index_key": "c2hvcnQ=", '
                                  '"mac_key": "c2hvcnQ="}'])
def test_invalid_keyring_is_a_config_error(tmp_path, text):
    path = tmp_path / "keyring.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    with pytest.raises(ConfigError) as err:
        load_or_create_keyring(path)
    assert err.value.key == "keys.keyring_file"


# -- PIN hashes ----------------------------------------------------------------------------------------
def test_pin_hashes_are_argon2id_with_owasp_parameters():
    first, second = hash_secret("246810"), hash_secret("246810")
    for h in (first, second):
        found = ARGON2.match(h)
        assert found, h
        m, t, p = (int(x) for x in found.groups())
        assert m >= 19456 and t >= 2 and p == 1
        assert "246810" not in h
        assert not needs_rehash(h)
    assert first != second  # per-secret salt
    assert verify_secret(first, "246810")
    assert not verify_secret(first, "246811")
    assert not verify_secret("not a hash", "246810")


async def test_stored_link_pin_is_an_argon2id_hash(gw):
    data = await gw.api_send(body="Results", secure=True, pin="246810")
    link = await gw.store.links.find_one({"message_id": data["id"]})
    assert ARGON2.match(link["pin_hash"])
    assert verify_secret(link["pin_hash"], "246810")


def test_pin_policy():
    assert validate_pin("246810") == "246810"
    assert validate_pin("correct horse") == "correct horse"
    for bad in ("12345", "abc1234", "1" * 65, "abcdefg\x01"):
        with pytest.raises(ValidationError):
            validate_pin(bad)
    pins = [generate_pin() for _ in range(1000)]
    assert all(len(p) >= 6 and p.isdigit() for p in pins)
    assert len(set(pins)) > 900
