"""Reading JetStream object-store objects quickly: a leaf library (it imports nothing of ours).

nats-py's `ObjectStore.get` reads an object's chunks through an ordered push consumer, at about
40 MB/s here for one large object; a pull consumer fetching the same chunks in batches reads it
at about 270 MB/s (bench/files.py). The object is found and checked as nats-py does: its meta
names the chunks' subject (its nuid), and the SHA-256 of what was read must be its digest.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.object_store import ObjectStore

BATCH = 32  # chunks a fetch asks for: 16 MiB of 512 KiB chunks
FETCH_TIMEOUT_SECONDS = 10.0


class DigestMismatch(Exception):
    """What was read is not what was stored."""


async def read_chunks(store: ObjectStore, name: str) -> AsyncIterator[bytes]:
    """The object's bytes, chunk by chunk; DigestMismatch at the end if they are not its own,
    nats-py's ObjectNotFoundError if there is no such object."""
    info = await store.get_info(name)
    if not info.size:
        return
    # nats-py's own names for the bucket's stream, its chunks' subject and its JetStream context.
    js: JetStreamContext = store._js
    subscription = await js.pull_subscribe(
        f"$O.{store._name}.C.{info.nuid}", stream=store._stream,
        config=ConsumerConfig(ack_policy=AckPolicy.NONE, inactive_threshold=60.0, mem_storage=True))
    digest = hashlib.sha256()
    try:
        remaining = info.chunks
        while remaining > 0:
            messages = await subscription.fetch(min(remaining, BATCH), timeout=FETCH_TIMEOUT_SECONDS)
            for message in messages:
                digest.update(message.data)
                yield message.data
            remaining -= len(messages)
    finally:
        await subscription.unsubscribe()
    stored = base64.urlsafe_b64decode(info.digest.split("=", 1)[1])
    if digest.digest() != stored:
        raise DigestMismatch(f"object {name!r}: its bytes do not match the SHA-256 it was stored with")
