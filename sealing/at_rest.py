"""Secrets encrypted at rest: AES-256-GCM under keys from LEDGERCI_SECRET_KEY.

The setting holds one or more keys, comma-separated, each 32 random bytes in base64url
(`python -c "import base64,os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())"`).
The first encrypts; every one decrypts, so a key is rotated by putting the new one first and
setting each secret again. A ciphertext names its key by a short digest of it, not by
position, so reordering the list never breaks a stored secret.

Each ciphertext is bound to its context (scope, owner and name) as GCM's associated data:
someone who can write to the event store cannot move tenant A's ciphertext into tenant B's
history and have it decrypt there.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12
# `v1.<key id>.<base64url(nonce || ciphertext and tag)>`: the version lets the format change.
FORMAT = "v1"


class KeyringError(Exception):
    """A key in the setting is malformed, or a ciphertext cannot be decrypted by any key."""


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _key_id(key: bytes) -> str:
    return hashlib.sha256(b"ledgerci secret key id\0" + key).hexdigest()[:12]


class Keyring:
    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise KeyringError("no key given")
        for key in keys:
            if len(key) != KEY_BYTES:
                raise KeyringError(f"a key must be {KEY_BYTES} bytes, got {len(key)}")
        self._current = keys[0]
        self._keys = {_key_id(key): AESGCM(key) for key in keys}

    @classmethod
    def from_setting(cls, text: str) -> Keyring:
        """Keys as LEDGERCI_SECRET_KEY holds them: base64url, comma-separated, newest first."""
        keys = []
        for part in (part.strip() for part in text.split(",")):
            if not part:
                continue
            try:
                keys.append(_b64decode(part))
            except (binascii.Error, ValueError):
                raise KeyringError("LEDGERCI_SECRET_KEY: each key must be base64url") from None
        try:
            return cls(keys)
        except KeyringError as wrong:
            raise KeyringError(f"LEDGERCI_SECRET_KEY: {wrong} (32 random bytes, base64url)") from None

    @staticmethod
    def generate_key() -> str:
        return base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode("ascii")

    def encrypt(self, plaintext: str, context: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._keys[_key_id(self._current)].encrypt(nonce, plaintext.encode("utf-8"), context.encode("utf-8"))
        return f"{FORMAT}.{_key_id(self._current)}.{_b64encode(nonce + sealed)}"

    def decrypt(self, ciphertext: str, context: str) -> str:
        version, _, rest = ciphertext.partition(".")
        key_id, _, body = rest.partition(".")
        if version != FORMAT or not body:
            raise KeyringError("not a ledgerci secret ciphertext")
        aead = self._keys.get(key_id)
        if aead is None:
            raise KeyringError(f"encrypted with key {key_id}, which LEDGERCI_SECRET_KEY no longer holds")
        try:
            data = _b64decode(body)
            return aead.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], context.encode("utf-8")).decode("utf-8")
        except (InvalidTag, binascii.Error, ValueError):
            raise KeyringError("the ciphertext does not decrypt (tampered with, or moved from elsewhere)") from None
