#!/usr/bin/env bash
# Makes the base image of ledgerci's container image on this machine, without a registry:
# debootstrap builds a Debian root filesystem from Debian's packages (through the mirror the
# host's apt already uses) and `docker import` turns it into an image.
#
# Prints the image's name on stdout (everything else goes to stderr). Made once per machine:
# the tag carries a digest of the recipe below, so an image made from the same recipe is
# reused, and changing the recipe makes a new one.
#
#   deploy/base-image.sh            # -> ledgerci-base:bookworm-<digest>, also tagged ledgerci-base:bookworm
set -euo pipefail

SUITE=bookworm
# python3-venv: the image installs ledgerci into its own venv; git: the scheduler reads
# workflow files and runners check commits out; ca-certificates: https clone URLs.
# util-linux (setpriv: a job dies with its runner) and passwd (useradd) are Essential in
# Debian, so minbase has them already.
PACKAGES=python3,python3-venv,git,ca-certificates
# Bump when the way the tree is made or slimmed changes, so machines make a new image.
RECIPE_VERSION=1

digest=$(printf '%s\n' "$SUITE" "$PACKAGES" "$RECIPE_VERSION" | sha256sum | cut -c1-12)
image="ledgerci-base:${SUITE}-${digest}"

if docker image inspect "$image" >/dev/null 2>&1; then
  echo "$image"
  exit 0
fi

if ! command -v debootstrap >/dev/null; then
  echo "base-image.sh: debootstrap is missing (apt-get install debootstrap)" >&2
  exit 1
fi

rootfs=$(mktemp -d /tmp/ledgerci-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT

# The host's own Debian mirror, so this works wherever the host's apt does; with none
# found, debootstrap's default.
mirror=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null \
  | head -1 || true)
started=$(date +%s)
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" ${mirror:+"$mirror"} >&2

# Nothing at run time needs apt's lists and caches, documentation or translations: about a
# third of the tree.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/cache/debconf/*-old \
  "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
  "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/*

tar --numeric-owner -C "$rootfs" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  --message "debootstrap --variant=minbase --include=$PACKAGES $SUITE" \
  - "$image" >&2
docker tag "$image" "ledgerci-base:${SUITE}"
echo "base-image.sh: made $image in $(($(date +%s) - started)) s" >&2
echo "$image"
