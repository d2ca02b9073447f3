"""Secrets sealed to one runner for the trip over NATS, where core messages can be observed.

The runner makes an X25519 key pair for each claim and sends the public half with it. The
command service seals the job's secrets to that key: a fresh X25519 key pair of its own, the
shared secret through HKDF-SHA256 (bound to both public keys), and AES-256-GCM with the
attempt as associated data. Only the process holding the claim's private key opens the box,
and only for that attempt; a recording of the NATS traffic shows ciphertext and public keys.
It does not authenticate the runner (NATS credentials do that): whoever claims an attempt
the command service grants is whom the box is for.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PUBLIC_KEY_BYTES = 32
NONCE_BYTES = 12
_INFO = b"ledgerci secrets sealed to a runner v1"


class SealingError(Exception):
    """A public key or a sealed box is malformed, or the box is not for this key and context."""


def _raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _box_key(shared: bytes, sender: bytes, recipient: bytes) -> AESGCM:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO + sender + recipient).derive(shared)
    return AESGCM(key)


def _decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise SealingError("not base64url") from None


def seal(values: Mapping[str, str], recipient_public_key: str, context: str) -> str:
    """The values, readable only with the private half of `recipient_public_key`."""
    recipient = _decode(recipient_public_key)
    if len(recipient) != PUBLIC_KEY_BYTES:
        raise SealingError(f"a public key is {PUBLIC_KEY_BYTES} bytes, got {len(recipient)}")
    ephemeral = X25519PrivateKey.generate()
    sender = _raw(ephemeral.public_key())
    try:
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient))
    except ValueError:  # a low-order point gives an all-zero secret, which cryptography refuses
        raise SealingError("unusable public key") from None
    nonce = os.urandom(NONCE_BYTES)
    plaintext = json.dumps(dict(values), separators=(",", ":")).encode("utf-8")
    sealed = _box_key(shared, sender, recipient).encrypt(nonce, plaintext, context.encode("utf-8"))
    return base64.urlsafe_b64encode(sender + nonce + sealed).rstrip(b"=").decode("ascii")


class Recipient:
    """The runner's end: one key pair per claim, never stored, gone with the process."""

    def __init__(self) -> None:
        self._private = X25519PrivateKey.generate()
        self._public = _raw(self._private.public_key())

    @property
    def public_key(self) -> str:
        return base64.urlsafe_b64encode(self._public).rstrip(b"=").decode("ascii")

    def open(self, box: str, context: str) -> dict[str, str]:
        data = _decode(box)
        if len(data) < PUBLIC_KEY_BYTES + NONCE_BYTES + 16:
            raise SealingError("the sealed box is too short")
        sender = data[:PUBLIC_KEY_BYTES]
        nonce = data[PUBLIC_KEY_BYTES:PUBLIC_KEY_BYTES + NONCE_BYTES]
        sealed = data[PUBLIC_KEY_BYTES + NONCE_BYTES:]
        try:
            shared = self._private.exchange(X25519PublicKey.from_public_bytes(sender))
            plaintext = _box_key(shared, sender, self._public).decrypt(nonce, sealed, context.encode("utf-8"))
        except (InvalidTag, ValueError):
            raise SealingError("the sealed box is not for this key and attempt") from None
        values = json.loads(plaintext)
        if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
            raise SealingError("the sealed box does not hold name/value pairs")
        return values
