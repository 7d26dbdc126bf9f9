"""Envelope encryption: a keyring of key-encryption keys (outside MongoDB) wraps per-contact data keys.

Format of a sealed value (bytes): b"\x01" + dek-id length (1 byte) + dek id + 12-byte nonce +
AES-256-GCM ciphertext||tag. The associated data binds the value to (org, collection, document
id, field), so a ciphertext copied into another document or field fails to open.

The keyring file (JSON, mode 0600) holds versioned KEKs and two derived-purpose keys:
{"active": "k1", "keks": {"k1": b64}, "index_key": b64, "mac_key": b64}.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.errors import ConfigError, IntegrityError

_FORMAT = 1


@dataclass(frozen=True, slots=True)
class Keyring:
    """Key-encryption keys by id, the active one, and keys for blind indexes and MACs."""

    active: str
    keks: dict[str, bytes]
    index_key: bytes
    mac_key: bytes

    def __repr__(self) -> str:
        return f"Keyring(active={self.active!r}, keks=[{', '.join(self.keks)}])"

    @classmethod
    def generate(cls) -> Keyring:
        return cls("k1", {"k1": AESGCM.generate_key(256)}, secrets.token_bytes(32), secrets.token_bytes(32))

    def rotated(self) -> Keyring:
        """Return a keyring with a new active KEK; old ones stay to unwrap existing data keys."""
        n = 1 + max(int(k[1:]) for k in self.keks if k[1:].isdigit())
        new_id = f"k{n}"
        return Keyring(new_id, {**self.keks, new_id: AESGCM.generate_key(256)}, self.index_key, self.mac_key)

    def to_json(self) -> str:
        return json.dumps({
            "active": self.active,
            "keks": {k: _b64(v) for k, v in self.keks.items()},
            "index_key": _b64(self.index_key),
            "mac_key": _b64(self.mac_key),
        }, indent=2)

    @classmethod
    def from_json(cls, text: str, source: str = "keys.keyring_file") -> Keyring:
        try:
            data = json.loads(text)
            keks = {str(k): base64.b64decode(v, validate=True) for k, v in data["keks"].items()}
            ring = cls(str(data["active"]), keks, base64.b64decode(data["index_key"], validate=True),
                       base64.b64decode(data["mac_key"], validate=True))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ConfigError(source, f"not a valid keyring ({type(err).__name__})") from None
        if ring.active not in ring.keks:
            raise ConfigError(source, "active key id is not in keks")
        if any(len(k) != 32 for k in ring.keks.values()) or len(ring.index_key) < 32 or len(ring.mac_key) < 32:
            raise ConfigError(source, "keys must be 32 bytes")
        return ring


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def load_or_create_keyring(path: Path) -> Keyring:
    """Load the keyring file, creating it (mode 0600) on first start."""
    if path.exists():
        if path.stat().st_mode & 0o077:
            raise ConfigError("keys.keyring_file", f"{path} must not be readable by group or others (chmod 600)")
        return Keyring.from_json(path.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    ring = Keyring.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(ring.to_json())
    return ring


def write_keyring(path: Path, ring: Keyring) -> None:
    """Replace the keyring file atomically, keeping mode 0600."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(ring.to_json())
    os.replace(tmp, path)


def aad(org_id: str, collection: str, doc_id: str, field: str) -> bytes:
    """The associated data that binds a sealed value to its place."""
    return f"hushlink/v1|{org_id}|{collection}|{doc_id}|{field}".encode()


class Sealer:
    """Wraps data keys with the keyring and seals fields with data keys."""

    def __init__(self, keyring: Keyring) -> None:
        self._ring = keyring

    @property
    def keyring(self) -> Keyring:
        return self._ring

    # -- data keys ------------------------------------------------------------------------
    def new_data_key(self) -> bytes:
        return AESGCM.generate_key(256)

    def wrap(self, dek: bytes, dek_id: str) -> tuple[str, bytes]:
        """Wrap a data key with the active KEK; returns (kek id, wrapped bytes)."""
        nonce = secrets.token_bytes(12)
        ct = AESGCM(self._ring.keks[self._ring.active]).encrypt(nonce, dek, f"dek|{dek_id}".encode())
        return self._ring.active, nonce + ct

    def unwrap(self, kek_id: str, wrapped: bytes, dek_id: str) -> bytes:
        kek = self._ring.keks.get(kek_id)
        if kek is None:
            raise IntegrityError(f"data key {dek_id} is wrapped with unknown KEK {kek_id}")
        try:
            return AESGCM(kek).decrypt(wrapped[:12], wrapped[12:], f"dek|{dek_id}".encode())
        except InvalidTag:
            raise IntegrityError(f"data key {dek_id} failed to unwrap") from None

    # -- fields ---------------------------------------------------------------------------
    def seal(self, dek_id: str, dek: bytes, plaintext: str | bytes, aad_: bytes) -> bytes:
        data = plaintext.encode() if isinstance(plaintext, str) else plaintext
        nonce = secrets.token_bytes(12)
        kid = dek_id.encode()
        return bytes([_FORMAT, len(kid)]) + kid + nonce + AESGCM(dek).encrypt(nonce, data, aad_)

    @staticmethod
    def dek_id_of(sealed: bytes) -> str:
        if len(sealed) < 2 or sealed[0] != _FORMAT:
            raise IntegrityError("sealed value has an unknown format")
        try:
            return sealed[2 : 2 + sealed[1]].decode()
        except UnicodeDecodeError:  # a tampered key id must not escape as another error type
            raise IntegrityError("sealed value has a malformed key id") from None

    def open(self, dek: bytes, sealed: bytes, aad_: bytes) -> bytes:
        if len(sealed) < 2 or sealed[0] != _FORMAT:
            raise IntegrityError("sealed value has an unknown format")
        start = 2 + sealed[1]
        nonce, ct = sealed[start : start + 12], sealed[start + 12 :]
        try:
            return AESGCM(dek).decrypt(nonce, ct, aad_)
        except (InvalidTag, ValueError):
            raise IntegrityError("sealed value failed authentication") from None

    # -- keyed digests --------------------------------------------------------------------
    def blind_index(self, org_id: str, kind: str, normalized_value: str) -> str:
        """Keyed HMAC for equality lookups (phone, email) without storing the value."""
        msg = f"{org_id}|{kind}|{normalized_value}".encode()
        return hmac.new(self._ring.index_key, msg, hashlib.sha256).hexdigest()

    def mac(self, data: bytes) -> str:
        return hmac.new(self._ring.mac_key, data, hashlib.sha256).hexdigest()
