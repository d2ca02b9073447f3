"""Job images for the Docker executor's tests, made on this machine: no registry is reachable.

Each image is a root filesystem of Debian's statically linked busybox (`/bin/busybox` and a
link per applet) imported with `docker import`. Two images that differ only in the name they
carry in `/etc/ledgerci-image`, so a job can prove it ran in the image it names. Building is
idempotent: an image already tagged is kept (the tag's version changes with the recipe).
"""

from __future__ import annotations

import io
import subprocess
import tarfile
import time
from pathlib import Path

import docker
from docker.errors import ImageNotFound

BUSYBOX = Path("/bin/busybox")  # from Debian's busybox-static, which .ci/run installs
BUSYBOX_IMAGE = "ledgerci-test/busybox:1"
OTHER_IMAGE = "ledgerci-test/busybox-other:1"
TEST_IMAGES = (BUSYBOX_IMAGE, OTHER_IMAGE)
# `docker import` sets no PATH; the executor takes a job's PATH from its image.
_CHANGES = ["ENV PATH=/usr/local/bin:/usr/bin:/bin"]


def ensure_test_images() -> tuple[str, ...]:
    client = docker.from_env()
    try:
        for name in TEST_IMAGES:
            try:
                client.images.get(name)
            except ImageNotFound:
                repository, tag = name.rsplit(":", 1)
                client.api.import_image_from_data(_rootfs(name), repository=repository, tag=tag,
                                                  changes=_CHANGES)
    finally:
        client.close()
    return TEST_IMAGES


def _rootfs(image_name: str) -> bytes:
    applets = subprocess.run([str(BUSYBOX), "--list"], check=True, capture_output=True, text=True).stdout.split()
    buffer = io.BytesIO()
    now = time.time()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory, mode in (("bin", 0o755), ("etc", 0o755), ("tmp", 0o1777), ("root", 0o700)):
            _add(tar, directory, now, type=tarfile.DIRTYPE, mode=mode)
        tar.add(BUSYBOX, arcname="bin/busybox")
        for applet in applets:
            if applet != "busybox":
                _add(tar, f"bin/{applet}", now, type=tarfile.SYMTYPE, linkname="busybox", mode=0o777)
        # Entries for root and the unprivileged uid the executor runs jobs as.
        _add_file(tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n", now)
        _add_file(tar, "etc/group", b"root:x:0:\nnogroup:x:65534:\n", now)
        _add_file(tar, "etc/ledgerci-image", f"{image_name}\n".encode(), now)
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, mtime: float, **fields: object) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = int(mtime)
    for key, value in fields.items():
        setattr(info, key, value)
    tar.addfile(info)


def _add_file(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(mtime), 0o644
    tar.addfile(info, io.BytesIO(data))


if __name__ == "__main__":  # `python -m tests.support.docker_images`, as .ci/run and the bench do
    print("\n".join(ensure_test_images()))
