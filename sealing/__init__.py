"""A leaf library: the only place ledgerci touches cryptography.

Two jobs, both with `cryptography`'s primitives, nothing hand-rolled:
- `at_rest`: secrets encrypted for the event store (AES-256-GCM under LEDGERCI_SECRET_KEY).
- `to_runner`: secrets sealed to one runner's ephemeral X25519 key for the trip over NATS.
It imports nothing of ledgerci, so the runner (which may import only the domain and leaf
libraries) and the command service share the same code for the two ends of a sealed box.
"""

from sealing.at_rest import Keyring, KeyringError
from sealing.to_runner import Recipient, SealingError, seal

__all__ = ["Keyring", "KeyringError", "Recipient", "SealingError", "seal"]
