"""The JetStream object store as ledgerci uses it: objects read quickly, written only when their
name is free, removed altogether. A leaf library (it imports nothing of ours); it relies on
nats-py's own names for a bucket's stream and subjects (`_name`, `_stream`, `_js`).

nats-py's `ObjectStore.get` reads an object's chunks through an ordered push consumer, at about
40 MB/s here for one large object; a pull consumer fetching the same chunks in batches reads it
at about 270 MB/s (bench/files.py). The object is found and checked as nats-py does: its meta
names the chunks' subject (its nuid), and the SHA-256 of what was read must be its digest.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import BinaryIO

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, Header, ObjectInfo, ObjectMetaOptions
from nats.js.errors import APIError, ObjectNotFoundError
from nats.js.object_store import OBJ_STREAM_TEMPLATE, ObjectStore

BATCH = 32  # chunks a fetch asks for: 16 MiB of 512 KiB chunks
FETCH_TIMEOUT_SECONDS = 10.0


class DigestMismatch(Exception):
    """What was read is not what was stored."""


def bucket(js: JetStreamContext, name: str) -> ObjectStore:
    """The bucket `name`, without asking the server: nats-py's `js.object_store` first asks for
    its stream's info, and a runner starting while JetStream elects a leader timed out there and
    died. The buckets are made by the scheduler (commands/streams.py); one missing, or JetStream
    away, fails the operation that needs it, not the process."""
    return ObjectStore(name=name, stream=OBJ_STREAM_TEMPLATE.format(bucket=name), js=js)


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
        config=ConsumerConfig(ack_policy=AckPolicy.NONE, inactive_threshold=5.0, mem_storage=True))
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


WRONG_LAST_SEQUENCE = (10071, 10164)  # JetStream's error codes for a failed Expected-Last-Subject-Sequence


async def put_new(store: ObjectStore, name: str, reader: BinaryIO, *, chunk_bytes: int,
                  description: str | None = None) -> ObjectInfo | None:
    """Store `reader`'s bytes as `name` only if no object of that name is there: the info, or
    None when another writer's object was named first (ours is then removed).

    nats-py's `put` replaces an object of the same name. Here the chunks go first and the name
    (the object's meta message) last, published with Expected-Last-Subject-Sequence 0, so that
    of two writers of one name exactly one wins, and a writer killed before the end leaves no
    object (its chunks are unnamed; the stream's limits remove them)."""
    js: JetStreamContext = store._js
    nuid = js._nc._nuid.next().decode()
    chunks_subject = f"$O.{store._name}.C.{nuid}"
    digest, size, chunks = hashlib.sha256(), 0, 0
    try:
        while data := await asyncio.to_thread(reader.read, chunk_bytes):
            digest.update(data)
            size += len(data)
            chunks += 1
            await js.publish(chunks_subject, data)
        info = ObjectInfo(name=name, bucket=store._name, nuid=nuid, size=size, chunks=chunks,
                          digest=f"SHA-256={base64.urlsafe_b64encode(digest.digest()).decode()}",
                          mtime=datetime.now(UTC).isoformat(), description=description,
                          options=ObjectMetaOptions(max_chunk_size=chunk_bytes))
        await js.publish(_meta_subject(store, name), json.dumps(info.as_dict()).encode(),
                         headers={Header.ROLLUP: "sub", Header.EXPECTED_LAST_SUBJECT_SEQUENCE: "0"})
    except APIError as failed:
        await js.purge_stream(store._stream, subject=chunks_subject)
        if failed.err_code in WRONG_LAST_SEQUENCE:
            return None
        raise
    except BaseException:
        await asyncio.shield(js.purge_stream(store._stream, subject=chunks_subject))
        raise
    return info


async def purge(store: ObjectStore, name: str) -> None:
    """Remove an object and its name altogether (nats-py's `delete` leaves a deleted marker
    under the name, which `put_new` would take for an object)."""
    js: JetStreamContext = store._js
    try:
        info = await store.get_info(name, show_deleted=True)
    except ObjectNotFoundError:
        return
    if info.nuid:
        await js.purge_stream(store._stream, subject=f"$O.{store._name}.C.{info.nuid}")
    await js.purge_stream(store._stream, subject=_meta_subject(store, name))


def _meta_subject(store: ObjectStore, name: str) -> str:
    return f"$O.{store._name}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"
