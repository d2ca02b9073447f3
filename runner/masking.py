"""Masks a job's secrets in its output, including a secret split across two chunks of it.

Every occurrence of a value, or of its base64 form, becomes `***` before the output leaves
the runner. A chunk that ends with the beginning of a secret keeps that beginning back until
the next chunk shows whether the secret follows; nothing else is held, so ordinary output is
never delayed.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Sequence

MASK = b"***"


class Masker:
    def __init__(self, secrets: Sequence[str]) -> None:
        # Longest first: a secret that contains another is masked whole.
        self._needles = sorted({form for secret in secrets if secret for form in _forms(secret.encode())},
                               key=len, reverse=True)
        self._held = b""

    def feed(self, data: bytes) -> bytes:
        """What of the output so far can be sent now, masked."""
        if not self._needles:
            return data
        text = self._mask(self._held + data)
        keep = self._partial_secret_at_end(text)
        self._held = text[len(text) - keep:] if keep else b""
        return text[: len(text) - keep]

    def close(self) -> bytes:
        """The rest: a held beginning that no secret followed."""
        held, self._held = self._held, b""
        return held

    def _mask(self, text: bytes) -> bytes:
        for needle in self._needles:
            text = text.replace(needle, MASK)
        return text

    def _partial_secret_at_end(self, text: bytes) -> int:
        """The length of the longest end of `text` that some secret begins with."""
        longest = 0
        for needle in self._needles:
            tail = text[len(text) - len(needle) + 1:] if len(needle) <= len(text) else text
            start = 0  # the leftmost place where the rest of the text begins the secret is the longest
            while (found := tail.find(needle[:1], start)) != -1:
                if needle.startswith(tail[found:]):
                    longest = max(longest, len(tail) - found)
                    break
                start = found + 1
        return longest


def _forms(secret: bytes) -> Iterator[bytes]:
    """The secret as printed plainly and as `base64` prints it (standard and URL-safe
    alphabets, with and without padding): encoding a secret must not be a way to leak it."""
    yield secret
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        encoded = encode(secret)
        yield encoded
        yield encoded.rstrip(b"=")
